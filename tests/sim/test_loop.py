"""The virtual-time loop and its actors (``ferrymq._sim._loop``), and the simulated
disk (``ferrymq._sim._disk``): the parts the service-level simulation stands on."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from ferrymq._coordination import LocalCoordinationServer, ManualClock
from ferrymq._core._errors import InternalError
from ferrymq._sim._disk import SimDisk
from ferrymq._sim._loop import Actor, VirtualTimeLoop

START_MS = 1_700_000_000_000


def run(main: object) -> tuple[VirtualTimeLoop, ManualClock]:
    clock = ManualClock(START_MS)
    loop = VirtualTimeLoop(clock)
    try:
        loop.run_until_complete(main(loop, clock))  # type: ignore[operator]
        loop.finish()
    finally:
        loop.close()
    return loop, clock


def test_sleeps_and_timeouts_run_on_virtual_time() -> None:
    seen: list[int] = []

    async def main(loop: VirtualTimeLoop, clock: ManualClock) -> None:
        await asyncio.sleep(1.5)
        seen.append(clock.now_ms() - START_MS)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 0.25)
        seen.append(clock.now_ms() - START_MS)
        loop.call_later(0.001, lambda: seen.append(clock.now_ms() - START_MS))
        await asyncio.sleep(0.01)

    run(main)
    assert seen == [1500, 1750, 1751]


def test_a_paused_actor_runs_nothing_until_resumed_then_all_in_order() -> None:
    seen: list[tuple[str, int]] = []

    async def worker(clock: ManualClock, name: str) -> None:
        for _ in range(3):
            await asyncio.sleep(1)
            seen.append((name, clock.now_ms() - START_MS))

    async def main(loop: VirtualTimeLoop, clock: ManualClock) -> None:
        a, b = Actor(loop, "a"), Actor(loop, "b")
        done = [a.spawn(worker(clock, "a")), b.spawn(worker(clock, "b"))]
        await asyncio.sleep(0.5)
        b.pause()
        await asyncio.sleep(2)
        b.resume()
        await asyncio.gather(*done)

    run(main)
    assert seen == [("a", 1000), ("a", 2000), ("b", 2500), ("a", 3000), ("b", 3500),
                    ("b", 4500)]


def test_a_killed_actor_never_runs_again() -> None:
    seen: list[int] = []

    async def worker(clock: ManualClock) -> None:
        while True:
            await asyncio.sleep(0.1)
            seen.append(clock.now_ms() - START_MS)

    async def main(loop: VirtualTimeLoop, clock: ManualClock) -> None:
        a = Actor(loop, "a")
        task = a.spawn(worker(clock))
        never = a.spawn(worker(clock))  # killed before its first step
        a.kill()
        await asyncio.sleep(1)
        assert not task.done() and not never.done()

    run(main)  # finish() unwinds them: no "never awaited" warning (warnings are errors)
    assert seen == []


def test_a_loop_with_nothing_scheduled_says_so() -> None:
    async def main(loop: VirtualTimeLoop, clock: ManualClock) -> None:
        await asyncio.Event().wait()

    with pytest.raises(InternalError, match="nothing left"):
        run(main)


def test_coordinator_leases_expire_on_the_loop_time() -> None:
    async def main(loop: VirtualTimeLoop, clock: ManualClock) -> None:
        server = LocalCoordinationServer(clock)
        client = server.connect("a")
        lease = await client.grant_lease(2)
        await client.put(b"k", b"v", lease=lease)
        server.partition(client)
        await asyncio.sleep(1.9)
        assert not lease.lost
        await asyncio.sleep(0.2)
        assert lease.lost and await server.connect("b").get(b"k") is None

    run(main)


def test_the_disk_loses_what_was_not_fsynced_when_its_node_dies() -> None:
    failures: list[str] = []

    async def main(loop: VirtualTimeLoop, clock: ManualClock) -> None:
        disk = SimDisk("n1", random.Random(1), clock.now_ms, failures.append)
        path = Path("/sim/n1/q")

        async def node(meta: dict[str, str]) -> None:
            await disk.open(path, free_bytes_min=0, power_loss_seam=False).commit(
                [], meta=meta)

        first = Actor(loop, "n1#1")
        await first.spawn(node({"repl.fence_epoch": "3"}))
        assert disk.file(str(path)).meta == {"repl.fence_epoch": "3"}
        second = Actor(loop, "n1#2")
        second.spawn(node({"repl.fence_epoch": "4"}))
        await asyncio.sleep(0)
        second.kill()  # before its fsync completed
        await asyncio.sleep(0.1)
        assert disk.file(str(path)).meta == {"repl.fence_epoch": "3"}
        await Actor(loop, "n1#3").spawn(node({"repl.fence_epoch": "2"}))

    run(main)
    assert failures == ["n1's promised epoch went back from 3 to 2 in /sim/n1/q"]
