"""HAProxy (Debian's haproxy) in front of three nodes, as a user would put a load
balancer there: every client talks to HAProxy only, one node is killed under load, and
the history checker judges what the clients saw.

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

from ferrymq._coordination import ETCD_INSTALL_HINT, etcd_binary
from ferrymq._verify import NEMESIS, Recorder, check, fault, load_history, pair_ops
from ferrymq._verify._workload import Endpoints, QueueWorkload, create_queue, drain_all

from ._cluster import local_cluster
from ._harness import free_port
from .test_cluster_faults import (
    ACKED_MIN,
    DRAIN_TIMEOUT_S,
    ELECTION_WAIT_S,
    FIFO,
    IN_SYNC_WAIT_S,
    LEASE_TTL_S,
    QUIET_S,
    SETTLE_S,
    STANDARD,
    WARMUP_S,
)

HAPROXY = shutil.which("haproxy")
pytestmark = [
    pytest.mark.skipif(etcd_binary() is None, reason=ETCD_INSTALL_HINT),
    pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed: as root run "
                       "'apt-get install -y haproxy' (make test does)"),
]
# HAProxy answers once its frontend listens: well under this.
_HAPROXY_START_S = 10.0
# A node killed behind HAProxy is out of its rotation within two failed checks (0.4 s)
# and the queue's writes resume within the failover bound of the fault tests.
WRITES_RESUME_MS = 5_000.0

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
            # A queue of three partitions (each led by another node, so the kill hits
            # one of them wherever it lands) and a FIFO queue of one.
            standard = create_queue(endpoints, "behind-haproxy",
                                    tags={"ferry:partitions": "3"})
            fifo = create_queue(endpoints, "behind-haproxy.fifo", fifo=True)
            cluster.in_sync(IN_SYNC_WAIT_S)
            workloads = [QueueWorkload(recorder, endpoints, standard, STANDARD),
                         QueueWorkload(recorder, endpoints, fifo, FIFO)]
            try:
                for workload in workloads:
                    workload.start()
                time.sleep(WARMUP_S)
                fifo_leader = cluster.leader("behind-haproxy.fifo", ELECTION_WAIT_S)
                victim = str(fifo_leader.leader)
                with fault(recorder, "kill", cluster.url(victim), signal="SIGKILL",
                           victim=victim):
                    cluster.kill9(victim)
                    cluster.leader("behind-haproxy.fifo", ELECTION_WAIT_S,
                                   other_than=victim)
                time.sleep(2.0)
                cluster.start(victim)
                cluster.in_sync(IN_SYNC_WAIT_S)
                time.sleep(QUIET_S)
                for workload in workloads:
                    workload.stop()
                time.sleep(SETTLE_S)
                caught_up = drain_all(workloads, DRAIN_TIMEOUT_S)
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
    assert caught_up == {"behind-haproxy": True, "behind-haproxy.fifo": True}, where
    for name in ("behind-haproxy", "behind-haproxy.fifo"):
        q = report.queue(name)
        assert not q.lost and not q.undeleted and q.lease_violations == 0, where
        assert q.acked >= ACKED_MIN and q.drain == "caught up", where
    assert report.queue("behind-haproxy.fifo").order_violations == 0, where
    # Writes to the killed leader's queue resumed through HAProxy within the bound,
    # measured from the SIGKILL to the first ok send invoked after it.
    ops = pair_ops(load_history(history))
    (kill,) = [op for op in ops if op.process == NEMESIS and op.f == "kill"]
    resumed = [op.t_end for op in ops if op.f == "send" and op.type == "ok"
               and op.t_end is not None and op.t_inv >= kill.t_inv
               and op.value.get("queue") == "behind-haproxy.fifo"]
    assert resumed, where
    took_ms = (min(resumed) - kill.t_inv) / 1e6
    print(f"writes to the FIFO queue resumed {took_ms:.0f} ms after the kill")
    assert took_ms < WRITES_RESUME_MS, where
