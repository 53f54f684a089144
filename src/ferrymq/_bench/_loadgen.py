"""The load generator: a separate process that drives one server over raw HTTP/1.1.

What belongs here: the asyncio client (one keep-alive connection per worker, requests
pre-built as bytes, responses parsed by httptools), the worker loops for each role
(send, batch send, receive+delete, paced send) and the measured window with its
server-CPU and RSS readings. It runs as ``python -m ferrymq._bench._loadgen``: a JSON
spec as the first line on stdin, one JSON result on stdout, so the orchestrator can pin
it to its own core with ``taskset`` and the server never competes with it for the
interpreter.

A server may have several endpoints (the nodes of a cluster): workers start on the
first one or are spread over all, and a worker whose endpoint refuses connections moves
to the next one, as a client with a list of endpoints does. A window may also run until
the orchestrator writes a second line on stdin (the failover measurement: it kills
leaders meanwhile); that line carries points in time ("marks") for which the window
reports how long until the first acknowledged request sent after each.

Nothing here knows about peers or workloads by name; the orchestrator composes phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import sys
import threading
import time
from array import array
from dataclasses import dataclass, field
from typing import Any, cast

import httptools
import orjson

from ferrymq._bench._stats import (
    first_ack_delays_ns,
    longest_gaps_ns,
    machine_busy_ns,
    main_thread_cpu_ns,
    percentile,
    session_cpu_ns,
    session_pids,
    session_rss_bytes,
)

__all__ = ["AUTHORIZATION", "Connection", "batch_failed", "build_request", "main", "run_spec"]

# Peers accept any signature; Ferry does not verify SigV4 yet. A fixed header keeps
# every request byte-identical so it can be built once.
AUTHORIZATION = ("AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/sqs/aws4_request, "
                 "SignedHeaders=host, Signature=0")
# Error responses kept verbatim for the report; more would only repeat the same fault.
ERROR_SAMPLES_MAX = 5
# Errors are also counted by kind (their first characters, digits dropped so ports and
# ids do not make every one distinct); past this many kinds the rest count as "other".
ERROR_KINDS_MAX = 20
ERROR_KIND_CHARS = 90
# A connection that cannot be (re)opened this many times in a row ends its worker
# instead of spinning against a dead server. Each failed attempt moves to the next
# endpoint, so with a cluster's three this outlasts a node down for a failover.
RECONNECT_ATTEMPTS_MAX = 20
# The pause after a refused connection before the next attempt: long enough not to spin,
# short against a failover's seconds.
RECONNECT_PAUSE_S = 0.05
# An until-told window that is never told (the orchestrator died and stdin never closed)
# still ends; no failover run here comes near it.
TOLD_WINDOW_MAX_S = 3600.0


def build_request(host: str, port: int, action: str, payload: bytes) -> bytes:
    """One complete AWS JSON 1.0 request as bytes, ready to write to a socket."""
    head = (
        f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\n"
        "Content-Type: application/x-amz-json-1.0\r\n"
        f"X-Amz-Target: AmazonSQS.{action}\r\n"
        f"Authorization: {AUTHORIZATION}\r\n"
        "X-Amz-Date: 20260101T000000Z\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode("ascii") + payload


def batch_failed(body: bytes) -> bool:
    """Whether a batch response reports failed entries (peers send ``"Failed": []``)."""
    if b'"Failed"' not in body:  # the common case costs one substring search
        return False
    return bool(orjson.loads(body).get("Failed"))


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection with at most one request outstanding."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self._body_parts: list[bytes] = []
        # Made by the running loop's create_connection. Kept: asyncio.get_running_loop()
        # makes a getpid() system call (its check for a fork), which was 7 % of this
        # process's samples while it drove ferry-p2's drain.
        self._loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _transport, protocol = await loop.create_connection(cls, host, port)
        return protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio.Transport, only alike.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(ConnectionError(f"malformed HTTP response: {exc}"))
            self.close()

    def on_body(self, body: bytes) -> None:
        self._body_parts.append(body)

    def on_message_complete(self) -> None:
        status = self._parser.get_status_code()
        body = b"".join(self._body_parts)
        self._body_parts.clear()
        if not self._parser.should_keep_alive():
            # moto answers "Connection: close" and then never reads again: the next
            # request must go on a new connection, or it waits forever.
            self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(ConnectionError(f"connection closed: {exc}"))

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self._transport is None:
            raise ConnectionError("connection is closed")
        assert self._waiter is None, "one request at a time per connection"
        self._waiter = self._loop.create_future()
        self._transport.write(data)
        try:
            return await self._waiter
        finally:
            self._waiter = None

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None


@dataclass
class _Window:
    """Shared state of one measured window: which completions count, and the tallies."""

    start_ns: int = 0
    end_ns: int = 0
    measuring: bool = False
    stopping: bool = False
    latencies_ns: list[int] = field(default_factory=list)
    sent: int = 0
    consumed: int = 0
    requests: int = 0
    errors: int = 0
    empty_receives: int = 0
    last_completion_ns: int = 0
    error_samples: list[str] = field(default_factory=list)
    error_kinds: dict[str, int] = field(default_factory=dict)
    # (start, finish) of every acknowledged send, kept only for a window with marks;
    # arrays of int64, not tuples: ~16 bytes per request over a minutes-long window.
    record_acks: bool = False
    ack_starts_ns: array[int] = field(default_factory=lambda: array("q"))
    ack_finishes_ns: array[int] = field(default_factory=lambda: array("q"))

    def counts(self, finished_ns: int) -> bool:
        # Completions inside the window count, wherever they started: a server whose
        # requests take longer than the window (moto at 64 connections) still shows
        # its rate instead of zero.
        return self.measuring and self.start_ns <= finished_ns <= self.end_ns

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < ERROR_SAMPLES_MAX:
            self.error_samples.append(what)
        kind = "".join("#" if c.isdigit() else c for c in what[:ERROR_KIND_CHARS])
        if kind not in self.error_kinds and len(self.error_kinds) >= ERROR_KINDS_MAX:
            kind = "other"
        self.error_kinds[kind] = self.error_kinds.get(kind, 0) + 1


@dataclass(frozen=True)
class _Targets:
    """Where workers connect: one host, its endpoints' ports, and whether workers are
    spread over them (worker i on port i mod n) or all start on the first."""

    host: str
    ports: tuple[int, ...]
    spread: bool = False

    def first_for(self, index: int) -> int:
        return index % len(self.ports) if self.spread else 0


class _Worker:
    """One connection and the loop of one role over it."""

    def __init__(self, spec: dict[str, Any], targets: _Targets, window: _Window,
                 index: int) -> None:
        self.spec = spec
        self.targets = targets
        self.host = targets.host
        self.port_index = targets.first_for(index)
        self.port = targets.ports[self.port_index]
        self.window = window
        self.index = index
        self.conn: Connection | None = None
        self.queue_url: str = spec["queue_url"]
        body = "x" * int(spec.get("body_bytes", 1024))
        self.role: str = spec["role"]
        self.fifo_groups: int = int(spec.get("fifo_groups", 0))
        self.serial = 0
        if self.role in ("send", "paced"):
            self._fixed_call = ("SendMessage", orjson.dumps(
                {"QueueUrl": self.queue_url, "MessageBody": body}))
        elif self.role == "batch":
            self.body = body
            self._fixed_call = ("SendMessageBatch", orjson.dumps({
                "QueueUrl": self.queue_url,
                "Entries": [{"Id": str(i), "MessageBody": body} for i in range(10)],
            }))
        elif self.role == "consume":
            self._fixed_call = ("ReceiveMessage", orjson.dumps({
                "QueueUrl": self.queue_url, "MaxNumberOfMessages": 10,
                "WaitTimeSeconds": int(spec.get("wait_s", 0)),
            }))
        else:
            raise ValueError(f"unknown worker role {self.role!r}")
        self.fixed = build_request(self.host, self.port, *self._fixed_call)

    def _move_on(self) -> None:
        """Use the next endpoint (a no-op with one): the request's Host names it."""
        if len(self.targets.ports) == 1:
            return
        self.port_index = (self.port_index + 1) % len(self.targets.ports)
        self.port = self.targets.ports[self.port_index]
        self.fixed = build_request(self.host, self.port, *self._fixed_call)

    async def _connection(self) -> Connection:
        if self.conn is not None and self.conn.is_open:
            return self.conn
        for _attempt in range(RECONNECT_ATTEMPTS_MAX):
            try:
                self.conn = await Connection.open(self.host, self.port)
                return self.conn
            except OSError as exc:
                self.window.error(f"connect {self.port}: {exc}")
                self._move_on()
                await asyncio.sleep(RECONNECT_PAUSE_S)
        raise ConnectionError("cannot reconnect to the server")

    async def _call(self, data: bytes) -> tuple[int, bytes, int, int]:
        # Started before (re)connecting: a server that closes after every response
        # (moto) pays its TCP handshakes in its latency, as its clients would.
        started = time.perf_counter_ns()
        port = self.port
        conn = await self._connection()
        if self.port != port:
            # Moved to another endpoint while connecting: the request is rebuilt so its
            # Host header names the endpoint it goes to.
            data = _with_host(data, self.host, self.port)
        try:
            status, body = await conn.request(data)
        except ConnectionError as exc:
            self.window.error(str(exc))
            conn.close()
            return 0, b"", started, time.perf_counter_ns()
        return status, body, started, time.perf_counter_ns()

    def _fifo_batch(self) -> bytes:
        entries = []
        for i in range(10):
            self.serial += 1
            entries.append({
                "Id": str(i), "MessageBody": self.body,
                "MessageGroupId": f"g{(self.index * 7919 + self.serial) % self.fifo_groups}",
                "MessageDeduplicationId": f"w{self.index}-{self.serial}",
            })
        return build_request(self.host, self.port, "SendMessageBatch", orjson.dumps(
            {"QueueUrl": self.queue_url, "Entries": entries}))

    async def run(self, budget: list[int] | None = None) -> None:
        """Loop until the window stops; ``budget`` (a one-cell counter) caps messages sent."""
        window = self.window
        period_ns = 0
        next_ns = time.perf_counter_ns()
        if self.role == "paced":
            period_ns = int(1e9 / float(self.spec["rate_per_s"]))
            # Connections of one group evenly staggered over a period: an even offered
            # load, not bursts of all of them at once.
            next_ns += period_ns * (self.index % int(self.spec.get("conns", 1))) \
                // int(self.spec.get("conns", 1))
        try:
            while not window.stopping:
                if budget is not None:
                    if budget[0] <= 0:
                        return
                    budget[0] -= 10 if self.role == "batch" else 1
                if self.role == "consume":
                    if not await self._consume_once():
                        return
                    continue
                if period_ns:
                    next_ns += period_ns
                    delay_ns = next_ns - time.perf_counter_ns()
                    if delay_ns > 0:
                        await asyncio.sleep(delay_ns / 1e9)
                data = self._fifo_batch() if self.fifo_groups else self.fixed
                status, body, started, finished = await self._call(data)
                if status != 200:
                    if status:
                        window.error(f"{status} {body[:300]!r}")
                    if budget is not None:
                        budget[0] += 10 if self.role == "batch" else 1
                    continue
                if self.role == "batch" and batch_failed(body):
                    window.error(f"batch entries failed: {body[:300]!r}")
                    continue
                if window.counts(finished) or budget is not None:
                    # Paced: from the request's scheduled time, so a slow answer that
                    # delays the next request counts against the server too (an
                    # open-loop measure; timing from the send would omit that wait).
                    window.latencies_ns.append(
                        finished - (min(started, next_ns) if period_ns else started))
                    window.sent += 10 if self.role == "batch" else 1
                    window.requests += 1
                    window.last_completion_ns = finished
                    if window.record_acks:
                        window.ack_starts_ns.append(started)
                        window.ack_finishes_ns.append(finished)
        finally:
            if self.conn is not None:
                self.conn.close()

    async def _consume_once(self) -> bool:
        """One receive (+ delete batch); False once the queue is drained and that ends us."""
        window = self.window
        status, body, started, finished = await self._call(self.fixed)
        if status != 200:
            if status:
                window.error(f"{status} {body[:300]!r}")
            return True
        if window.counts(finished):
            window.latencies_ns.append(finished - started)
            window.requests += 1
        messages = orjson.loads(body).get("Messages") or []
        if not messages:
            window.empty_receives += 1
            return not self.spec.get("stop_when_empty", False)
        delete = build_request(self.host, self.port, "DeleteMessageBatch", orjson.dumps({
            "QueueUrl": self.queue_url,
            "Entries": [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                        for i, m in enumerate(messages)],
        }))
        status, body, started, finished = await self._call(delete)
        if status != 200 or batch_failed(body):
            if status:
                window.error(f"delete {status} {body[:300]!r}")
            return True
        if window.counts(finished):
            window.latencies_ns.append(finished - started)
            window.requests += 1
            window.consumed += len(messages)
            window.last_completion_ns = finished
        return True


def _with_host(data: bytes, host: str, port: int) -> bytes:
    """``data`` (a request ``build_request`` made) with its Host header naming
    ``host:port``."""
    head, sep, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    lines = [f"Host: {host}:{port}".encode("ascii") if line.startswith(b"Host: ") else line
             for line in lines]
    return b"\r\n".join(lines) + sep + body


async def _prefill(spec: dict[str, Any], targets: _Targets) -> dict[str, Any]:
    """Fill a queue with batch sends until ``count`` messages or ``budget_s`` runs out."""
    window = _Window(measuring=False)
    budget = [int(spec["count"])]
    workers = [_Worker({"role": "batch", "queue_url": spec["queue_url"],
                        "body_bytes": spec.get("body_bytes", 1024)}, targets, window, i)
               for i in range(int(spec.get("conns", 32)))]
    started = time.perf_counter()
    tasks = [asyncio.ensure_future(w.run(budget)) for w in workers]
    _done, pending = await asyncio.wait(tasks, timeout=float(spec["budget_s"]))
    window.stopping = True
    if pending:
        await asyncio.wait(pending, timeout=30.0)
        for task in pending:
            task.cancel()
    for worker in workers:
        if worker.conn is not None:
            worker.conn.close()
    return {"kind": "prefill", "sent": window.sent, "errors": window.errors,
            "elapsed_s": time.perf_counter() - started, "error_samples": window.error_samples}


def _rusage_cpu_ns() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return int((usage.ru_utime + usage.ru_stime) * 1e9)


def _machine_busy_ns() -> int | None:
    try:
        with open("/proc/stat", encoding="ascii") as fh:
            return machine_busy_ns(fh.read())
    except (OSError, ValueError):
        return None  # not Linux: "other CPU" is not reported


def _sessions(roots: dict[str, int]) -> dict[str, list[int]]:
    """Each named process with every live process of its session."""
    return {name: session_pids(pid) for name, pid in roots.items()}


def _cpu_by_name(pids: dict[str, list[int]]) -> dict[str, int]:
    return {name: session_cpu_ns(group) for name, group in pids.items()}


def _main_cpu_by_name(roots: dict[str, int]) -> dict[str, int]:
    return {name: main_thread_cpu_ns([pid]) for name, pid in roots.items()}


def _told() -> asyncio.Future[str]:
    """The orchestrator's second stdin line ('' at end of file), read on a daemon
    thread: a blocked read must never keep this process from exiting."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[str] = loop.create_future()

    def deliver(line: str) -> None:
        if not future.done():  # the window may have ended on its own bound already
            future.set_result(line)

    def read() -> None:
        loop.call_soon_threadsafe(deliver, sys.stdin.readline())

    threading.Thread(target=read, name="told", daemon=True).start()
    return future


async def _load(spec: dict[str, Any], targets: _Targets, server: dict[str, int],
                side: dict[str, int]) -> dict[str, Any]:
    """Run workers through a warm-up and one measured window; report what the window saw.

    ``server`` names the server's processes (CPU and RSS are summed over them); ``side``
    names processes measured beside it but not counted as the server (a cluster's
    etcd). With ``until_told`` the window lasts until the orchestrator's second stdin
    line, whose ``marks_ns`` are answered with the delay to the first acknowledged
    request sent at or after each."""
    until_told = bool(spec.get("until_told"))
    window = _Window(record_acks=until_told)
    workers: list[_Worker] = []
    for group in spec["workers"]:
        for _ in range(int(group["conns"])):
            workers.append(_Worker(group, targets, window, len(workers)))
    told = _told() if until_told else None
    tasks = [asyncio.ensure_future(w.run()) for w in workers]
    await asyncio.sleep(float(spec.get("warmup_s", 0.0)))
    pids_start = _sessions({**server, **side})
    rss_before = sum(session_rss_bytes(pids_start[name]) for name in server)
    cpu_start = _cpu_by_name(pids_start)
    main_start = _main_cpu_by_name(server)
    own_cpu_start = _rusage_cpu_ns()
    busy_start = _machine_busy_ns()
    window.start_ns = time.perf_counter_ns()
    duration_s = TOLD_WINDOW_MAX_S if told is not None else float(spec["duration_s"])
    window.end_ns = window.start_ns + int(duration_s * 1e9)
    window.measuring = True
    marks_ns: list[int] = []
    if told is not None:
        with contextlib.suppress(TimeoutError):
            line = await asyncio.wait_for(told, duration_s)
            marks_ns = [int(m) for m in (json.loads(line) if line.strip() else {}).get(
                "marks_ns", [])]
        window.end_ns = time.perf_counter_ns()
    else:
        live = [t for t in tasks if not t.done()]
        if live:
            await asyncio.wait(live, timeout=duration_s)
    now_ns = time.perf_counter_ns()
    all_done = all(t.done() for t in tasks)
    pids_now = _sessions({**server, **side})
    pids_end = {name: sorted(set(pids_start[name]) | set(pids_now[name])) for name in pids_now}
    cpu_end = _cpu_by_name(pids_end)
    main_end = _main_cpu_by_name(server)
    cpu_ns = {name: cpu_end[name] - cpu_start[name] for name in cpu_end}
    server_cpu_ns = sum(cpu_ns[name] for name in server)
    side_cpu_ns = sum(cpu_ns[name] for name in side)
    own_cpu_ns = _rusage_cpu_ns() - own_cpu_start
    busy_end = _machine_busy_ns()
    # Everything else the machine ran meanwhile (other people's jobs on a shared box):
    # a row measured while this was high is not comparable with one measured without.
    other_cpu_ns = (None if busy_start is None or busy_end is None else
                    max(0, busy_end - busy_start - server_cpu_ns - side_cpu_ns - own_cpu_ns))
    rss_after = sum(session_rss_bytes(pids_end[name]) for name in server)
    window.stopping = True
    window.measuring = False
    # A drain that ran dry ends at its last delete; otherwise the window is the whole span.
    end_ns = window.last_completion_ns if all_done and window.last_completion_ns else min(
        now_ns, window.end_ns)
    elapsed_s = max(1e-9, (end_ns - window.start_ns) / 1e9)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            window.error(f"worker crashed: {task.exception()!r}")
    latencies = sorted(window.latencies_ns)
    messages = window.consumed if spec.get("count") == "consumed" else window.sent
    result: dict[str, Any] = {
        "kind": "load",
        "messages": messages,
        "sent": window.sent,
        "consumed": window.consumed,
        "requests": window.requests,
        "errors": window.errors,
        "empty_receives": window.empty_receives,
        "elapsed_s": elapsed_s,
        "msgs_per_s": messages / elapsed_s,
        "p50_ms": percentile(latencies, 0.50) / 1e6 if latencies else None,
        "p99_ms": percentile(latencies, 0.99) / 1e6 if latencies else None,
        "server_cpu_s": server_cpu_ns / 1e9,
        "server_cpu_pct": 100.0 * server_cpu_ns / 1e9 / elapsed_s,
        "server_cpu_us_per_msg": server_cpu_ns / 1e3 / messages if messages else None,
        "cpu_pct_by_process": {name: 100.0 * ns / 1e9 / elapsed_s
                               for name, ns in cpu_ns.items()},
        # Each server process's main thread (the event loop) per message; the rest of
        # its CPU is its other threads (the SQLite writer).
        "main_thread_us_per_msg": ({name: (main_end[name] - main_start[name]) / 1e3 / messages
                                    for name in server} if messages else None),
        "side_cpu_pct": 100.0 * side_cpu_ns / 1e9 / elapsed_s if side else None,
        "side_cpu_us_per_msg": (side_cpu_ns / 1e3 / messages if side and messages
                                else None),
        "loadgen_cpu_pct": 100.0 * own_cpu_ns / 1e9 / elapsed_s,
        "other_cpu_pct": (None if other_cpu_ns is None
                          else 100.0 * other_cpu_ns / 1e9 / elapsed_s),
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "error_samples": window.error_samples,
        "error_kinds": window.error_kinds,
    }
    if told is not None:
        delays = first_ack_delays_ns(window.ack_starts_ns, window.ack_finishes_ns, marks_ns)
        result["first_ack_ms"] = [None if d is None else d / 1e6 for d in delays]
        # After each recovery, until the next mark (or the window's end): any second outage.
        ends = [*marks_ns[1:], window.end_ns]
        gaps_ms: list[float | None] = []
        for mark, delay, end in zip(marks_ns, delays, ends, strict=True):
            gap = (None if delay is None else
                   longest_gaps_ns(window.ack_finishes_ns, [(mark + delay, end)])[0])
            gaps_ms.append(None if gap is None else gap / 1e6)
        result["longest_gap_after_ms"] = gaps_ms
    return result


def _targets(spec: dict[str, Any]) -> _Targets:
    ports = tuple(int(p) for p in spec.get("ports") or [spec["port"]])
    return _Targets(spec["host"], ports, bool(spec.get("spread")))


async def run_spec(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Run every phase of ``spec`` in order; one result per phase."""
    targets = _targets(spec)
    server = {str(k): int(v) for k, v in spec["server_pids"].items()}
    side = {str(k): int(v) for k, v in spec.get("side_pids", {}).items()}
    results: list[dict[str, Any]] = []
    for phase in spec["phases"]:
        if phase["kind"] == "prefill":
            results.append(await _prefill(phase, targets))
        elif phase["kind"] == "load":
            results.append(await _load(phase, targets, server, side))
        elif phase["kind"] == "rss":
            results.append({"kind": "rss", "rss_bytes": sum(
                session_rss_bytes(pids) for pids in _sessions(server).values())})
        else:
            raise ValueError(f"unknown phase kind {phase['kind']!r}")
    return results


def main() -> int:
    # One line, not the whole of stdin: a window that runs until told reads a second.
    spec = json.loads(sys.stdin.readline())
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        results = asyncio.run(run_spec(spec))
    else:
        results = uvloop.run(run_spec(spec))
    sys.stdout.write(json.dumps(results))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
