"""Queues of several partitions (``ferry:partitions``) on real nodes and etcd: each
partition its own replica set, spread over the nodes; sends spread over them, receives
fanned out and merged, receipt handles routed to their partition, counts summed, and
definition changes, purge and deletion applied to every partition."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ferrymq._coordination import ETCD_INSTALL_HINT, etcd_binary

from ._cluster import LocalCluster, local_cluster
from .test_cluster_queues import _client, _status, _until

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason=ETCD_INSTALL_HINT)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("partitioned")) as c:
        yield c


def _leaders_of(cluster: LocalCluster, queue: str, count: int) -> dict[str, str]:
    """partition -> leading node, once every one of the queue's ``count`` has one."""
    def ready() -> dict[str, str] | None:
        found: dict[str, str] = {}
        for node in cluster.node_ids():
            for pid, part in _status(cluster.url(node))["partitions"].items():
                if part["role"] == "leader" and part["queue"] == queue:
                    found[pid] = node
        return found if len(found) == count else None

    return _until(f"leaders of {count} partitions of {queue}", ready)


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    err = exc.value.response["Error"]
    return str(err["Code"]), str(err["Message"])


def _drain(client: Any, url: str, expected: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 30
    while len(got) < expected and time.monotonic() < deadline:
        got.extend(client.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                          VisibilityTimeout=60,
                                          MessageAttributeNames=["All"]).get("Messages", []))
    return got


@pytest.mark.parametrize("protocol", ["json", "query"])
def test_messages_spread_over_partitions_and_come_back_once(cluster: LocalCluster,
                                                            protocol: str) -> None:
    first, second, third = (_client(u, protocol) for u in cluster.urls())
    name = f"spread-{protocol}"
    url = first.create_queue(QueueName=name, tags={"ferry:partitions": "3",
                                                   "ferry:replicas": "1"})["QueueUrl"]
    leaders = _leaders_of(cluster, name, 3)
    # Spread over the nodes: each of the three leads one partition.
    assert sorted(leaders.values()) == sorted(cluster.node_ids()), leaders
    # CreateQueue again, from another node, with the same tags: the same queue (its
    # URL names the node asked).
    again = second.create_queue(QueueName=name, tags={"ferry:partitions": "3",
                                                      "ferry:replicas": "1"})["QueueUrl"]
    assert again.rsplit("/", 2)[1:] == url.rsplit("/", 2)[1:]
    sent: dict[str, str] = {}
    for n in range(30):
        body = f"single {n}"
        mid = (first, second, third)[n % 3].send_message(
            QueueUrl=url, MessageBody=body,
            MessageAttributes={"bin": {"DataType": "Binary", "BinaryValue": b"\x00\xff"}},
        )["MessageId"]
        sent[mid] = body
    for n in range(3):
        entries = [{"Id": f"e{i}", "MessageBody": f"batch {n}.{i}"} for i in range(10)]
        result = second.send_message_batch(QueueUrl=url, Entries=entries)
        assert "Failed" not in result or not result["Failed"], result
        for ok in result["Successful"]:
            sent[ok["MessageId"]] = f"batch {n}.{ok['Id'][1:]}"
    counts = third.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert counts["ApproximateNumberOfMessages"] == str(len(sent)), counts
    assert counts["VisibilityTimeout"] == "30"
    # Every partition got some: the sends were spread.
    per_partition = {}
    for node in cluster.node_ids():
        for pid, part in _status(cluster.url(node))["partitions"].items():
            if part["queue"] == name and part["role"] == "leader":
                per_partition[pid] = part.get("messages")
    got = _drain(third, url, len(sent))
    assert sorted(m["MessageId"] for m in got) == sorted(sent), (len(got), len(sent))
    for message in got:
        assert message["Body"] == sent[message["MessageId"]]
        assert message["ReceiptHandle"][:1] == "P"
        if message["Body"].startswith("single"):
            assert message["MessageAttributes"]["bin"]["BinaryValue"] == b"\x00\xff"
    indexes = {m["ReceiptHandle"].split(".", 1)[0] for m in got}
    assert indexes == {"P0", "P1", "P2"}, (indexes, per_partition)
    inflight = first.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert inflight["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == str(len(sent))
    # Deletes go to each message's partition: one by one, and in batches that span them.
    for message in got[:10]:
        second.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
    rest = got[10:]
    for start in range(0, len(rest), 10):
        chunk = rest[start:start + 10]
        result = first.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": f"d{i}", "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)])
        assert sorted(r["Id"] for r in result["Successful"]) == sorted(
            f"d{i}" for i in range(len(chunk))), result
    after = third.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert after["ApproximateNumberOfMessages"] == "0", after
    assert after["ApproximateNumberOfMessagesNotVisible"] == "0", after
    first.delete_queue(QueueUrl=url)
    _until(f"{name}'s partitions gone", lambda: True if not any(
        part["queue"] == name for node in cluster.node_ids()
        for part in _status(cluster.url(node))["partitions"].values()) else None)
    with pytest.raises(ClientError) as exc:
        second.get_queue_url(QueueName=name)
    assert _error(exc)[0] in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


def test_a_long_poll_over_partitions_returns_when_any_gets_a_message(
        cluster: LocalCluster) -> None:
    first, second, _ = (_client(u) for u in cluster.urls())
    name = "polled"
    url = first.create_queue(QueueName=name, tags={"ferry:partitions": "4",
                                                   "ferry:replicas": "1"})["QueueUrl"]
    _leaders_of(cluster, name, 4)
    for round_ in range(4):
        answer: dict[str, Any] = {}

        def poll(answer: dict[str, Any] = answer) -> None:
            started = time.monotonic()
            answer["messages"] = second.receive_message(
                QueueUrl=url, WaitTimeSeconds=20).get("Messages", [])
            answer["ended"] = time.monotonic()
            answer["took_s"] = answer["ended"] - started

        poller = threading.Thread(target=poll)
        poller.start()
        time.sleep(1.0)   # the poll is parked on every partition by now
        sent_at = time.monotonic()
        # Four sends land on different partitions in turn: whichever gets it, the poll
        # wakes.
        first.send_message(QueueUrl=url, MessageBody=f"wake {round_}")
        poller.join(25)
        assert not poller.is_alive()
        assert [m["Body"] for m in answer["messages"]] == [f"wake {round_}"], answer
        # Woken by the message, not by the end of its 20 s wait. (How soon is measured
        # in the bench, not asserted here.)
        assert answer["ended"] - sent_at < 10, answer
        first.delete_message(QueueUrl=url,
                             ReceiptHandle=answer["messages"][0]["ReceiptHandle"])
    # An empty short poll answers at once, with no messages.
    assert "Messages" not in second.receive_message(QueueUrl=url)
    first.delete_queue(QueueUrl=url)


def test_definition_changes_and_purge_reach_every_partition(cluster: LocalCluster) -> None:
    first, second, third = (_client(u, "query") for u in cluster.urls())
    url = first.create_queue(QueueName="defined", tags={"ferry:partitions": "2",
                                                        "ferry:replicas": "2"})["QueueUrl"]
    _leaders_of(cluster, "defined", 2)
    second.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "7"})
    second.tag_queue(QueueUrl=url, Tags={"team": "ferry"})
    for n in range(8):
        first.send_message(QueueUrl=url, MessageBody=f"m{n}")
    got = _drain(third, url, 8)
    assert len(got) == 8
    # Received without a VisibilityTimeout of its own, a message of either partition
    # takes the queue's new one: a change of visibility to 0 is accepted everywhere.
    for message in got:
        third.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"],
                                        VisibilityTimeout=0)
    attributes = third.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])
    assert attributes["Attributes"]["VisibilityTimeout"] == "7"
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "8"
    assert third.list_queue_tags(QueueUrl=url)["Tags"] == {
        "ferry:partitions": "2", "ferry:replicas": "2", "team": "ferry"}
    first.purge_queue(QueueUrl=url)
    _until("purged everywhere", lambda: True if third.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"][
        "ApproximateNumberOfMessages"] == "0" else None)
    first.delete_queue(QueueUrl=url)


def test_bad_partition_requests_get_sqs_errors(cluster: LocalCluster) -> None:
    client = _client(cluster.urls()[0])
    for value in ("0", "257", "two", ""):
        with pytest.raises(ClientError) as exc:
            client.create_queue(QueueName="bad", tags={"ferry:partitions": value})
        code, message = _error(exc)
        assert code == "InvalidParameterValue", (value, code, message)
        assert "ferry:partitions" in message and "1 to 256" in message, message
    with pytest.raises(ClientError) as exc:
        client.create_queue(QueueName="bad.fifo", Attributes={"FifoQueue": "true"},
                            tags={"ferry:partitions": "2"})
    assert _error(exc) == ("InvalidParameterValue", "Value 2 for tag ferry:partitions is "
                           "invalid: a FIFO queue is partitioned only when its "
                           "DeduplicationScope is messageGroup; with queue-wide "
                           "deduplication it is kept in one partition.")
    url = client.create_queue(QueueName="shaped", tags={"ferry:partitions": "2",
                                                        "ferry:replicas": "1"})["QueueUrl"]
    _leaders_of(cluster, "shaped", 2)
    with pytest.raises(ClientError) as exc:
        client.create_queue(QueueName="shaped", tags={"ferry:partitions": "3",
                                                      "ferry:replicas": "1"})
    assert _error(exc) == ("InvalidParameterValue", "Value 3 for tag ferry:partitions is "
                           "not available: the queue has 2 partitions.")
    # A handle this queue never issued: the single node's error, quoting the client's
    # own text, whichever partition it seems to name.
    for handle in ("not-a-handle", "P1.bm90LWEtaGFuZGxl"):
        with pytest.raises(ClientError) as exc:
            client.delete_message(QueueUrl=url, ReceiptHandle=handle)
        assert _error(exc) == ("ReceiptHandleIsInvalid",
                               f'The input receipt handle "{handle}" is not a valid '
                               "receipt handle."), handle
    with pytest.raises(ClientError) as exc:
        client.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": "a", "ReceiptHandle": "P0.x"}, {"Id": "a", "ReceiptHandle": "P1.y"}])
    assert _error(exc)[0] == "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
    with pytest.raises(ClientError) as exc:
        client.receive_message(QueueUrl=url, WaitTimeSeconds=21)
    assert _error(exc)[0] == "InvalidParameterValue"
    with pytest.raises(ClientError) as exc:
        client.start_message_move_task(SourceArn=client.get_queue_attributes(
            QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])
    assert _error(exc) == ("InvalidParameterValue",
                           "Source queue must be configured as a Dead Letter Queue.")
    client.delete_queue(QueueUrl=url)


_HIGH_THROUGHPUT = {"FifoQueue": "true", "DeduplicationScope": "messageGroup",
                    "FifoThroughputLimit": "perMessageGroupId"}


def test_a_fifo_queue_is_partitioned_by_message_group(cluster: LocalCluster) -> None:
    first, second, third = (_client(u) for u in cluster.urls())
    name = "groups.fifo"
    url = first.create_queue(QueueName=name, Attributes=_HIGH_THROUGHPUT,
                             tags={"ferry:partitions": "3", "ferry:replicas": "1"})["QueueUrl"]
    _leaders_of(cluster, name, 3)
    groups = [f"g{n}" for n in range(9)]
    for seq in range(6):
        if seq % 2:
            # A batch spanning every group (so every partition), in order per group.
            for start in (0, 5):
                entries = [{"Id": f"{g}-{seq}", "MessageBody": f"{g}:{seq}",
                            "MessageGroupId": g, "MessageDeduplicationId": f"{g}-{seq}"}
                           for g in groups[start:start + 5]]
                result = second.send_message_batch(QueueUrl=url, Entries=entries)
                assert [r["Id"] for r in result["Successful"]] == [e["Id"] for e in entries]
        else:
            for g in groups:
                first.send_message(QueueUrl=url, MessageBody=f"{g}:{seq}", MessageGroupId=g,
                                   MessageDeduplicationId=f"{g}-{seq}")
    # Deduplicated within its group (and so within its partition): sent again, the same id.
    again = first.send_message(QueueUrl=url, MessageBody="g0:0", MessageGroupId="g0",
                               MessageDeduplicationId="g0-0")
    received: dict[str, list[int]] = {g: [] for g in groups}
    partition_of: dict[str, set[str]] = {g: set() for g in groups}
    deadline = time.monotonic() + 30
    while sum(map(len, received.values())) < 54 and time.monotonic() < deadline:
        got = third.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                    WaitTimeSeconds=1).get("Messages", [])
        for message in got:
            group, seq = message["Body"].split(":")
            received[group].append(int(seq))
            partition_of[group].add(message["ReceiptHandle"].split(".", 1)[0])
        if got:
            third.delete_message_batch(QueueUrl=url, Entries=[
                {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(got)])
    assert received == {g: list(range(6)) for g in groups}, received
    assert all(len(p) == 1 for p in partition_of.values()), partition_of
    assert len(set().union(*partition_of.values())) > 1, partition_of   # spread
    assert again["MessageId"]
    # The errors that fail a batch as a whole, whichever partitions its groups are on.
    with pytest.raises(ClientError) as exc:
        first.send_message_batch(QueueUrl=url, Entries=[
            {"Id": "a", "MessageBody": "x", "MessageGroupId": "g1",
             "MessageDeduplicationId": "a"},
            {"Id": "b", "MessageBody": "y", "MessageDeduplicationId": "b"}])
    assert _error(exc) == ("InvalidParameterValue",
                           "The request must contain the parameter MessageGroupId.")
    with pytest.raises(ClientError) as exc:
        first.send_message_batch(QueueUrl=url, Entries=[
            {"Id": "a", "MessageBody": "x" * 600_000, "MessageGroupId": "g1",
             "MessageDeduplicationId": "a"},
            {"Id": "b", "MessageBody": "y" * 500_000, "MessageGroupId": "g2",
             "MessageDeduplicationId": "b"}])
    assert _error(exc)[0] == "AWS.SimpleQueueService.BatchRequestTooLong"
    with pytest.raises(ClientError) as exc:
        first.set_queue_attributes(QueueUrl=url, Attributes={"DeduplicationScope": "queue"})
    assert _error(exc)[0] == "InvalidParameterValue"
    with pytest.raises(ClientError) as exc:
        first.send_message(QueueUrl=url, MessageBody="no group")
    assert _error(exc)[0] in ("MissingParameter", "AWS.SimpleQueueService.MissingParameter")
    first.delete_queue(QueueUrl=url)


def test_a_redrive_between_partitioned_queues_spreads_over_the_dead_letter_partitions(
        cluster: LocalCluster) -> None:
    first, second, third = (_client(u) for u in cluster.urls())
    dlq_url = first.create_queue(QueueName="dead", tags={"ferry:partitions": "3",
                                                         "ferry:replicas": "1"})["QueueUrl"]
    dlq_arn = first.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    url = second.create_queue(
        QueueName="redriven", tags={"ferry:partitions": "2", "ferry:replicas": "1"},
        Attributes={"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                                 "maxReceiveCount": "1"})})["QueueUrl"]
    _leaders_of(cluster, "dead", 3)
    _leaders_of(cluster, "redriven", 2)
    bodies = {f"doomed {n}" for n in range(30)}
    for body in sorted(bodies):
        third.send_message(QueueUrl=url, MessageBody=body)
    # Received once (the most allowed) and let go at once...
    got = _drain(first, url, len(bodies))
    assert {m["Body"] for m in got} == bodies
    for message in got:
        first.change_message_visibility(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"],
                                        VisibilityTimeout=0)
    # ...so the next receives move every one to the dead-letter queue instead (a
    # receive moves the messages it comes across, and delivers none of them).
    def moved_all() -> int | None:
        assert not first.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get(
            "Messages")
        n = int(second.get_queue_attributes(
            QueueUrl=dlq_url, AttributeNames=["ApproximateNumberOfMessages"])[
            "Attributes"]["ApproximateNumberOfMessages"])
        return n if n >= len(bodies) else None

    moved = _until("every message in the dead-letter queue", moved_all)
    assert moved == len(bodies)
    dead = _drain(third, dlq_url, len(bodies))
    assert sorted(m["Body"] for m in dead) == sorted(bodies)
    assert len({m["ReceiptHandle"].split(".", 1)[0] for m in dead}) > 1  # spread
    for message in dead:
        third.change_message_visibility(QueueUrl=dlq_url,
                                        ReceiptHandle=message["ReceiptHandle"],
                                        VisibilityTimeout=0)

    # A move task over the dead-letter queue's three partitions is one task to the
    # client, whichever node it asks: one handle, summed counts, one status.
    slow = first.start_message_move_task(SourceArn=dlq_arn, MaxNumberOfMessagesPerSecond=3)
    with pytest.raises(ClientError) as exc:
        second.start_message_move_task(SourceArn=dlq_arn)
    assert _error(exc) == ("InvalidParameterValue", "There is already a task running. Only "
                           "one active task is allowed for a source queue arn at a given "
                           "time.")
    [running] = third.list_message_move_tasks(SourceArn=dlq_arn)["Results"]
    assert (running["Status"], running["TaskHandle"], running["SourceArn"],
            running["ApproximateNumberOfMessagesToMove"],
            running["MaxNumberOfMessagesPerSecond"]) == (
        "RUNNING", slow["TaskHandle"], dlq_arn, len(bodies), 3)
    cancelled = second.cancel_message_move_task(TaskHandle=slow["TaskHandle"])
    with pytest.raises(ClientError) as exc:
        first.cancel_message_move_task(TaskHandle=slow["TaskHandle"])
    assert _error(exc) == ("InvalidParameterValue", "Only active tasks can be cancelled.")
    [ended] = first.list_message_move_tasks(SourceArn=dlq_arn)["Results"]
    assert ended["Status"] == "CANCELLED" and "TaskHandle" not in ended
    assert ended["ApproximateNumberOfMessagesMoved"] == cancelled[
        "ApproximateNumberOfMessagesMoved"] < len(bodies)

    # At the default rate every partition's part completes: each message back in the
    # queue it came from, once.
    fast = second.start_message_move_task(SourceArn=dlq_arn)

    def completed() -> dict[str, Any] | None:
        task = first.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=10)["Results"][0]
        return task if task["Status"] == "COMPLETED" else None

    done = _until("the move task completed", completed)
    assert "TaskHandle" not in done and done["StartedTimestamp"] >= ended["StartedTimestamp"]
    assert done["ApproximateNumberOfMessagesMoved"] == len(bodies) - ended[
        "ApproximateNumberOfMessagesMoved"]
    assert len(first.list_message_move_tasks(SourceArn=dlq_arn, MaxResults=10)[
        "Results"]) == 2
    assert fast["TaskHandle"] != slow["TaskHandle"]
    back = _drain(second, url, len(bodies))
    assert sorted(m["Body"] for m in back) == sorted(bodies)
    assert not first.receive_message(QueueUrl=dlq_url).get("Messages")
    for queue_url in (url, dlq_url):
        first.delete_queue(QueueUrl=queue_url)
