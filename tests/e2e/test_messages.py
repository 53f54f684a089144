"""End-to-end: sending, receiving, deleting messages on standard queues, both protocols."""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ._harness import (
    ServerProcess,
    approximate_counts,
    error_of,
    make_client,
    receive,
    receive_until,
    wait_until,
)
from .conftest import BODY_MODES


@pytest.fixture(params=BODY_MODES)
def bodies(request: pytest.FixtureRequest) -> str:
    # Every test here runs with bodies in memory and with bodies read from the store.
    value: str = request.param
    return value


def md5_hex(data: str | bytes) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return hashlib.md5(raw).hexdigest()


def md5_of_attributes(attributes: dict[str, dict[str, Any]]) -> str:
    """The SQS MD5OfMessageAttributes layout (sqs-api.md §3), written from the spec."""

    def prefixed(raw: bytes) -> bytes:
        return struct.pack(">I", len(raw)) + raw

    out = b""
    for name in sorted(attributes):
        value = attributes[name]
        data_type = value["DataType"]
        out += prefixed(name.encode()) + prefixed(data_type.encode())
        if data_type.startswith("Binary"):
            out += b"\x02" + prefixed(value["BinaryValue"])
        else:
            out += b"\x01" + prefixed(value["StringValue"].encode())
    return hashlib.md5(out).hexdigest()


def test_md5_helper_matches_published_vectors() -> None:
    # Guards the helper itself, so the tests below compare against the real layout.
    assert md5_of_attributes({"Foo": {"DataType": "String", "StringValue": "Bar"}}) == (
        "ae7155c6026991b6d54b11589678bf9c")
    assert md5_of_attributes(
        {"binaryAttribute": {"DataType": "Binary", "BinaryValue": b"Hello binary world!"}}
    ) == "31a92b15d92f8db860eda32aceb656c3"


def test_send_receive_delete(sqs: Any, queue_url: str) -> None:
    sent = sqs.send_message(QueueUrl=queue_url, MessageBody="hello")
    assert sent["MD5OfMessageBody"] == md5_hex("hello") == "5d41402abc4b2a76b9719d911017c592"
    assert "MD5OfMessageAttributes" not in sent
    assert len(sent["MessageId"]) >= 32

    messages = receive_until(sqs, queue_url, 1)
    assert len(messages) == 1
    msg = messages[0]
    assert msg["MessageId"] == sent["MessageId"]
    assert msg["Body"] == "hello"
    assert msg["MD5OfBody"] == md5_hex("hello")
    assert "MessageAttributes" not in msg
    assert "MD5OfMessageAttributes" not in msg
    assert msg["ReceiptHandle"]
    assert approximate_counts(sqs, queue_url) == (0, 1, 0)

    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=msg["ReceiptHandle"])
    assert approximate_counts(sqs, queue_url) == (0, 0, 0)
    assert receive(sqs, queue_url) == []


def test_empty_receive_has_no_messages_key(sqs: Any, queue_url: str) -> None:
    response = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0)
    assert "Messages" not in response


def test_unicode_and_crlf_bodies_round_trip(sqs: Any, queue_url: str) -> None:
    bodies = [
        "line1\r\nline2\rline3\n",
        "tab\tand <xml> & \"quotes\" 'single' ]]>",
        "snowman \u2603 emoji \U0001F600 edge \ud7ff\ue000\ufffd",
        "  leading and trailing spaces  ",
    ]
    for body in bodies:
        sent = sqs.send_message(QueueUrl=queue_url, MessageBody=body)
        assert sent["MD5OfMessageBody"] == md5_hex(body)
    got = receive_until(sqs, queue_url, len(bodies))
    assert sorted(m["Body"] for m in got) == sorted(bodies)
    for m in got:
        assert m["MD5OfBody"] == md5_hex(m["Body"])


ATTRIBUTES: dict[str, dict[str, Any]] = {
    "str": {"DataType": "String", "StringValue": "value \u2603"},
    "num": {"DataType": "Number", "StringValue": "-12.5"},
    "bin": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xffbinary"},
    "a.label": {"DataType": "String.custom-label", "StringValue": "labelled"},
    "a.float": {"DataType": "Number.float", "StringValue": "3.14"},
    "img": {"DataType": "Binary.gif", "BinaryValue": b"GIF89a"},
}


def test_message_attributes_round_trip_with_md5(sqs: Any, queue_url: str) -> None:
    sent = sqs.send_message(QueueUrl=queue_url, MessageBody="attrs",
                            MessageAttributes=ATTRIBUTES)
    assert sent["MD5OfMessageAttributes"] == md5_of_attributes(ATTRIBUTES)
    msg = receive_until(sqs, queue_url, 1, MessageAttributeNames=["All"])[0]
    assert msg["MessageAttributes"] == ATTRIBUTES
    assert msg["MD5OfMessageAttributes"] == md5_of_attributes(ATTRIBUTES)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["All"], set(ATTRIBUTES)),
        ([".*"], set(ATTRIBUTES)),
        (["a.*"], {"a.label", "a.float"}),
        (["str", "img", "missing"], {"str", "img"}),
        ([], set()),
    ],
    ids=["All", "dot-star", "prefix", "names", "none"],
)
def test_message_attribute_filters(sqs: Any, queue_url: str, filters: list[str],
                                   expected: set[str]) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody="filtered", MessageAttributes=ATTRIBUTES)
    kwargs: dict[str, Any] = {"MessageAttributeNames": filters} if filters else {}
    msg = receive_until(sqs, queue_url, 1, **kwargs)[0]
    returned = msg.get("MessageAttributes", {})
    assert set(returned) == expected
    if expected:
        # The MD5 covers only the attributes actually returned.
        subset = {k: ATTRIBUTES[k] for k in expected}
        assert msg["MD5OfMessageAttributes"] == md5_of_attributes(subset)
    else:
        assert "MD5OfMessageAttributes" not in msg


def test_system_attributes(sqs: Any, queue_url: str) -> None:
    before_ms = int(time.time() * 1000)
    sqs.send_message(QueueUrl=queue_url, MessageBody="sys")
    msg = receive_until(sqs, queue_url, 1, AttributeNames=["All"], VisibilityTimeout=0)[0]
    attrs = msg["Attributes"]
    assert {"SenderId", "SentTimestamp", "ApproximateReceiveCount",
            "ApproximateFirstReceiveTimestamp"} <= set(attrs)
    assert attrs["ApproximateReceiveCount"] == "1"
    sent_ms = int(attrs["SentTimestamp"])
    assert before_ms - 5_000 <= sent_ms <= int(time.time() * 1000) + 5_000
    assert int(attrs["ApproximateFirstReceiveTimestamp"]) >= sent_ms
    assert "SequenceNumber" not in attrs

    again = receive_until(sqs, queue_url, 1, AttributeNames=["SentTimestamp"])[0]
    assert again["Attributes"] == {"SentTimestamp": attrs["SentTimestamp"]}


def test_send_message_batch_all_success_has_no_failed_key(sqs: Any, queue_url: str) -> None:
    entries: list[dict[str, Any]] = [
        {"Id": f"m{i}", "MessageBody": f"body {i}"} for i in range(10)]
    entries[3]["MessageAttributes"] = {"k": {"DataType": "String", "StringValue": "v"}}
    result = sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    assert "Failed" not in result
    ok = {e["Id"]: e for e in result["Successful"]}
    assert set(ok) == {e["Id"] for e in entries}
    for entry in entries:
        assert ok[entry["Id"]]["MD5OfMessageBody"] == md5_hex(entry["MessageBody"])
    assert ok["m3"]["MD5OfMessageAttributes"] == md5_of_attributes(
        {"k": {"DataType": "String", "StringValue": "v"}})
    got = receive_until(sqs, queue_url, 10)
    assert sorted(m["Body"] for m in got) == sorted(e["MessageBody"] for e in entries)


def test_send_message_batch_partial_failure(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name,
                           Attributes={"MaximumMessageSize": "1024"})["QueueUrl"]
    result = sqs.send_message_batch(QueueUrl=url, Entries=[
        {"Id": "good", "MessageBody": "fine"},
        {"Id": "badchars", "MessageBody": "bad \x01 char"},
        {"Id": "toolong", "MessageBody": "x" * 1025},
    ])
    assert [e["Id"] for e in result["Successful"]] == ["good"]
    failed = {e["Id"]: e for e in result["Failed"]}
    assert set(failed) == {"badchars", "toolong"}
    assert failed["badchars"]["Code"] == "InvalidMessageContents"
    assert failed["badchars"]["SenderFault"] is True
    assert failed["toolong"]["Code"] == "InvalidParameterValue"
    assert failed["toolong"]["SenderFault"] is True
    assert failed["toolong"]["Message"] == (
        "One or more parameters cannot be validated. Reason: Message must be shorter than "
        "1024 bytes.")
    got = receive_until(sqs, url, 1)
    assert [m["Body"] for m in got] == ["fine"]


def test_batch_empty(sqs: Any, protocol: str, queue_url: str) -> None:
    for call in (sqs.send_message_batch, sqs.delete_message_batch,
                 sqs.change_message_visibility_batch):
        with pytest.raises(ClientError) as ei:
            call(QueueUrl=queue_url, Entries=[])
        code = error_of(ei.value)[0]
        if protocol == "json":
            assert code == "AWS.SimpleQueueService.EmptyBatchRequest"
        else:
            # An empty list is absent on the Query wire: SQS sees no entries at all.
            assert code in ("AWS.SimpleQueueService.EmptyBatchRequest", "MissingParameter")


def test_batch_too_many_entries(sqs: Any, queue_url: str) -> None:
    entries = [{"Id": f"e{i}", "MessageBody": "x"} for i in range(11)]
    with pytest.raises(ClientError) as ei:
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    code, message, _ = error_of(ei.value)
    assert code == "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"
    assert message == "Maximum number of entries per request are 10. You have sent 11."
    assert isinstance(ei.value, sqs.exceptions.TooManyEntriesInBatchRequest)
    with pytest.raises(ClientError) as ei:
        sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": f"e{i}", "ReceiptHandle": "h"} for i in range(11)])
    assert error_of(ei.value)[0] == "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"
    assert receive(sqs, queue_url) == []


def test_batch_duplicate_ids(sqs: Any, queue_url: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.send_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": "same", "MessageBody": "a"}, {"Id": "same", "MessageBody": "b"}])
    assert error_of(ei.value)[0] == "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
    with pytest.raises(ClientError) as ei:
        sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=[
            {"Id": "same", "ReceiptHandle": "h", "VisibilityTimeout": 1},
            {"Id": "same", "ReceiptHandle": "h", "VisibilityTimeout": 1}])
    assert error_of(ei.value)[0] == "AWS.SimpleQueueService.BatchEntryIdsNotDistinct"
    assert receive(sqs, queue_url) == []


@pytest.mark.parametrize("bad_id", ["has space", "x" * 81, "dot.id", "emoji\u2603"])
def test_batch_invalid_entry_id(sqs: Any, queue_url: str, bad_id: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.send_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": "ok", "MessageBody": "a"}, {"Id": bad_id, "MessageBody": "b"}])
    code, message, _ = error_of(ei.value)
    assert code == "AWS.SimpleQueueService.InvalidBatchEntryId"
    assert message == (
        "A batch entry id can only contain alphanumeric characters, hyphens and underscores. "
        "It can be at most 80 letters long.")
    assert receive(sqs, queue_url) == []


def test_batch_request_too_long(sqs: Any, queue_url: str) -> None:
    entries = [{"Id": "a", "MessageBody": "a" * 600_000},
               {"Id": "b", "MessageBody": "b" * 600_000}]
    with pytest.raises(ClientError) as ei:
        sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
    code, message, _ = error_of(ei.value)
    assert code == "AWS.SimpleQueueService.BatchRequestTooLong"
    assert message == (
        "Batch requests cannot be longer than 1048576 bytes. You have sent 1200000 bytes.")
    assert receive(sqs, queue_url) == []


def test_delete_and_change_visibility_batch(sqs: Any, queue_url: str) -> None:
    sqs.send_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": f"m{i}", "MessageBody": f"b{i}"} for i in range(4)])
    got = receive_until(sqs, queue_url, 4, VisibilityTimeout=60)
    handles = [m["ReceiptHandle"] for m in got]

    changed = sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=[
        {"Id": "c0", "ReceiptHandle": handles[0], "VisibilityTimeout": 0},
        {"Id": "c1", "ReceiptHandle": handles[1], "VisibilityTimeout": 0},
    ])
    assert "Failed" not in changed
    assert sorted(e["Id"] for e in changed["Successful"]) == ["c0", "c1"]

    changed = sqs.change_message_visibility_batch(QueueUrl=queue_url, Entries=[
        {"Id": "good", "ReceiptHandle": handles[2], "VisibilityTimeout": 60},
        {"Id": "bad", "ReceiptHandle": "garbage", "VisibilityTimeout": 5},
    ])
    assert [e["Id"] for e in changed["Successful"]] == ["good"]
    assert [(e["Id"], e["Code"], e["SenderFault"]) for e in changed["Failed"]] == [
        ("bad", "ReceiptHandleIsInvalid", True)]

    deleted = sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": "d2", "ReceiptHandle": handles[2]},
        {"Id": "d3", "ReceiptHandle": handles[3]},
    ])
    assert "Failed" not in deleted
    assert sorted(e["Id"] for e in deleted["Successful"]) == ["d2", "d3"]

    deleted = sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": "bad", "ReceiptHandle": "garbage"}])
    assert "Successful" not in deleted or deleted["Successful"] == []
    assert [(e["Id"], e["Code"]) for e in deleted["Failed"]] == [
        ("bad", "ReceiptHandleIsInvalid")]

    # The two made visible again are the only ones left.
    again = receive_until(sqs, queue_url, 2)
    assert sorted(m["Body"] for m in again) == sorted(m["Body"] for m in got[:2])


def test_visibility_timeout_expiry_and_redelivery(sqs: Any, queue_url: str) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody="redeliver")
    first = receive_until(sqs, queue_url, 1, VisibilityTimeout=1,
                          AttributeNames=["ApproximateReceiveCount"])[0]
    assert first["Attributes"]["ApproximateReceiveCount"] == "1"
    assert receive(sqs, queue_url) == []
    started = time.monotonic()
    second = receive_until(sqs, queue_url, 1, timeout_s=6,
                           AttributeNames=["ApproximateReceiveCount"])[0]
    assert time.monotonic() - started >= 0.5
    assert second["MessageId"] == first["MessageId"]
    assert second["ReceiptHandle"] != first["ReceiptHandle"]
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"


def test_queue_visibility_timeout_applies(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name,
                           Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="q")
    receive_until(sqs, url, 1)
    assert receive(sqs, url) == []
    receive_until(sqs, url, 1, timeout_s=6)


def test_stale_receipt_handle_still_deletes(sqs: Any, queue_url: str) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody="stale")
    old = receive_until(sqs, queue_url, 1, VisibilityTimeout=1)[0]
    new = receive_until(sqs, queue_url, 1, timeout_s=6, VisibilityTimeout=30)[0]
    assert new["ReceiptHandle"] != old["ReceiptHandle"]
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=old["ReceiptHandle"])
    assert approximate_counts(sqs, queue_url) == (0, 0, 0)
    # Deleting again is not an error.
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=old["ReceiptHandle"])
    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=new["ReceiptHandle"])


def test_delete_with_garbage_handle(sqs: Any, queue_url: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle="garbage")
    code, message, status = error_of(ei.value)
    assert (code, status) == ("ReceiptHandleIsInvalid", 400)
    assert message == 'The input receipt handle "garbage" is not a valid receipt handle.'
    assert isinstance(ei.value, sqs.exceptions.ReceiptHandleIsInvalid)


def test_change_message_visibility(sqs: Any, queue_url: str) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody="cmv")
    msg = receive_until(sqs, queue_url, 1, VisibilityTimeout=60)[0]
    assert receive(sqs, queue_url) == []
    sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=msg["ReceiptHandle"],
                                  VisibilityTimeout=0)
    again = receive_until(sqs, queue_url, 1, VisibilityTimeout=60, timeout_s=3)[0]
    assert again["MessageId"] == msg["MessageId"]

    with pytest.raises(ClientError) as ei:
        sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=again["ReceiptHandle"],
                                      VisibilityTimeout=43201)
    assert error_of(ei.value)[0] == "InvalidParameterValue"

    with pytest.raises(ClientError) as ei:
        sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle="garbage",
                                      VisibilityTimeout=5)
    assert error_of(ei.value)[0] == "ReceiptHandleIsInvalid"

    sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=again["ReceiptHandle"])
    handle = again["ReceiptHandle"]
    with pytest.raises(ClientError) as ei:
        sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=handle,
                                      VisibilityTimeout=5)
    code, message, _ = error_of(ei.value)
    assert code == "InvalidParameterValue"
    assert message == (
        f"Value {handle} for parameter ReceiptHandle is invalid. Reason: Message does not "
        "exist or is not available for visibility timeout change.")


def test_change_visibility_extends_invisibility(sqs: Any, queue_url: str) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody="extend")
    msg = receive_until(sqs, queue_url, 1, VisibilityTimeout=1)[0]
    sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=msg["ReceiptHandle"],
                                  VisibilityTimeout=30)
    # Past the original 1-s deadline it is still hidden.
    assert receive(sqs, queue_url, WaitTimeSeconds=2) == []


def test_delay_seconds_per_message(sqs: Any, queue_url: str) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody="later", DelaySeconds=2)
    started = time.monotonic()
    sqs.send_message(QueueUrl=queue_url, MessageBody="now")
    first = receive_until(sqs, queue_url, 1)
    assert [m["Body"] for m in first] == ["now"]
    assert approximate_counts(sqs, queue_url)[2] == 1
    later = receive_until(sqs, queue_url, 1, timeout_s=8)
    assert [m["Body"] for m in later] == ["later"]
    assert time.monotonic() - started >= 1.5


def test_delay_seconds_per_queue_and_override(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name, Attributes={"DelaySeconds": "2"})["QueueUrl"]
    started = time.monotonic()
    sqs.send_message(QueueUrl=url, MessageBody="queue-delayed")
    sqs.send_message(QueueUrl=url, MessageBody="override", DelaySeconds=0)
    assert [m["Body"] for m in receive_until(sqs, url, 1)] == ["override"]
    assert [m["Body"] for m in receive_until(sqs, url, 1, timeout_s=8)] == ["queue-delayed"]
    assert time.monotonic() - started >= 1.5


def test_delay_seconds_out_of_range(sqs: Any, queue_url: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=queue_url, MessageBody="x", DelaySeconds=901)
    assert error_of(ei.value)[0] == "InvalidParameterValue"


@pytest.mark.parametrize("body", ["bell \x07", "nul \x00", "\ufffe", "vt \x0b"],
                         ids=["bel", "nul", "fffe", "vt"])
def test_invalid_message_contents(sqs: Any, queue_url: str, body: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=queue_url, MessageBody=body)
    code, _, status = error_of(ei.value)
    assert (code, status) == ("InvalidMessageContents", 400)
    assert receive(sqs, queue_url) == []


def test_message_size_limit(sqs: Any, queue_url: str) -> None:
    biggest = "a" * 1_048_576
    sent = sqs.send_message(QueueUrl=queue_url, MessageBody=biggest)
    assert sent["MD5OfMessageBody"] == md5_hex(biggest)
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=queue_url, MessageBody=biggest + "a")
    code, message, _ = error_of(ei.value)
    assert code == "InvalidParameterValue"
    assert message == (
        "One or more parameters are invalid. Reason: Message must be shorter than 1048576 bytes.")
    got = receive_until(sqs, queue_url, 1)
    assert len(got) == 1 and len(got[0]["Body"]) == 1_048_576


def test_message_size_counts_attributes(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name,
                           Attributes={"MaximumMessageSize": "1024"})["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="x" * 1024)
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=url, MessageBody="x" * 1000, MessageAttributes={
            "attr": {"DataType": "String", "StringValue": "y" * 100}})
    assert error_of(ei.value)[0] == "InvalidParameterValue"


def test_empty_body_is_missing_parameter(sqs: Any, queue_url: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=queue_url, MessageBody="")
    code, message, _ = error_of(ei.value)
    assert code == "MissingParameter"
    assert message == "The request must contain the parameter MessageBody."


def test_empty_string_attribute_rejected(sqs: Any, queue_url: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=queue_url, MessageBody="x", MessageAttributes={
            "ErrorDetails": {"DataType": "String", "StringValue": ""}})
    code, message, _ = error_of(ei.value)
    assert code == "InvalidParameterValue"
    assert message == (
        "Message (user) attribute 'ErrorDetails' must contain a non-empty value of type "
        "'String'.")


@pytest.mark.parametrize(
    "attributes",
    [
        {"AWS.reserved": {"DataType": "String", "StringValue": "v"}},
        {".leading": {"DataType": "String", "StringValue": "v"}},
        {"double..dot": {"DataType": "String", "StringValue": "v"}},
        {"bad type": {"DataType": "Strung", "StringValue": "v"}},
        {"num": {"DataType": "Number", "StringValue": "not a number"}},
        {f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(11)},
    ],
    ids=["aws-prefix", "leading-dot", "double-dot", "bad-type", "bad-number", "eleven"],
)
def test_invalid_message_attributes(sqs: Any, queue_url: str,
                                    attributes: dict[str, Any]) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=queue_url, MessageBody="x", MessageAttributes=attributes)
    assert error_of(ei.value)[0] == "InvalidParameterValue"


@pytest.mark.parametrize("count", [0, 11])
def test_max_number_of_messages_out_of_range(sqs: Any, queue_url: str, count: int) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=count)
    code, message, status = error_of(ei.value)
    assert (code, status) == ("InvalidParameterValue", 400)
    assert message == (
        f"Value {count} for parameter MaxNumberOfMessages is invalid. Reason: Must be between "
        "1 and 10, if provided.")


def test_wait_time_seconds_out_of_range(sqs: Any, queue_url: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=21)
    code, message, _ = error_of(ei.value)
    assert code == "InvalidParameterValue"
    assert message == (
        "Value 21 for parameter WaitTimeSeconds is invalid. Reason: Must be >= 0 and <= 20, "
        "if provided.")


def test_long_poll_returns_promptly_when_message_arrives(
    sqs: Any, sqs_server: ServerProcess, protocol: str, queue_url: str
) -> None:
    sender = make_client(sqs_server.url, protocol)
    sent = threading.Event()

    def send_later() -> None:
        time.sleep(0.5)
        sender.send_message(QueueUrl=queue_url, MessageBody="wake up")
        sent.set()

    thread = threading.Thread(target=send_later, daemon=True)
    started = time.monotonic()
    thread.start()
    messages = receive(sqs, queue_url, WaitTimeSeconds=5)
    elapsed = time.monotonic() - started
    thread.join(10)
    assert sent.is_set()
    assert [m["Body"] for m in messages] == ["wake up"]
    assert elapsed < 2.0, elapsed


def test_empty_long_poll_lasts_its_wait(sqs: Any, queue_url: str) -> None:
    started = time.monotonic()
    response = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=2)
    elapsed = time.monotonic() - started
    assert "Messages" not in response
    assert 1.8 <= elapsed < 4.0, elapsed


def test_queue_receive_wait_time_is_default_long_poll(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name,
                           Attributes={"ReceiveMessageWaitTimeSeconds": "2"})["QueueUrl"]
    started = time.monotonic()
    assert "Messages" not in sqs.receive_message(QueueUrl=url)
    assert time.monotonic() - started >= 1.8
    # An explicit 0 overrides the queue's default.
    started = time.monotonic()
    assert "Messages" not in sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0)
    assert time.monotonic() - started < 1.0


def test_receive_at_most_max_number(sqs: Any, queue_url: str) -> None:
    sqs.send_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": f"m{i}", "MessageBody": str(i)} for i in range(5)])
    wait_until(lambda: approximate_counts(sqs, queue_url)[0] == 5, timeout_s=5)
    got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=2,
                              WaitTimeSeconds=1)["Messages"]
    assert 1 <= len(got) <= 2
    default = sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=1)["Messages"]
    assert len(default) == 1


def test_purge_queue_and_60s_rule(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    sqs.send_message_batch(QueueUrl=url, Entries=[
        {"Id": f"m{i}", "MessageBody": str(i)} for i in range(3)])
    sqs.send_message(QueueUrl=url, MessageBody="delayed", DelaySeconds=60)
    receive_until(sqs, url, 1, MaxNumberOfMessages=1, VisibilityTimeout=60)
    sqs.purge_queue(QueueUrl=url)
    wait_until(lambda: approximate_counts(sqs, url) == (0, 0, 0), timeout_s=5,
               what="purge to empty the queue")
    assert receive(sqs, url) == []

    with pytest.raises(ClientError) as ei:
        sqs.purge_queue(QueueUrl=url)
    code, message, status = error_of(ei.value)
    assert (code, status) == ("AWS.SimpleQueueService.PurgeQueueInProgress", 403)
    assert isinstance(ei.value, sqs.exceptions.PurgeQueueInProgress)
    assert message == f"Only one PurgeQueue operation on {queue_name} is allowed every 60 seconds."
    # Messages sent after a purge are kept.
    sqs.send_message(QueueUrl=url, MessageBody="after")
    assert [m["Body"] for m in receive_until(sqs, url, 1)] == ["after"]


def test_purge_repeatable_when_rule_disabled(dev_sqs: Any, queue_name: str) -> None:
    url = dev_sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    dev_sqs.send_message(QueueUrl=url, MessageBody="one")
    dev_sqs.purge_queue(QueueUrl=url)
    dev_sqs.send_message(QueueUrl=url, MessageBody="two")
    dev_sqs.purge_queue(QueueUrl=url)
    assert approximate_counts(dev_sqs, url) == (0, 0, 0)


# The retention test's server runs its clock this many times as fast as the wall clock
# (``serve --clock-rate``, a test seam): SQS's least retention is 60 s, and waiting it
# out in real time was the suite's slowest test.
_RETENTION_CLOCK_RATE = 10.0


@pytest.mark.timeout(60)
def test_retention_period_drops_old_messages(tmp_path: Path, queue_name: str) -> None:
    rate = _RETENTION_CLOCK_RATE
    server = ServerProcess(tmp_path / "fast-clock", ["--clock-rate", str(rate)]).start()
    try:
        # Both protocols at once, on one clock.
        urls = {}
        clients = {p: make_client(server.url, p) for p in ("json", "query")}
        for proto, client in clients.items():
            url = client.create_queue(QueueName=f"{queue_name}-{proto}",
                                      Attributes={"MessageRetentionPeriod": "60"})["QueueUrl"]
            client.send_message(QueueUrl=url, MessageBody="old")
            client.send_message(QueueUrl=url, MessageBody="in flight")
            urls[proto] = url
        for proto, client in clients.items():
            # Keep one in flight past its retention: it must be dropped as well.
            msg = receive_until(client, urls[proto], 1, MaxNumberOfMessages=1,
                                VisibilityTimeout=300)[0]
            assert msg["Body"] in ("old", "in flight")
        sent_at = time.monotonic()
        time.sleep(45 / rate)
        for proto, client in clients.items():
            client.send_message(QueueUrl=urls[proto], MessageBody="fresh")
        for proto, client in clients.items():
            url = urls[proto]

            def only_fresh_left(c: Any = client, u: str = url) -> bool:
                return approximate_counts(c, u)[:2] == (1, 0)

            wait_until(only_fresh_left, timeout_s=40 / rate + 5, interval_s=0.05,
                       what=f"retention expiry ({proto})")
            # Not before 60 s of the server's clock.
            assert time.monotonic() - sent_at >= 59 / rate
            got = receive(client, urls[proto], WaitTimeSeconds=1)
            assert [m["Body"] for m in got] == ["fresh"]
    finally:
        server.stop()


RECORDED_ATTRIBUTES: dict[str, dict[str, Any]] = {
    "Help.Me": {"DataType": "String", "StringValue": "Me"},
    "Hello": {"DataType": "String", "StringValue": "There"},
    "General": {"DataType": "String", "StringValue": "Kenobi"},
}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["*"], {"General", "Hello", "Help.Me"}),
        (["Hel.*"], {"Hello", "Help.Me"}),
        (["Foo", "Help"], set()),
        (["AWS."], set()),
    ],
    ids=["star", "prefix-without-dot", "no-match", "impossible-name"],
)
def test_message_attribute_filters_as_recorded(sqs: Any, queue_url: str, filters: list[str],
                                               expected: set[str]) -> None:
    # The cases of an AWS recording (LocalStack's
    # test_receive_message_message_attribute_names_filters) that Ferry got wrong.
    sqs.send_message(QueueUrl=queue_url, MessageBody="msg", MessageAttributes=RECORDED_ATTRIBUTES)
    msg = receive_until(sqs, queue_url, 1, MessageAttributeNames=filters)[0]
    assert set(msg.get("MessageAttributes", {})) == expected
    if expected:
        subset = {k: RECORDED_ATTRIBUTES[k] for k in expected}
        assert msg["MD5OfMessageAttributes"] == md5_of_attributes(subset)


def test_too_many_filter_names_are_refused(sqs: Any, queue_url: str) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody="x")
    with pytest.raises(ClientError) as ei:
        sqs.receive_message(QueueUrl=queue_url, MessageAttributeNames=["All"] * 1001)
    code, message, status = error_of(ei.value)
    assert (code, status) == ("InvalidParameterValue", 400)
    # Refused by the core's bound on name lists, or already by the gateway's coarser
    # bound on a request's items (which names the Query member, MessageAttributeName).
    assert "MessageAttributeName" in message
    assert len(receive(sqs, queue_url, MessageAttributeNames=["All"] * 1000)) == 1


def test_attribute_names_beyond_ascii_are_accepted(sqs: Any, queue_url: str) -> None:
    # Recorded on AWS: accepted, although the documentation lists only ASCII characters.
    attributes = {"attr.1øßä": {"DataType": "String", "StringValue": "Valida"}}
    sent = sqs.send_message(QueueUrl=queue_url, MessageBody="test", MessageAttributes=attributes)
    assert sent["MD5OfMessageAttributes"] == md5_of_attributes(attributes)
    msg = receive_until(sqs, queue_url, 1, MessageAttributeNames=["All"])[0]
    assert msg["MessageAttributes"] == attributes


@pytest.mark.parametrize("name", ["Invalid-!-attr", "Invalid-§-attr", "Invalid-(-attr"])
def test_attribute_names_with_symbols_are_refused(sqs: Any, queue_url: str, name: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=queue_url, MessageBody="x", MessageAttributes={
            name: {"DataType": "String", "StringValue": "Valid"}})
    assert error_of(ei.value)[0] == "InvalidParameterValue"


def test_control_character_in_attribute_value_is_invalid_parameter_value(
    sqs: Any, queue_url: str
) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=queue_url, MessageBody="x", MessageAttributes={
            "attr1": {"DataType": "String", "StringValue": f"Invalid-{chr(8)},{chr(11)}"}})
    code, message, status = error_of(ei.value)
    assert (code, status) == ("InvalidParameterValue", 400)
    assert message.startswith("Invalid binary character '#x8' was found in the message "
                              "attribute 'attr1' value,")
    assert receive(sqs, queue_url) == []


@pytest.mark.parametrize(("value", "accepted"), [
    ("9" * 38, True), ("1" + "0" * 126, True), ("1e-128", True),
    ("9" * 39, False), ("1" * 5000, False), ("1e127", False), ("1e-129", False),
], ids=["38-digits", "1e126", "1e-128", "39-digits", "5000-digits", "1e127", "1e-129"])
def test_number_attribute_precision_and_range(sqs: Any, queue_url: str, value: str,
                                              accepted: bool) -> None:
    attributes = {"n": {"DataType": "Number", "StringValue": value}}
    if accepted:
        sqs.send_message(QueueUrl=queue_url, MessageBody="x", MessageAttributes=attributes)
        msg = receive_until(sqs, queue_url, 1, MessageAttributeNames=["n"])[0]
        assert msg["MessageAttributes"] == attributes
        return
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=queue_url, MessageBody="x", MessageAttributes=attributes)
    assert error_of(ei.value) == (
        "InvalidParameterValue",
        "Can't cast the value of message (user) attribute 'n' to a number.", 400)
