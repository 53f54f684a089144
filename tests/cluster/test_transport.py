"""Node-to-node transport over real loopback sockets."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from ferrymq._cluster._transport import Transport
from ferrymq._replication._frames import SnapshotChunk
from ferrymq._replication._messages import Fence

# Both loops a node may run on: under uvloop a write to a closed connection raises where
# asyncio's own loop drops it, which once left a restarted peer unreached for good.
LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_frames_flow_both_ways_and_survive_a_peer_restart(loop: str) -> None:
    run: Callable[[Coroutine[Any, Any, None]], None] = LOOPS[loop]

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
            # Bursts, as a busy leader sends: several writes before the writer waits.
            for i in range(20):
                a.send("b", Fence("q", 1000 + 20 * attempt + i, "a"))
            await asyncio.sleep(0.02)
            if got["b"]:
                break
        assert got["b"], "a never reached the restarted b"
        await a.close()
        await b.close()

    run(scenario())


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


_PEER = """
import asyncio, sys
from ferrymq._cluster._transport import Transport

async def main():
    async def address_of(node):
        return None
    def on_frame(peer, frame):
        print("got", frame.epoch, flush=True)
    t = Transport(node="b", cluster="c1", address_of=address_of, on_frame=on_frame)
    host, port = await t.listen("127.0.0.1", 0)
    print("port", port, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


@pytest.mark.parametrize("loop", sorted(LOOPS))
def test_a_peer_killed_and_restarted_is_reached_again(loop: str) -> None:
    """A peer process SIGKILLed under a stream of frames and started again on another
    port: the sender reconnects."""
    run: Callable[[Coroutine[Any, Any, None]], None] = LOOPS[loop]

    async def scenario() -> None:
        addresses: dict[str, tuple[str, int]] = {}
        procs: list[asyncio.subprocess.Process] = []

        async def address_of(node: str) -> tuple[str, int] | None:
            return addresses.get(node)

        async def start_peer() -> asyncio.subprocess.Process:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _PEER, stdout=asyncio.subprocess.PIPE)
            procs.append(proc)
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).split()
            addresses["b"] = ("127.0.0.1", int(line[1]))
            return proc

        async def reached(proc: asyncio.subprocess.Process, epoch: int) -> bool:
            assert proc.stdout is not None
            for _ in range(60):
                a.send("b", Fence("q", epoch, "a"))
                try:
                    line = await asyncio.wait_for(proc.stdout.readline(), 0.1)
                except TimeoutError:
                    continue
                if line.startswith(b"got"):
                    return True
            return False

        async def stream() -> None:
            # As a leader under load: a frame every millisecond, whatever happens.
            while True:
                a.send("b", Fence("q", 0, "a"))
                await asyncio.sleep(0.001)

        a = Transport(node="a", cluster="c1", address_of=address_of,
                      on_frame=lambda peer, frame: None)
        streaming = asyncio.get_running_loop().create_task(stream())
        try:
            first = await start_peer()
            assert await reached(first, 1)
            first.kill()
            await first.wait()
            await asyncio.sleep(0.2)
            second = await start_peer()
            assert await reached(second, 2), "the restarted peer was never reached"
        finally:
            streaming.cancel()
            await a.close()
            for proc in procs:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()

    run(scenario())


def test_reset_moves_a_peer_to_its_new_address() -> None:
    """The old connection still works (as a restarted peer's old one seems to, until a
    write fails): reset sends the next frames to the address the peer has now."""
    async def scenario() -> None:
        got: dict[str, list[object]] = {"old": [], "new": []}
        addresses: dict[str, tuple[str, int]] = {}

        async def address_of(node: str) -> tuple[str, int] | None:
            return addresses.get(node)

        def make(inbox: str) -> Transport:
            return Transport(node="b", cluster="c1", address_of=address_of,
                             on_frame=lambda peer, frame: got[inbox].append(frame))

        a = Transport(node="a", cluster="c1", address_of=address_of,
                      on_frame=lambda peer, frame: None)
        old, new = make("old"), make("new")
        addresses["b"] = await old.listen("127.0.0.1", 0)
        a.send("b", Fence("q", 1, "a"))
        await until(lambda: len(got["old"]) == 1)
        addresses["b"] = await new.listen("127.0.0.1", 0)
        a.reset("b")
        for i in range(2, 6):
            a.send("b", Fence("q", i, "a"))
        await until(lambda: len(got["new"]) == 4)
        assert [f.epoch for f in got["new"]] == [2, 3, 4, 5]  # type: ignore[attr-defined]
        assert len(got["old"]) == 1
        for t in (a, old, new):
            await t.close()

    asyncio.run(scenario())


_COUNTING_PEER = """
import asyncio
from ferrymq._cluster._transport import Transport

async def main():
    async def address_of(node):
        return None
    def on_frame(peer, frame):
        print("got", len(getattr(frame, "data", b"")), flush=True)
    t = Transport(node="b", cluster="c1", address_of=address_of, on_frame=on_frame)
    host, port = await t.listen("127.0.0.1", 0)
    print("port", port, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_backlog_bytes_counts_what_a_stopped_peer_has_not_taken() -> None:
    """What a snapshot waits on: the bytes queued for a peer plus the socket's write
    buffer. A SIGSTOPped peer stops reading; once the kernel's buffers are full the
    backlog holds the rest, and it drains to 0 when the peer runs again, nothing
    dropped."""
    chunk_bytes = 1024 * 1024
    chunks = 32

    async def scenario() -> None:
        addresses: dict[str, tuple[str, int]] = {}

        async def address_of(node: str) -> tuple[str, int] | None:
            return addresses.get(node)

        peer = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _COUNTING_PEER, stdout=asyncio.subprocess.PIPE)
        a = Transport(node="a", cluster="c1", address_of=address_of,
                      on_frame=lambda p, f: None)
        try:
            assert peer.stdout is not None
            line = (await asyncio.wait_for(peer.stdout.readline(), 10)).split()
            addresses["b"] = ("127.0.0.1", int(line[1]))
            assert a.backlog_bytes("b") == 0  # never sent to
            a.send("b", SnapshotChunk("p", 0, b""))  # connected, said hello
            assert (await asyncio.wait_for(peer.stdout.readline(), 10)).startswith(b"got")
            peer.send_signal(signal.SIGSTOP)
            for i in range(chunks):
                a.send("b", SnapshotChunk("p", i * chunk_bytes, b"x" * chunk_bytes))
            await asyncio.sleep(0.3)  # the writer fills the kernel's buffers
            held = a.backlog_bytes("b")
            # Loopback's socket buffers take a few MiB; the rest waits here.
            assert held > chunks * chunk_bytes // 2, held
            peer.send_signal(signal.SIGCONT)
            await until(lambda: a.backlog_bytes("b") == 0)
            got = 0
            while got < chunks:
                line = await asyncio.wait_for(peer.stdout.readline(), 10)
                if line.split()[1] == str(chunk_bytes).encode():
                    got += 1
            assert a.dropped_frames == 0
        finally:
            await a.close()
            if peer.returncode is None:
                peer.send_signal(signal.SIGCONT)
                peer.kill()
                await peer.wait()

    asyncio.run(scenario())
