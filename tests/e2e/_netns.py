"""Network namespaces for end-to-end tests: hosts on a private bridge, a host's link cut
and restored, processes and Python threads run inside a host's namespace.

What belongs here: the ``ip`` commands (namespaces, a bridge, veth pairs, addresses,
link state); starting a process in a namespace and stopping it by its PID; running
Python code in a namespace on a thread of the test process; and the finaliser that
stops every process and deletes every namespace a ``Lab`` made. Nothing here knows
about Ferry.

The layout. One namespace holds the bridge ``br0`` and nothing else. Each host is a
namespace of its own with ``lo`` up and ``eth0``, one end of a veth pair whose other
end, ``v-<host>``, is a port of the bridge; its address is ``<subnet>.<index>/24``.
Traffic therefore goes only to loopback or between the namespaces a ``Lab`` created:
the root namespace gets no interface and no route. ``cut(host)`` sets the host's
bridge port down: the host keeps its address and still reaches itself, but no frame
crosses between it and any other host, either way, and nobody is told (no reset, no
ICMP from the far side), as when a switch port dies. ``heal(host)`` sets it up again:
the connections that survived resume when TCP next retransmits, and a new connection
may need a second (the kernel retries address resolution and SYNs that failed during
the cut a second apart).

Threads. ``setns(2)`` with ``CLONE_NEWNET`` moves only the calling thread into a
network namespace, and a thread inherits the namespace of the thread that starts it,
so code submitted to ``Host.submit`` runs in the host's namespace, sockets it opens
live there, and so do threads it starts (a workload's worker threads): one test
process can be a client on several hosts at once and keep one history.

Processes. ``ip netns exec NS argv`` enters the namespace and then execs ``argv`` in
place (no fork), so the PID ``Popen`` reports is the program's own; it is stopped by
that PID (SIGTERM, then SIGKILL), never by name.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Host", "Lab", "NetnsError", "Process", "unavailable_reason"]

T = TypeVar("T")

_CLONE_NEWNET = 0x40000000
_NETNS_DIR = Path("/run/netns")
_BRIDGE = "br0"
# Linux limits interface names to 15 bytes; a bridge port is "v-" + the host's name.
_HOST_NAME_MAX = 12
# One `ip` command creates or changes one object; it returns in milliseconds unless the
# kernel is stuck, which is worth a failure, not a hung test.
_IP_TIMEOUT_S = 10.0
# A stopped process gets this long after SIGTERM before SIGKILL; `ferrymq node` drains
# for up to 10 s, but a test that is stopping wants it gone, not drained.
_TERM_WAIT_S = 5.0
# After SIGKILL a process is gone within milliseconds unless stuck in the kernel.
_KILL_WAIT_S = 5.0
# Threads per host for submitted work: probes, one call that starts a workload, and a
# drain may run at once on one host; more would only queue.
_HOST_THREADS_MAX = 4


class NetnsError(RuntimeError):
    """An ``ip`` command failed, or a namespace could not be entered."""


def _ip_binary() -> str | None:
    return shutil.which("ip")


def _ip(*args: str) -> None:
    exe = _ip_binary()
    if exe is None:
        raise NetnsError("the `ip` command (iproute2) is not installed")
    try:
        done = subprocess.run([exe, *args], capture_output=True, text=True,
                              timeout=_IP_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as exc:
        raise NetnsError(f"`ip {' '.join(args)}` hung for {_IP_TIMEOUT_S:g} s") from exc
    if done.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {done.stderr.strip()}")


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here (not root, no iproute2), or None: creating
    and deleting a probe namespace is the only reliable test."""
    if _ip_binary() is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"ferry-probe-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except NetnsError as exc:
        return f"cannot create a network namespace (root is needed): {exc}"
    try:
        _ip("netns", "delete", probe)
    except NetnsError as exc:
        return f"cannot delete a network namespace: {exc}"
    return None


def _enter(namespace: str) -> None:
    """Move the calling thread (only it) into ``namespace``."""
    fd = os.open(_NETNS_DIR / namespace, os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns = getattr(os, "setns", None)  # Python 3.12+
        if setns is not None:
            setns(fd, _CLONE_NEWNET)
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise NetnsError(f"setns into {namespace}: {os.strerror(errno)}")
    finally:
        os.close(fd)


@dataclass
class Process:
    """A process started in a namespace; ``stop`` and ``kill`` act on its PID."""

    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def stop(self, term_wait_s: float = _TERM_WAIT_S) -> None:
        """SIGTERM, then SIGKILL if it has not exited within ``term_wait_s``."""
        if not self.running():
            return
        with suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=term_wait_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if not self.running():
            return
        with suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=_KILL_WAIT_S)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return text[-chars:]


@dataclass
class Host:
    """One namespace on the lab's bridge."""

    name: str
    namespace: str
    address: str
    _executor: ThreadPoolExecutor = field(repr=False)

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run ``fn(*args)`` on a thread inside this host's namespace."""
        return self._executor.submit(fn, *args)

    def call(self, fn: Callable[..., T], *args: Any, timeout_s: float = 60.0) -> T:
        """``submit``, then wait for the result (its exception is raised here)."""
        return self.submit(fn, *args).result(timeout=timeout_s)

    def close(self) -> None:
        """No more submissions; threads finish what they run and end."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as a command line that runs it inside this host's namespace."""
        exe = _ip_binary()
        if exe is None:
            raise NetnsError("the `ip` command (iproute2) is not installed")
        return [exe, "netns", "exec", self.namespace, *argv]


class Lab:
    """A private network of hosts on one bridge; see the module docstring.

    ``close()`` (also on leaving a ``with`` block) stops every process started through
    ``spawn`` and deletes every namespace made, whatever state the test left them in."""

    def __init__(self, *, tag: str | None = None) -> None:
        self.tag = tag or secrets.token_hex(3)
        # 10.77.X.0/24 with X random: the namespaces are separate, so two labs never
        # share a network, but distinct subnets keep their logs unambiguous.
        self.subnet = f"10.77.{secrets.randbelow(256)}"
        self.bridge_namespace = f"ferry-br-{self.tag}"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._processes: list[Process] = []
        self._opened = False

    def __enter__(self) -> Lab:
        try:
            self.open()
        except BaseException:
            self.close()  # `with` calls no __exit__ when __enter__ fails
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_namespace(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self._namespaces.append(namespace)
        _ip("-n", namespace, "link", "set", "lo", "up")

    def open(self) -> None:
        if self._opened:
            raise NetnsError("this lab is already open")
        self._opened = True
        self._add_namespace(self.bridge_namespace)
        # No STP and no forwarding delay: a port that comes back up forwards at once,
        # so a heal is one command, not a wait for the bridge.
        _ip("-n", self.bridge_namespace, "link", "add", _BRIDGE, "type", "bridge",
            "stp_state", "0", "forward_delay", "0")
        _ip("-n", self.bridge_namespace, "link", "set", _BRIDGE, "up")

    def add_host(self, name: str, index: int) -> Host:
        """A namespace ``ferry-<name>-<tag>`` at ``<subnet>.<index>``, on the bridge."""
        if not self._opened:
            raise NetnsError("open the lab first")
        if name in self.hosts or not name.isalnum() or len(name) > _HOST_NAME_MAX:
            raise NetnsError(f"bad or duplicate host name {name!r}")
        if not 1 <= index <= 254 or any(h.address.endswith(f".{index}")
                                        for h in self.hosts.values()):
            raise NetnsError(f"bad or duplicate host index {index}")
        namespace = f"ferry-{name}-{self.tag}"
        self._add_namespace(namespace)
        port = self._port(name)
        _ip("-n", self.bridge_namespace, "link", "add", port, "type", "veth",
            "peer", "name", "eth0", "netns", namespace)
        _ip("-n", self.bridge_namespace, "link", "set", port, "master", _BRIDGE, "up")
        address = f"{self.subnet}.{index}"
        _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", namespace, "link", "set", "eth0", "up")
        host = Host(name, namespace, address, ThreadPoolExecutor(
            max_workers=_HOST_THREADS_MAX, thread_name_prefix=f"netns-{name}",
            initializer=_enter, initargs=(namespace,)))
        self.hosts[name] = host
        return host

    @staticmethod
    def _port(name: str) -> str:
        return f"v-{name}"

    def cut(self, name: str) -> None:
        """Disconnect host ``name`` from every other host (see the module docstring)."""
        self._set_port(name, "down")

    def heal(self, name: str) -> None:
        """Connect host ``name`` again."""
        self._set_port(name, "up")

    def _set_port(self, name: str, state: str) -> None:
        if name not in self.hosts:
            raise NetnsError(f"no host {name!r} in this lab")
        _ip("-n", self.bridge_namespace, "link", "set", self._port(name), state)

    def spawn(self, host: Host, name: str, argv: Sequence[str], log: Path,
              env: Mapping[str, str] | None = None) -> Process:
        """Start ``argv`` inside ``host``'s namespace, stdout and stderr to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                host.exec_argv(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                env=dict(env) if env is not None else None,
                start_new_session=True)  # a Ctrl-C reaches the test, which stops it
        process = Process(name, list(argv), log, popen)
        self._processes.append(process)
        return process

    def close(self) -> None:
        """Stop every process (each by its PID), then delete every namespace; errors
        are collected and raised together once everything was tried."""
        problems: list[str] = []
        for process in self._processes:
            try:
                process.stop()
            except (OSError, subprocess.SubprocessError) as exc:
                problems.append(f"stopping {process.name} (pid {process.pid}): {exc!r}")
        for host in self.hosts.values():
            host.close()
        # Deleting a host's namespace destroys its veth, and with it the bridge port.
        for namespace in reversed(self._namespaces):
            try:
                _ip("netns", "delete", namespace)
            except NetnsError as exc:
                problems.append(str(exc))
        self._namespaces.clear()
        with suppress(FileNotFoundError):
            left = [p.name for p in _NETNS_DIR.iterdir() if p.name.endswith(f"-{self.tag}")]
            if left:
                problems.append(f"namespaces left behind: {left}")
        if problems:
            raise NetnsError("; ".join(problems))
