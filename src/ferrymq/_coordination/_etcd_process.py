"""etcd as child processes on loopback: start a 1- or 3-member cluster, stop and restart
members by PID, find the leader.

What belongs here: spawning and supervising the ``etcd`` binary (Debian's
``etcd-server``, 3.4) for tests, the fault tests and ``ferrymq cluster up``. Nothing in
here speaks gRPC: health and leadership are read over etcd's HTTP endpoints (``/health``
and the JSON gateway's ``/v3/maintenance/status``) with the standard library, so this
module works without the client library installed. Every process is started with its
own free ports and data directory and is stopped by its PID, never by name.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ETCD_INSTALL_HINT",
    "ETCD_TXN_OPS_MAX",
    "EtcdCluster",
    "EtcdMember",
    "EtcdProcessError",
    "etcd_binary",
    "etcd_version",
    "member_argv",
    "member_environment",
    "member_healthy",
]

ETCD_INSTALL_HINT = (
    "etcd is not installed: as root run 'apt-get install -y etcd-server' "
    "(Debian/Ubuntu; `make test` does this), or put an etcd 3.4+ binary on PATH"
)

# Waiting for a member to answer /health: a fresh single member is healthy in ~0.3 s
# here, a 3-member cluster needs one election (election timeout 1 s by default). 20 s
# leaves room for a loaded 2-core machine without letting a broken start hang a test.
_HEALTHY_WAIT_S = 20.0
# How often the wait above polls; each poll is one loopback HTTP request.
_POLL_INTERVAL_S = 0.05
# One HTTP probe must not hang on a member that accepted the connection and stalled.
_PROBE_TIMEOUT_S = 1.0
# SIGTERM lets etcd close its WAL cleanly; 10 s is generous for a loopback member.
_TERM_WAIT_S = 10.0
# Port collisions between picking a free port and etcd binding it are rare but real on a
# shared machine; a new cluster is retried with fresh ports this many times.
_START_ATTEMPTS_MAX = 3
# How much of a member's log an error message quotes.
_LOG_TAIL_BYTES = 2000


class EtcdProcessError(RuntimeError):
    """etcd could not be started, did not become healthy, or is not installed."""


def etcd_binary() -> str | None:
    """The ``etcd`` executable on PATH (``$FERRYMQ_ETCD`` overrides), or None."""
    override = os.environ.get("FERRYMQ_ETCD")
    if override:
        return override if os.access(override, os.X_OK) else None
    return shutil.which("etcd")


def etcd_version(binary: str | None = None) -> str:
    """``etcd --version``'s version number, e.g. ``3.4.23``."""
    exe = binary or etcd_binary()
    if exe is None:
        raise EtcdProcessError(ETCD_INSTALL_HINT)
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False,
                          env=_etcd_env(), timeout=_TERM_WAIT_S)
    for line in done.stdout.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    raise EtcdProcessError(f"unexpected `etcd --version` output: {done.stdout!r}")


def _etcd_env() -> dict[str, str]:
    env = dict(os.environ)
    # etcd refuses to start on architectures it does not officially support (arm64 in
    # 3.4, among others) unless this names the arch; amd64 ignores it.
    machine = os.uname().machine
    arch = {"aarch64": "arm64", "x86_64": "amd64"}.get(machine, machine)
    if arch != "amd64":
        env.setdefault("ETCD_UNSUPPORTED_ARCH", arch)
    # Never inherit a stray ETCD_* configuration (etcd reads its flags from env too).
    for name in list(env):
        if name.startswith("ETCD_") and name != "ETCD_UNSUPPORTED_ARCH":
            del env[name]
    return env


def _free_ports(count: int) -> list[int]:
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@dataclass(frozen=True, slots=True)
class EtcdMember:
    """One member's fixed identity: its name, ports and data directory."""

    name: str
    client_port: int
    peer_port: int
    data_dir: Path

    @property
    def endpoint(self) -> str:
        """``host:port`` for gRPC clients."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    """A 1- or 3-member etcd cluster of child processes under ``base_dir``.

    ``start()`` launches every member and waits until each answers ``/health``;
    ``stop_member`` / ``start_member`` take one member down (SIGTERM, or SIGKILL for a
    crash) and bring it back on the same data directory and ports; ``leader()`` names
    the member Raft elected; ``stop()`` stops everything it started, by PID. Use it as a
    context manager so a failing test cannot leak a process.

    ``heartbeat_ms`` and ``election_timeout_ms`` are etcd's Raft timings (defaults are
    etcd's own). They also fix etcd's minimum lease TTL: leases shorter than
    ``ceil(1.5 * election_timeout)`` are silently lengthened to it (2 s by default).
    """

    def __init__(
        self,
        base_dir: Path,
        size: int = 1,
        *,
        heartbeat_ms: int = 100,
        election_timeout_ms: int = 1000,
        binary: str | None = None,
    ) -> None:
        if size not in (1, 3, 5):
            raise ValueError(f"an etcd cluster here has 1, 3 or 5 members, not {size}")
        exe = binary or etcd_binary()
        if exe is None:
            raise EtcdProcessError(ETCD_INSTALL_HINT)
        self._binary = exe
        self._base_dir = Path(base_dir)
        self._size = size
        self._heartbeat_ms = heartbeat_ms
        self._election_timeout_ms = election_timeout_ms
        self._token = f"ferrymq-{uuid.uuid4().hex[:12]}"
        self._members: list[EtcdMember] = []
        self._procs: dict[str, subprocess.Popen[bytes]] = {}

    # -- identity -----------------------------------------------------------------

    @property
    def members(self) -> Sequence[EtcdMember]:
        return tuple(self._members)

    @property
    def endpoints(self) -> list[str]:
        """Every member's ``host:port`` (running or not), in member order."""
        return [m.endpoint for m in self._members]

    def member(self, name: str) -> EtcdMember:
        for m in self._members:
            if m.name == name:
                return m
        raise KeyError(name)

    def pid(self, name: str) -> int | None:
        """The PID of a running member, None when it is stopped."""
        proc = self._procs.get(name)
        return proc.pid if proc is not None and proc.poll() is None else None

    def running(self) -> list[str]:
        return [m.name for m in self._members if self.pid(m.name) is not None]

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> None:
        """Create and start every member; return once each one is healthy."""
        if self._members:
            raise EtcdProcessError("this cluster was already started")
        last: EtcdProcessError | None = None
        for attempt in range(_START_ATTEMPTS_MAX):
            ports = _free_ports(2 * self._size)
            self._members = [
                EtcdMember(
                    name=f"etcd{i}",
                    client_port=ports[2 * i],
                    peer_port=ports[2 * i + 1],
                    data_dir=self._base_dir / f"attempt{attempt}" / f"etcd{i}",
                )
                for i in range(self._size)
            ]
            try:
                for m in self._members:
                    self._spawn(m, initial_state="new")
                for m in self._members:
                    self._wait_healthy(m)
                return
            except EtcdProcessError as exc:
                last = exc
                self.stop()
                self._members = []
        raise EtcdProcessError(f"etcd did not start in {_START_ATTEMPTS_MAX} attempts: {last}")

    def start_member(self, name: str, *, wait: bool = True) -> int:
        """Restart a stopped member on its data directory; return its PID.

        With ``wait`` it returns once the member is healthy, which needs a quorum."""
        m = self.member(name)
        if self.pid(name) is not None:
            raise EtcdProcessError(f"{name} is already running")
        self._spawn(m, initial_state="existing")
        if wait:
            self._wait_healthy(m)
        pid = self.pid(name)
        if pid is None:
            raise EtcdProcessError(f"{name} exited right after its restart")
        return pid

    def stop_member(self, name: str, *, kill: bool = False) -> None:
        """Stop one member by its PID: SIGTERM (then SIGKILL after a grace), or SIGKILL
        right away with ``kill`` (a crash)."""
        proc = self._procs.pop(name, None)
        if proc is None:
            return
        _stop_process(proc, kill=kill)

    def stop(self) -> None:
        """Stop every member this object started (by PID). Idempotent."""
        for name in list(self._procs):
            self.stop_member(name, kill=False)

    def __enter__(self) -> EtcdCluster:
        if not self._members:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation --------------------------------------------------------------

    def is_healthy(self, name: str) -> bool:
        m = self.member(name)
        if self.pid(name) is None:
            return False
        try:
            body = _http(m.client_url + "/health", None)
        except OSError:
            return False
        return bool(body.get("health") in ("true", True))

    def status(self, name: str) -> dict[str, object]:
        """The member's ``/v3/maintenance/status`` answer, parsed."""
        return _http(self.member(name).client_url + "/v3/maintenance/status", {})

    def leader(self) -> str:
        """The name of the member that is Raft leader now (asked of the running
        members; raises when none knows a leader, e.g. without quorum)."""
        ids: dict[str, str] = {}
        leaders: set[str] = set()
        for name in self.running():
            try:
                status = self.status(name)
            except OSError:
                continue
            header = status.get("header")
            if isinstance(header, dict):
                ids[str(header.get("member_id"))] = name
            leader_id = str(status.get("leader", "0"))
            if leader_id != "0":
                leaders.add(leader_id)
        for leader_id in leaders:
            if leader_id in ids:
                return ids[leader_id]
        raise EtcdProcessError(f"no running member reports a leader it can name ({leaders})")

    def wait_leader(self, timeout_s: float = _HEALTHY_WAIT_S) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return self.leader()
            except EtcdProcessError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(_POLL_INTERVAL_S)

    def log_tail(self, name: str) -> str:
        path = self._log_path(self.member(name))
        try:
            with open(path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - _LOG_TAIL_BYTES))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # -- internals ----------------------------------------------------------------

    def _log_path(self, m: EtcdMember) -> Path:
        return m.data_dir.parent / f"{m.name}.log"

    def _spawn(self, m: EtcdMember, *, initial_state: str) -> None:
        m.data_dir.parent.mkdir(parents=True, exist_ok=True)
        initial_cluster = ",".join(f"{x.name}={x.peer_url}" for x in self._members)
        argv = [
            self._binary,
            "--name", m.name,
            "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url,
            "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url,
            "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", initial_state,
            "--initial-cluster-token", self._token,
            "--heartbeat-interval", str(self._heartbeat_ms),
            "--election-timeout", str(self._election_timeout_ms),
            "--logger", "zap",
            "--log-outputs", "stderr",
            "--log-level", "warn",
        ]
        log = open(self._log_path(m), "ab")  # the child keeps its own copy of the fd
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=_etcd_env(),
                start_new_session=True,  # a Ctrl-C in the terminal is ours to forward
            )
        finally:
            log.close()
        self._procs[m.name] = proc

    def _wait_healthy(self, m: EtcdMember) -> None:
        deadline = time.monotonic() + _HEALTHY_WAIT_S
        while not self.is_healthy(m.name):
            proc = self._procs.get(m.name)
            if proc is None or proc.poll() is not None:
                raise EtcdProcessError(f"{m.name} exited during start-up:\n{self.log_tail(m.name)}")
            if time.monotonic() > deadline:
                raise EtcdProcessError(
                    f"{m.name} not healthy after {_HEALTHY_WAIT_S} s:\n{self.log_tail(m.name)}")
            time.sleep(_POLL_INTERVAL_S)


def _stop_process(proc: subprocess.Popen[bytes], *, kill: bool) -> None:
    if proc.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
    try:
        proc.wait(timeout=_TERM_WAIT_S)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=_TERM_WAIT_S)


def _http(url: str, body: dict[str, object] | None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=_PROBE_TIMEOUT_S) as resp:
            parsed = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise OSError(f"{url}: HTTP {exc.code}") from exc
    except (urllib.error.URLError, TimeoutError, ValueError) as exc:
        raise OSError(f"{url}: {exc}") from exc
    if not isinstance(parsed, dict):
        raise OSError(f"{url}: not a JSON object")
    return parsed


# -- members that outlive their parent (``ferrymq cluster up``) ------------------------
#
# ``EtcdCluster`` keeps its members as child processes of the object that started them.
# ``ferrymq cluster up`` instead starts members that must outlive the command, records
# them in a state file and finds them again by PID; these functions are what it needs
# from this module: the command line a member runs with, the environment, and probes.


# See member_argv. Also what an etcd run by its users must allow (docs/cluster.md).
ETCD_TXN_OPS_MAX = 1024


def member_argv(
    binary: str,
    member: EtcdMember,
    initial_cluster: Sequence[EtcdMember],
    *,
    token: str,
    heartbeat_ms: int = 100,
    election_timeout_ms: int = 1000,
) -> list[str]:
    """The command line of one member of a new cluster of ``initial_cluster``.

    The same argv also restarts the member later: etcd reads the ``--initial-*`` flags
    only when its data directory is empty, so a restart on the same data directory
    rejoins with the membership it stored (and a caller comparing ``/proc/<pid>/cmdline``
    with the recorded argv needs no second form)."""
    peers = ",".join(f"{x.name}={x.peer_url}" for x in initial_cluster)
    return [
        binary,
        "--name", member.name,
        "--data-dir", str(member.data_dir),
        "--listen-client-urls", member.client_url,
        "--advertise-client-urls", member.client_url,
        "--listen-peer-urls", member.peer_url,
        "--initial-advertise-peer-urls", member.peer_url,
        "--initial-cluster", peers,
        "--initial-cluster-state", "new",
        "--initial-cluster-token", token,
        "--heartbeat-interval", str(heartbeat_ms),
        "--election-timeout", str(election_timeout_ms),
        # A queue's placement is one transaction: its catalog entry and a key per
        # partition (up to 256), which etcd's default limit of 128 operations refuses.
        "--max-txn-ops", str(ETCD_TXN_OPS_MAX),
        "--logger", "zap",
        "--log-outputs", "stderr",
        "--log-level", "warn",
    ]


def member_environment() -> dict[str, str]:
    """The environment an etcd member must be started with (no stray ``ETCD_*``
    settings; the architecture override where etcd needs one)."""
    return _etcd_env()


def member_healthy(client_url: str) -> bool:
    """True when the member reports itself healthy (``/health``: it has a leader and a
    quorum-read works). A member serves no client request at all, ``/health``
    included, until it has published itself to the cluster, which needs a quorum."""
    try:
        body = _http(client_url + "/health", None)
    except OSError:
        return False
    return bool(body.get("health") in ("true", True))
