"""An in-process coordination store with etcd's semantics, on an injectable clock.

What belongs here: ``LocalCoordinationServer`` (the store: keys, revisions, history,
leases, compaction, and the faults a simulation injects: the whole store down, one
client partitioned, connections dropped) and ``LocalCoordinator`` (one client's view,
implementing ``Coordinator``), plus ``ManualClock`` for virtual time. It is
deterministic: no wall clock, no randomness, no threads; lease expiry happens only when
the injected clock says so, and only when the store is told time moved (``tick()``,
which a ``ManualClock`` calls on every ``advance``) or is next used.

How it models etcd's leases, since it has no keep-alive traffic: a lease whose holder
is connected is refreshed continuously; from the moment its holder is cut off (crash,
partition, store down, ``close(revoke_leases=False)``) it has its TTL left. The holder
sees the lease lost at that same instant, which is the latest an etcd client would.
When the whole store comes back it renews every lease by a full TTL, as an etcd leader
does when it takes office.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ferrymq._coordination._types import (
    Compacted,
    CoordinatorUnavailable,
    Delete,
    Event,
    EventKind,
    KeyValue,
    Lease,
    LeaseLost,
    Op,
    Put,
    Snapshot,
    TxnResult,
    WatchStream,
    check_ops,
)
from ferrymq._core._errors import InternalError

__all__ = ["LocalCoordinationServer", "LocalCoordinator", "ManualClock"]

# etcd's minimum lease TTL with its default Raft timings (1.5 x 1 s election timeout,
# rounded up to whole seconds); shorter grants are raised to it, as etcd does.
MIN_LEASE_TTL_S_DEFAULT = 2
# Revisions of history kept for watches before the oldest are compacted away, like etcd
# with auto-compaction: an unbounded history would be a leak in a long simulation.
HISTORY_REVISIONS_MAX = 100_000
# The first lease id; etcd's ids are opaque 64-bit numbers, these only need to be
# unique and deterministic.
_FIRST_LEASE_ID = 0x1000


class ManualClock:
    """Virtual milliseconds: callable for the time, ``advance`` to move it.

    ``advance`` first notifies every subscriber (a ``LocalCoordinationServer`` expires
    leases), then wakes each ``sleep_ms`` whose deadline has come, in deadline order.
    Woken tasks run when the caller next yields to the event loop; ``advance_settled``
    does the yielding too, in steps, so that work scheduled by one wake-up happens
    before later deadlines."""

    # Loop passes per step of ``advance_settled``: enough for a woken task to finish a
    # short chain of awaits on ready futures; bounded so a busy loop cannot spin us.
    _SETTLE_PASSES = 20

    def __init__(self, start_ms: int = 0) -> None:
        self._now_ms = start_ms
        self._subscribers: list[Callable[[], None]] = []
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> int:
        return self._now_ms

    def now_ms(self) -> int:
        return self._now_ms

    def subscribe(self, callback: Callable[[], None]) -> None:
        self._subscribers.append(callback)

    def advance(self, ms: int) -> None:
        if ms < 0:
            raise ValueError("time only moves forward")
        self._now_ms += ms
        for callback in list(self._subscribers):
            callback()
        while self._sleepers and self._sleepers[0][0] <= self._now_ms:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    async def advance_settled(self, ms: int, *, step_ms: int = 100) -> None:
        """Advance by ``ms`` in steps of at most ``step_ms``, letting the event loop run
        the woken tasks after each step."""
        remaining = ms
        while True:
            step = min(step_ms, remaining)
            self.advance(step)
            remaining -= step
            for _ in range(self._SETTLE_PASSES):
                await asyncio.sleep(0)
            if remaining <= 0:
                return

    async def sleep_ms(self, ms: int) -> None:
        """Return once virtual time has advanced by ``ms``."""
        if ms <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now_ms + ms, next(self._seq), fut))
        await fut


@dataclass(slots=True)
class _LeaseState:
    lease: Lease
    owner: LocalCoordinator
    ttl_ms: int
    deadline_ms: int
    keys: set[bytes] = field(default_factory=set)


class LocalCoordinationServer:
    """The shared store a simulation's clients connect to (``connect()``)."""

    def __init__(
        self,
        clock: Callable[[], int],
        *,
        min_lease_ttl_s: int = MIN_LEASE_TTL_S_DEFAULT,
        history_revisions_max: int = HISTORY_REVISIONS_MAX,
    ) -> None:
        self._clock = clock
        self.min_lease_ttl_s = min_lease_ttl_s
        self._history_max = history_revisions_max
        self._kv: dict[bytes, KeyValue] = {}
        # A fresh etcd is at revision 1 with no events; history[i] is revision
        # self._first_revision + i, one entry per revision.
        self._revision = 1
        self._history: list[tuple[Event, ...]] = []
        self._first_revision = 2
        self._compact_revision = 0
        self._leases: dict[int, _LeaseState] = {}
        self._lease_ids = itertools.count(_FIRST_LEASE_ID)
        self._clients: list[LocalCoordinator] = []
        # Insertion-ordered (a dict used as a set): watches are woken in the order they
        # were made, not in the order of their addresses, so a simulation replays.
        self._watches: dict[_LocalWatch, None] = {}
        self._up = True
        if isinstance(clock, ManualClock):
            clock.subscribe(self.tick)

    # -- the simulation's controls --------------------------------------------------

    def connect(self, name: str = "") -> LocalCoordinator:
        client = LocalCoordinator(self, name or f"client{len(self._clients)}")
        self._clients.append(client)
        return client

    @property
    def revision(self) -> int:
        return self._revision

    @property
    def is_up(self) -> bool:
        return self._up

    def tick(self) -> None:
        """Apply the passage of time: refresh the leases of reachable holders, expire
        the rest whose TTL ran out."""
        now = self._clock()
        for state in list(self._leases.values()):
            if self._up and self._reachable(state.owner) and not state.lease.lost:
                state.deadline_ms = now + state.ttl_ms
            elif now >= state.deadline_ms:
                # The holder gives up when its TTL has passed without contact; the store
                # deletes the keys only if it is up to do so.
                state.lease._mark_lost("not kept alive for its TTL")
                if self._up:
                    self._end_lease(state)

    def stop(self) -> None:
        """The whole store goes down: every call fails, nothing expires server-side."""
        self.tick()
        self._up = False
        self._wake_watches()

    def start(self) -> None:
        """The store is back; every lease gets a full TTL (a new etcd leader does so)."""
        self.tick()
        self._up = True
        now = self._clock()
        for state in self._leases.values():
            state.deadline_ms = now + state.ttl_ms
        self._wake_watches()

    def partition(self, client: LocalCoordinator) -> None:
        self.tick()
        client._partitioned = True
        self._wake_watches()

    def heal(self, client: LocalCoordinator) -> None:
        self.tick()
        client._partitioned = False
        self._wake_watches()

    def drop_connections(self) -> None:
        """Break every client's streams; watches reconnect and resume by themselves."""
        for watch in self._watches:
            watch._connection_dropped()
        self._wake_watches()

    def compact(self, revision: int) -> None:
        """Forget history before ``revision`` (watches from earlier get ``Compacted``)."""
        if revision > self._revision:
            raise ValueError(f"cannot compact at future revision {revision}")
        if revision <= self._compact_revision:
            return
        drop = max(0, revision - self._first_revision)
        del self._history[:drop]
        self._first_revision += drop
        self._compact_revision = revision
        self._wake_watches()

    # -- what clients call ----------------------------------------------------------

    def _reachable(self, client: LocalCoordinator) -> bool:
        return not client._closed and not client._partitioned

    def _enter(self, client: LocalCoordinator) -> None:
        if client._closed:
            raise CoordinatorUnavailable(f"{client.name} is closed")
        self.tick()
        if not self._up:
            raise CoordinatorUnavailable("the coordination store is down")
        if client._partitioned:
            raise CoordinatorUnavailable(f"{client.name} cannot reach the store")

    def _range(self, prefix: bytes | None, key: bytes | None) -> list[KeyValue]:
        if key is not None:
            kv = self._kv.get(key)
            return [] if kv is None else [kv]
        if prefix is None:
            raise InternalError("a range needs a key or a prefix")
        return sorted((kv for k, kv in self._kv.items() if k.startswith(prefix)),
                      key=lambda kv: kv.key)

    def _apply(self, ops: Sequence[Op]) -> int:
        """Apply writes at one new revision (none if nothing changes)."""
        for op in ops:
            if isinstance(op, Put) and op.lease is not None:
                state = self._leases.get(op.lease.id)
                if state is None:
                    raise LeaseLost(f"lease {op.lease.id:x} not found")
        revision = self._revision + 1
        events: list[Event] = []
        for op in ops:
            if isinstance(op, Put):
                old = self._kv.get(op.key)
                lease_id = op.lease.id if op.lease is not None else 0
                if old is not None and old.lease_id and old.lease_id != lease_id:
                    self._lease_keys(old.lease_id).discard(op.key)
                if lease_id:
                    self._leases[lease_id].keys.add(op.key)
                kv = KeyValue(
                    key=op.key, value=op.value,
                    create_revision=old.create_revision if old else revision,
                    mod_revision=revision, version=old.version + 1 if old else 1,
                    lease_id=lease_id)
                self._kv[op.key] = kv
                events.append(Event(EventKind.PUT, op.key, op.value, revision,
                                    kv.create_revision, lease_id))
            else:
                old = self._kv.pop(op.key, None)
                if old is None:
                    continue
                if old.lease_id:
                    self._lease_keys(old.lease_id).discard(op.key)
                events.append(Event(EventKind.DELETE, op.key, b"", revision, 0, 0))
        if not events:
            return self._revision
        self._revision = revision
        self._history.append(tuple(events))
        if len(self._history) > self._history_max:
            self.compact(self._revision - self._history_max + 1)
        self._wake_watches()
        return revision

    def _lease_keys(self, lease_id: int) -> set[bytes]:
        state = self._leases.get(lease_id)
        if state is None:
            raise InternalError(f"key attached to unknown lease {lease_id:x}")
        return state.keys

    def _end_lease(self, state: _LeaseState) -> None:
        self._apply([Delete(k) for k in sorted(state.keys)])
        self._leases.pop(state.lease.id, None)

    def _wake_watches(self) -> None:
        for watch in self._watches:
            watch._wake.set()

    def _events_from(self, revision: int) -> tuple[int, tuple[Event, ...]] | None:
        """(revision, events) of the first revision >= ``revision`` that exists."""
        index = max(0, revision - self._first_revision)
        if index >= len(self._history):
            return None
        return self._first_revision + index, self._history[index]


class LocalCoordinator:
    """One client of a ``LocalCoordinationServer``; implements ``Coordinator``."""

    def __init__(self, server: LocalCoordinationServer, name: str) -> None:
        self._server = server
        self.name = name
        self._closed = False
        self._partitioned = False

    async def get(self, key: bytes) -> KeyValue | None:
        self._server._enter(self)
        found = self._server._range(None, key)
        return found[0] if found else None

    async def get_prefix(self, prefix: bytes) -> Snapshot:
        self._server._enter(self)
        return Snapshot(tuple(self._server._range(prefix, None)), self._server.revision)

    async def put(self, key: bytes, value: bytes, *, lease: Lease | None = None) -> int:
        return (await self.transact({}, [Put(key, value, lease)])).revision

    async def delete(self, key: bytes) -> int:
        return (await self.transact({}, [Delete(key)])).revision

    async def transact(self, compare: Mapping[bytes, int], ops: Sequence[Op]) -> TxnResult:
        check_ops(ops)
        server = self._server
        server._enter(self)
        for key, mod_revision in compare.items():
            kv = server._kv.get(key)
            if (kv.mod_revision if kv is not None else 0) != mod_revision:
                return TxnResult(False, server.revision)
        return TxnResult(True, server._apply(ops))

    async def grant_lease(self, ttl_s: int) -> Lease:
        if ttl_s < 1:
            raise ValueError("a lease TTL is at least 1 s")
        server = self._server
        server._enter(self)
        ttl_s = max(ttl_s, server.min_lease_ttl_s)
        lease = Lease(next(server._lease_ids), ttl_s)
        ttl_ms = ttl_s * 1000
        server._leases[lease.id] = _LeaseState(lease, self, ttl_ms, server._clock() + ttl_ms)
        return lease

    async def revoke_lease(self, lease: Lease) -> None:
        server = self._server
        server._enter(self)
        state = server._leases.get(lease.id)
        lease._mark_lost("revoked")
        if state is None:
            raise LeaseLost(f"lease {lease.id:x} not found")
        server._end_lease(state)

    def watch_prefix(self, prefix: bytes, *, start_revision: int) -> WatchStream:
        if start_revision < 1:
            raise ValueError("a watch starts at revision 1 or later")
        return _LocalWatch(self, prefix, start_revision)

    async def close(self, *, revoke_leases: bool = True) -> None:
        if self._closed:
            return
        server = self._server
        mine = [s for s in server._leases.values() if s.owner is self]
        if revoke_leases and server.is_up and not self._partitioned:
            server.tick()
            for state in mine:
                state.lease._mark_lost("revoked at close")
                server._end_lease(state)
        else:
            # Cut off: the leases run out their TTL from now, as after a crash.
            server.tick()
            for state in mine:
                state.lease._mark_lost("its coordinator was closed")
        self._closed = True
        for watch in list(server._watches):
            if watch._client is self:
                await watch.aclose()

    def __repr__(self) -> str:
        return f"LocalCoordinator({self.name!r})"


class _LocalWatch:
    """A cursor over the server's history; it holds no buffer of its own, so a slow
    reader costs nothing but the history that compaction bounds."""

    def __init__(self, client: LocalCoordinator, prefix: bytes, start_revision: int) -> None:
        self._client = client
        self._prefix = prefix
        self._next_revision = start_revision
        self._last_revision = start_revision - 1
        # Events of the revision being handed out, and where we are in it.
        self._pending: list[Event] = []
        self._wake = asyncio.Event()
        self._closed = False
        self.reconnects = 0
        client._server._watches[self] = None

    @property
    def last_revision(self) -> int:
        return self._last_revision

    def __aiter__(self) -> _LocalWatch:
        return self

    async def __anext__(self) -> Event:
        server = self._client._server
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._pending:
                event = self._pending.pop(0)
                self._last_revision = event.revision
                return event
            self._wake.clear()
            server._enter(self._client)
            if self._next_revision < server._compact_revision:
                raise Compacted(server._compact_revision)
            found = server._events_from(self._next_revision)
            if found is not None:
                revision, events = found
                self._next_revision = revision + 1
                self._pending = [e for e in events if e.key.startswith(self._prefix)]
                continue
            await self._wake.wait()

    def _connection_dropped(self) -> None:
        # The resume point is everything before _next_revision, and nothing in flight
        # is lost: the pending events were already delivered to this side.
        self.reconnects += 1

    async def aclose(self) -> None:
        self._closed = True
        self._wake.set()
        self._client._server._watches.pop(self, None)
