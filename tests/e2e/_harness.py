"""Test harness for end-to-end tests: the real server as a subprocess, and SDK clients.

What belongs here: starting/stopping/crashing a ``ferrymq serve`` process, building
boto3 clients for either wire protocol, and small polling helpers. No assertions about
SQS behaviour live here; those are the tests.
"""

from __future__ import annotations

import collections
import http.client
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import boto3
import botocore.session
from botocore.config import Config

__all__ = [
    "PROTOCOLS",
    "approximate_counts",
    "error_of",
    "receive",
    "receive_until",
    "QUERY_DATA_DIR",
    "ServerProcess",
    "free_port",
    "http_request",
    "make_client",
    "stop_leftovers",
    "wait_until",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
# Made by `make query-model`: botocore 1.34.89's SQS model, the last that speaks Query.
QUERY_DATA_DIR = REPO_ROOT / ".venv" / "query-data"
PROTOCOLS = ("json", "query")

LISTENING_MARKER = "ferrymq listening on http://"
# Lines of server output kept for error messages; older ones are dropped because a
# long session would otherwise grow this without limit.
OUTPUT_LINES_MAX = 400

T = TypeVar("T")


def free_port() -> int:
    """A loopback port that was free a moment ago (the usual bind-to-0 race is accepted)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ServerStartError(RuntimeError):
    pass


# Every server process this harness started in this session (a few hundred Popen
# objects at most), so that stop_leftovers finds what a test that failed before its own
# clean-up left running.
_STARTED: set[subprocess.Popen[bytes]] = set()


def stop_leftovers() -> list[str]:
    """SIGKILL every server process still running that this harness started; their
    command lines (empty when every test stopped what it started)."""
    left = []
    for proc in list(_STARTED):
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            left.append(" ".join(map(str, proc.args)))
        _STARTED.discard(proc)
    return left


class ServerProcess:
    """One ``ferrymq serve`` subprocess on loopback with its own data directory.

    ``restart()`` and ``kill9()`` keep the data directory and port, so queue URLs
    handed out before a crash stay valid after it. With ``listen_socket`` (a listening
    socket this process keeps open) every start serves on that same socket through
    ``--listen-fd``, as systemd's socket activation does: connections made while the
    server restarts wait in the socket's backlog.
    """

    def __init__(
        self,
        data_dir: Path,
        extra_args: Sequence[str] = (),
        *,
        port: int | None = None,
        startup_timeout_s: float = 20.0,
        stop_timeout_s: float = 10.0,
        listen_socket: socket.socket | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.extra_args = list(extra_args)
        self.listen_socket = listen_socket
        if listen_socket is not None:
            port = listen_socket.getsockname()[1]
        self.port = port if port is not None else free_port()
        self.startup_timeout_s = startup_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES_MAX)
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server not started"
        return self.proc.pid

    def command(self) -> list[str]:
        if self.listen_socket is not None:
            where = ["--listen-fd", str(self.listen_socket.fileno())]
        else:
            where = ["--host", "127.0.0.1", "--port", str(self.port)]
        return [
            sys.executable, "-m", "ferrymq", "serve",
            *where,
            "--data-dir", str(self.data_dir),
            *self.extra_args,
        ]

    def output(self) -> str:
        return "\n".join(self._output)

    def wait_for_output(self, text: str, *, timeout_s: float = 10) -> str:
        """The output once it holds ``text``. The server writes a line before it
        answers the request that caused it, but this harness's reader thread may not
        have taken it from the pipe yet when the answer arrives."""
        return wait_until(lambda: text in self.output() and self.output(),
                          timeout_s=timeout_s, what=f"{text!r} in the server's output")

    def _drain(self, stream: Any) -> None:
        # Keeps reading until EOF so a chatty server never blocks on a full pipe.
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._output.append(line)
            if LISTENING_MARKER in line:
                self._ready.set()
        stream.close()

    def start(self) -> ServerProcess:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._ready.clear()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(REPO_ROOT),
            pass_fds=() if self.listen_socket is None else (self.listen_socket.fileno(),),
        )
        _STARTED.add(self.proc)
        self._reader = threading.Thread(
            target=self._drain, args=(self.proc.stdout,), name=f"ferrymq-{self.port}-out",
            daemon=True,
        )
        self._reader.start()
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._ready.wait(0.05):
            if self.proc.poll() is not None:
                self._reader.join(2)
                raise ServerStartError(
                    f"ferrymq exited with {self.proc.returncode} before listening:\n"
                    f"{self.output()}"
                )
            if time.monotonic() > deadline:
                self._kill_now()
                raise ServerStartError(
                    f"ferrymq did not print {LISTENING_MARKER!r} within "
                    f"{self.startup_timeout_s} s; output:\n{self.output()}"
                )
        return self

    def _kill_now(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(self.stop_timeout_s)
        if self._reader is not None:
            self._reader.join(2)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited in time. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self._kill_now()
        if self._reader is not None:
            self._reader.join(2)
        return self.proc.returncode

    def kill9(self) -> None:
        """Crash the server: no shutdown code runs."""
        assert self.proc is not None
        self._kill_now()

    def restart(self) -> ServerProcess:
        """Start again on the same data directory and port (after stop or kill9)."""
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        return self.start()

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


_SESSION_LOCK = threading.Lock()


def make_client(endpoint_url: str, protocol: str, **config: Any) -> Any:
    """A boto3 SQS client speaking ``protocol`` ("json" or "query") to ``endpoint_url``."""
    assert protocol in PROTOCOLS, protocol
    with _SESSION_LOCK:
        core = botocore.session.get_session()
        if protocol == "query":
            model = QUERY_DATA_DIR / "sqs" / "2012-11-05" / "service-2.json"
            if not model.exists():
                raise RuntimeError(f"{model} missing: run `make query-model`")
            core.get_component("data_loader").search_paths.insert(0, str(QUERY_DATA_DIR))
        options: dict[str, Any] = {
            # One attempt only: a retry would hide server errors and duplicate sends.
            "retries": {"total_max_attempts": 1, "mode": "standard"},
            "connect_timeout": 5,
            # Longer than the longest long poll (20 s) so a wait is never cut short.
            "read_timeout": 40,
            # Client-side validation would stop bad input before the server sees it.
            "parameter_validation": False,
        }
        options.update(config)
        client = boto3.session.Session(botocore_session=core).client(
            "sqs",
            region_name="us-east-1",
            endpoint_url=endpoint_url,
            aws_access_key_id="AKIDFERRYTEST",
            aws_secret_access_key="ferry-test-secret",
            config=Config(**options),
        )
    actual = client.meta.service_model.protocol
    assert actual == protocol, f"wanted a {protocol} client, botocore built a {actual} one"
    return client


def http_request(server: ServerProcess, method: str, path: str, body: bytes = b"",
                 headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP request to ``server``: (status, headers with lower-case names, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        conn.close()


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout_s: float,
    interval_s: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def error_of(exc: BaseException) -> tuple[str, str, int]:
    """(Error.Code, Error.Message, HTTP status) of a botocore ClientError."""
    response = exc.response  # type: ignore[attr-defined]
    return (
        response["Error"].get("Code", ""),
        response["Error"].get("Message", ""),
        response["ResponseMetadata"]["HTTPStatusCode"],
    )


def receive(sqs: Any, queue_url: str, **kwargs: Any) -> list[dict[str, Any]]:
    """ReceiveMessage returning the list (an empty receive has no Messages key)."""
    kwargs.setdefault("MaxNumberOfMessages", 10)
    response = sqs.receive_message(QueueUrl=queue_url, **kwargs)
    messages: list[dict[str, Any]] = response.get("Messages", [])
    return messages


def receive_until(
    sqs: Any, queue_url: str, count: int, *, timeout_s: float = 10.0, **kwargs: Any
) -> list[dict[str, Any]]:
    """Receive repeatedly until ``count`` messages arrived (short polls may sample)."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"received {len(got)} of {count} messages in {timeout_s} s")
        got.extend(receive(sqs, queue_url, WaitTimeSeconds=1, **kwargs))
    return got


def approximate_counts(sqs: Any, queue_url: str) -> tuple[int, int, int]:
    """(visible, in flight, delayed) from GetQueueAttributes."""
    attrs = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=[
            "ApproximateNumberOfMessages",
            "ApproximateNumberOfMessagesNotVisible",
            "ApproximateNumberOfMessagesDelayed",
        ],
    )["Attributes"]
    return (
        int(attrs["ApproximateNumberOfMessages"]),
        int(attrs["ApproximateNumberOfMessagesNotVisible"]),
        int(attrs["ApproximateNumberOfMessagesDelayed"]),
    )
