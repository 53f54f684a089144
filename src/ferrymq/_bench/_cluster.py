"""The cluster peers of the bench: a local 3-node Ferry cluster with its etcd, started,
watched, failed over and stopped through ``ferrymq cluster``.

What belongs here: picking the nodes' ports, running ``ferrymq cluster up``, ``start``
and ``down`` as subprocesses pinned to the server's core (the processes they spawn
inherit the pin), reading the cluster's state with the same ``collect_status`` that
``ferrymq cluster status --json`` prints (in process: a Python start-up per poll would
cost more CPU than what it watches), which endpoints clients use, which core each
process runs on, and one failover round: SIGKILL the leader by PID, wait for a new
leader that commits, start the old one again, wait until the in-sync set is full. The
load and its measurements are the load generator's; the workloads are ``_runner``'s.

"The leader" is the leader of the bench queue's replica set: each queue lives on a
replica set of its own, created with the queue, so a fresh cluster has no leader at
all until the bench creates its queue. The bench queue is ``ClusterHandle.queue`` when
the runner names it, else the only queue there is (the runner holds one at a time:
it creates a queue, runs one load on it and deletes it).

Pinning. ``shared`` (the default) puts every node and etcd on the one core the single
server gets: the same hardware, so throughput and CPU per message compare directly.
``leader-alone`` gives the leader that core to itself and moves the followers and etcd
to the load generator's core: the nearest a 2-core machine comes to one machine per
node, for the leader's share of the work (the load generator then shares its core).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from ferrymq._bench._servers import PeerUnavailable, free_port, pin_prefix

__all__ = ["CLUSTER_PEERS", "PARTITION_PEERS", "PINNINGS", "ClusterHandle", "start_cluster"]

# Partitioned peers (issue 8's scaling measure): name -> (nodes, the bench queue's
# partitions, replicas of each). Clients are spread over every node, and node i runs on
# the server's core for odd i and on the load generator's for even i (etcd too): on a
# 2-core machine, ferry-p2's two nodes get a core each, as ferry-p1's one node gets the
# server's core.
PARTITION_PEERS: dict[str, tuple[int, int, int]] = {
    "ferry-p1": (1, 1, 1), "ferry-p2": (2, 2, 1),
    "ferry-p1r3": (3, 1, 3), "ferry-p3r3": (3, 3, 3),
}
# Peer name -> whether clients are spread over every node (what a load balancer does;
# followers forward to the leader) instead of all talking to the leader.
CLUSTER_PEERS: dict[str, bool] = {"ferry-cluster": False, "ferry-cluster-spread": True,
                                  **{name: True for name in PARTITION_PEERS}}
# See the module docstring.
PINNINGS = ("shared", "leader-alone")
# The cluster: 3 nodes, 3 replicas, sync durability (ferrymq node's default).
NODES = 3
# `cluster up` itself waits at most 60 s for health; this bounds the command around it.
UP_TIMEOUT_S = 90.0
# `cluster down` gives each process 10 s of SIGTERM, then SIGKILL; nodes go at once,
# etcd members one by one.
DOWN_TIMEOUT_S = 60.0
# `cluster start` waits at most 60 s for the node to answer.
START_TIMEOUT_S = 90.0
# One failover step (a new leader, its first commit, a full in-sync set again) that takes
# longer than this failed: the lease TTL is 2 s and an election a second more.
STEP_TIMEOUT_S = 60.0
# How often a failover step looks at the cluster: fine enough for the seconds a step
# takes, while each look is only an etcd read and a status request per live node.
POLL_S = 0.05
# A node's status request must not hang a poll on a node that stalls.
STATUS_TIMEOUT_S = 2.0
# Tries at three consecutive free ports for the nodes.
PORT_ATTEMPTS_MAX = 50
# How much of each node's log an error message quotes.
LOG_LINES = 8


def _ferrymq() -> list[str]:
    return [sys.executable, "-m", "ferrymq"]


_T = TypeVar("_T")


def _consecutive_free_ports(count: int) -> int:
    for _ in range(PORT_ATTEMPTS_MAX):
        base = free_port()
        if base + count - 1 > 65535:
            continue
        ok = True
        for port in range(base + 1, base + count):
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise PeerUnavailable(f"no {count} consecutive free ports on 127.0.0.1")


def _port_of(url: str) -> int:
    port = urlsplit(url).port
    if port is None:
        raise RuntimeError(f"node URL without a port: {url}")
    return port


def _node_status(url: str) -> dict[str, Any] | None:
    """A node's own ``GET /_ferry/status``, or None if it does not answer."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80,
                                      timeout=STATUS_TIMEOUT_S)
    try:
        conn.request("GET", "/_ferry/status")
        response = conn.getresponse()
        raw = response.read()
        if response.status != 200:
            return None
        doc = json.loads(raw)
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        conn.close()
    return doc if isinstance(doc, dict) else None


@dataclass
class ClusterHandle:
    """A running local cluster; the same questions as ``ServerHandle`` answers, plus the
    failover steps."""

    name: str
    data_dir: Path
    cpu: int | None
    spread: bool
    log_path: Path
    pinning: str = "shared"
    # The load generator's core, where leader-alone pinning moves the followers.
    side_cpu: int | None = None
    # The bench queue (see the module docstring); None: the only queue there is.
    queue: str | None = None
    # CreateQueue's tags for the bench queue (the partitioned peers').
    queue_tags: dict[str, str] | None = None
    # The node leader-alone pinning last gave the server's core to.
    _pinned: str | None = None

    # ---- state -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``ferrymq cluster status --json`` prints."""
        from ferrymq._cluster._local import LocalClusterError, collect_status, load_state

        try:
            state = load_state(self.data_dir)
        except LocalClusterError as exc:
            raise RuntimeError(f"{self.name}: {exc}") from exc
        if state is None:
            raise RuntimeError(f"{self.name}: no cluster in {self.data_dir}")
        return collect_status(state)

    def _partition(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The bench queue's replica set in a status document; {} when there is none
        (no queue yet) or it cannot be told which one it is (several queues, and
        ``queue`` not set)."""
        parts = doc.get("partitions") or []
        if self.queue is not None:
            return next((p for p in parts if p.get("queue") == self.queue), {})
        return dict(parts[0]) if len(parts) == 1 else {}

    def leader(self, doc: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """The node entry (id, url, pid, alive, leads) of the leader etcd names for the
        bench queue's replica set, if alive."""
        doc = doc if doc is not None else self.status()
        leader = self._partition(doc).get("leader")
        for node in doc["nodes"]:
            if node["id"] == leader and node["alive"]:
                return dict(node)
        return None

    def roles(self) -> dict[str, str | None]:
        """Each node's part in the bench queue's replica set (leader, follower), None
        for a node outside it, or for every node while there is no bench queue."""
        doc = self.status()
        part = self._partition(doc)
        replicas = part.get("replicas") or []
        return {n["id"]: ("leader" if n["id"] == part.get("leader") else "follower")
                if n["id"] in replicas else None for n in doc["nodes"]}

    @property
    def port(self) -> int:
        """The leader's port, for the orchestrator's own calls (create/delete queue)."""
        return self.endpoints()[0][0]

    def endpoints(self) -> tuple[list[int], bool]:
        """Ports for the load generator, the leader's first, and whether to spread.

        Asked right before each load starts, once its queue exists: which is when
        leader-alone pinning can first tell the leader apart, so it is applied here
        (a no-op when the same leader is pinned already)."""
        doc = self.status()
        leader = self.leader(doc)
        if leader is not None and leader["id"] != self._pinned:
            self.apply_pinning(doc)
        alive = [_port_of(n["url"]) for n in doc["nodes"] if n["alive"]]
        if not alive:
            raise RuntimeError(f"{self.name}: no node is running")
        first = _port_of(leader["url"]) if leader else alive[0]
        return [first, *(p for p in alive if p != first)], self.spread

    def processes(self) -> tuple[dict[str, int], dict[str, int]]:
        """(the nodes' PIDs, etcd's PIDs), by name: server CPU is summed over the nodes;
        etcd is measured beside them."""
        doc = self.status()
        nodes = {n["id"]: int(n["pid"]) for n in doc["nodes"] if n["alive"]}
        etcd = {m["name"]: int(m["pid"]) for m in doc["etcd"] if m["alive"]}
        return nodes, etcd

    def alive(self) -> bool:
        try:
            doc = self.status()
        except RuntimeError:
            return False
        return all(n["alive"] for n in doc["nodes"]) and all(m["alive"] for m in doc["etcd"])

    def log_tail(self, lines: int = LOG_LINES) -> str:
        out = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            try:
                tail = log.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            out.append(f"--- {log.name}")
            out.extend(tail)
        return "\n".join(out)

    def apply_pinning(self, doc: dict[str, Any] | None = None) -> None:
        """Under ``leader-alone``, put the bench queue's leader alone on ``cpu`` and
        every other process on ``side_cpu``: every thread of each, since a process's
        affinity is its threads'. Processes start pinned to ``cpu`` (shared) through
        ``taskset``, and stay so while there is no bench queue (no leader to tell
        apart)."""
        if self.cpu is None or self.side_cpu is None:
            return
        if self.name in PARTITION_PEERS:
            doc = doc if doc is not None else self.status()
            for index, proc in enumerate(doc["nodes"]):
                if proc["alive"]:
                    _pin_threads(int(proc["pid"]), self.cpu if index % 2 == 0
                                 else self.side_cpu)
            for proc in doc["etcd"]:
                if proc["alive"]:
                    _pin_threads(int(proc["pid"]), self.side_cpu)
            return
        if self.pinning != "leader-alone":
            return
        doc = doc if doc is not None else self.status()
        leader = self.leader(doc)
        if leader is None:
            return
        self._pinned = leader["id"]
        for proc in [*doc["nodes"], *doc["etcd"]]:
            if not proc["alive"]:
                continue
            on_own = leader is not None and proc.get("id") == leader["id"]
            _pin_threads(int(proc["pid"]), self.cpu if on_own else self.side_cpu)

    # ---- commands ------------------------------------------------------------------

    def _cluster_command(self, args: list[str], timeout_s: float) -> None:
        argv = pin_prefix(self.cpu) + _ferrymq() + ["cluster", *args,
                                                    "--data-dir", str(self.data_dir)]
        with open(self.log_path, "ab") as log:
            try:
                done = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, timeout=timeout_s,
                                      check=False)
            except subprocess.TimeoutExpired as exc:
                raise RuntimeError(f"`ferrymq cluster {args[0]}` did not finish within "
                                   f"{timeout_s:.0f} s") from exc
        if done.returncode != 0:
            raise RuntimeError(f"`ferrymq cluster {' '.join(args)}` failed "
                               f"({done.returncode}); see {self.log_path}:\n"
                               + "\n".join(self.log_path.read_text(errors="replace")
                                           .splitlines()[-LOG_LINES:]))

    def stop(self) -> None:
        """``cluster down``; whatever still runs after it is killed by its PID (checked
        against its recorded command line first), so no process outlives the bench."""
        from ferrymq._cluster._local import LocalClusterError, is_ours, load_state

        try:
            self._cluster_command(["down"], DOWN_TIMEOUT_S)
        except RuntimeError as exc:
            print(f"bench: {self.name}: {exc}", flush=True)
        try:
            state = load_state(self.data_dir)
        except LocalClusterError:
            state = None
        left = [] if state is None else [r for r in state.records()
                                         if r.pid is not None and is_ours(r.pid, r.argv)]
        for rec in left:
            print(f"bench: {self.name}: {rec.name} (pid {rec.pid}) outlived `cluster "
                  "down`; SIGKILL", flush=True)
            if rec.pid is not None:
                os.kill(rec.pid, signal.SIGKILL)
        # The nodes' stores and etcd's data are large after a drain and of no use once
        # the run is over; logs and cluster.json stay for a look afterwards.
        for sub in ("nodes", "etcd"):
            shutil.rmtree(self.data_dir / sub, ignore_errors=True)

    # ---- failover ------------------------------------------------------------------

    def _wait(self, what: str, ready: Callable[[], _T | None],
              timeout_s: float = STEP_TIMEOUT_S) -> _T:
        """Poll ``ready()`` until it returns something other than None."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = ready()
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{self.name}: {what} not within {timeout_s:.0f} s:\n"
                                   f"{self.log_tail()}")
            time.sleep(POLL_S)

    def wait_in_sync(self) -> None:
        """Until every node runs and, once there is a bench queue, its replica set has a
        live leader and an in-sync set that holds every node."""

        def full() -> bool | None:
            doc = self.status()
            if not all(n["alive"] for n in doc["nodes"]):
                return None
            if not doc.get("partitions"):
                return True  # no queue yet: nothing to be in sync
            parts = [p for p in doc["partitions"]
                     if self.queue is None or p.get("queue") == self.queue]
            ok = bool(parts) and all(
                p.get("leader") and len(p.get("isr") or []) == len(p.get("replicas") or [])
                for p in parts) and self.leader(doc) is not None
            return True if ok else None

        self._wait("a full in-sync set", full)

    def fail_over(self, record: dict[str, Any]) -> None:
        """One round: SIGKILL the leader, wait for a new leader that commits, start the
        old one again, wait until every node is in sync. What happened is written into
        ``record`` as it happens, so a round that fails after its kill still says when
        the kill was. Times are ``perf_counter_ns`` (CLOCK_MONOTONIC, the load
        generator's clock too)."""
        from ferrymq._cluster._local import LocalClusterError, is_ours, load_state

        doc = self.status()
        old = self.leader(doc)
        if old is None:
            raise RuntimeError(f"{self.name}: no live leader of the bench queue's replica "
                               f"set to kill ({len(doc.get('partitions') or [])} replica "
                               "sets; with several, set ClusterHandle.queue)")
        try:
            state = load_state(self.data_dir)
            rec = state.find(old["id"]) if state is not None else None
        except LocalClusterError as exc:
            raise RuntimeError(f"{self.name}: {exc}") from exc
        if rec is None or rec.pid != old["pid"] or not is_ours(rec.pid, rec.argv):
            raise RuntimeError(f"{self.name}: the leader's PID {old['pid']} is not the "
                               "node recorded in cluster.json")
        kill_ns = time.perf_counter_ns()
        os.kill(old["pid"], signal.SIGKILL)
        record.update(killed=old["id"], killed_pid=old["pid"], kill_ns=kill_ns)

        def elected() -> dict[str, Any] | None:
            node = self.leader()
            return node if node is not None and node["id"] != old["id"] else None

        new = self._wait("a new leader", elected)
        elected_ns = time.perf_counter_ns()
        record.update(new_leader=new["id"], elected_ms=(elected_ns - kill_ns) / 1e6)
        first_commit: list[int] = []

        partition = self._partition(doc).get("partition")

        def committing() -> bool | None:
            status = _node_status(new["url"])
            parts = status.get("partitions") if status else None
            mine = parts.get(partition) if isinstance(parts, dict) else None
            if not isinstance(mine, dict) or mine.get("role") != "leader":
                return None
            first_commit.append(int(mine.get("commit_seq") or 0))
            return True if first_commit[-1] > first_commit[0] else None

        # The old node is started only once the new leader commits, so its start-up (on
        # the same core) does not slow the recovery being measured.
        self._wait(f"commits on the new leader {new['id']}", committing)
        self._cluster_command(["start", "--node", old["id"]], START_TIMEOUT_S)
        # The killed leader had written entries its followers had not acknowledged: its
        # log diverged, and it rejoins through a snapshot of the new leader's store.
        self.wait_in_sync()
        record["in_sync_ms"] = (time.perf_counter_ns() - kill_ns) / 1e6
        self.apply_pinning()  # a new leader: the next round starts pinned as the first


def _pin_threads(pid: int, cpu: int) -> None:
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return  # it ended meanwhile
    for tid in tids:
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(tid, {cpu})


def start_cluster(name: str, bench_dir: Path, cpu: int | None, *,
                  pinning: str = "shared", side_cpu: int | None = None) -> ClusterHandle:
    """``ferrymq cluster up --nodes 3`` on free ports, pinned to ``cpu`` (``pinning``:
    see the module docstring); returns once it is healthy (every node answers, a
    controller is elected; there is no replica set before the bench creates a
    queue)."""
    from ferrymq._coordination import ETCD_INSTALL_HINT, etcd_binary

    if pinning not in PINNINGS:
        raise ValueError(f"unknown pinning {pinning!r}")
    if etcd_binary() is None:
        raise PeerUnavailable(ETCD_INSTALL_HINT.splitlines()[0])
    nodes, partitions, replicas = PARTITION_PEERS.get(name, (NODES, 1, NODES))
    base = _consecutive_free_ports(nodes)
    data_dir = bench_dir / "data" / f"{name}-{base}"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    logs = bench_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    handle = ClusterHandle(name, data_dir, cpu, CLUSTER_PEERS[name],
                           logs / f"{name}-{base}.log", pinning, side_cpu)
    if name in PARTITION_PEERS:
        handle.queue_tags = {"ferry:partitions": str(partitions),
                             "ferry:replicas": str(replicas)}
    try:
        handle._cluster_command(["up", "--nodes", str(nodes), "--port", str(base)],
                                UP_TIMEOUT_S)
        handle.wait_in_sync()
        handle.apply_pinning()
    except RuntimeError as exc:
        handle.stop()
        raise PeerUnavailable(f"{name} did not start: {exc}") from exc
    except BaseException:
        handle.stop()
        raise
    return handle
