"""One replica set per queue, on real nodes and etcd: placement by the ferry: tags,
the catalog every node answers from, and dead-letter redrive and move tasks between
queues that live on different replica sets."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from botocore.exceptions import ClientError

from ferrymq._coordination import ETCD_INSTALL_HINT, etcd_binary

from ._cluster import LocalCluster, local_cluster
from ._harness import make_client

pytestmark = pytest.mark.skipif(etcd_binary() is None, reason=ETCD_INSTALL_HINT)

T = TypeVar("T")
_WAIT_S = 20.0


def _client(url: str, protocol: str = "json") -> Any:
    # Retried as users' SDKs retry: a 503 while a new queue's leader is being elected
    # is part of the contract.
    return make_client(url, protocol, retries={"mode": "standard", "max_attempts": 8})


def _until(what: str, probe: Callable[[], T | None], timeout_s: float = _WAIT_S) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got is not None:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _status(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_ferry/status", timeout=2) as resp:
        doc: dict[str, Any] = json.loads(resp.read())
        return doc


def _sets_of(cluster: LocalCluster, *queues: str) -> dict[str, dict[str, Any]]:
    """The replica sets of ``queues``, once each has a leader."""
    def ready() -> dict[str, dict[str, Any]] | None:
        sets = _replica_sets(cluster)
        return sets if set(queues) <= set(sets) else None

    return _until(f"leaders of {queues}", ready)


def _replica_sets(cluster: LocalCluster) -> dict[str, dict[str, Any]]:
    """queue -> the replica set as its leader reports it."""
    found: dict[str, dict[str, Any]] = {}
    for node in cluster.node_ids():
        for part in _status(cluster.url(node))["partitions"].values():
            if part["role"] == "leader" and part["queue"]:
                found[part["queue"]] = part
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with local_cluster(tmp_path_factory.mktemp("queues")) as c:
        yield c


def test_each_queue_gets_the_replica_set_its_tags_ask_for(cluster: LocalCluster) -> None:
    first, second, third = (_client(u) for u in cluster.urls())
    url3 = first.create_queue(QueueName="three")["QueueUrl"]
    first.create_queue(QueueName="one", tags={"ferry:replicas": "1"})
    second.create_queue(QueueName="two.fifo", Attributes={"FifoQueue": "true"},
                        tags={"ferry:replicas": "2", "ferry:durability": "async"})
    sets = _sets_of(cluster, "three", "one", "two.fifo")
    assert (len(sets["three"]["replicas"]), sets["three"]["min_isr"],
            sets["three"]["sync"]) == (3, 2, True)
    assert (len(sets["one"]["replicas"]), sets["one"]["min_isr"]) == (1, 1)
    assert (len(sets["two.fifo"]["replicas"]), sets["two.fifo"]["sync"]) == (2, False)
    # Placed by load: the three replica sets are not all led by one node.
    assert len({s["leader"] for s in sets.values()}) > 1
    # Every node knows every queue at once (the catalog), over both protocols.
    for url in cluster.urls():
        for protocol in ("json", "query"):
            c = _client(url, protocol)
            assert sorted(u.rsplit("/", 1)[-1] for u in c.list_queues()["QueueUrls"]) \
                == ["one", "three", "two.fifo"]
            assert c.get_queue_url(QueueName="one")["QueueUrl"].endswith("/one")
    # Any node serves any queue: send through one, receive through another.
    third.send_message(QueueUrl=url3, MessageBody="hello")
    got = second.receive_message(QueueUrl=url3, WaitTimeSeconds=5)["Messages"]
    assert [m["Body"] for m in got] == ["hello"]
    tags = third.list_queue_tags(QueueUrl=url3.replace("three", "one"))["Tags"]
    assert tags == {"ferry:replicas": "1"}


@pytest.mark.parametrize(("tags", "text"), [
    ({"ferry:replicas": "4"}, "Value 4 for tag ferry:replicas is invalid. Allowed: an "
                              "integer from 1 to 3 (the cluster has 3 live nodes)."),
    ({"ferry:replicas": "0"}, "Value 0 for tag ferry:replicas is invalid."),
    ({"ferry:replicas": "2", "ferry:min-insync-replicas": "3"},
     "Value 3 for tag ferry:min-insync-replicas is invalid. Allowed: an integer from 1 "
     "to 2."),
    ({"ferry:durability": "eventually"},
     "Value eventually for tag ferry:durability is invalid. Allowed: sync, async."),
    ({"ferry:colour": "blue"}, "Unknown reserved tag ferry:colour"),
])
def test_bad_ferry_tags_are_refused_and_nothing_is_placed(
        cluster: LocalCluster, tags: dict[str, str], text: str) -> None:
    c = _client(cluster.urls()[1])
    with pytest.raises(ClientError) as info:
        c.create_queue(QueueName="refused", tags=tags)
    assert info.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert text in info.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as missing:
        c.get_queue_url(QueueName="refused")
    assert missing.value.response["Error"]["Code"] == \
        "AWS.SimpleQueueService.NonExistentQueue"


def test_redrive_and_move_task_between_replica_sets(cluster: LocalCluster) -> None:
    a, b, _ = (_client(u) for u in cluster.urls())
    dlq_url = a.create_queue(QueueName="dead", tags={"ferry:replicas": "1"})["QueueUrl"]
    dlq_arn = a.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"]
                                     )["Attributes"]["QueueArn"]
    src_url = b.create_queue(QueueName="work", Attributes={
        "VisibilityTimeout": "0",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                     "maxReceiveCount": "1"})})["QueueUrl"]
    sets = _sets_of(cluster, "dead", "work")
    assert sets["dead"]["partition"] != sets["work"]["partition"]
    sent = b.send_message(QueueUrl=src_url, MessageBody="poison",
                          MessageAttributes={"k": {"DataType": "String",
                                                   "StringValue": "v"}})
    first = b.receive_message(QueueUrl=src_url, WaitTimeSeconds=5)["Messages"]
    assert [m["MessageId"] for m in first] == [sent["MessageId"]]
    # Its second receive moves it to the dead-letter queue on the other replica set.
    assert b.receive_message(QueueUrl=src_url).get("Messages", []) == []

    def in_dlq() -> list[dict[str, Any]] | None:
        got = a.receive_message(QueueUrl=dlq_url, AttributeNames=["All"],
                                MessageAttributeNames=["All"], VisibilityTimeout=0
                                ).get("Messages")
        return got or None

    moved = _until("the redriven message", in_dlq)
    assert [m["MessageId"] for m in moved] == [sent["MessageId"]]
    assert moved[0]["Body"] == "poison"
    assert moved[0]["MessageAttributes"]["k"]["StringValue"] == "v"
    assert moved[0]["Attributes"]["DeadLetterQueueSourceArn"].endswith(":work")
    # Gone from the source, for good.
    counts = b.get_queue_attributes(QueueUrl=src_url, AttributeNames=["All"])["Attributes"]
    assert (counts["ApproximateNumberOfMessages"],
            counts["ApproximateNumberOfMessagesNotVisible"]) == ("0", "0")
    # The DLQ's replica set knows its source on the other one.
    # (URLs name the node the client asked.)
    sources = a.list_dead_letter_source_queues(QueueUrl=dlq_url)["queueUrls"]
    assert [u.rsplit("/", 2)[-2:] for u in sources] == [src_url.rsplit("/", 2)[-2:]]
    # And a move task takes it back across.
    a.start_message_move_task(SourceArn=dlq_arn)

    def back() -> list[dict[str, Any]] | None:
        return b.receive_message(QueueUrl=src_url, AttributeNames=["All"]).get("Messages")

    returned = _until("the message moved back", back)
    assert [m["MessageId"] for m in returned] == [sent["MessageId"]]
    assert returned[0]["Attributes"]["ApproximateReceiveCount"] == "1"
    def finished() -> list[dict[str, Any]] | None:
        tasks = a.list_message_move_tasks(SourceArn=dlq_arn)["Results"]
        return tasks if tasks and tasks[0]["Status"] == "COMPLETED" else None

    tasks = _until("the task to finish", finished)
    assert tasks[0]["ApproximateNumberOfMessagesMoved"] == 1


def test_a_dead_letter_target_on_another_set_is_checked(cluster: LocalCluster) -> None:
    c = _client(cluster.urls()[2])
    fifo_url = c.create_queue(QueueName="dlq-typed.fifo", Attributes={"FifoQueue": "true"},
                              tags={"ferry:replicas": "1"})["QueueUrl"]
    arn = c.get_queue_attributes(QueueUrl=fifo_url, AttributeNames=["QueueArn"]
                                 )["Attributes"]["QueueArn"]
    policy = json.dumps({"deadLetterTargetArn": arn, "maxReceiveCount": 3})
    with pytest.raises(ClientError) as info:
        c.create_queue(QueueName="standard-src", Attributes={"RedrivePolicy": policy})
    assert info.value.response["Error"]["Message"].endswith(
        "Dead-letter queue must be same type of queue as the source.")
    missing = json.dumps({"deadLetterTargetArn": arn.replace("dlq-typed", "nope"),
                          "maxReceiveCount": 3})
    with pytest.raises(ClientError) as gone:
        c.create_queue(QueueName="standard-src", Attributes={"RedrivePolicy": missing})
    assert gone.value.response["Error"]["Message"].endswith(
        "Dead letter target does not exist.")


def test_delete_removes_the_queue_and_its_replica_set_everywhere(
        cluster: LocalCluster) -> None:
    a, b, c = (_client(u) for u in cluster.urls())
    url = a.create_queue(QueueName="short-lived")["QueueUrl"]
    part = _sets_of(cluster, "short-lived")["short-lived"]
    b.delete_queue(QueueUrl=url)

    def unlisted(client: Any) -> bool | None:
        # Every node lists from its watched copy of the catalog, so a deletion shows
        # within the watch's delay (SQS: "up to 60 seconds").
        names = [u.rsplit("/", 1)[-1] for u in client.list_queues().get("QueueUrls", [])]
        return True if "short-lived" not in names else None

    for client in (a, b, c):
        _until("the queue to leave the listing", lambda: unlisted(client), 5.0)  # noqa: B023
    with pytest.raises(ClientError) as info:
        c.send_message(QueueUrl=url, MessageBody="x")
    assert info.value.response["Error"]["Code"] == "AWS.SimpleQueueService.NonExistentQueue"
    with pytest.raises(ClientError) as recent:
        c.create_queue(QueueName="short-lived")
    assert recent.value.response["Error"]["Code"] == \
        "AWS.SimpleQueueService.QueueDeletedRecently"

    def files_gone() -> bool | None:
        present = [p for p in Path(cluster.data_dir).rglob(f"{part['partition']}.sqlite3*")]
        return True if not present else None

    _until("its replica set's files to go", files_gone)
