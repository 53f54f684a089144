"""The Coordinator contract, run on both implementations (real etcd and the local store).

Each test states one behaviour the cluster relies on. The etcd runs are real: a child
etcd on loopback, real lease expiry (etcd's minimum TTL, 1 s with the fixture's 500 ms
election timeout), a member SIGKILLed and restarted under an open watch, the process
killed to see calls fail. The local runs use virtual time, so the same waits cost
nothing. Keys are namespaced per test because the etcd member is shared.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable

import pytest

from ferrymq._coordination import (
    Compacted,
    Coordinator,
    CoordinatorUnavailable,
    Delete,
    Election,
    Event,
    EventKind,
    Lease,
    LeaseLost,
    Put,
    WatchStream,
)

from ._harness import Harness, run


def ns() -> bytes:
    return b"/contract/" + uuid.uuid4().hex.encode() + b"/"


async def take(stream: WatchStream, count: int, timeout_s: float = 10.0) -> list[Event]:
    """The next ``count`` events (a real-time bound, so a missing event fails fast)."""

    async def collect() -> list[Event]:
        return [await anext(stream) for _ in range(count)]

    return await asyncio.wait_for(collect(), timeout_s)


# -- keys, revisions, transactions -----------------------------------------------------


def test_put_get_revisions(harness: Harness) -> None:
    async def body(h: Harness) -> None:
        c = await h.client()
        p = ns()
        assert await c.get(p + b"a") is None
        r1 = await c.put(p + b"a", b"one")
        kv = await c.get(p + b"a")
        assert kv is not None
        assert (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease_id) == (
            b"one", r1, r1, 1, 0)
        r2 = await c.put(p + b"a", b"two")
        assert r2 > r1
        kv = await c.get(p + b"a")
        assert kv is not None
        assert (kv.value, kv.create_revision, kv.mod_revision, kv.version) == (
            b"two", r1, r2, 2)

    run(harness, body)


def test_get_prefix_is_sorted_bounded_and_carries_its_revision(harness: Harness) -> None:
    async def body(h: Harness) -> None:
        c = await h.client()
        p = ns()
        for key in (b"b", b"a", b"c"):
            await c.put(p + key, key)
        await c.put(p[:-1] + b"0", b"outside")  # the byte after "/" sorts later
        last = await c.put(p + b"a/deeper", b"x")
        snap = await c.get_prefix(p)
        assert [kv.key for kv in snap.items] == [p + b"a", p + b"a/deeper", p + b"b", p + b"c"]
        assert snap.revision >= last

    run(harness, body)


def test_delete_and_writes_that_change_nothing(harness: Harness) -> None:
    async def body(h: Harness) -> None:
        c = await h.client()
        p = ns()
        r1 = await c.put(p + b"k", b"v")
        r2 = await c.delete(p + b"k")
        assert r2 == r1 + 1 or r2 > r1
        assert await c.get(p + b"k") is None
        # Deleting what is absent changes nothing, so makes no revision (on the local
        # store nobody else writes, so the revision must stay exactly the same).
        r3 = await c.delete(p + b"k")
        if h.name == "local":
            assert r3 == r2
        else:
            assert r3 >= r2
        res = await c.transact({}, [Delete(p + b"absent")])
        assert res.succeeded
        if h.name == "local":
            assert res.revision == r2

    run(harness, body)


def test_transaction_applies_all_or_nothing_on_mod_revision(harness: Harness) -> None:
    async def body(h: Harness) -> None:
        c = await h.client()
        p = ns()
        # Compare with 0 = create only.
        created = await c.transact({p + b"x": 0}, [Put(p + b"x", b"1"), Put(p + b"y", b"1")])
        assert created.succeeded
        x, y = await c.get(p + b"x"), await c.get(p + b"y")
        assert x is not None and y is not None
        assert x.mod_revision == y.mod_revision == created.revision  # one revision
        again = await c.transact({p + b"x": 0}, [Put(p + b"x", b"2")])
        assert not again.succeeded and again.revision >= created.revision
        # One stale compare among good ones fails the whole transaction.
        stale = await c.transact({p + b"x": x.mod_revision, p + b"y": x.mod_revision - 1},
                                 [Put(p + b"x", b"3"), Delete(p + b"y")])
        assert not stale.succeeded
        kv = await c.get(p + b"x")
        assert kv is not None and kv.value == b"1"
        assert await c.get(p + b"y") is not None
        swapped = await c.transact({p + b"x": x.mod_revision, p + b"y": y.mod_revision},
                                   [Put(p + b"x", b"4"), Delete(p + b"y")])
        assert swapped.succeeded and swapped.revision > created.revision
        kv = await c.get(p + b"x")
        assert kv is not None and (kv.value, kv.mod_revision) == (b"4", swapped.revision)
        assert await c.get(p + b"y") is None
        with pytest.raises(ValueError):
            await c.transact({}, [Put(p + b"z", b"1"), Delete(p + b"z")])

    run(harness, body)


def test_cas_race_between_two_clients(harness: Harness) -> None:
    """Two clients increment one counter with read-then-CAS loops, interleaved: every
    increment lands exactly once, and some CAS attempts really did lose the race."""
    increments = 15

    async def body(h: Harness) -> None:
        a, b = await h.client(), await h.client()
        key = ns() + b"counter"
        await a.put(key, b"0")
        lost_races = 0

        async def incrementer(c: Coordinator) -> list[int]:
            nonlocal lost_races
            won: list[int] = []
            while len(won) < increments:
                kv = await c.get(key)
                assert kv is not None
                await asyncio.sleep(0)  # let the other client read the same revision
                res = await c.transact({key: kv.mod_revision},
                                       [Put(key, b"%d" % (int(kv.value) + 1))])
                if res.succeeded:
                    won.append(res.revision)
                else:
                    lost_races += 1
            return won

        won_a, won_b = await asyncio.gather(incrementer(a), incrementer(b))
        final = await a.get(key)
        assert final is not None and int(final.value) == 2 * increments
        assert len(set(won_a) | set(won_b)) == 2 * increments
        assert lost_races > 0

        # The plain race: both read one revision, exactly one of them may write.
        kv = await a.get(key)
        assert kv is not None
        results = await asyncio.gather(
            a.transact({key: kv.mod_revision}, [Put(key, b"from a")]),
            b.transact({key: kv.mod_revision}, [Put(key, b"from b")]))
        assert sorted(r.succeeded for r in results) == [False, True]

    run(harness, body)


# -- leases ------------------------------------------------------------------------


def test_lease_keys_go_with_a_revoke_in_one_revision(harness: Harness) -> None:
    async def body(h: Harness) -> None:
        c = await h.client()
        p = ns()
        lease = await c.grant_lease(h.min_ttl_s)
        assert lease.ttl_s >= h.min_ttl_s and not lease.lost
        start = await c.put(p + b"a", b"1", lease=lease)
        await c.transact({}, [Put(p + b"b", b"1", lease)])
        kv = await c.get(p + b"a")
        assert kv is not None and kv.lease_id == lease.id
        stream = c.watch_prefix(p, start_revision=start + 2)
        await c.revoke_lease(lease)
        assert lease.lost
        deletes = await take(stream, 2)
        await stream.aclose()
        assert {e.kind for e in deletes} == {EventKind.DELETE}
        assert deletes[0].revision == deletes[1].revision
        assert (await c.get_prefix(p)).items == ()
        with pytest.raises(LeaseLost):
            await c.put(p + b"c", b"1", lease=lease)

    run(harness, body)


def test_the_store_refuses_a_write_with_a_lease_it_no_longer_has(harness: Harness) -> None:
    """Another client's view of a lease that was revoked meanwhile: the store itself
    says the lease is gone (not just the holder's own bookkeeping)."""

    async def body(h: Harness) -> None:
        a, b = await h.client(), await h.client()
        lease = await a.grant_lease(h.min_ttl_s)
        stale_view = Lease(lease.id, lease.ttl_s)  # as b would know it, e.g. from a key
        await a.revoke_lease(lease)
        assert not stale_view.lost
        with pytest.raises(LeaseLost):
            await b.put(ns() + b"k", b"v", lease=stale_view)
        with pytest.raises(LeaseLost):
            await b.transact({}, [Put(ns() + b"k", b"v", stale_view)])

    run(harness, body)


def test_a_lease_gets_its_ttl_or_the_minimum(harness: Harness) -> None:
    """(Here the minimum is 1 s; a TTL below a larger minimum is raised to it:
    test_local and test_etcd check that with the default 2 s.)"""

    async def body(h: Harness) -> None:
        c = await h.client()
        short, longer = await c.grant_lease(1), await c.grant_lease(h.min_ttl_s + 2)
        assert (short.ttl_s, longer.ttl_s) == (h.min_ttl_s, h.min_ttl_s + 2)
        assert short.id != longer.id
        with pytest.raises(ValueError):
            await c.grant_lease(0)

    run(harness, body)


def test_a_kept_lease_outlives_its_ttl(harness: Harness) -> None:
    async def body(h: Harness) -> None:
        c = await h.client()
        key = ns() + b"held"
        lease = await c.grant_lease(h.min_ttl_s)
        await c.put(key, b"1", lease=lease)
        await h.pass_time(3 * lease.ttl_s * 1000)
        assert not lease.lost
        kv = await c.get(key)
        assert kv is not None and kv.lease_id == lease.id

    run(harness, body)


def test_a_crashed_holders_lease_expires_and_takes_its_keys(harness: Harness) -> None:
    async def body(h: Harness) -> None:
        holder, other = await h.client(), await h.client()
        p = ns()
        lease = await holder.grant_lease(h.min_ttl_s)
        start = await holder.put(p + b"member", b"1", lease=lease)
        stream = other.watch_prefix(p, start_revision=start + 1)
        await holder.close(revoke_leases=False)  # what a kill -9 does to the holder
        assert lease.lost  # the holder itself can no longer count on it

        async def gone() -> bool:
            return await other.get(p + b"member") is None

        # etcd checks for expired leases every 500 ms, so allow TTL + 1 s.
        waited = await h.eventually(gone, lease.ttl_s * 1000 + 1_500, "expiry")
        assert waited >= lease.ttl_s * 1000 - 300  # not before the TTL ran out
        [event] = await take(stream, 1)
        assert (event.kind, event.key) == (EventKind.DELETE, p + b"member")
        await stream.aclose()

    run(harness, body)


# -- watches -----------------------------------------------------------------------


def test_watch_from_a_past_revision_sees_every_change_in_order(harness: Harness) -> None:
    async def body(h: Harness) -> None:
        c = await h.client()
        p = ns()
        first = await c.put(p + b"a", b"1")
        await c.put(p + b"b", b"1")
        await c.put(ns() + b"elsewhere", b"1")
        await c.transact({}, [Put(p + b"a", b"2"), Delete(p + b"b")])
        stream = c.watch_prefix(p, start_revision=first)
        assert stream.last_revision == first - 1
        events = await take(stream, 4)
        later = await c.put(p + b"c", b"1")
        events += await take(stream, 1)
        await stream.aclose()
        assert [(e.kind, e.key[len(p):], e.value) for e in events] == [
            (EventKind.PUT, b"a", b"1"), (EventKind.PUT, b"b", b"1"),
            (EventKind.PUT, b"a", b"2"), (EventKind.DELETE, b"b", b""),
            (EventKind.PUT, b"c", b"1")]
        revisions = [e.revision for e in events]
        assert revisions == sorted(revisions) and revisions[0] == first
        assert revisions[2] == revisions[3]  # one transaction, one revision
        assert revisions[-1] == later and stream.last_revision == later
        assert events[2].create_revision == first  # a rewrite keeps its creation

    run(harness, body)


def test_watch_resumes_after_a_dropped_connection(faulty_harness: Harness) -> None:
    """The watcher's connection breaks (on etcd: the member is SIGKILLed and restarted)
    while it has events left to read; it resumes by itself, missing and repeating
    nothing."""

    async def body(h: Harness) -> None:
        writer, watcher = await h.client(), await h.client()
        p = ns()
        first = await writer.put(p + b"0", b"before")
        stream = watcher.watch_prefix(p, start_revision=first)
        for i in range(1, 4):
            await writer.put(p + b"%d" % i, b"before")
        seen = await take(stream, 2)
        await h.drop_connections()
        for i in range(4, 7):
            await writer.put(p + b"%d" % i, b"after")
        await writer.delete(p + b"0")
        seen += await take(stream, 6)
        await stream.aclose()
        assert [e.key[len(p):] for e in seen] == [b"0", b"1", b"2", b"3", b"4", b"5", b"6",
                                                  b"0"]
        assert seen[-1].kind is EventKind.DELETE
        revisions = [e.revision for e in seen]
        assert revisions == sorted(set(revisions))
        assert getattr(stream, "reconnects", 0) >= 1

    run(faulty_harness, body)


def test_watch_from_a_compacted_revision_says_so(harness: Harness) -> None:
    async def body(h: Harness) -> None:
        c = await h.client()
        p = ns()
        r1 = await c.put(p + b"k", b"1")
        r2 = await c.put(p + b"k", b"2")
        r3 = await c.put(p + b"k", b"3")
        await h.compact(r2)
        stream = c.watch_prefix(p, start_revision=r1)
        with pytest.raises(Compacted) as caught:
            await take(stream, 1)
        assert caught.value.compact_revision >= r2
        await stream.aclose()
        # The recovery the error asks for: re-read, then watch after the snapshot.
        snap = await c.get_prefix(p)
        assert [kv.value for kv in snap.items] == [b"3"] and snap.revision >= r3
        stream = c.watch_prefix(p, start_revision=snap.revision + 1)
        r4 = await c.put(p + b"k", b"4")
        [event] = await take(stream, 1)
        assert (event.value, event.revision) == (b"4", r4)
        await stream.aclose()

    run(harness, body)


def test_closing_a_watch_ends_its_readers_iteration(harness: Harness) -> None:
    """aclose() (or closing the client) from another task ends a reader blocked on the
    stream cleanly; it is not a cancellation of the reader."""

    async def body(h: Harness) -> None:
        c = await h.client()
        start = await c.put(ns() + b"x", b"1")
        streams = [c.watch_prefix(ns(), start_revision=start) for _ in range(2)]

        async def reader(stream: WatchStream) -> str:
            async for _ in stream:
                return "an event"
            return "ended"

        readers = [asyncio.create_task(reader(s)) for s in streams]
        await asyncio.sleep(0.2)
        await streams[0].aclose()
        assert await asyncio.wait_for(readers[0], 5) == "ended"
        await c.close()
        assert await asyncio.wait_for(readers[1], 5) == "ended"

    run(harness, body)


# -- election ----------------------------------------------------------------------


def test_election_one_holder_and_resign(harness: Harness) -> None:
    async def body(h: Harness) -> None:
        a, b = await h.client(), await h.client()
        key = ns() + b"controller"
        la, lb = await a.grant_lease(h.min_ttl_s), await b.grant_lease(h.min_ttl_s)
        ea, eb = Election(a, key), Election(b, key)
        assert await eb.holder() is None
        won_a, won_b = await asyncio.gather(ea.campaign(b"a", la), eb.campaign(b"b", lb))
        assert (won_a is None) != (won_b is None)  # exactly one winner
        winner, loser_election, loser_lease = (
            (won_a, eb, lb) if won_a is not None else (won_b, ea, la))
        assert winner is not None
        holder = await loser_election.holder()
        assert holder is not None
        assert (holder.value, holder.create_revision) == (winner.value, winner.revision)
        assert await loser_election.campaign(b"late", loser_lease) is None
        winner_election = ea if winner is won_a else eb
        assert await winner_election.resign(winner)
        assert not await winner_election.resign(winner)  # already gone
        successor = await loser_election.campaign(b"next", loser_lease)
        assert successor is not None and successor.revision > winner.revision

    run(harness, body)


def test_election_takeover_when_the_holders_lease_lapses(harness: Harness) -> None:
    async def body(h: Harness) -> None:
        a, b = await h.client(), await h.client()
        key = ns() + b"controller"
        la, lb = await a.grant_lease(h.min_ttl_s), await b.grant_lease(h.min_ttl_s)
        first = await Election(a, key).campaign(b"a", la)
        assert first is not None
        eb = Election(b, key)
        assert await eb.campaign(b"b", lb) is None
        vacancy = asyncio.ensure_future(eb.wait_vacant())
        await asyncio.sleep(0)
        await a.close(revoke_leases=False)  # the holder dies without resigning

        async def vacant() -> bool:
            return vacancy.done()

        waited = await h.eventually(vacant, la.ttl_s * 1000 + 1_500, "vacancy")
        assert waited >= la.ttl_s * 1000 - 300
        assert vacancy.result() > first.revision
        second = await eb.campaign(b"b", lb)
        assert second is not None and second.revision > first.revision
        holder = await eb.holder()
        assert holder is not None and holder.value == b"b" and holder.lease_id == lb.id

    run(harness, body)


# -- the store is gone -------------------------------------------------------------


def test_calls_fail_in_bounded_time_when_the_store_is_down(faulty_harness: Harness) -> None:
    """Kill etcd (SIGKILL): every call raises CoordinatorUnavailable within its bound,
    an open watch too, and the lease is declared lost after its TTL; nothing hangs."""

    async def body(h: Harness) -> None:
        c = await h.client()
        p = ns()
        lease = await c.grant_lease(h.min_ttl_s)
        start = await c.put(p + b"k", b"v", lease=lease)
        stream = c.watch_prefix(p, start_revision=start + 1)
        await h.stop_server()

        async def timed(call: Awaitable[object]) -> float:
            began = time.monotonic()
            with pytest.raises(CoordinatorUnavailable):
                await call
            return time.monotonic() - began

        for elapsed in await asyncio.gather(
                timed(c.get(p + b"k")), timed(c.put(p + b"k", b"w")),
                timed(c.transact({p + b"k": start}, [Delete(p + b"k")])),
                timed(c.grant_lease(h.min_ttl_s))):
            assert elapsed < h.unavailable_within_s
        assert await timed(anext(stream)) < h.watch_unavailable_within_s

        async def lost() -> bool:
            return lease.lost

        await h.eventually(lost, lease.ttl_s * 1000 + 1_000, "lease lost")
        assert isinstance(await lease.wait_lost(), LeaseLost)
        with pytest.raises(LeaseLost):
            lease.check()

    run(faulty_harness, body)
