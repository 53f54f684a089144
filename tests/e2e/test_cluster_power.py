"""Power loss of every replica at once: a ``sync`` cluster loses no acknowledged write.

Three real ``ferrymq node`` processes over real etcd, each store opened with the
power-loss seam (``SqliteStore(power_loss_seam=True)``: what a power cut would leave is
the database file plus the fsynced part of the WAL). Each queue lives on a replica set
of its own, so each node holds one store per queue (``<data-dir>/partitions/``).
Producers send to a standard and a FIFO queue through every node; mid-load all three
nodes are killed with SIGKILL at once, every store of every node is cut back to what it
had fsynced (``simulate_power_loss``), and the nodes are started again. Every
acknowledged message must then be received, and each FIFO group in the order it was
acknowledged.

Why this holds: a ``sync`` write is acknowledged only after every in-sync replica (at
least ``min-insync-replicas`` of them) fsynced it, and the new leader is the most
advanced in-sync replica.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ferrymq._coordination import EtcdCluster, etcd_binary
from ferrymq._storage._sqlite import simulate_power_loss

from ._harness import free_port, make_client

pytestmark = pytest.mark.skipif(etcd_binary() is None,
                                reason="etcd is not installed (make test installs it as root)")

NODES = ("n1", "n2", "n3")
LOAD_S = 3.0  # sending before the power cut
PRODUCERS = 4
# A node that does not answer its status page this long after starting failed to start.
START_WAIT_S = 30.0


class Cluster:
    def __init__(self, base: Path, etcd_url: str) -> None:
        self.base = base
        self.etcd_url = etcd_url
        self.ports = {n: free_port() for n in NODES}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str) -> None:
        log = open(self.base / f"{node}.log", "ab")  # noqa: SIM115 - the child keeps it
        self.procs[node] = subprocess.Popen(
            [sys.executable, "-m", "ferrymq", "node", "--node-id", node,
             "--port", str(self.ports[node]), "--data-dir", str(self.base / node),
             "--etcd", self.etcd_url, "--lease-ttl-seconds", "2", "--power-loss-seam",
             "--log-level", "info"],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        log.close()

    def url(self, node: str) -> str:
        return f"http://127.0.0.1:{self.ports[node]}"

    def status(self, node: str) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.url(node) + "/_ferry/status", timeout=1) as r:
                doc: dict[str, Any] = json.load(r)
                return doc
        except OSError:
            return None

    def logs(self) -> dict[str, str]:
        return {n: (self.base / f"{n}.log").read_text()[-1500:] for n in NODES}

    def wait_ready(self, timeout_s: float = START_WAIT_S) -> None:
        """Until every node answers and holds its etcd lease, and one is controller: a
        queue created then is placed on all three."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            statuses = [self.status(node) for node in NODES]
            if all(st is not None and st["lease"] for st in statuses) \
                    and sum(1 for st in statuses if st and st["controller"]) == 1:
                return
            time.sleep(0.1)
        raise AssertionError(f"the nodes never registered and elected a controller: "
                             f"{self.logs()}")

    def wait_writable(self, queues: list[str], timeout_s: float = START_WAIT_S
                      ) -> dict[str, str]:
        """Until each of ``queues`` has a leader that reports its replica set writable
        with every node in sync: queue -> that leader."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found: dict[str, str] = {}
            for node in NODES:
                st = self.status(node)
                for part in (st or {}).get("partitions", {}).values():
                    if part["queue"] in queues and part["role"] == "leader" \
                            and part["writable"] and len(part["isr"]) == len(NODES):
                        found[part["queue"]] = node
            if set(found) == set(queues):
                return found
            time.sleep(0.1)
        raise AssertionError(f"no writable leader with a full in-sync set for each of "
                             f"{queues}: {self.logs()}")

    def kill_all(self) -> None:
        for proc in self.procs.values():
            with_pid_alive = proc.poll() is None
            if with_pid_alive:
                os.kill(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait()

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with EtcdCluster(tmp_path / "etcd", 1) as etcd:
        c = Cluster(tmp_path, etcd.members[0].client_url)
        try:
            for node in NODES:
                c.start(node)
            yield c
        finally:
            c.stop_all()


def test_power_loss_of_every_replica_loses_no_acknowledged_write(cluster: Cluster) -> None:
    cluster.wait_ready()
    admin = make_client(cluster.url("n1"), "json",
                        retries={"mode": "standard", "total_max_attempts": 10})
    std = admin.create_queue(QueueName="power")["QueueUrl"].rsplit("/", 2)[-2:]
    fifo = admin.create_queue(QueueName="power.fifo", Attributes={
        "FifoQueue": "true", "ContentBasedDeduplication": "true"})["QueueUrl"]
    fifo_path = fifo.rsplit("/", 2)[-2:]
    queues = ["power", "power.fifo"]
    cluster.wait_writable(queues)
    acked: dict[str, list[str]] = {"std": [], "fifo": []}
    lock = threading.Lock()
    stop = threading.Event()

    def produce(worker: int) -> None:
        clients = [make_client(cluster.url(n), "json", read_timeout=5)
                   for n in NODES]
        i = 0
        while not stop.is_set():
            i += 1
            node = (worker + i) % len(NODES)
            base = cluster.url(NODES[node])
            body = f"w{worker}-{i}"
            try:
                if worker % 2:
                    clients[node].send_message(QueueUrl=f"{base}/{'/'.join(fifo_path)}",
                                               MessageBody=body,
                                               MessageGroupId=f"g{worker}")
                    kind = "fifo"
                else:
                    clients[node].send_message(QueueUrl=f"{base}/{'/'.join(std)}",
                                               MessageBody=body)
                    kind = "std"
            except Exception:  # noqa: BLE001 - a failed or unknown send proves nothing
                continue
            with lock:
                acked[kind].append(body)

    threads = [threading.Thread(target=produce, args=(w,), daemon=True)
               for w in range(PRODUCERS)]
    for t in threads:
        t.start()
    time.sleep(LOAD_S)
    cluster.kill_all()  # the power cut: every replica at once, mid-load
    stop.set()
    for t in threads:
        t.join(timeout=30)
    stores = {n: sorted((cluster.base / n / "partitions").glob("*.sqlite3")) for n in NODES}
    # One store per queue on every node: a power cut that missed one proves less.
    assert all(len(found) == len(queues) for found in stores.values()), stores
    dropped = {n: {path.name: simulate_power_loss(path) for path in found}
               for n, found in stores.items()}
    with lock:
        sent = {k: list(v) for k, v in acked.items()}
    assert sent["std"] and sent["fifo"], "the load never got an acknowledgement"

    for node in NODES:
        cluster.start(node)
    leaders = cluster.wait_writable(queues)
    received: dict[str, list[str]] = {"std": [], "fifo": []}
    for kind, path, queue in (("std", std, "power"), ("fifo", fifo_path, "power.fifo")):
        base = cluster.url(leaders[queue])
        sqs = make_client(base, "json",
                          retries={"mode": "standard", "total_max_attempts": 10})
        url = f"{base}/{'/'.join(path)}"
        empty = 0
        while empty < 2:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                      WaitTimeSeconds=1, VisibilityTimeout=60)
            messages = got.get("Messages", [])
            if not messages:
                empty += 1
                continue
            empty = 0
            received[kind].extend(m["Body"] for m in messages)
            sqs.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(messages)])
    report = (f"acknowledged {len(sent['std'])} standard and {len(sent['fifo'])} FIFO "
              f"sends; WAL bytes dropped by the power cut: {dropped}")
    lost = {k: sorted(set(sent[k]) - set(received[k])) for k in sent}
    assert lost == {"std": [], "fifo": []}, report
    # FIFO: each group's acknowledged messages arrive in the order they were sent
    # (one producer per group, sending one at a time).
    for worker in range(1, PRODUCERS, 2):
        prefix = f"w{worker}-"
        order = [int(b[len(prefix):]) for b in received["fifo"] if b.startswith(prefix)]
        assert order == sorted(order), f"group g{worker} out of order: {order}"
