"""A queue of several partitions under a fault: the leader of one partition of a FIFO
queue killed under load, with the history checker of the single-partition fault tests
(tests/e2e/test_cluster_faults.py)."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import pytest

from ferrymq._coordination import ETCD_INSTALL_HINT, etcd_binary
from ferrymq._verify import NEMESIS, Recorder, check, fault, load_history, pair_ops
from ferrymq._verify._workload import (
    Endpoints,
    QueueWorkload,
    WorkloadConfig,
    create_queue,
    drain_all,
)

from ._cluster import local_cluster
from .test_cluster_faults import (
    ACKED_MIN,
    DRAIN_TIMEOUT_S,
    ELECTION_WAIT_S,
    IN_SYNC_WAIT_S,
    LEASE_TTL_S,
    QUIET_S,
    SETTLE_S,
    VISIBILITY_S,
    WARMUP_S,
)

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason=ETCD_INSTALL_HINT)

QUEUE = "parts.fifo"
PARTITIONS = 3
# Six message groups (one sequential producer each), spread over the three partitions
# by the hash of their ids; crashes rare, as in W2 (each stalls its group for a whole
# visibility timeout).
GROUPS = WorkloadConfig(producers=6, consumers=3, send_interval_s=0.05,
                        visibility_s=VISIBILITY_S, crash_fraction=0.002,
                        release_fraction=0.05, seed=3)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_leader_kill_on_a_partitioned_fifo_queue_keeps_order_per_group(
        tmp_path: Path) -> None:
    with local_cluster(tmp_path / "cluster", lease_ttl_s=LEASE_TTL_S) as cluster:
        history = tmp_path / "history.jsonl"
        recorder = Recorder(history)
        endpoints = Endpoints(cluster.urls())
        queue = create_queue(endpoints, QUEUE, fifo=True, attributes={
            "DeduplicationScope": "messageGroup", "FifoThroughputLimit": "perMessageGroupId",
        }, tags={"ferry:partitions": str(PARTITIONS)})
        names = [f"{QUEUE}/{i}" for i in range(PARTITIONS)]
        before = cluster.in_sync(IN_SYNC_WAIT_S, names)
        # Every partition on all three nodes, their leaders spread over them.
        assert all(sorted(ps.replicas) == cluster.node_ids() for ps in before.values())
        assert len({ps.leader for ps in before.values()}) == PARTITIONS, before
        workload = QueueWorkload(recorder, endpoints, queue, GROUPS)
        try:
            workload.start()
            time.sleep(WARMUP_S)
            victim = str(before[names[0]].leader)
            with fault(recorder, "kill", cluster.url(victim), signal="SIGKILL",
                       victim=victim, queue=QUEUE):
                cluster.kill9(victim)
                cluster.wait_for("a new leader of the victim's partition", lambda: (
                    (sets := cluster.replica_sets()) is not None
                    and sets[names[0]][1].leader not in (None, victim)) or None,
                    ELECTION_WAIT_S)
            time.sleep(2.0)
            cluster.start(victim)
            after = cluster.in_sync(IN_SYNC_WAIT_S, names)
            time.sleep(QUIET_S)
            workload.stop()
            time.sleep(SETTLE_S)
            caught_up = drain_all([workload], DRAIN_TIMEOUT_S)
        finally:
            workload.stop()
            recorder.close()
        report = check(load_history(history))
        where = (f"history: {history}\ncluster: {cluster.data_dir} (logs/)\n"
                 f"before: {before}\nafter: {after}\n{report.format()}")
        print(where)
    assert after[names[0]].leader != victim and after[names[0]].epoch > before[names[0]].epoch
    # The fault landed on traffic: the killed leader's partition holds some groups (by
    # the hash the node routes with), whose sends were acknowledged on both sides of
    # the kill.
    hit = [f"g{i}" for i in range(GROUPS.producers)
           if zlib.crc32(f"g{i}".encode()) % PARTITIONS == 0]
    assert hit, "no message group on the killed leader's partition"
    ops = pair_ops(load_history(history))
    (kill,) = [op for op in ops if op.process == NEMESIS and op.f == "kill"]
    sends = [op for op in ops if op.f == "send" and op.type == "ok"
             and op.value.get("group") in hit and op.t_end is not None]
    assert any(op.t_end < kill.t_inv for op in sends), where
    assert any(op.t_inv > kill.t_inv for op in sends), where
    assert report.violations() == [], where
    assert caught_up == {QUEUE: True}, where
    q = report.queue(QUEUE)
    assert not q.lost and not q.undeleted and q.lease_violations == 0, where
    assert q.order_violations == 0 and q.fifo_duplicates == 0, where
    assert q.acked >= ACKED_MIN and q.unique_received >= q.acked, where
    assert q.drain == "caught up", where
