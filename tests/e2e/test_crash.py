"""End-to-end: kill -9 of the server while clients send, then restart on the same data.

Every acknowledged send, delete and attribute change must survive; in-flight messages
return at their visibility deadline (not earlier, not never); the FIFO dedup window and
per-group order survive too.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ._harness import ServerProcess, approximate_counts, make_client, receive, wait_until

SENDER_THREADS = 4
# Long enough to cover the restart and the drain below, short enough for a fast suite.
IN_FLIGHT_VISIBILITY_S = 8


class Sender(threading.Thread):
    """Sends until told to stop or the server dies; remembers what was acknowledged."""

    def __init__(self, client: Any, index: int, std_url: str, fifo_url: str) -> None:
        super().__init__(name=f"crash-sender-{index}", daemon=True)
        self.client = client
        self.index = index
        self.std_url = std_url
        self.fifo_url = fifo_url
        self.acked_std: list[str] = []
        self.acked_fifo: list[int] = []
        self.stop_flag = threading.Event()
        self.failed = threading.Event()

    def run(self) -> None:
        seq = 0
        # Bounded so a server that never dies cannot make this spin forever.
        while not self.stop_flag.is_set() and seq < 100_000:
            body = f"c-{self.index}-{seq}"
            try:
                self.client.send_message(QueueUrl=self.std_url, MessageBody=body)
                self.acked_std.append(body)
                self.client.send_message(
                    QueueUrl=self.fifo_url, MessageBody=str(seq),
                    MessageGroupId=f"t{self.index}", MessageDeduplicationId=body)
                self.acked_fifo.append(seq)
            except Exception:  # noqa: BLE001 - any failure after the kill ends the run
                self.failed.set()
                return
            seq += 1


def drain(sqs: Any, url: str, *, delete: bool) -> list[dict[str, Any]]:
    """Receive until two empty receives in a row, hiding (or deleting) what came back."""
    got: list[dict[str, Any]] = []
    empty = 0
    while empty < 2:
        batch = receive(sqs, url, VisibilityTimeout=300, WaitTimeSeconds=0,
                        AttributeNames=["MessageGroupId"])
        empty = 0 if batch else empty + 1
        got.extend(batch)
        if delete:
            for m in batch:
                sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    return got


@pytest.mark.timeout(120)
@pytest.mark.parametrize("body_memory_mib", ["256", "0"], ids=["bodies-in-memory",
                                                             "bodies-on-disk"])
def test_kill9_keeps_acknowledged_state(tmp_path: Path, protocol: str,
                                        body_memory_mib: str) -> None:
    proc = ServerProcess(tmp_path / "data", ["--body-memory-mib", body_memory_mib])
    proc.start()
    try:
        sqs = make_client(proc.url, protocol)
        std = sqs.create_queue(QueueName="crash-std")["QueueUrl"]
        fifo = sqs.create_queue(QueueName="crash.fifo",
                                Attributes={"FifoQueue": "true"})["QueueUrl"]
        sqs.set_queue_attributes(QueueUrl=std, Attributes={"VisibilityTimeout": "77",
                                                           "DelaySeconds": "0"})
        sqs.send_message_batch(QueueUrl=std, Entries=[
            {"Id": f"p{i}", "MessageBody": f"pre-{i}"} for i in range(10)])
        for i in range(10):
            sqs.send_message(QueueUrl=fifo, MessageBody=f"f{i}", MessageGroupId="fixed",
                             MessageDeduplicationId=f"f{i}")

        # Acknowledged deletes.
        deleted: set[str] = set()
        while len(deleted) < 4:
            for m in receive(sqs, std, MaxNumberOfMessages=4 - len(deleted),
                             VisibilityTimeout=300):
                sqs.delete_message(QueueUrl=std, ReceiptHandle=m["ReceiptHandle"])
                deleted.add(m["Body"])
        # Acknowledged in-flight receives with a short deadline: two set by the
        # receive itself, one received for 300 s and then shortened by an acknowledged
        # ChangeMessageVisibility (so the visibility change must survive too).
        in_flight: set[str] = set()
        while len(in_flight) < 2:
            batch = receive(sqs, std, MaxNumberOfMessages=2 - len(in_flight),
                            VisibilityTimeout=IN_FLIGHT_VISIBILITY_S)
            in_flight.update(m["Body"] for m in batch)
        changed = wait_until(lambda: receive(sqs, std, MaxNumberOfMessages=1,
                                             VisibilityTimeout=300),
                             timeout_s=10, what="a message to shorten")[0]
        sqs.change_message_visibility(QueueUrl=std, ReceiptHandle=changed["ReceiptHandle"],
                                      VisibilityTimeout=IN_FLIGHT_VISIBILITY_S)
        in_flight.add(changed["Body"])
        visible_at = time.monotonic() + IN_FLIGHT_VISIBILITY_S

        senders = [Sender(make_client(proc.url, protocol), i, std, fifo)
                   for i in range(SENDER_THREADS)]
        for s in senders:
            s.start()
        wait_until(lambda: all(len(s.acked_std) >= 5 for s in senders), timeout_s=20,
                   interval_s=0.02, what="senders to make progress")
        proc.kill9()
        for s in senders:
            s.stop_flag.set()
            s.join(20)
            assert not s.is_alive()

        proc.restart()
        sqs = make_client(proc.url, protocol)

        attrs = sqs.get_queue_attributes(QueueUrl=std, AttributeNames=["All"])["Attributes"]
        assert attrs["VisibilityTimeout"] == "77"

        # Before the deadline: everything acknowledged except deleted and in-flight ones.
        got = drain(sqs, std, delete=False)
        assert time.monotonic() < visible_at - 0.5, "restart too slow for this check"
        bodies = [m["Body"] for m in got]
        assert len(bodies) == len(set(bodies)), "a message was delivered twice"
        present = set(bodies)
        acked = {f"pre-{i}" for i in range(10)} - deleted - in_flight
        for s in senders:
            acked.update(s.acked_std)
        missing = acked - present
        assert not missing, f"{len(missing)} acknowledged sends lost, e.g. {sorted(missing)[:5]}"
        assert not present & deleted, "acknowledged deletes came back"
        assert not present & in_flight, "in-flight messages came back before their deadline"

        # After the deadline, and not before it, the in-flight ones are visible again.
        def in_flight_back() -> set[str] | None:
            batch = receive(sqs, std, VisibilityTimeout=300, WaitTimeSeconds=0)
            if batch:
                assert time.monotonic() >= visible_at - 1.0, "visible before its deadline"
                returned.update(m["Body"] for m in batch)
            return returned if returned >= in_flight else None

        returned: set[str] = set()
        wait_until(in_flight_back, timeout_s=IN_FLIGHT_VISIBILITY_S + 10, interval_s=0.2,
                   what="in-flight messages to return")
        assert returned == in_flight

        # FIFO: the dedup window survives the crash...
        sqs.send_message(QueueUrl=fifo, MessageBody="f3 again", MessageGroupId="fixed",
                         MessageDeduplicationId="f3")
        # ...and so does per-group order, with every acknowledged send present.
        fifo_msgs = drain(sqs, fifo, delete=True)
        groups: dict[str, list[str]] = {}
        for m in fifo_msgs:
            groups.setdefault(m["Attributes"]["MessageGroupId"], []).append(m["Body"])
        assert groups.pop("fixed") == [f"f{i}" for i in range(10)]
        for s in senders:
            seqs = [int(b) for b in groups.get(f"t{s.index}", [])]
            assert seqs == sorted(set(seqs)), f"group t{s.index} out of order: {seqs}"
            assert set(s.acked_fifo) <= set(seqs), f"group t{s.index} lost acknowledged sends"
    finally:
        proc.stop()


@pytest.mark.timeout(60)
def test_kill9_after_redrive_keeps_bodies_read_from_disk(tmp_path: Path, protocol: str) -> None:
    # With no body in memory, a redrive copies the body inside the store from the
    # source queue's row to the dead-letter queue's; a crash right after must find
    # every body in the dead-letter queue, byte for byte.
    proc = ServerProcess(tmp_path / "data", ["--body-memory-mib", "0"])
    proc.start()
    try:
        sqs = make_client(proc.url, protocol)
        dlq = sqs.create_queue(QueueName="dead")["QueueUrl"]
        dlq_arn = sqs.get_queue_attributes(
            QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        src = sqs.create_queue(QueueName="src", Attributes={"RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 1})})["QueueUrl"]
        sent = {f"m{i}-" + "\u00e9\U0001f600" * i for i in range(20)}
        for chunk in (sorted(sent)[:10], sorted(sent)[10:]):
            sqs.send_message_batch(QueueUrl=src, Entries=[
                {"Id": str(i), "MessageBody": body} for i, body in enumerate(chunk)])
        first: set[str] = set()
        while len(first) < len(sent):
            first.update(m["Body"] for m in receive(sqs, src, VisibilityTimeout=0))
        assert first == sent
        # Every message has been received once: the next receive redrives them all.
        def all_redriven() -> bool:
            assert not receive(sqs, src), "a message was delivered a second time"
            return approximate_counts(sqs, dlq)[0] == len(sent)

        wait_until(all_redriven, timeout_s=10, what="the redrive of every message")
        proc.kill9()
        proc.restart()
        sqs = make_client(proc.url, protocol)
        got = drain(sqs, dlq, delete=True)
        assert sorted(m["Body"] for m in got) == sorted(sent)
        assert all(m["MD5OfBody"] == hashlib.md5(m["Body"].encode()).hexdigest() for m in got)
        assert approximate_counts(sqs, src) == (0, 0, 0)
    finally:
        proc.stop()


@pytest.mark.timeout(60)
def test_clean_restart_keeps_queues_tags_and_messages(tmp_path: Path, protocol: str) -> None:
    proc = ServerProcess(tmp_path / "data")
    proc.start()
    try:
        sqs = make_client(proc.url, protocol)
        url = sqs.create_queue(QueueName="keep", tags={"k": "v"},
                               Attributes={"DelaySeconds": "1"})["QueueUrl"]
        sqs.send_message(QueueUrl=url, MessageBody="persisted", MessageAttributes={
            "a": {"DataType": "Binary", "BinaryValue": b"\x00\x01"}})
        assert proc.stop() == 0
        proc.restart()
        sqs = make_client(proc.url, protocol)
        assert sqs.get_queue_url(QueueName="keep")["QueueUrl"] == url
        assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"k": "v"}
        msg = wait_until(lambda: receive(sqs, url, WaitTimeSeconds=1,
                                         MessageAttributeNames=["All"]),
                         timeout_s=10, what="the persisted message")[0]
        assert msg["Body"] == "persisted"
        assert msg["MessageAttributes"]["a"]["BinaryValue"] == b"\x00\x01"
    finally:
        proc.stop()


def test_server_exits_cleanly_on_sigterm(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "data", ["--storage", "memory"])
    proc.start()
    assert proc.is_running()
    assert proc.stop() == 0
    assert not proc.is_running()
