"""Queue-level actions of the broker core, with an injected clock and entropy."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from typing import Any

import pytest
from _doubles import CountingEntropy

from ferrymq._core._broker import Broker, Replication, RequestInfo
from ferrymq._core._effects import Effect, MessageRemoved, MessageStored
from ferrymq._core._errors import InternalError, SqsError
from ferrymq._core._messages import NAMES_PER_LIST_MAX
from ferrymq._core._queue import BodyBudget

INFO = RequestInfo(base_url="http://localhost:9324", sender_id="AKIDTEST")
ARN = "arn:aws:sqs:us-east-1:000000000000:"


class Harness:
    def __init__(self, **kwargs: Any) -> None:
        self.broker = Broker(**kwargs)
        self.now_ms = 1_700_000_000_000
        self.entropy = CountingEntropy()
        self.effects: list[Effect] = []

    def __call__(self, action: str, **params: Any) -> dict[str, Any]:
        outcome = self.broker.execute(action, params, self.now_ms, self.entropy, INFO)
        self.effects.extend(outcome.effects)
        return outcome.response

    def url(self, name: str) -> str:
        return f"http://localhost:9324/000000000000/{name}"

    def replayed(self) -> Broker:
        fresh = Broker()
        for effect in self.effects:
            fresh.apply(effect)
        return fresh


def code(exc: pytest.ExceptionInfo[SqsError]) -> str:
    return exc.value.code


@pytest.fixture
def sqs() -> Harness:
    return Harness()


def test_create_is_idempotent_with_identical_attributes(sqs: Harness) -> None:
    url = sqs("CreateQueue", QueueName="q1", Attributes={"VisibilityTimeout": "30"})["QueueUrl"]
    assert url == sqs.url("q1")
    assert sqs("CreateQueue", QueueName="q1", Attributes={"VisibilityTimeout": "30"}) == {
        "QueueUrl": url
    }
    assert sqs("CreateQueue", QueueName="q1") == {"QueueUrl": url}
    with pytest.raises(SqsError) as exc:
        sqs("CreateQueue", QueueName="q1", Attributes={"VisibilityTimeout": "31"})
    assert code(exc) == "QueueAlreadyExists"
    assert "VisibilityTimeout" in exc.value.message


@pytest.mark.parametrize("name", ["", "a" * 81, "has space", "dot.ted", "x.fifo"])
def test_create_rejects_bad_names(sqs: Harness, name: str) -> None:
    with pytest.raises(SqsError) as exc:
        sqs("CreateQueue", QueueName=name)
    assert code(exc) == "InvalidParameterValue"


STANDARD_NAME_TEXT = ("Can only include alphanumeric characters, hyphens, or underscores. "
                      "1 to 80 in length")
FIFO_NAME_TEXT = ("The name of a FIFO queue can only include alphanumeric characters, hyphens, "
                  "or underscores, must end with .fifo suffix and be 1 to 80 in length.")


@pytest.mark.parametrize(("name", "attributes", "text"), [
    # A ".fifo" name on a standard queue is a bad standard name (boto/botocore#3058).
    ("messages.fifo", {}, STANDARD_NAME_TEXT),
    ("has space", {}, STANDARD_NAME_TEXT),
    ("nofifo", {"FifoQueue": "true"}, FIFO_NAME_TEXT),
    ("bad name.fifo", {"FifoQueue": "true"}, FIFO_NAME_TEXT),
])
def test_bad_queue_name_texts(sqs: Harness, name: str, attributes: dict[str, str],
                              text: str) -> None:
    with pytest.raises(SqsError) as exc:
        sqs("CreateQueue", QueueName=name, Attributes=attributes)
    assert (code(exc), exc.value.message) == ("InvalidParameterValue", text)


def test_fifo_queue_needs_suffix_and_attribute(sqs: Harness) -> None:
    with pytest.raises(SqsError):
        sqs("CreateQueue", QueueName="nofifo", Attributes={"FifoQueue": "true"})
    sqs("CreateQueue", QueueName="q.fifo", Attributes={"FifoQueue": "true"})
    attrs = sqs("GetQueueAttributes", QueueUrl=sqs.url("q.fifo"), AttributeNames=["All"])[
        "Attributes"
    ]
    assert attrs["FifoQueue"] == "true"
    assert attrs["DeduplicationScope"] == "queue"
    assert attrs["FifoThroughputLimit"] == "perQueue"
    assert attrs["ContentBasedDeduplication"] == "false"


def test_default_attributes_match_sqs(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="q")
    attrs = sqs("GetQueueAttributes", QueueUrl=sqs.url("q"), AttributeNames=["All"])["Attributes"]
    assert attrs == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
        "ApproximateNumberOfMessagesDelayed": "0",
        "CreatedTimestamp": str(sqs.now_ms // 1000),
        "LastModifiedTimestamp": str(sqs.now_ms // 1000),
        "DelaySeconds": "0",
        "MaximumMessageSize": "1048576",
        "MessageRetentionPeriod": "345600",
        "QueueArn": ARN + "q",
        "ReceiveMessageWaitTimeSeconds": "0",
        "VisibilityTimeout": "30",
        "SqsManagedSseEnabled": "true",
    }


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("VisibilityTimeout", "43201", "InvalidAttributeValue"),
        ("DelaySeconds", "-1", "InvalidAttributeValue"),
        ("MaximumMessageSize", "1023", "InvalidAttributeValue"),
        ("MessageRetentionPeriod", "59", "InvalidAttributeValue"),
        ("ReceiveMessageWaitTimeSeconds", "21", "InvalidAttributeValue"),
        ("VisibilityTimeout", "ten", "InvalidAttributeValue"),
        ("Bogus", "1", "InvalidAttributeName"),
        ("QueueArn", "x", "InvalidAttributeName"),
        ("FifoQueue", "true", "InvalidAttributeName"),
        ("ContentBasedDeduplication", "true", "InvalidAttributeName"),
        ("DeduplicationScope", "queue", "InvalidAttributeName"),
        ("Policy", "{not json", "InvalidAttributeValue"),
        ("FifoQueue", "false", "InvalidAttributeName"),
    ],
)
def test_set_attributes_validation(sqs: Harness, name: str, value: str, expected: str) -> None:
    sqs("CreateQueue", QueueName="q")
    with pytest.raises(SqsError) as exc:
        sqs("SetQueueAttributes", QueueUrl=sqs.url("q"), Attributes={name: value})
    assert code(exc) == expected


UNKNOWN_FIFO_QUEUE = ("InvalidAttributeName", "Unknown Attribute FifoQueue.")


@pytest.mark.parametrize("value", ["false", "False"])
def test_fifo_queue_false_is_unknown_for_standard_queues(sqs: Harness, value: str) -> None:
    # Recorded on AWS, for CreateQueue and SetQueueAttributes alike.
    with pytest.raises(SqsError) as exc:
        sqs("CreateQueue", QueueName="q", Attributes={"FifoQueue": value})
    assert (code(exc), exc.value.message) == UNKNOWN_FIFO_QUEUE
    assert not sqs.broker.queue_exists("q")
    sqs("CreateQueue", QueueName="q")
    with pytest.raises(SqsError) as exc:
        sqs("SetQueueAttributes", QueueUrl=sqs.url("q"), Attributes={"FifoQueue": value})
    assert (code(exc), exc.value.message) == UNKNOWN_FIFO_QUEUE


def test_fifo_type_cannot_change(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="q.fifo", Attributes={"FifoQueue": "true"})
    with pytest.raises(SqsError) as exc:
        sqs("SetQueueAttributes", QueueUrl=sqs.url("q.fifo"), Attributes={"FifoQueue": "false"})
    assert code(exc) == "InvalidAttributeValue"
    assert exc.value.message == (
        "Invalid value for the parameter FifoQueue. Reason: Modifying queue type is not supported."
    )


def test_set_attributes_changes_settings_and_modified_time(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="q")
    sqs.now_ms += 5_000
    sqs("SetQueueAttributes", QueueUrl=sqs.url("q"), Attributes={"VisibilityTimeout": "5"})
    attrs = sqs(
        "GetQueueAttributes",
        QueueUrl=sqs.url("q"),
        AttributeNames=["VisibilityTimeout", "LastModifiedTimestamp"],
    )["Attributes"]
    assert attrs == {"VisibilityTimeout": "5", "LastModifiedTimestamp": str(sqs.now_ms // 1000)}
    messages = sqs.broker.queue_messages("q")
    assert messages is not None and messages.settings.visibility_timeout_ms == 5_000


def test_unknown_queue(sqs: Harness) -> None:
    for action in ("GetQueueAttributes", "DeleteQueue", "PurgeQueue", "ListQueueTags"):
        with pytest.raises(SqsError) as exc:
            sqs(action, QueueUrl=sqs.url("nope"))
        assert code(exc) == "AWS.SimpleQueueService.NonExistentQueue"
        assert exc.value.shape == "QueueDoesNotExist"
    with pytest.raises(SqsError) as exc:
        sqs("GetQueueUrl", QueueName="nope")
    assert exc.value.shape == "QueueDoesNotExist"


def test_recreate_after_delete_waits_60_seconds() -> None:
    sqs = Harness()
    sqs("CreateQueue", QueueName="q")
    sqs("DeleteQueue", QueueUrl=sqs.url("q"))
    with pytest.raises(SqsError) as exc:
        sqs("CreateQueue", QueueName="q")
    assert code(exc) == "AWS.SimpleQueueService.QueueDeletedRecently"
    sqs.now_ms += 60_000
    sqs("CreateQueue", QueueName="q")

    relaxed = Harness(recreate_delay_ms=0)
    relaxed("CreateQueue", QueueName="q")
    relaxed("DeleteQueue", QueueUrl=relaxed.url("q"))
    relaxed("CreateQueue", QueueName="q")


def test_purge_once_per_60_seconds() -> None:
    sqs = Harness()
    sqs("CreateQueue", QueueName="q")
    sqs("PurgeQueue", QueueUrl=sqs.url("q"))
    with pytest.raises(SqsError) as exc:
        sqs("PurgeQueue", QueueUrl=sqs.url("q"))
    assert exc.value.status == 403
    assert exc.value.message == "Only one PurgeQueue operation on q is allowed every 60 seconds."
    sqs.now_ms += 60_000
    sqs("PurgeQueue", QueueUrl=sqs.url("q"))
    relaxed = Harness(purge_interval_ms=0)
    relaxed("CreateQueue", QueueName="q")
    relaxed("PurgeQueue", QueueUrl=relaxed.url("q"))
    relaxed("PurgeQueue", QueueUrl=relaxed.url("q"))


def test_list_queues_prefix_and_pages(sqs: Harness) -> None:
    names = [f"app-{i:02d}" for i in range(7)] + ["other"]
    for name in names:
        sqs("CreateQueue", QueueName=name)
    assert sqs("ListQueues", QueueNamePrefix="zzz") == {}
    everything = sqs("ListQueues")
    assert "NextToken" not in everything
    assert len(everything["QueueUrls"]) == 8
    seen: list[str] = []
    token = None
    while True:
        params: dict[str, Any] = {"QueueNamePrefix": "app-", "MaxResults": 3}
        if token:
            params["NextToken"] = token
        page = sqs("ListQueues", **params)
        seen.extend(page["QueueUrls"])
        token = page.get("NextToken")
        if not token:
            break
    assert seen == [sqs.url(n) for n in names[:7]]
    with pytest.raises(SqsError):
        sqs("ListQueues", MaxResults=0)


def test_tags(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="q", tags={"a": "1"})
    sqs("TagQueue", QueueUrl=sqs.url("q"), Tags={"b": "2", "a": "3"})
    assert sqs("ListQueueTags", QueueUrl=sqs.url("q")) == {"Tags": {"a": "3", "b": "2"}}
    sqs("UntagQueue", QueueUrl=sqs.url("q"), TagKeys=["a", "missing"])
    assert sqs("ListQueueTags", QueueUrl=sqs.url("q")) == {"Tags": {"b": "2"}}
    sqs("UntagQueue", QueueUrl=sqs.url("q"), TagKeys=["b"])
    assert sqs("ListQueueTags", QueueUrl=sqs.url("q")) == {}


CLUSTER = Replication(replicas=3, min_isr=2, sync=True, cluster=True)


@pytest.mark.parametrize("tags", [
    {"ferry:replicas": "3"}, {"ferry:min-insync-replicas": "2"},
    {"ferry:durability": "sync", "ferry:replicas": "3", "other": "x"},
])
def test_replication_tags_that_match_the_replica_set_are_kept(
        tags: dict[str, str]) -> None:
    sqs = Harness(replication=CLUSTER)
    sqs("CreateQueue", QueueName="q", tags=tags)
    assert sqs("ListQueueTags", QueueUrl=sqs.url("q")) == {"Tags": tags}


@pytest.mark.parametrize(("tags", "message"), [
    ({"ferry:replicas": "two"}, "Value two for tag ferry:replicas is invalid. Allowed: an "
                                "integer from 1 to 7."),
    ({"ferry:replicas": "0"}, "Value 0 for tag ferry:replicas is invalid. Allowed: an "
                              "integer from 1 to 7."),
    ({"ferry:replicas": "٣"}, "Value ٣ for tag ferry:replicas is invalid. Allowed: an "
                              "integer from 1 to 7."),
    ({"ferry:replicas": "5"}, "Value 5 for tag ferry:replicas is not available: the "
                              "queue's replica set has 3 replicas, 2 of them in sync, "
                              "sync durability."),
    ({"ferry:min-insync-replicas": "4"}, "Value 4 for tag ferry:min-insync-replicas is "
                                         "invalid. Allowed: an integer from 1 to 3."),
    ({"ferry:min-insync-replicas": "1"}, "Value 1 for tag ferry:min-insync-replicas is not "
                                         "available: the queue's replica set has 3 "
                                         "replicas, 2 of them in sync, sync durability."),
    ({"ferry:durability": "eventual"}, "Value eventual for tag ferry:durability is invalid. "
                                       "Allowed: sync, async."),
    ({"ferry:durability": "async"}, "Value async for tag ferry:durability is not available: "
                                    "the queue's replica set has 3 replicas, 2 of them in "
                                    "sync, sync durability."),
    ({"ferry:speed": "fast"}, "Unknown reserved tag ferry:speed: the ferry: tags are "
                              "ferry:replicas, ferry:min-insync-replicas, ferry:durability, "
                              "ferry:partitions."),
    ({"ferry:partitions": "0"}, "Value 0 for tag ferry:partitions is invalid. Allowed: an "
                                "integer from 1 to 256."),
    ({"ferry:partitions": "257"}, "Value 257 for tag ferry:partitions is invalid. Allowed: "
                                  "an integer from 1 to 256."),
])
def test_replication_tags_are_checked(tags: dict[str, str], message: str) -> None:
    sqs = Harness(replication=CLUSTER)
    with pytest.raises(SqsError) as exc:
        sqs("CreateQueue", QueueName="q", tags=tags)
    assert (exc.value.code, exc.value.message) == ("InvalidParameterValue", message)
    assert sqs("ListQueues") == {}
    assert sqs.effects == []


def test_serve_keeps_one_copy_and_says_so(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="q", tags={"ferry:replicas": "1"})
    with pytest.raises(SqsError) as exc:
        sqs("CreateQueue", QueueName="r", tags={"ferry:replicas": "3"})
    assert exc.value.message == ("Value 3 for tag ferry:replicas is not available: "
                                 "ferrymq serve keeps one copy of every queue.")


def test_serve_keeps_one_partition_and_says_so(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="q", tags={"ferry:partitions": "1"})
    with pytest.raises(SqsError) as exc:
        sqs("CreateQueue", QueueName="r", tags={"ferry:partitions": "4"})
    assert exc.value.message == ("Value 4 for tag ferry:partitions is not available: "
                                 "ferrymq serve keeps every queue in one partition.")


def test_a_fifo_queue_is_partitioned_only_with_deduplication_per_group() -> None:
    sqs = Harness(replication=Replication(replicas=3, min_isr=2, sync=True, cluster=True,
                                          partitions=2))
    for scope in ({}, {"DeduplicationScope": "queue"}):
        with pytest.raises(SqsError) as exc:
            sqs("CreateQueue", QueueName="q.fifo",
                Attributes={"FifoQueue": "true", **scope}, tags={"ferry:partitions": "2"})
        assert exc.value.message == (
            "Value 2 for tag ferry:partitions is invalid: a FIFO queue is partitioned only "
            "when its DeduplicationScope is messageGroup; with queue-wide deduplication it "
            "is kept in one partition.")
    sqs("CreateQueue", QueueName="q.fifo", tags={"ferry:partitions": "2"},
        Attributes={"FifoQueue": "true", "DeduplicationScope": "messageGroup",
                    "FifoThroughputLimit": "perMessageGroupId"})
    sqs("CreateQueue", QueueName="standard", tags={"ferry:partitions": "2"})


def test_replication_tags_cannot_be_changed_later(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="q", tags={"ferry:replicas": "1"})
    for action, params in (("TagQueue", {"Tags": {"ferry:replicas": "1"}}),
                           ("UntagQueue", {"TagKeys": ["ferry:replicas"]})):
        with pytest.raises(SqsError) as exc:
            sqs(action, QueueUrl=sqs.url("q"), **params)
        assert exc.value.message == ("Tag ferry:replicas is reserved: ferry: tags are set "
                                     "by CreateQueue only.")
    assert sqs("ListQueueTags", QueueUrl=sqs.url("q")) == {"Tags": {"ferry:replicas": "1"}}


def test_permissions_live_in_policy(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="q")
    sqs(
        "AddPermission",
        QueueUrl=sqs.url("q"),
        Label="l1",
        AWSAccountIds=["111122223333"],
        Actions=["SendMessage", "ReceiveMessage"],
    )
    policy = json.loads(
        sqs("GetQueueAttributes", QueueUrl=sqs.url("q"), AttributeNames=["Policy"])["Attributes"][
            "Policy"
        ]
    )
    (statement,) = policy["Statement"]
    assert statement["Sid"] == "l1"
    assert statement["Action"] == ["SQS:SendMessage", "SQS:ReceiveMessage"]
    with pytest.raises(SqsError) as exc:
        sqs(
            "AddPermission",
            QueueUrl=sqs.url("q"),
            Label="l1",
            AWSAccountIds=["1"],
            Actions=["SendMessage"],
        )
    assert code(exc) == "InvalidParameterValue"
    with pytest.raises(SqsError) as exc:
        sqs(
            "AddPermission",
            QueueUrl=sqs.url("q"),
            Label="l2",
            AWSAccountIds=["1"],
            Actions=["SendMessage"] * 8,
        )
    assert code(exc) == "OverLimit"
    sqs("RemovePermission", QueueUrl=sqs.url("q"), Label="l1")
    assert sqs("GetQueueAttributes", QueueUrl=sqs.url("q"), AttributeNames=["Policy"]) == {}
    with pytest.raises(SqsError):
        sqs("RemovePermission", QueueUrl=sqs.url("q"), Label="l1")


def redrive(target: str, count: int = 2) -> str:
    return json.dumps({"deadLetterTargetArn": ARN + target, "maxReceiveCount": count})


def test_redrive_policy_validation(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="dlq")
    sqs("CreateQueue", QueueName="dlq.fifo", Attributes={"FifoQueue": "true"})
    with pytest.raises(SqsError) as exc:
        sqs("CreateQueue", QueueName="src", Attributes={"RedrivePolicy": redrive("missing")})
    assert code(exc) == "InvalidParameterValue"
    with pytest.raises(SqsError):
        sqs("CreateQueue", QueueName="src", Attributes={"RedrivePolicy": redrive("dlq.fifo")})
    for bad in (
        '{"maxReceiveCount": 2}',
        '{"deadLetterTargetArn": "' + ARN + 'dlq"}',
        redrive("dlq", 0),
        redrive("dlq", 1001),
        "not json",
    ):
        with pytest.raises(SqsError) as exc:
            sqs("CreateQueue", QueueName="src", Attributes={"RedrivePolicy": bad})
        assert code(exc) == "InvalidParameterValue"
    sqs("CreateQueue", QueueName="src", Attributes={"RedrivePolicy": redrive("dlq")})
    assert sqs("ListDeadLetterSourceQueues", QueueUrl=sqs.url("dlq")) == {
        "queueUrls": [sqs.url("src")]
    }
    sqs("SetQueueAttributes", QueueUrl=sqs.url("src"), Attributes={"RedrivePolicy": ""})
    assert sqs("ListDeadLetterSourceQueues", QueueUrl=sqs.url("dlq")) == {"queueUrls": []}


@pytest.mark.parametrize("action", ["CreateQueue", "SetQueueAttributes"])
def test_redrive_errors_echo_the_policy_as_sent(sqs: Harness, action: str) -> None:
    # As AWS does: "maxReceiveCount":"15" stays a string, spacing is the client's.
    sqs("CreateQueue", QueueName="dlq.fifo", Attributes={"FifoQueue": "true"})
    sqs("CreateQueue", QueueName="src")
    cases = [
        ('{"deadLetterTargetArn": "' + ARN + 'missing",  "maxReceiveCount": "15"}',
         "Dead letter target does not exist."),
        ('{"maxReceiveCount":"15","deadLetterTargetArn":"' + ARN + 'dlq.fifo"}',
         "Dead-letter queue must be same type of queue as the source."),
    ]
    for policy, reason in cases:
        with pytest.raises(SqsError) as exc:
            if action == "CreateQueue":
                sqs("CreateQueue", QueueName="new", Attributes={"RedrivePolicy": policy})
            else:
                sqs("SetQueueAttributes", QueueUrl=sqs.url("src"),
                    Attributes={"RedrivePolicy": policy})
        assert (code(exc), exc.value.message) == (
            "InvalidParameterValue",
            f"Value {policy} for parameter RedrivePolicy is invalid. Reason: {reason}")


def test_redrive_allow_policy(sqs: Harness) -> None:
    deny = json.dumps({"redrivePermission": "denyAll"})
    sqs("CreateQueue", QueueName="dlq", Attributes={"RedriveAllowPolicy": deny})
    with pytest.raises(SqsError):
        sqs("CreateQueue", QueueName="src", Attributes={"RedrivePolicy": redrive("dlq")})
    by_queue = json.dumps({"redrivePermission": "byQueue", "sourceQueueArns": [ARN + "src"]})
    sqs("SetQueueAttributes", QueueUrl=sqs.url("dlq"), Attributes={"RedriveAllowPolicy": by_queue})
    sqs("CreateQueue", QueueName="src", Attributes={"RedrivePolicy": redrive("dlq")})
    with pytest.raises(SqsError):
        sqs("CreateQueue", QueueName="other", Attributes={"RedrivePolicy": redrive("dlq")})
    for bad in (
        '{"redrivePermission": "byQueue"}',
        '{"redrivePermission": "maybe"}',
        json.dumps(
            {"redrivePermission": "byQueue", "sourceQueueArns": [ARN + f"q{i}" for i in range(11)]}
        ),
    ):
        with pytest.raises(SqsError) as exc:
            sqs(
                "SetQueueAttributes",
                QueueUrl=sqs.url("dlq"),
                Attributes={"RedriveAllowPolicy": bad},
            )
        assert code(exc) == "InvalidParameterValue"


def nested(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


@pytest.mark.parametrize("name", ["Policy", "RedrivePolicy", "RedriveAllowPolicy"])
@pytest.mark.parametrize("depth", [33, 1000, 4000])
def test_deeply_nested_policies_are_invalid_at_any_depth(
    sqs: Harness, name: str, depth: int
) -> None:
    sqs("CreateQueue", QueueName="q")
    for value in (nested(depth), "[" * depth + "]" * depth):
        for action, params in (
            ("SetQueueAttributes", {"QueueUrl": sqs.url("q")}),
            ("CreateQueue", {"QueueName": "other"}),
        ):
            with pytest.raises(SqsError) as exc:
                sqs(action, Attributes={name: value}, **params)
            if name == "Policy" and len(value) > 8192:
                assert (code(exc), exc.value.message) == (
                    "OverLimit", "Submitted policy is over max allowed size.")
            elif name == "Policy":
                assert (code(exc), exc.value.message) == (
                    "InvalidAttributeValue", "Invalid value for the parameter Policy.")
            else:
                reason = "Redrive policy" if name == "RedrivePolicy" else "Redrive allow policy"
                assert code(exc) == "InvalidParameterValue"
                assert exc.value.message.endswith(f"Reason: {reason} is not a valid JSON map.")
                if len(value) > 8192:
                    # Not copied back into the error: it could be most of the request.
                    assert exc.value.message.startswith(f"Value for parameter {name} ")


def test_policy_quotas_as_aws_words_them(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="q")

    def statement(i: int, actions: int = 1) -> dict[str, Any]:
        return {"Sid": f"s{i}", "Effect": "Allow", "Principal": "*",
                "Action": [f"sqs:Action{k}" for k in range(actions)], "Resource": "*"}

    ok = {"Version": "2012-10-17", "Statement": [statement(i) for i in range(20)]}
    sqs("SetQueueAttributes", QueueUrl=sqs.url("q"), Attributes={"Policy": json.dumps(ok)})
    cases = [
        ({"Statement": [statement(i) for i in range(21)]},
         "21 statements were found in the submitted policy, max allowed is 20"),
        ({"Statement": [statement(0, actions=8)]},
         "8 actions were found in a statement from the submitted policy, max allowed is 7"),
        ({"Statement": [statement(0)], "pad": "x" * 8192},
         "Submitted policy is over max allowed size."),
    ]
    for doc, message in cases:
        with pytest.raises(SqsError) as exc:
            sqs("SetQueueAttributes", QueueUrl=sqs.url("q"), Attributes={"Policy": json.dumps(doc)})
        assert (code(exc), exc.value.status, exc.value.message) == ("OverLimit", 403, message)
    # AddPermission keeps the stored policy within the same quotas.
    sqs("SetQueueAttributes", QueueUrl=sqs.url("q"), Attributes={"Policy": ""})
    for i in range(20):
        sqs("AddPermission", QueueUrl=sqs.url("q"), Label=f"l{i}", AWSAccountIds=["111122223333"],
            Actions=["SendMessage"])
    with pytest.raises(SqsError) as exc:
        sqs("AddPermission", QueueUrl=sqs.url("q"), Label="l20", AWSAccountIds=["111122223333"],
            Actions=["SendMessage"])
    assert code(exc) == "OverLimit"


def test_permission_policy_version_and_missing_label_as_recorded(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="q")
    sqs("AddPermission", QueueUrl=sqs.url("q"), Label="crossaccountpermission",
        AWSAccountIds=["111122223333"], Actions=["ReceiveMessage"])
    policy = json.loads(sqs("GetQueueAttributes", QueueUrl=sqs.url("q"),
                            AttributeNames=["Policy"])["Attributes"]["Policy"])
    assert policy["Version"] == "2008-10-17"
    sqs("RemovePermission", QueueUrl=sqs.url("q"), Label="crossaccountpermission")
    with pytest.raises(SqsError) as exc:
        sqs("RemovePermission", QueueUrl=sqs.url("q"), Label="crossaccountpermission2")
    assert exc.value.message == (
        "Value crossaccountpermission2 for parameter Label is invalid. Reason: can't find label.")


def test_request_lists_are_bounded_before_per_item_work(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="q")
    url = sqs.url("q")
    many_tags = {f"k{i}": "v" for i in range(51)}
    for action, params in (("TagQueue", {"QueueUrl": url, "Tags": many_tags}),
                           ("CreateQueue", {"QueueName": "other", "tags": many_tags})):
        with pytest.raises(SqsError) as exc:
            sqs(action, **params)
        assert exc.value.message.startswith("Too many tags added for queue ")
    sqs("TagQueue", QueueUrl=url, Tags={f"k{i}": "v" for i in range(50)})
    # Items that would each be refused are not even looked at past the bound.
    too_many = [1] * (NAMES_PER_LIST_MAX + 1)
    for action, params in (("UntagQueue", {"QueueUrl": url, "TagKeys": too_many}),
                           ("GetQueueAttributes", {"QueueUrl": url, "AttributeNames": too_many})):
        with pytest.raises(SqsError) as exc:
            sqs(action, **params)
        assert "at most 1000 values are allowed" in exc.value.message
    sqs("UntagQueue", QueueUrl=url, TagKeys=[f"k{i % 60}" for i in range(NAMES_PER_LIST_MAX)])
    assert sqs("ListQueueTags", QueueUrl=url) == {}
    with pytest.raises(SqsError) as exc:
        sqs("AddPermission", QueueUrl=url, Label="l", AWSAccountIds=[1] * 51,
            Actions=["SendMessage"])
    assert (code(exc), exc.value.message) == (
        "OverLimit", "51 AWSAccountIds were found, maximum allowed is 50.")
    with pytest.raises(SqsError) as exc:
        sqs("AddPermission", QueueUrl=url, Label="l", AWSAccountIds=["111122223333"],
            Actions=[1] * 8)
    assert code(exc) == "OverLimit"


def test_messages_move_to_dlq_and_back_with_a_move_task(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="dlq")
    sqs(
        "CreateQueue",
        QueueName="src",
        Attributes={"RedrivePolicy": redrive("dlq", 1), "VisibilityTimeout": "1"},
    )
    for i in range(5):
        sqs("SendMessage", QueueUrl=sqs.url("src"), MessageBody=f"m{i}")
    for _ in range(2):
        sqs("ReceiveMessage", QueueUrl=sqs.url("src"), MaxNumberOfMessages=10)
        sqs.now_ms += 1_000
    got = sqs(
        "ReceiveMessage",
        QueueUrl=sqs.url("dlq"),
        MaxNumberOfMessages=10,
        AttributeNames=["All"],
        VisibilityTimeout=0,
    )
    assert len(got["Messages"]) == 5
    assert {m["Attributes"]["DeadLetterQueueSourceArn"] for m in got["Messages"]} == {ARN + "src"}

    with pytest.raises(SqsError) as exc:
        sqs("StartMessageMoveTask", SourceArn=ARN + "src")
    assert code(exc) == "InvalidParameterValue"
    with pytest.raises(SqsError) as exc:
        sqs("StartMessageMoveTask", SourceArn=ARN + "missing")
    assert code(exc) == "ResourceNotFoundException"

    handle = sqs("StartMessageMoveTask", SourceArn=ARN + "dlq", MaxNumberOfMessagesPerSecond=2)[
        "TaskHandle"
    ]
    with pytest.raises(SqsError):
        sqs("StartMessageMoveTask", SourceArn=ARN + "dlq")
    (task,) = sqs("ListMessageMoveTasks", SourceArn=ARN + "dlq")["Results"]
    assert task["Status"] == "RUNNING" and task["TaskHandle"] == handle
    assert task["ApproximateNumberOfMessagesToMove"] == 5
    sqs.now_ms += 1_000
    sqs.effects.extend(sqs.broker.tick(sqs.now_ms, sqs.entropy))
    (task,) = sqs("ListMessageMoveTasks", SourceArn=ARN + "dlq")["Results"]
    assert task["ApproximateNumberOfMessagesMoved"] == 2  # the rate limit holds
    for _ in range(3):
        sqs.now_ms += 1_000
        sqs.effects.extend(sqs.broker.tick(sqs.now_ms, sqs.entropy))
    (task,) = sqs("ListMessageMoveTasks", SourceArn=ARN + "dlq")["Results"]
    assert task["Status"] == "COMPLETED" and "TaskHandle" not in task
    assert task["ApproximateNumberOfMessagesMoved"] == 5
    back = sqs("ReceiveMessage", QueueUrl=sqs.url("src"), MaxNumberOfMessages=10)
    assert sorted(m["Body"] for m in back["Messages"]) == [f"m{i}" for i in range(5)]
    with pytest.raises(SqsError) as exc:
        sqs("CancelMessageMoveTask", TaskHandle=handle)
    assert code(exc) == "InvalidParameterValue"  # only active tasks can be cancelled


def task_handle(task_id: str, source_arn: str) -> str:
    # AWS's handle format (LocalStack's recorded tests build handles the same way).
    doc = json.dumps({"taskId": task_id, "sourceArn": source_arn})
    return base64.b64encode(doc.encode()).decode()


@pytest.mark.parametrize(("handle", "shape", "message"), [
    # All three recorded on AWS (LocalStack test_sqs_move_task.snapshot.json).
    ("foobared", "InvalidParameterValueException", "Value for parameter TaskHandle is invalid."),
    (task_handle("10f57157-fc38-4da9-a113-4de7e12d05dd", ARN + "missing"),
     "ResourceNotFoundException",
     "The resource that you specified for the SourceArn parameter doesn't exist."),
    (task_handle("10f57157-fc38-4da9-a113-4de7e12d05aa", ARN + "dlq"),
     "ResourceNotFoundException", "Task does not exist."),
    # Not handles either: base64 of something else, and far too long to be one.
    (base64.b64encode(b"no-such-task").decode(), "InvalidParameterValueException",
     "Value for parameter TaskHandle is invalid."),
    (base64.b64encode(b'{"taskId": 1, "sourceArn": "x"}').decode(),
     "InvalidParameterValueException", "Value for parameter TaskHandle is invalid."),
    ("QQ" * 100_000, "InvalidParameterValueException",
     "Value for parameter TaskHandle is invalid."),
])
def test_cancel_move_task_with_bad_handles(
    sqs: Harness, handle: str, shape: str, message: str
) -> None:
    sqs("CreateQueue", QueueName="dlq")
    with pytest.raises(SqsError) as exc:
        sqs("CancelMessageMoveTask", TaskHandle=handle)
    assert (exc.value.shape, exc.value.message) == (shape, message)


def test_cancel_move_task(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="dlq")
    sqs("CreateQueue", QueueName="src", Attributes={"RedrivePolicy": redrive("dlq", 1)})
    sqs("CreateQueue", QueueName="dest")
    sqs("SendMessage", QueueUrl=sqs.url("dlq"), MessageBody="x")
    handle = sqs(
        "StartMessageMoveTask",
        SourceArn=ARN + "dlq",
        DestinationArn=ARN + "dest",
        MaxNumberOfMessagesPerSecond=1,
    )["TaskHandle"]
    assert sqs("CancelMessageMoveTask", TaskHandle=handle) == {
        "ApproximateNumberOfMessagesMoved": 0
    }
    (task,) = sqs("ListMessageMoveTasks", SourceArn=ARN + "dlq", MaxResults=10)["Results"]
    assert task["Status"] == "CANCELLED"
    assert task["DestinationArn"] == ARN + "dest"


def test_replaying_effects_rebuilds_the_same_broker(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="dlq")
    sqs("CreateQueue", QueueName="q", Attributes={"RedrivePolicy": redrive("dlq")}, tags={"t": "v"})
    sqs("CreateQueue", QueueName="gone")
    sqs("DeleteQueue", QueueUrl=sqs.url("gone"))
    for i in range(3):
        sqs("SendMessage", QueueUrl=sqs.url("q"), MessageBody=f"m{i}")
    received = sqs("ReceiveMessage", QueueUrl=sqs.url("q"), MaxNumberOfMessages=1)
    sqs(
        "DeleteMessage",
        QueueUrl=sqs.url("q"),
        ReceiptHandle=received["Messages"][0]["ReceiptHandle"],
    )
    fresh = sqs.replayed()
    for name in ("q", "dlq"):
        for action in ("GetQueueAttributes", "ListQueueTags"):
            params = {"QueueUrl": sqs.url(name), "AttributeNames": ["All"]}
            a = sqs.broker.execute(action, params, sqs.now_ms, sqs.entropy, INFO).response
            b = fresh.execute(action, params, sqs.now_ms, sqs.entropy, INFO).response
            assert a == b
    assert fresh.queue_names() == sqs.broker.queue_names() == ["dlq", "q"]
    with pytest.raises(SqsError):
        fresh.execute("CreateQueue", {"QueueName": "gone"}, sqs.now_ms, sqs.entropy, INFO)


def test_unknown_action_and_bad_params(sqs: Harness) -> None:
    with pytest.raises(SqsError) as exc:
        sqs("Explode")
    assert exc.value.shape == "InvalidAction"
    with pytest.raises(SqsError) as exc:
        sqs("CreateQueue")
    assert code(exc) == "MissingParameter"
    with pytest.raises(SqsError) as exc:
        sqs("CreateQueue", QueueName=["x"])
    assert code(exc) == "InvalidParameterValue"
    with pytest.raises(SqsError) as exc:
        sqs("CreateQueue", QueueName="q", Attributes={"VisibilityTimeout": 5})
    assert code(exc) == "InvalidAttributeValue"


def test_kms_and_sqs_managed_encryption_are_exclusive(sqs: Harness) -> None:
    with pytest.raises(SqsError) as exc:
        sqs("CreateQueue", QueueName="q",
            Attributes={"KmsMasterKeyId": "alias/k", "SqsManagedSseEnabled": "true"})
    assert code(exc) == "InvalidAttributeName"
    sqs("CreateQueue", QueueName="q", Attributes={"KmsMasterKeyId": "alias/k"})
    attrs = sqs("GetQueueAttributes", QueueUrl=sqs.url("q"), AttributeNames=["All"])["Attributes"]
    assert attrs["KmsMasterKeyId"] == "alias/k" and attrs["SqsManagedSseEnabled"] == "false"


# ---- bodies beyond the memory budget ------------------------------------------------


def test_body_budget_admits_until_full_and_releases() -> None:
    budget = BodyBudget(sys.getsizeof("a" * 100) * 2)
    first, second = budget.admit("a" * 100), budget.admit("b" * 100)
    assert first == second == sys.getsizeof("a" * 100)
    assert budget.admit("c") == 0  # full: the caller keeps the body on disk only
    budget.release(first)
    assert budget.admit("\U0001f600" * 10) == sys.getsizeof("\U0001f600" * 10)
    assert BodyBudget(None).admit("x" * 10**6) > 0
    with pytest.raises(AssertionError):
        BodyBudget(10).release(1)


def test_bodies_over_budget_are_rendered_for_the_shell_to_fetch() -> None:
    sqs = Harness(body_memory_bytes_max=2 * sys.getsizeof("x" * 1000))
    sqs("CreateQueue", QueueName="q")
    for i in range(4):
        sqs("SendMessage", QueueUrl=sqs.url("q"), MessageBody=f"{i}" * 1000)
    # The effects always carry the body: the store must receive every one.
    stored = [e for e in sqs.effects if isinstance(e, MessageStored)]
    assert [e.record.body for e in stored] == [f"{i}" * 1000 for i in range(4)]
    outcome = sqs.broker.execute("ReceiveMessage", {"QueueUrl": sqs.url("q"),
                                                    "MaxNumberOfMessages": 10},
                                 sqs.now_ms, sqs.entropy, INFO)
    messages = outcome.response["Messages"]
    # First come, first kept: the two oldest are in memory, the two newest are not.
    assert [m["Body"] for m in messages] == ["0" * 1000, "1" * 1000, None, None]
    assert [m["MD5OfBody"] for m in messages[2:]] == [
        hashlib.md5(f"{i}".encode() * 1000).hexdigest() for i in (2, 3)]
    assert outcome.body_fetches == [("q", m["MessageId"], m) for m in messages[2:]]
    assert all(fetch[2] is message for fetch, message in zip(outcome.body_fetches,
                                                             messages[2:], strict=True))
    # Deleting a message held in memory frees room for the next send.
    sqs("DeleteMessage", QueueUrl=sqs.url("q"), ReceiptHandle=messages[0]["ReceiptHandle"])
    sqs("SendMessage", QueueUrl=sqs.url("q"), MessageBody="new")
    queue = sqs.broker.queue_messages("q")
    assert queue is not None
    assert sorted(r.body or "-" for r in queue.snapshot()) == sorted(
        ["1" * 1000, "-", "-", "new"])
    sqs.now_ms += 60_000
    sqs("PurgeQueue", QueueUrl=sqs.url("q"))
    assert sqs.broker.body_budget.bytes_used == 0


def test_redrive_of_a_body_on_disk_names_the_queue_it_leaves() -> None:
    sqs = Harness(body_memory_bytes_max=sys.getsizeof("kept"))
    sqs("CreateQueue", QueueName="dlq")
    sqs("CreateQueue", QueueName="src", Attributes={"RedrivePolicy": redrive("dlq", 1)})
    sqs("SendMessage", QueueUrl=sqs.url("src"), MessageBody="kept")
    sqs("SendMessage", QueueUrl=sqs.url("src"), MessageBody="disk")
    sqs("ReceiveMessage", QueueUrl=sqs.url("src"), MaxNumberOfMessages=10, VisibilityTimeout=0)
    before = len(sqs.effects)
    assert "Messages" not in sqs("ReceiveMessage", QueueUrl=sqs.url("src"),
                                 MaxNumberOfMessages=10)
    moves = [e for e in sqs.effects[before:] if isinstance(e, MessageStored)]
    assert [(e.record.queue, e.record.body, e.moved_from) for e in moves] == [
        ("dlq", "kept", None),  # in memory: the effect carries it
        ("dlq", None, "src"),  # on disk: the store copies it from src
    ]
    removed = [e for e in sqs.effects[before:] if isinstance(e, MessageRemoved)]
    assert [e.queue for e in removed] == ["src", "src"]
    # A move task back out of the DLQ does the same.
    sqs("StartMessageMoveTask", SourceArn=ARN + "dlq", MaxNumberOfMessagesPerSecond=100)
    sqs.now_ms += 1_000
    moved_back = [e for e in sqs.broker.tick(sqs.now_ms, sqs.entropy)
                  if isinstance(e, MessageStored)]
    assert [(e.record.queue, e.record.body, e.moved_from) for e in moved_back] == [
        ("src", "kept", None), ("src", None, "dlq")]
    assert sqs.broker.body_budget.bytes_used == sys.getsizeof("kept")
    sqs("DeleteQueue", QueueUrl=sqs.url("src"))
    assert sqs.broker.body_budget.bytes_used == 0


def test_without_body_copies_every_other_field() -> None:
    import dataclasses

    from ferrymq._core._records import AttributeValue, MessageRecord

    values = {f.name: f"v-{f.name}" for f in dataclasses.fields(MessageRecord)}
    values["attributes"] = (("a", AttributeValue("String", "s")),)
    record = MessageRecord(**values)  # type: ignore[arg-type]
    assert record.without_body() == dataclasses.replace(record, body=None)


def test_read_only_execution_changes_nothing(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="q", Attributes={"MessageRetentionPeriod": "60"})
    sqs("SendMessage", QueueUrl=sqs.url("q"), MessageBody="old")
    sqs.now_ms += 61_000  # past retention: a normal read would expire it (an effect)
    params = {"QueueUrl": sqs.url("q"), "AttributeNames": ["ApproximateNumberOfMessages"]}
    outcome = sqs.broker.execute("GetQueueAttributes", params, sqs.now_ms, sqs.entropy, INFO,
                                 read_only=True)
    assert outcome.effects == []
    outcome = sqs.broker.execute("ListQueues", {}, sqs.now_ms, sqs.entropy, INFO, read_only=True)
    assert outcome.effects == [] and outcome.response["QueueUrls"] == [sqs.url("q")]
    with pytest.raises(InternalError):
        sqs.broker.execute("SendMessage", {"QueueUrl": sqs.url("q"), "MessageBody": "x"},
                           sqs.now_ms, sqs.entropy, INFO, read_only=True)
    outcome = sqs.broker.execute("GetQueueAttributes", params, sqs.now_ms, sqs.entropy, INFO)
    assert [type(e).__name__ for e in outcome.effects] == ["MessageRemoved"]


# ---- a failed request and a restored node --------------------------------------------


@pytest.mark.parametrize(("action", "params", "retention_first"), [
    ("SendMessage", {"MessageBody": ""}, True),
    ("SendMessageBatch", {"Entries": []}, True),
    ("ReceiveMessage", {"MaxNumberOfMessages": 11}, True),
    ("DeleteMessage", {"ReceiptHandle": "not-a-handle"}, True),
    ("ChangeMessageVisibilityBatch", {"Entries": [{"Id": "a"}] * 11}, True),
    # Checks its attribute names before it looks at the queue's messages.
    ("GetQueueAttributes", {"AttributeNames": ["NoSuchAttribute"]}, False),
])
def test_a_failing_request_hands_on_the_retention_it_applied(
    sqs: Harness, action: str, params: dict[str, Any], retention_first: bool
) -> None:
    sqs("CreateQueue", QueueName="q", Attributes={"MessageRetentionPeriod": "60"})
    sent = sqs("SendMessage", QueueUrl=sqs.url("q"), MessageBody="old")
    sqs.now_ms += 61_000
    with pytest.raises(SqsError) as exc:
        sqs(action, QueueUrl=sqs.url("q"), **params)
    assert exc.value.effects == (
        (MessageRemoved("q", sent["MessageId"]),) if retention_first else ())
    # Applied, so the caller must store them: with them, the log rebuilds the broker.
    sqs.effects.extend(exc.value.effects)
    assert sqs.replayed().dump_state(sqs.now_ms) == sqs.broker.dump_state(sqs.now_ms)
    # A request that fails before it reaches a queue has applied nothing.
    with pytest.raises(SqsError) as exc:
        sqs(action, QueueUrl=sqs.url("missing"), **params)
    assert exc.value.effects == ()


def test_a_move_task_keeps_its_pace_across_a_restore(sqs: Harness) -> None:
    sqs("CreateQueue", QueueName="dlq")
    sqs("CreateQueue", QueueName="src", Attributes={"RedrivePolicy": redrive("dlq", 1)})
    sqs("CreateQueue", QueueName="dest")
    for i in range(10):
        sqs("SendMessage", QueueUrl=sqs.url("dlq"), MessageBody=f"m{i}")
    sqs("StartMessageMoveTask", SourceArn=ARN + "dlq", DestinationArn=ARN + "dest",
        MaxNumberOfMessagesPerSecond=2)

    def moved(broker: Broker) -> int:
        (task,) = broker.execute("ListMessageMoveTasks", {"SourceArn": ARN + "dlq"},
                                 sqs.now_ms, sqs.entropy, INFO).response["Results"]
        return int(task["ApproximateNumberOfMessagesMoved"])

    sqs.now_ms += 1_000
    sqs.effects.extend(sqs.broker.tick(sqs.now_ms, sqs.entropy))
    assert moved(sqs.broker) == 2
    # A node that takes over from the log goes on at the same pace: 2 a second, not
    # the 4 that counting from the task's start would allow.
    follower = sqs.replayed()
    sqs.now_ms += 1_000
    for broker in (sqs.broker, follower):
        broker.tick(sqs.now_ms, sqs.entropy)
        assert moved(broker) == 4
    # After a long pause (a node down for an hour) it does not catch up on the pause.
    sqs.now_ms += 3_600_000
    sqs.broker.tick(sqs.now_ms, sqs.entropy)
    assert moved(sqs.broker) == 6
