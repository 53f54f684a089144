"""End-to-end: a replica set whose store is larger than the leader keeps of its log
(``RETAINED_BYTES_MAX``, 64 MiB) and than the transport's queue to a peer (64 MiB) is
moved to a node that holds nothing of it, so the new replica can only be built from a
snapshot streamed in chunks. Under a trickle of small sends, the queue's leader is
decommissioned: its replica moves to the third node, leadership to one of the others.
Then the remaining old replica is killed (kill -9), so the new one serves alone, and
every acknowledged message is received from it with its body intact.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from ferrymq._coordination import ETCD_INSTALL_HINT, etcd_binary

from ._cluster import local_cluster
from ._harness import error_of, make_client
from .test_cluster_faults import IN_SYNC_WAIT_S, LEASE_TTL_S

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason=ETCD_INSTALL_HINT)

BODY_BYTES = 1024 * 1024 - 64  # under MaximumMessageSize's default (1 MiB)
# 72 MiB of bodies: past both 64 MiB bounds above, so the move cannot be log catch-up
# or one frame queue's worth.
BIG_MESSAGES = 72
STORE_BYTES_MIN = 64 * 1024 * 1024
MOVE_WAIT_S = 120.0
_SNAPSHOT_LINE = re.compile(r"sending (n\d) a snapshot at .* \((\d+) bytes\)")


def _body(i: int) -> str:
    # Distinct in every byte range: a chunk written at the wrong offset shows.
    seed = hashlib.sha256(str(i).encode()).hexdigest()
    return (f"{i:04d}:" + seed * (BODY_BYTES // len(seed) + 1))[:BODY_BYTES]


def _retrying(call: Any, retried: list[int] | None = None, **params: Any) -> dict[str, Any]:
    """A request retried while the cluster answers 503 (a move's election) or the
    connection fails, as an SDK's retry policy would; each retry appends to
    ``retried``."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return dict(call(**params))
        except ClientError as exc:
            if error_of(exc)[2] != 503 or time.monotonic() > deadline:
                raise
        except (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError):
            if time.monotonic() > deadline:
                raise
        if retried is not None:
            retried.append(1)
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_a_store_larger_than_the_log_window_moves_by_a_streamed_snapshot(
        tmp_path: Path) -> None:
    with local_cluster(tmp_path / "cluster", lease_ttl_s=LEASE_TTL_S) as cluster:
        sqs = make_client(cluster.url("n1"), "json")
        url = sqs.create_queue(QueueName="big", tags={"ferry:replicas": "2"})["QueueUrl"]
        cluster.in_sync(IN_SYNC_WAIT_S)
        sent: dict[str, str] = {}  # message id -> md5 of the body
        for i in range(BIG_MESSAGES):
            body = _body(i)
            reply = _retrying(sqs.send_message, QueueUrl=url, MessageBody=body)
            assert reply["MD5OfMessageBody"] == hashlib.md5(body.encode()).hexdigest()
            sent[reply["MessageId"]] = reply["MD5OfMessageBody"]
        state = cluster.partition("big")
        assert state is not None and state.leader is not None
        leader = state.leader
        (kept,) = [n for n in state.replicas if n != leader]
        (target,) = [n for n in cluster.node_ids() if n not in state.replicas]
        logs_from = {n: cluster.log_size(n) for n in (leader, kept)}

        # A trickle of small sends through the node that stays, all through the move.
        stop = threading.Event()
        trickle: dict[str, str] = {}
        trickle_retries: list[int] = []
        failures: list[BaseException] = []

        def send_small() -> None:
            client = make_client(cluster.url(kept), "json")
            n = 0
            try:
                while not stop.is_set():
                    body = f"small-{n}"
                    reply = _retrying(client.send_message, trickle_retries, QueueUrl=url,
                                      MessageBody=body)
                    trickle[reply["MessageId"]] = hashlib.md5(body.encode()).hexdigest()
                    n += 1
                    time.sleep(0.05)
            except BaseException as exc:  # reported by the test below
                failures.append(exc)

        sender = threading.Thread(target=send_small, name="trickle")
        sender.start()
        try:
            moved = cluster.cli("decommission", "--node", leader,
                                "--timeout", str(MOVE_WAIT_S))
        finally:
            stop.set()
            sender.join(70)
        assert not failures, failures
        assert len(trickle) > 10, trickle
        after = cluster.in_sync(IN_SYNC_WAIT_S, queues=["big"])
        replicas = sorted(after["big"].replicas)
        where = f"{moved.stderr}\nafter: {after}\n{cluster.logs()}"
        assert replicas == sorted([kept, target]), where
        assert not cluster.running(leader), where
        # The new replica was built from one snapshot larger than both 64 MiB bounds.
        snapshots = [(m.group(1), int(m.group(2)))
                     for n, since in logs_from.items()
                     for m in _SNAPSHOT_LINE.finditer(cluster.log_text(n, since))]
        print(f"snapshots sent: {snapshots}")
        assert [size for to, size in snapshots if to == target], (snapshots, where)
        assert max(size for to, size in snapshots if to == target) > STORE_BYTES_MIN, \
            (snapshots, where)

        # The new replica alone: every acknowledged message is in it, intact.
        cluster.kill9(kept)
        assert not cluster.running(kept), where
        cluster.leader("big", timeout_s=30, other_than=kept)
        reader = make_client(cluster.url(target), "json")
        got: dict[str, str] = {}
        expected = {**sent, **trickle}
        deadline = time.monotonic() + 120
        while not expected.keys() <= got.keys() and time.monotonic() < deadline:
            reply = _retrying(reader.receive_message, QueueUrl=url, MaxNumberOfMessages=10,
                              VisibilityTimeout=600, WaitTimeSeconds=1)
            for m in reply.get("Messages", []):
                assert hashlib.md5(m["Body"].encode()).hexdigest() == m["MD5OfBody"]
                got[m["MessageId"]] = m["MD5OfBody"]
        missing = expected.keys() - got.keys()
        assert not missing, (len(missing), len(expected), where)
        assert {i: got[i] for i in expected} == expected
        # A send the cluster stored but whose answer was lost (a 503 or a dropped
        # connection during the move's election) is stored again by its retry: SQS's
        # at-least-once. Anything else received is such a retry of a trickle send.
        extra = {i: got[i] for i in got.keys() - expected.keys()}
        assert len(extra) <= len(trickle_retries), (extra, len(trickle_retries), where)
        assert set(extra.values()) <= set(trickle.values()), (extra, where)
