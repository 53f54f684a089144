"""End-to-end: dead-letter queues, redrive policies and message move tasks, both protocols."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ._harness import approximate_counts, error_of, receive, receive_until, wait_until
from .conftest import BODY_MODES


@pytest.fixture(params=BODY_MODES)
def bodies(request: pytest.FixtureRequest) -> str:
    # Every test here runs with bodies in memory and with bodies read from the store.
    value: str = request.param
    return value


def arn_of(sqs: Any, url: str) -> str:
    arn: str = sqs.get_queue_attributes(QueueUrl=url,
                                        AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    return arn


def redrive(dlq_arn: str, max_receive_count: int | str) -> dict[str, str]:
    return {"RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn,
                                         "maxReceiveCount": max_receive_count})}


def make_pair(sqs: Any, queue_name: str, max_receive_count: int = 1) -> tuple[str, str, str, str]:
    """(source url, source arn, dlq url, dlq arn)."""
    dlq = sqs.create_queue(QueueName=queue_name + "-dlq")["QueueUrl"]
    dlq_arn = arn_of(sqs, dlq)
    src = sqs.create_queue(QueueName=queue_name + "-src",
                           Attributes=redrive(dlq_arn, max_receive_count))["QueueUrl"]
    return src, arn_of(sqs, src), dlq, dlq_arn


def dead_letter(sqs: Any, src: str, dlq: str, bodies: list[str]) -> None:
    """Send ``bodies`` to ``src`` (maxReceiveCount 1) and push them all into ``dlq``."""
    for body in bodies:
        sqs.send_message(QueueUrl=src, MessageBody=body)
    receive_until(sqs, src, len(bodies), VisibilityTimeout=0)

    def all_moved() -> bool:
        receive(sqs, src, VisibilityTimeout=0)
        return approximate_counts(sqs, dlq)[0] == len(bodies)

    wait_until(all_moved, timeout_s=10, what="messages to reach the DLQ")


def test_messages_move_after_max_receive_count(sqs: Any, queue_name: str) -> None:
    src, src_arn, dlq, _ = make_pair(sqs, queue_name, max_receive_count=2)
    sent = sqs.send_message(QueueUrl=src, MessageBody="poison")
    for expected_count in ("1", "2"):
        got = receive_until(sqs, src, 1, VisibilityTimeout=0,
                            AttributeNames=["ApproximateReceiveCount"])
        assert got[0]["Attributes"]["ApproximateReceiveCount"] == expected_count
    # The third receive would exceed maxReceiveCount: the message goes to the DLQ instead.
    assert receive(sqs, src, WaitTimeSeconds=1) == []
    dead = receive_until(sqs, dlq, 1, AttributeNames=["All"])[0]
    assert dead["MessageId"] == sent["MessageId"]
    assert dead["Body"] == "poison"
    assert dead["Attributes"]["DeadLetterQueueSourceArn"] == src_arn
    assert approximate_counts(sqs, src) == (0, 0, 0)


def test_redrive_policy_attribute_round_trip_and_removal(sqs: Any, queue_name: str) -> None:
    src, _, _, dlq_arn = make_pair(sqs, queue_name, max_receive_count=5)
    attrs = sqs.get_queue_attributes(QueueUrl=src, AttributeNames=["RedrivePolicy"])
    policy = json.loads(attrs["Attributes"]["RedrivePolicy"])
    assert policy == {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 5}
    sqs.set_queue_attributes(QueueUrl=src, Attributes={"RedrivePolicy": ""})
    attrs = sqs.get_queue_attributes(QueueUrl=src, AttributeNames=["All"])["Attributes"]
    assert "RedrivePolicy" not in attrs


def test_redrive_policy_validation(sqs: Any, queue_name: str) -> None:
    dlq = sqs.create_queue(QueueName=queue_name + "-dlq")["QueueUrl"]
    dlq_arn = arn_of(sqs, dlq)
    fifo_dlq = sqs.create_queue(QueueName=queue_name + "-f.fifo",
                                Attributes={"FifoQueue": "true"})["QueueUrl"]
    src = sqs.create_queue(QueueName=queue_name + "-src")["QueueUrl"]
    bad_policies = [
        json.dumps({"maxReceiveCount": 3}),
        json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "many"}),
        json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": 0}),
        json.dumps({"deadLetterTargetArn": dlq_arn.replace("-dlq", "-nope"),
                    "maxReceiveCount": 3}),
        json.dumps({"deadLetterTargetArn": arn_of(sqs, fifo_dlq), "maxReceiveCount": 3}),
        "{not json",
    ]
    for policy in bad_policies:
        with pytest.raises(ClientError) as ei:
            sqs.set_queue_attributes(QueueUrl=src, Attributes={"RedrivePolicy": policy})
        assert error_of(ei.value)[0] in ("InvalidParameterValue", "InvalidAttributeValue"), policy
    attrs = sqs.get_queue_attributes(QueueUrl=src, AttributeNames=["All"])["Attributes"]
    assert "RedrivePolicy" not in attrs


def test_list_dead_letter_source_queues(sqs: Any, queue_name: str) -> None:
    src, _, dlq, dlq_arn = make_pair(sqs, queue_name)
    other = sqs.create_queue(QueueName=queue_name + "-src2",
                             Attributes=redrive(dlq_arn, 3))["QueueUrl"]
    listed = sqs.list_dead_letter_source_queues(QueueUrl=dlq)
    assert sorted(listed["queueUrls"]) == sorted([src, other])
    page = sqs.list_dead_letter_source_queues(QueueUrl=dlq, MaxResults=1)
    assert len(page["queueUrls"]) == 1
    rest = sqs.list_dead_letter_source_queues(QueueUrl=dlq, MaxResults=1,
                                              NextToken=page["NextToken"])
    assert sorted(page["queueUrls"] + rest["queueUrls"]) == sorted([src, other])
    assert sqs.list_dead_letter_source_queues(QueueUrl=src).get("queueUrls", []) == []


def test_redrive_allow_policy(sqs: Any, queue_name: str) -> None:
    deny = sqs.create_queue(QueueName=queue_name + "-deny", Attributes={
        "RedriveAllowPolicy": json.dumps({"redrivePermission": "denyAll"})})["QueueUrl"]
    src = sqs.create_queue(QueueName=queue_name + "-src")["QueueUrl"]
    src_arn = arn_of(sqs, src)
    with pytest.raises(ClientError) as ei:
        sqs.set_queue_attributes(QueueUrl=src, Attributes=redrive(arn_of(sqs, deny), 3))
    assert error_of(ei.value)[0] == "InvalidParameterValue"

    by_queue = sqs.create_queue(QueueName=queue_name + "-byq", Attributes={
        "RedriveAllowPolicy": json.dumps({"redrivePermission": "byQueue",
                                          "sourceQueueArns": [src_arn]})})["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=src, Attributes=redrive(arn_of(sqs, by_queue), 3))
    stranger = sqs.create_queue(QueueName=queue_name + "-stranger")["QueueUrl"]
    with pytest.raises(ClientError) as ei:
        sqs.set_queue_attributes(QueueUrl=stranger, Attributes=redrive(arn_of(sqs, by_queue), 3))
    assert error_of(ei.value)[0] == "InvalidParameterValue"


@pytest.mark.parametrize(
    "policy",
    [
        {"redrivePermission": "bogus"},
        {"redrivePermission": "byQueue"},
        {"redrivePermission": "byQueue",
         "sourceQueueArns": [f"arn:aws:sqs:us-east-1:000000000000:q{i}" for i in range(11)]},
        {"redrivePermission": "denyAll",
         "sourceQueueArns": ["arn:aws:sqs:us-east-1:000000000000:q"]},
    ],
    ids=["bogus", "byQueue-without-arns", "eleven-arns", "denyAll-with-arns"],
)
def test_redrive_allow_policy_validation(sqs: Any, queue_name: str,
                                         policy: dict[str, Any]) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    with pytest.raises(ClientError) as ei:
        sqs.set_queue_attributes(QueueUrl=url,
                                 Attributes={"RedriveAllowPolicy": json.dumps(policy)})
    assert error_of(ei.value)[0] in ("InvalidAttributeValue", "InvalidParameterValue")


def wait_for_task(sqs: Any, source_arn: str, status: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        results = sqs.list_message_move_tasks(SourceArn=source_arn).get("Results", [])
        if results and results[0]["Status"] == status:
            latest: dict[str, Any] = results[0]
            return latest
        return None

    return wait_until(probe, timeout_s=20, interval_s=0.2, what=f"move task {status}")


def test_move_task_back_to_original_source(sqs: Any, queue_name: str) -> None:
    src, src_arn, dlq, dlq_arn = make_pair(sqs, queue_name)
    dead_letter(sqs, src, dlq, ["d1", "d2", "d3"])
    started = sqs.start_message_move_task(SourceArn=dlq_arn)
    assert started["TaskHandle"]
    done = wait_for_task(sqs, dlq_arn, "COMPLETED")
    assert done["SourceArn"] == dlq_arn
    assert done["ApproximateNumberOfMessagesMoved"] == 3
    assert "TaskHandle" not in done
    got = receive_until(sqs, src, 3)
    assert sorted(m["Body"] for m in got) == ["d1", "d2", "d3"]
    assert approximate_counts(sqs, dlq) == (0, 0, 0)


def test_move_task_to_given_destination(sqs: Any, queue_name: str) -> None:
    src, _, dlq, dlq_arn = make_pair(sqs, queue_name)
    dest = sqs.create_queue(QueueName=queue_name + "-dest")["QueueUrl"]
    dest_arn = arn_of(sqs, dest)
    dead_letter(sqs, src, dlq, ["x1", "x2"])
    sqs.start_message_move_task(SourceArn=dlq_arn, DestinationArn=dest_arn,
                                MaxNumberOfMessagesPerSecond=100)
    done = wait_for_task(sqs, dlq_arn, "COMPLETED")
    assert done["DestinationArn"] == dest_arn
    assert done["MaxNumberOfMessagesPerSecond"] == 100
    got = receive_until(sqs, dest, 2)
    assert sorted(m["Body"] for m in got) == ["x1", "x2"]
    assert receive(sqs, src) == []


def test_cancel_move_task_and_one_task_per_source(sqs: Any, queue_name: str) -> None:
    src, _, dlq, dlq_arn = make_pair(sqs, queue_name)
    dead_letter(sqs, src, dlq, [f"c{i}" for i in range(6)])
    handle = sqs.start_message_move_task(SourceArn=dlq_arn,
                                         MaxNumberOfMessagesPerSecond=1)["TaskHandle"]
    with pytest.raises(ClientError) as ei:
        sqs.start_message_move_task(SourceArn=dlq_arn)
    assert error_of(ei.value)[1] == (
        "There is already a task running. Only one active task is allowed for a source queue "
        "arn at a given time.")
    running = sqs.list_message_move_tasks(SourceArn=dlq_arn)["Results"][0]
    assert running["Status"] == "RUNNING"
    assert running["TaskHandle"] == handle
    time.sleep(0.5)
    cancelled = sqs.cancel_message_move_task(TaskHandle=handle)
    assert 0 <= cancelled["ApproximateNumberOfMessagesMoved"] < 6
    status = sqs.list_message_move_tasks(SourceArn=dlq_arn)["Results"][0]["Status"]
    assert status in ("CANCELLING", "CANCELLED")
    wait_for_task(sqs, dlq_arn, "CANCELLED")


def test_move_task_errors(sqs: Any, queue_name: str) -> None:
    plain = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    plain_arn = arn_of(sqs, plain)
    with pytest.raises(ClientError) as ei:
        sqs.start_message_move_task(SourceArn=plain_arn)
    code, message, _ = error_of(ei.value)
    assert code == "InvalidParameterValue"
    assert message == "Source queue must be configured as a Dead Letter Queue."

    unknown_arn = plain_arn + "-missing"
    calls: list[Callable[[], Any]] = [
        lambda: sqs.start_message_move_task(SourceArn=unknown_arn),
        lambda: sqs.list_message_move_tasks(SourceArn=unknown_arn),
        lambda: sqs.cancel_message_move_task(TaskHandle=task_handle("t-1", unknown_arn)),
        lambda: sqs.cancel_message_move_task(TaskHandle=task_handle("t-1", plain_arn)),
    ]
    for call in calls:
        with pytest.raises(ClientError) as ei:
            call()
        code, _, status = error_of(ei.value)
        assert (code, status) == ("ResourceNotFoundException", 404)
        assert isinstance(ei.value, sqs.exceptions.ResourceNotFoundException)


def task_handle(task_id: str, source_arn: str) -> str:
    """A well-formed handle in AWS's format (base64 of taskId and sourceArn)."""
    doc = json.dumps({"taskId": task_id, "sourceArn": source_arn})
    return base64.b64encode(doc.encode()).decode()


@pytest.mark.parametrize(("handle", "expected"), [
    ("foobared", ("InvalidParameterValue", "Value for parameter TaskHandle is invalid.", 400)),
    ("bm8tc3VjaC10YXNr",  # base64 of "no-such-task": not a handle either
     ("InvalidParameterValue", "Value for parameter TaskHandle is invalid.", 400)),
    (task_handle("10f57157-fc38-4da9-a113-4de7e12d05dd",
                 "arn:aws:sqs:us-east-1:000000000000:ferry-queue-that-does-not-exist"),
     ("ResourceNotFoundException",
      "The resource that you specified for the SourceArn parameter doesn't exist.", 404)),
], ids=["malformed", "not-json", "unknown-source"])
def test_cancel_move_task_handle_errors_as_recorded(
    sqs: Any, handle: str, expected: tuple[str, str, int]
) -> None:
    # The three cases of LocalStack's test_sqs_move_task snapshots, recorded on AWS.
    with pytest.raises(ClientError) as ei:
        sqs.cancel_message_move_task(TaskHandle=handle)
    assert error_of(ei.value) == expected


def test_cancel_unknown_task_of_an_existing_queue(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    handle = task_handle("10f57157-fc38-4da9-a113-4de7e12d05aa", arn_of(sqs, url))
    with pytest.raises(ClientError) as ei:
        sqs.cancel_message_move_task(TaskHandle=handle)
    assert error_of(ei.value) == ("ResourceNotFoundException", "Task does not exist.", 404)
