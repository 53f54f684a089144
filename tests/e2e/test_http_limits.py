"""End-to-end: slow, idle and surplus connections against a real ``ferrymq serve`` must
not lock SDK clients out, and slow ones are closed after their deadlines.

The connections are raw sockets (an SDK never dribbles); the legitimate traffic is
boto3 in both protocols.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from ferrymq._gateway._http import _FDS_RESERVED

from ._harness import ServerProcess, make_client

# The server's soft file-descriptor limit in the first test: low enough that the
# connections below would exhaust it without a connection cap (which the server fits
# to _FDS_SOFT_MAX - _FDS_RESERVED).
_FDS_SOFT_MAX = 256
# More connections than _FDS_SOFT_MAX, half idle and half with a request head begun.
_IDLE_CONNECTIONS = 180
_SLOW_HEAD_CONNECTIONS = 180
# Client timeouts well below botocore's 60 s: a client stuck in the listen backlog fails
# the test quickly instead of hanging it.
_CLIENT_TIMEOUT_S = 5
# Starts the server with a lower soft RLIMIT_NOFILE (argv: limit, then the command).
_WITH_FD_LIMIT = (
    "import os, resource, sys\n"
    "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[1]), hard))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


class _LowFdServer(ServerProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-c", _WITH_FD_LIMIT, str(_FDS_SOFT_MAX), *super().command()]


@pytest.fixture(scope="module")
def low_fd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = _LowFdServer(tmp_path_factory.mktemp("low-fd-data"))
    proc.start()
    yield proc
    proc.stop()


def _client(server: ServerProcess, protocol: str) -> Any:
    return make_client(server.url, protocol, connect_timeout=_CLIENT_TIMEOUT_S,
                       read_timeout=_CLIENT_TIMEOUT_S)


def _connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=_CLIENT_TIMEOUT_S)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _closed_by_server(sock: socket.socket, timeout_s: float) -> bytes | None:
    """What the server sent before closing ``sock`` within ``timeout_s``; None if it
    is still open then."""
    received = b""
    deadline = time.monotonic() + timeout_s
    while True:
        left_s = deadline - time.monotonic()
        if left_s <= 0:
            return None
        sock.settimeout(left_s)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return None
        except ConnectionResetError:
            return received
        if not data:
            return received
        received += data


def _closed_already(sock: socket.socket) -> bytes | None:
    """What the server sent before closing ``sock``, if it has closed it; else None."""
    sock.setblocking(False)
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return None
    except ConnectionResetError:
        return b""
    finally:
        sock.setblocking(True)
    if not data:
        return b""
    rest = _closed_by_server(sock, 1.0)  # an answer, then (at once) the FIN
    return None if rest is None else data + rest


def _sdk_round_trip(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="through the crowd")
    messages = sqs.receive_message(QueueUrl=url, WaitTimeSeconds=1).get("Messages", [])
    assert [m["Body"] for m in messages] == ["through the crowd"]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=messages[0]["ReceiptHandle"])


def test_a_crowd_of_idle_and_slow_connections_does_not_lock_out_sdk_clients(
        low_fd_server: ServerProcess, protocol: str, queue_name: str) -> None:
    sqs = _client(low_fd_server, protocol)
    held: list[socket.socket] = []
    try:
        for _ in range(_IDLE_CONNECTIONS):
            held.append(_connect(low_fd_server))
        for _ in range(_SLOW_HEAD_CONNECTIONS):
            sock = _connect(low_fd_server)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: slow\r\nX-Dribble: ")
            held.append(sock)
        # Past the head-eviction age (1 s), so a newcomer may take a slow head's place.
        time.sleep(1.5)
        _sdk_round_trip(sqs, queue_name)
        # The server kept itself under its descriptor limit by closing idle
        # connections, then slow heads (with a 503), rather than failing to accept.
        closed = [_closed_already(sock) for sock in held]
        still_open = sum(answer is None for answer in closed)
        assert still_open < _FDS_SOFT_MAX - _FDS_RESERVED  # the SDK's has one place
        slow_answers = [a for a in closed[_IDLE_CONNECTIONS:] if a is not None]
        assert all(a.startswith(b"HTTP/1.1 503 ") for a in slow_answers), slow_answers[:1]
    finally:
        for sock in held:
            sock.close()
    # And the server is healthy afterwards.
    _sdk_round_trip(sqs, queue_name + "-after")


# ---- deadlines (need the CLI's HTTP limit flags) ----------------------------------------

_HEAD_TIMEOUT_S = 1
_BODY_TIMEOUT_S = 1
_IDLE_TIMEOUT_S = 2
# The server enforces deadlines once a second, so each holds to within a second.
_SWEEP_SLACK_S = 1.5


@pytest.fixture(scope="module")
def deadline_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("deadline-data"), (
        "--head-timeout-seconds", str(_HEAD_TIMEOUT_S),
        "--body-timeout-seconds", str(_BODY_TIMEOUT_S),
        "--idle-timeout-seconds", str(_IDLE_TIMEOUT_S),
        "--connections-max", "100",
    ))
    proc.start()
    yield proc
    proc.stop()


class _Dribbler(threading.Thread):
    """Sends one byte every ``interval_s`` on each socket until told to stop."""

    def __init__(self, socks: list[socket.socket], interval_s: float) -> None:
        super().__init__(name="dribbler", daemon=True)
        self.socks = list(socks)
        self.interval_s = interval_s
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.interval_s):
            for sock in list(self.socks):
                try:
                    sock.send(b"a")
                except OSError:
                    self.socks.remove(sock)  # closed by the server


def test_slow_and_idle_connections_are_closed_after_their_deadlines(
        deadline_server: ServerProcess, protocol: str, queue_name: str) -> None:
    sqs = _client(deadline_server, protocol)
    body_head = (b"POST / HTTP/1.1\r\nHost: slow\r\nContent-Type: application/x-amz-json-1.0\r\n"
                 b"X-Amz-Target: AmazonSQS.ListQueues\r\nContent-Length: 100000\r\n\r\n")
    heads = [_connect(deadline_server) for _ in range(20)]
    bodies = [_connect(deadline_server) for _ in range(10)]
    idle = [_connect(deadline_server) for _ in range(20)]
    dribbler = _Dribbler([*heads, *bodies], 0.2)
    try:
        begun = time.monotonic()
        for sock in heads:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: slow\r\nX-Dribble: ")
        for sock in bodies:
            sock.sendall(body_head)
        dribbler.start()
        # Served all along, from a pool of its own.
        _sdk_round_trip(sqs, queue_name)
        for sock in [*heads, *bodies]:
            answer = _closed_by_server(sock, _BODY_TIMEOUT_S + _SWEEP_SLACK_S + 1)
            assert answer is not None, "a dribbling connection outlived its deadline"
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:80]
            assert b"\r\nConnection: close\r\n" in answer
        for sock in idle:
            assert _closed_by_server(sock, _IDLE_TIMEOUT_S + _SWEEP_SLACK_S) == b""
        elapsed_s = time.monotonic() - begun
        assert elapsed_s < _IDLE_TIMEOUT_S + _SWEEP_SLACK_S + 1
        # The SDK's own pool went idle meanwhile too; it reconnects without a failure.
        _sdk_round_trip(sqs, queue_name + "-again")
    finally:
        dribbler.done.set()
        dribbler.join(5)
        for sock in [*heads, *bodies, *idle]:
            sock.close()
