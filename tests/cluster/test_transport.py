"""Node-to-node transport over real loopback sockets."""

from __future__ import annotations

import asyncio

from ferrymq._cluster._transport import Transport
from ferrymq._replication._messages import Fence


def test_frames_flow_both_ways_and_survive_a_peer_restart() -> None:
    async def scenario() -> None:
        got: dict[str, list[tuple[str, object]]] = {"a": [], "b": []}
        addresses: dict[str, tuple[str, int]] = {}

        async def address_of(node: str) -> tuple[str, int] | None:
            return addresses.get(node)

        def make(node: str) -> Transport:
            return Transport(node=node, cluster="c1", address_of=address_of,
                             on_frame=lambda peer, frame: got[node].append((peer, frame)))

        a, b = make("a"), make("b")
        addresses["a"] = await a.listen("127.0.0.1", 0)
        addresses["b"] = await b.listen("127.0.0.1", 0)
        for i in range(50):
            a.send("b", Fence("q", i, "a"))
        b.send("a", Fence("q", 99, "b"))
        await until(lambda: len(got["b"]) == 50 and len(got["a"]) == 1)
        assert [f.epoch for _p, f in got["b"]] == list(range(50))  # type: ignore[attr-defined]
        assert got["a"] == [("b", Fence("q", 99, "b"))]
        # b restarts on a new port; a's next frames reconnect to it.
        await b.close()
        b = make("b")
        addresses["b"] = await b.listen("127.0.0.1", 0)
        got["b"].clear()
        for attempt in range(100):
            a.send("b", Fence("q", 1000 + attempt, "a"))
            await asyncio.sleep(0.02)
            if got["b"]:
                break
        assert got["b"], "a never reached the restarted b"
        await a.close()
        await b.close()

    asyncio.run(scenario())


def test_a_peer_of_another_cluster_is_refused() -> None:
    async def scenario() -> None:
        got: list[object] = []
        addresses: dict[str, tuple[str, int]] = {}

        async def address_of(node: str) -> tuple[str, int] | None:
            return addresses.get(node)

        mine = Transport(node="a", cluster="c1", address_of=address_of,
                         on_frame=lambda p, f: got.append(f))
        other = Transport(node="x", cluster="c2", address_of=address_of,
                          on_frame=lambda p, f: None)
        addresses["a"] = await mine.listen("127.0.0.1", 0)
        other.send("a", Fence("q", 1, "x"))
        await asyncio.sleep(0.3)
        assert got == []
        await mine.close()
        await other.close()

    asyncio.run(scenario())


async def until(probe: object, timeout_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not probe():  # type: ignore[operator]
        if loop.time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)
