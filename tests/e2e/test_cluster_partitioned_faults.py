"""Queues of several partitions while nodes come and go under load, with the history
checker of the single-partition fault tests (tests/e2e/test_cluster_faults.py). The
leader of a partitioned FIFO queue's partition killed under load is in
tests/e2e/test_cluster_haproxy.py (behind HAProxy, as a user would run it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ferrymq._coordination import ETCD_INSTALL_HINT, etcd_binary
from ferrymq._verify import Recorder, check, fault, load_history, pair_ops
from ferrymq._verify._workload import (
    Endpoints,
    QueueWorkload,
    create_queue,
    wind_down,
)

from ._cluster import LocalCluster, local_cluster
from .test_cluster_faults import (
    ACKED_MIN,
    DRAIN_TIMEOUT_S,
    FIFO,
    IN_SYNC_WAIT_S,
    LEASE_TTL_S,
    SETTLE_S,
    STANDARD,
    WARMUP_S,
)

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason=ETCD_INSTALL_HINT)
# A move copies a small store (seconds); the controller makes one at a time.
MOVE_WAIT_S = 60.0
# Fault-free traffic after the last fault before the drain: half the single-partition
# fault tests' QUIET_S, to keep the suite within its budget; their runs judge liveness
# over the longer window.
QUIET_AFTER_S = 5.0


def _holding(cluster: LocalCluster, node: str) -> list[str] | None:
    """The replica sets etcd lists ``node`` in, or None while a move is under way."""
    sets = cluster.replica_sets()
    if sets is None or any(ps.moving is not None for _, ps in sets.values()):
        return None
    return sorted(name for name, (_, ps) in sets.items() if node in ps.replicas)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_node_joins_and_another_is_decommissioned_under_load(tmp_path: Path) -> None:
    """Under load on a partitioned standard queue and a FIFO queue: a fourth node is
    started and the controller moves a replica onto it; then a node is decommissioned
    and every replica it held moves away before it stops. Nothing acknowledged is lost,
    FIFO order holds, and every send a producer retried got through."""
    with local_cluster(tmp_path / "cluster", lease_ttl_s=LEASE_TTL_S) as cluster:
        history = tmp_path / "history.jsonl"
        recorder = Recorder(history)
        endpoints = Endpoints(cluster.urls())
        # 2 x 2 + 2 = 6 replicas on 3 nodes: 2 each, so a fourth node is 2 below the rest.
        standard = create_queue(endpoints, "moved", tags={"ferry:partitions": "2",
                                                          "ferry:replicas": "2"})
        fifo = create_queue(endpoints, "moved.fifo", fifo=True,
                            tags={"ferry:replicas": "2"})
        cluster.in_sync(IN_SYNC_WAIT_S)
        workloads = [QueueWorkload(recorder, endpoints, standard, STANDARD),
                     QueueWorkload(recorder, endpoints, fifo, FIFO)]
        try:
            for workload in workloads:
                workload.start()
            time.sleep(WARMUP_S)
            with fault(recorder, "join", "n4", victim="n4"):
                cluster.start("n4")
                joined = cluster.wait_for("a replica moved onto n4", lambda: (
                    (held := _holding(cluster, "n4")) and held) or None, MOVE_WAIT_S)
            cluster.in_sync(IN_SYNC_WAIT_S)
            victim = "n1"
            victim_url = cluster.url(victim)
            # Taken out of the clients' rotation first, as an operator takes a node out
            # of the load balancer before decommissioning it: a client that kept sending
            # every third request to a stopped node would stall its FIFO groups a
            # visibility timeout per failed delete, which is the client's doing. The
            # node still leads and follows until its replicas have moved.
            endpoints.urls = [u for u in endpoints.urls if u != victim_url.rstrip("/")]
            with fault(recorder, "decommission", cluster.url(victim), victim=victim):
                done = cluster.cli("decommission", "--node", victim, "--timeout",
                                   str(MOVE_WAIT_S))
            left = _holding(cluster, victim)
            after = cluster.in_sync(IN_SYNC_WAIT_S)
            caught_up = wind_down(workloads, quiet_s=QUIET_AFTER_S, settle_s=SETTLE_S,
                                  drain_timeout_s=DRAIN_TIMEOUT_S)
        finally:
            for workload in workloads:
                workload.stop()
            recorder.close()
        report = check(load_history(history))
        where = (f"history: {history}\ncluster: {cluster.data_dir} (logs/)\n"
                 f"joined: {joined}\ndecommission: {done.stderr}\nafter: {after}\n"
                 f"{report.format()}")
        print(where)
        running = cluster.running(victim)
    assert joined, where
    assert left == [] and not running, where
    assert all(victim not in ps.replicas and len(ps.replicas) == 2
               for ps in after.values()), where
    assert report.violations() == [], where
    assert caught_up == {"moved": True, "moved.fifo": True}, where
    for name in ("moved", "moved.fifo"):
        q = report.queue(name)
        assert not q.lost and not q.undeleted and q.lease_violations == 0, where
        assert q.acked >= ACKED_MIN and q.drain == "caught up", where
    # No request error that a retry would not fix: each was a retriable 503 (a move's
    # election), or a refused connection to the decommissioned node (a request sent to
    # it just before it left the rotation).
    errors: dict[tuple[str, Any], int] = {}
    for op in pair_ops(load_history(history)):
        if op.process < 0 or op.type == "ok":
            continue
        kind = (str(op.value.get("error")), op.value.get("status"))
        errors[kind] = errors.get(kind, 0) + 1
        assert kind == ("ServiceUnavailable", 503) or (
            kind == ("EndpointConnectionError", None) and op.node == victim_url), (op, where)
    print(f"errors seen, all retriable: {errors}")
    assert report.queue("moved.fifo").order_violations == 0, where
    assert report.queue("moved.fifo").fifo_duplicates == 0, where
