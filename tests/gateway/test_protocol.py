"""Codec tests: requests built by botocore's own serializers decode to the canonical
params, and our encoded results and errors parse back in botocore's own parsers, for
every action and both protocols (current JSON model; Query model of botocore 1.34.89)."""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import urlencode

import botocore.parsers
import botocore.serialize
import orjson
import pytest
from botocore.model import ServiceModel

from ferrymq._core._errors import ERRORS, SqsError, invalid_parameter, missing_parameter
from ferrymq._gateway._http import Request, Response
from ferrymq._gateway._protocol import (
    decode,
    encode_error,
    encode_result,
    http_fault,
    xml_escape,
)
from ferrymq._gateway._wire_model import OPERATIONS

URL = "http://127.0.0.1:9324/000000000000/orders"
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


def test_json_decode_tolerates_nulls_unknown_members_and_empty_body(
        json_model: ServiceModel) -> None:
    ok = _json_request(json_model, "ListQueues", {})
    req = Request("POST", "/", "", ok.headers,
                  b'{"QueueNamePrefix": null, "FutureField": {"x": 1}, "MaxResults": 3}', "")
    assert decode(req) == ("json", "ListQueues", {"MaxResults": 3})
    assert decode(Request("POST", "/", "", ok.headers, b"", "")) == ("json", "ListQueues", {})


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
