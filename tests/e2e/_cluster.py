"""Harness for cluster fault tests: a real local cluster (etcd and ``ferrymq node``
processes) run through the real ``ferrymq cluster`` command line, and the faults a test
injects into it.

What belongs here: running ``ferrymq cluster up|status|start|stop|down`` as a
subprocess, signalling one recorded process by its PID (SIGKILL, SIGSTOP, SIGCONT),
reading who leads (etcd's record, each node's ``/_ferry/status``, etcd's own Raft
leader), bounded waits, and the finaliser that stops every process a test started.
No assertion about the cluster's behaviour lives here; those are the tests'.

Each queue lives on a replica set of its own, placed when the queue is created: etcd's
catalog entry ``queues/<queue>`` names its partition, ``partitions/<partition>`` holds
the set's ``{leader, epoch, replicas, isr}``, and a node reports each replica set it
holds under ``partitions`` in its status. So everything about leaders here is asked
of one queue (or of every queue there is).

Every PID signalled comes from the cluster's state file and is checked against the
command line recorded for it (``_local.is_ours``), so a PID the kernel recycled is never
signalled. Every PID the harness ever saw is remembered, so the finaliser also stops a
process the state file no longer names (the state file records only the latest PID).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

from _ports import free_base_port

from ferrymq._cluster._catalog import DELETED, decode_entry
from ferrymq._cluster._layout import Layout, decode_state
from ferrymq._cluster._local import (
    ClusterState,
    EtcdRecord,
    LocalClusterError,
    NodeRecord,
    is_ours,
    load_state,
)
from ferrymq._replication._election import PartitionState

__all__ = [
    "ClusterError",
    "LocalCluster",
    "local_cluster",
]

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
_CLUSTER = "ferry"
# A `cluster` command: `up` waits up to 60 s for health and `start` up to 60 s for a
# status answer; past this the command itself hangs, which is a bug to see, not wait for.
_CLI_TIMEOUT_S = 90.0
# One probe (a node's status, etcd's range or Raft status) must not hang a poll on a
# process that is paused (SIGSTOP): its kernel still accepts the connection and then
# nothing answers.
_PROBE_TIMEOUT_S = 0.5
# Waits poll this often: one loopback request per process per poll.
_POLL_S = 0.05
# After SIGKILL a process is gone within milliseconds unless stuck in the kernel; this
# bounds the finaliser's wait for that.
_KILL_WAIT_S = 5.0
# How much of each log a failure message quotes.
_LOG_TAIL_BYTES = 3000


class ClusterError(RuntimeError):
    """A cluster command failed or a wait ran out; the message says what was seen."""


def _request_json(url: str, body: dict[str, Any] | None = None,
               timeout_s: float = _PROBE_TIMEOUT_S) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            parsed = json.loads(resp.read())
    # URLError, HTTPError and timeouts are OSErrors; a garbled answer is an
    # HTTPException, bad JSON a ValueError.
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise OSError(f"{url}: {exc!r}") from exc
    if not isinstance(parsed, dict):
        raise OSError(f"{url}: not a JSON object")
    return parsed


class LocalCluster:
    """One local cluster in ``data_dir``; see the module docstring."""

    def __init__(self, data_dir: Path, *, nodes: int = 3, etcd_members: int = 1,
                 lease_ttl_s: int = 2) -> None:
        self.data_dir = data_dir
        self.nodes = nodes
        self.etcd_members = etcd_members
        self.lease_ttl_s = lease_ttl_s
        self.base_port = free_base_port(nodes)
        self._layout = Layout(_CLUSTER)
        # Every (pid, argv) seen in the state file, for the finaliser.
        self._seen: dict[int, list[str]] = {}
        self._state: ClusterState | None = None

    # ---- the command line -----------------------------------------------------------

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``ferrymq cluster ARGS --data-dir D``; a failure raises with its stderr."""
        # This checkout's Ferry first; an inherited PYTHONPATH is kept after it, and the
        # nodes inherit the result from `cluster up`/`start`.
        path = [str(REPO_ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "ferrymq", "cluster", *args,
                 "--data-dir", str(self.data_dir)],
                env=env, capture_output=True, text=True, timeout=_CLI_TIMEOUT_S, check=False)
        finally:
            self._remember()
        if check and done.returncode != 0:
            raise ClusterError(f"`ferrymq cluster {' '.join(args)}` exited "
                               f"{done.returncode}:\n{done.stderr}\n{self.logs()}")
        return done

    def up(self) -> None:
        self.cli("up", "--nodes", str(self.nodes), "--port", str(self.base_port),
                 "--etcd-members", str(self.etcd_members),
                 "--lease-ttl-seconds", str(self.lease_ttl_s))

    def down(self) -> None:
        # A paused process would sit out `down`'s whole SIGTERM grace (10 s).
        self.resume_all()
        self.cli("down")

    def start(self, name: str) -> None:
        """``cluster start --node NAME``: returns once it answers (a node) or is healthy
        (an etcd member with a quorum)."""
        self.cli("start", "--node", name)

    def stop(self, name: str) -> None:
        """``cluster stop --node NAME``: SIGTERM, SIGKILL after 10 s."""
        self.cli("stop", "--node", name)

    def status(self) -> dict[str, Any]:
        """``cluster status --json``. It asks every node with a 1 s timeout, so a call
        with a paused node takes a second; timing-sensitive polls use ``partition``."""
        doc = json.loads(self.cli("status", "--json").stdout)
        if not isinstance(doc, dict):
            raise ClusterError(f"status is not an object: {doc!r}")
        return doc

    # ---- the state file -------------------------------------------------------------

    def _remember(self) -> None:
        try:
            state = load_state(self.data_dir)
        except LocalClusterError:
            return  # unreadable: the CLI command that wrote it reports why
        if state is None:
            return
        self._state = state
        for rec in state.records():
            if rec.pid is not None:
                self._seen[rec.pid] = list(rec.argv)

    def state(self) -> ClusterState:
        self._remember()
        if self._state is None:
            raise ClusterError(f"no cluster state in {self.data_dir}")
        return self._state

    def record(self, name: str) -> EtcdRecord | NodeRecord:
        return self.state().find(name)

    def node_ids(self) -> list[str]:
        return [n.id for n in self.state().nodes]

    def urls(self) -> list[str]:
        return [n.url for n in self.state().nodes]

    def url(self, node: str) -> str:
        rec = self.record(node)
        if not isinstance(rec, NodeRecord):
            raise ClusterError(f"{node} is not a node")
        return rec.url

    def pid(self, name: str) -> int:
        """The running PID of ``name``, checked against its recorded command line."""
        rec = self.record(name)
        if rec.pid is None or not is_ours(rec.pid, rec.argv):
            raise ClusterError(f"{name} is not running (recorded pid {rec.pid})")
        return rec.pid

    # ---- faults ---------------------------------------------------------------------

    def signal(self, name: str, sig: signal.Signals) -> int:
        pid = self.pid(name)
        os.kill(pid, sig)
        return pid

    def kill9(self, *names: str) -> None:
        """SIGKILL every one of ``names`` at once (a crash, not a stop; several crash
        together, as in a power loss) and return once all are gone."""
        victims = [(name, self.record(name).argv, self.signal(name, signal.SIGKILL))
                   for name in names]
        self.wait_for(f"{', '.join(names)} gone",
                      lambda: not any(is_ours(pid, argv) for _, argv, pid in victims),
                      _KILL_WAIT_S)

    def pause(self, node: str) -> None:
        self.signal(node, signal.SIGSTOP)

    def resume(self, node: str) -> None:
        self.signal(node, signal.SIGCONT)

    def resume_all(self) -> None:
        for pid, argv in self._seen.items():
            if is_ours(pid, argv):
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    # ---- observation -----------------------------------------------------------------

    def node_status(self, node: str) -> dict[str, Any] | None:
        """The node's ``GET /_ferry/status``, or None if it does not answer promptly."""
        try:
            return _request_json(self.url(node) + "/_ferry/status")
        except OSError:
            return None

    def _etcd(self, key: bytes, *, prefix: bool = False) -> list[tuple[bytes, bytes]] | None:
        """The key (or every key under the prefix ``key``) with its value, read from the
        first etcd member that answers; None if none does."""
        query = {"key": base64.b64encode(key).decode()}
        if prefix:
            query["range_end"] = base64.b64encode(key[:-1] + bytes([key[-1] + 1])).decode()
        for member in self.state().etcd:
            if member.pid is None or not is_ours(member.pid, member.argv):
                continue
            try:
                doc = _request_json(member.client_url + "/v3/kv/range", query)
            except OSError:
                continue
            return [(base64.b64decode(kv["key"]), base64.b64decode(kv.get("value", "")))
                    for kv in doc.get("kvs") or []]
        return None

    def replica_set(self, queue: str) -> tuple[str, PartitionState] | None:
        """(its partition, the replica set as etcd holds it) of ``queue``: what the
        placing node and then the controller decided. None if no etcd member answers
        or the queue has no replica set (not created, or deleted)."""
        entries = self._etcd(self._layout.queue(queue))
        if not entries:
            return None
        entry = decode_entry(queue, entries[0][1])
        if entry.partition is None or entry.status == DELETED:
            return None
        states = self._etcd(self._layout.partition(entry.partition))
        if not states:
            return None
        return entry.partition, decode_state(states[0][1])

    def replica_sets(self) -> dict[str, tuple[str, PartitionState]] | None:
        """Every queue's ``replica_set``, read in one range (one etcd revision); None if
        no etcd member answers."""
        kvs = self._etcd(self._layout.root, prefix=True)
        if kvs is None:
            return None
        layout = self._layout
        states = {layout.name_of(layout.partitions, key): decode_state(value)
                  for key, value in kvs if key.startswith(layout.partitions)}
        found: dict[str, tuple[str, PartitionState]] = {}
        for key, value in kvs:
            if not key.startswith(layout.queues):
                continue
            entry = decode_entry(layout.name_of(layout.queues, key), value)
            if entry.status == DELETED:
                continue
            for index, partition in enumerate(entry.partitions):
                if partition in states:
                    # A queue of several partitions: one row per partition, "queue/i".
                    name = entry.name if len(entry.partitions) == 1 \
                        else f"{entry.name}/{index}"
                    found[name] = (partition, states[partition])
        return found

    def partition(self, queue: str) -> PartitionState | None:
        """``queue``'s replica set as etcd holds it, or None (see ``replica_set``)."""
        found = self.replica_set(queue)
        return None if found is None else found[1]

    def report(self, node: str, partition: str) -> dict[str, Any] | None:
        """What ``node`` says of its replica of ``partition`` (its status's
        ``partitions[partition]``), or None if it does not answer or holds none."""
        status = self.node_status(node)
        parts = status.get("partitions") if status else None
        found = parts.get(partition) if isinstance(parts, dict) else None
        return found if isinstance(found, dict) else None

    def leads(self, node: str, partition: str, epoch: int) -> bool:
        """Whether ``node`` reports itself leader of ``partition`` at ``epoch``."""
        mine = self.report(node, partition)
        return mine is not None and mine.get("role") == "leader" and mine.get("epoch") == epoch

    def client_url(self, member: str) -> str:
        rec = self.record(member)
        if not isinstance(rec, EtcdRecord):
            raise ClusterError(f"{member} is not an etcd member")
        return rec.client_url

    def running(self, name: str) -> bool:
        rec = self.record(name)
        return is_ours(rec.pid, rec.argv)

    def etcd_leader(self) -> str:
        """The etcd member that is Raft leader now (from each member's
        ``/v3/maintenance/status``: its own id and the leader's id)."""
        ids: dict[str, str] = {}
        leaders: set[str] = set()
        for member in self.state().etcd:
            if member.pid is None or not is_ours(member.pid, member.argv):
                continue
            try:
                doc = _request_json(member.client_url + "/v3/maintenance/status", {})
            except OSError:
                continue
            header = doc.get("header") or {}
            ids[str(header.get("member_id"))] = member.name
            if str(doc.get("leader", "0")) != "0":
                leaders.add(str(doc["leader"]))
        named = [ids[leader] for leader in leaders if leader in ids]
        if len(named) != 1:
            raise ClusterError(f"no single etcd leader: members {ids}, leaders {leaders}")
        return named[0]

    def etcd_leader_other_than(self, member: str) -> str | None:
        """The etcd leader if there is one and it is not ``member``, else None."""
        try:
            leader = self.etcd_leader()
        except ClusterError:
            return None
        return None if leader == member else leader

    def wait_for(self, what: str, ready: Callable[[], T | None], timeout_s: float) -> T:
        """Poll ``ready`` until it returns something other than None or False; raise
        with ``what`` after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = ready()
            if value is not None and value is not False:
                return value
            if time.monotonic() >= deadline:
                raise ClusterError(f"{what}: not within {timeout_s:g} s\n{self.logs()}")
            time.sleep(_POLL_S)

    def leader(self, queue: str, timeout_s: float = 15.0, *, other_than: str | None = None,
               epoch_above: int = -1) -> PartitionState:
        """Once etcd names a leader of ``queue``'s replica set (other than
        ``other_than``, of an epoch above ``epoch_above``) whose node reports itself
        leader of that set at that epoch: that state."""
        def ready() -> PartitionState | None:
            found = self.replica_set(queue)
            if found is None:
                return None
            partition, ps = found
            if ps.leader is None or ps.leader == other_than or ps.epoch <= epoch_above:
                return None
            return ps if self.leads(ps.leader, partition, ps.epoch) else None
        return self.wait_for(f"a leader of {queue} other than {other_than} above epoch "
                             f"{epoch_above}", ready, timeout_s)

    def in_sync(self, timeout_s: float = 30.0, queues: Sequence[str] | None = None
                ) -> dict[str, PartitionState]:
        """Once, for each of ``queues`` (default: every queue there is; none on a fresh
        cluster), every replica is in the in-sync set etcd holds, its leader leads that
        epoch, and every follower says it follows that epoch with a log reaching the
        commit the leader reported just before: queue -> that state.

        The followers are asked themselves because the leader's own lag figures are
        what the follower's previous process acknowledged until the new one answers
        (a follower restarted with an empty disk shows lag 0 for a moment)."""
        def synced(partition: str, ps: PartitionState) -> bool:
            if ps.leader is None or set(ps.isr) != set(ps.replicas):
                return False
            mine = self.report(ps.leader, partition)
            if mine is None or mine.get("role") != "leader" or mine.get("epoch") != ps.epoch:
                return False
            commit = mine.get("commit_seq")
            if not isinstance(commit, int):
                return False
            for node in set(ps.replicas) - {ps.leader}:
                theirs = self.report(node, partition)
                if theirs is None or theirs.get("role") != "follower" \
                        or theirs.get("epoch") != ps.epoch:
                    return False
                position = theirs.get("position") or [0, 0]
                if not isinstance(position[1], int) or position[1] < commit:
                    return False
            return True

        def ready() -> dict[str, PartitionState] | None:
            sets = self.replica_sets()
            if sets is None or (queues is not None and not set(queues) <= set(sets)):
                return None
            chosen = {q: sets[q] for q in (sets if queues is None else queues)}
            if not all(synced(partition, ps) for partition, ps in chosen.values()):
                return None
            # A dict, never None: "in sync" holds of a cluster without queues too.
            return {q: ps for q, (_, ps) in chosen.items()}
        return self.wait_for(f"every replica of {'every queue' if queues is None else queues}"
                             " in sync", ready, timeout_s)

    def logs(self) -> str:
        """The end of every process's log, for a failure message."""
        parts: list[str] = []
        state = self._state
        if state is None:
            return ""
        for rec in state.records():
            try:
                with open(rec.log, "rb") as fh:
                    fh.seek(0, os.SEEK_END)
                    fh.seek(max(0, fh.tell() - _LOG_TAIL_BYTES))
                    tail = fh.read().decode("utf-8", "replace")
            except OSError:
                tail = "(no log)"
            parts.append(f"--- {rec.log} ---\n{tail}")
        return "\n".join(parts)

    def log_size(self, name: str) -> int:
        """Bytes in ``name``'s log now: where ``log_text`` of what follows starts."""
        try:
            return Path(self.record(name).log).stat().st_size
        except FileNotFoundError:
            return 0

    def log_text(self, name: str, since: int = 0) -> str:
        """``name``'s log (every run of the process appends to it), from byte ``since``."""
        with open(self.record(name).log, "rb") as fh:
            fh.seek(since)
            return fh.read().decode("utf-8", "replace")

    # ---- the finaliser -----------------------------------------------------------------

    def kill_everything(self) -> list[int]:
        """SIGKILL every process of this cluster the harness ever saw that still runs
        its recorded command line (SIGCONT first: a paused one must be able to die
        promptly); returns their PIDs."""
        self._remember()
        alive = [(pid, argv) for pid, argv in self._seen.items() if is_ours(pid, argv)]
        for pid, _ in alive:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + _KILL_WAIT_S
        while time.monotonic() < deadline and any(is_ours(p, a) for p, a in alive):
            time.sleep(_POLL_S)
        return [pid for pid, _ in alive]


@contextmanager
def local_cluster(data_dir: Path, **options: Any) -> Iterator[LocalCluster]:
    """A cluster that is up for the block and stopped after it, whatever happened:
    ``cluster down``, then SIGKILL of anything of it still running."""
    cluster = LocalCluster(data_dir, **options)
    try:
        cluster.up()
        yield cluster
    finally:
        try:
            cluster.down()
        except (ClusterError, subprocess.TimeoutExpired) as exc:
            print(f"cluster down failed: {exc}", file=sys.stderr)
        left = cluster.kill_everything()
        if left:
            print(f"killed processes `down` left running: {left}", file=sys.stderr)
