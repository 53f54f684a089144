"""The gateway over real sockets: the HTTP server on 127.0.0.1 (port 0) in-process,
in front of a tiny stub service, driven by raw HTTP and by boto3 in both protocols."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import boto3
import botocore.config
import botocore.session
import orjson
import pytest
import uvloop

from ferrymq._api import CallContext
from ferrymq._core._errors import SqsError, missing_parameter
from ferrymq._gateway import close_server, start_gateway
from ferrymq._gateway._http import HEAD_BYTES_MAX, REQUEST_BODY_BYTES_MAX

_STEP_TIMEOUT_S = 5.0
JSON_HEADERS = "Content-Type: application/x-amz-json-1.0\r\n"


class StubService:
    """Answers from the params so tests can see what the gateway decoded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any], CallContext]] = []

    async def call(self, action: str, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        self.calls.append((action, params, ctx))
        if action == "ListQueues":
            prefix = params.get("QueueNamePrefix", "")
            return {"QueueUrls": [f"{ctx.base_url}/{ctx.account_id}/{prefix}q"]}
        if action == "GetQueueUrl":
            if params["QueueName"] == "missing":
                raise SqsError("QueueDoesNotExist", "The specified queue does not exist.")
            return {"QueueUrl": f"{ctx.base_url}/{ctx.account_id}/{params['QueueName']}"}
        if action == "ReceiveMessage":
            # WaitTimeSeconds is taken as milliseconds here, to order pipelined answers.
            await asyncio.sleep(params.get("WaitTimeSeconds", 0) / 1000)
            return {"Messages": [{"MessageId": "m", "Body": params["QueueUrl"]}]}
        if action == "SendMessage":
            for name in ("QueueUrl", "MessageBody"):
                if name not in params:
                    raise missing_parameter(name)
            return {"MessageId": "id", "MD5OfMessageBody": "x",
                    "SequenceNumber": str(len(params["MessageBody"]))}
        if action == "PurgeQueue":
            raise RuntimeError("stub bug")
        return {}


Scenario = Callable[[int, StubService], Awaitable[None]]


@pytest.fixture(autouse=True, params=["asyncio", "uvloop"])
def loop_kind(request: pytest.FixtureRequest) -> str:
    """Every test runs on both event loops: uvloop's transports differ in details."""
    global _LOOP_KIND
    _LOOP_KIND = str(request.param)
    return _LOOP_KIND


_LOOP_KIND = "asyncio"


def run(scenario: Scenario) -> StubService:
    service = StubService()

    async def main() -> None:
        server = await start_gateway(service, "127.0.0.1", 0)
        try:
            port = server.sockets[0].getsockname()[1]
            await asyncio.wait_for(scenario(port, service), 30)
        finally:
            await close_server(server)

    if _LOOP_KIND == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())
    return service


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _STEP_TIMEOUT_S)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    body = await asyncio.wait_for(reader.readexactly(length), _STEP_TIMEOUT_S)
    return status, headers, body


async def assert_closed(reader: asyncio.StreamReader) -> None:
    assert await asyncio.wait_for(reader.read(), _STEP_TIMEOUT_S) == b""


def json_request(action: str, params: dict[str, Any], *, path: str = "/",
                 extra: str = "") -> bytes:
    body = orjson.dumps(params)
    return (f"POST {path} HTTP/1.1\r\nHost: sqs.test:1234\r\n{JSON_HEADERS}"
            f"X-Amz-Target: AmazonSQS.{action}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
            ).encode() + body


def form_request(form: dict[str, str], *, path: str = "/", extra: str = "") -> bytes:
    body = urlencode(form).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: sqs.test:1234\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def test_keep_alive_and_connection_close() -> None:
    async def scenario(port: int, service: StubService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for prefix in ("a", "b", "c"):
            writer.write(json_request("ListQueues", {"QueueNamePrefix": prefix}))
            status, headers, body = await read_response(reader)
            assert status == 200
            assert "connection" not in headers
            assert headers["content-type"] == "application/x-amz-json-1.0"
            assert headers["x-amzn-requestid"]
            assert orjson.loads(body) == {
                "QueueUrls": [f"http://sqs.test:1234/000000000000/{prefix}q"]}
        writer.write(json_request("ListQueues", {}, extra="Connection: close\r\n"))
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "close")
        await assert_closed(reader)
        writer.close()

        # HTTP/1.0: closes unless asked to keep alive.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /?Action=ListQueues HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "keep-alive")
        writer.write(b"GET /?Action=ListQueues HTTP/1.0\r\n\r\n")
        status, headers, _ = await read_response(reader)
        assert (status, headers["connection"]) == (200, "close")
        await assert_closed(reader)
        writer.close()

    service = run(scenario)
    assert len(service.calls) == 6


def test_pipelined_requests_are_answered_in_order() -> None:
    async def scenario(port: int, service: StubService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # Earlier requests are slower: answers must still come back in request order.
        waits = [40, 20, 0, 10, 0]
        writer.write(b"".join(
            json_request("ReceiveMessage", {"QueueUrl": f"q{i}", "WaitTimeSeconds": w})
            for i, w in enumerate(waits)))
        for i in range(len(waits)):
            status, _, body = await read_response(reader)
            assert status == 200
            assert orjson.loads(body)["Messages"][0]["Body"] == f"q{i}"
        writer.close()

    run(scenario)


def test_chunked_request_body_split_across_writes() -> None:
    async def scenario(port: int, service: StubService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = orjson.dumps({"QueueUrl": "u", "MessageBody": "x" * 1000})
        head = (f"POST / HTTP/1.1\r\nHost: h\r\n{JSON_HEADERS}"
                "X-Amz-Target: AmazonSQS.SendMessage\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(head.encode())
        for start in range(0, len(body), 300):
            chunk = body[start:start + 300]
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            await writer.drain()
            await asyncio.sleep(0.001)
        writer.write(b"0\r\n\r\n")
        status, _, answer = await read_response(reader)
        assert status == 200
        assert orjson.loads(answer)["SequenceNumber"] == "1000"
        writer.close()

    run(scenario)


def test_expect_100_continue() -> None:
    async def scenario(port: int, service: StubService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = urlencode({"Action": "SendMessage", "QueueUrl": "u", "MessageBody": "abc"})
        writer.write((f"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n").encode())
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _STEP_TIMEOUT_S)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(body.encode())
        status, headers, answer = await read_response(reader)
        assert status == 200 and headers["content-type"] == "text/xml"
        assert b"<SequenceNumber>3</SequenceNumber>" in answer
        writer.close()

    run(scenario)


def test_oversized_bodies_get_413_and_close() -> None:
    async def scenario(port: int, service: StubService) -> None:
        # Declared too large: refused before any body byte is read.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write((f"POST / HTTP/1.1\r\nHost: h\r\n{JSON_HEADERS}"
                      "X-Amz-Target: AmazonSQS.SendMessage\r\n"
                      f"Content-Length: {REQUEST_BODY_BYTES_MAX + 1}\r\n\r\n").encode())
        status, headers, body = await read_response(reader)
        assert status == 413
        assert headers["connection"] == "close"
        assert orjson.loads(body)["__type"] == "com.amazonaws.sqs#RequestEntityTooLarge"
        await assert_closed(reader)
        writer.close()

        # Chunked, growing past the bound.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"a" * (1024 * 1024)
        try:
            for _ in range(REQUEST_BODY_BYTES_MAX // len(chunk) + 2):
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
        except ConnectionError:
            pass  # the server may close before we finish writing
        status, _, body = await read_response(reader)
        assert status == 413
        assert b"<Code>RequestEntityTooLarge</Code>" in body
        writer.close()

        # Just under the bound is still a request (decoded, then refused by the codec).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(form_request({"Action": "SendMessage", "QueueUrl": "u",
                                   "MessageBody": "z" * (REQUEST_BODY_BYTES_MAX - 100)}))
        status, _, body = await read_response(reader)
        assert status == 200
        writer.close()

    service = run(scenario)
    assert [c[0] for c in service.calls] == ["SendMessage"]


def test_malformed_http_gets_400_and_server_keeps_serving() -> None:
    garbage = [
        b"\x00\x01\x02 nonsense\r\n\r\n",
        b"POST / HTTP/9.9\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nBad Header Line\r\n\r\n",
    ]

    async def scenario(port: int, service: StubService) -> None:
        for data in garbage:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            status, headers, body = await read_response(reader)
            assert status == 400, data
            assert headers["connection"] == "close"
            assert b"MalformedHttpRequest" in body
            await assert_closed(reader)
            writer.close()
            # A fresh connection is served normally.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(json_request("ListQueues", {}))
            assert (await read_response(reader))[0] == 200
            writer.close()

        # A valid request pipelined before garbage is still answered first.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(json_request("ListQueues", {}) + b"\x00garbage\r\n\r\n")
        assert (await read_response(reader))[0] == 200
        assert (await read_response(reader))[0] == 400
        await assert_closed(reader)
        writer.close()

        # Huge header block: 431.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (HEAD_BYTES_MAX + 10) + b"\r\n\r\n")
        assert (await read_response(reader))[0] == 431
        await assert_closed(reader)
        writer.close()

    run(scenario)


def test_garbage_bodies_get_4xx_never_5xx() -> None:
    rng = random.Random(20240611)
    bodies = [b"", b"{", b"[]", b"null", b"\xff\xfe\x00", b"<xml><a></b>", b"a=b&&&=%%%",
              b'{"QueueUrl": {"nested": [1, 2, {"x": null}]}}', b"Action=%FF",
              b"Action=SendMessage&MessageAttribute.1.Name=a"]
    bodies += [rng.randbytes(rng.randrange(1, 200)) for _ in range(40)]
    content_types = ["application/x-amz-json-1.0", "application/x-www-form-urlencoded",
                     "text/xml", ""]
    targets = ["AmazonSQS.SendMessage", "AmazonSQS.Bogus", ""]

    async def scenario(port: int, service: StubService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        for body in bodies:
            for ctype in content_types:
                target = targets[n % len(targets)]
                n += 1
                head = "POST / HTTP/1.1\r\nHost: h\r\n"
                if ctype:
                    head += f"Content-Type: {ctype}\r\n"
                if target:
                    head += f"X-Amz-Target: {target}\r\n"
                writer.write(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
                status, headers, answer = await read_response(reader)
                assert 400 <= status < 500 or status == 200, (body, ctype, status)
                if status != 200:
                    if ctype.startswith("application/x-amz-json"):
                        assert orjson.loads(answer)["__type"].startswith("com.amazonaws.sqs#")
                        assert headers["x-amzn-query-error"].endswith(";Sender")
                    else:
                        assert answer.startswith((b"<ErrorResponse", b"<UnknownOperation"))
        writer.close()

    run(scenario)


def test_get_query_requests_and_errors() -> None:
    async def scenario(port: int, service: StubService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /?Action=GetQueueUrl&QueueName=orders&Version=2012-11-05 HTTP/1.1\r\n"
                     b"Host: localhost:9\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 200 and headers["content-type"] == "text/xml"
        assert b"<GetQueueUrlResult><QueueUrl>http://localhost:9/000000000000/orders" in body
        writer.write(b"GET /?Action=GetQueueUrl&QueueName=missing HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 400
        assert b"<Code>AWS.SimpleQueueService.NonExistentQueue</Code>" in body
        assert b"does not exist for this wsdl version." in body
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, body = await read_response(reader)
        assert (status, body) == (404, b"<UnknownOperationException/>")
        writer.write(b"GET /?Action=Nope HTTP/1.1\r\nHost: h\r\n\r\n")
        status, _, body = await read_response(reader)
        assert status == 400 and b"<Code>InvalidAction</Code>" in body
        writer.close()

    run(scenario)


def test_queue_path_requests() -> None:
    async def scenario(port: int, service: StubService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        path = "/000000000000/jobs"
        writer.write(form_request({"Action": "SendMessage", "MessageBody": "b"}, path=path))
        writer.write(form_request({"Action": "SendMessage", "MessageBody": "b",
                                   "QueueUrl": "http://other/1/explicit"}, path=path))
        writer.write(json_request("SendMessage", {"MessageBody": "b"}, path=path))
        writer.write(json_request("ListQueues", {}, path=path))
        for _ in range(4):
            assert (await read_response(reader))[0] == 200
        writer.close()

    service = run(scenario)
    (a1, p1, c1), (_a2, p2, c2), (_a3, p3, _c3), (a4, p4, c4) = service.calls
    assert a1 == "SendMessage" and p1["QueueUrl"] == "http://sqs.test:1234/000000000000/jobs"
    assert c1.path_queue == "/000000000000/jobs" and c1.base_url == "http://sqs.test:1234"
    assert p2["QueueUrl"] == "http://other/1/explicit"
    assert p3["QueueUrl"] == "http://sqs.test:1234/000000000000/jobs"
    # Actions without a QueueUrl member get none, even on a queue path.
    assert a4 == "ListQueues" and "QueueUrl" not in p4 and c4.path_queue == "/000000000000/jobs"


def test_handler_bug_is_a_500_in_the_request_protocol_and_connection_survives() -> None:
    async def scenario(port: int, service: StubService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(json_request("PurgeQueue", {"QueueUrl": "u"}))
        status, headers, body = await read_response(reader)
        assert status == 500
        assert orjson.loads(body)["__type"] == "com.amazonaws.sqs#InternalFailure"
        assert headers["x-amzn-query-error"] == "InternalFailure;Receiver"
        writer.write(form_request({"Action": "PurgeQueue", "QueueUrl": "u"}))
        status, _, body = await read_response(reader)
        assert status == 500 and b"<Type>Receiver</Type>" in body
        writer.write(json_request("ListQueues", {}))
        assert (await read_response(reader))[0] == 200
        writer.close()

    run(scenario)


def test_caller_identity_from_signature_headers_and_query() -> None:
    async def scenario(port: int, service: StubService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        auth = ("Authorization: AWS4-HMAC-SHA256 Credential=AKIDHEADER/20240101/us-east-1/sqs/"
                "aws4_request, SignedHeaders=host, Signature=abc\r\n")
        writer.write(json_request("ListQueues", {}, extra=auth))
        writer.write(b"GET /?Action=ListQueues&X-Amz-Credential=AKIDQUERY%2F20240101%2Fus-east-1"
                     b"%2Fsqs%2Faws4_request HTTP/1.1\r\nHost: h\r\n\r\n")
        writer.write(form_request({"Action": "ListQueues", "AWSAccessKeyId": "AKIDV2"}))
        writer.write(json_request("ListQueues", {}))
        for _ in range(4):
            assert (await read_response(reader))[0] == 200
        writer.close()

    service = run(scenario)
    assert [c[2].access_key_id for c in service.calls] == [
        "AKIDHEADER", "AKIDQUERY", "AKIDV2", None]


def _query_data_path() -> Path:
    return Path(__file__).resolve().parents[2] / ".venv" / "query-data"


@pytest.mark.parametrize("protocol", ["json", "query"])
def test_boto3_against_the_gateway(protocol: str) -> None:
    session = botocore.session.get_session()
    if protocol == "query":
        path = _query_data_path()
        if not path.exists():
            pytest.skip("botocore 1.34.89 model not available")
        session.get_component("data_loader").search_paths.insert(0, str(path))

    async def scenario(port: int, service: StubService) -> None:
        def sync_part() -> None:
            client = boto3.Session(botocore_session=session).client(
                "sqs", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                aws_access_key_id="AKIDBOTO", aws_secret_access_key="secret",
                config=botocore.config.Config(retries={"max_attempts": 1}))
            assert client.meta.service_model.protocol == protocol
            urls = client.list_queues(QueueNamePrefix="x")["QueueUrls"]
            assert urls == [f"http://127.0.0.1:{port}/000000000000/xq"]
            sent = client.send_message(QueueUrl=urls[0], MessageBody="hello\r\nworld")
            assert sent["SequenceNumber"] == "12"
            with pytest.raises(client.exceptions.QueueDoesNotExist) as info:
                client.get_queue_url(QueueName="missing")
            assert info.value.response["Error"]["Code"] == (
                "AWS.SimpleQueueService.NonExistentQueue")

        await asyncio.to_thread(sync_part)

    service = run(scenario)
    assert [c[0] for c in service.calls] == ["ListQueues", "SendMessage", "GetQueueUrl"]
    assert service.calls[1][1]["MessageBody"] == "hello\r\nworld"
    assert {c[2].access_key_id for c in service.calls} == {"AKIDBOTO"}
