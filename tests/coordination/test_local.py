"""The in-process store beyond the shared contract: a hypothesis state machine against a
plain model, and what only virtual time can pin down exactly (when a lease counts as
lost, what a store outage does to leases, the history bound, the clock itself)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ferrymq._coordination import (
    Compacted,
    CoordinatorUnavailable,
    Delete,
    EventKind,
    Lease,
    LeaseLost,
    LocalCoordinationServer,
    ManualClock,
    Put,
    WatchStream,
)

T = TypeVar("T")

KEYS = [b"a", b"a/x", b"a/y", b"b", b"b/z"]
PREFIXES = [b"", b"a", b"a/", b"b/", b"c"]
TTL_S = 2


class LocalStoreMachine(RuleBasedStateMachine):
    """Random writes, transactions, leases that expire, and compactions; the store must
    agree with a dict-and-list model on contents, revisions and the watch history."""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.server = LocalCoordinationServer(self.clock, min_lease_ttl_s=TTL_S)
        self.main = self.server.connect("main")
        self.volatile = self.server.connect("volatile")
        # key -> (value, create_revision, mod_revision, version, lease id)
        self.kv: dict[bytes, tuple[bytes, int, int, int, int]] = {}
        self.revision = 1
        self.history: list[tuple[int, EventKind, bytes, bytes]] = []
        self.leases: dict[int, tuple[Lease, set[bytes]]] = {}
        self.compacted = 0

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.loop.close()

    # -- the model's writes --------------------------------------------------------

    def model_apply(self, ops: list[tuple[str, bytes, bytes, int]]) -> None:
        revision = self.revision + 1
        changed = False
        for kind, key, value, lease_id in ops:
            old = self.kv.get(key)
            if old is not None and old[4]:
                self.leases[old[4]][1].discard(key)
            if kind == "put":
                self.kv[key] = (value, old[1] if old else revision, revision,
                                old[3] + 1 if old else 1, lease_id)
                if lease_id:
                    self.leases[lease_id][1].add(key)
                self.history.append((revision, EventKind.PUT, key, value))
                changed = True
            elif old is not None:
                del self.kv[key]
                self.history.append((revision, EventKind.DELETE, key, b""))
                changed = True
        if changed:
            self.revision = revision

    def pick_lease(self, index: int | None) -> Lease | None:
        live = sorted(self.leases)
        if index is None or not live:
            return None
        return self.leases[live[index % len(live)]][0]

    # -- rules ---------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), value=st.binary(max_size=3),
          lease=st.none() | st.integers(0, 5))
    def put(self, key: bytes, value: bytes, lease: int | None) -> None:
        chosen = self.pick_lease(lease)
        revision = self.run(self.main.put(key, value, lease=chosen))
        self.model_apply([("put", key, value, chosen.id if chosen else 0)])
        assert revision == self.revision

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: bytes) -> None:
        revision = self.run(self.main.delete(key))
        self.model_apply([("delete", key, b"", 0)])
        assert revision == self.revision

    @rule(keys=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
          stale=st.booleans(), delete_last=st.booleans(), value=st.binary(max_size=2))
    def cas(self, keys: list[bytes], stale: bool, delete_last: bool, value: bytes) -> None:
        compare = {k: self.kv[k][2] if k in self.kv else 0 for k in keys}
        if stale:
            compare[keys[0]] += 1
        ops: list[Put | Delete] = [Put(k, value) for k in keys[:-1]]
        ops.append(Delete(keys[-1]) if delete_last else Put(keys[-1], value))
        result = self.run(self.main.transact(compare, ops))
        assert result.succeeded is not stale
        if not stale:
            self.model_apply([("delete" if isinstance(op, Delete) else "put", op.key,
                               op.value if isinstance(op, Put) else b"", 0) for op in ops])
        assert result.revision == self.revision

    @precondition(lambda self: len(self.leases) < 4)
    @rule()
    def grant(self) -> None:
        lease = self.run(self.volatile.grant_lease(1))
        assert lease.ttl_s == TTL_S
        self.leases[lease.id] = (lease, set())

    @precondition(lambda self: bool(self.leases))
    @rule(index=st.integers(0, 5))
    def revoke(self, index: int) -> None:
        lease = self.pick_lease(index)
        assert lease is not None
        self.run(self.volatile.revoke_lease(lease))
        self.model_apply([("delete", k, b"", 0) for k in sorted(self.leases[lease.id][1])])
        del self.leases[lease.id]
        assert lease.lost

    @rule(ms=st.integers(0, 5_000))
    def time_passes_while_connected(self, ms: int) -> None:
        self.clock.advance(ms)  # a connected holder keeps every lease

    @rule()
    def holder_cut_off_for_a_ttl(self) -> None:
        self.server.partition(self.volatile)
        self.clock.advance(TTL_S * 1000 - 1)
        assert not any(lease.lost for lease, _ in self.leases.values())
        self.clock.advance(1)
        for lease_id in sorted(self.leases):
            lease, keys = self.leases[lease_id]
            assert lease.lost
            self.model_apply([("delete", k, b"", 0) for k in sorted(keys)])
            del self.leases[lease_id]
        self.server.heal(self.volatile)

    @precondition(lambda self: self.revision > self.compacted)
    @rule(data=st.data())
    def compact(self, data: st.DataObject) -> None:
        revision = data.draw(st.integers(max(self.compacted, 1), self.revision))
        self.server.compact(revision)
        self.compacted = max(self.compacted, revision)

    # -- what must hold ------------------------------------------------------------

    @invariant()
    def contents_agree(self) -> None:
        for prefix in PREFIXES:
            snap = self.run(self.main.get_prefix(prefix))
            assert snap.revision == self.revision
            got = {kv.key: (kv.value, kv.create_revision, kv.mod_revision, kv.version,
                            kv.lease_id) for kv in snap.items}
            assert got == {k: v for k, v in self.kv.items() if k.startswith(prefix)}
            assert [kv.key for kv in snap.items] == sorted(got)

    @staticmethod
    async def drain(stream: WatchStream, n: int) -> list[tuple[int, EventKind, bytes, bytes]]:
        out = []
        for _ in range(n):
            event = await asyncio.wait_for(anext(stream), 1)
            out.append((event.revision, event.kind, event.key, event.value))
        return out

    @invariant()
    def history_agrees(self) -> None:
        start = max(self.compacted, 1)
        for prefix in (b"", b"a/"):
            expected = [e for e in self.history if e[0] >= start and e[2].startswith(prefix)]
            stream = self.main.watch_prefix(prefix, start_revision=start)

            assert self.run(self.drain(stream, len(expected))) == expected
            self.run(stream.aclose())
        if self.compacted > 1:
            early = self.main.watch_prefix(b"", start_revision=self.compacted - 1)
            with pytest.raises(Compacted):
                self.run(asyncio.wait_for(anext(early), 1))
            self.run(early.aclose())


TestLocalStoreMachine = LocalStoreMachine.TestCase
TestLocalStoreMachine.settings = settings(max_examples=60, stateful_step_count=30,
                                          deadline=None)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_a_cut_off_holder_loses_its_lease_exactly_one_ttl_later() -> None:
    async def body() -> None:
        clock = ManualClock()
        server = LocalCoordinationServer(clock)
        holder, other = server.connect("holder"), server.connect("other")
        lease = await holder.grant_lease(5)
        await holder.put(b"k", b"v", lease=lease)
        clock.advance(60_000)  # connected: kept alive however long
        assert not lease.lost
        server.partition(holder)
        with pytest.raises(CoordinatorUnavailable):
            await holder.get(b"k")
        clock.advance(4_999)
        assert not lease.lost and await other.get(b"k") is not None
        clock.advance(1)
        assert lease.lost and await other.get(b"k") is None
        server.heal(holder)
        with pytest.raises(LeaseLost):
            await holder.put(b"k", b"again", lease=lease)

    run(body())


def test_a_store_outage_loses_leases_on_the_holder_side_and_renews_them_on_return() -> None:
    async def body() -> None:
        clock = ManualClock()
        server = LocalCoordinationServer(clock)
        holder = server.connect("holder")
        lease = await holder.grant_lease(2)
        await holder.put(b"k", b"v", lease=lease)
        server.stop()
        clock.advance(2_000)
        # The holder must give up at its deadline; the store, down, deletes nothing.
        assert lease.lost
        server.start()
        kv = await holder.get(b"k")
        assert kv is not None  # renewed by a full TTL when the store came back ...
        clock.advance(1_999)
        assert await holder.get(b"k") is not None
        clock.advance(1)  # ... and nobody keeps a lost lease alive
        assert await holder.get(b"k") is None

    run(body())


def test_a_partitioned_clients_watch_fails_and_a_new_one_resumes() -> None:
    async def body() -> None:
        server = LocalCoordinationServer(ManualClock())
        writer, watcher = server.connect("w"), server.connect("r")
        first = await writer.put(b"p/1", b"1")
        stream = watcher.watch_prefix(b"p/", start_revision=first)
        assert (await anext(stream)).revision == first
        server.partition(watcher)
        await writer.put(b"p/2", b"2")
        with pytest.raises(CoordinatorUnavailable):
            await anext(stream)
        server.heal(watcher)
        resumed = watcher.watch_prefix(b"p/", start_revision=stream.last_revision + 1)
        event = await anext(resumed)
        assert (event.key, event.revision) == (b"p/2", first + 1)
        await resumed.aclose()
        with pytest.raises(StopAsyncIteration):
            await anext(resumed)

    run(body())


def test_history_is_bounded_like_auto_compaction() -> None:
    async def body() -> None:
        server = LocalCoordinationServer(ManualClock(), history_revisions_max=10)
        c = server.connect()
        for i in range(25):
            await c.put(b"k", b"%d" % i)
        stream = c.watch_prefix(b"k", start_revision=2)
        with pytest.raises(Compacted) as caught:
            await anext(stream)
        assert caught.value.compact_revision == server.revision - 9
        kept = c.watch_prefix(b"k", start_revision=caught.value.compact_revision)
        assert (await anext(kept)).revision == caught.value.compact_revision

    run(body())


def test_manual_clock_wakes_sleepers_in_deadline_order() -> None:
    async def body() -> None:
        clock = ManualClock(start_ms=100)
        woke: list[tuple[str, int]] = []

        async def sleeper(name: str, ms: int) -> None:
            await clock.sleep_ms(ms)
            woke.append((name, clock()))

        tasks = [asyncio.create_task(sleeper(n, ms)) for n, ms in (("b", 30), ("a", 10))]
        await asyncio.sleep(0)
        clock.advance(9)
        await asyncio.sleep(0)
        assert woke == []
        await clock.advance_settled(30, step_ms=10)
        assert woke == [("a", 119), ("b", 139)]
        await asyncio.gather(*tasks)
        with pytest.raises(ValueError):
            clock.advance(-1)

    run(body())


def test_the_default_minimum_ttl_is_etcds() -> None:
    async def body() -> None:
        c = LocalCoordinationServer(ManualClock()).connect()
        assert [(await c.grant_lease(t)).ttl_s for t in (1, 2, 3)] == [2, 2, 3]

    run(body())
