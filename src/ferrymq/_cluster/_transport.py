"""Node-to-node connections for replication frames (``ferrymq._replication._frames``).

Each node listens on its replication address and keeps one outbound connection to every
peer it sends to: A's messages to B travel on A's connection, B's answers on B's. A
connection starts with a ``Hello`` (protocol version, cluster name, node id); a peer of
another cluster or version is refused. Sending never blocks the caller: frames queue
per peer up to a bound and are written by a task; when the bound is reached or the
connection breaks, queued frames are dropped, which the protocol tolerates (it resends
what was not acknowledged). Reconnection backs off exponentially up to a cap.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

from ferrymq._replication._frames import (
    PROTOCOL_VERSION,
    FrameDecoder,
    FrameError,
    Hello,
    encode,
)

__all__ = ["PEER_QUEUE_BYTES_MAX", "Transport"]

log = logging.getLogger("ferrymq.cluster.transport")

# Bytes of frames waiting to be written to one peer. Past it new frames are dropped
# (and resent by the protocol once the peer acknowledges again): a slow or dead peer
# must not make the sender buffer without bound. 64 MiB is a few seconds of a busy
# partition's appends.
PEER_QUEUE_BYTES_MAX = 64 * 1024 * 1024
# Reconnection back-off: the first retry is quick (a restart takes about a second),
# later ones settle at the cap so a dead peer costs little.
_BACKOFF_FIRST_S = 0.05
_BACKOFF_MAX_S = 1.0
# Connecting to a peer that does not answer at all (cut off, not refusing) is given up
# after this long and retried on the back-off above.
_CONNECT_TIMEOUT_S = 1.0
# Data a peer has not acknowledged for this long fails the connection (TCP_USER_TIMEOUT)
# instead of waiting on TCP's retransmission back-off, which after a partition of 30 s
# resends only every ~25 s: the writer reconnects at once when the network heals. Four
# heartbeats: a follower is out of the in-sync set sooner (LAG_MAX_MS) anyway.
_USER_TIMEOUT_MS = 2_000
# A peer must say hello this soon after connecting, or it is dropped.
_HELLO_TIMEOUT_S = 5.0
_READ_BYTES = 256 * 1024

FrameHandler = Callable[[str, object], None]
AddressOf = Callable[[str], Awaitable[tuple[str, int] | None]]


class _Peer:
    __slots__ = ("bytes_queued", "name", "queue", "task", "wakeup", "writer")

    def __init__(self, name: str) -> None:
        self.name = name
        self.queue: collections.deque[bytes] = collections.deque()
        self.bytes_queued = 0
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        # The connection while it is up and said hello: ``send`` writes to it at once
        # when nothing is queued before (see there).
        self.writer: asyncio.StreamWriter | None = None


class Transport:
    """See the module docstring. ``on_frame(peer, frame)`` is called on the event loop
    for every frame received; ``address_of(peer)`` resolves a node id to (host, port)
    (from the coordinator's membership), or None when unknown."""

    def __init__(self, *, node: str, cluster: str, on_frame: FrameHandler,
                 address_of: AddressOf) -> None:
        self.node = node
        self.cluster = cluster
        self._on_frame = on_frame
        self._address_of = address_of
        self._peers: dict[str, _Peer] = {}
        self._server: asyncio.Server | None = None
        self._inbound: set[asyncio.Task[None]] = set()
        self._closed = False
        self.dropped_frames = 0  # for metrics and tests
        # The frame encoded last and its bytes (see send).
        self._last_frame: object = None
        self._last_data = b""

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._accept, host, port)
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    def send(self, peer: str, frame: object) -> None:
        """Queue ``frame`` for ``peer``; never blocks, may drop (see module docstring)."""
        if self._closed or peer == self.node:
            return
        if frame is self._last_frame:
            # The same frame for another peer (the leader's Append to followers in
            # step): encoded once.
            data = self._last_data
        else:
            data = encode(frame)  # type: ignore[arg-type]
            self._last_frame, self._last_data = frame, data
        p = self._peers.get(peer)
        if p is None:
            p = self._peers[peer] = _Peer(peer)
            p.task = asyncio.get_running_loop().create_task(self._writer(p))
        elif p.task is not None and p.task.done():
            # The writer ends only with the transport; anything else is a bug, which
            # must not silence the peer for good: say so and write on.
            failure = None if p.task.cancelled() else p.task.exception()
            log.error("bug: the replication writer to %s ended (%r); restarting it", peer,
                      failure)
            p.task = asyncio.get_running_loop().create_task(self._writer(p))
        writer = p.writer
        if (writer is not None and not p.queue and not writer.is_closing()
                and writer.transport.get_write_buffer_size() <= _READ_BYTES):
            # Written now rather than by the writer task on a later turn of the loop:
            # every hop of a commit (the leader's Append, the follower's reply) would
            # otherwise wait a turn, which under load is milliseconds. Frames queued
            # before go first, so only an empty queue allows it; a full buffer is left
            # to the task, which drains it.
            try:
                writer.write(data)
                return
            except (OSError, RuntimeError):
                pass  # closed under us (uvloop raises): the task reconnects
        if p.bytes_queued + len(data) > PEER_QUEUE_BYTES_MAX:
            self.dropped_frames += 1
            return
        p.queue.append(data)
        p.bytes_queued += len(data)
        p.wakeup.set()

    def backlog_bytes(self, peer: str) -> int:
        """Bytes handed to ``send`` for ``peer`` and not yet written to its socket: the
        queue plus the connection's write buffer. A sender that waits while this is
        high (a snapshot) never has its frames dropped at the bound."""
        p = self._peers.get(peer)
        if p is None:
            return 0
        writer = p.writer
        buffered = 0 if writer is None else writer.transport.get_write_buffer_size()
        return p.bytes_queued + buffered

    def reset(self, peer: str) -> None:
        """``peer`` is a new process now: close the connection to the old one (the
        writer reconnects, to the address ``address_of`` gives now). Frames written to
        a dead peer's connection are lost silently until a write fails."""
        p = self._peers.get(peer)
        if p is not None and p.writer is not None:
            p.writer.close()
            p.writer = None
            p.wakeup.set()

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        tasks = [p.task for p in self._peers.values() if p.task is not None]
        tasks.extend(self._inbound)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    # ---- outbound ------------------------------------------------------------------

    async def _writer(self, peer: _Peer) -> None:
        backoff = _BACKOFF_FIRST_S
        while not self._closed:
            await peer.wakeup.wait()
            address = await self._address_of(peer.name)
            if address is None:
                self._drop_queue(peer)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            try:
                _reader, writer = await asyncio.wait_for(asyncio.open_connection(*address),
                                                         _CONNECT_TIMEOUT_S)
            except (OSError, TimeoutError):
                self._drop_queue(peer)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            backoff = _BACKOFF_FIRST_S
            sock = writer.get_extra_info("socket")
            if sock is not None and hasattr(socket, "TCP_USER_TIMEOUT"):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT,
                                _USER_TIMEOUT_MS)
            try:
                writer.write(encode(Hello(PROTOCOL_VERSION, self.cluster, self.node)))
                peer.writer = writer
                while not self._closed:
                    if writer.is_closing():
                        if peer.writer is None:
                            # reset(): reconnect, keeping what is queued for the new
                            # process.
                            peer.wakeup.set()
                            break
                        # Closed under us (the peer died, a write failed). uvloop then
                        # raises RuntimeError on the next write, where asyncio's own
                        # loop drops it silently: either way, reconnect.
                        raise ConnectionResetError("the connection closed")
                    if not peer.queue:
                        peer.wakeup.clear()
                        await writer.drain()
                        await peer.wakeup.wait()
                        continue
                    data = peer.queue.popleft()
                    peer.bytes_queued -= len(data)
                    writer.write(data)
                    if writer.transport.get_write_buffer_size() > _READ_BYTES:
                        await writer.drain()
            except (OSError, ConnectionError):
                self._drop_queue(peer)
            finally:
                peer.writer = None
                writer.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await writer.wait_closed()

    def _drop_queue(self, peer: _Peer) -> None:
        self.dropped_frames += len(peer.queue)
        peer.queue.clear()
        peer.bytes_queued = 0
        peer.wakeup.clear()

    # ---- inbound -------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._inbound.add(task)
        decoder = FrameDecoder()
        peer: str | None = None
        try:
            while not self._closed:
                timeout = _HELLO_TIMEOUT_S if peer is None else None
                data = await asyncio.wait_for(reader.read(_READ_BYTES), timeout)
                if not data:
                    return
                for frame in decoder.feed(data):
                    if peer is None:
                        if not isinstance(frame, Hello) or frame.version != PROTOCOL_VERSION \
                                or frame.cluster != self.cluster:
                            log.warning("refusing a replication connection: %r", frame)
                            return
                        peer = frame.node
                        continue
                    self._on_frame(peer, frame)
        except (FrameError, TimeoutError, OSError, ConnectionError) as exc:
            log.info("replication connection from %s closed: %r", peer, exc)
        except asyncio.CancelledError:
            # Closing the transport: end quietly (asyncio's server logs a connection
            # task that ends cancelled as an error).
            return
        finally:
            writer.close()
            if task is not None:
                self._inbound.discard(task)
