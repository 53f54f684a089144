"""Forwarding a client's HTTP request, as received, to the node that leads its queue,
and relaying the answer back unchanged.

Forwarding the raw request (not a re-encoded call) keeps every protocol detail exact:
the leader decodes the request in whichever SQS protocol it was sent, builds queue
URLs from the client's own ``Host`` header (so they name the node the client talks to),
takes the caller's identity from its ``Authorization`` header, and renders errors in
the client's protocol. The forwarding node adds ``x-ferry-forwarded`` so the leader
never forwards it again (a stale route gets a retriable 503 instead of a loop).

A small HTTP/1.1 client on asyncio streams and httptools' response parser, with a
bounded pool of keep-alive connections per target.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib

import httptools

from ferrymq._gateway._http import Request, Response

__all__ = ["FORWARDED_HEADER", "PROXY_TIMEOUT_S", "Proxy", "ProxyError"]

FORWARDED_HEADER = "x-ferry-forwarded"
# The longest a forwarded request may take: a 20 s long poll, plus a commit that waits
# for a failover (a few seconds), plus slack. Past it the client gets a 503.
PROXY_TIMEOUT_S = 40.0
# Idle keep-alive connections kept per target node: enough for the concurrency of a
# busy gateway's forwarded requests to reuse them; more are opened on demand and closed
# after use.
_IDLE_CONNECTIONS_MAX = 64
# Headers that describe one hop, not the request (RFC 9110 §7.6.1).
_HOP_HEADERS = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                          "transfer-encoding", "upgrade", "content-length", "expect"})
_READ_BYTES = 256 * 1024


class ProxyError(Exception):
    """The target could not be reached or did not answer in time. ``sent`` is False
    when no byte of the request left (the connection could not be made): only then may
    the caller send it elsewhere without risking doing it twice."""

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class _Parsed:
    """httptools callbacks for one response."""

    __slots__ = ("body", "complete", "headers", "keep_alive")

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.complete = False
        self.keep_alive = True

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class Proxy:
    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], collections.deque[_Conn]] = {}

    async def forward(self, target: tuple[str, int], request: Request) -> Response:
        """Send ``request`` to ``target`` and return its answer. Raises ``ProxyError``."""
        try:
            return await asyncio.wait_for(self._exchange(target, request), PROXY_TIMEOUT_S)
        except (OSError, ConnectionError, TimeoutError, httptools.HttpParserError) as exc:
            raise ProxyError(f"forwarding to {target[0]}:{target[1]} failed: {exc!r}") from exc

    async def _connect(self, target: tuple[str, int]) -> _Conn:
        idle = self._idle.get(target)
        while idle:
            conn = idle.pop()
            # One the target closed while it sat idle has seen EOF: never reuse it (a
            # request sent on it would fail in a way that cannot tell "not processed"
            # from "processed, then the target died", and SQS requests are not
            # idempotent, so nothing is retried here: the client retries).
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                return conn
            conn.close()
        try:
            reader, writer = await asyncio.open_connection(*target)
        except OSError as exc:
            raise ProxyError(f"connecting to {target[0]}:{target[1]} failed: {exc!r}",
                             sent=False) from exc
        return _Conn(reader, writer)

    async def _exchange(self, target: tuple[str, int], request: Request) -> Response:
        conn = await self._connect(target)
        try:
            response, keep = await self._once(conn, request)
        except BaseException:
            conn.close()
            raise
        if keep:
            idle = self._idle.setdefault(target, collections.deque())
            if len(idle) < _IDLE_CONNECTIONS_MAX:
                idle.append(conn)
                return response
        conn.close()
        return response

    async def _once(self, conn: _Conn, request: Request) -> tuple[Response, bool]:
        target = request.path + (f"?{request.query}" if request.query else "")
        head = [f"{request.method} {target} HTTP/1.1\r\n"]
        for name, value in request.headers.items():
            if name not in _HOP_HEADERS and name != FORWARDED_HEADER:
                head.append(f"{name}: {value}\r\n")
        head.append(f"{FORWARDED_HEADER}: 1\r\nContent-Length: {len(request.body)}\r\n\r\n")
        conn.writer.write("".join(head).encode("latin-1") + request.body)
        await conn.writer.drain()
        parsed = _Parsed()
        parser = httptools.HttpResponseParser(parsed)
        while not parsed.complete:
            data = await conn.reader.read(_READ_BYTES)
            if not data:
                raise ConnectionError("the target closed the connection mid-answer")
            parser.feed_data(data)
        keep = parser.should_keep_alive()
        headers = [(n, v) for n, v in parsed.headers if n.lower() not in _HOP_HEADERS]
        return Response(parser.get_status_code(), headers, b"".join(parsed.body)), keep

    async def close(self) -> None:
        for idle in self._idle.values():
            while idle:
                conn = idle.pop()
                conn.close()
                with contextlib.suppress(OSError, ConnectionError):
                    await conn.writer.wait_closed()
        self._idle.clear()
