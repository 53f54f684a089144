"""End-to-end: FIFO queues (ordering, group blocking, dedup, attempt ids), both protocols."""

from __future__ import annotations

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


def make_fifo(sqs: Any, queue_name: str, **attributes: str) -> str:
    attrs = {"FifoQueue": "true", **attributes}
    url: str = sqs.create_queue(QueueName=queue_name + ".fifo", Attributes=attrs)["QueueUrl"]
    return url


def send(sqs: Any, url: str, body: str, group: str = "g", dedup: str | None = None,
         **kwargs: Any) -> dict[str, Any]:
    response: dict[str, Any] = sqs.send_message(
        QueueUrl=url, MessageBody=body, MessageGroupId=group,
        MessageDeduplicationId=dedup if dedup is not None else body, **kwargs)
    return response


def test_order_within_each_group(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    for i in range(4):
        send(sqs, url, f"a{i}", group="A")
        send(sqs, url, f"b{i}", group="B")
    seen: dict[str, list[str]] = {"A": [], "B": []}
    for _ in range(20):
        batch = receive(sqs, url, AttributeNames=["MessageGroupId"], WaitTimeSeconds=1)
        for m in batch:
            seen[m["Attributes"]["MessageGroupId"]].append(m["Body"])
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
        if len(seen["A"]) + len(seen["B"]) == 8:
            break
    assert seen == {"A": [f"a{i}" for i in range(4)], "B": [f"b{i}" for i in range(4)]}


def test_group_blocked_while_message_in_flight(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    for body in ("m1", "m2", "m3"):
        send(sqs, url, body, group="G")
    send(sqs, url, "other", group="H")
    first = receive_until(sqs, url, 1, MaxNumberOfMessages=1, VisibilityTimeout=30)[0]
    assert first["Body"] in ("m1", "other")
    if first["Body"] == "other":
        sqs.delete_message(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"])
        first = receive_until(sqs, url, 1, MaxNumberOfMessages=1, VisibilityTimeout=30)[0]
    assert first["Body"] == "m1"
    # m2 and m3 are visible, but G has a message in flight: nothing of G comes back.
    rest = receive(sqs, url, WaitTimeSeconds=1)
    assert all(m["Body"] == "other" for m in rest)
    for m in rest:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])
    assert receive(sqs, url, WaitTimeSeconds=1) == []

    # Making m1 visible again returns m1 first, not m2.
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first["ReceiptHandle"],
                                  VisibilityTimeout=0)
    again = receive_until(sqs, url, 1, MaxNumberOfMessages=1, VisibilityTimeout=30)[0]
    assert again["Body"] == "m1"
    sqs.delete_message(QueueUrl=url, ReceiptHandle=again["ReceiptHandle"])
    nxt = receive_until(sqs, url, 1, MaxNumberOfMessages=1)[0]
    assert nxt["Body"] == "m2"


def test_group_blocked_when_later_message_in_flight(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    for body in ("x1", "x2", "x3"):
        send(sqs, url, body, group="G")
    got = receive_until(sqs, url, 2, MaxNumberOfMessages=2, VisibilityTimeout=30)
    assert [m["Body"] for m in got[:2]] == ["x1", "x2"]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=got[0]["ReceiptHandle"])
    # x2 is still in flight, so x3 must wait (LocalStack #13386).
    assert receive(sqs, url, WaitTimeSeconds=1) == []


def test_dedup_by_id(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    first = send(sqs, url, "one", dedup="same-id")
    dup = send(sqs, url, "two", dedup="same-id")
    assert dup["MessageId"] == first["MessageId"]
    got = receive_until(sqs, url, 1)
    assert [m["Body"] for m in got] == ["one"]
    assert receive(sqs, url, WaitTimeSeconds=1) == []


def test_dedup_by_content(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name, ContentBasedDeduplication="true")
    a = sqs.send_message(QueueUrl=url, MessageBody="same body", MessageGroupId="g")
    b = sqs.send_message(QueueUrl=url, MessageBody="same body", MessageGroupId="g")
    assert a["MessageId"] == b["MessageId"]
    sqs.send_message(QueueUrl=url, MessageBody="other body", MessageGroupId="g")
    got = receive_until(sqs, url, 2)
    assert [m["Body"] for m in got] == ["same body", "other body"]


def test_dedup_id_required_without_content_based(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageGroupId="g")
    code, message, _ = error_of(ei.value)
    assert code == "InvalidParameterValue"
    assert message == (
        "The queue should either have ContentBasedDeduplication enabled or "
        "MessageDeduplicationId provided explicitly")


def test_dedup_still_applies_after_delete(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    send(sqs, url, "first", dedup="d1")
    msg = receive_until(sqs, url, 1)[0]
    sqs.delete_message(QueueUrl=url, ReceiptHandle=msg["ReceiptHandle"])
    send(sqs, url, "second", dedup="d1")
    assert receive(sqs, url, WaitTimeSeconds=1) == []
    assert approximate_counts(sqs, url) == (0, 0, 0)


def test_purge_clears_dedup(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    send(sqs, url, "before", dedup="d1")
    sqs.purge_queue(QueueUrl=url)
    send(sqs, url, "after", dedup="d1")
    got = receive_until(sqs, url, 1)
    assert [m["Body"] for m in got] == ["after"]


def test_deduplication_scope_message_group(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name, DeduplicationScope="messageGroup",
                    FifoThroughputLimit="perMessageGroupId")
    send(sqs, url, "g1-a", group="g1", dedup="shared")
    send(sqs, url, "g2-a", group="g2", dedup="shared")
    send(sqs, url, "g1-b", group="g1", dedup="shared")
    got = receive_until(sqs, url, 2)
    assert sorted(m["Body"] for m in got) == ["g1-a", "g2-a"]
    assert receive(sqs, url, WaitTimeSeconds=1) == []


def test_high_throughput_needs_message_group_scope(sqs: Any, queue_name: str) -> None:
    with pytest.raises(ClientError) as ei:
        make_fifo(sqs, queue_name, DeduplicationScope="queue",
                  FifoThroughputLimit="perMessageGroupId")
    assert error_of(ei.value)[0] == "InvalidAttributeValue"


def test_sequence_numbers_increase(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    numbers = [int(send(sqs, url, f"s{i}", group="g")["SequenceNumber"]) for i in range(5)]
    assert numbers == sorted(numbers)
    assert len(set(numbers)) == 5
    got = receive_until(sqs, url, 5, AttributeNames=["All"])
    attrs = [m["Attributes"] for m in got]
    assert [int(a["SequenceNumber"]) for a in attrs] == numbers
    assert all(a["MessageGroupId"] == "g" for a in attrs)
    assert [a["MessageDeduplicationId"] for a in attrs] == [f"s{i}" for i in range(5)]


def test_batch_send_keeps_order_and_reports_sequence_numbers(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    result = sqs.send_message_batch(QueueUrl=url, Entries=[
        {"Id": f"e{i}", "MessageBody": f"b{i}", "MessageGroupId": "g",
         "MessageDeduplicationId": f"b{i}"} for i in range(5)])
    assert "Failed" not in result
    by_id = {e["Id"]: int(e["SequenceNumber"]) for e in result["Successful"]}
    assert [by_id[f"e{i}"] for i in range(5)] == sorted(by_id.values())
    got = receive_until(sqs, url, 5)
    assert [m["Body"] for m in got] == [f"b{i}" for i in range(5)]


def test_receive_request_attempt_id_retry(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    for i in range(3):
        send(sqs, url, f"r{i}", group="g")
    first = receive_until(sqs, url, 1, ReceiveRequestAttemptId="attempt-1",
                          VisibilityTimeout=30)
    retry = receive(sqs, url, ReceiveRequestAttemptId="attempt-1", VisibilityTimeout=30)
    assert [(m["MessageId"], m["ReceiptHandle"]) for m in retry] == [
        (m["MessageId"], m["ReceiptHandle"]) for m in first]


def test_per_message_delay_rejected(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    with pytest.raises(ClientError) as ei:
        send(sqs, url, "delayed", DelaySeconds=2)
    code, message, _ = error_of(ei.value)
    assert code == "InvalidParameterValue"
    assert message == (
        "Value 2 for parameter DelaySeconds is invalid. Reason: The request include parameter "
        "that is not valid for this queue type.")
    send(sqs, url, "zero-delay-is-fine", DelaySeconds=0)


def test_missing_message_group_id(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageDeduplicationId="d")
    code, message, _ = error_of(ei.value)
    assert code == "MissingParameter"
    assert message == "The request must contain the parameter MessageGroupId."


def test_invalid_message_group_id(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    for bad in ("has space", "x" * 129, "caf\u00e9"):
        with pytest.raises(ClientError) as ei:
            send(sqs, url, "x", group=bad)
        code, message, _ = error_of(ei.value)
        assert code == "InvalidParameterValue"
        assert message == (
            f"Value {bad} for parameter MessageGroupId is invalid. Reason: MessageGroupId can "
            "only include alphanumeric and punctuation characters. 1 to 128 in length.")


def test_standard_queue_rejects_dedup_id(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=url, MessageBody="x", MessageDeduplicationId="d")
    assert error_of(ei.value)[0] == "InvalidParameterValue"


def test_group_returns_its_head_up_to_the_first_message_in_flight(
    sqs: Any, queue_name: str
) -> None:
    # Recorded on SQS: g1-m2 in flight holds back only what comes after it.
    url = make_fifo(sqs, queue_name, VisibilityTimeout="30")
    for body, group in (("g1-m1", "g1"), ("g1-m2", "g1"), ("g2-m1", "g2")):
        send(sqs, url, body, group=group)
    first = receive(sqs, url, MaxNumberOfMessages=2)
    assert [m["Body"] for m in first] == ["g1-m1", "g1-m2"]
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=first[0]["ReceiptHandle"],
                                  VisibilityTimeout=0)
    # g2-m1 first: its head has been visible longer than g1's (sent vs. just released).
    assert [m["Body"] for m in receive(sqs, url, MaxNumberOfMessages=3)] == ["g2-m1", "g1-m1"]
    assert receive(sqs, url) == []


@pytest.mark.parametrize(("extended", "expected"), [(1, ["foo"]), (2, ["foo", "bar"])],
                         ids=["bar-extended", "baz-extended"])
def test_messages_after_an_extended_one_stay_held_back(
    sqs: Any, queue_name: str, extended: int, expected: list[str]
) -> None:
    # Recorded on SQS (queue VisibilityTimeout 1 s, one message extended to 4 s). The long
    # poll wakes when the others' 1 s visibility lapses, well before the 4 s one does.
    url = make_fifo(sqs, queue_name, VisibilityTimeout="1")
    for body in ("foo", "bar", "baz"):
        send(sqs, url, body, group="1")
    msgs = receive(sqs, url, MaxNumberOfMessages=5)
    assert [m["Body"] for m in msgs] == ["foo", "bar", "baz"]
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=msgs[extended]["ReceiptHandle"],
                                  VisibilityTimeout=4)
    got = receive(sqs, url, MaxNumberOfMessages=5, WaitTimeSeconds=2)
    assert [m["Body"] for m in got] == expected


EXPIRED = "Value {} for parameter ReceiptHandle is invalid. Reason: The receipt handle has expired."


def assert_handle_expired(sqs: Any, url: str, handle: str) -> None:
    for call in (
        lambda: sqs.delete_message(QueueUrl=url, ReceiptHandle=handle),
        lambda: sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=handle,
                                              VisibilityTimeout=5),
    ):
        with pytest.raises(ClientError) as ei:
            call()
        assert error_of(ei.value) == ("InvalidParameterValue", EXPIRED.format(handle), 400)
    for result in (
        sqs.delete_message_batch(QueueUrl=url, Entries=[{"Id": "a", "ReceiptHandle": handle}]),
        sqs.change_message_visibility_batch(QueueUrl=url, Entries=[
            {"Id": "a", "ReceiptHandle": handle, "VisibilityTimeout": 5}]),
    ):
        assert result.get("Successful", []) == []
        assert result["Failed"] == [{"Id": "a", "SenderFault": True,
                                     "Code": "ReceiptHandleIsInvalid",
                                     "Message": "The receipt handle has expired"}]


def test_handle_expires_when_its_visibility_timeout_lapses(sqs: Any, queue_name: str) -> None:
    # Recorded on SQS: DeleteMessage after the visibility timeout, with no newer receive.
    url = make_fifo(sqs, queue_name, VisibilityTimeout="1")
    send(sqs, url, "late")
    (m,) = receive(sqs, url)
    wait_until(lambda: approximate_counts(sqs, url) == (1, 0, 0), timeout_s=5,
               what="the visibility timeout to lapse")
    assert_handle_expired(sqs, url, m["ReceiptHandle"])
    (again,) = receive(sqs, url)
    assert again["Body"] == "late"
    sqs.delete_message(QueueUrl=url, ReceiptHandle=again["ReceiptHandle"])
    assert approximate_counts(sqs, url) == (0, 0, 0)


def test_handle_expires_when_made_visible_again(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    send(sqs, url, "released")
    (m,) = receive(sqs, url)
    sqs.change_message_visibility(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"],
                                  VisibilityTimeout=0)
    assert_handle_expired(sqs, url, m["ReceiptHandle"])
    assert approximate_counts(sqs, url) == (1, 0, 0)


@pytest.mark.parametrize(("missing", "message"), [
    ("MessageGroupId", "The request must contain the parameter MessageGroupId."),
    ("MessageDeduplicationId",
     "The queue should either have ContentBasedDeduplication enabled or MessageDeduplicationId "
     "provided explicitly"),
])
def test_batch_entry_missing_fifo_id_fails_the_whole_request(
    sqs: Any, queue_name: str, missing: str, message: str
) -> None:
    # Recorded on SQS: 400 for the request, not a per-entry failure; nothing is sent.
    url = make_fifo(sqs, queue_name)
    incomplete = {"Id": "b", "MessageBody": "b", "MessageGroupId": "g",
                  "MessageDeduplicationId": "b"}
    del incomplete[missing]
    with pytest.raises(ClientError) as ei:
        sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": "a", "MessageBody": "a", "MessageGroupId": "g", "MessageDeduplicationId": "a"},
            incomplete])
    assert error_of(ei.value) == ("InvalidParameterValue", message, 400)
    assert approximate_counts(sqs, url) == (0, 0, 0)


def test_batch_entry_with_malformed_group_id_fails_alone(sqs: Any, queue_name: str) -> None:
    url = make_fifo(sqs, queue_name)
    result = sqs.send_message_batch(QueueUrl=url, Entries=[
        {"Id": "a", "MessageBody": "a", "MessageGroupId": "g", "MessageDeduplicationId": "a"},
        {"Id": "b", "MessageBody": "b", "MessageGroupId": "has space",
         "MessageDeduplicationId": "b"}])
    assert [e["Id"] for e in result["Successful"]] == ["a"]
    assert [(f["Id"], f["Code"]) for f in result["Failed"]] == [("b", "InvalidParameterValue")]
