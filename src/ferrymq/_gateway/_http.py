"""A lean HTTP/1.1 server on asyncio + httptools, and the request/response records.

Only what SQS clients need: keep-alive, pipelining (answered strictly in order, one
request at a time per connection), chunked request bodies, ``Expect: 100-continue``.
No routing and no protocol knowledge: every complete request goes to one handler
coroutine. Faults of the HTTP layer itself (malformed input, bounds exceeded, a
handler that raised) are answered through a ``fault`` callback so the wire shape of
those errors stays the gateway's business.

What a client can hold is bounded (``HttpLimits``): the number of open connections
(idle keep-alive ones are evicted first when the cap is reached), the time to send a
request's head and body once it has begun, the time a connection may sit idle between
requests, and the time a client may leave answers unread. A request that has been
handed to the handler is never cut short by these bounds. One sweep per server, once
per ``sweep_interval_s``, enforces all of them; the per-request path only records
which phase the connection is in, against a clock the sweep refreshes.

The hot path is one ``data_received`` -> parser callbacks -> one handler call -> one
``transport.write``; per-request allocation is the request record, its header dict and
the response bytes.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import socket
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast

import httptools

from ferrymq._core._errors import InternalError

__all__ = [
    "BODY_RATE_MIN_BYTES_PER_S",
    "BODY_TIMEOUT_S",
    "CONNECTIONS_MAX",
    "DRAIN_TIMEOUT_S",
    "HEAD_BYTES_MAX",
    "HEAD_TIMEOUT_S",
    "IDLE_TIMEOUT_S",
    "INTERNAL_FAILURE_MESSAGE",
    "PIPELINE_BYTES_MAX",
    "PIPELINE_DEPTH_MAX",
    "REQUEST_BODY_BYTES_MAX",
    "SWEEP_INTERVAL_S",
    "WRITE_STALL_TIMEOUT_S",
    "FaultFn",
    "Handler",
    "HttpLimits",
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
# A connection with nothing in flight and no request begun for this long is closed
# (FIN), so abandoned keep-alive connections do not pin file descriptors forever. SQS
# itself was observed closing idle connections after about 2 minutes. Longer than the
# client-side idle limits of SDK pools (Java SDK 60 s, Go SDK 90 s) so that the client,
# not the server, ends an idle connection: a server-side close races with a client
# reusing the connection at that moment. Idle connections are also the first evicted
# at CONNECTIONS_MAX, so a long idle limit cannot lock fresh clients out.
IDLE_TIMEOUT_S = 120.0
# Once a request's first byte has arrived, its request line and headers (at most
# HEAD_BYTES_MAX) must be complete within this. SDKs write a head in one send, so it
# arrives within a round trip on any working link; 10 s still covers a 64 KiB GET over
# a 64 kbit/s link, and bounds a slowloris client dribbling header bytes to 10 s per
# connection. Expiry answers 408 and closes.
HEAD_TIMEOUT_S = 10.0
# A body must arrive within BODY_TIMEOUT_S plus one second per BODY_RATE_MIN_BYTES_PER_S
# received, i.e. after a grace period it must average at least that rate. A 6 MiB upload
# (REQUEST_BODY_BYTES_MAX) over a 64 kbit/s (8 KiB/s) link takes 12.8 minutes and is
# still accepted; a client sending slower than that holds a connection (and the body
# buffered so far) for no good reason. The grace covers a client that waits up to its
# own timeout for a "100 Continue" this server withholds while pipelined answers are
# pending. Expiry answers 408 and closes.
BODY_TIMEOUT_S = 10.0
BODY_RATE_MIN_BYTES_PER_S = 8 * 1024
# A client that leaves answers unread for this long (the transport's write buffer stays
# above its high-water mark, _WRITE_BUFFER_HIGH_BYTES) is dropped: it holds up to that
# much buffered output plus one answer. Draining the buffer from high to low water
# (768 KiB) in 60 s needs about 100 kbit/s; a reader slower than that is not reading.
WRITE_STALL_TIMEOUT_S = 60.0
# Open connections per server. Each costs a file descriptor and a few KiB of memory;
# at the cap, an idle keep-alive connection (then a request head stuck for at least
# _HEAD_EVICT_AGE_S) is closed to admit the new one, else the new one gets 503 and is
# closed. 4096 covers a fleet of SDK pools (botocore keeps 10 per client, the Java SDK
# 50) on one node; serve_http lowers it to fit the process's file-descriptor limit
# (see _FDS_RESERVED) so the cap, not EMFILE on accept, is what a flood hits.
CONNECTIONS_MAX = 4096
# How long close_server lets requests in flight finish before it drops their
# connections. The service wakes parked long polls at shutdown, so what remains is a
# commit (milliseconds); 5 s leaves the store time to close within `docker stop`'s
# 10-second grace before SIGKILL.
DRAIN_TIMEOUT_S = 5.0
# How often the sweep enforces the deadlines above (and refreshes the clock the
# per-request path reads): every deadline holds to within one interval. Once a second
# costs one pass over the open connections, about 0.1 µs each, and no timer per
# request or per connection.
SWEEP_INTERVAL_S = 1.0
# File descriptors kept out of CONNECTIONS_MAX when the process limit is lower: SQLite
# (database, WAL, shared memory), stdio, the event loop's own descriptors, listening
# sockets, and sockets that are being refused or are lingering after their last answer.
_FDS_RESERVED = 64
# At the cap, a connection whose request head has been arriving for at least this long
# (or half its head_timeout_s, if less) may be evicted after idle ones: a real client's
# head arrives within a round trip, so this only catches clients dribbling bytes, never
# one in the middle of a send.
_HEAD_EVICT_AGE_S = 1.0
# How long a finished connection keeps draining input after its last answer (see
# _Connection._close): long enough for a client to read an error on a loopback or LAN
# link, short enough that refused uploads do not hold sockets.
_LINGER_S = 2.0
# The same for a connection refused at CONNECTIONS_MAX, answered before its request
# arrived: shorter, because a flood of them is what the cap is for and each holds a
# descriptor beyond the cap while it lingers.
_REFUSED_LINGER_S = 0.5
# Transport write buffer high-water mark: above it the connection waits for the
# client to read before answering its next request.
_WRITE_BUFFER_HIGH_BYTES = 1024 * 1024

# The text AWS documents for InternalFailure (common errors of every AWS API).
INTERNAL_FAILURE_MESSAGE = ("The request processing has failed because of an unknown error, "
                     "exception or failure.")

# Where a connection is in reading its current request (_Connection._phase).
_BETWEEN = 0  # no request begun: idle if nothing is pending either
_HEAD = 1  # request line or headers arriving
_BODY = 2  # headers complete, body arriving


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The bounds of one server (see the constants of the same names for the defaults'
    reasons). Tests pass small values; the CLI passes flags."""

    connections_max: int = CONNECTIONS_MAX
    idle_timeout_s: float = IDLE_TIMEOUT_S
    head_timeout_s: float = HEAD_TIMEOUT_S
    body_timeout_s: float = BODY_TIMEOUT_S
    body_rate_min_bytes_per_s: float = BODY_RATE_MIN_BYTES_PER_S
    write_stall_timeout_s: float = WRITE_STALL_TIMEOUT_S
    sweep_interval_s: float = SWEEP_INTERVAL_S

    def __post_init__(self) -> None:
        if self.connections_max < 1:
            raise ValueError(f"connections_max must be at least 1, not {self.connections_max}")
        for name in ("idle_timeout_s", "head_timeout_s", "body_timeout_s",
                     "body_rate_min_bytes_per_s", "write_stall_timeout_s", "sweep_interval_s"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number, not {value!r}")


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


class _Listener:
    """What the connections of one server share: the handler, the limits, the set of
    open connections, the sweep and the clock it refreshes."""

    __slots__ = ("clock", "connections", "connections_max", "counted", "drained", "draining",
                 "fault", "handler", "limits", "loop", "no_victim_at", "sweeper")

    def __init__(self, handler: Handler, fault: FaultFn, loop: asyncio.AbstractEventLoop,
                 limits: HttpLimits, connections_max: int) -> None:
        self.handler = handler
        self.fault = fault
        self.loop = loop
        self.limits = limits
        self.connections_max = connections_max
        # Every connection until connection_lost, lingering and refused ones included,
        # so close_server can end them all.
        self.connections: set[_Connection] = set()
        # Connections admitted under connections_max and not yet closing.
        self.counted = 0
        self.draining = False
        self.drained: asyncio.Future[None] | None = None
        # Seconds on the loop's clock, as of the last sweep: what the per-request path
        # stamps phases with, so it never reads the clock itself.
        self.clock = loop.time()
        # The clock of the last evict_one that found nothing: until the next sweep,
        # newcomers are refused without another scan (a flood at the cap must not cost
        # a scan of every connection per accepted socket).
        self.no_victim_at = -math.inf
        self.sweeper: asyncio.TimerHandle | None = loop.call_later(
            limits.sweep_interval_s, self.sweep)

    def sweep(self) -> None:
        limits = self.limits
        # Re-armed first: a bug below must not end deadline enforcement for good.
        self.sweeper = self.loop.call_later(limits.sweep_interval_s, self.sweep)
        now = self.loop.time()
        self.clock = now
        for conn in list(self.connections):
            conn.check_deadlines(now, limits)

    def stop_sweeping(self) -> None:
        if self.sweeper is not None:
            self.sweeper.cancel()
            self.sweeper = None

    def evict_one(self) -> bool:
        """Close one connection that has nothing in flight to make room for a new one:
        a keep-alive connection waiting for its next request (the first one found: its
        client reconnects when it needs to), else a request head still arriving after
        _HEAD_EVICT_AGE_S. False if there is none. Paid only at the cap: a scan that
        stops at the first idle connection, and at most one fruitless scan per sweep."""
        if self.no_victim_at == self.clock:
            return False
        slow: _Connection | None = None
        slow_since = self.clock - min(_HEAD_EVICT_AGE_S, self.limits.head_timeout_s / 2)
        for conn in self.connections:
            if not conn.counted or conn.stopped or conn.busy:
                continue
            phase = conn.phase
            if phase == _BETWEEN:
                conn.close_idle()
                return True
            if phase == _HEAD and conn.phase_since <= slow_since:
                slow, slow_since = conn, conn.phase_since
        if slow is not None:
            slow.refuse("Too many open connections: this request was too slow to arrive.")
            return True
        self.no_victim_at = self.clock
        return False

    def forget(self, conn: _Connection) -> None:
        self.connections.discard(conn)
        if self.drained is not None and not self.connections and not self.drained.done():
            self.drained.set_result(None)


class _Connection(asyncio.Protocol):
    __slots__ = (
        "_body_base", "_body_bytes", "_body_chunks", "_client", "_closed", "_continuing",
        "_draining", "_eof", "_expect_continue", "_fault", "_handler", "_head_bytes",
        "_headers", "_http10", "_inject", "_keep_alive", "_linger_s", "_loop", "_parser",
        "_pending", "_pending_bytes", "_reading", "_running", "_server", "_task",
        "_transport", "_url", "_writable", "_write_paused_at", "counted", "idle_since",
        "phase", "phase_since", "stopped",
    )

    def __init__(self, server: _Listener) -> None:
        self._server = server
        self._handler = server.handler
        self._fault = server.fault
        self._loop = server.loop
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
        # Deadline state, read by the sweep: which part of a request is arriving, since
        # when (server clock), and when the connection last became idle.
        self.phase = _BETWEEN
        self.phase_since = server.clock
        self.idle_since = server.clock
        self._body_base = 0  # _body_bytes when the body deadline's clock last (re)started
        self._write_paused_at = 0.0
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
        self.stopped = False  # no more input is accepted (fault, drain or close)
        self._closed = False
        self._eof = False  # the client half-closed
        self._writable: asyncio.Future[None] | None = None
        self.counted = False  # admitted under connections_max (and not yet closing)
        self._draining = False  # server shutdown: answer what is parsed, then close
        self._linger_s = _LINGER_S
        # An Upgrade request with a body: httptools ends the message at its head, so the
        # body is parsed as the body of a synthesised head (_inject) and joined to the
        # request while _continuing.
        self._inject: bytes | None = None
        self._continuing = False

    @property
    def busy(self) -> bool:
        """A request of this connection is being answered or waits to be."""
        return self._running or bool(self._pending)

    # ---- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        server = self._server
        server.connections.add(self)
        self._transport.set_write_buffer_limits(high=_WRITE_BUFFER_HIGH_BYTES)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self._client = f"{peer[0]}:{peer[1]}"
        if server.draining:
            # Accepted just before the listener closed: nothing was asked yet.
            self.close_idle()
            return
        if server.counted >= server.connections_max and not server.evict_one():
            # Answer at once, before any request arrives: a client reads the 503 (which
            # SDKs retry with back-off) instead of waiting in the listen backlog.
            self._linger_s = _REFUSED_LINGER_S
            self.refuse("Too many open connections; retry later.")
            return
        server.counted += 1
        self.counted = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._set_closed()
        self.stopped = True
        self._pending.clear()
        self._server.forget(self)
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        if self._writable is None or self._writable.done():
            self._writable = self._loop.create_future()
            self._write_paused_at = self._loop.time()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._resume_after_upgrade(data, int(upgrade.args[0]))
        except httptools.HttpParserError as exc:
            self._parse_failed(exc)
        except Exception:
            _log.exception("bug: HTTP parsing raised")
            self._stop(_Fault(500, INTERNAL_FAILURE_MESSAGE, {}))

    def eof_received(self) -> bool | None:
        # Half-close from the client: answer what is pending, then close.
        self.stopped = True
        self._eof = True
        if not self._running and not self._pending and self._transport is not None:
            self._set_closed()
            self._transport.close()
        return True

    # ---- parsing ------------------------------------------------------------------

    def _parse_failed(self, exc: httptools.HttpParserError) -> None:
        cause = exc.__context__
        if cause is not None and not isinstance(cause, httptools.HttpParserError):
            _log.error("bug: HTTP parser callback raised", exc_info=cause)
        if not self.stopped:  # a callback may already have recorded a fault
            self._stop(_Fault(400, f"Malformed HTTP request: {exc}", {}))

    def _resume_after_upgrade(self, data: bytes | memoryview, offset: int) -> None:
        """The parser stopped after the head of a request asking for a protocol switch
        (``Upgrade`` with ``Connection: upgrade``, or ``CONNECT``), ``offset`` bytes into
        ``data``. Ferry switches to nothing: such a request is answered as a plain
        HTTP/1.1 request (RFC 9110 §7.8 lets a server ignore Upgrade), so parsing goes
        on with the bytes after its head, as HTTP/1.1. A client must not send the new
        protocol before a 101, which never comes, so those bytes are its body or further
        requests."""
        while not self.stopped:
            rest = memoryview(data)[offset:]
            inject = self._inject
            if inject is not None:
                self._inject = None
                data = inject + rest
            elif not rest:
                return
            else:
                data = rest
            try:
                self._parser.feed_data(data)
                return
            except httptools.HttpParserUpgrade as upgrade:
                offset = int(upgrade.args[0])
            except httptools.HttpParserError as exc:
                self._parse_failed(exc)
                return
            except Exception:
                _log.exception("bug: HTTP parsing raised")
                self._stop(_Fault(500, INTERNAL_FAILURE_MESSAGE, {}))
                return

    # ---- httptools callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        if self._continuing:
            return
        self._url = b""
        self._headers = {}
        self._head_bytes = 0
        self._body_chunks = []
        self._body_bytes = 0
        self._expect_continue = False
        self.phase = _HEAD
        self.phase_since = self._server.clock

    def on_url(self, url: bytes) -> None:
        if self._continuing:
            return
        self._url += url
        self._head_bytes += len(url)
        if self._head_bytes > HEAD_BYTES_MAX:
            self._stop(_Fault(431, "Request line and headers are too large.", {}))
            raise httptools.HttpParserError("head too large")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._continuing:
            return  # the synthesised framing header, or trailers of its chunked body
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > HEAD_BYTES_MAX:
            self._stop(_Fault(431, "Request line and headers are too large.", self._headers))
            raise httptools.HttpParserError("head too large")
        if self.phase == _BODY:
            # A trailer of a chunked body: counted above, but never merged into the
            # headers (RFC 9110 §6.5.1), or a trailer could choose the action or add
            # to what a signature covered.
            return
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        old = self._headers.get(key)
        self._headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        if self._continuing:
            return
        parser = self._parser
        self.phase = _BODY
        self.phase_since = self._server.clock
        self._body_base = 0
        self._keep_alive = parser.should_keep_alive()
        self._http10 = parser.get_http_version() == "1.0"
        length = self._headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > REQUEST_BODY_BYTES_MAX:
            self._stop(_Fault(413, f"The request body exceeds {REQUEST_BODY_BYTES_MAX} bytes.",
                              self._headers))
            raise httptools.HttpParserError("body too large")
        if parser.should_upgrade():
            self._ignore_upgrade()
        if self._headers.get("expect", "").lower() == "100-continue" and not self._http10:
            # Only when idle: an interim 100 between pipelined answers would be taken
            # as belonging to an earlier request. A client kept waiting sends the body
            # anyway after its own timeout.
            if not self._running and not self._pending and self._transport is not None:
                self._transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _ignore_upgrade(self) -> None:
        """httptools treats an upgrade request as ending at its head and leaves any body
        unparsed; prepare a head with the same framing to parse that body with."""
        if self._parser.get_method() == b"CONNECT":
            # Answered, then closed: a 2xx to CONNECT would read as an open tunnel.
            self._keep_alive = False
        encoding = self._headers.get("transfer-encoding")
        length = self._headers.get("content-length")
        if encoding is not None:
            framing = b"Transfer-Encoding: " + encoding.encode("latin-1")
        elif length is not None:
            framing = b"Content-Length: " + length.encode("latin-1")
        else:
            return
        # The same header value under the same parser gives the same framing and the
        # same errors as the request would have had without Upgrade.
        self._inject = b"POST / HTTP/1.1\r\n" + framing + b"\r\n\r\n"

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > REQUEST_BODY_BYTES_MAX:
            self._stop(_Fault(413, f"The request body exceeds {REQUEST_BODY_BYTES_MAX} bytes.",
                              self._headers))
            raise httptools.HttpParserError("body too large")
        self._body_chunks.append(body)

    def on_message_complete(self) -> None:
        if self._inject is not None:
            # The end httptools reports for an upgrade request's head; its body follows.
            self._continuing = True
            return
        self._continuing = False
        self.phase = _BETWEEN
        if self.stopped:
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
            self.stopped = True
        self._after_enqueue()

    # ---- answering -------------------------------------------------------------------

    def _stop(self, fault: _Fault) -> None:
        """Accept no more input; answer everything before ``fault``, then it, then close."""
        if self.stopped:
            return
        self.stopped = True
        self._pending.append(fault)
        self._after_enqueue()

    def _after_enqueue(self) -> None:
        if self._reading and not self.stopped and (
                len(self._pending) >= PIPELINE_DEPTH_MAX
                or self._pending_bytes >= PIPELINE_BYTES_MAX):
            self._reading = False
            self._require_transport().pause_reading()
        if not self._running:
            self._running = True
            self._task = self._loop.create_task(self._answer_all())

    def _require_transport(self) -> asyncio.Transport:
        transport = self._transport
        if transport is None:
            raise InternalError("HTTP connection used before connection_made")
        return transport

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
                if not self._reading and not self.stopped and (
                        len(self._pending) < PIPELINE_DEPTH_MAX // 2
                        and self._pending_bytes < PIPELINE_BYTES_MAX // 2):
                    self._reading = True
                    # Time spent paused was ours, not the client's: restart the clock
                    # of a request that was arriving.
                    self.phase_since = self._server.clock
                    self._body_base = self._body_bytes
                    self._require_transport().resume_reading()
                response = await self._call(request)
                if self._closed:
                    return
                if self._writable is not None and not self._writable.done():
                    await self._writable
                    if self._closed:
                        return
                if self._draining and not self._pending:
                    keep_alive = False  # shutdown: the last answer on this connection
                self._write(response, keep_alive=keep_alive, http10=http10,
                            head_only=request.method == "HEAD")
                self.idle_since = self._server.clock
                if not keep_alive:
                    self._close()
                    return
            if self.stopped and not self._closed:
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
            return self._fault(request.headers, 500, INTERNAL_FAILURE_MESSAGE, request_id)

    def _render_fault(self, fault: _Fault) -> Response:
        try:
            return self._fault(fault.headers, fault.status, fault.message, str(uuid.uuid4()))
        except Exception:
            _log.exception("bug: HTTP fault renderer raised")
            return plain_fault({}, fault.status, fault.message, "")

    def _write(self, response: Response, *, keep_alive: bool, http10: bool,
               head_only: bool) -> None:
        transport = self._require_transport()
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

    # ---- closing ---------------------------------------------------------------------

    def _set_closed(self) -> None:
        if not self._closed:
            self._closed = True
            if self.counted:
                self.counted = False
                self._server.counted -= 1

    def _close(self) -> None:
        """Finish the connection after the last answer.

        Closing a socket with unread input makes the kernel send RST, which can
        destroy the answer (a 413 to a client still uploading) before the client reads
        it. So: half-close, keep reading and discarding, and close fully when the
        client does or after _linger_s."""
        self.stopped = True
        transport = self._transport
        if transport is None or self._closed:
            self._set_closed()
            return
        self._set_closed()
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
        self._loop.call_later(self._linger_s, transport.close)

    def close_idle(self) -> None:
        """Close a connection with no request in progress (FIN after any buffered
        output): there is no answer for a client to lose, so no linger."""
        self.stopped = True
        self._set_closed()
        if self._transport is not None:
            self._transport.close()

    def refuse(self, message: str) -> None:
        """Answer 503 instead of a request not yet (completely) received, and close."""
        self._stop(_Fault(503, message, self._headers))

    def abort(self) -> None:
        """Drop the connection now (RST)."""
        self.stopped = True
        self._set_closed()
        if self._transport is not None:
            self._transport.abort()

    def drain(self) -> None:
        """Server shutdown: finish answering what was parsed, the last answer with
        ``Connection: close``, and accept nothing more."""
        if self._closed:
            return
        if self._running or self._pending:
            self._draining = True
            self.stopped = True
        elif self.stopped:
            return  # already on its way out
        elif self.phase != _BETWEEN:
            # A request still arriving: no one has seen it, so a 503 (which SDKs retry
            # elsewhere or later) is all it can get.
            self.refuse("The server is shutting down.")
        else:
            self.close_idle()

    def check_deadlines(self, now: float, limits: HttpLimits) -> None:
        """Run by the sweep: enforce the read, idle and write-stall deadlines."""
        if self._closed:
            return
        writable = self._writable
        if writable is not None and not writable.done() and (
                now - self._write_paused_at >= limits.write_stall_timeout_s):
            _log.debug("dropping %s: answers unread for %.0f s", self._client,
                       now - self._write_paused_at)
            self.abort()
            return
        if self.stopped or not self._reading:
            return  # no more input wanted, or reading paused by us (backpressure)
        phase = self.phase
        if phase == _HEAD:
            if now - self.phase_since >= limits.head_timeout_s:
                self._stop(_Fault(408, "The request headers did not arrive in time.",
                                  self._headers))
        elif phase == _BODY:
            allowed_s = limits.body_timeout_s + (
                (self._body_bytes - self._body_base) / limits.body_rate_min_bytes_per_s)
            if now - self.phase_since >= allowed_s:
                self._stop(_Fault(408, "The request body did not arrive in time.",
                                  self._headers))
        elif not self._running and not self._pending and (
                now - self.idle_since >= limits.idle_timeout_s):
            self.close_idle()


def _fit_to_fd_limit(connections_max: int) -> int:
    """connections_max, lowered to leave _FDS_RESERVED descriptors under the process's
    soft RLIMIT_NOFILE: past that limit accept fails with EMFILE and every client
    waits, so the cap must bite first."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return connections_max
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return connections_max
    usable = max(soft - _FDS_RESERVED, 1)
    if usable >= connections_max:
        return connections_max
    _log.warning("at most %d connections (not %d): the file-descriptor limit is %d",
                 usable, connections_max, soft)
    return usable


# The shared state of each server started by serve_http, so close_server can end its
# connections (asyncio.Server.close only stops listening before Python 3.13).
_OPEN: dict[asyncio.AbstractServer, _Listener] = {}


async def serve_http(handler: Handler, host: str | None, port: int | None, *,
                     reuse_port: bool = False, fault: FaultFn = plain_fault,
                     limits: HttpLimits | None = None,
                     sock: socket.socket | None = None) -> asyncio.Server:
    """Listen on host:port, or on ``sock`` (an inherited listening socket; host and port
    are then None), and answer every request with ``handler``, within ``limits`` (the
    module's defaults if None).

    Stop it with ``close_server``, which also ends open keep-alive connections."""
    loop = asyncio.get_running_loop()
    limits = limits if limits is not None else HttpLimits()
    listener = _Listener(handler, fault, loop, limits, _fit_to_fd_limit(limits.connections_max))

    def factory() -> _Connection:
        return _Connection(listener)

    try:
        # Listen backlog: room for a burst of SDK connection pools opening at once.
        if sock is None:
            server = await loop.create_server(
                factory, host, port or 0, reuse_port=reuse_port or None, backlog=1024)
        else:
            server = await loop.create_server(factory, sock=sock, backlog=1024)
    except BaseException:
        listener.stop_sweeping()
        raise
    _OPEN[server] = listener
    return server


async def close_server(server: asyncio.AbstractServer, *,
                       drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
    """Stop listening and end every connection: idle ones at once; requests in flight
    (and those already parsed behind them) are answered, the last with
    ``Connection: close``, for up to ``drain_timeout_s``; then whatever is left is
    dropped."""
    listener = _OPEN.pop(server, None)
    server.close()
    if listener is not None:
        listener.draining = True
        for conn in list(listener.connections):
            conn.drain()
        if listener.connections:
            listener.drained = listener.loop.create_future()
            try:
                await asyncio.wait_for(listener.drained, drain_timeout_s)
            except TimeoutError:
                _log.warning("shutdown: dropping %d connections still busy after %.1f s",
                             len(listener.connections), drain_timeout_s)
        for conn in list(listener.connections):
            conn.abort()
        listener.stop_sweeping()
    await server.wait_closed()
    # Let the transports deliver connection_lost before the caller closes the loop.
    await asyncio.sleep(0)
