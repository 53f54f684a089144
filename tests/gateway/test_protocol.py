"""Codec tests: requests built by botocore's own serializers decode to the canonical
params, and our encoded results and errors parse back in botocore's own parsers, for
every action and both protocols (current JSON model; Query model of botocore 1.34.89)."""

from __future__ import annotations

import asyncio
import copy
import json
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import botocore.parsers
import botocore.serialize
import orjson
import pytest
from botocore.model import ServiceModel

from ferrymq._core._control import MOVE_TASK_HANDLE_PARAM, MOVE_TASK_HANDLES_LISTED_PARAM
from ferrymq._core._errors import ERRORS, SqsError, invalid_parameter, missing_parameter
from ferrymq._gateway._app import Gateway
from ferrymq._gateway._http import Request, Response
from ferrymq._gateway._protocol import (
    DECODED_ITEMS_MAX,
    INTEGER_MAX,
    INTEGER_MIN,
    XMLNS,
    decode,
    encode_error,
    encode_result,
    http_fault,
    protocol_of,
    xml_escape,
    xml_text,
)
from ferrymq._gateway._wire_model import OPERATIONS

URL = "http://127.0.0.1:9324/000000000000/orders"
FORM = "application/x-www-form-urlencoded; charset=utf-8"
ARN = "arn:aws:sqs:us-east-1:000000000000:orders-dlq"

_ATTRS = {
    "a.text": {"DataType": "String", "StringValue": "h\u00e9llo & <b>\r\n"},
    "num": {"DataType": "Number.int", "StringValue": "42"},
    "bin": {"DataType": "Binary", "BinaryValue": b"\x00\x01\xffbinary"},
}

# Realistic canonical inputs, one or more per action.
INPUTS: dict[str, list[dict[str, Any]]] = {
    "CreateQueue": [
        {"QueueName": "orders.fifo",
         "Attributes": {"FifoQueue": "true", "VisibilityTimeout": "45",
                        "RedrivePolicy":
                            '{"deadLetterTargetArn":"' + ARN + '","maxReceiveCount":3}'},
         "tags": {"team": "payments", "env": "dev & test"}},
        {"QueueName": "plain"},
    ],
    "DeleteQueue": [{"QueueUrl": URL}],
    "GetQueueUrl": [{"QueueName": "orders", "QueueOwnerAWSAccountId": "123456789012"}],
    "ListQueues": [{"QueueNamePrefix": "ord", "NextToken": "tok/+=", "MaxResults": 1000}, {}],
    "GetQueueAttributes": [{"QueueUrl": URL, "AttributeNames": ["All"]},
                           {"QueueUrl": URL, "AttributeNames": ["QueueArn", "VisibilityTimeout"]}],
    "SetQueueAttributes": [{"QueueUrl": URL, "Attributes": {"DelaySeconds": "5", "Policy": ""}}],
    "PurgeQueue": [{"QueueUrl": URL}],
    "SendMessage": [
        {"QueueUrl": URL, "MessageBody": "line1\r\nline2 & <tag> \u00fc\U0001F600",
         "DelaySeconds": 0, "MessageAttributes": _ATTRS,
         "MessageSystemAttributes": {"AWSTraceHeader": {
             "DataType": "String", "StringValue": "Root=1-5759e988-bd862e3fe1be46a994272793"}},
         "MessageDeduplicationId": "d-1", "MessageGroupId": "g-1"},
        {"QueueUrl": URL, "MessageBody": "x"},
    ],
    "SendMessageBatch": [{"QueueUrl": URL, "Entries": [
        {"Id": "m1", "MessageBody": "one", "DelaySeconds": 3, "MessageAttributes": _ATTRS},
        {"Id": "m2", "MessageBody": "two", "MessageGroupId": "g", "MessageDeduplicationId": "d"},
    ]}],
    "ReceiveMessage": [
        {"QueueUrl": URL, "AttributeNames": ["All"], "MessageAttributeNames": ["a.*", "num"],
         "MaxNumberOfMessages": 10, "VisibilityTimeout": 60, "WaitTimeSeconds": 20,
         "ReceiveRequestAttemptId": "attempt-1"},
        {"QueueUrl": URL},
    ],
    "DeleteMessage": [{"QueueUrl": URL, "ReceiptHandle": "rh+/=abc"}],
    "DeleteMessageBatch": [{"QueueUrl": URL, "Entries": [
        {"Id": "a", "ReceiptHandle": "rh1"}, {"Id": "b", "ReceiptHandle": "rh2"}]}],
    "ChangeMessageVisibility": [{"QueueUrl": URL, "ReceiptHandle": "rh", "VisibilityTimeout": 0}],
    "ChangeMessageVisibilityBatch": [{"QueueUrl": URL, "Entries": [
        {"Id": "a", "ReceiptHandle": "rh1", "VisibilityTimeout": 43200},
        {"Id": "b", "ReceiptHandle": "rh2"}]}],
    "TagQueue": [{"QueueUrl": URL, "Tags": {"k1": "v1", "k2": ""}}],
    "UntagQueue": [{"QueueUrl": URL, "TagKeys": ["k1", "k2"]}],
    "ListQueueTags": [{"QueueUrl": URL}],
    "AddPermission": [{"QueueUrl": URL, "Label": "perm1",
                       "AWSAccountIds": ["111122223333", "444455556666"],
                       "Actions": ["SendMessage", "ReceiveMessage"]}],
    "RemovePermission": [{"QueueUrl": URL, "Label": "perm1"}],
    "ListDeadLetterSourceQueues": [{"QueueUrl": URL, "NextToken": "n", "MaxResults": 5}],
    "StartMessageMoveTask": [{"SourceArn": ARN, "DestinationArn": ARN + "-2",
                              "MaxNumberOfMessagesPerSecond": 50}],
    "ListMessageMoveTasks": [{"SourceArn": ARN, "MaxResults": 10}],
    "CancelMessageMoveTask": [{"TaskHandle": "eyJ0YXNrSWQiOiJ4In0="}],
}

_MESSAGE = {
    "MessageId": "8e3c1c1a-4a8e-4a35-9a54-d0d3b1e1f0a1",
    "ReceiptHandle": "AQEB+/=handle",
    "MD5OfBody": "5d41402abc4b2a76b9719d911017c592",
    "Body": "a\r\nb & <c> \u00e9",
    "Attributes": {"SenderId": "AKIDEXAMPLE", "SentTimestamp": "1700000000000",
                   "ApproximateReceiveCount": "2",
                   "ApproximateFirstReceiveTimestamp": "1700000000100"},
    "MD5OfMessageAttributes": "19e27d4e946b072f3f58da80d94fd778",
    "MessageAttributes": _ATTRS,
}

OUTPUTS: dict[str, dict[str, Any]] = {
    "CreateQueue": {"QueueUrl": URL},
    "GetQueueUrl": {"QueueUrl": URL},
    "ListQueues": {"QueueUrls": [URL, URL + "-2"], "NextToken": "next"},
    "GetQueueAttributes": {"Attributes": {"VisibilityTimeout": "30", "QueueArn": ARN,
                                          "Policy": '{"Version":"2012-10-17","a":"<&>"}'}},
    "SendMessage": {"MD5OfMessageBody": "5d41402abc4b2a76b9719d911017c592",
                    "MD5OfMessageAttributes": "a18cbb58171ebf4ce88d9fb787f9210b",
                    "MD5OfMessageSystemAttributes": "0b7b4c5d0c1f4f8f9b4c0d2a1e3f4a5b",
                    "MessageId": "cafbefd7-0000-4000-8000-000000000000",
                    "SequenceNumber": "18849496460467696128"},
    "SendMessageBatch": {
        "Successful": [{"Id": "m1", "MessageId": "id-1",
                        "MD5OfMessageBody": "5d41402abc4b2a76b9719d911017c592",
                        "MD5OfMessageAttributes": "a18cbb58171ebf4ce88d9fb787f9210b"},
                       {"Id": "m2", "MessageId": "id-2", "MD5OfMessageBody": "x",
                        "SequenceNumber": "1"}],
        "Failed": [{"Id": "m3", "SenderFault": True, "Code": "InvalidMessageContents",
                    "Message": "Invalid characters found."},
                   {"Id": "m4", "SenderFault": False, "Code": "InternalError"}]},
    "ReceiveMessage": {"Messages": [_MESSAGE, {**_MESSAGE, "MessageId": "second",
                                               "MessageAttributes": {}}]},
    "DeleteMessageBatch": {"Successful": [{"Id": "a"}],
                           "Failed": [{"Id": "b", "SenderFault": True,
                                       "Code": "ReceiptHandleIsInvalid", "Message": "bad"}]},
    "ChangeMessageVisibilityBatch": {"Successful": [{"Id": "a"}, {"Id": "b"}],
                                     "Failed": [{"Id": "c", "SenderFault": True,
                                                 "Code": "X", "Message": "y"}]},
    "ListQueueTags": {"Tags": {"team": "payments", "note": "a&b<c>"}},
    "ListDeadLetterSourceQueues": {"queueUrls": [URL, URL + "-b"], "NextToken": "t"},
    "StartMessageMoveTask": {"TaskHandle": "eyJ0YXNrSWQiOiJ4In0="},
    "ListMessageMoveTasks": {"Results": [
        {"TaskHandle": "h", "Status": "RUNNING", "SourceArn": ARN, "DestinationArn": ARN + "x",
         "MaxNumberOfMessagesPerSecond": 50, "ApproximateNumberOfMessagesMoved": 7,
         "ApproximateNumberOfMessagesToMove": 12345678901, "StartedTimestamp": 1700000000000},
        {"Status": "FAILED", "SourceArn": ARN, "ApproximateNumberOfMessagesMoved": 0,
         "FailureReason": "AWS.SimpleQueueService.NonExistentQueue",
         "StartedTimestamp": 1700000000000}]},
    "CancelMessageMoveTask": {"ApproximateNumberOfMessagesMoved": 3},
}

ALL_ACTIONS = sorted(OPERATIONS)


def test_every_action_is_covered() -> None:
    assert len(ALL_ACTIONS) == 23
    assert set(INPUTS) == set(ALL_ACTIONS)
    with_output = {a for a, (_i, o) in OPERATIONS.items() if o is not None}
    assert set(OUTPUTS) == with_output


def test_wire_model_matches_botocore(derived_wire_model: dict[str, Any]) -> None:
    assert derived_wire_model == OPERATIONS


# ---- request decoding --------------------------------------------------------------


def _json_request(model: ServiceModel, action: str, params: dict[str, Any]) -> Request:
    serializer = botocore.serialize.create_serializer("json")
    wire = serializer.serialize_to_request(params, model.operation_model(action))
    headers = {k.lower(): v for k, v in wire["headers"].items()}
    return Request("POST", "/", "", headers, wire["body"], "127.0.0.1:1")


def _query_form(model: ServiceModel, action: str, params: dict[str, Any]) -> dict[str, str]:
    serializer = botocore.serialize.create_serializer("query")
    wire = serializer.serialize_to_request(params, model.operation_model(action))
    body: dict[str, str] = wire["body"]
    return body


def _query_request(form: dict[str, str], *, get: bool = False) -> Request:
    text = urlencode(form)
    headers = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}
    if get:
        return Request("GET", "/", text, {}, b"", "127.0.0.1:1")
    return Request("POST", "/", "", headers, text.encode(), "127.0.0.1:1")


@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_json_requests_decode_to_canonical(json_model: ServiceModel, action: str) -> None:
    for params in INPUTS[action]:
        req = _json_request(json_model, action, copy.deepcopy(params))
        protocol, got_action, got = decode(req)
        assert (protocol, got_action) == ("json", action)
        assert got == params


@pytest.mark.parametrize("action", ALL_ACTIONS)
@pytest.mark.parametrize("get", [False, True])
def test_query_requests_decode_to_canonical(query_model: ServiceModel, action: str,
                                            get: bool) -> None:
    for params in INPUTS[action]:
        form = _query_form(query_model, action, copy.deepcopy(params))
        assert form["Action"] == action
        protocol, got_action, got = decode(_query_request(form, get=get))
        assert (protocol, got_action) == ("query", action)
        assert got == params


def test_query_names_of_newer_members_and_empty_lists() -> None:
    # MessageSystemAttributeNames is newer than the last Query model.
    form = {"Action": "ReceiveMessage", "QueueUrl": URL,
            "MessageSystemAttributeName.1": "SenderId",
            "MessageSystemAttributeName.2": "SentTimestamp", "AttributeNames": ""}
    _p, _a, got = decode(_query_request(form))
    assert got == {"QueueUrl": URL, "MessageSystemAttributeNames": ["SenderId", "SentTimestamp"],
                   "AttributeNames": []}
    # Indexes are ordered numerically, not as text.
    form = {"Action": "UntagQueue", "QueueUrl": URL,
            **{f"TagKey.{i}": f"k{i}" for i in (10, 2, 1)}}
    assert decode(_query_request(form))[2]["TagKeys"] == ["k1", "k2", "k10"]


def _decode_error(request: Request) -> SqsError:
    with pytest.raises(SqsError) as info:
        decode(request)
    return info.value


def test_json_decode_errors(json_model: ServiceModel) -> None:
    ok = _json_request(json_model, "SendMessage", {"QueueUrl": URL, "MessageBody": "x"})
    cases = [
        ({**ok.headers, "x-amz-target": "AmazonSQS.Nope"}, ok.body, "UnknownOperationException"),
        ({k: v for k, v in ok.headers.items() if k != "x-amz-target"}, ok.body,
         "UnknownOperationException"),
        ({**ok.headers, "x-amz-target": "Other.SendMessage"}, ok.body,
         "UnknownOperationException"),
        (ok.headers, b"{not json", "SerializationException"),
        (ok.headers, b"[1, 2]", "SerializationException"),
        (ok.headers, b'"text"', "SerializationException"),
        (ok.headers, b'{"QueueUrl": 5, "MessageBody": "x"}', "SerializationException"),
        (ok.headers, b'{"QueueUrl": "u", "DelaySeconds": "5"}', "SerializationException"),
        (ok.headers, b'{"QueueUrl": "u", "DelaySeconds": true}', "SerializationException"),
        (ok.headers, b'{"QueueUrl": "u", "MessageAttributes": []}', "SerializationException"),
        (ok.headers, b'{"QueueUrl": "u", "MessageAttributes": {"a": {"DataType": "Binary",'
                     b' "BinaryValue": "!!not base64"}}}', "SerializationException"),
        (ok.headers, b"\xff\xfe", "SerializationException"),
    ]
    for headers, body, shape in cases:
        err = _decode_error(Request("POST", "/", "", headers, body, ""))
        assert err.shape == shape, (headers, body)
        assert err.status == 400


def test_json_string_for_an_integer_is_aws_serialization_text(json_model: ServiceModel) -> None:
    # AWS's answer to a string where an integer belongs (async-aws/aws#1667).
    ok = _json_request(json_model, "ReceiveMessage", {"QueueUrl": URL})
    for body in (b'{"QueueUrl": "u", "VisibilityTimeout": "30"}',
                 b'{"QueueUrl": "u", "MaxNumberOfMessages": "ten"}'):
        err = _decode_error(Request("POST", "/", "", ok.headers, body, ""))
        assert (err.shape, err.status, err.message) == (
            "SerializationException", 400, "STRING_VALUE can not be converted to an Integer")
    err = _decode_error(Request("POST", "/", "", ok.headers,
                                b'{"QueueUrl": "u", "VisibilityTimeout": [30]}', ""))
    assert err.message == "Expected an integer for VisibilityTimeout."


def test_json_decode_tolerates_nulls_unknown_members_and_empty_body(
        json_model: ServiceModel) -> None:
    ok = _json_request(json_model, "ListQueues", {})
    req = Request("POST", "/", "", ok.headers,
                  b'{"QueueNamePrefix": null, "FutureField": {"x": 1}, "MaxResults": 3}', "")
    assert decode(req) == ("json", "ListQueues", {"MaxResults": 3})
    assert decode(Request("POST", "/", "", ok.headers, b"", "")) == ("json", "ListQueues", {})


def test_no_client_can_set_a_partition_call_s_own_parameters(
        json_model: ServiceModel) -> None:
    # A queue of several partitions gives its partitions a move task's handle in these;
    # a client that sends them is not heard (the gateway keeps only the shape's members).
    own = {MOVE_TASK_HANDLE_PARAM: "forged", MOVE_TASK_HANDLES_LISTED_PARAM: True}
    ok = _json_request(json_model, "StartMessageMoveTask", {"SourceArn": "a"})
    body = json.dumps({"SourceArn": "a", **own}).encode()
    assert decode(Request("POST", "/", "", ok.headers, body, "")) == (
        "json", "StartMessageMoveTask", {"SourceArn": "a"})
    form = {"Action": "ListMessageMoveTasks", "SourceArn": "a",
            **{k: str(v) for k, v in own.items()}}
    assert decode(_query_request(form)) == ("query", "ListMessageMoveTasks",
                                            {"SourceArn": "a"})


def test_query_decode_errors() -> None:
    def err_of(form: str | bytes, query: str = "") -> SqsError:
        body = form.encode() if isinstance(form, str) else form
        return _decode_error(Request("POST", "/", query, {}, body, ""))

    e = err_of("Action=Frobnicate")
    assert (e.shape, e.status, e.message) == (
        "InvalidAction", 400, "The action Frobnicate is not valid for this endpoint.")
    e = err_of("")
    assert (e.shape, e.status) == ("UnknownOperationException", 404)
    e = err_of("Version=2012-11-05&QueueUrl=x")
    assert (e.shape, e.status) == ("UnknownOperationException", 404)
    e = err_of(f"Action=ReceiveMessage&QueueUrl={URL}&MaxNumberOfMessages=ten")
    assert e.shape == "InvalidParameterValueException"
    assert "MaxNumberOfMessages" in e.message
    assert err_of("Action=ListQueues&MaxResults=%FF%FE").shape == "MalformedQueryString"
    assert err_of(b"Action=ListQueues&\xff=1").shape == "MalformedQueryString"
    assert err_of("Action=UntagQueue&QueueUrl=u&TagKey.x=1").shape == "MalformedQueryString"
    assert err_of("Action=UntagQueue&QueueUrl=u&TagKey.0=1").shape == "MalformedQueryString"
    assert err_of("Action=DeleteQueue&QueueUrl.1=u").shape == "MalformedQueryString"
    e = err_of("Action=TagQueue&QueueUrl=u&Tag.1.Key=k")
    assert (e.shape, e.message) == ("MissingRequiredParameterException",
                                    "The request must contain the parameter Tag.1.Value.")
    e = err_of("Action=SendMessage&QueueUrl=u&MessageBody=b&MessageAttribute.1.Name=a"
               "&MessageAttribute.1.Value.DataType=Binary"
               "&MessageAttribute.1.Value.BinaryValue=%21%21")
    assert e.shape == "InvalidParameterValueException"


def test_query_action_from_get_and_body_body_wins() -> None:
    req = Request("POST", "/", "Action=ListQueues&QueueNamePrefix=a", {},
                  b"QueueNamePrefix=b", "")
    assert decode(req) == ("query", "ListQueues", {"QueueNamePrefix": "b"})


# ---- result encoding ----------------------------------------------------------------


def _parse(model: ServiceModel, action: str, response: Response) -> dict[str, Any]:
    protocol = model.metadata["protocol"]
    parser = botocore.parsers.create_parser(protocol)
    parsed: dict[str, Any] = parser.parse(
        {"status_code": response.status,
         "headers": {k.lower(): v for k, v in response.headers},
         "body": response.body},
        model.operation_model(action).output_shape)
    return parsed


def _expected(result: dict[str, Any]) -> dict[str, Any]:
    """What a parser gives back: empty maps are indistinguishable from absent ones."""
    if isinstance(result, dict):
        return {k: _expected(v) for k, v in result.items() if v != {}}
    if isinstance(result, list):
        return [_expected(v) for v in result]
    return result


@pytest.mark.parametrize("protocol", ["json", "query"])
@pytest.mark.parametrize("action", ALL_ACTIONS)
def test_results_parse_in_botocore(json_model: ServiceModel, query_model: ServiceModel,
                                   protocol: str, action: str) -> None:
    result = OUTPUTS.get(action, {})
    response = encode_result(protocol, action, copy.deepcopy(result), "req-1")  # type: ignore[arg-type]
    assert response.status == 200
    headers = dict(response.headers)
    assert headers["x-amzn-RequestId"] == "req-1"
    parsed = _parse(json_model if protocol == "json" else query_model, action, response)
    meta = parsed.pop("ResponseMetadata")
    assert meta["RequestId"] == "req-1"
    expect = _expected(result) if protocol == "query" else result
    assert parsed == expect


def test_json_result_encoding_details() -> None:
    r = encode_result("json", "ReceiveMessage", {}, "r")
    assert r.body == b"{}"
    assert dict(r.headers)["Content-Type"] == "application/x-amz-json-1.0"
    r = encode_result("json", "ReceiveMessage", {"Messages": [{"MessageAttributes": {
        "b": {"DataType": "Binary", "BinaryValue": b"\x00\x01"}}}]}, "r")
    assert orjson.loads(r.body)["Messages"][0]["MessageAttributes"]["b"]["BinaryValue"] == "AAE="


def test_query_result_encoding_details() -> None:
    r = encode_result("query", "DeleteQueue", {}, "r-9")
    assert r.body == (
        b'<DeleteQueueResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/">'
        b"<ResponseMetadata><RequestId>r-9</RequestId></ResponseMetadata>"
        b"</DeleteQueueResponse>")
    r = encode_result("query", "ReceiveMessage", {"Messages": [{"Body": "a\r\nb&<>"}]}, "r")
    assert b"<Message><Body>a&#xD;\nb&amp;&lt;&gt;</Body></Message>" in r.body
    r = encode_result("query", "ReceiveMessage", {}, "r")
    assert b"<ReceiveMessageResult></ReceiveMessageResult>" in r.body
    r = encode_result("query", "ListDeadLetterSourceQueues", {"queueUrls": ["u1", "u2"]}, "r")
    assert b"<QueueUrl>u1</QueueUrl><QueueUrl>u2</QueueUrl>" in r.body
    r = encode_result("query", "SendMessageBatch", {"Successful": [], "Failed": [
        {"Id": "x", "SenderFault": True, "Code": "C"}]}, "r")
    assert (b"<BatchResultErrorEntry><Id>x</Id><SenderFault>true</SenderFault><Code>C</Code>"
            b"</BatchResultErrorEntry>") in r.body
    assert xml_escape("plain") == "plain"


# ---- errors --------------------------------------------------------------------------


ERROR_CASES = [
    SqsError("QueueDoesNotExist", "The specified queue does not exist."),
    SqsError("PurgeQueueInProgress",
             "Only one PurgeQueue operation on orders is allowed every 60 seconds."),
    SqsError("ResourceNotFoundException", "Task does not exist."),
    SqsError("BatchEntryIdsNotDistinct", "Id m1 repeated."),
    SqsError("InternalFailure", "boom <&>"),
    invalid_parameter("Value 11 for parameter MaxNumberOfMessages is invalid. "
                      "Reason: Must be between 1 and 10, if provided."),
    missing_parameter("MessageBody"),
]


@pytest.mark.parametrize("err", ERROR_CASES, ids=lambda e: e.shape)
def test_json_errors_parse_in_botocore(json_model: ServiceModel, err: SqsError) -> None:
    response = encode_error("json", err, "req-e")
    assert response.status == err.status
    headers = {k.lower(): v for k, v in response.headers}
    fault = "Sender" if err.sender_fault else "Receiver"
    assert headers["x-amzn-query-error"] == f"{err.code};{fault}"
    parsed = _parse(json_model, "SendMessage", response)
    assert parsed["Error"]["Code"] == err.code
    assert parsed["Error"]["QueryErrorCode"] == err.shape
    assert parsed["Error"]["Message"] == err.message
    assert parsed["ResponseMetadata"]["RequestId"] == "req-e"


@pytest.mark.parametrize("err", ERROR_CASES, ids=lambda e: e.shape)
def test_query_errors_parse_in_botocore(query_model: ServiceModel, err: SqsError) -> None:
    response = encode_error("query", err, "req-q")
    assert response.status == err.status
    parsed = _parse(query_model, "SendMessage", response)
    assert parsed["Error"]["Code"] == err.code
    assert parsed["Error"]["Type"] == ("Sender" if err.sender_fault else "Receiver")
    if err.shape == "QueueDoesNotExist":
        assert parsed["Error"]["Message"] == (
            "The specified queue does not exist for this wsdl version.")
    else:
        assert parsed["Error"]["Message"] == err.message
    assert parsed["ResponseMetadata"]["RequestId"] == "req-q"


# The JSON __type namespace AWS uses: its service framework's for these shapes (recorded
# for InvalidParameterValueException and UnknownOperationException), SQS's for the rest.
CORAL_SHAPES = {"InvalidParameterValueException", "MissingRequiredParameterException",
                "UnknownOperationException", "SerializationException", "InternalFailure"}


@pytest.mark.parametrize("shape", sorted(ERRORS))
def test_json_type_namespace_per_shape(json_model: ServiceModel, shape: str) -> None:
    response = encode_error("json", SqsError(shape, "m"), "r")
    doc = orjson.loads(response.body)
    namespace = "com.amazon.coral.service#" if shape in CORAL_SHAPES else "com.amazonaws.sqs#"
    assert doc["__type"] == namespace + shape
    # botocore reads the shape after "#" and the legacy code from the header.
    parsed = _parse(json_model, "SendMessage", response)
    if shape == "UnknownOperationException":  # bare: no header, so the shape is the code
        assert parsed["Error"]["Code"] == shape
    else:
        assert parsed["Error"]["QueryErrorCode"] == shape
        assert parsed["Error"]["Code"] == ERRORS[shape][0]


def test_unknown_json_operation_is_a_bare_type(json_model: ServiceModel) -> None:
    # Recorded on AWS: 400, body exactly {"__type": ...}, no x-amzn-query-error.
    ok = _json_request(json_model, "ListQueues", {})
    missing = {k: v for k, v in ok.headers.items() if k != "x-amz-target"}
    for headers in ({**ok.headers, "x-amz-target": "AmazonSQS.Nope"}, missing):
        err = _decode_error(Request("POST", "/", "", headers, b"{}", ""))
        response = encode_error("json", err, "r")
        assert response.status == 400
        assert orjson.loads(response.body) == {
            "__type": "com.amazon.coral.service#UnknownOperationException"}
        names = {k.lower() for k, _ in response.headers}
        assert "x-amzn-query-error" not in names and "x-amzn-requestid" in names
        parsed = _parse(json_model, "ListQueues", response)
        assert parsed["Error"]["Code"] == "UnknownOperationException"


def test_every_known_error_shape_encodes() -> None:
    for shape in ERRORS:
        for protocol in ("json", "query"):
            r = encode_error(protocol, SqsError(shape, "m"), "r")
            assert r.status == ERRORS[shape][1]


def test_no_action_is_a_bare_404() -> None:
    err = _decode_error(Request("GET", "/", "", {}, b"", ""))
    r = encode_error("query", err, "r")
    assert (r.status, r.body) == (404, b"<UnknownOperationException/>")


def test_http_faults_follow_the_announced_protocol() -> None:
    r = http_fault({"content-type": "application/x-amz-json-1.0"}, 413, "too big", "r")
    assert r.status == 413
    assert orjson.loads(r.body)["__type"].endswith("#RequestEntityTooLarge")
    r = http_fault({}, 400, "bad", "r")
    assert r.status == 400 and b"<Code>MalformedHttpRequest</Code>" in r.body


# ---- integers: the model's 32-bit range, before any int() of unbounded text ----------


def test_every_input_number_is_a_32_bit_integer_in_the_model(json_model: ServiceModel) -> None:
    # The wire table folds "integer" and "long" into one "i"; the decoders' bound
    # (INTEGER_MIN..INTEGER_MAX) is right only while no input number is a long.
    def numbers(shape: Any, seen: set[str]) -> Iterator[str]:
        if shape.name in seen:
            return
        seen.add(shape.name)
        if shape.type_name in ("integer", "long"):
            yield shape.type_name
        for child in getattr(shape, "members", {}).values():
            yield from numbers(child, seen)
        for attr in ("member", "key", "value"):
            if hasattr(shape, attr):
                yield from numbers(getattr(shape, attr), seen)

    found = [kind for action in ALL_ACTIONS
             for kind in numbers(json_model.operation_model(action).input_shape, set())]
    assert found and set(found) == {"integer"}
    assert (INTEGER_MIN, INTEGER_MAX) == (-(2**31), 2**31 - 1)


_HUGE = "9" * 5000  # past Python's 4300-digit int() limit


@pytest.mark.parametrize("text", [_HUGE, "-" + _HUGE, "1" + "0" * 4400, "2147483648",
                                  "-2147483649", "\u00b2", "\u0661", "\uff15", "1e3", "1.5",
                                  "", "-", "+", "0x1F", "1_000"])
def test_query_integers_outside_the_model_are_invalid_parameters(text: str) -> None:
    for form in (f"Action=ReceiveMessage&QueueUrl={URL}&MaxNumberOfMessages={quote(text)}",
                 f"Action=SendMessage&QueueUrl={URL}&MessageBody=x&DelaySeconds={quote(text)}",
                 f"Action=ChangeMessageVisibilityBatch&QueueUrl={URL}"
                 "&ChangeMessageVisibilityBatchRequestEntry.1.Id=a"
                 "&ChangeMessageVisibilityBatchRequestEntry.1.ReceiptHandle=r"
                 f"&ChangeMessageVisibilityBatchRequestEntry.1.VisibilityTimeout={quote(text)}"):
        err = _decode_error(Request("POST", "/", "", {}, form.encode(), ""))
        assert (err.shape, err.status) == ("InvalidParameterValueException", 400), form[:80]
        assert err.message.endswith("is invalid. Reason: Must be an integer."), err.message
        # The value is echoed, but never megabytes of it.
        assert len(err.message) < 300


@pytest.mark.parametrize(("text", "value"), [
    ("2147483647", 2**31 - 1), ("-2147483648", -(2**31)), ("0" * 5000 + "7", 7),
    ("+5", 5), (" 6 ", 6), ("-0", 0), ("00", 0)])
def test_query_integers_inside_the_model_decode(text: str, value: int) -> None:
    form = f"Action=ReceiveMessage&QueueUrl={URL}&WaitTimeSeconds={quote(text)}"
    assert decode(Request("POST", "/", "", {}, form.encode(), ""))[2]["WaitTimeSeconds"] == value


def _json_body(action: str, body: bytes) -> Request:
    headers = {"content-type": "application/x-amz-json-1.0",
               "x-amz-target": f"AmazonSQS.{action}"}
    return Request("POST", "/", "", headers, body, "")


@pytest.mark.parametrize(("number", "shape"), [
    (_HUGE, "SerializationException"),  # orjson: a double overflowing to infinity
    ("-" + _HUGE, "SerializationException"),
    ("1e400", "SerializationException"),
    ("18446744073709551616", "SerializationException"),  # past 64 bits: orjson gives a float
    ("1.0", "SerializationException"),
    ("2147483648", "InvalidParameterValueException"),
    ("-2147483649", "InvalidParameterValueException"),
    ("9223372036854775807", "InvalidParameterValueException"),
])
def test_json_integers_outside_the_model_are_refused(number: str, shape: str) -> None:
    for action, body in (
        ("SendMessage", f'{{"QueueUrl": "{URL}", "MessageBody": "x", "DelaySeconds": {number}}}'),
        ("ReceiveMessage", f'{{"QueueUrl": "{URL}", "MaxNumberOfMessages": {number}}}'),
        ("SendMessageBatch", f'{{"QueueUrl": "{URL}", "Entries": [{{"Id": "a", '
                             f'"MessageBody": "x", "DelaySeconds": {number}}}]}}'),
        ("StartMessageMoveTask", f'{{"SourceArn": "{ARN}", '
                                 f'"MaxNumberOfMessagesPerSecond": {number}}}'),
    ):
        err = _decode_error(_json_body(action, body.encode()))
        assert (err.shape, err.status) == (shape, 400), (action, number)
        assert len(err.message) < 300


def test_json_integers_at_the_model_bounds_decode() -> None:
    for number in (2**31 - 1, -(2**31), 0):
        body = orjson.dumps({"QueueUrl": URL, "VisibilityTimeout": number})
        assert decode(_json_body("ReceiveMessage", body))[2]["VisibilityTimeout"] == number


# ---- Query indices: small positive ASCII decimals ------------------------------------


@pytest.mark.parametrize("index", ["\u00b2", "\u0661", "\uff11", "0", "01", "-1", "+1", " 1",
                                   "1 ", "x", "", str(DECODED_ITEMS_MAX + 1), "9" * 5000,
                                   "1" + "0" * 4400])
def test_query_indices_must_be_small_ascii_decimals(index: str) -> None:
    for key in (f"TagKey.{index}", f"MessageAttribute.{index}.Name",
                f"Attribute.{index}.Name", f"MessageAttributeName.{index}",
                f"SendMessageBatchRequestEntry.{index}.Id"):
        action = {"T": "UntagQueue", "M": "SendMessage", "A": "SetQueueAttributes",
                  "S": "SendMessageBatch"}[key[0]]
        if key.startswith("MessageAttributeName"):
            action = "ReceiveMessage"
        form = f"Action={action}&QueueUrl={URL}&MessageBody=b&{quote(key)}=v"
        err = _decode_error(Request("POST", "/", "", {}, form.encode(), ""))
        assert (err.shape, err.status) == ("MalformedQueryString", 400), key[:40]
        assert len(err.message) < 300


def test_query_index_bounds_decode() -> None:
    form = f"Action=UntagQueue&QueueUrl={URL}&TagKey.{DECODED_ITEMS_MAX}=last&TagKey.1=first"
    got = decode(Request("POST", "/", "", {}, form.encode(), ""))[2]
    assert got["TagKeys"] == ["first", "last"]


# ---- how much a request may carry ------------------------------------------------------


def test_json_lists_and_maps_are_bounded_before_their_items_are_read() -> None:
    ok = orjson.dumps({"QueueUrl": URL, "MessageAttributeNames": ["a"] * DECODED_ITEMS_MAX})
    assert len(decode(_json_body("ReceiveMessage", ok))[2]["MessageAttributeNames"]) == 1000
    # One item too many is refused by count, before the (wrong) items are looked at.
    for body in (
        {"QueueUrl": URL, "MessageAttributeNames": [5] * (DECODED_ITEMS_MAX + 1)},
        {"QueueUrl": URL, "MessageAttributeNames": ["a"] * 400_000},
        {"QueueUrl": URL, "Tags": {f"k{i}": 5 for i in range(DECODED_ITEMS_MAX + 1)}},
    ):
        action = "TagQueue" if "Tags" in body else "ReceiveMessage"
        err = _decode_error(_json_body(action, orjson.dumps(body)))
        assert (err.shape, err.status) == ("InvalidParameterValueException", 400)
        assert f"at most {DECODED_ITEMS_MAX} list and map items" in err.message
    # Nested containers share one budget: 10 entries x 100 attributes is 1010 items.
    entries = [{"Id": f"e{i}", "MessageBody": "b", "MessageAttributes": {
        f"a{j}": {"DataType": "String", "StringValue": "v"} for j in range(100)}}
        for i in range(10)]
    err = _decode_error(_json_body("SendMessageBatch",
                                   orjson.dumps({"QueueUrl": URL, "Entries": entries})))
    assert err.shape == "InvalidParameterValueException"
    entries[0]["MessageAttributes"] = {}
    got = decode(_json_body("SendMessageBatch",
                            orjson.dumps({"QueueUrl": URL, "Entries": entries})))[2]
    assert len(got["Entries"]) == 10


def test_query_lists_and_maps_are_bounded_before_their_items_are_read() -> None:
    names = "&".join(f"MessageAttributeName.{i}=a" for i in range(1, DECODED_ITEMS_MAX + 1))
    form = f"Action=ReceiveMessage&QueueUrl={URL}&{names}"
    got = decode(Request("POST", "/", "", {}, form.encode(), ""))[2]
    assert len(got["MessageAttributeNames"]) == DECODED_ITEMS_MAX
    tags = "&".join(f"Tag.{i}.Key=k{i}&Tag.{i}.Value=v" for i in range(1, 600))
    form = f"Action=TagQueue&QueueUrl={URL}&{tags}&Tag.600.Key=k&Tag.600.Value.x=bad"
    err = _decode_error(Request("POST", "/", "", {}, form.encode(), ""))
    assert err.shape == "MalformedQueryString"  # 600 tags pass the bound; the bad one fails
    entries = "&".join(f"SendMessageBatchRequestEntry.{i}.Id=e{i}"
                       f"&SendMessageBatchRequestEntry.{i}.MessageAttribute.1.Name=a"
                       f"&SendMessageBatchRequestEntry.{i}.MessageAttribute.1.Value.DataType=x"
                       for i in range(1, 502))
    err = _decode_error(Request("POST", "/", "", {},
                                f"Action=SendMessageBatch&QueueUrl={URL}&{entries}".encode(), ""))
    assert (err.shape, err.status) == ("InvalidParameterValueException", 400)
    assert f"at most {DECODED_ITEMS_MAX} list and map items" in err.message


# ---- nesting ------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1000, 1023, 1024, 1025, 100_000])
def test_deep_json_nesting_is_a_400(depth: int) -> None:
    # orjson parses up to 1024 levels and refuses deeper documents (JSONDecodeError);
    # within that, a nested value where the model wants a string or an attribute
    # structure is a type error. Both are 400 SerializationException, never a 500.
    for nested in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        for body in (b'{"QueueUrl": "u", "MessageBody": ' + nested + b"}",
                     b'{"QueueUrl": "u", "MessageBody": "x", "MessageAttributes": {"a": '
                     b'{"DataType": ' + nested + b"}}}"):
            err = _decode_error(_json_body("SendMessage", body))
            assert (err.status, err.shape) == (400, "SerializationException"), (depth, body[:60])
        # In a member the model does not know (or as the whole document, whose "a" is
        # such a member), only the parser's own limit applies.
        for body, extra in ((b'{"QueueUrl": "u", "Unknown": ' + nested + b"}", 1),
                            (nested, 0)):
            if depth + extra > 1024 or body.startswith(b"["):
                assert _decode_error(_json_body("SendMessage", body)).shape == \
                    "SerializationException"
            else:
                assert decode(_json_body("SendMessage", body))[2] in ({"QueueUrl": "u"}, {})


# ---- Query answered in JSON (Accept: application/json) -----------------------------------


@pytest.mark.parametrize(("accept", "protocol"), [
    (None, "query"), ("application/json", "query-json"), ("Application/JSON", "query-json"),
    ("text/xml", "query"), ("*/*", "query"), ("application/json;q=0", "query"),
    ("application/json;q=0.5, text/xml", "query"), ("text/xml;q=0.1, application/json",
                                                    "query-json"),
    ("application/json, text/xml", "query-json"), ("text/xml, application/json", "query"),
    ("application/json;q=bogus", "query"), ("text/html,application/xhtml+xml,*/*;q=0.8",
                                            "query"),
])
def test_query_protocol_follows_the_accept_header(accept: str | None, protocol: str) -> None:
    headers = {} if accept is None else {"accept": accept}
    req = Request("GET", "/", "Action=ListQueues&Version=2012-11-05", headers, b"", "")
    assert protocol_of(req) == protocol
    assert decode(req)[0] == protocol
    # A JSON 1.0 request stays JSON 1.0 whatever it accepts.
    jreq = Request("POST", "/", "", {"content-type": "application/x-amz-json-1.0",
                                     "x-amz-target": "AmazonSQS.ListQueues", **headers}, b"{}", "")
    assert decode(jreq)[0] == "json"


def test_query_results_in_json_follow_the_query_response() -> None:
    r = encode_result("query-json", "GetQueueAttributes",
                      {"Attributes": {"QueueArn": ARN, "VisibilityTimeout": "30"}}, "r-1")
    assert r.status == 200 and dict(r.headers)["Content-Type"] == "application/json"
    # The shape AWS returns (LocalStack's AWS-validated TestSqsQueryApi): the Query
    # response and result elements, attributes as a list of Name/Value pairs.
    assert orjson.loads(r.body) == {"GetQueueAttributesResponse": {
        "GetQueueAttributesResult": {"Attributes": [
            {"Name": "QueueArn", "Value": ARN}, {"Name": "VisibilityTimeout", "Value": "30"}]},
        "ResponseMetadata": {"RequestId": "r-1"}}}
    r = encode_result("query-json", "DeleteQueue", {}, "r-2")
    assert orjson.loads(r.body) == {"DeleteQueueResponse": {
        "ResponseMetadata": {"RequestId": "r-2"}}}
    r = encode_result("query-json", "ReceiveMessage", copy.deepcopy(OUTPUTS["ReceiveMessage"]),
                      "r-3")
    message = orjson.loads(r.body)["ReceiveMessageResponse"]["ReceiveMessageResult"][
        "Messages"][0]
    assert message["Body"] == _MESSAGE["Body"]
    assert {"Name": "bin", "Value": {"DataType": "Binary",
                                     "BinaryValue": "AAH/YmluYXJ5"}} in message["MessageAttributes"]
    assert {"Name": "SenderId", "Value": "AKIDEXAMPLE"} in message["Attributes"]


def test_query_errors_in_json() -> None:
    err = SqsError("InvalidAction", "The action ListQueues is not valid for this endpoint.")
    r = encode_error("query-json", err, "r-4")
    assert r.status == 400 and dict(r.headers)["Content-Type"] == "application/json"
    doc = orjson.loads(r.body)
    assert doc == {"Error": {"Type": "Sender", "Code": "InvalidAction",
                             "Message": "The action ListQueues is not valid for this endpoint."},
                   "RequestId": "r-4"}
    qdne = SqsError("QueueDoesNotExist", "The specified queue does not exist.")
    doc = orjson.loads(encode_error("query-json", qdne, "r").body)
    assert doc["Error"]["Code"] == "AWS.SimpleQueueService.NonExistentQueue"
    assert doc["Error"]["Message"] == "The specified queue does not exist for this wsdl version."
    # Without an Action SQS answers the bare XML 404 even to a JSON Accept.
    missing = _decode_error(Request("GET", "/", "", {"accept": "application/json"}, b"", ""))
    r = encode_error("query-json", missing, "r")
    assert (r.status, r.body) == (404, b"<UnknownOperationException/>")
    r = http_fault({"accept": "application/json"}, 413, "too big", "r")
    assert orjson.loads(r.body)["Error"]["Code"] == "RequestEntityTooLarge"


# ---- XML that always parses ---------------------------------------------------------------


def test_xml_answers_replace_characters_xml_cannot_carry() -> None:
    bad = "a\x00b\x01c\x1f\ufffe\uffffd\x7f"
    r = encode_error("query", invalid_parameter(f"Value {bad} is invalid."), "r")
    text = ET.fromstring(r.body).findtext(f"{{{XMLNS}}}Error/{{{XMLNS}}}Message")
    assert text == "Value a\ufffdb\ufffdc\ufffd\ufffd\ufffdd\x7f is invalid."
    r = encode_result("query", "ListQueueTags", {"Tags": {"k\x02": "v\x03\r\n"}}, "r")
    tag = ET.fromstring(r.body).find(f".//{{{XMLNS}}}Tag")
    assert tag is not None
    assert (tag.findtext(f"{{{XMLNS}}}Key"), tag.findtext(f"{{{XMLNS}}}Value")) == (
        "k\ufffd", "v\ufffd\r\n")
    assert xml_text("plain & <b>") == "plain &amp; &lt;b&gt;"


# ---- the query string as the HTTP layer hands it over --------------------------------------


def test_raw_utf8_in_the_query_string_is_utf8() -> None:
    raw = "Action=GetQueueUrl&QueueName=caf\u00e9".encode().decode("latin-1")
    assert decode(Request("GET", "/", raw, {}, b"", ""))[2] == {"QueueName": "caf\u00e9"}
    bad = b"Action=GetQueueUrl&QueueName=\xff".decode("latin-1")
    assert _decode_error(Request("GET", "/", bad, {}, b"", "")).shape == "MalformedQueryString"


# ---- the gateway pipeline: routing and request headers -------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def call(self, action: str, params: dict[str, Any], ctx: Any) -> dict[str, Any]:
        self.calls.append((action, params))
        return {}


def _handle(request: Request) -> tuple[Response, list[tuple[str, dict[str, Any]]]]:
    service = _Recorder()
    gateway = Gateway(service, public_url=None)
    response = asyncio.run(gateway.handle(request))
    return response, service.calls


QUEUE_PATH = "/000000000000/orders"


@pytest.mark.parametrize("action", ["CreateQueue", "ListQueues"])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_query_create_and_list_queues_are_invalid_on_a_queue_url(action: str,
                                                                 method: str) -> None:
    form = f"Action={action}&QueueName=other&Version=2012-11-05"
    for accept in (None, "application/json"):
        headers = {"host": "h:1"} if accept is None else {"host": "h:1", "accept": accept}
        if method == "GET":
            request = Request("GET", QUEUE_PATH, form, headers, b"", "")
        else:
            request = Request("POST", QUEUE_PATH, "", {**headers, "content-type": FORM},
                              form.encode(), "")
        response, calls = _handle(request)
        assert (response.status, calls) == (400, [])
        message = f"The action {action} is not valid for this endpoint."
        if accept is None:
            assert f"<Code>InvalidAction</Code><Message>{message}</Message>".encode() \
                in response.body
        else:
            assert orjson.loads(response.body)["Error"] == {
                "Type": "Sender", "Code": "InvalidAction", "Message": message}
        # The same request to the endpoint itself is served.
        root = Request(request.method, "/", request.query, request.headers, request.body, "")
        assert _handle(root)[1][0][0] == action


def test_other_actions_on_a_queue_url_are_served() -> None:
    for form in ("Action=GetQueueUrl&QueueName=other", "Action=SendMessage&MessageBody=x",
                 "Action=GetQueueAttributes&AttributeName.1=All"):
        response, calls = _handle(Request("GET", QUEUE_PATH, form, {"host": "h:1"}, b"", ""))
        assert response.status == 200 and len(calls) == 1, form
    # JSON to a queue path is served as if sent to "/" (the PHP SDK does this).
    response, calls = _handle(Request(
        "POST", QUEUE_PATH, "", {"host": "h:1", "content-type": "application/x-amz-json-1.0",
                                 "x-amz-target": "AmazonSQS.CreateQueue"},
        b'{"QueueName": "other"}', ""))
    assert response.status == 200 and calls == [("CreateQueue", {"QueueName": "other"})]


TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


def _traced(action: str, params: dict[str, Any], trace: str | None) -> dict[str, Any]:
    headers = {"host": "h:1", "content-type": "application/x-amz-json-1.0",
               "x-amz-target": f"AmazonSQS.{action}"}
    if trace is not None:
        headers["x-amzn-trace-id"] = trace
    response, calls = _handle(Request("POST", "/", "", headers, orjson.dumps(params), ""))
    assert response.status == 200, response.body
    return calls[0][1]


def test_the_trace_header_becomes_each_messages_aws_trace_header() -> None:
    header = {"AWSTraceHeader": {"DataType": "String", "StringValue": TRACE}}
    got = _traced("SendMessage", {"QueueUrl": URL, "MessageBody": "x"}, TRACE)
    assert got["MessageSystemAttributes"] == header
    got = _traced("SendMessageBatch", {"QueueUrl": URL, "Entries": [
        {"Id": "a", "MessageBody": "x"}, {"Id": "b", "MessageBody": "y"}]}, TRACE)
    assert [e["MessageSystemAttributes"] for e in got["Entries"]] == [header, header]
    # Other actions do not get it; without the header nothing is added.
    assert "MessageSystemAttributes" not in _traced("ReceiveMessage", {"QueueUrl": URL}, TRACE)
    assert "MessageSystemAttributes" not in _traced(
        "SendMessage", {"QueueUrl": URL, "MessageBody": "x"}, None)


def test_an_explicit_aws_trace_header_overrides_the_trace_header() -> None:
    # AWS X-Ray developer guide: "If both headers are set, the message system attribute
    # overrides the HTTP trace header."
    own = {"AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-own"}}
    got = _traced("SendMessage", {"QueueUrl": URL, "MessageBody": "x",
                                  "MessageSystemAttributes": own}, TRACE)
    assert got["MessageSystemAttributes"] == own
    got = _traced("SendMessageBatch", {"QueueUrl": URL, "Entries": [
        {"Id": "a", "MessageBody": "x", "MessageSystemAttributes": own},
        {"Id": "b", "MessageBody": "y"}]}, TRACE)
    assert got["Entries"][0]["MessageSystemAttributes"] == own
    assert got["Entries"][1]["MessageSystemAttributes"]["AWSTraceHeader"]["StringValue"] == TRACE


@pytest.mark.parametrize("trace", ["", "   ", "Root=\x01", "Root=caf\u00e9"])
def test_a_trace_header_that_cannot_be_an_xray_header_is_ignored(trace: str) -> None:
    got = _traced("SendMessage", {"QueueUrl": URL, "MessageBody": "x"}, trace)
    assert "MessageSystemAttributes" not in got
