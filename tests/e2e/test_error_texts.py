"""End-to-end: error texts and error shapes as real SQS answers them, both protocols.

Each expectation here is an AWS response (recorded, or quoted from a raw response);
the source is named next to the test. boto3 is checked too: the error must reach the
caller as the right exception class with the right ``Error.Code``.
"""

from __future__ import annotations

import http.client
import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ._harness import ServerProcess, error_of, receive, receive_until

ACCOUNT = "000000000000"
JSON_TYPE = "application/x-amz-json-1.0"
ALLOWED_CHARS = ("the set of allowed characters is #x9 | #xA | #xD | [#x20-#xD7FF] | "
                 "[#xE000-#xFFFD] | [#x10000-#x10FFFF].")


@pytest.fixture
def fifo_url(sqs: Any, queue_name: str) -> str:
    url: str = sqs.create_queue(QueueName=queue_name + ".fifo", Attributes={
        "FifoQueue": "true", "ContentBasedDeduplication": "true"})["QueueUrl"]
    return url


def test_body_names_its_first_forbidden_character(sqs: Any, queue_url: str) -> None:
    # AWS: "Invalid binary character '#x7' was found in the message body, ..."
    with pytest.raises(sqs.exceptions.InvalidMessageContents) as ei:
        sqs.send_message(QueueUrl=queue_url, MessageBody="ring \x07 then \x01")
    assert error_of(ei.value) == (
        "InvalidMessageContents",
        f"Invalid binary character '#x7' was found in the message body, {ALLOWED_CHARS}", 400)


def test_empty_attribute_name(sqs: Any, queue_url: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=queue_url, MessageBody="x", MessageAttributes={
            "": {"DataType": "String", "StringValue": "v"}})
    assert error_of(ei.value) == (
        "InvalidParameterValue", "The request must contain non-empty message attribute name.",
        400)


@pytest.mark.parametrize("lists", [{"StringListValues": []}, {"StringListValues": ["a"]},
                                   {"BinaryListValues": [b"a"]}],
                         ids=["empty", "strings", "binaries"])
def test_attribute_list_values_are_unsupported(sqs: Any, queue_url: str,
                                               lists: dict[str, Any]) -> None:
    # AWS: AWS.SimpleQueueService.UnsupportedOperation, even for empty lists, and a
    # batch fails as a whole (ruby-shoryuken/shoryuken#769, lumigo-io/lumigo-CLI#94).
    value = {"DataType": "String", "StringValue": "v", **lists}
    with pytest.raises(sqs.exceptions.UnsupportedOperation) as ei:
        sqs.send_message(QueueUrl=queue_url, MessageBody="x", MessageAttributes={"a": value})
    assert error_of(ei.value) == (
        "AWS.SimpleQueueService.UnsupportedOperation",
        "Message attribute list values in SendMessage operation are not supported.", 400)
    with pytest.raises(sqs.exceptions.UnsupportedOperation) as ei:
        sqs.send_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": "fine", "MessageBody": "fine"},
            {"Id": "listed", "MessageBody": "x", "MessageAttributes": {"a": value}},
        ])
    assert error_of(ei.value)[1] == (
        "Message attribute list values in SendMessageBatch operation are not supported.")
    assert receive(sqs, queue_url) == []


def test_delete_message_without_a_handle_names_message_handle(sqs: Any,
                                                              queue_url: str) -> None:
    # AWS: MissingParameter "... parameter MessageHandle." (aws/aws-sdk-js-v3#5478 over
    # JSON, syndesisio/syndesis#6254 over Query).
    with pytest.raises(ClientError) as ei:
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle="")
    assert error_of(ei.value) == (
        "MissingParameter", "The request must contain the parameter MessageHandle.", 400)


def test_visibility_beyond_twelve_hours_since_the_receive(sqs: Any, queue_url: str) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody="x")
    (message,) = receive_until(sqs, queue_url, 1, VisibilityTimeout=30)
    # Any time after the receive, 43200 s more is past the 12-hour cap.
    with pytest.raises(ClientError) as ei:
        sqs.change_message_visibility(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"],
                                      VisibilityTimeout=43_200)
    assert error_of(ei.value) == (
        "InvalidParameterValue",
        "Value 43200 for parameter VisibilityTimeout is invalid. Reason: Total VisibilityTimeout "
        "for the message is beyond the limit [43200 seconds].", 400)


def test_standard_queue_named_fifo_gets_the_standard_name_text(sqs: Any,
                                                               queue_name: str) -> None:
    # boto/botocore#3058: a standard queue with a .fifo suffix.
    with pytest.raises(ClientError) as ei:
        sqs.create_queue(QueueName=queue_name + ".fifo")
    assert error_of(ei.value) == (
        "InvalidParameterValue",
        "Can only include alphanumeric characters, hyphens, or underscores. 1 to 80 in length",
        400)


@pytest.mark.parametrize("action", ["create", "set"])
def test_redrive_errors_echo_the_policy_as_sent(sqs: Any, queue_url: str, queue_name: str,
                                                action: str) -> None:
    # AWS echoes the policy as the client sent it: "maxReceiveCount":"15" stays a string.
    missing = f"arn:aws:sqs:us-east-1:{ACCOUNT}:{queue_name}-nowhere"
    policy = '{"deadLetterTargetArn": "' + missing + '", "maxReceiveCount": "15"}'
    with pytest.raises(ClientError) as ei:
        if action == "create":
            sqs.create_queue(QueueName=queue_name + "-src",
                             Attributes={"RedrivePolicy": policy})
        else:
            sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"RedrivePolicy": policy})
    assert error_of(ei.value) == (
        "InvalidParameterValue",
        f"Value {policy} for parameter RedrivePolicy is invalid. Reason: Dead letter target "
        "does not exist.", 400)


def test_batch_entry_with_a_parameter_of_the_other_queue_type(sqs: Any, queue_url: str,
                                                              fifo_url: str) -> None:
    # What AWS put in a SendMessageBatch Failed entry (aws/aws-sdk-js#3187).
    expected = {"SenderFault": True, "Code": "InvalidParameterValue",
                "Message": "The request include parameter that is not valid for this queue type"}
    for url, entry in ((queue_url, {"MessageDeduplicationId": "d"}),
                       (fifo_url, {"MessageGroupId": "g", "DelaySeconds": 5})):
        result = sqs.send_message_batch(QueueUrl=url, Entries=[
            {"Id": "e", "MessageBody": "b", **entry}])
        assert result["Failed"] == [{"Id": "e", **expected}]
        assert result.get("Successful", []) == []


def test_attempt_id_is_not_retryable_after_a_delete(sqs: Any, fifo_url: str) -> None:
    for body in ("a", "b"):
        sqs.send_message(QueueUrl=fifo_url, MessageBody=body, MessageGroupId="g")
    first = receive_until(sqs, fifo_url, 2, ReceiveRequestAttemptId="attempt-1",
                          VisibilityTimeout=30)
    sqs.delete_message(QueueUrl=fifo_url, ReceiptHandle=first[0]["ReceiptHandle"])
    with pytest.raises(ClientError) as ei:
        receive(sqs, fifo_url, ReceiveRequestAttemptId="attempt-1", VisibilityTimeout=30)
    assert error_of(ei.value) == (
        "InvalidParameterValue",
        "Value attempt-1 for parameter ReceiveRequestAttemptId is invalid. Reason: The "
        "receiveRequestAttemptId is not valid anymore since the receive call is not retryable.",
        400)


def test_a_string_for_an_integer(sqs: Any, protocol: str, queue_url: str) -> None:
    # boto3 here sends parameters unvalidated, so "5" goes out as given.
    if protocol == "query":
        # Query carries every value as text: "5" is the integer 5 there.
        assert receive(sqs, queue_url, MaxNumberOfMessages="5") == []
        return
    # JSON: AWS's SerializationException text for a string where an integer belongs
    # (async-aws/aws#1667).
    with pytest.raises(ClientError) as ei:
        receive(sqs, queue_url, MaxNumberOfMessages="5")
    assert error_of(ei.value) == (
        "SerializationException", "STRING_VALUE can not be converted to an Integer", 400)


# ---- the JSON error envelope, over raw HTTP ----------------------------------------------


def json_post(server: ServerProcess, target: str | None,
              params: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    headers = {"Content-Type": JSON_TYPE}
    if target is not None:
        headers["X-Amz-Target"] = target
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        conn.request("POST", "/", body=json.dumps(params).encode(), headers=headers)
        response = conn.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                json.loads(response.read()))
    finally:
        conn.close()


@pytest.mark.parametrize("target", ["AmazonSQS.Frobnicate", None], ids=["unknown", "missing"])
def test_unknown_operation_is_the_bare_type(server: ServerProcess, target: str | None) -> None:
    # Recorded on AWS (awslabs/aws-sdk-rust#957): 400, only __type, no x-amzn-query-error.
    status, headers, doc = json_post(server, target, {})
    assert status == 400
    assert doc == {"__type": "com.amazon.coral.service#UnknownOperationException"}
    assert "x-amzn-query-error" not in headers


def test_type_namespaces(server: ServerProcess) -> None:
    # The service framework's errors are com.amazon.coral.service# (recorded for
    # InvalidParameterValueException, http4k/http4k#1336); SQS's own are com.amazonaws.sqs#.
    status, headers, doc = json_post(server, "AmazonSQS.ReceiveMessage", {
        "QueueUrl": f"{server.url}/{ACCOUNT}/nope", "MaxNumberOfMessages": 5})
    assert (status, doc["__type"]) == (400, "com.amazonaws.sqs#QueueDoesNotExist")
    assert headers["x-amzn-query-error"] == "AWS.SimpleQueueService.NonExistentQueue;Sender"
    status, headers, doc = json_post(server, "AmazonSQS.CreateQueue",
                                     {"QueueName": "bad name"})
    assert (status, doc["__type"]) == (400,
                                       "com.amazon.coral.service#InvalidParameterValueException")
    assert headers["x-amzn-query-error"] == "InvalidParameterValue;Sender"
    assert doc["message"].startswith("Can only include alphanumeric characters")
