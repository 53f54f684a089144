"""End-to-end: wire-level behaviour of both protocols against a real server.

Numbers outside the model's 32-bit ``integer``, Query indices that are not small ASCII
decimals, the bound on list and map items, deep JSON nesting, a Query request asking
for JSON (``Accept: application/json``), actions SQS refuses on a queue URL, and the
``X-Amzn-Trace-Id`` header becoming each message's ``AWSTraceHeader``. With boto3 under
both protocols where an SDK can say it, raw HTTP where only a hostile client would.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

import botocore.exceptions
import pytest

from ferrymq._gateway._protocol import DECODED_ITEMS_MAX

from ._harness import ServerProcess, error_of, http_request, make_client, receive_until

ACCOUNT = "000000000000"
JSON_TYPE = "application/x-amz-json-1.0"
FORM_TYPE = "application/x-www-form-urlencoded; charset=utf-8"
TRACE = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
HUGE = "9" * 5000  # past Python's 4300-digit int() limit


@pytest.fixture
def plain_queue(server: ServerProcess, queue_name: str) -> str:
    """A queue for the raw-HTTP tests, which speak one protocol each by themselves."""
    status, _, body = json_post(server, "CreateQueue",
                                json.dumps({"QueueName": queue_name}).encode())
    assert status == 200, body
    url: str = json.loads(body)["QueueUrl"]
    return url




def json_post(server: ServerProcess, action: str, body: bytes,
              path: str = "/") -> tuple[int, dict[str, str], bytes]:
    return http_request(server, "POST", path, body, {"Content-Type": JSON_TYPE,
                                            "X-Amz-Target": f"AmazonSQS.{action}"})


def query_post(server: ServerProcess, form: str, path: str = "/",
               accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": FORM_TYPE}
    if accept is not None:
        headers["Accept"] = accept
    return http_request(server, "POST", path, form.encode(), headers)


def assert_alive(server: ServerProcess) -> None:
    status, _, body = json_post(server, "ListQueues", b"{}")
    assert status == 200, body


def client_error(call: Any, **kwargs: Any) -> tuple[str, str, int]:
    with pytest.raises(botocore.exceptions.ClientError) as info:
        call(**kwargs)
    return error_of(info.value)


# ---- numbers ----------------------------------------------------------------------------


def test_integers_outside_the_model_are_invalid_parameters(sqs: Any, queue_url: str) -> None:
    for call, kwargs in (
        (sqs.receive_message, {"QueueUrl": queue_url, "MaxNumberOfMessages": 2**31}),
        (sqs.send_message, {"QueueUrl": queue_url, "MessageBody": "x",
                            "DelaySeconds": -(2**31) - 1}),
        (sqs.change_message_visibility, {"QueueUrl": queue_url, "ReceiptHandle": "h",
                                         "VisibilityTimeout": 2**40}),
    ):
        code, message, status = client_error(call, **kwargs)
        assert (code, status) == ("InvalidParameterValue", 400), message
        assert message.endswith("Reason: Must be an integer."), message
    # At the bound the value reaches the queue and gets its own range error.
    code, message, _ = client_error(sqs.receive_message, QueueUrl=queue_url,
                                    MaxNumberOfMessages=2**31 - 1)
    assert message == (f"Value {2**31 - 1} for parameter MaxNumberOfMessages is invalid. "
                       "Reason: Must be between 1 and 10, if provided.")


# Every integer member of the model, as the Query key and the JSON document placing it.
_INTEGER_MEMBERS = [
    ("SendMessage", "DelaySeconds", None),
    ("ReceiveMessage", "MaxNumberOfMessages", None),
    ("ReceiveMessage", "VisibilityTimeout", None),
    ("ReceiveMessage", "WaitTimeSeconds", None),
    ("ChangeMessageVisibility", "VisibilityTimeout", None),
    ("ListQueues", "MaxResults", None),
    ("ListDeadLetterSourceQueues", "MaxResults", None),
    ("ListMessageMoveTasks", "MaxResults", None),
    ("StartMessageMoveTask", "MaxNumberOfMessagesPerSecond", None),
    ("SendMessageBatch", "DelaySeconds", "SendMessageBatchRequestEntry"),
    ("ChangeMessageVisibilityBatch", "VisibilityTimeout",
     "ChangeMessageVisibilityBatchRequestEntry"),
]


@pytest.mark.parametrize("protocol", ["json", "query"])
@pytest.mark.parametrize("number", [HUGE, "-" + HUGE])
def test_huge_integers_are_a_400_in_every_integer_member(
        server: ServerProcess, protocol: str, plain_queue: str, number: str) -> None:
    queue_url = plain_queue
    arn = f"arn:aws:sqs:us-east-1:{ACCOUNT}:{queue_url.rsplit('/', 1)[1]}"
    for action, member, entry in _INTEGER_MEMBERS:
        if protocol == "json":
            value = f'"{member}": {number}'
            if entry is not None:
                value = f'"Entries": [{{"Id": "a", "MessageBody": "b", "ReceiptHandle": "h", ' \
                        f'{value}}}]'
            body = f'{{"QueueUrl": "{queue_url}", "SourceArn": "{arn}", {value}}}'
            status, headers, payload = json_post(server, action, body.encode())
            assert status == 400, (action, member, payload[:300])
            assert json.loads(payload)["__type"].rsplit("#", 1)[1] in (
                "SerializationException", "InvalidParameterValueException"), payload[:300]
        else:
            key = member if entry is None else f"{entry}.1.{member}"
            fields = {"Action": action, "QueueUrl": queue_url, "SourceArn": arn, key: number}
            if entry is not None:
                fields.update({f"{entry}.1.Id": "a", f"{entry}.1.MessageBody": "b",
                               f"{entry}.1.ReceiptHandle": "h"})
            status, _, payload = query_post(server, urllib.parse.urlencode(fields))
            assert status == 400, (action, member, payload[:300])
            assert b"<Code>InvalidParameterValue</Code>" in payload, payload[:300]
            assert b"Reason: Must be an integer." in payload
    assert_alive(server)


# ---- Query indices -------------------------------------------------------------------------


@pytest.mark.parametrize("index", ["\u00b2", "\u0661", "0", "01", HUGE,
                                   str(DECODED_ITEMS_MAX + 1)])
def test_query_indices_must_be_small_ascii_decimals(server: ServerProcess, index: str,
                                                    plain_queue: str) -> None:
    queue_url = plain_queue
    for key in (f"TagKey.{index}", f"MessageAttribute.{index}.Name",
                f"Attribute.{index}.Name"):
        action = {"T": "UntagQueue", "M": "SendMessage", "A": "SetQueueAttributes"}[key[0]]
        form = urllib.parse.urlencode({"Action": action, "QueueUrl": queue_url,
                                       "MessageBody": "b", key: "v"})
        status, _, payload = query_post(server, form)
        assert status == 400, (key[:30], payload[:300])
        assert b"<Code>MalformedQueryString</Code>" in payload, payload[:300]
    assert_alive(server)


# ---- list and map items, nesting ----------------------------------------------------------


def test_list_and_map_items_are_bounded(sqs: Any, queue_url: str) -> None:
    sqs.send_message(QueueUrl=queue_url, MessageBody="x",
                     MessageAttributes={"a": {"DataType": "String", "StringValue": "v"}})
    names = [f"n{i}" for i in range(DECODED_ITEMS_MAX - 1)] + ["a"]
    got = receive_until(sqs, queue_url, 1, MessageAttributeNames=names)
    assert got[0]["MessageAttributes"] == {"a": {"DataType": "String", "StringValue": "v"}}
    code, message, status = client_error(sqs.receive_message, QueueUrl=queue_url,
                                         MessageAttributeNames=names + ["b"])
    assert (code, status) == ("InvalidParameterValue", 400)
    assert f"at most {DECODED_ITEMS_MAX} list and map items" in message
    code, _, status = client_error(sqs.tag_queue, QueueUrl=queue_url, Tags={
        f"k{i}": "v" for i in range(DECODED_ITEMS_MAX + 1)})
    assert (code, status) == ("InvalidParameterValue", 400)


def test_400k_names_are_refused_by_count(server: ServerProcess, plain_queue: str) -> None:
    queue_url = plain_queue
    body = json.dumps({"QueueUrl": queue_url, "MessageAttributeNames": ["a"] * 400_000})
    status, _, payload = json_post(server, "ReceiveMessage", body.encode())
    assert status == 400 and b"list and map items" in payload, payload[:300]
    assert_alive(server)


@pytest.mark.parametrize("depth", [1000, 1024, 1025, 50_000])
def test_deep_json_nesting_is_a_400(server: ServerProcess, plain_queue: str,
                                    depth: int) -> None:
    queue_url = plain_queue
    nested = "[" * depth + "]" * depth
    for body in (f'{{"QueueUrl": "{queue_url}", "MessageBody": {nested}}}',
                 f'{{"QueueUrl": "{queue_url}", "MessageBody": "x", "MessageAttributes": '
                 f'{{"a": {{"DataType": {nested}}}}}}}', nested):
        status, headers, payload = json_post(server, "SendMessage", body.encode())
        assert status == 400, payload[:300]
        assert json.loads(payload)["__type"].endswith("#SerializationException")
        assert headers["x-amzn-query-error"] == "SerializationException;Sender"
    assert_alive(server)


# ---- Query answered in JSON ---------------------------------------------------------------


def _queue_path(queue_url: str) -> str:
    return urllib.parse.urlsplit(queue_url).path


def test_query_get_with_accept_json_is_answered_in_json(server: ServerProcess,
                                                        plain_queue: str) -> None:
    queue_url = plain_queue
    # The shape of LocalStack's AWS-validated TestSqsQueryApi JSON-format tests.
    path = _queue_path(queue_url)
    query = urllib.parse.urlencode({"Action": "GetQueueAttributes", "AttributeName.1": "All"})
    status, headers, payload = http_request(server, "GET", f"{path}?{query}",
                                   headers={"Accept": "application/json"})
    assert status == 200, payload
    assert headers["content-type"] == "application/json"
    doc = json.loads(payload)
    result = doc["GetQueueAttributesResponse"]["GetQueueAttributesResult"]
    arns = [a["Value"] for a in result["Attributes"] if a["Name"] == "QueueArn"]
    assert arns == [f"arn:aws:sqs:us-east-1:{ACCOUNT}:{path.rsplit('/', 1)[1]}"]
    assert doc["GetQueueAttributesResponse"]["ResponseMetadata"]["RequestId"] == \
        headers["x-amzn-requestid"]

    status, headers, payload = http_request(server, "GET", f"{path}?Action=ListQueues",
                                   headers={"Accept": "application/json"})
    assert status == 400 and headers["content-type"] == "application/json"
    error = json.loads(payload)["Error"]
    assert (error["Code"], error["Message"]) == (
        "InvalidAction", "The action ListQueues is not valid for this endpoint.")

    # Without an Action, the bare XML 404 whatever the Accept header says.
    status, _, payload = http_request(server, "GET", path, headers={"Accept": "application/json"})
    assert (status, payload) == (404, b"<UnknownOperationException/>")


def test_query_post_with_accept_json_is_answered_in_json(server: ServerProcess,
                                                         plain_queue: str) -> None:
    queue_url = plain_queue
    form = urllib.parse.urlencode({"Action": "SendMessage", "QueueUrl": queue_url,
                                   "MessageBody": "hello"})
    status, headers, payload = query_post(server, form, accept="application/json")
    assert status == 200 and headers["content-type"] == "application/json"
    result = json.loads(payload)["SendMessageResponse"]["SendMessageResult"]
    assert result["MD5OfMessageBody"] == "5d41402abc4b2a76b9719d911017c592"
    form = urllib.parse.urlencode({"Action": "SendMessage", "QueueUrl": queue_url + "-nope",
                                   "MessageBody": "x"})
    status, _, payload = query_post(server, form, accept="application/json")
    assert status == 400
    assert json.loads(payload)["Error"] == {
        "Type": "Sender", "Code": "AWS.SimpleQueueService.NonExistentQueue",
        "Message": "The specified queue does not exist for this wsdl version."}
    # XML stays the answer to everyone else.
    status, headers, _ = query_post(server, form.replace("-nope", ""), accept="*/*")
    assert status == 200 and headers["content-type"] == "text/xml"


# ---- actions on a queue URL ---------------------------------------------------------------


@pytest.fixture
def queue_url_client(protocol: str, queue_url: str) -> Iterator[Any]:
    """A client whose endpoint is the queue URL itself, as the PHP SDK and old SDKs
    address a queue."""
    client = make_client(queue_url, protocol)
    yield client
    client.close()


def test_create_and_list_queues_on_a_queue_url(queue_url_client: Any, protocol: str,
                                               queue_name: str, sqs: Any) -> None:
    client = queue_url_client
    if protocol == "query":
        for call, kwargs in ((client.create_queue, {"QueueName": queue_name + "-other"}),
                             (client.list_queues, {})):
            code, message, status = client_error(call, **kwargs)
            action = "CreateQueue" if call == client.create_queue else "ListQueues"
            assert (code, message, status) == (
                "InvalidAction", f"The action {action} is not valid for this endpoint.", 400)
        code, _, _ = client_error(sqs.get_queue_url, QueueName=queue_name + "-other")
        assert code == "AWS.SimpleQueueService.NonExistentQueue"
    else:
        # JSON to a queue path is served as if sent to the endpoint.
        other = client.create_queue(QueueName=queue_name + "-other")["QueueUrl"]
        assert other in client.list_queues(QueueNamePrefix=queue_name)["QueueUrls"]
    # Every other action is served on a queue URL, GetQueueUrl of another queue too.
    assert client.get_queue_url(QueueName=queue_name)["QueueUrl"].endswith(f"/{queue_name}")
    client.send_message(QueueUrl=sqs.get_queue_url(QueueName=queue_name)["QueueUrl"],
                        MessageBody="served")


# ---- X-Amzn-Trace-Id ----------------------------------------------------------------------


@pytest.fixture
def traced(sqs_server: ServerProcess, protocol: str) -> Iterator[Any]:
    """A client that sends ``X-Amzn-Trace-Id: TRACE`` with every request."""
    client = make_client(sqs_server.url, protocol)

    def add_header(request: Any, **_kwargs: Any) -> None:
        request.headers["X-Amzn-Trace-Id"] = TRACE

    client.meta.events.register("before-sign.sqs.*", add_header)
    yield client
    client.close()


def _trace_of(sqs: Any, protocol: str, queue_url: str, count: int) -> list[str | None]:
    # The last Query model predates MessageSystemAttributeNames; AttributeNames is the
    # older spelling of the same filter.
    names = {"MessageSystemAttributeNames" if protocol == "json" else "AttributeNames":
             ["AWSTraceHeader"]}
    got = receive_until(sqs, queue_url, count, **names)
    return [m.get("Attributes", {}).get("AWSTraceHeader") for m in sorted(
        got, key=lambda m: m["Body"])]


def test_the_trace_header_becomes_aws_trace_header(traced: Any, sqs: Any, protocol: str,
                                                   queue_url: str) -> None:
    sent = traced.send_message(QueueUrl=queue_url, MessageBody="1 single")
    assert sent["MD5OfMessageSystemAttributes"]
    batch = traced.send_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": "a", "MessageBody": "2 batch a"}, {"Id": "b", "MessageBody": "3 batch b"}])
    assert len(batch["Successful"]) == 2 and not batch.get("Failed")
    sqs.send_message(QueueUrl=queue_url, MessageBody="4 untraced")
    assert _trace_of(sqs, protocol, queue_url, 4) == [TRACE, TRACE, TRACE, None]


def test_an_explicit_aws_trace_header_wins_over_the_header(traced: Any, sqs: Any,
                                                           protocol: str,
                                                           queue_url: str) -> None:
    own = {"AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-own-trace"}}
    traced.send_message(QueueUrl=queue_url, MessageBody="1 own", MessageSystemAttributes=own)
    traced.send_message_batch(QueueUrl=queue_url, Entries=[
        {"Id": "a", "MessageBody": "2 own", "MessageSystemAttributes": own},
        {"Id": "b", "MessageBody": "3 header"}])
    assert _trace_of(sqs, protocol, queue_url, 3) == [
        "Root=1-own-trace", "Root=1-own-trace", TRACE]
