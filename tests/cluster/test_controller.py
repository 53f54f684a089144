"""The controller against the in-process coordinator: first election, failover,
fencing, and one controller at a time."""

from __future__ import annotations

import asyncio

import pytest

from ferrymq._cluster import _controller
from ferrymq._cluster._controller import (
    Controller,
    ControllerSettings,
    _plan_leader_move,
    _plan_move,
)
from ferrymq._cluster._layout import Layout, decode_state, encode_state
from ferrymq._coordination import LocalCoordinationServer, ManualClock
from ferrymq._replication._election import PartitionState
from ferrymq._replication._log import Position
from ferrymq._replication._messages import Fence, FenceReply

LAYOUT = Layout("t")
SETTINGS = ControllerSettings(lease_ttl_s=2, fence_wait_s=0.05, reconcile_s=0.02)


class Replicas:
    """Answers fences as replicas would: with their (configured) log positions."""

    def __init__(self, positions: dict[str, Position]) -> None:
        self.positions = positions
        self.fences: list[tuple[str, Fence]] = []
        self.controllers: dict[str, Controller] = {}
        self.promised: dict[str, int] = dict.fromkeys(positions, 0)

    def send(self, node: str, fence: Fence) -> None:
        self.fences.append((node, fence))
        accepted = fence.epoch >= self.promised[node]
        self.promised[node] = max(self.promised[node], fence.epoch)
        reply = FenceReply(fence.partition, fence.epoch, node, accepted,
                           self.positions[node], self.promised[node], True)
        asyncio.get_running_loop().call_soon(
            self.controllers[fence.controller].on_fence_reply, reply)


async def until(probe: object, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not await probe():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def test_first_election_failover_to_the_most_advanced_and_one_controller() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        server = LocalCoordinationServer(clock)
        clients = {n: server.connect(n) for n in ("n1", "n2", "n3")}
        leases = {}
        for name, client in clients.items():
            leases[name] = await client.grant_lease(2)
            await client.put(LAYOUT.node(name), b"{}", lease=leases[name])
        replicas = Replicas({"n1": Position(1, 10), "n2": Position(1, 12),
                             "n3": Position(1, 11)})
        # Placed as a node placing a new queue places it: no leader yet, epoch 0.
        placed = PartitionState(leader=None, epoch=0, replicas=("n1", "n2", "n3"),
                                isr=("n1", "n2", "n3"), min_isr=2, sync=True)
        await clients["n1"].put(LAYOUT.partition("p0"), encode_state(placed))
        controllers = {n: Controller(c, LAYOUT, n, SETTINGS, replicas.send)
                       for n, c in clients.items()}
        replicas.controllers = controllers
        tasks = [asyncio.create_task(c.run()) for c in controllers.values()]

        async def state() -> PartitionState | None:
            kv = await clients["n1"].get(LAYOUT.partition("p0"))
            return None if kv is None else decode_state(kv.value)

        async def led() -> bool:
            s = await state()
            return s is not None and s.leader is not None

        await until(led)
        first = await state()
        assert first is not None and first.replicas == ("n1", "n2", "n3")
        assert first.leader == "n2" and first.epoch == 1  # the most advanced log
        assert sum(c.leading for c in controllers.values()) == 1
        # n2's node dies: its lease lapses and its key goes.
        server.partition(clients["n2"])
        await clock.advance_settled(3_000)
        replicas.positions["n3"] = Position(1, 12)

        async def moved() -> bool:
            s = await state()
            return s is not None and s.leader not in (None, "n2")

        await until(moved)
        second = await state()
        assert second is not None and second.epoch == 2 and "n2" not in second.isr
        assert second.leader == "n3"  # (1, 12) beats n1's (1, 10)
        fenced = {n for n, f in replicas.fences if f.epoch == 2}
        assert fenced == {"n1", "n3"}, "only live replicas are fenced"
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(scenario())


def test_an_election_that_found_no_candidate_is_retried_until_it_completes() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        server = LocalCoordinationServer(clock)
        client = server.connect("n1")
        lease = await client.grant_lease(2)
        await client.put(LAYOUT.node("n1"), b"{}", lease=lease)
        # A partition led by n2, which is not alive, with n1 out of its in-sync set.
        stuck = PartitionState(leader="n2", epoch=3, replicas=("n1", "n2"), isr=("n2",),
                               min_isr=1, sync=True)
        await client.put(LAYOUT.partition("p0"), encode_state(stuck))
        replicas = Replicas({"n1": Position(3, 5), "n2": Position(3, 9)})
        controller = Controller(client, LAYOUT, "n1", SETTINGS, replicas.send)
        replicas.controllers = {"n1": controller}
        task = asyncio.create_task(controller.run())
        await asyncio.sleep(0.3)
        kv = await client.get(LAYOUT.partition("p0"))
        assert kv is not None and decode_state(kv.value) == stuck, \
            "no in-sync replica answered: nothing may be written"
        assert len({f.epoch for _n, f in replicas.fences}) >= 2 or len(replicas.fences) > 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


def test_a_lost_fence_is_sent_again_and_its_replica_stays_in_sync() -> None:
    """The first fence to n3 is lost (as one written to a restarted replica's old
    connection is): sent again within the wait, so n3 answers and stays in the in-sync
    set instead of leaving the new leader short of min_isr."""
    async def scenario() -> None:
        clock = ManualClock()
        server = LocalCoordinationServer(clock)
        client = server.connect("n1")
        for name in ("n1", "n3"):
            lease = await client.grant_lease(2)
            await client.put(LAYOUT.node(name), b"{}", lease=lease)
        # n2 led and is gone; n1 and n3 are in sync.
        state = PartitionState(leader="n2", epoch=1, replicas=("n1", "n2", "n3"),
                               isr=("n1", "n2", "n3"), min_isr=2, sync=True)
        await client.put(LAYOUT.partition("p0"), encode_state(state))
        replicas = Replicas({"n1": Position(1, 7), "n2": Position(1, 7),
                             "n3": Position(1, 7)})
        dropped: list[str] = []
        send = replicas.send

        def lossy(node: str, fence: Fence) -> None:
            if node == "n3" and not dropped:
                dropped.append(node)
                return
            send(node, fence)

        settings = ControllerSettings(lease_ttl_s=2, fence_wait_s=0.5, reconcile_s=0.02)
        controller = Controller(client, LAYOUT, "n1", settings, lossy)
        replicas.controllers = {"n1": controller}
        task = asyncio.create_task(controller.run())

        async def elected() -> bool:
            kv = await client.get(LAYOUT.partition("p0"))
            return kv is not None and decode_state(kv.value).epoch == 2

        await until(elected)
        kv = await client.get(LAYOUT.partition("p0"))
        assert kv is not None
        assert dropped == ["n3"]
        assert set(decode_state(kv.value).isr) == {"n1", "n3"}
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())


# -- planning moves (pure) -----------------------------------------------------------------


def _set(leader: str, *replicas: str, isr: tuple[str, ...] | None = None,
         moving: tuple[str, str] | None = None) -> PartitionState:
    return PartitionState(leader=leader, epoch=1, replicas=replicas,
                          isr=replicas if isr is None else isr, min_isr=1, sync=True,
                          moving=moving)


def test_a_move_empties_a_decommissioned_node_first_then_evens_out_the_counts() -> None:
    states = {"p1": _set("n1", "n1", "n2"), "p2": _set("n2", "n2", "n3"),
              "p3": _set("n3", "n3", "n1")}
    # Even: nothing to do.
    assert _plan_move(states, ["n1", "n2", "n3"], set()) is None
    # A fourth node with nothing, 2 below the others: a replica of the busiest (the
    # last by name among equals) moves to it.
    assert _plan_move(states, ["n1", "n2", "n3", "n4"], set()) == ("p2", "n3", "n4")
    # n1 decommissioned: its replicas go first, to the least loaded other node, even
    # when that set is not fully in sync (the node leaving may be down).
    states["p1"] = _set("n2", "n1", "n2", isr=("n2",))
    assert _plan_move(states, ["n1", "n2", "n3", "n4"], {"n1"}) == ("p1", "n1", "n4")
    # A set whose move is under way is not planned again.
    states["p1"] = _set("n2", "n1", "n2", "n4", moving=("n1", "n4"))
    assert _plan_move(states, ["n1", "n2", "n3", "n4"], {"n1"}) == ("p3", "n1", "n4")


def test_a_leadership_is_offered_from_the_busiest_leader_to_an_idle_in_sync_replica() -> None:
    states = {"p1": _set("n1", "n1", "n2", "n3"), "p2": _set("n1", "n2", "n3", "n1"),
              "p3": _set("n2", "n3", "n1", "n2")}
    # n1 leads 2, n3 none: one of n1's sets is offered to n3.
    assert _plan_leader_move(states, ["n1", "n2", "n3"], set()) == ("p1", "n1", "n3")
    # Not to a replica out of sync, nor while the set moves a replica.
    states["p1"] = _set("n1", "n1", "n2", "n3", isr=("n1", "n2"))
    states["p2"] = _set("n1", "n2", "n3", "n1", moving=("n2", "n3"))
    assert _plan_leader_move(states, ["n1", "n2", "n3"], set()) is None
    # Within one of each other: even enough.
    states = {"p1": _set("n1", "n1", "n2"), "p2": _set("n2", "n1", "n2")}
    assert _plan_leader_move(states, ["n1", "n2"], set()) is None
    # Sets not to be offered now (just moved) still count for the node leading them.
    states = {"p0": _set("n2", "n1", "n2"), "p1": _set("n2", "n1", "n2"),
              "p2": _set("n1", "n1", "n2"), "p3": _set("n1", "n1", "n2")}
    assert _plan_leader_move(states, ["n1", "n2"], set(), skip={"p0", "p1"}) is None
    states["p1"] = _set("n1", "n1", "n2")
    assert _plan_leader_move(states, ["n1", "n2"], set(), skip={"p0", "p1"}) == (
        "p2", "n1", "n2")


def test_leaderships_are_evened_out_once_the_cluster_has_settled(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The cluster settled long ago (no election yet); a leader move is not an election
    # the next one waits LEADER_SETTLE_S for: the moves follow one another at their own
    # pace (under the 5 s of ``until``, where waiting 30 s after each would not).
    monkeypatch.setattr(_controller, "LEADER_SETTLE_S", 30.0)
    monkeypatch.setattr(_controller, "LEADER_MOVE_INTERVAL_S", 0.05)
    partitions = ("p0", "p1", "p2", "p3")

    async def scenario() -> None:
        server = LocalCoordinationServer(ManualClock())
        clients = {n: server.connect(n) for n in ("n1", "n2")}
        for name, client in clients.items():
            lease = await client.grant_lease(2)
            await client.put(LAYOUT.node(name), b"{}", lease=lease)
        # n1 leads every set, n2 leads none, and is in sync in all.
        for partition in partitions:
            await clients["n1"].put(LAYOUT.partition(partition), encode_state(
                PartitionState(leader="n1", epoch=1, replicas=("n1", "n2"),
                               isr=("n1", "n2"), min_isr=1, sync=True)))
        replicas = Replicas({"n1": Position(1, 7), "n2": Position(1, 7)})
        controller = Controller(clients["n1"], LAYOUT, "n1", SETTINGS, replicas.send)
        replicas.controllers = {"n1": controller}
        task = asyncio.create_task(controller.run())

        async def leaders() -> list[str | None]:
            found = []
            for partition in partitions:
                kv = await clients["n1"].get(LAYOUT.partition(partition))
                assert kv is not None
                found.append(decode_state(kv.value).leader)
            return found

        async def even() -> bool:
            return sorted(await leaders()) == ["n1", "n1", "n2", "n2"]  # type: ignore[type-var]

        await until(even)
        await asyncio.sleep(0.2)
        assert sorted(await leaders()) == ["n1", "n1", "n2", "n2"]  # type: ignore[type-var]
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(scenario())
