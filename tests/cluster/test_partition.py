"""``ReplicatedStore`` in one process: three replicas on real SQLite files, each under a
real ``QueueService``, their frames passed through the real frame codec by an
in-process network that can cut a replica off. Roles come from the test (what the
node's etcd watch does in a cluster), so each step of the write path is deterministic.

What it shows: a leader's acknowledged write is on every in-sync replica's disk and in
its core; a follower's core equals the leader's (``Broker.dump_state``); a restarted
replica resumes from its store; a follower that lost its disk, or whose log diverged,
is rebuilt from a snapshot and then equals the leader; a deposed leader's pending
writes are refused (``WriteRefused`` -> 503) and its later proposals never commit.
Snapshots of many chunks: duplicated chunks are taken once, a lost one makes the
follower refuse the copy and the leader send another, a snapshot waits while the
transport holds too much for the follower and is given up when it stalls, and a
follower without room for the copy refuses it (the leader backing off); neither side
leaves a copy behind.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from _doubles import CountingEntropy

from ferrymq._api import CallContext
from ferrymq._cluster import _partition
from ferrymq._cluster._partition import (
    SNAPSHOT_CHUNK_BYTES,
    SNAPSHOT_IN_FLIGHT_BYTES_MAX,
    ReplicatedStore,
)
from ferrymq._core._broker import Broker
from ferrymq._core._errors import SqsError
from ferrymq._replication._frames import (
    FrameDecoder,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotDone,
    encode,
)
from ferrymq._replication._replica import ChangeIsr, Role
from ferrymq._service import QueueService, restore_into

T = TypeVar("T")
NODES = ("n1", "n2", "n3")
CTX = CallContext(request_id="r", base_url="http://h:1")
NOW_MS = 1_700_000_000_000
_OPENINGS = itertools.count(1)


class Net:
    """Delivers frames on the next loop turn, encoded and decoded like the transport
    does; frames to or from a cut-off node are dropped."""

    def __init__(self) -> None:
        self.replicas: dict[str, Replica_] = {}
        self.cut: set[str] = set()
        self.isr_changes: list[tuple[str, ChangeIsr]] = []
        # Every frame sent, and what the transport says it holds for a peer unwritten.
        self.sent: list[tuple[str, str, object]] = []
        self.backlog_bytes: dict[str, int] = {}
        # What the network does to a frame: the copies it delivers (none: lost).
        self.tamper: Callable[[str, str, object], list[object]] = (
            lambda sender, to, frame: [frame])

    def send(self, sender: str, to: str, frame: object) -> None:
        self.sent.append((sender, to, frame))
        if sender in self.cut or to in self.cut:
            return
        for copy in self.tamper(sender, to, frame):
            decoder = FrameDecoder()
            (decoded,) = list(decoder.feed(encode(copy)))  # type: ignore[arg-type]
            target = self.replicas.get(to)
            if target is not None:
                asyncio.get_running_loop().call_soon(target.store.on_frame, sender, decoded)

    def frames(self, kind: type[T]) -> list[T]:
        return [f for _, _, f in self.sent if isinstance(f, kind)]


class Replica_:
    def __init__(self, net: Net, name: str, directory: Path) -> None:
        self.net = net
        self.name = name
        self.directory = directory
        self.free_bytes_min = 0
        self.fatal: list[BaseException] = []
        self.clock_ms = 0
        self.open()

    def open(self) -> None:
        self.store = ReplicatedStore(
            partition="p0", node=self.name, path=self.directory / "ferrymq.sqlite3",
            free_bytes_min=self.free_bytes_min,
            send=lambda to, frame: self.net.send(self.name, to, frame),
            change_isr=lambda action: self.net.isr_changes.append((self.name, action)),
            clock_ms=lambda: self.clock_ms, on_fatal=self.fatal.append,
            backlog_bytes=lambda peer: self.net.backlog_bytes.get(peer, 0))
        broker = Broker()
        restore_into(broker, self.store.load())
        # Ids must not collide between replicas that lead in turn, or a replica before
        # and after a restart (real entropy is random): each opening numbers its own
        # range.
        entropy = CountingEntropy()
        entropy.n = next(_OPENINGS) * 10**9
        self.service = QueueService(broker, self.store, broker_factory=Broker,
                                    clock_ms=lambda: NOW_MS, entropy=entropy,
                                    write_gate=self.store.refusal)
        self.store.attach(self.service, Broker)
        self.net.replicas[self.name] = self

    async def close(self) -> None:
        await self.service.close()

    def lead(self, epoch: int, isr: tuple[str, ...] = NODES) -> None:
        self.store.run(self.store.replica.lead(epoch, replicas=NODES, isr=isr, min_isr=2,
                                               sync=True, now_ms=self.clock_ms))

    def follow(self, epoch: int, leader: str) -> None:
        self.store.run(self.store.replica.follow(epoch, leader))

    async def call(self, action: str, **params: Any) -> dict[str, Any]:
        return await self.service.call(action, params, CTX)

    def state(self) -> dict[str, Any]:
        return self.service.broker.dump_state(NOW_MS)


async def close_all(rs: dict[str, Replica_]) -> None:
    """Close every replica; none of them stopped for a fatal disk error."""
    for r in rs.values():
        await r.close()
        assert not r.fatal


async def settle(condition: Callable[[], bool], what: str) -> None:
    for _ in range(2000):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")


async def within(aw: Awaitable[T], seconds: float = 5.0) -> T:
    return await asyncio.wait_for(aw, seconds)


@pytest.fixture
def cluster(tmp_path: Path) -> Callable[[], Awaitable[tuple[Net, dict[str, Replica_]]]]:
    made: list[Replica_] = []

    async def make() -> tuple[Net, dict[str, Replica_]]:
        net = Net()
        replicas = {n: Replica_(net, n, tmp_path / n) for n in NODES}
        made.extend(replicas.values())
        for r in replicas.values():
            r.service.start()
        replicas["n1"].lead(1)
        for n in ("n2", "n3"):
            replicas[n].follow(1, "n1")
        return net, replicas

    return make


def in_loop(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Runs the async test on a fresh event loop (the suite uses no asyncio plugin)."""
    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))
    return run


def url(name: str) -> str:
    return f"http://h:1/000000000000/{name}"


async def fill(leader: Replica_, count: int, queue: str = "q") -> None:
    await leader.call("CreateQueue", QueueName=queue)
    for i in range(count):
        await leader.call("SendMessage", QueueUrl=url(queue), MessageBody=f"m{i}")


@in_loop
async def test_an_acknowledged_write_is_in_every_in_sync_replica(cluster: Any) -> None:
    net, rs = await cluster()
    await within(fill(rs["n1"], 20))
    got = await rs["n1"].call("ReceiveMessage", QueueUrl=url("q"), MaxNumberOfMessages=5)
    await rs["n1"].call("DeleteMessage", QueueUrl=url("q"),
                        ReceiptHandle=got["Messages"][0]["ReceiptHandle"])
    # Acknowledged means durable on every in-sync replica: their stores hold it now.
    for name in ("n2", "n3"):
        fresh = Broker()
        restore_into(fresh, rs[name].store.load())
        assert fresh.dump_state(NOW_MS) == rs["n1"].state(), name
    await settle(lambda: rs["n2"].state() == rs["n1"].state() == rs["n3"].state(),
                 "the followers' cores equal the leader's")
    await close_all(rs)


@in_loop
async def test_followers_refuse_writes_and_say_why(cluster: Any) -> None:
    _, rs = await cluster()
    with pytest.raises(SqsError) as err:
        await rs["n2"].call("CreateQueue", QueueName="q")
    assert err.value.shape == "ServiceUnavailable"
    assert "does not lead" in err.value.message
    for r in rs.values():
        await r.close()


@in_loop
async def test_too_few_in_sync_replicas_refuses_writes(cluster: Any) -> None:
    net, rs = await cluster()
    await within(fill(rs["n1"], 1))
    rs["n1"].store.run(rs["n1"].store.replica.isr_changed(("n1",), 0))
    with pytest.raises(SqsError) as err:
        await rs["n1"].call("SendMessage", QueueUrl=url("q"), MessageBody="x")
    assert err.value.shape == "ServiceUnavailable"
    # Reads go on.
    assert (await rs["n1"].call("GetQueueUrl", QueueName="q"))["QueueUrl"] == url("q")
    for r in rs.values():
        await r.close()


@in_loop
async def test_a_deposed_leader_refuses_its_pending_write(cluster: Any) -> None:
    net, rs = await cluster()
    await within(fill(rs["n1"], 1))
    net.cut.add("n1")  # its appends no longer arrive: nothing it proposes commits
    pending = asyncio.ensure_future(
        rs["n1"].call("SendMessage", QueueUrl=url("q"), MessageBody="lost?"))
    await asyncio.sleep(0.05)
    assert not pending.done()
    # The controller fences n2 and n3 and elects n2 (what the node does on etcd's word).
    rs["n2"].lead(2, isr=("n2", "n3"))
    rs["n3"].follow(2, "n2")
    rs["n1"].follow(2, "n2")  # the deposed leader learns of it
    with pytest.raises(SqsError) as err:
        await within(pending)
    assert err.value.shape == "ServiceUnavailable"
    # The new leader never saw the refused write; it serves what was committed.
    await within(rs["n2"].call("SendMessage", QueueUrl=url("q"), MessageBody="after"))
    attrs = await rs["n2"].call("GetQueueAttributes", QueueUrl=url("q"),
                                AttributeNames=["ApproximateNumberOfMessages"])
    assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "2"
    # Healed: n1 held an entry n2's log lacks, so it is rebuilt from a snapshot of n2.
    net.cut.clear()
    for _ in range(30):
        rs["n2"].clock_ms += 500
        rs["n2"].store.tick()
        await asyncio.sleep(0.01)
        if rs["n1"].state() == rs["n2"].state():
            break
    assert rs["n1"].store.replica.role is Role.FOLLOWER
    assert rs["n1"].state() == rs["n2"].state()
    await close_all(rs)


async def lose_n3_disk(rs: dict[str, Replica_], tmp_path: Path) -> None:
    """n3 restarts with an empty disk; the leader restarted too, so its in-memory window
    no longer reaches back to the start of the log: only a snapshot can rebuild n3."""
    for name in ("n1", "n3"):
        await rs[name].close()
    shutil.rmtree(tmp_path / "n3")
    rs["n1"].open()
    rs["n3"].open()
    for name in ("n1", "n3"):
        rs[name].service.start()
    rs["n1"].lead(2)
    rs["n2"].follow(2, "n1")
    rs["n3"].follow(2, "n1")


async def drive(rs: dict[str, Replica_], condition: Callable[[], bool], what: str) -> None:
    """Let the leader's clock run (heartbeats, so a failed snapshot is offered again)
    until ``condition``: five times as fast as the loop's, so a write waiting through a
    snapshot's back-off (real time) is not timed out (``COMMIT_WAIT_MS``, the clock's)."""
    for _ in range(1000):
        if condition():
            return
        rs["n1"].clock_ms += 50
        rs["n1"].store.tick()
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


def rebuilt(rs: dict[str, Replica_]) -> bool:
    return rs["n3"].state() == rs["n1"].state()


async def fill_big(leader: Replica_, body_bytes: int = 200_000, count: int = 30) -> None:
    """A store of many snapshot chunks (``SNAPSHOT_CHUNK_BYTES`` each)."""
    await leader.call("CreateQueue", QueueName="q")
    for i in range(count):
        await leader.call("SendMessage", QueueUrl=url("q"),
                          MessageBody=f"{i:04d}" + "x" * body_bytes)


def staged_files(tmp_path: Path) -> list[Path]:
    return sorted(tmp_path.glob("*/*.snapshot-*"))


@in_loop
async def test_a_replica_that_lost_its_disk_is_rebuilt_from_a_snapshot(cluster: Any,
                                                                     tmp_path: Path) -> None:
    net, rs = await cluster()
    await within(fill(rs["n1"], 30))
    await settle(lambda: rs["n3"].state() == rs["n1"].state(), "n3 caught up")
    await lose_n3_disk(rs, tmp_path)
    await within(rs["n1"].call("SendMessage", QueueUrl=url("q"), MessageBody="more"))
    await settle(lambda: rebuilt(rs), "n3 rebuilt from a snapshot and caught up")
    assert rs["n3"].state()["queues"][0][0] == "q"
    # And it keeps up afterwards, through its new store.
    await within(rs["n1"].call("SendMessage", QueueUrl=url("q"), MessageBody="last"))
    await settle(lambda: rebuilt(rs), "n3 follows again")
    fresh = Broker()
    restore_into(fresh, rs["n3"].store.load())
    assert fresh.dump_state(NOW_MS) == rs["n1"].state()
    await close_all(rs)


@in_loop
async def test_a_store_of_many_chunks_streams_through_a_duplicating_network(
        cluster: Any, tmp_path: Path) -> None:
    net, rs = await cluster()
    await within(fill_big(rs["n1"]), 30)
    await lose_n3_disk(rs, tmp_path)
    # Every chunk arrives twice: the follower takes each offset once.
    net.tamper = lambda sender, to, frame: (
        [frame, frame] if isinstance(frame, SnapshotChunk) else [frame])
    await within(rs["n1"].call("SendMessage", QueueUrl=url("q"), MessageBody="more"))
    await settle(lambda: rebuilt(rs), "n3 rebuilt from a snapshot of many chunks")
    (begin,) = net.frames(SnapshotBegin)
    chunks = net.frames(SnapshotChunk)
    assert begin.size_bytes > 30 * 200_000
    assert len(chunks) == -(-begin.size_bytes // SNAPSHOT_CHUNK_BYTES) >= 6
    assert [c.offset for c in chunks] == [i * SNAPSHOT_CHUNK_BYTES for i in range(len(chunks))]
    assert [d.ok for d in net.frames(SnapshotDone)] == [True]
    assert staged_files(tmp_path) == [], "both sides remove their copies"
    fresh = Broker()
    restore_into(fresh, rs["n3"].store.load())
    assert fresh.dump_state(NOW_MS) == rs["n1"].state()
    await close_all(rs)


@in_loop
async def test_a_snapshot_missing_a_chunk_is_refused_and_sent_again(cluster: Any,
                                                                    tmp_path: Path) -> None:
    net, rs = await cluster()
    await within(fill_big(rs["n1"], count=20), 30)
    await lose_n3_disk(rs, tmp_path)
    lost: list[SnapshotChunk] = []

    def lose_the_second_chunk_once(sender: str, to: str, frame: object) -> list[object]:
        if isinstance(frame, SnapshotChunk) and frame.offset == SNAPSHOT_CHUNK_BYTES \
                and not lost:
            lost.append(frame)
            return []
        return [frame]

    net.tamper = lose_the_second_chunk_once
    pending = asyncio.ensure_future(
        rs["n1"].call("SendMessage", QueueUrl=url("q"), MessageBody="more"))
    await drive(rs, lambda: rebuilt(rs) and pending.done(), "n3 rebuilt by a second snapshot")
    await pending
    done = net.frames(SnapshotDone)
    assert [d.ok for d in done] == [False, True]
    assert "a chunk is missing" in done[0].reason
    assert len(net.frames(SnapshotBegin)) == 2
    assert staged_files(tmp_path) == []
    await close_all(rs)


@in_loop
async def test_a_snapshot_waits_for_the_transport_and_gives_up_when_it_stalls(
        cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_partition, "_SNAPSHOT_STALL_S", 0.3)
    net, rs = await cluster()
    await within(fill_big(rs["n1"], count=10), 30)
    await lose_n3_disk(rs, tmp_path)
    # The transport holds more for n3 than a snapshot may add to: no chunk goes.
    net.backlog_bytes["n3"] = SNAPSHOT_IN_FLIGHT_BYTES_MAX + 1
    pending = asyncio.ensure_future(
        rs["n1"].call("SendMessage", QueueUrl=url("q"), MessageBody="more"))
    await settle(lambda: bool(net.frames(SnapshotBegin)), "a snapshot begun")
    await asyncio.sleep(0.15)
    assert net.frames(SnapshotChunk) == []
    # Still held after the stall bound: given up, its copy removed.
    await settle(lambda: not rs["n1"].store._snapshots_out, "the stalled snapshot given up")
    assert net.frames(SnapshotChunk) == []
    await settle(lambda: not list((tmp_path / "n1").glob("*.snapshot-*")),
                 "the leader's copy removed")
    # n3 removes the copy it began to receive once no frame came for a while.
    assert staged_files(tmp_path) != []
    rs["n3"].clock_ms += 2 * 10_000 + 1
    rs["n3"].store.tick()
    assert staged_files(tmp_path) == []
    # The transport drains: the next offer streams.
    net.backlog_bytes["n3"] = 0
    await drive(rs, lambda: rebuilt(rs) and pending.done(), "n3 rebuilt once it drained")
    await pending
    assert len(net.frames(SnapshotBegin)) == 2
    assert [d.ok for d in net.frames(SnapshotDone)] == [True]
    await close_all(rs)


@in_loop
async def test_a_follower_without_room_for_the_copy_refuses_it(cluster: Any,
                                                               tmp_path: Path) -> None:
    net, rs = await cluster()
    await within(fill_big(rs["n1"], count=5), 30)
    rs["n3"].free_bytes_min = shutil.disk_usage(tmp_path).free  # no copy fits
    await lose_n3_disk(rs, tmp_path)
    pending = asyncio.ensure_future(
        rs["n1"].call("SendMessage", QueueUrl=url("q"), MessageBody="more"))
    await settle(lambda: bool(net.frames(SnapshotDone)), "n3 answered the snapshot")
    (refusal,) = net.frames(SnapshotDone)
    assert not refusal.ok and "kept free" in refusal.reason, refusal
    assert rs["n3"].state()["queues"] == [], "n3's store is left as it was"
    # The leader stops streaming at the refusal and removes its copy.
    await settle(lambda: staged_files(tmp_path) == [], "no copy left behind")
    # It offers again, backing off: n3 answers every heartbeat (100 ms of the loop's
    # time here, 35 in all), but a copy of the store is made after 1 s, then 2 s more.
    loop = asyncio.get_running_loop()
    until_s = loop.time() + 3.5
    await drive(rs, lambda: loop.time() > until_s, "3.5 s")
    assert 2 <= len(net.frames(SnapshotBegin)) <= 4, net.frames(SnapshotDone)
    assert not any(d.ok for d in net.frames(SnapshotDone))
    pending.cancel()
    await close_all(rs)


@in_loop
async def test_a_restarted_follower_resumes_from_its_store(cluster: Any) -> None:
    net, rs = await cluster()
    await within(fill(rs["n1"], 5))
    await rs["n2"].close()
    position = rs["n2"].store.replica.position()
    rs["n2"].open()
    assert rs["n2"].store.replica.position() == position
    rs["n2"].service.start()
    rs["n2"].follow(1, "n1")
    await within(fill(rs["n1"], 5, queue="q2"))
    await settle(lambda: rs["n2"].state() == rs["n1"].state(), "n2 caught up")
    await close_all(rs)


@in_loop
async def test_a_deduplicated_send_waits_for_the_send_it_repeats(cluster: Any) -> None:
    """A FIFO send retried with the same deduplication id changes nothing (SQS answers
    it with the first send's message). Answered at once, it would acknowledge a message
    whose entry had not committed, and a failover would lose it: it waits for the
    entry, and shares its fate."""
    net, rs = await cluster()
    await within(rs["n1"].call("CreateQueue", QueueName="q.fifo",
                               Attributes={"FifoQueue": "true"}))
    net.cut.add("n1")  # nothing n1 proposes from here on commits
    send = {"QueueUrl": url("q.fifo"), "MessageBody": "a", "MessageGroupId": "g",
            "MessageDeduplicationId": "d1"}
    first = asyncio.ensure_future(rs["n1"].call("SendMessage", **send))
    await asyncio.sleep(0.05)
    retry = asyncio.ensure_future(rs["n1"].call("SendMessage", **send))
    await asyncio.sleep(0.05)
    assert not first.done()
    assert not retry.done(), "answered from a send that had not committed"
    # n2 is elected without n1's entry: neither send was stored, and neither is
    # acknowledged.
    rs["n2"].lead(2, isr=("n2", "n3"))
    rs["n3"].follow(2, "n2")
    rs["n1"].follow(2, "n2")
    for pending in (first, retry):
        with pytest.raises(SqsError) as err:
            await within(pending)
        assert err.value.shape == "ServiceUnavailable"
    got = await within(rs["n2"].call("ReceiveMessage", QueueUrl=url("q.fifo")))
    assert got.get("Messages", []) == []
    await close_all(rs)
