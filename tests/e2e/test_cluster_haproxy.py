"""HAProxy (Debian's haproxy) in front of three nodes, as a user would put a load
balancer there: every client talks to HAProxy only, the leader of one partition of a
partitioned FIFO queue is killed under load, and the history checker judges what the
clients saw (nothing acknowledged lost, order per message group intact across the
failover).

HAProxy's health check is ``GET /_ferry/status`` every 200 ms (two failures take a node
out, two successes put it back), and ``option redispatch`` with ``retries`` sends a
request whose connection was refused to another node: what a user's configuration
would say. A request that reached the killed node and got no answer is the client's to
retry (the SDKs do); the workloads here make one attempt per request so the history
shows each one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from ferrymq._cluster._partitioned import partition_index
from ferrymq._coordination import ETCD_INSTALL_HINT, etcd_binary
from ferrymq._verify import NEMESIS, Recorder, check, fault, load_history, pair_ops
from ferrymq._verify._workload import (
    Endpoints,
    QueueWorkload,
    WorkloadConfig,
    create_queue,
    wind_down,
)

from ._cluster import local_cluster
from ._harness import free_port
from .test_cluster_faults import (
    ACKED_MIN,
    DRAIN_TIMEOUT_S,
    ELECTION_WAIT_S,
    IN_SYNC_WAIT_S,
    LEASE_TTL_S,
    SETTLE_S,
    STANDARD,
    VISIBILITY_S,
    WARMUP_S,
)

HAPROXY = shutil.which("haproxy")
pytestmark = [
    pytest.mark.skipif(etcd_binary() is None, reason=ETCD_INSTALL_HINT),
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed: as root run "
                       "'apt-get install -y haproxy' (make test does)"),
]
FIFO_QUEUE = "behind-haproxy.fifo"
PARTITIONS = 3
# Six message groups (one sequential producer each), spread over the partitions by the
# hash of their ids; crashes rare, as in W2 (each stalls its group a visibility timeout).
GROUPS = WorkloadConfig(producers=6, consumers=3, send_interval_s=0.05,
                        visibility_s=VISIBILITY_S, crash_fraction=0.002,
                        release_fraction=0.05, seed=3)
# HAProxy answers once its frontend listens: well under this.
_HAPROXY_START_S = 10.0
# A node killed behind HAProxy is out of its rotation within two failed checks (0.4 s)
# and the queue's writes resume within the failover bound of the fault tests.
WRITES_RESUME_MS = 5_000.0
# Fault-free traffic after the last fault before the drain: half the single-partition
# fault tests' QUIET_S, to keep the suite within its budget; their runs judge liveness
# over the longer window.
QUIET_AFTER_S = 5.0

_CONFIG = """\
global
    maxconn 512
defaults
    mode http
    timeout connect 1s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch
frontend sqs
    bind 127.0.0.1:{port}
    default_backend ferry
backend ferry
    balance roundrobin
    option httpchk GET /_ferry/status
    http-check expect status 200
    default-server inter 200ms fall 2 rise 2
{servers}
"""


def _start_haproxy(config: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    assert HAPROXY is not None
    with open(log, "ab") as out:
        proc = subprocess.Popen([HAPROXY, "-db", "-f", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + _HAPROXY_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"haproxy exited ({proc.returncode}): {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_ferry/status",
                                        timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise RuntimeError(f"haproxy did not answer within {_HAPROXY_START_S} s")


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_node_killed_behind_haproxy_under_load_loses_nothing(tmp_path: Path) -> None:
    with local_cluster(tmp_path / "cluster", lease_ttl_s=LEASE_TTL_S) as cluster:
        port = free_port()
        servers = "\n".join(f"    server {n} 127.0.0.1:{cluster.url(n).rsplit(':', 1)[1]} check"
                            for n in cluster.node_ids())
        config = tmp_path / "haproxy.cfg"
        config.write_text(_CONFIG.format(port=port, servers=servers))
        proxy = _start_haproxy(config, port, tmp_path / "haproxy.log")
        history = tmp_path / "history.jsonl"
        recorder = Recorder(history)
        try:
            endpoints = Endpoints([f"http://127.0.0.1:{port}"])
            # A standard queue and a FIFO queue of three partitions each, led by
            # different nodes, so the kill hits a partition of each.
            standard = create_queue(endpoints, "behind-haproxy",
                                    tags={"ferry:partitions": str(PARTITIONS)})
            fifo = create_queue(endpoints, FIFO_QUEUE, fifo=True, attributes={
                "DeduplicationScope": "messageGroup",
                "FifoThroughputLimit": "perMessageGroupId"},
                tags={"ferry:partitions": str(PARTITIONS)})
            before = cluster.in_sync(IN_SYNC_WAIT_S)
            assert len({before[f"{FIFO_QUEUE}/{i}"].leader for i in range(PARTITIONS)}) \
                == PARTITIONS, before
            workloads = [QueueWorkload(recorder, endpoints, standard, STANDARD),
                         QueueWorkload(recorder, endpoints, fifo, GROUPS)]
            try:
                for workload in workloads:
                    workload.start()
                time.sleep(WARMUP_S)
                # The leader of the FIFO partition that holds message groups (by the
                # hash the nodes route with).
                hit = [f"g{i}" for i in range(GROUPS.producers)
                       if partition_index(f"g{i}", PARTITIONS) == 0]
                assert hit, "no message group on the first partition"
                victim = str(before[f"{FIFO_QUEUE}/0"].leader)
                with fault(recorder, "kill", cluster.url(victim), signal="SIGKILL",
                           victim=victim):
                    cluster.kill9(victim)
                    cluster.wait_for("a new leader of the victim's partition", lambda: (
                        (sets := cluster.replica_sets()) is not None
                        and sets[f"{FIFO_QUEUE}/0"][1].leader not in (None, victim))
                        or None, ELECTION_WAIT_S)
                time.sleep(2.0)
                cluster.start(victim)
                cluster.in_sync(IN_SYNC_WAIT_S)
                caught_up = wind_down(workloads, quiet_s=QUIET_AFTER_S, settle_s=SETTLE_S,
                                      drain_timeout_s=DRAIN_TIMEOUT_S)
            finally:
                for workload in workloads:
                    workload.stop()
                recorder.close()
        finally:
            os.killpg(proxy.pid, signal.SIGTERM)
            try:
                proxy.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proxy.pid, signal.SIGKILL)
                proxy.wait(10)
        report = check(load_history(history))
        where = f"history: {history}\ncluster: {cluster.data_dir}\n{report.format()}"
        print(where)
    assert report.violations() == [], where
    assert caught_up == {"behind-haproxy": True, FIFO_QUEUE: True}, where
    for name in ("behind-haproxy", FIFO_QUEUE):
        q = report.queue(name)
        assert not q.lost and not q.undeleted and q.lease_violations == 0, where
        assert q.acked >= ACKED_MIN and q.drain == "caught up", where
    assert report.queue(FIFO_QUEUE).order_violations == 0, where
    assert report.queue(FIFO_QUEUE).fifo_duplicates == 0, where
    # Writes to the killed leader's queue resumed through HAProxy within the bound,
    # measured from the SIGKILL to the first ok send invoked after it.
    ops = pair_ops(load_history(history))
    (kill,) = [op for op in ops if op.process == NEMESIS and op.f == "kill"]
    # The groups of the killed leader's partition: sends acknowledged on both sides of
    # the kill, and the first one after it within the bound.
    sends = [op for op in ops if op.f == "send" and op.type == "ok" and op.t_end is not None
             and op.value.get("queue") == FIFO_QUEUE and op.value.get("group") in hit]
    assert any(op.t_end < kill.t_inv for op in sends), where
    resumed = [op.t_end for op in sends if op.t_inv >= kill.t_inv]
    assert resumed, where
    took_ms = (min(resumed) - kill.t_inv) / 1e6
    print(f"writes to the killed leader's FIFO partition resumed {took_ms:.0f} ms after "
          "the kill")
    assert took_ms < WRITES_RESUME_MS, where
