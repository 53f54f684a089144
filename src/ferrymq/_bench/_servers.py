"""Servers under test: Ferry and its peers as subprocesses, plus a tiny control client.

What belongs here: creating each peer's own virtual environment under
``.bench/venvs/<peer>`` (never touching the project's), starting each server on
loopback pinned to a core, readiness polling, stopping by PID/process group, and the
synchronous control calls (create/delete queue) the orchestrator needs between runs.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ferrymq._bench._loadgen import AUTHORIZATION

__all__ = [
    "PEER_REQUIREMENTS",
    "baseline_checkout",
    "PeerUnavailable",
    "Server",
    "ServerHandle",
    "control_call",
    "PEER_PYTHON_MIN",
    "find_python",
    "free_port",
    "pin_prefix",
    "start_server",
]

# Pinned so numbers are comparable between runs; LocalStack 2026.3 also needs the
# four pins below to start at all (newer releases of those break its runtime).
PEER_REQUIREMENTS: dict[str, list[str]] = {
    "moto": ["moto[server]==5.2.5"],
    "localstack": ["localstack-core[runtime]==2026.3.*", "cbor2<6", "pyopenssl<24.3",
                   "cryptography<44", "service_identity<24.3"],
}
# localstack-core 2026.3 imports warnings.deprecated (new in 3.13) although its metadata
# says 3.12; with 3.12 its runtime finds "no component plugins" and exits.
PEER_PYTHON_MIN: dict[str, tuple[int, int]] = {"moto": (3, 9), "localstack": (3, 13)}
# Time a server gets to answer ListQueues after start; LocalStack needs ~20 s.
READY_TIMEOUT_S = {"ferry": 30.0, "ferry-baseline": 30.0, "moto": 60.0, "localstack": 180.0}
# Time a server gets to exit after SIGTERM before SIGKILL.
STOP_TIMEOUT_S = 10.0
# A control call (create/delete queue) that takes longer than this means a hung server.
CONTROL_TIMEOUT_S = 120.0
# Installing LocalStack downloads ~100 packages; give pip this long per peer.
INSTALL_TIMEOUT_S = 1200.0


class PeerUnavailable(Exception):
    """A server cannot be run here (no suitable Python, install failed, never ready)."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pin_prefix(cpu: int | None) -> list[str]:
    """``taskset -c <cpu>`` when pinning is possible and wanted, else nothing."""
    if cpu is None or shutil.which("taskset") is None:
        return []
    return ["taskset", "-c", str(cpu)]


def find_python(minimum: tuple[int, int]) -> str | None:
    """A Python interpreter at least ``minimum``: on PATH first, then in pyenv's versions."""
    names = [f"python3.{minor}" for minor in range(15, minimum[1] - 1, -1)]
    candidates: list[str] = []
    for name in names:
        found = shutil.which(name)
        if found:
            candidates.append(found)
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    if pyenv_root.is_dir():
        for version_dir in sorted(pyenv_root.iterdir(), reverse=True):
            for name in names:
                path = version_dir / "bin" / name
                if path.is_file():
                    candidates.append(str(path))
    if sys.version_info >= minimum:
        candidates.append(sys.executable)
    for exe in candidates:
        try:
            # pyenv shims exist for versions that are not selected; run them to be sure.
            probe = subprocess.run(
                [exe, "-c", f"import sys; print(sys.version_info >= {minimum!r})"],
                capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return exe
    return None


def ensure_peer_venv(peer: str, bench_dir: Path) -> Path:
    """The Python of ``peer``'s own venv, created and installed on first use."""
    requirements = PEER_REQUIREMENTS[peer]
    venv = bench_dir / "venvs" / peer
    stamp = venv / ".ferry-bench-requirements"
    python = venv / "bin" / "python"
    minimum = PEER_PYTHON_MIN[peer]
    wanted = "\n".join([f"python>={minimum[0]}.{minimum[1]}", *requirements])
    if python.exists() and stamp.exists() and stamp.read_text() == wanted:
        return python
    base = find_python(minimum)
    if base is None:
        raise PeerUnavailable(f"{peer} needs Python >= {minimum[0]}.{minimum[1]} and none was "
                              "found (looked on PATH and in pyenv's versions)")
    # A venv left by an older pin or another interpreter is rebuilt, not patched.
    shutil.rmtree(venv, ignore_errors=True)
    print(f"bench: installing {peer} into {venv} ({' '.join(requirements)}) ...", flush=True)
    log_path = bench_dir / "logs" / f"install-{peer}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log_path, "wb") as log:
            subprocess.run([base, "-m", "venv", str(venv)], check=True, stdout=log,
                           stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S)
            subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                            *requirements], check=True, stdout=log, stderr=subprocess.STDOUT,
                           timeout=INSTALL_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        raise PeerUnavailable(f"installing {peer} failed ({exc}); see {log_path}") from exc
    stamp.write_text(wanted)
    return python


def baseline_checkout(ref: str, bench_dir: Path) -> Path:
    """The ``src`` folder of this checkout's Ferry as of git ``ref``, extracted once
    under ``<bench_dir>/baseline/<commit>`` (``git archive``: no worktree is registered
    and nothing in the repository changes)."""
    repo = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", f"{ref}^{{commit}}"],
                             capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise PeerUnavailable(f"--baseline {ref!r} is not a commit of {repo}") from exc
    target = bench_dir / "baseline" / sha[:12]
    src = target / "src"
    if not (src / "ferrymq" / "__init__.py").is_file():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", str(repo), "archive", sha, "src"],
                                   stdout=subprocess.PIPE)
        try:
            subprocess.run(["tar", "-x", "-C", str(target)], stdin=archive.stdout, check=True,
                           timeout=120)
        finally:
            if archive.stdout is not None:
                archive.stdout.close()
            archive.wait(30)
        if archive.returncode != 0:
            raise PeerUnavailable(f"git archive of {sha} failed")
    return src


def control_call(port: int, action: str, params: dict[str, Any],
                 timeout_s: float = CONTROL_TIMEOUT_S) -> tuple[int, dict[str, Any]]:
    """One synchronous AWS JSON 1.0 call; (status, decoded body or {})."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        conn.request("POST", "/", body=json.dumps(params).encode(), headers={
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": f"AmazonSQS.{action}",
            "Authorization": AUTHORIZATION,
            "X-Amz-Date": "20260101T000000Z",
        })
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    try:
        decoded = json.loads(raw) if raw else {}
    except ValueError:
        decoded = {"raw": raw[:300].decode("utf-8", "replace")}
    return response.status, decoded if isinstance(decoded, dict) else {}


class Server(Protocol):
    """What the orchestrator asks of a running server, one process or a cluster."""

    name: str

    @property
    def port(self) -> int:
        """Where the orchestrator's own calls (create/delete queue) go."""
        ...

    def endpoints(self) -> tuple[list[int], bool]:
        """The ports clients use, preferred first, and whether to spread over them."""
        ...

    def processes(self) -> tuple[dict[str, int], dict[str, int]]:
        """(the server's processes, processes measured beside it), PIDs by name."""
        ...

    def alive(self) -> bool: ...

    def stop(self) -> None: ...

    def log_tail(self, lines: int = 20) -> str: ...


@dataclass
class ServerHandle:
    """A running server subprocess, in a session of its own so its children go with it."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def endpoints(self) -> tuple[list[int], bool]:
        return [self.port], False

    def processes(self) -> tuple[dict[str, int], dict[str, int]]:
        return {self.name: self.pid}, {}

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=STOP_TIMEOUT_S)
        # Helpers LocalStack forked may outlive the leader; the group is still ours.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def _wait_ready(handle: ServerHandle, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if handle.process.poll() is not None:
            raise PeerUnavailable(f"{handle.name} exited with {handle.process.returncode} "
                                  f"during start-up:\n{handle.log_tail()}")
        try:
            status, _body = control_call(handle.port, "ListQueues", {}, timeout_s=5.0)
        except OSError:
            status = 0
        if status == 200:
            return
        time.sleep(0.25)
    handle.stop()
    raise PeerUnavailable(f"{handle.name} was not ready after {timeout_s:.0f} s:\n"
                          f"{handle.log_tail()}")


def start_server(name: str, bench_dir: Path, cpu: int | None, *,
                 baseline_src: Path | None = None) -> ServerHandle:
    """Start ``name`` (ferry, ferry-baseline, moto or localstack) on a free loopback port;
    wait until ready. ``ferry-baseline`` is Ferry from the source tree ``baseline_src``."""
    port = free_port()
    env = dict(os.environ)
    logs = bench_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    if name in ("ferry", "ferry-baseline"):
        if name == "ferry-baseline":
            if baseline_src is None:
                raise PeerUnavailable("ferry-baseline needs --baseline REF")
            # Ahead of the editable install of the working tree on sys.path.
            env["PYTHONPATH"] = os.pathsep.join(
                [str(baseline_src), *filter(None, [env.get("PYTHONPATH")])])
        data_dir = bench_dir / "data" / f"{name}-{port}"
        shutil.rmtree(data_dir, ignore_errors=True)
        data_dir.mkdir(parents=True)
        command = [sys.executable, "-m", "ferrymq", "serve", "--host", "127.0.0.1",
                   "--port", str(port), "--data-dir", str(data_dir),
                   "--purge-interval-seconds", "0", "--recreate-delay-seconds", "0"]
    elif name == "moto":
        python = ensure_peer_venv("moto", bench_dir)
        command = [str(python), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    elif name == "localstack":
        python = ensure_peer_venv("localstack", bench_dir)
        command = [str(python), "-m", "localstack.runtime.main"]
        env.update({
            "GATEWAY_LISTEN": f"127.0.0.1:{port}", "SERVICES": "sqs", "PERSISTENCE": "0",
            "SQS_ENDPOINT_STRATEGY": "path", "LS_LOG": "warn",
            # Loopback only: no analytics, no certificate or infrastructure downloads.
            "DISABLE_EVENTS": "1", "SKIP_SSL_CERT_DOWNLOAD": "1",
            "SKIP_INFRA_DOWNLOADS": "1", "LOCALSTACK_CLI": "0",
            # plux caches entry points per user; a private cache cannot go stale.
            "XDG_CACHE_HOME": str(bench_dir / "cache" / "localstack"),
            "LOCALSTACK_VOLUME_DIR": str(bench_dir / "data" / f"localstack-{port}"),
            "FILESYSTEM_ROOT": str(bench_dir / "data" / f"localstack-fs-{port}"),
        })
    else:
        raise ValueError(f"unknown server {name!r}")
    log_path = logs / f"{name}-{port}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(pin_prefix(cpu) + command, stdout=log_file,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env=env, start_new_session=True)
    handle = ServerHandle(name, process, port, log_path)
    try:
        _wait_ready(handle, READY_TIMEOUT_S[name])
    except BaseException:
        handle.stop()
        raise
    return handle
