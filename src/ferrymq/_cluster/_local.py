"""``ferrymq cluster up|status|stop|start|down``: a whole cluster, etcd members and Ferry
nodes, as background processes on one machine.

What belongs here: the state file ``DATA_DIR/cluster.json`` that records every process
of a local cluster (its argv, ports, data directory and PID), starting those processes
detached so they outlive the command, finding them again by PID (never by name), the
health wait, and rendering the cluster's status. Nothing here decides anything about
the cluster itself: leaders and in-sync sets are etcd's and the controller's, read
from etcd and from each node's ``GET /_ferry/status``.

Layout of a data directory ``D``::

    D/cluster.json        the state file (written atomically)
    D/cluster.lock        flock(2) held by up/stop/start/down while they change things
    D/etcd/etcd1/         etcd member data directories
    D/nodes/n1/           node data directories
    D/logs/etcd1.log      every process's stdout and stderr
    D/logs/n1.log

A PID from the state file is signalled only after ``/proc/<pid>/cmdline`` was compared
with the argv recorded for it: every recorded argv names its own data directory, so a
PID the kernel recycled for anything else never matches. Linux only (``/proc``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import functools
import json
import os
import re
import shutil
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from ferrymq._core._control import PARTITIONS_MAX

# Every `ferrymq` command line builds this module's parser, `ferrymq serve` included, so
# what only the cluster commands need (HTTP client, etcd and layout modules: ~50 ms of
# imports, measured) is imported where it is used.

__all__ = [
    "DEFAULT_BASE_PORT",
    "STATE_FILE",
    "ClusterState",
    "EtcdRecord",
    "LocalClusterError",
    "NodeRecord",
    "Settings",
    "add_cluster_parser",
    "collect_status",
    "is_ours",
    "load_state",
    "main",
    "node_argv",
    "render_status",
    "run",
    "save_state",
]

STATE_FILE = "cluster.json"
_LOCK_FILE = "cluster.lock"
# Bumped when the state file's shape changes, so an old file is refused with a clear
# message instead of being misread.
_STATE_FORMAT = 1
DEFAULT_BASE_PORT = 9324
_HOST = "127.0.0.1"
_DEFAULT_CLUSTER = "ferry"
# Each node is a Python process with its own store; beyond this a single machine tells
# nothing a real cluster would, and a typo (--nodes 300) must not fork hundreds.
_NODES_MAX = 16
# What `start` accepts as the id of a node to add (the ids `up` gives: n1, n2, ...).
_NODE_ID = re.compile(r"n[1-9][0-9]?")
# `decommission` looks at etcd this often while the controller moves replicas: each
# look is one range read, and a move takes seconds.
_DECOMMISSION_POLL_S = 0.5
# The replication factor when --replicas is not given: Kafka-like 3, or every node of a
# smaller cluster (a replica set cannot have more members than there are nodes).
_DEFAULT_REPLICAS_MAX = 3
# `up` waits this long for every node to answer and a controller to be elected (the
# issue's bound); a cluster not healthy by then is reported with its logs.
_HEALTHY_WAIT_S = 60.0
# `start` waits this long for a restarted process to answer: a node restores its store
# first, which on a big store takes a while; a hang must still end.
_START_WAIT_S = 60.0
# SIGTERM lets a node answer its clients and close its store, and etcd close its WAL;
# after this grace the process gets SIGKILL (the 10 s).
_TERM_WAIT_S = 10.0
# After SIGKILL the kernel ends a process at once unless it is stuck in the kernel (D
# state); this bounds the wait for that, after which the command reports failure.
_KILL_WAIT_S = 5.0
# How often waits poll; each poll is a /proc read and at most one loopback request per
# process.
_POLL_INTERVAL_S = 0.1
# One status or health probe must not hang on a process that accepted the connection
# and stalled.
_PROBE_TIMEOUT_S = 1.0
# A node's status is about 0.5 KiB per replica set it holds (one per queue), so this
# is tens of thousands of queues; anything bigger is not a Ferry node.
_STATUS_BYTES_MAX = 16 * 1024 * 1024
# `status` reads the cluster's whole etcd prefix at once: a catalog entry holds its
# queue's definition (attributes, tags, up to a few KiB), so this is again tens of
# thousands of queues, not an answer to keep reading forever.
_ETCD_RANGE_BYTES_MAX = 64 * 1024 * 1024
# How much of a process's log an error message quotes.
_LOG_TAIL_BYTES = 2000
# A spawned child runs its new program within microseconds; this bounds the wait for it
# (see _wait_exec) on a machine so loaded that it takes longer.
_EXEC_WAIT_S = 2.0
# Tries at finding free ports for etcd; another program may take one in between.
_PORT_PICK_ATTEMPTS_MAX = 100
_CLUSTER_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

_STATUS_PATH = "/_ferry/status"


class LocalClusterError(Exception):
    """A local-cluster command cannot do what it was asked (exit code 1)."""


class _UsageError(Exception):
    """A command line that parsed but does not make sense (exit code 2)."""


# -- the state file --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """What ``up`` was asked for; a restart of a stopped cluster must ask the same."""

    nodes: int
    etcd_members: int
    base_port: int
    replicas: int
    min_insync_replicas: int | None = None
    durability: str | None = None
    lease_ttl_seconds: int | None = None
    partitions: int | None = None


@dataclass(slots=True)
class EtcdRecord:
    name: str
    client_port: int
    peer_port: int
    data_dir: str
    log: str
    argv: list[str]
    pid: int | None = None

    @property
    def client_url(self) -> str:
        return f"http://{_HOST}:{self.client_port}"


@dataclass(slots=True)
class NodeRecord:
    id: str
    host: str
    port: int
    data_dir: str
    log: str
    argv: list[str]
    pid: int | None = None

    @property
    def name(self) -> str:
        return self.id

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(slots=True)
class ClusterState:
    cluster: str
    settings: Settings
    etcd: list[EtcdRecord] = field(default_factory=list)
    nodes: list[NodeRecord] = field(default_factory=list)

    @property
    def etcd_urls(self) -> list[str]:
        return [m.client_url for m in self.etcd]

    def records(self) -> list[EtcdRecord | NodeRecord]:
        """Every process: etcd members first (the order they start in)."""
        return [*self.etcd, *self.nodes]

    def find(self, name: str) -> EtcdRecord | NodeRecord:
        for rec in self.records():
            if rec.name == name:
                return rec
        known = ", ".join(r.name for r in self.records())
        raise LocalClusterError(f"no node or etcd member {name!r} in this cluster ({known})")


def load_state(data_dir: Path) -> ClusterState | None:
    """The cluster recorded in ``data_dir``, or None when there is none."""
    path = data_dir / STATE_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise LocalClusterError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(raw)
        if doc.get("format") != _STATE_FORMAT:
            raise LocalClusterError(
                f"{path} has format {doc.get('format')!r}; this ferrymq reads format "
                f"{_STATE_FORMAT}")
        return ClusterState(
            cluster=str(doc["cluster"]),
            settings=Settings(**doc["settings"]),
            etcd=[EtcdRecord(**m) for m in doc["etcd"]],
            nodes=[NodeRecord(**n) for n in doc["nodes"]],
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise LocalClusterError(f"{path} is not a cluster state file ferrymq wrote: "
                                f"{exc!r}") from exc


def save_state(data_dir: Path, state: ClusterState) -> None:
    """Write the state file atomically: a crash mid-write leaves the old file whole."""
    doc = {
        "format": _STATE_FORMAT,
        "cluster": state.cluster,
        "settings": asdict(state.settings),
        "etcd": [asdict(m) for m in state.etcd],
        "nodes": [asdict(n) for n in state.nodes],
    }
    path = data_dir / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def _locked(data_dir: Path) -> Iterator[None]:
    """Exclusive use of ``data_dir`` by one changing command at a time (two `up`s at
    once would both see nothing running and start two clusters on the same ports)."""
    fd = os.open(data_dir / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LocalClusterError(
                f"another `ferrymq cluster` command is working on {data_dir}") from None
        yield
    finally:
        os.close(fd)


# -- processes ---------------------------------------------------------------------------

# PIDs this process spawned and has not reaped yet. When the command runs in a process
# that lives on (tests call `main` directly), a stopped child would stay a zombie until
# reaped; only these are ever waited for, so no one else's child is reaped by mistake.
_spawned_here: set[int] = set()


def _reap(pid: int) -> None:
    if pid not in _spawned_here:
        return
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        done = pid  # reaped elsewhere
    if done == pid:
        _spawned_here.discard(pid)


def _cmdline(pid: int) -> list[bytes] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except PermissionError:
        return None  # another user's process: not ours
    if not raw:
        return None  # a zombie, or a kernel thread: not a live process of ours
    return raw.rstrip(b"\0").split(b"\0")


def is_ours(pid: int | None, argv: Sequence[str]) -> bool:
    """True when ``pid`` is running and runs exactly ``argv`` (so a PID the kernel
    reused for another program is never taken for ours)."""
    if pid is None or pid <= 0:
        return False
    if not Path("/proc/self/cmdline").exists():
        raise LocalClusterError("`ferrymq cluster` needs Linux's /proc to identify its "
                                "processes")
    _reap(pid)
    return _cmdline(pid) == [os.fsencode(a) for a in argv]


def _spawn_detached(argv: Sequence[str], env: dict[str, str], log_path: Path) -> int:
    """Start ``argv`` in its own session with stdin from /dev/null and stdout and stderr
    appended to ``log_path``; return its PID.

    ``os.posix_spawn`` rather than ``subprocess.Popen``: nobody here ever waits for the
    child through a Popen object (it must outlive this command), and an abandoned Popen
    warns when collected. ``setsid`` is ``start_new_session``: a Ctrl-C or a closed
    terminal reaches the command, never the cluster."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, str(log_path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644),
        (os.POSIX_SPAWN_DUP2, 1, 2),
    ]
    try:
        pid = os.posix_spawn(argv[0], list(argv), env, file_actions=actions, setsid=True)
    except OSError as exc:
        raise LocalClusterError(f"cannot start {argv[0]}: {exc.strerror or exc}") from exc
    _spawned_here.add(pid)
    _wait_exec(pid)
    return pid


def _wait_exec(pid: int) -> None:
    """Return once ``pid`` shows its new command line (or has ended).

    The spawner resumes while the kernel is still inside the child's exec: the new
    address space is in place but its argument area is not, so ``/proc/<pid>/cmdline``
    reads empty for a moment, and a process that just started would look dead to
    ``is_ours``. Waiting here keeps every later check exact."""
    deadline = time.monotonic() + _EXEC_WAIT_S
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes():
                return
            stat = Path(f"/proc/{pid}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return
        # The state letter follows the command name, which is in parentheses and may
        # itself contain ") ".
        if stat[stat.rindex(")") + 2:][:1] in ("Z", "X"):
            return
        time.sleep(0.001)


def _log_tail(log: str) -> str:
    try:
        with open(log, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - _LOG_TAIL_BYTES))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _stop(records: Sequence[EtcdRecord | NodeRecord], *, term_wait_s: float = _TERM_WAIT_S,
          kill_wait_s: float = _KILL_WAIT_S) -> list[str]:
    """Stop every running process of ``records`` at once: SIGTERM, SIGKILL to whoever
    is left after ``term_wait_s``. Returns the names of those that were running; raises
    if one survives SIGKILL. A record whose PID is not ours is left alone."""
    running = [r for r in records if is_ours(r.pid, r.argv)]
    for rec in running:
        _signal(rec, signal.SIGTERM)
    left = _wait_gone(running, term_wait_s)
    for rec in left:
        print(f"ferrymq cluster: {rec.name} did not stop within {term_wait_s:g} s of "
              "SIGTERM; sending SIGKILL", file=sys.stderr, flush=True)
        _signal(rec, signal.SIGKILL)
    stuck = _wait_gone(left, kill_wait_s)
    if stuck:
        names = ", ".join(f"{r.name} (pid {r.pid})" for r in stuck)
        raise LocalClusterError(f"still running after SIGKILL: {names}")
    for rec in records:
        rec.pid = None
    return [r.name for r in running]


def _signal(rec: EtcdRecord | NodeRecord, sig: signal.Signals) -> None:
    # Checked again right before the signal: the process may have ended (and its PID
    # been reused) since the caller looked.
    if rec.pid is not None and is_ours(rec.pid, rec.argv):
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec.pid, sig)


def _wait_gone(records: Sequence[EtcdRecord | NodeRecord],
               timeout_s: float) -> list[EtcdRecord | NodeRecord]:
    deadline = time.monotonic() + timeout_s
    left = list(records)
    while True:
        left = [r for r in left if is_ours(r.pid, r.argv)]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(_POLL_INTERVAL_S)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR as the servers set it, so a port in TIME_WAIT after a stop is
        # (correctly) seen as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def _free_ports(count: int, exclude: set[int]) -> list[int]:
    ports: list[int] = []
    for _ in range(_PORT_PICK_ATTEMPTS_MAX):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((_HOST, 0))
            port = int(sock.getsockname()[1])
        if port not in exclude and port not in ports:
            ports.append(port)
            if len(ports) == count:
                return ports
    raise LocalClusterError(f"could not find {count} free ports on {_HOST}")


# -- argv --------------------------------------------------------------------------------


def _default_node_command() -> list[str]:
    # The interpreter running this command, so the nodes run the same Ferry (the venv's)
    # whatever PATH the user has.
    return [sys.executable, "-m", "ferrymq", "node"]


def node_argv(command: Sequence[str], rec: NodeRecord, state: ClusterState) -> list[str]:
    """The command line of one node: the node contract's flags, from the state."""
    s = state.settings
    argv = [
        *command,
        "--node-id", rec.id,
        "--host", rec.host,
        "--port", str(rec.port),
        "--data-dir", rec.data_dir,
        "--etcd", ",".join(state.etcd_urls),
        "--cluster", state.cluster,
        "--replicas", str(s.replicas),
    ]
    if s.min_insync_replicas is not None:
        argv += ["--min-insync-replicas", str(s.min_insync_replicas)]
    if s.durability is not None:
        argv += ["--durability", s.durability]
    if s.lease_ttl_seconds is not None:
        argv += ["--lease-ttl-seconds", str(s.lease_ttl_seconds)]
    if s.partitions is not None:
        argv += ["--partitions", str(s.partitions)]
    return argv


def _node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the log file as they are written
    return env


def _new_state(data_dir: Path, cluster: str, settings: Settings, etcd_exe: str,
               node_command: Sequence[str]) -> ClusterState:
    from ferrymq._coordination._etcd_process import EtcdMember, member_argv

    node_ports = {settings.base_port + i for i in range(settings.nodes)}
    etcd_ports = _free_ports(2 * settings.etcd_members, node_ports)
    members = [
        EtcdMember(name=f"etcd{i + 1}", client_port=etcd_ports[2 * i],
                   peer_port=etcd_ports[2 * i + 1],
                   data_dir=data_dir / "etcd" / f"etcd{i + 1}")
        for i in range(settings.etcd_members)
    ]
    token = f"ferrymq-{cluster}-{uuid.uuid4().hex[:12]}"
    state = ClusterState(cluster=cluster, settings=settings)
    for m in members:
        state.etcd.append(EtcdRecord(
            name=m.name, client_port=m.client_port, peer_port=m.peer_port,
            data_dir=str(m.data_dir), log=str(data_dir / "logs" / f"{m.name}.log"),
            argv=member_argv(etcd_exe, m, members, token=token)))
    for i in range(settings.nodes):
        node_id = f"n{i + 1}"
        rec = NodeRecord(id=node_id, host=_HOST, port=settings.base_port + i,
                         data_dir=str(data_dir / "nodes" / node_id),
                         log=str(data_dir / "logs" / f"{node_id}.log"), argv=[])
        rec.argv = node_argv(node_command, rec, state)
        state.nodes.append(rec)
    return state


# -- probes ------------------------------------------------------------------------------


def _get_json(url: str, body: dict[str, Any] | None = None, *,
              bytes_max: int = _STATUS_BYTES_MAX) -> dict[str, Any]:
    import http.client
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=_PROBE_TIMEOUT_S) as resp:
            raw = resp.read(bytes_max + 1)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # URLError and HTTPError are OSErrors; a garbled answer is an HTTPException.
        raise OSError(f"{url}: {exc}") from exc
    if len(raw) > bytes_max:
        raise OSError(f"{url}: answer larger than {bytes_max} bytes")
    try:
        parsed = json.loads(raw)
    except ValueError as exc:
        raise OSError(f"{url}: not JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise OSError(f"{url}: not a JSON object")
    return parsed


def _node_status(rec: NodeRecord) -> dict[str, Any] | None:
    try:
        return _get_json(rec.url + _STATUS_PATH)
    except OSError:
        return None


def _etcd_view(state: ClusterState) -> list[tuple[str, str | None, dict[str, Any]]] | None:
    """Every replica set etcd holds for this cluster, as (partition, queue, state), the
    queue from the catalog entry that names the partition (None if none does); None
    when no etcd member answers.

    One range over the cluster's whole prefix, read through etcd's JSON gateway from the
    first member that answers: replica sets and catalog then come from one revision, so
    a queue placed in between is never seen half."""
    from ferrymq._cluster._catalog import DELETED, decode_entry
    from ferrymq._cluster._layout import Layout, decode_state

    layout = Layout(state.cluster)
    prefix = layout.root
    range_end = prefix[:-1] + bytes([prefix[-1] + 1])
    query = {"key": base64.b64encode(prefix).decode(),
             "range_end": base64.b64encode(range_end).decode()}
    for m in state.etcd:
        if not is_ours(m.pid, m.argv):
            continue
        try:
            doc = _get_json(m.client_url + "/v3/kv/range", query,
                            bytes_max=_ETCD_RANGE_BYTES_MAX)
        except OSError:
            continue
        sets: list[tuple[str, dict[str, Any]]] = []
        queue_of: dict[str, str] = {}
        for kv in doc.get("kvs", []):
            try:
                key = base64.b64decode(kv["key"])
                value = base64.b64decode(kv.get("value", ""))
                if key.startswith(layout.partitions):
                    ps = decode_state(value)
                    sets.append((layout.name_of(layout.partitions, key), {
                        "leader": ps.leader, "epoch": ps.epoch,
                        "replicas": list(ps.replicas), "isr": list(ps.isr),
                        "min_isr": ps.min_isr, "sync": ps.sync,
                        "moving": None if ps.moving is None else list(ps.moving)}))
                elif key.startswith(layout.queues):
                    name = layout.name_of(layout.queues, key)
                    entry = decode_entry(name, value)
                    if entry.status != DELETED:
                        for partition in entry.partitions:
                            queue_of[partition] = name
            except (ValueError, KeyError, TypeError) as exc:
                # Status must show the rest even if one value is not what the nodes
                # write; the odd one is named, not hidden.
                _say(f"etcd holds an unreadable value at {kv.get('key')!r}: {exc!r}")
        return [(name, queue_of.get(name), ps) for name, ps in sets]
    return None


def _reports(status: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """A node status's replica sets, ``partitions`` (pid -> report), well-formed ones
    only: a status is another process's answer."""
    parts = status.get("partitions") if status else None
    if not isinstance(parts, dict):
        return {}
    return {pid: rep for pid, rep in parts.items()
            if isinstance(pid, str) and isinstance(rep, dict)}


def _partitions_from_nodes(statuses: dict[str, dict[str, Any] | None]
                           ) -> list[tuple[str, str | None, dict[str, Any]]]:
    """Replica sets as the nodes report them, when etcd cannot be read: per partition,
    the report of the highest epoch (a leader's over a follower's at the same epoch);
    its queue from any report that names one."""
    best: dict[str, tuple[tuple[int, bool], dict[str, Any]]] = {}
    queue_of: dict[str, str] = {}
    for status in statuses.values():
        for pid, rep in _reports(status).items():
            if isinstance(rep.get("queue"), str):
                queue_of.setdefault(pid, rep["queue"])
            epoch = rep.get("epoch")
            rank = (epoch if isinstance(epoch, int) else -1, rep.get("role") == "leader")
            if pid not in best or rank > best[pid][0]:
                best[pid] = (rank, {
                    "leader": rep.get("leader"), "epoch": epoch,
                    "replicas": list(rep.get("replicas") or []),
                    "isr": list(rep.get("isr") or []),
                    "min_isr": rep.get("min_isr"), "sync": rep.get("sync")})
    return [(pid, queue_of.get(pid), doc) for pid, (_, doc) in sorted(best.items())]


def _leader_report(partition: str, doc: dict[str, Any],
                   statuses: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    """The named leader's own report of ``partition`` if it says it leads it at the
    epoch ``doc`` names; None otherwise (down, deposed, or not told yet)."""
    leader = doc.get("leader")
    if not isinstance(leader, str):
        return None
    rep = _reports(statuses.get(leader)).get(partition)
    if rep is None or rep.get("role") != "leader" or rep.get("epoch") != doc.get("epoch"):
        return None
    return rep


def _lag(partition: str, doc: dict[str, Any],
         statuses: dict[str, dict[str, Any] | None]) -> dict[str, int | None] | None:
    """Records each follower is behind the leader's commit, from the leader's own
    report of the replica set; None when the leader is unknown or does not answer as
    that leader."""
    rep = _leader_report(partition, doc, statuses)
    if rep is None:
        return None
    commit = rep.get("commit_seq")
    followers = rep.get("followers")
    if not isinstance(followers, dict):
        followers = {}
    lag: dict[str, int | None] = {}
    for node in doc.get("replicas", []):
        if node == doc.get("leader"):
            continue
        acked = followers.get(node)
        if isinstance(commit, int) and isinstance(acked, int):
            lag[node] = max(0, commit - acked)
        else:
            lag[node] = None
    return lag


def collect_status(state: ClusterState) -> dict[str, Any]:
    """The cluster as ``status --json`` prints it: ``nodes``, ``partitions``, ``etcd``.

    Each queue has a replica set of its own, created with the queue: ``partitions``
    lists them (none before the first queue), each with its queue's name. They come
    from etcd (the record the placing node and the controller write); when etcd cannot
    be read, from the nodes' own reports. A node's ``leads`` counts the replica sets
    that record names it leader of."""
    statuses: dict[str, dict[str, Any] | None] = {}
    for n in state.nodes:
        # A process that is not ours may be listening on the port; never ask it.
        statuses[n.id] = _node_status(n) if is_ours(n.pid, n.argv) else None
    etcd = []
    for m in state.etcd:
        alive = is_ours(m.pid, m.argv)
        etcd.append({"name": m.name, "client_url": m.client_url,
                     "pid": m.pid if alive else None, "alive": alive})
    found = _etcd_view(state)
    if found is None:
        found = _partitions_from_nodes(statuses)
    leads: dict[str, int] = {}
    for _, _, doc in found:
        if isinstance(doc.get("leader"), str):
            leads[doc["leader"]] = leads.get(doc["leader"], 0) + 1
    nodes = []
    for n in state.nodes:
        alive = is_ours(n.pid, n.argv)
        nodes.append({"id": n.id, "url": n.url, "pid": n.pid if alive else None,
                      "alive": alive, "leads": leads.get(n.id, 0)})
    partitions = [
        {"queue": queue, "partition": name, **doc, "lag": _lag(name, doc, statuses)}
        for name, queue, doc in found
    ]
    return {"nodes": nodes, "partitions": partitions, "etcd": etcd}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    return ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in (header, *rows)]


def render_status(doc: dict[str, Any]) -> str:
    """``status``'s human form: three tables (nodes, one row per queue's replica set,
    etcd members)."""

    def dash(value: object) -> str:
        return "-" if value is None else str(value)

    def lag_text(lag: dict[str, int | None] | None) -> str:
        if lag is None:
            return "unknown"
        return " ".join(f"{n}:{dash(v)}" for n, v in lag.items()) or "-"

    lines = _table(["NODE", "URL", "PID", "ALIVE", "LEADS"], [
        [n["id"], n["url"], dash(n["pid"]), "yes" if n["alive"] else "no", dash(n["leads"])]
        for n in doc["nodes"]])
    lines.append("")
    if doc["partitions"]:
        # A replica being moved (from -> to) is shown while any is.
        moving = any(p.get("moving") for p in doc["partitions"])
        lines += _table(["QUEUE", "PARTITION", "LEADER", "EPOCH", "REPLICAS", "ISR", "LAG",
                         *(["MOVING"] if moving else [])], [
            [dash(p["queue"]), p["partition"], dash(p["leader"]), dash(p["epoch"]),
             ",".join(p["replicas"]) or "-", ",".join(p["isr"]) or "-", lag_text(p["lag"]),
             *([" -> ".join(p["moving"]) if p.get("moving") else "-"] if moving else [])]
            for p in doc["partitions"]])
    else:
        lines.append("no queue yet (each queue gets a replica set of its own when it is "
                     "created)")
    lines.append("")
    lines += _table(["ETCD", "CLIENT URL", "PID", "ALIVE"], [
        [m["name"], m["client_url"], dash(m["pid"]), "yes" if m["alive"] else "no"]
        for m in doc["etcd"]])
    return "\n".join(lines)


def _health(state: ClusterState) -> tuple[bool, str, str | None]:
    """(healthy, what is missing, the controller): every node answers its status and
    holds its etcd lease (so a queue created next is placed on all of them), exactly
    one reports itself controller, and each replica set etcd holds (none on a fresh
    cluster) has a leader that reports itself leader of that set at etcd's epoch."""
    statuses = {n.id: _node_status(n) for n in state.nodes}
    silent = [node for node, status in statuses.items() if status is None]
    if silent:
        return False, f"no status from {', '.join(silent)}", None
    unleased = [node for node, status in statuses.items()
                if status is not None and status.get("lease") is not True]
    if unleased:
        return False, f"{', '.join(unleased)} not registered in etcd yet", None
    controllers = [node for node, status in statuses.items()
                   if status is not None and status.get("controller") is True]
    if len(controllers) != 1:
        return False, ("no node reports itself controller" if not controllers else
                       f"several nodes report themselves controller: "
                       f"{', '.join(controllers)}"), None
    controller = controllers[0]
    found = _etcd_view(state)
    if found is None:
        return False, "no etcd member answers a read", controller
    for name, queue, doc in found:
        what = f"the replica set {name}" + (f" of {queue}" if queue else "")
        if doc["leader"] is None:
            return False, f"{what} has no leader yet", controller
        if _leader_report(name, doc, statuses) is None:
            return False, (f"{doc['leader']} does not report itself leader of {what} at "
                           f"epoch {doc['epoch']}"), controller
    return True, "", controller


# -- commands ----------------------------------------------------------------------------


def _say(message: str) -> None:
    print(f"ferrymq cluster: {message}", file=sys.stderr, flush=True)


def _data_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir).expanduser().absolute()


def _need_state(data_dir: Path) -> ClusterState:
    state = load_state(data_dir)
    if state is None:
        raise LocalClusterError(f"no cluster in {data_dir} (no {STATE_FILE}); start one "
                                f"with `ferrymq cluster up --data-dir {data_dir}`")
    return state


def _running(state: ClusterState) -> list[str]:
    return [r.name for r in state.records() if is_ours(r.pid, r.argv)]


def _wait_until(what: str, ready: Callable[[], bool], procs: Sequence[EtcdRecord | NodeRecord],
                deadline: float, describe: Callable[[], str] = lambda: "") -> None:
    """Poll ``ready`` until it holds; fail early, quoting its log, when one of ``procs``
    exits, and at ``deadline`` with ``describe()``."""
    while not ready():
        for rec in procs:
            if not is_ours(rec.pid, rec.argv):
                raise LocalClusterError(f"{rec.name} exited while starting; the end of "
                                        f"{rec.log}:\n{_log_tail(rec.log)}")
        if time.monotonic() >= deadline:
            detail = describe()
            raise LocalClusterError(f"{what} not ready in time" +
                                    (f": {detail}" if detail else ""))
        time.sleep(_POLL_INTERVAL_S)


def _start_record(data_dir: Path, state: ClusterState, rec: EtcdRecord | NodeRecord) -> None:
    from ferrymq._coordination._etcd_process import member_environment

    port = rec.client_port if isinstance(rec, EtcdRecord) else rec.port
    ports = [port, rec.peer_port] if isinstance(rec, EtcdRecord) else [port]
    for p in ports:
        if not _port_free(p):
            raise LocalClusterError(f"cannot start {rec.name}: port {p} on {_HOST} is in use")
    Path(rec.data_dir).parent.mkdir(parents=True, exist_ok=True)
    env = member_environment() if isinstance(rec, EtcdRecord) else _node_env()
    rec.pid = _spawn_detached(rec.argv, env, Path(rec.log))
    save_state(data_dir, state)
    _say(f"started {rec.name} (pid {rec.pid}, log {rec.log})")


def _settings_from(args: argparse.Namespace) -> Settings:
    nodes = args.nodes
    replicas = args.replicas if args.replicas is not None else min(_DEFAULT_REPLICAS_MAX, nodes)
    if replicas > nodes:
        raise _UsageError(f"--replicas {replicas} is more than --nodes {nodes}")
    mir = args.min_insync_replicas
    if mir is not None and mir > replicas:
        raise _UsageError(f"--min-insync-replicas {mir} is more than --replicas {replicas}")
    if args.port + nodes - 1 > 65535:
        raise _UsageError(f"--port {args.port} leaves no room for {nodes} nodes below 65536")
    return Settings(nodes=nodes, etcd_members=args.etcd_members, base_port=args.port,
                    replicas=replicas, min_insync_replicas=mir, durability=args.durability,
                    lease_ttl_seconds=args.lease_ttl_seconds, partitions=args.partitions)


def _cmd_up(args: argparse.Namespace) -> int:
    from ferrymq._coordination._etcd_process import (
        ETCD_INSTALL_HINT,
        etcd_binary,
        member_healthy,
    )

    settings = _settings_from(args)
    etcd_exe = etcd_binary()
    if etcd_exe is None:
        raise LocalClusterError(ETCD_INSTALL_HINT)
    data_dir = _data_dir(args)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LocalClusterError(f"cannot use --data-dir {data_dir}: "
                                f"{exc.strerror or exc}") from exc
    with _locked(data_dir):
        state = load_state(data_dir)
        if state is not None:
            running = _running(state)
            if running:
                raise LocalClusterError(
                    f"the cluster in {data_dir} is already running ({', '.join(running)}); "
                    "see `ferrymq cluster status`, or `ferrymq cluster start --node ID` "
                    "for a stopped member")
            if state.settings != settings or state.cluster != args.cluster:
                raise LocalClusterError(
                    f"{data_dir} holds a stopped cluster {state.cluster!r} made with "
                    f"{asdict(state.settings)}; run `up` with the same options to restart "
                    f"it, or `ferrymq cluster down --data-dir {data_dir} --purge` first")
            _say(f"restarting the stopped cluster {state.cluster!r} in {data_dir}")
        else:
            for i in range(settings.nodes):
                if not _port_free(settings.base_port + i):
                    raise LocalClusterError(
                        f"port {settings.base_port + i} on {_HOST} (for n{i + 1}) is in use; "
                        "choose another base with --port")
            state = _new_state(data_dir, args.cluster, settings, etcd_exe,
                               args.node_command or _default_node_command())
            save_state(data_dir, state)
        deadline = time.monotonic() + _HEALTHY_WAIT_S
        for m in state.etcd:
            _start_record(data_dir, state, m)
        _wait_until("etcd", lambda: all(member_healthy(m.client_url) for m in state.etcd),
                    state.etcd, deadline)
        for n in state.nodes:
            _start_record(data_dir, state, n)
        seen: list[tuple[bool, str, str | None]] = [(False, "", None)]

        def healthy() -> bool:
            seen[0] = _health(state)
            return seen[0][0]

        try:
            _wait_until("the cluster", healthy, state.records(), deadline,
                        lambda: seen[0][1])
        except LocalClusterError as exc:
            raise LocalClusterError(
                f"{exc}\nthe processes are left running for a look at their logs in "
                f"{data_dir / 'logs'}; stop them with `ferrymq cluster down --data-dir "
                f"{data_dir}`") from None
        controller = seen[0][2]
    print(f"cluster {state.cluster!r} is up in {data_dir} (controller {controller})")
    for n in state.nodes:
        print(f"{n.id}  {n.url}")
    print(f"etcd  {','.join(state.etcd_urls)}")
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    state = _need_state(_data_dir(args))
    doc = collect_status(state)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print(f"cluster {state.cluster!r} in {_data_dir(args)}\n")
        print(render_status(doc))
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    with _locked(data_dir):
        state = _need_state(data_dir)
        rec = state.find(args.node)
        stopped = _stop([rec])
        save_state(data_dir, state)
    _say(f"stopped {rec.name}" if stopped else f"{rec.name} was not running")
    return 0


def _etcd_call(state: ClusterState, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """One request to etcd's JSON gateway, at the first member that answers."""
    for m in state.etcd:
        if not is_ours(m.pid, m.argv):
            continue
        try:
            return _get_json(m.client_url + path, body)
        except OSError:
            continue
    raise LocalClusterError("no etcd member of this cluster answers")


def _decommission_key(state: ClusterState, node: str) -> str:
    from ferrymq._cluster._layout import Layout

    return base64.b64encode(Layout(state.cluster).decommissioned(node)).decode()


def _new_node(data_dir: Path, state: ClusterState, node_id: str) -> NodeRecord:
    """A node the cluster did not have: the next port after the highest, the same
    command and options as the others (``start`` of an unknown id adds it)."""
    if not _NODE_ID.fullmatch(node_id):
        raise LocalClusterError(f"no node or etcd member {node_id!r} in this cluster, and "
                                f"{node_id!r} is not a node id (n1 ... n{_NODES_MAX})")
    if len(state.nodes) >= _NODES_MAX:
        raise LocalClusterError(f"the cluster has {_NODES_MAX} nodes already")
    if not state.nodes:
        raise LocalClusterError("the cluster has no node to take a command line from")
    template = state.nodes[0].argv
    command = template[:template.index("--node-id")]
    port = max(n.port for n in state.nodes) + 1
    if port > 65535 or not _port_free(port):
        raise LocalClusterError(f"port {port} on {_HOST} (for {node_id}) is not free")
    rec = NodeRecord(id=node_id, host=_HOST, port=port,
                     data_dir=str(data_dir / "nodes" / node_id),
                     log=str(data_dir / "logs" / f"{node_id}.log"), argv=[])
    rec.argv = node_argv(command, rec, state)
    state.nodes.append(rec)
    save_state(data_dir, state)
    _say(f"adding {node_id} to the cluster on {rec.url}")
    return rec


def _cmd_start(args: argparse.Namespace) -> int:
    from ferrymq._coordination._etcd_process import member_healthy

    data_dir = _data_dir(args)
    with _locked(data_dir):
        state = _need_state(data_dir)
        try:
            rec = state.find(args.node)
        except LocalClusterError:
            rec = _new_node(data_dir, state, args.node)
        if is_ours(rec.pid, rec.argv):
            raise LocalClusterError(f"{rec.name} is already running (pid {rec.pid})")
        if isinstance(rec, NodeRecord):
            # Started again, it takes replicas again: a decommission of it is over.
            _etcd_call(state, "/v3/kv/deleterange",
                       {"key": _decommission_key(state, rec.id)})
        _start_record(data_dir, state, rec)
        deadline = time.monotonic() + _START_WAIT_S
        if isinstance(rec, NodeRecord):
            node = rec
            _wait_until(rec.name, lambda: _node_status(node) is not None, [rec], deadline,
                        lambda: f"{node.url}{_STATUS_PATH} does not answer")
        else:
            member = rec
            quorum = len(state.etcd) // 2 + 1
            running = sum(1 for m in state.etcd if is_ours(m.pid, m.argv))
            if running < quorum:
                # It cannot answer anything before a quorum runs (etcd serves no client
                # until it has published itself through Raft), so waiting would only
                # time out.
                _say(f"{rec.name} will serve once {quorum} of {len(state.etcd)} etcd "
                     f"members run ({running} do now): start another one")
            else:
                _wait_until(rec.name, lambda: member_healthy(member.client_url), [rec],
                            deadline, lambda: f"{member.client_url}/health is not healthy")
    print(f"{rec.name}  {rec.url if isinstance(rec, NodeRecord) else rec.client_url}")
    return 0


def _cmd_decommission(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    with _locked(data_dir):
        state = _need_state(data_dir)
        rec = state.find(args.node)
        if not isinstance(rec, NodeRecord):
            raise LocalClusterError(f"{rec.name} is an etcd member, not a node")
        others = [n for n in state.nodes if n.id != rec.id and is_ours(n.pid, n.argv)]
        if not others:
            raise LocalClusterError(f"{rec.id} is the only running node: there is "
                                    "nowhere to move its replicas")
        _etcd_call(state, "/v3/kv/put", {"key": _decommission_key(state, rec.id),
                                         "value": base64.b64encode(b"{}").decode()})
        _say(f"{rec.id} is being decommissioned: the controller moves its replicas to "
             "the other nodes, one at a time")
        deadline = time.monotonic() + args.timeout
        last = None
        while True:
            view = _etcd_view(state)
            holding = None if view is None else sorted(
                name for name, _, doc in view if rec.id in doc["replicas"])
            if holding is not None and holding != last:
                _say(f"{rec.id} still holds {len(holding)} replica"
                     f"{'s' if len(holding) != 1 else ''}"
                     + (f" ({', '.join(holding[:5])}{', ...' if len(holding) > 5 else ''})"
                        if holding else ""))
                last = holding
            if holding == []:
                break
            if time.monotonic() >= deadline:
                raise LocalClusterError(
                    f"{rec.id} still holds {len(holding or [])} replicas after "
                    f"{args.timeout:.0f} s; it keeps running (the moves go on); see "
                    "`ferrymq cluster status`")
            time.sleep(_DECOMMISSION_POLL_S)
        if not args.keep_running:
            _stop([rec])
            _say(f"stopped {rec.id}; `ferrymq cluster start --node {rec.id}` brings it "
                 "back (empty: it takes replicas anew)")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    data_dir = _data_dir(args)
    if load_state(data_dir) is None:
        _say(f"no cluster in {data_dir}; nothing to stop")
        return 0
    with _locked(data_dir):
        state = _need_state(data_dir)
        # Nodes first: a node that outlives etcd would only log failures until stopped.
        stopped = _stop(state.nodes)
        # etcd members one at a time: a leader told to stop hands its leadership to a
        # live peer first, and if that peer is stopping too the hand-over only ends at
        # etcd's request timeout (measured: `down` of 3 members took 7.3 s at once,
        # 0.1-0.2 s per member one by one).
        for member in state.etcd:
            stopped += _stop([member])
        save_state(data_dir, state)
        if args.purge:
            for sub in ("nodes", "etcd", "logs"):
                shutil.rmtree(data_dir / sub, ignore_errors=True)
            (data_dir / STATE_FILE).unlink(missing_ok=True)
            (data_dir / _LOCK_FILE).unlink(missing_ok=True)
    _say(f"stopped {', '.join(stopped)}" if stopped else "nothing was running")
    if args.purge:
        with contextlib.suppress(OSError):
            data_dir.rmdir()  # only when nothing else was in it
        _say(f"removed the cluster's data in {data_dir}")
    return 0


# -- command line ------------------------------------------------------------------------


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from {low} "
                                             f"to {high}")
        return int(text)

    return parse


def _cluster_name(text: str) -> str:
    # The rule `ferrymq node --cluster` applies: a name it would refuse must fail here,
    # before anything starts, not as every node exiting at start-up.
    if not _CLUSTER_NAME.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid cluster name (1 to 64 letters, digits, '-' or '_')")
    return text


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="the cluster's directory: state file, logs, every process's "
                        "data")


def add_cluster_parser(subparsers: argparse._SubParsersAction[Any]
                       ) -> None:
    """Add ``cluster`` and its subcommands; each sets ``func`` (takes the parsed
    arguments, returns the exit code)."""
    cluster = subparsers.add_parser(
        "cluster", help="run a local cluster (etcd and N nodes) in the background",
        description="Start, inspect and stop a whole Ferry cluster on this machine: etcd "
        "members and nodes as background processes, recorded in DATA_DIR/cluster.json. "
        "See docs/cluster.md.")
    commands = cluster.add_subparsers(dest="cluster_command", required=True,
                                      metavar="{up,status,stop,start,down}")
    up = commands.add_parser(
        "up", help="start etcd and the nodes, wait until healthy",
        description="Start the etcd members and N nodes in the background, wait until every "
        "node answers and a controller is elected (60 s at most), print the "
        "endpoints. On a data directory whose cluster was stopped, restart it.")
    _add_data_dir(up)
    up.add_argument("--nodes", type=_int_in(1, _NODES_MAX), default=3,
                    help="how many nodes: n1..nN (default: %(default)s)")
    up.add_argument("--port", type=_int_in(1, 65535), default=DEFAULT_BASE_PORT,
                    help="node n{i} listens on 127.0.0.1:PORT+i-1 (default: %(default)s)")
    up.add_argument("--etcd-members", type=int, choices=[1, 3], default=1,
                    help="etcd members on free ports (default: %(default)s)")
    up.add_argument("--cluster", type=_cluster_name, default=_DEFAULT_CLUSTER,
                    help="the cluster's name in etcd (default: %(default)s)")
    up.add_argument("--replicas", type=_int_in(1, _NODES_MAX), default=None,
                    help="replicas of each replica set (default: 3, or every node of a "
                    "smaller cluster)")
    up.add_argument("--min-insync-replicas", type=_int_in(1, _NODES_MAX), default=None,
                    help="in-sync replicas a write needs (default: the node's)")
    up.add_argument("--durability", choices=["sync", "async"], default=None,
                    help="sync: a write is acknowledged once the in-sync replicas have it; "
                    "async: once the leader has it (default: the node's)")
    up.add_argument("--partitions", type=_int_in(1, PARTITIONS_MAX), default=None,
                    help="partitions of a queue created without the ferry:partitions tag "
                    "(default: the node's, 1)")
    up.add_argument("--lease-ttl-seconds", type=_int_in(1, 3600), default=None,
                    help="each node's etcd lease: how long a dead node keeps its roles "
                    "(default: the node's)")
    up.set_defaults(func=functools.partial(run, _cmd_up), node_command=None)
    status = commands.add_parser("status", help="nodes, replica sets and etcd members",
                                 description="Show every node, replica set and etcd member.")
    _add_data_dir(status)
    status.add_argument("--json", action="store_true", help="print JSON instead of tables")
    status.set_defaults(func=functools.partial(run, _cmd_status))
    stop = commands.add_parser(
        "stop", help="stop one node (or etcd member)",
        description="Stop one process by its PID: SIGTERM, SIGKILL after 10 s.")
    _add_data_dir(stop)
    stop.add_argument("--node", required=True, metavar="ID",
                      help="a node id (n1) or an etcd member name (etcd1)")
    stop.set_defaults(func=functools.partial(run, _cmd_stop))
    start = commands.add_parser(
        "start", help="start one stopped node (or etcd member) again",
        description="Start a stopped or killed process again with the same command line and "
        "data, and wait until it answers.")
    _add_data_dir(start)
    start.add_argument("--node", required=True, metavar="ID",
                       help="a node id (n1) or an etcd member name (etcd1)")
    start.set_defaults(func=functools.partial(run, _cmd_start))
    decommission = commands.add_parser(
        "decommission", help="move every replica off one node, then stop it",
        description="Ask the controller to move every replica off a node (one at a time, "
        "under load: each new replica catches up before the old one is removed), wait "
        "until it holds none, then stop it.")
    _add_data_dir(decommission)
    decommission.add_argument("--node", required=True, metavar="ID", help="a node id (n1)")
    decommission.add_argument("--timeout", type=float, default=600.0, metavar="S",
                              help="give up waiting after this many seconds (default: "
                              "%(default)s; the moves go on)")
    decommission.add_argument("--keep-running", action="store_true",
                              help="leave the node running once it is empty")
    decommission.set_defaults(func=functools.partial(run, _cmd_decommission))
    down = commands.add_parser(
        "down", help="stop every node, then etcd",
        description="Stop every node, then every etcd member, by PID. Nothing in the data "
        "directory is removed unless --purge. Running it again is harmless.")
    _add_data_dir(down)
    down.add_argument("--purge", action="store_true",
                      help="also remove the cluster's data, logs and state file")
    down.set_defaults(func=functools.partial(run, _cmd_down))


def run(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one ``cluster`` command: its exit code, errors as one line on stderr."""
    try:
        return command(args)
    except _UsageError as exc:
        print(f"ferrymq cluster {args.cluster_command}: error: {exc}", file=sys.stderr)
        return 2
    except LocalClusterError as exc:
        print(f"ferrymq cluster {args.cluster_command}: {exc}", file=sys.stderr, flush=True)
        return 1


class _Parser(argparse.ArgumentParser):
    """A bad argument is one line, as in ``ferrymq``'s own parser."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def main(argv: Sequence[str] | None = None, *,
         node_command: Sequence[str] | None = None) -> int:
    """``ferrymq cluster ...`` on its own (``argv`` without ``cluster``).
    ``node_command`` replaces ``python -m ferrymq node`` (tests start stand-ins)."""
    parser = _Parser(prog="ferrymq")
    add_cluster_parser(parser.add_subparsers(dest="command", required=True,
                                             parser_class=_Parser))
    args = parser.parse_args(["cluster", *(sys.argv[1:] if argv is None else argv)])
    if node_command is not None:
        args.node_command = list(node_command)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
