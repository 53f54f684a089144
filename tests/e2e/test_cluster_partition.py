"""End-to-end: a network partition that isolates a replica set's leader from the
other nodes and from etcd, on real ``ferrymq node`` processes (issue 7, "must show" 3).

Three nodes and one etcd member each run in a network namespace of their own, all on
one bridge (``_netns``); a fifth namespace on it holds the majority's client. Each
queue has a replica set of its own (all three nodes): ``part-iso``'s leader is the
node the test isolates, and ``part-maj``'s leader is whichever node the cluster
chose (the same one or another). Two W1 workloads run through the whole test, both
recorded in one history by this process (their threads run inside the namespaces, see
``_netns``):

- the *isolated* client, in ``part-iso``'s leader's own namespace, talking only to
  that node, on ``part-iso``: it stays connected to the leader throughout, so it sees
  what the isolated side answers;
- the *majority* client, in its own namespace, talking to the two other nodes, on
  ``part-maj``; and during the partition, from the same namespace, single recorded
  sends to ``part-iso`` through those nodes (probes), so the majority's writes to the
  isolated leader's replica set are seen whichever node leads ``part-maj``.

The partition cuts the leader's link to the bridge. Then:

1. The majority elects a leader of ``part-iso``'s replica set at a later epoch (the
   other nodes' ``/_ferry/status`` and etcd's record agree) and acknowledges a send
   to ``part-iso`` again, both within ``MAJORITY_WITHIN_S``.
2. The isolated side acknowledges no write it was sent while cut off. A *write* here
   is a ``send``, a ``receive`` that returned a message, or a visibility change entry:
   each always changes state (stores a message, starts a lease, moves one), so an
   ``ok`` one is an entry its node committed. (Deletes are counted, not judged:
   deleting a message that is already gone succeeds without writing, SQS's rule.) The
   rule, over the isolated client's writes invoked at or after ``t_cut`` (the link is
   down): none is ``ok`` if it ended by ``t_heal``, nor if it was invoked at least
   ``PENDING_AGE_S`` before ``t_heal``. Why none can be: the old leader executed each
   of them as leader of its epoch, whose in-sync set is all three nodes (shrinking it
   is a transaction in etcd, which it cannot reach), so each entry needs both other
   nodes' acknowledgements. Until the heal none can arrive: that is the partition.
   After it, none is sent, because both nodes promised the successor's epoch (the
   controller's fence) before it was elected, and a replica refuses appends of an
   older epoch: that is fencing. The old leader does not keep its clients waiting for
   the heal: a write not committed within ``COMMIT_WAIT_MS`` is answered 503 (uncertain,
   as a timeout would be); some writes must have been refused.
   This is stronger than "no ``ok`` after the successor's first ``ok``": it starts at
   the cut, not at the election.
3. After the heal the old leader reports ``follower`` of the new epoch, every node is
   in both in-sync sets with no lag, both queues drain (the isolated one through the old
   leader, which now forwards), and the checker finds nothing acknowledged lost (P1)
   and no other violation.

The history is written to ``tmp_path``; a failing run prints its path, the checker's
report and every process's log tail.
"""

from __future__ import annotations

import base64
import functools
import json
import socket
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from ferrymq._cluster._catalog import decode_entry
from ferrymq._cluster._layout import Layout, decode_state
from ferrymq._coordination import ETCD_INSTALL_HINT, etcd_binary
from ferrymq._coordination._etcd_process import (
    EtcdMember,
    member_argv,
    member_environment,
)
from ferrymq._replication._election import PartitionState
from ferrymq._verify import Op, Recorder, check, fault, load_history, pair_ops
from ferrymq._verify._workload import (
    Endpoints,
    QueueRef,
    QueueWorkload,
    WorkloadConfig,
    create_queue,
    drain_all,
    probe_send,
)

from ._netns import Host, Lab, Process, unavailable_reason

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
NODES = ("n1", "n2", "n3")
CLUSTER = "ferry"
ISO_QUEUE = "part-iso"
MAJ_QUEUE = "part-maj"
HTTP_PORT = 9324
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_INDEX = 100
CLIENT_INDEX = 200
LEASE_TTL_S = 2
STATUS_PATH = "/_ferry/status"

VISIBILITY_S = 5
# W1 on each queue. Producers pace themselves (20 sends/s each at most) so that two
# workloads, three nodes and etcd share this 2-core machine without starving one.
WORKLOAD = WorkloadConfig(producers=2, consumers=2, send_interval_s=0.05,
                          visibility_s=VISIBILITY_S, crash_fraction=0.10,
                          release_fraction=0.05, seed=7)
# boto3's read timeout for both clients: the longest receive is a 2 s long poll, and a
# forward waits up to 4 s for a leader, so 5 s; on the isolated side it is also how
# long a refused write takes to time out.
READ_TIMEOUT_S = 5.0

# Traffic before the cut, so both queues hold acknowledged messages.
WARMUP_S = 3.0
# The brief's bound: a new leader and an acknowledged send within this of the cut.
# The election takes the lease TTL (2 s) plus a fence round and a transaction.
MAJORITY_WITHIN_S = 10.0
# The partition stays at least this long after the majority's first acknowledged
# send, and until some write of the isolated client has been waiting at the old leader
# for PENDING_AGE_S (boto3 waits READ_TIMEOUT_S): that write is pending when the link
# comes back, which is when only fencing stops it from committing.
HOLD_AFTER_MAJORITY_S = 3.0
# How long before the heal an isolated write must have been invoked for the rule to
# judge it when it ends after the heal: the old leader read it long before it could
# hear of its successor (a later one may have been read after it stepped down, and
# then forwarded to the new leader, which may rightly acknowledge it).
PENDING_AGE_S = 1.0
# From the heal until the old leader follows and every node is in sync: it learns of
# the new epoch at once (the new leader's appends, etcd's watch), then a snapshot
# (its log diverged) and catching up.
CONVERGE_WITHIN_S = 30.0
# Traffic after convergence, so the liveness rule judges some messages.
QUIET_S = 5.0
SETTLE_S = 1.0
DRAIN_TIMEOUT_S = 25.0
# Starting: etcd is healthy in well under a second here; a node answers its status in
# about a second; the first election needs every node registered.
START_WITHIN_S = 30.0
# One status or etcd probe: a node that does not answer within this is "no answer".
PROBE_TIMEOUT_S = 0.5
POLL_S = 0.05
# A new connection across a healed link: ARP and SYN retries are a second apart.
HEAL_WITHIN_S = 3.0

_WRITE_FS = ("send", "receive", "change_visibility")


def _get_json(url: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """GET (or POST ``body``) and parse a JSON object; OSError on any failure. No
    proxy from the environment: every address here is inside the lab."""
    data = None if body is None else json.dumps(body).encode()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=data, method="GET" if data is None else "POST")
    try:
        with opener.open(request, timeout=PROBE_TIMEOUT_S) as response:
            parsed = json.loads(response.read())
    except (OSError, ValueError) as exc:
        raise OSError(f"{url}: {exc!r}") from exc
    if not isinstance(parsed, dict):
        raise OSError(f"{url}: not a JSON object")
    return parsed


class _Cluster:
    """etcd and three nodes in the lab's namespaces: start, probe, wait, logs."""

    def __init__(self, lab: Lab, base_dir: Path) -> None:
        self.lab = lab
        self.base_dir = base_dir
        self.etcd_host = lab.add_host("etcd", ETCD_INDEX)
        self.client_host = lab.add_host("client", CLIENT_INDEX)
        self.hosts = {node: lab.add_host(node, i + 1) for i, node in enumerate(NODES)}
        self.processes: dict[str, Process] = {}
        self._layout = Layout(CLUSTER)

    def url(self, node: str) -> str:
        return f"http://{self.hosts[node].address}:{HTTP_PORT}"

    def start_etcd(self, binary: str) -> None:
        host = self.etcd_host
        member = EtcdMember("etcd1", ETCD_CLIENT_PORT, ETCD_PEER_PORT,
                            self.base_dir / "etcd" / "etcd1")
        argv = member_argv(binary, member, [member], token=f"ferry-partition-{self.lab.tag}")
        # Clients reach it on the bridge; the probes of this test on its loopback.
        argv = _with_flag(argv, "--listen-client-urls",
                          f"http://{host.address}:{ETCD_CLIENT_PORT},"
                          f"http://127.0.0.1:{ETCD_CLIENT_PORT}")
        argv = _with_flag(argv, "--advertise-client-urls",
                          f"http://{host.address}:{ETCD_CLIENT_PORT}")
        self.processes["etcd"] = self.lab.spawn(host, "etcd", argv,
                                                self.base_dir / "etcd.log",
                                                member_environment())
        self.wait_for("etcd healthy", lambda: self._etcd_healthy() or None, START_WITHIN_S)

    def _etcd_healthy(self) -> bool:
        def probe() -> bool:
            try:
                return _get_json(f"http://127.0.0.1:{ETCD_CLIENT_PORT}/health").get(
                    "health") in ("true", True)
            except OSError:
                return False
        return self.etcd_host.call(probe, timeout_s=5.0)

    def start_nodes(self) -> None:
        etcd = f"http://{self.etcd_host.address}:{ETCD_CLIENT_PORT}"
        env = {**member_environment(), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": str(REPO_ROOT / "src")}
        for node, host in self.hosts.items():
            argv = [sys.executable, "-m", "ferrymq", "node", "--node-id", node,
                    "--host", host.address, "--port", str(HTTP_PORT),
                    "--data-dir", str(self.base_dir / node), "--etcd", etcd,
                    "--cluster", CLUSTER, "--replicas", str(len(NODES)),
                    "--min-insync-replicas", "2", "--lease-ttl-seconds", str(LEASE_TTL_S),
                    "--log-level", "info"]
            self.processes[node] = self.lab.spawn(host, node, argv,
                                                  self.base_dir / f"{node}.log", env)
        for node in NODES:
            self.wait_for(f"{node} answering", functools.partial(self.status, node),
                          START_WITHIN_S)

    # ---- observation -----------------------------------------------------------------

    def status(self, node: str) -> dict[str, Any] | None:
        """The node's ``/_ferry/status``, asked from inside its own namespace (so it
        answers during the partition too), or None."""
        def probe() -> dict[str, Any] | None:
            try:
                return _get_json(self.url(node) + STATUS_PATH)
            except OSError:
                return None
        return self.hosts[node].call(probe, timeout_s=5.0)

    def _etcd_get(self, key: bytes) -> bytes | None:
        """The value of ``key`` in etcd (asked on etcd's loopback), or None."""
        encoded = base64.b64encode(key).decode()

        def probe() -> bytes | None:
            try:
                doc = _get_json(f"http://127.0.0.1:{ETCD_CLIENT_PORT}/v3/kv/range",
                                {"key": encoded})
            except OSError:
                return None
            kvs = doc.get("kvs") or []
            return base64.b64decode(kvs[0]["value"]) if kvs else None
        return self.etcd_host.call(probe, timeout_s=5.0)

    def partition_of(self, queue: str) -> str | None:
        """The partition etcd's catalog names for ``queue``, or None."""
        raw = self._etcd_get(self._layout.queue(queue))
        return None if raw is None else decode_entry(queue, raw).partition

    def etcd_state(self, partition: str) -> PartitionState | None:
        """The replica set as etcd holds it, or None."""
        raw = self._etcd_get(self._layout.partition(partition))
        return None if raw is None else decode_state(raw)

    def report(self, node: str, partition: str) -> dict[str, Any] | None:
        """What ``node`` says of its replica of ``partition``, or None."""
        status = self.status(node)
        found = (status.get("partitions") or {}).get(partition) if status else None
        return found if isinstance(found, dict) else None

    def ready(self) -> bool | None:
        """True once every node answers, holds its etcd lease, and one is controller:
        a queue created now is placed on all three."""
        statuses = [self.status(node) for node in NODES]
        if any(s is None or s.get("lease") is not True for s in statuses):
            return None
        return True if sum(1 for s in statuses if s and s.get("controller")) == 1 else None

    def leader_in_sync(self, partition: str) -> tuple[str, dict[str, Any]] | None:
        """(leader, its report) once a node leads ``partition`` with every node in
        sync: the whole in-sync set, and every follower acknowledged up to its log."""
        for node in NODES:
            report = self.report(node, partition)
            if report is None or report.get("role") != "leader":
                continue
            lag = report.get("lag") or {}
            if set(report.get("isr") or ()) == set(NODES) \
                    and set(lag) == set(NODES) - {node} and all(v == 0 for v in lag.values()):
                return node, report
        return None

    def wait_for(self, what: str, ready: Callable[[], T | None], timeout_s: float) -> T:
        deadline = time.monotonic() + timeout_s
        while True:
            value = ready()
            if value is not None:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(f"{what}: not within {timeout_s:g} s\n{self.logs()}")
            time.sleep(POLL_S)

    def logs(self) -> str:
        return "\n".join(f"--- {name} (pid {p.pid}) ---\n{p.log_tail()}"
                         for name, p in self.processes.items())


def _poll(ready: Callable[[], object], timeout_s: float) -> bool:
    """Poll ``ready`` until it returns something truthy (True) or ``timeout_s`` has
    passed (False)."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_S)
    return True


def _with_flag(argv: list[str], flag: str, value: str) -> list[str]:
    out = list(argv)
    out[out.index(flag) + 1] = value
    return out


@pytest.fixture
def lab(monkeypatch: pytest.MonkeyPatch) -> Iterator[Lab]:
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"needs network namespaces: {reason}")
    # Every address is inside the lab: a proxy from the environment would be wrong.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "*")
    with Lab() as made:
        yield made


def _wrote(op: Op) -> bool:
    """An ``ok`` op that certainly wrote (see the module docstring, property 2)."""
    if op.type != "ok":
        return False
    if op.f == "send":
        return True
    if op.f == "receive":
        return bool(op.value.get("messages"))
    if op.f == "change_visibility":
        return any(e.get("type") == "ok" for e in op.value.get("entries", []))
    return False


def _first_ok_send(ops: list[Op], urls: set[str], invoked_from_ns: int,
                   queue: str) -> Op | None:
    sends = [op for op in ops if op.f == "send" and op.type == "ok" and op.node in urls
             and op.t_inv >= invoked_from_ns and op.t_end is not None
             and op.value.get("queue") == queue]
    return min(sends, key=lambda op: op.t_end or 0, default=None)


def _probe_until_ok(cluster: _Cluster, recorder: Recorder, endpoints: Endpoints,
                    queue: QueueRef, deadline_ns: int) -> list[str]:
    """Recorded sends to ``queue`` from the majority's namespace, through its nodes in
    turn, until one is ok or ``deadline_ns`` (monotonic) passes; their outcomes. Each
    takes at most the client's read timeout."""
    outcomes: list[str] = []
    while time.monotonic_ns() < deadline_ns:
        url = endpoints.pick(len(outcomes))
        outcomes.append(cluster.client_host.call(probe_send, recorder, endpoints, queue, url,
                                                 timeout_s=READ_TIMEOUT_S + 5))
        if outcomes[-1] == "ok":
            break
        time.sleep(POLL_S)
    return outcomes


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_partition_isolating_the_leader(lab: Lab, tmp_path: Path) -> None:
    binary = etcd_binary()
    if binary is None:
        pytest.skip(ETCD_INSTALL_HINT)
    cluster = _Cluster(lab, tmp_path)
    history = tmp_path / "history.jsonl"
    recorder = Recorder(history)
    workloads: list[tuple[Host, QueueWorkload]] = []
    try:
        cluster.start_etcd(binary)
        cluster.start_nodes()
        cluster.wait_for("every node registered, a controller", cluster.ready,
                         START_WITHIN_S)
        # part-iso first, through n1: the node that comes to lead it is the one cut off.
        first = Endpoints([cluster.url(NODES[0])], read_timeout_s=READ_TIMEOUT_S)
        iso_queue = cluster.hosts[NODES[0]].call(create_queue, first, ISO_QUEUE)
        iso_part = cluster.wait_for(f"{ISO_QUEUE} placed", lambda: cluster.partition_of(
            ISO_QUEUE), START_WITHIN_S)
        old, before = cluster.wait_for(f"a leader of {ISO_QUEUE} with every node in sync",
                                       functools.partial(cluster.leader_in_sync, iso_part),
                                       START_WITHIN_S)
        old_epoch = int(before["epoch"])
        majority = [n for n in NODES if n != old]
        old_host = cluster.hosts[old]
        iso_endpoints = Endpoints([cluster.url(old)], read_timeout_s=READ_TIMEOUT_S)
        maj_endpoints = Endpoints([cluster.url(n) for n in majority],
                                  read_timeout_s=READ_TIMEOUT_S)
        maj_queue = cluster.client_host.call(create_queue, maj_endpoints, MAJ_QUEUE)
        maj_part = cluster.wait_for(f"{MAJ_QUEUE} placed", lambda: cluster.partition_of(
            MAJ_QUEUE), START_WITHIN_S)
        maj_leader, _ = cluster.wait_for(
            f"a leader of {MAJ_QUEUE} with every node in sync",
            functools.partial(cluster.leader_in_sync, maj_part), START_WITHIN_S)
        iso = QueueWorkload(recorder, iso_endpoints, iso_queue, WORKLOAD)
        maj = QueueWorkload(recorder, maj_endpoints, maj_queue, WORKLOAD)
        workloads = [(old_host, iso), (cluster.client_host, maj)]
        for host, workload in workloads:
            host.call(workload.start)  # its threads are born in the host's namespace
        time.sleep(WARMUP_S)

        maj_urls = {cluster.url(n) for n in majority}
        iso_url = cluster.url(old)
        with fault(recorder, "partition", cluster.url(old), isolated=old):
            lab.cut(old)
            t_cut = time.monotonic_ns()

            def new_leader() -> tuple[str, dict[str, Any]] | None:
                for node in majority:
                    report = cluster.report(node, iso_part)
                    if report is not None and report.get("role") == "leader" \
                            and int(report.get("epoch") or 0) > old_epoch:
                        return node, report
                return None

            successor, after = cluster.wait_for(f"a new leader of {ISO_QUEUE} on the "
                                                "majority side", new_leader,
                                                MAJORITY_WITHIN_S)
            t_elected = time.monotonic_ns()
            new_epoch = int(after["epoch"])
            in_etcd = cluster.etcd_state(iso_part)
            old_during = cluster.status(old)
            probes = _probe_until_ok(cluster, recorder, maj_endpoints, iso_queue,
                                     t_cut + int(MAJORITY_WITHIN_S * 1e9))

            def majority_acked() -> Op | None:
                return _first_ok_send(pair_ops(recorder.events()), maj_urls, t_cut,
                                      ISO_QUEUE)

            first_maj = cluster.wait_for(f"an acknowledged send to {ISO_QUEUE} on the "
                                         "majority side", majority_acked, 1.0)
            time.sleep(HOLD_AFTER_MAJORITY_S)

            def isolated_write_waiting() -> bool:
                now = time.monotonic_ns()
                return any(op.node == iso_url and op.f in _WRITE_FS and op.t_end is None
                           and t_cut <= op.t_inv <= now - PENDING_AGE_S * 1e9
                           for op in pair_ops(recorder.events()))

            # Not a failure if none is: then the rule below finds out why (the old
            # leader answered them all), which says more than a wait that ran out.
            _poll(isolated_write_waiting, READ_TIMEOUT_S + 1)
            t_heal = time.monotonic_ns()
            lab.heal(old)

        def converged() -> tuple[str, dict[str, Any]] | None:
            found = cluster.leader_in_sync(iso_part)
            if found is None or cluster.leader_in_sync(maj_part) is None:
                return None
            report = cluster.report(old, iso_part)
            if report is None or report.get("role") != "follower" \
                    or int(report.get("epoch") or 0) != int(found[1]["epoch"]):
                return None
            return found
        leader_after, final = cluster.wait_for(
            "the old leader following, every node in sync in both replica sets",
            converged, CONVERGE_WITHIN_S)
        t_converged = time.monotonic_ns()
        time.sleep(QUIET_S)
        for _, workload in workloads:
            workload.stop()
        time.sleep(SETTLE_S)
        drains = [host.submit(drain_all, [workload], DRAIN_TIMEOUT_S)
                  for host, workload in workloads]
        caught_up: dict[str, bool] = {}
        for drain in drains:
            caught_up.update(drain.result(timeout=DRAIN_TIMEOUT_S + 60))
    except BaseException:
        # What the clients saw so far, judged, next to what the processes logged: a
        # cluster that never converged may also have lost acknowledged writes.
        try:
            so_far = check(recorder.events()).format()
        except Exception as exc:  # noqa: BLE001 - the original failure matters more
            so_far = f"(the checker failed: {exc!r})"
        print(f"history: {history}\n{so_far}\n{cluster.logs()}")
        raise
    finally:
        for _, workload in workloads:
            try:
                workload.stop()
            except RuntimeError as exc:
                print(f"workload: {exc}", file=sys.stderr)
        recorder.close()

    events = load_history(history)
    report = check(events)
    ops = pair_ops(events)
    iso_ops = [op for op in ops if op.node == iso_url]
    in_window = [op for op in iso_ops if t_cut <= op.t_inv < t_heal]
    judged = [op for op in in_window if op.f in _WRITE_FS and (
        (op.t_end is not None and op.t_end <= t_heal)
        or op.t_inv <= t_heal - PENDING_AGE_S * 1e9)]
    acked_writes = [op for op in judged if _wrote(op)]
    refused = [op for op in judged if op.type != "ok"]
    pending_at_heal = [op for op in judged if op.t_end is None or op.t_end > t_heal]
    unjudged = [op for op in in_window if op.f in _WRITE_FS and op not in judged]
    stale_empty = [op for op in in_window if op.f == "receive" and op.type == "ok"
                   and not op.value.get("messages")]
    deletes_ok = [op for op in in_window if op.f == "delete" and op.type == "ok"]
    ms = 1e6
    measured = {
        "old leader": old, "old epoch": old_epoch, "successor": successor,
        f"{MAJ_QUEUE} led by": maj_leader,
        "majority probes to the isolated queue": probes,
        "new epoch": new_epoch, "leader after heal": leader_after,
        "new leader seen after cut ms": round((t_elected - t_cut) / ms),
        "first majority ok send after cut ms": round(((first_maj.t_end or 0) - t_cut) / ms),
        "converged after heal ms": round((t_converged - t_heal) / ms),
        "isolated writes judged": len(judged),
        "of them refused (fail/info)": len(refused),
        "of them pending at the heal": len(pending_at_heal),
        "isolated writes in the last PENDING_AGE_S, not judged": sorted(
            f"{o.f}:{o.type}:{o.value.get('error')}" for o in unjudged),
        "outcomes of those pending": sorted(
            f"{o.f}:{o.type}:{o.value.get('error')}" for o in pending_at_heal),
        "refusal errors": sorted({f"{o.type}:{o.value.get('error')}" for o in refused}),
        "empty receives answered by the isolated leader": len(stale_empty),
        "ok deletes on the isolated side (not judged)": len(deletes_ok),
        "old leader's status during the partition": old_during,
        "etcd during the partition": in_etcd,
        "final status": final,
    }
    where = (f"history: {history}\n{report.format()}\n"
             f"measured: {json.dumps(measured, default=str, indent=1)}")
    print(where)

    # 1. The majority elected a later epoch, etcd says so too, and it took writes.
    assert successor in majority and new_epoch > old_epoch, where
    assert in_etcd is not None and in_etcd.leader == successor \
        and in_etcd.epoch == new_epoch, where
    assert (first_maj.t_end or 0) - t_cut <= MAJORITY_WITHIN_S * 1e9, where
    # 2. The isolated side acknowledged no write while cut off.
    assert acked_writes == [], where
    assert len(refused) > 0, where
    # 3. Converged, and nothing acknowledged was lost.
    assert report.violations() == [], where
    assert caught_up == {ISO_QUEUE: True, MAJ_QUEUE: True}, where
    for name in (ISO_QUEUE, MAJ_QUEUE):
        q = report.queue(name)
        assert not q.lost and q.drain == "caught up", where
        assert q.acked >= 20 and q.unique_received >= q.acked, where
    # Not vacuous: the isolated leader had acknowledged messages before the cut, which
    # the new leader had to keep.
    iso_acked_before = [op for op in iso_ops if op.f == "send" and op.type == "ok"
                        and (op.t_end or 0) < t_cut]
    assert len(iso_acked_before) >= 10, where


def _connects(address: str, port: int) -> bool:
    """Whether a TCP connection to ``address:port`` opens within PROBE_TIMEOUT_S."""
    try:
        with socket.create_connection((address, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def test_the_lab_cuts_one_host_off_and_leaves_nothing_behind(lab: Lab,
                                                             tmp_path: Path) -> None:
    """The harness itself: a cut host is unreachable from the others and reaches only
    itself, a heal restores it, and closing the lab stops its processes and deletes
    its namespaces."""
    a, b = lab.add_host("a", 1), lab.add_host("b", 2)

    def listen() -> socket.socket:
        server = socket.socket()
        server.bind((a.address, 7000))
        server.listen(8)
        return server

    server = a.call(listen)  # a socket of a's namespace, usable from any thread
    try:
        assert b.call(_connects, a.address, 7000)
        lab.cut("a")
        assert not b.call(_connects, a.address, 7000)
        assert a.call(_connects, a.address, 7000)  # a still reaches itself
        lab.heal("a")
        # The first try may miss: b's address resolution of a failed during the cut,
        # and the kernel retries it (and the SYN) after a second.
        assert _poll(lambda: b.call(_connects, a.address, 7000), HEAL_WITHIN_S)
    finally:
        server.close()
    sleeper = lab.spawn(b, "sleeper", ["sleep", "60"], tmp_path / "sleeper.log")
    assert sleeper.running()
    namespaces = [lab.bridge_namespace, a.namespace, b.namespace]
    lab.close()
    assert not sleeper.running()
    assert not any(Path("/run/netns", ns).exists() for ns in namespaces)
