"""A lean HTTP/1.1 server on asyncio + httptools, and the request/response records.

Only what SQS clients need: keep-alive, pipelining (answered strictly in order, one
request at a time per connection), chunked request bodies, ``Expect: 100-continue``.
No routing and no protocol knowledge: every complete request goes to one handler
coroutine. Faults of the HTTP layer itself (malformed input, bounds exceeded, a
handler that raised) are answered through a ``fault`` callback so the wire shape of
those errors stays the gateway's business.

The hot path is one ``data_received`` -> parser callbacks -> one handler call -> one
``transport.write``; per-request allocation is the request record, its header dict and
the response bytes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import httptools

__all__ = [
    "HEAD_BYTES_MAX",
    "IDLE_TIMEOUT_S",
    "PIPELINE_BYTES_MAX",
    "PIPELINE_DEPTH_MAX",
    "REQUEST_BODY_BYTES_MAX",
    "FaultFn",
    "Handler",
    "Request",
    "Response",
    "close_server",
    "plain_fault",
    "serve_http",
]

_log = logging.getLogger("ferrymq.gateway.http")

# A message is at most 1 MiB, but the Query protocol percent-encodes it (up to 3x for
# non-ASCII UTF-8) and JSON base64-encodes binary attributes (4/3x) and escapes text;
# with the other fields of a 10-entry batch, 6 MiB admits every valid request while
# still refusing floods early (before they are buffered).
REQUEST_BODY_BYTES_MAX = 6 * 1024 * 1024
# Request line + headers. SigV4 headers are under 2 KiB; GET Query requests carry their
# parameters in the URL, and SQS caps a GET URL well below this. 64 KiB keeps a
# header flood from growing without bound.
HEAD_BYTES_MAX = 64 * 1024
# Parsed-but-unanswered requests per connection: past either bound the server stops
# reading that socket (TCP backpressure to the client) until it has answered some.
# Pipelining clients rarely keep more than a handful in flight.
PIPELINE_DEPTH_MAX = 16
PIPELINE_BYTES_MAX = 8 * 1024 * 1024
# A connection with nothing in flight and no bytes received for this long is closed,
# so abandoned keep-alive connections do not pin file descriptors forever. Longer than
# the 20 s long poll plus SDK keep-alive pools' usual reuse gaps.
IDLE_TIMEOUT_S = 120.0
# How long a finished connection keeps draining input after its last answer (see
# _Connection._close): long enough for a client to read an error on a loopback or LAN
# link, short enough that refused uploads do not hold sockets.
_LINGER_S = 2.0
# Transport write buffer high-water mark: above it the connection waits for the
# client to read before answering its next request.
_WRITE_BUFFER_HIGH_BYTES = 1024 * 1024


@dataclass(slots=True)
class Request:
    method: str
    path: str  # without the query string
    query: str  # raw query string, "" if none
    headers: dict[str, str]  # lower-case names; repeated headers joined by ", "
    body: bytes
    client: str  # "host:port" of the peer


@dataclass(slots=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


Handler = Callable[[Request], Awaitable[Response]]
# (request headers or {}, HTTP status, message, request id) -> response
FaultFn = Callable[[dict[str, str], int, str, str], Response]


def plain_fault(headers: dict[str, str], status: int, message: str, request_id: str) -> Response:
    """The fallback fault renderer: plain text, for servers without a gateway."""
    return Response(status, [("Content-Type", "text/plain; charset=utf-8"),
                             ("x-amzn-RequestId", request_id)], message.encode("utf-8"))


_STATUS_LINES: dict[int, bytes] = {
    s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode("ascii") for s in HTTPStatus
}
# Bodies up to this size are joined with the head into one write; larger ones are
# written separately rather than copied.
_JOIN_BODY_BYTES_MAX = 64 * 1024


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else f"HTTP/1.1 {status} Unknown\r\n".encode("ascii")


class _Fault:
    """A response decided by the HTTP layer, after which the connection closes."""

    __slots__ = ("headers", "message", "status")

    def __init__(self, status: int, message: str, headers: dict[str, str]) -> None:
        self.status = status
        self.message = message
        self.headers = headers


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body_bytes", "_body_chunks", "_closed", "_eof", "_expect_continue", "_fault", "_handler",
        "_head_bytes", "_headers", "_http10", "_idle_handle", "_keep_alive", "_last_active",
        "_loop", "_parser", "_pending", "_pending_bytes", "_reading", "_running", "_stopped",
        "_registry", "_task", "_transport", "_url", "_writable", "_client",
    )

    def __init__(self, handler: Handler, fault: FaultFn, loop: asyncio.AbstractEventLoop,
                 registry: set[_Connection]) -> None:
        self._registry = registry
        self._handler = handler
        self._fault = fault
        self._loop = loop
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._client = ""
        # Per-message parse state.
        self._url = b""
        self._headers: dict[str, str] = {}
        self._head_bytes = 0
        self._body_chunks: list[bytes] = []
        self._body_bytes = 0
        self._keep_alive = True
        self._http10 = False
        self._expect_continue = False
        # Requests (with keep-alive, HTTP/1.0 flags) or faults waiting for an answer,
        # in arrival order. Bounded by PIPELINE_DEPTH_MAX / PIPELINE_BYTES_MAX through
        # pause_reading.
        self._pending: collections.deque[tuple[Request, bool, bool] | _Fault] = (
            collections.deque())
        self._pending_bytes = 0
        self._running = False  # a task is answering self._pending
        # The loop keeps only weak references to tasks: hold the answering one.
        self._task: asyncio.Task[None] | None = None
        self._reading = True
        self._stopped = False  # no more input is accepted (fault or close)
        self._closed = False
        self._eof = False  # the client half-closed
        self._writable: asyncio.Future[None] | None = None
        self._last_active = loop.time()
        self._idle_handle: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._registry.add(self)
        self._transport.set_write_buffer_limits(high=_WRITE_BUFFER_HIGH_BYTES)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._client = f"{peer[0]}:{peer[1]}"
        self._idle_handle = self._loop.call_later(IDLE_TIMEOUT_S, self._check_idle)

    def connection_lost(self, exc: Exception | None) -> None:
        self._registry.discard(self)
        self._closed = True
        self._stopped = True
        self._pending.clear()
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._stopped:
            return
        self._last_active = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No protocol upgrades here (h2c, websockets): answer what was complete
            # and close.
            self._stop(_Fault(400, "Protocol upgrades are not supported.", self._headers))
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if cause is not None and not isinstance(cause, httptools.HttpParserError):
                _log.error("bug: HTTP parser callback raised", exc_info=cause)
            if not self._stopped:  # a callback may already have recorded a fault
                self._stop(_Fault(400, f"Malformed HTTP request: {exc}", {}))
        except Exception:
            _log.exception("bug: HTTP parsing raised")
            self._stop(_Fault(500, "Internal failure.", {}))

    def eof_received(self) -> bool | None:
        # Half-close from the client: answer what is pending, then close.
        self._stopped = True
        self._eof = True
        if not self._running and not self._pending and self._transport is not None:
            self._transport.close()
        return True

    # ---- httptools callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._head_bytes = 0
        self._body_chunks = []
        self._body_bytes = 0
        self._expect_continue = False

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > HEAD_BYTES_MAX:
            self._stop(_Fault(431, "Request line and headers are too large.", {}))
            raise httptools.HttpParserError("head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > HEAD_BYTES_MAX:
            self._stop(_Fault(431, "Request line and headers are too large.", self._headers))
            raise httptools.HttpParserError("head too large")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        parser = self._parser
        self._keep_alive = parser.should_keep_alive()
        self._http10 = parser.get_http_version() == "1.0"
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > REQUEST_BODY_BYTES_MAX:
            self._stop(_Fault(413, f"The request body exceeds {REQUEST_BODY_BYTES_MAX} bytes.",
                              self._headers))
            raise httptools.HttpParserError("body too large")
        if self._headers.get("expect", "").lower() == "100-continue" and not self._http10:
            # Only when idle: an interim 100 between pipelined answers would be taken
            # as belonging to an earlier request. A client kept waiting sends the body
            # anyway after its own timeout.
            if not self._running and not self._pending and self._transport is not None:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > REQUEST_BODY_BYTES_MAX:
            self._stop(_Fault(413, f"The request body exceeds {REQUEST_BODY_BYTES_MAX} bytes.",
                              self._headers))
            raise httptools.HttpParserError("body too large")
        self._body_chunks.append(body)

    def on_message_complete(self) -> None:
        if self._stopped:
            return
        chunks = self._body_chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        url = self._url
        qmark = url.find(b"?")
        if qmark < 0:
            path, query = url.decode("latin-1"), ""
        else:
            path, query = url[:qmark].decode("latin-1"), url[qmark + 1:].decode("latin-1")
        fragment = query.find("#")
        if fragment >= 0:
            query = query[:fragment]
        method = self._parser.get_method().decode("ascii", "replace")
        request = Request(method, path, query, self._headers, body, self._client)
        self._pending.append((request, self._keep_alive, self._http10))
        self._pending_bytes += len(body)
        if not self._keep_alive:
            # Whatever follows a "Connection: close" request is not ours to answer.
            self._stopped = True
        self._after_enqueue()

    # ---- answering -------------------------------------------------------------------

    def _stop(self, fault: _Fault) -> None:
        """Accept no more input; answer everything before ``fault``, then it, then close."""
        if self._stopped:
            return
        self._stopped = True
        self._pending.append(fault)
        self._after_enqueue()

    def _after_enqueue(self) -> None:
        if self._reading and not self._stopped and (
                len(self._pending) >= PIPELINE_DEPTH_MAX
                or self._pending_bytes >= PIPELINE_BYTES_MAX):
            self._reading = False
            assert self._transport is not None
            self._transport.pause_reading()
        if not self._running:
            self._running = True
            self._task = self._loop.create_task(self._answer_all())

    async def _answer_all(self) -> None:
        try:
            while self._pending and not self._closed:
                item = self._pending.popleft()
                if isinstance(item, _Fault):
                    self._write(self._render_fault(item), keep_alive=False, http10=False,
                                head_only=False)
                    self._close()
                    return
                request, keep_alive, http10 = item
                self._pending_bytes -= len(request.body)
                if not self._reading and not self._stopped and (
                        len(self._pending) < PIPELINE_DEPTH_MAX // 2
                        and self._pending_bytes < PIPELINE_BYTES_MAX // 2):
                    self._reading = True
                    assert self._transport is not None
                    self._transport.resume_reading()
                response = await self._call(request)
                if self._closed:
                    return
                if self._writable is not None and not self._writable.done():
                    await self._writable
                    if self._closed:
                        return
                self._write(response, keep_alive=keep_alive, http10=http10,
                            head_only=request.method == "HEAD")
                self._last_active = self._loop.time()
                if not keep_alive:
                    self._close()
                    return
            if self._stopped and not self._closed:
                self._close()  # input ended (EOF or fault) and everything is answered
        finally:
            self._running = False

    async def _call(self, request: Request) -> Response:
        try:
            return await self._handler(request)
        except Exception:
            # The handler is the gateway, which turns every failure into an SQS error
            # itself; reaching this is a bug in it.
            request_id = str(uuid.uuid4())
            _log.exception("bug: HTTP handler raised (request id %s)", request_id)
            return self._fault(request.headers, 500, "Internal failure.", request_id)

    def _render_fault(self, fault: _Fault) -> Response:
        try:
            return self._fault(fault.headers, fault.status, fault.message, str(uuid.uuid4()))
        except Exception:
            _log.exception("bug: HTTP fault renderer raised")
            return plain_fault({}, fault.status, fault.message, "")

    def _write(self, response: Response, *, keep_alive: bool, http10: bool,
               head_only: bool) -> None:
        transport = self._transport
        assert transport is not None
        body = response.body
        head = [_status_line(response.status)]
        for name, value in response.headers:
            head.append(f"{name}: {value}\r\n".encode("latin-1"))
        head.append(b"Content-Length: %d\r\n" % len(body))
        if not keep_alive:
            head.append(b"Connection: close\r\n\r\n")
        elif http10:
            head.append(b"Connection: keep-alive\r\n\r\n")
        else:
            head.append(b"\r\n")
        if head_only:
            transport.write(b"".join(head))
        elif len(body) <= _JOIN_BODY_BYTES_MAX:
            head.append(body)
            transport.write(b"".join(head))
        else:
            transport.write(b"".join(head))
            transport.write(body)

    def _close(self) -> None:
        """Finish the connection after the last answer.

        Closing a socket with unread input makes the kernel send RST, which can
        destroy the answer (a 413 to a client still uploading) before the client reads
        it. So: half-close, keep reading and discarding, and close fully when the
        client does or after _LINGER_S."""
        self._stopped = True
        transport = self._transport
        if transport is None or self._closed:
            self._closed = True
            return
        self._closed = True
        if self._eof or not transport.can_write_eof() or transport.is_closing():
            transport.close()
            return
        try:
            transport.write_eof()
        except OSError:
            transport.close()
            return
        if not self._reading:
            self._reading = True
            transport.resume_reading()
        self._loop.call_later(_LINGER_S, transport.close)

    def abort(self) -> None:
        """Drop the connection now (server shutdown)."""
        self._stopped = True
        self._closed = True
        if self._transport is not None:
            self._transport.abort()

    def _check_idle(self) -> None:
        self._idle_handle = None
        if self._closed:
            return
        idle_s = self._loop.time() - self._last_active
        if not self._running and not self._pending and idle_s >= IDLE_TIMEOUT_S:
            self._close()
            return
        self._idle_handle = self._loop.call_later(
            max(IDLE_TIMEOUT_S - idle_s, 1.0), self._check_idle)


# Open connections of each server started by serve_http, so close_server can end
# them (asyncio.Server.close only stops listening before Python 3.13).
_OPEN: dict[asyncio.AbstractServer, set[_Connection]] = {}


async def serve_http(handler: Handler, host: str, port: int, *, reuse_port: bool = False,
                     fault: FaultFn = plain_fault) -> asyncio.Server:
    """Listen on host:port and answer every request with ``handler``.

    Stop it with ``close_server``, which also ends open keep-alive connections."""
    loop = asyncio.get_running_loop()
    connections: set[_Connection] = set()

    def factory() -> _Connection:
        return _Connection(handler, fault, loop, connections)

    server = await loop.create_server(
        factory, host, port,
        reuse_port=reuse_port or None,
        # Listen backlog: room for a burst of SDK connection pools opening at once.
        backlog=1024,
    )
    _OPEN[server] = connections
    return server


async def close_server(server: asyncio.AbstractServer) -> None:
    """Stop listening and close every connection (in-flight handlers are not awaited:
    their answers are dropped, as if the client had gone away)."""
    server.close()
    for conn in list(_OPEN.pop(server, ())):
        conn.abort()
    await server.wait_closed()
    # Let the transports deliver connection_lost before the caller closes the loop.
    await asyncio.sleep(0)
