"""``EtcdCoordinator``: the Coordinator on a real etcd (v3 API over gRPC).

What belongs here: the translation between the Coordinator interface and etcd's gRPC
services, and everything that touches the network for it: one gRPC channel over every
member's address (it fails over by itself), per-call deadlines, one keep-alive stream
per lease, resumable watch streams, and the mapping of gRPC/etcd failures onto
``CoordinatorUnavailable`` / ``LeaseLost`` / ``Compacted``. gRPC's asyncio API does the
I/O; the request and response messages are the ones ``aetcd`` generates from etcd's
``rpc.proto`` (its ``aetcd.rpc`` module; we use no other part of aetcd, whose
higher-level client hides the revision a transaction commits at).

Both libraries are imported when an ``EtcdCoordinator`` is first made, never when
``ferrymq`` is imported, so a single node does not load them.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from ferrymq._coordination._types import (
    Compacted,
    CoordinationError,
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
    prefix_range_end,
)

__all__ = [
    "REQUEST_TIMEOUT_MS_DEFAULT",
    "WATCH_RECONNECT_MS_DEFAULT",
    "EtcdCoordinator",
]

# A call's deadline. etcd on loopback answers in ~1 ms. A request in flight when the
# Raft leader dies is not failed by etcd: it hangs until this deadline, and writes
# resume only after it (measured: median 2.0 s with 2 s, 5.0 s with 5 s; 1 s gains
# nothing, since the election itself takes 1-2 s, etcd's randomised election timeout).
# See docs/coordination.md. 2 s covers one election and fails the stuck call once.
REQUEST_TIMEOUT_MS_DEFAULT = 2_000
# How long a broken watch keeps trying to resume before its iteration raises
# CoordinatorUnavailable: long enough for a member restart or an election.
WATCH_RECONNECT_MS_DEFAULT = 10_000
# Back-off between retries of reads and of broken streams: starts short (loopback
# failovers finish in tens of ms) and doubles up to the cap, so a dead cluster costs a
# few calls a second per stream, not a spin.
_RETRY_BACKOFF_FIRST_S = 0.05
_RETRY_BACKOFF_MAX_S = 0.5
# gRPC's reconnect back-off defaults grow to 120 s; after an etcd restart we want the
# channel back within a second.
_RECONNECT_BACKOFF_MAX_MS = 1_000
# HTTP/2 keep-alive pings find a silently dead connection (a hung or partitioned
# member) under an idle watch. etcd closes connections that ping more often than every
# 5 s (its --grpc-keepalive-min-time), so 10 s, with 5 s for the answer.
_KEEPALIVE_TIME_MS = 10_000
_KEEPALIVE_TIMEOUT_MS = 5_000
# etcd refuses requests over 1.5 MiB by default, but a prefix read can return far more;
# 256 MiB bounds what one response may make us hold.
_MAX_RECEIVE_BYTES = 256 * 1024 * 1024
# Asking etcd to refuse streams on a member that has lost its leader, so a watch or a
# keep-alive moves to a member that can serve it instead of hanging (etcd's own client
# sends this on every stream).
_REQUIRE_LEADER = (("hasleader", "true"),)


def _target(endpoints: Sequence[str]) -> str:
    """A gRPC target naming every member, so the channel fails over among them."""
    if not endpoints:
        raise ValueError("at least one etcd endpoint is needed")
    if len(endpoints) == 1:
        return endpoints[0]
    for endpoint in endpoints:
        host = endpoint.rsplit(":", 1)[0]
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(
                f"several endpoints must be IPv4 host:port pairs, not {endpoint!r}") from None
    return "ipv4:" + ",".join(endpoints)


class EtcdCoordinator:
    """Implements ``Coordinator`` on etcd 3.4+. Make one with ``await connect(...)``."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        request_timeout_ms: int = REQUEST_TIMEOUT_MS_DEFAULT,
        watch_reconnect_ms: int = WATCH_RECONNECT_MS_DEFAULT,
    ) -> None:
        import grpc  # type: ignore[import-untyped]
        from aetcd import rpc  # type: ignore[import-untyped]

        self._grpc: Any = grpc
        self._rpc: Any = rpc
        self._timeout_s = request_timeout_ms / 1000
        self._watch_reconnect_s = watch_reconnect_ms / 1000
        self._channel: Any = grpc.aio.insecure_channel(
            _target(endpoints),
            options=[
                ("grpc.keepalive_time_ms", _KEEPALIVE_TIME_MS),
                ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_MS),
                ("grpc.max_receive_message_length", _MAX_RECEIVE_BYTES),
                ("grpc.initial_reconnect_backoff_ms", 50),
                ("grpc.min_reconnect_backoff_ms", 50),
                ("grpc.max_reconnect_backoff_ms", _RECONNECT_BACKOFF_MAX_MS),
            ],
        )
        self._kv: Any = rpc.KVStub(self._channel)
        self._lease_stub: Any = rpc.LeaseStub(self._channel)
        self._watch_stub: Any = rpc.WatchStub(self._channel)
        self._keepalives: dict[int, tuple[Lease, asyncio.Task[None]]] = {}
        self._watches: set[_EtcdWatch] = set()
        self._closed = False

    @classmethod
    async def connect(cls, endpoints: Sequence[str], **kwargs: int) -> EtcdCoordinator:
        """A coordinator whose cluster has answered one linearizable read."""
        coordinator = cls(endpoints, **kwargs)
        try:
            await coordinator.get(b"\0ferrymq-connect-probe")
        except BaseException:
            await coordinator.close(revoke_leases=False)
            raise
        return coordinator

    # -- calls ------------------------------------------------------------------------

    def _error(self, exc: Any, what: str) -> Exception:
        """Translate a gRPC failure (etcd's errors travel as gRPC statuses)."""
        code = self._grpc.StatusCode
        status = exc.code()
        details = exc.details() or ""
        message = f"etcd {what}: {status.name} {details}".strip()
        if status == code.NOT_FOUND and "lease" in details:
            return LeaseLost(message)
        if status in (code.UNAVAILABLE, code.DEADLINE_EXCEEDED, code.RESOURCE_EXHAUSTED,
                      code.CANCELLED, code.ABORTED):
            return CoordinatorUnavailable(message)
        if status == code.OUT_OF_RANGE and "compacted" in details:
            return CoordinationError(message)
        if status == code.INVALID_ARGUMENT:
            return ValueError(message)
        return CoordinationError(message)

    async def _call(self, method: Any, request: Any, what: str, *, retry: bool) -> Any:
        """One unary call under the deadline. ``retry`` repeats it (reads only) after
        a transient failure while the deadline allows; writes are never resent, since
        a failed one may still have been applied."""
        if self._closed:
            raise CoordinatorUnavailable("the coordinator is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        backoff = _RETRY_BACKOFF_FIRST_S
        while True:
            remaining = deadline - loop.time()
            try:
                return await method(request, timeout=max(remaining, 0.001),
                                    wait_for_ready=True)
            except self._grpc.aio.AioRpcError as exc:
                error = self._error(exc, what)
                if (not retry or not isinstance(error, CoordinatorUnavailable)
                        or deadline - loop.time() <= backoff):
                    raise error from exc
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _RETRY_BACKOFF_MAX_S)

    @staticmethod
    def _kv_of(kv: Any) -> KeyValue:
        return KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.version,
                        kv.lease)

    async def get(self, key: bytes) -> KeyValue | None:
        resp = await self._call(self._kv.Range, self._rpc.RangeRequest(key=key), "get",
                                retry=True)
        return self._kv_of(resp.kvs[0]) if resp.kvs else None

    async def get_prefix(self, prefix: bytes) -> Snapshot:
        request = self._rpc.RangeRequest(
            key=prefix or b"\0", range_end=prefix_range_end(prefix),
            sort_order=self._rpc.RangeRequest.ASCEND, sort_target=self._rpc.RangeRequest.KEY)
        resp = await self._call(self._kv.Range, request, "get_prefix", retry=True)
        return Snapshot(tuple(self._kv_of(kv) for kv in resp.kvs), resp.header.revision)

    async def put(self, key: bytes, value: bytes, *, lease: Lease | None = None) -> int:
        check_ops([Put(key, value, lease)])
        request = self._rpc.PutRequest(key=key, value=value,
                                       lease=lease.id if lease is not None else 0)
        resp = await self._call(self._kv.Put, request, "put", retry=False)
        return int(resp.header.revision)

    async def delete(self, key: bytes) -> int:
        resp = await self._call(self._kv.DeleteRange, self._rpc.DeleteRangeRequest(key=key),
                                "delete", retry=False)
        return int(resp.header.revision)

    def _request_op(self, op: Op) -> Any:
        rpc = self._rpc
        if isinstance(op, Put):
            return rpc.RequestOp(request_put=rpc.PutRequest(
                key=op.key, value=op.value, lease=op.lease.id if op.lease is not None else 0))
        if isinstance(op, Delete):
            return rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=op.key))
        raise TypeError(f"not a transaction op: {op!r}")

    async def transact(self, compare: Mapping[bytes, int], ops: Sequence[Op]) -> TxnResult:
        check_ops(ops)
        rpc = self._rpc
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(key=key, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD,
                            mod_revision=revision)
                for key, revision in compare.items()
            ],
            success=[self._request_op(op) for op in ops],
        )
        resp = await self._call(self._kv.Txn, request, "txn", retry=False)
        return TxnResult(bool(resp.succeeded), int(resp.header.revision))

    async def compact(self, revision: int) -> None:
        """Drop history before ``revision`` and wait until it is gone. (An operator's
        tool, not part of the Coordinator interface; production uses etcd's
        ``--auto-compaction-*``.)"""
        request = self._rpc.CompactionRequest(revision=revision, physical=True)
        try:
            await self._call(self._kv.Compact, request, "compact", retry=False)
        except CoordinationError as exc:
            if "required revision has been compacted" in str(exc):
                return
            if "future revision" in str(exc):
                raise ValueError(str(exc)) from exc
            raise

    # -- leases -----------------------------------------------------------------------

    async def grant_lease(self, ttl_s: int) -> Lease:
        if ttl_s < 1:
            raise ValueError("a lease TTL is at least 1 s")
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        resp = await self._call(self._lease_stub.LeaseGrant,
                                self._rpc.LeaseGrantRequest(TTL=ttl_s), "lease grant",
                                retry=False)
        if resp.error:
            raise CoordinationError(f"etcd lease grant: {resp.error}")
        lease = Lease(int(resp.ID), int(resp.TTL))
        task = loop.create_task(self._keep_alive(lease, sent_at + lease.ttl_s),
                                name=f"etcd-keepalive-{lease.id:x}")
        self._keepalives[lease.id] = (lease, task)
        return lease

    async def _keep_alive(self, lease: Lease, deadline: float) -> None:
        """Refresh the lease every third of its TTL until it is revoked or lost.

        ``deadline`` is when the store may expire the lease at the earliest: the send
        time of the last acknowledged keep-alive plus the TTL it granted. Past it the
        lease counts as lost even if etcd, unreachable, might still hold it."""
        loop = asyncio.get_running_loop()
        request = self._rpc.LeaseKeepAliveRequest(ID=lease.id)
        interval_s = lease.ttl_s / 3
        backoff = _RETRY_BACKOFF_FIRST_S
        try:
            while not lease.lost:
                call = self._lease_stub.LeaseKeepAlive(metadata=_REQUIRE_LEADER,
                                                       wait_for_ready=True)
                try:
                    async with asyncio.timeout_at(deadline) as timer:
                        while True:
                            sent_at = loop.time()
                            await call.write(request)
                            resp = await call.read()
                            if resp is self._grpc.aio.EOF:
                                break
                            if resp.TTL <= 0:
                                lease._mark_lost("expired (etcd answered TTL 0)")
                                return
                            deadline = sent_at + resp.TTL
                            timer.reschedule(deadline)
                            backoff = _RETRY_BACKOFF_FIRST_S
                            await asyncio.sleep(interval_s)
                except TimeoutError:
                    lease._mark_lost(f"no keep-alive acknowledged for {lease.ttl_s} s")
                    return
                except (self._grpc.aio.AioRpcError, asyncio.InvalidStateError):
                    # The stream failed (InvalidStateError: it ended before our write);
                    # reconnect below, within the same deadline.
                    pass
                finally:
                    call.cancel()
                if loop.time() + backoff >= deadline:
                    lease._mark_lost(f"no keep-alive acknowledged for {lease.ttl_s} s")
                    return
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _RETRY_BACKOFF_MAX_S)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            # A bug, not an outage: still nobody keeps the lease alive any more.
            lease._mark_lost(f"keep-alive task failed: {exc!r}")
            raise
        finally:
            self._keepalives.pop(lease.id, None)

    async def revoke_lease(self, lease: Lease) -> None:
        entry = self._keepalives.pop(lease.id, None)
        if entry is not None:
            entry[1].cancel()
        lease._mark_lost("revoked")
        await self._call(self._lease_stub.LeaseRevoke,
                         self._rpc.LeaseRevokeRequest(ID=lease.id), "lease revoke",
                         retry=False)

    # -- watches ----------------------------------------------------------------------

    def watch_prefix(self, prefix: bytes, *, start_revision: int) -> WatchStream:
        if start_revision < 1:
            raise ValueError("a watch starts at revision 1 or later")
        watch = _EtcdWatch(self, prefix, start_revision)
        self._watches.add(watch)
        return watch

    # -- lifecycle --------------------------------------------------------------------

    async def close(self, *, revoke_leases: bool = True) -> None:
        if self._closed:
            return
        entries = list(self._keepalives.values())
        for lease, task in entries:
            task.cancel()
            if not revoke_leases:
                lease._mark_lost("its coordinator was closed")
        if revoke_leases:
            for lease, _ in entries:
                try:
                    await self.revoke_lease(lease)
                except CoordinationError:
                    pass  # it expires by its TTL instead
        for watch in list(self._watches):
            await watch.aclose()
        self._closed = True
        for _, task in entries:
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self._channel.close()


class _EtcdWatch:
    """One gRPC watch stream, read on demand (no background task, no queue of ours:
    a slow reader is slowed down by gRPC flow control and etcd keeps the backlog)."""

    def __init__(self, owner: EtcdCoordinator, prefix: bytes, start_revision: int) -> None:
        self._owner = owner
        self._prefix = prefix
        self._next_revision = start_revision
        self._last_revision = start_revision - 1
        self._pending: list[Event] = []
        self._call: Any = None
        self._closed = False
        self.reconnects = 0

    @property
    def last_revision(self) -> int:
        return self._last_revision

    def __aiter__(self) -> _EtcdWatch:
        return self

    async def __anext__(self) -> Event:
        while True:
            if self._closed:
                raise StopAsyncIteration
            if self._pending:
                event = self._pending.pop(0)
                self._last_revision = event.revision
                return event
            await self._fill()

    async def _open(self) -> Any:
        """Open a stream and create the watch on it; the first response (``created``,
        or the end of the stream). Bounded by the caller: a dead cluster never answers."""
        owner = self._owner
        rpc = owner._rpc
        call = owner._watch_stub.Watch(metadata=_REQUIRE_LEADER, wait_for_ready=True)
        self._call = call
        create = rpc.WatchCreateRequest(
            key=self._prefix or b"\0", range_end=prefix_range_end(self._prefix),
            start_revision=self._next_revision, progress_notify=True)
        await call.write(rpc.WatchRequest(create_request=create))
        return await call.read()

    async def _fill(self) -> None:
        """Read responses until one carries events; repair a broken stream."""
        owner = self._owner
        aio = owner._grpc.aio
        loop = asyncio.get_running_loop()
        broken_since: float | None = None
        backoff = _RETRY_BACKOFF_FIRST_S
        while not self._closed:
            try:
                if self._call is None:
                    # Opening (first or again) is bounded by what is left of the
                    # reconnect budget; reading an open stream is not: a quiet prefix
                    # is not a failure, and HTTP/2 keep-alives find a dead connection.
                    spent = 0.0 if broken_since is None else loop.time() - broken_since
                    try:
                        resp = await asyncio.wait_for(
                            self._open(), max(owner._watch_reconnect_s - spent, 0.001))
                    except TimeoutError:
                        self._drop_call()
                        raise CoordinatorUnavailable(
                            f"watch of {self._prefix!r} could not be (re)opened at "
                            f"revision {self._next_revision} within "
                            f"{owner._watch_reconnect_s:.0f} s") from None
                else:
                    resp = await self._call.read()
            except asyncio.CancelledError:
                # aclose() from another task cancels the gRPC call, and gRPC raises
                # CancelledError in the reader: that is the end of the stream, not a
                # cancellation of the reading task (unless it really is one).
                task = asyncio.current_task()
                if self._closed and (task is None or task.cancelling() == 0):
                    return
                raise
            except asyncio.InvalidStateError:
                resp = None  # the stream ended under our write: treat it as broken
            except aio.AioRpcError as exc:
                error = owner._error(exc, "watch")
                if not isinstance(error, CoordinatorUnavailable) or self._closed:
                    if self._closed:
                        return
                    raise error from exc
                resp = None
            if resp is not None and resp is not aio.EOF:
                if resp.compact_revision:
                    self._drop_call()
                    raise Compacted(int(resp.compact_revision))
                if resp.canceled:
                    resp = None  # e.g. the member lost its leader: resume elsewhere
                else:
                    broken_since = None
                    backoff = _RETRY_BACKOFF_FIRST_S
                    if resp.events:
                        self._take(resp.events)
                        return
                    if not resp.created and resp.header.revision >= self._next_revision:
                        # A progress notification: nothing under our prefix up to here.
                        self._next_revision = int(resp.header.revision) + 1
                    continue
            # The stream broke (error, end of stream, or cancelled by the server).
            self._drop_call()
            now = loop.time()
            if broken_since is None:
                broken_since = now
            elif now - broken_since >= owner._watch_reconnect_s:
                raise CoordinatorUnavailable(
                    f"watch of {self._prefix!r} could not be resumed at revision "
                    f"{self._next_revision} for {owner._watch_reconnect_s:.0f} s")
            self.reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _RETRY_BACKOFF_MAX_S)

    def _take(self, events: Any) -> None:
        put = self._owner._rpc.Event.PUT
        taken = []
        for ev in events:
            kv = ev.kv
            if ev.type == put:
                taken.append(Event(EventKind.PUT, kv.key, kv.value, kv.mod_revision,
                                   kv.create_revision, kv.lease))
            else:
                taken.append(Event(EventKind.DELETE, kv.key, b"", kv.mod_revision, 0, 0))
        # A response never splits a revision (we do not ask for fragments), so
        # resuming after its last revision neither repeats nor skips an event.
        self._next_revision = taken[-1].revision + 1
        self._pending = taken

    def _drop_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def aclose(self) -> None:
        self._closed = True
        self._drop_call()
        self._owner._watches.discard(self)
