"""End-to-end: hostile and broken input over raw HTTP. Always a 4xx in the request's
protocol's error shape, never a 5xx, and the server keeps answering afterwards."""

from __future__ import annotations

import http.client
import json
import random
import socket
import urllib.parse
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from ferrymq._gateway._http import REQUEST_BODY_BYTES_MAX

from ._harness import ServerProcess

ACCOUNT = "000000000000"
JSON_TYPE = "application/x-amz-json-1.0"
FORM_TYPE = "application/x-www-form-urlencoded; charset=utf-8"


def post(server: ServerProcess, body: bytes, headers: dict[str, str],
         path: str = "/") -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def assert_alive(server: ServerProcess) -> None:
    status, _, body = post(server, b"{}", {"Content-Type": JSON_TYPE,
                                           "X-Amz-Target": "AmazonSQS.ListQueues"})
    assert status == 200, body


def assert_json_error(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    assert 400 <= status < 500, (status, body)
    assert headers.get("content-type", "").startswith("application/x-amz-json"), headers
    doc = json.loads(body)
    assert isinstance(doc, dict) and doc.get("__type"), doc
    if doc["__type"] == "com.amazon.coral.service#UnknownOperationException":
        # AWS's answer to an unknown operation: the bare type, no header, no message.
        assert doc == {"__type": doc["__type"]} and "x-amzn-query-error" not in headers, doc
    else:
        assert "x-amzn-query-error" in headers
    return doc


def assert_xml_error(status: int, body: bytes) -> str:
    assert 400 <= status < 500, (status, body)
    text = body.decode()
    assert "<ErrorResponse" in text and "<Code>" in text and "<Message>" in text, text
    ET.fromstring(body)  # well-formed, whatever the request echoed
    return text


def json_headers(action: str) -> dict[str, str]:
    return {"Content-Type": JSON_TYPE, "X-Amz-Target": f"AmazonSQS.{action}"}


@pytest.mark.parametrize(
    ("action", "body"),
    [
        ("SendMessage", b"{not json"),
        ("SendMessage", b"[1, 2, 3]"),
        ("SendMessage", b"null"),
        ("SendMessage", b'"a string"'),
        ("SendMessage", b""),
        ("CreateQueue", b'{"QueueName": ["a", "list"]}'),
        ("CreateQueue", b'{"QueueName": 12}'),
        ("CreateQueue", b"{}"),
        ("CreateQueue", b'{"QueueName": "q", "Attributes": "not a map"}'),
        ("ListQueues", b'{"MaxResults": "ten"}'),
        ("ListQueues", b'{"MaxResults": 1e400}'),
        ("Nope", b"{}"),
        ("SendMessage", bytes(random.Random(7).randrange(256) for _ in range(4096))),
        ("SendMessage", b'{"QueueUrl": "x", "MessageBody": "\xff\xfe"}'),
    ],
    ids=["broken", "array", "null", "string", "empty", "list-name", "int-name",
         "missing-name", "attrs-not-map", "string-int", "huge-number", "unknown-action",
         "binary", "bad-utf8"],
)
def test_bad_json_requests(server: ServerProcess, action: str, body: bytes) -> None:
    status, headers, payload = post(server, body, json_headers(action))
    assert_json_error(status, headers, payload)
    assert_alive(server)


def test_json_wrong_types_on_queue(server: ServerProcess, queue_url: str) -> None:
    cases = [
        ("ReceiveMessage", {"QueueUrl": queue_url, "MaxNumberOfMessages": "ten"}),
        ("ReceiveMessage", {"QueueUrl": queue_url, "WaitTimeSeconds": [1]}),
        ("SendMessage", {"QueueUrl": queue_url, "MessageBody": {"nested": True}}),
        ("SendMessage", {"QueueUrl": queue_url}),
        ("SendMessage", {"QueueUrl": queue_url, "MessageBody": "x",
                         "MessageAttributes": {"a": {"StringValue": "no type"}}}),
        ("SendMessage", {"QueueUrl": queue_url, "MessageBody": "x",
                         "MessageAttributes": {"a": {"DataType": "Binary",
                                                     "BinaryValue": "!!not base64!!"}}}),
        ("SendMessageBatch", {"QueueUrl": queue_url, "Entries": "nope"}),
        ("DeleteMessage", {"QueueUrl": queue_url}),
        ("SetQueueAttributes", {"QueueUrl": queue_url, "Attributes": {"DelaySeconds": 5}}),
        ("GetQueueUrl", {"QueueName": None}),
    ]
    for action, params in cases:
        status, headers, payload = post(server, json.dumps(params).encode(),
                                        json_headers(action))
        doc = assert_json_error(status, headers, payload)
        assert "message" in doc or "Message" in doc, (action, doc)
    missing = post(server, json.dumps({"QueueUrl": queue_url}).encode(),
                   json_headers("SendMessage"))
    doc = assert_json_error(*missing)
    assert doc["__type"].endswith("MissingRequiredParameterException")
    assert missing[1]["x-amzn-query-error"] == "MissingParameter;Sender"
    assert_alive(server)


def test_json_without_target_header(server: ServerProcess) -> None:
    status, headers, payload = post(server, b"{}", {"Content-Type": JSON_TYPE})
    assert_json_error(status, headers, payload)
    assert_alive(server)


@pytest.mark.parametrize(
    "body",
    [
        b"Action=Nope&Version=2012-11-05",
        b"Version=2012-11-05",
        b"Action=SendMessage&%%%&=&&==",
        b"Action=CreateQueue&Version=2012-11-05",
        b"Action=ListQueues&Version=2012-11-05&MaxResults=ten",
        b"Action=CreateQueue&QueueName=bad%20name&Version=2012-11-05",
        b"Action=CreateQueue&QueueName=q&Attribute.1.Value=orphan&Version=2012-11-05",
        bytes(random.Random(11).randrange(256) for _ in range(4096)),
        b"Action=ListQueues&Version=2012-11-05&MaxResults=" + b"9" * 5000,
        b"Action=ListQueues&Version=2012-11-05&MaxResults=-" + b"9" * 5000,
        b"Action=UntagQueue&QueueUrl=q&TagKey." + b"9" * 5000 + b"=k",
        b"Action=UntagQueue&QueueUrl=q&TagKey.%C2%B2=k",
        b"Action=UntagQueue&QueueUrl=q&TagKey.%D9%A1=k",
        b"Action=%00%01Nope",
    ],
    ids=["unknown-action", "no-action", "broken-form", "missing-name", "string-int",
         "bad-name", "orphan-attribute", "binary", "huge-int", "huge-negative-int",
         "huge-index", "superscript-index", "arabic-index", "control-chars-echoed"],
)
def test_bad_query_requests(server: ServerProcess, body: bytes) -> None:
    status, _, payload = post(server, body, {"Content-Type": FORM_TYPE})
    if body == b"Version=2012-11-05":
        # Without an action SQS answers a bare <UnknownOperationException/>.
        assert 400 <= status < 500 and b"UnknownOperationException" in payload, payload
    else:
        assert_xml_error(status, payload)
    assert_alive(server)


def test_query_wrong_types_on_queue(server: ServerProcess, queue_url: str) -> None:
    for params in (
        {"Action": "ReceiveMessage", "QueueUrl": queue_url, "MaxNumberOfMessages": "ten"},
        {"Action": "SendMessage", "QueueUrl": queue_url},
        {"Action": "SendMessage", "QueueUrl": queue_url, "MessageBody": "x",
         "MessageAttribute.1.Name": "a", "MessageAttribute.1.Value.DataType": "Binary",
         "MessageAttribute.1.Value.BinaryValue": "!!not base64!!"},
        {"Action": "SendMessage", "QueueUrl": queue_url, "MessageBody": "x",
         "DelaySeconds": "soon"},
    ):
        body = urllib.parse.urlencode({"Version": "2012-11-05", **params}).encode()
        status, _, payload = post(server, body, {"Content-Type": FORM_TYPE})
        assert_xml_error(status, payload)
    status, _, payload = post(
        server, b"Action=SendMessage&MessageBody=%FF%FE&QueueUrl=" +
        urllib.parse.quote(queue_url, safe="").encode(), {"Content-Type": FORM_TYPE})
    assert_xml_error(status, payload)
    assert_alive(server)


@pytest.mark.parametrize("content_type", [JSON_TYPE, FORM_TYPE])
def test_huge_body(server: ServerProcess, content_type: str) -> None:
    # Past the gateway's request bound (which leaves room for a 1 MiB batch expanded by
    # JSON escaping or URL encoding), the server must refuse rather than buffer.
    oversize = REQUEST_BODY_BYTES_MAX + 1024 * 1024
    body = b"{" + b" " * oversize + b"}"
    if content_type == FORM_TYPE:
        body = b"Action=ListQueues&Filler=" + b"a" * oversize
    headers = {"Content-Type": content_type, "X-Amz-Target": "AmazonSQS.ListQueues"}
    try:
        status, _, payload = post(server, body, headers)
    except (BrokenPipeError, ConnectionResetError):
        # Refusing to read a body this large and closing the connection is acceptable.
        status, payload = 413, b""
    assert 400 <= status < 500, (status, payload[:200])
    assert_alive(server)


def test_truncated_request(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/x-amz-json-1.0\r\n"
            b"X-Amz-Target: AmazonSQS.ListQueues\r\nContent-Length: 500\r\n\r\n{\"Queue")
    assert_alive(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
    assert_alive(server)


def test_not_http_at_all(server: ServerProcess) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(bytes(random.Random(3).randrange(256) for _ in range(2048)) + b"\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        try:
            while chunk := sock.recv(65536):
                reply += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    if reply:
        status_line = reply.split(b"\r\n", 1)[0]
        assert status_line.startswith(b"HTTP/1.1 4"), status_line
    assert_alive(server)


def test_many_requests_on_one_keepalive_connection_after_errors(server: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=15)
    try:
        for i in range(20):
            body = b"{broken" if i % 2 else b"{}"
            conn.request("POST", "/", body=body, headers=json_headers("ListQueues"))
            response = conn.getresponse()
            response.read()
            assert response.status == (400 if i % 2 else 200)
    finally:
        conn.close()
