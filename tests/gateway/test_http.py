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
from ferrymq._gateway import Gateway, _http, close_server, serve_http, start_gateway
from ferrymq._gateway._http import (
    HEAD_BYTES_MAX,
    REQUEST_BODY_BYTES_MAX,
    Handler,
    HttpLimits,
    Request,
    Response,
)
from ferrymq._gateway._protocol import http_fault

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


def test_trailers_of_a_chunked_body_are_not_taken_as_headers() -> None:
    async def scenario(port: int, service: StubService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = orjson.dumps({"QueueUrl": "u", "MessageBody": "abc"})
        writer.write((f"POST / HTTP/1.1\r\nHost: h\r\n{JSON_HEADERS}"
                      "X-Amz-Target: AmazonSQS.SendMessage\r\nTransfer-Encoding: chunked\r\n\r\n"
                      ).encode() + b"%x\r\n%s\r\n0\r\n" % (len(body), body)
                     + b"X-Amz-Target: AmazonSQS.PurgeQueue\r\nX-Amz-Trailer: 1\r\n\r\n")
        status, _, answer = await read_response(reader)
        assert status == 200 and orjson.loads(answer)["SequenceNumber"] == "3"
        writer.close()

    service = run(scenario)
    ((action, _, _),) = service.calls
    assert action == "SendMessage"


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
                        namespace, _, shape = orjson.loads(answer)["__type"].partition("#")
                        assert namespace in ("com.amazonaws.sqs", "com.amazon.coral.service")
                        # An unknown operation is answered bare, as AWS does.
                        if shape != "UnknownOperationException":
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
        assert orjson.loads(body)["__type"] == "com.amazon.coral.service#InternalFailure"
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


# ---- protocol upgrades --------------------------------------------------------------

_UPGRADES = {
    "h2c": ("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
    "websocket": ("Connection: Upgrade\r\nUpgrade: websocket\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"),
}


async def read_until_closed(
        reader: asyncio.StreamReader) -> list[tuple[int, dict[str, str], bytes]]:
    """Every response up to the server's FIN: the count shows that nothing was added."""
    responses = []
    while not reader.at_eof():
        try:
            responses.append(await read_response(reader))
        except asyncio.IncompleteReadError as exc:
            assert exc.partial == b"", exc.partial  # FIN between answers, nothing torn
            break
    return responses


@pytest.mark.parametrize("upgrade", list(_UPGRADES))
def test_upgrade_requests_get_one_plain_answer_and_the_connection_goes_on(upgrade: str) -> None:
    extra = _UPGRADES[upgrade]

    async def scenario(port: int, service: StubService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        chunked = urlencode({"Action": "SendMessage", "QueueUrl": "u",
                             "MessageBody": "c" * 7}).encode()
        writer.write(
            f"GET /?Action=GetQueueUrl&QueueName=g HTTP/1.1\r\nHost: h\r\n{extra}\r\n".encode()
            + json_request("SendMessage", {"QueueUrl": "u", "MessageBody": "12345"}, extra=extra)
            + (f"POST / HTTP/1.1\r\nHost: h\r\n{extra}"
               "Content-Type: application/x-www-form-urlencoded\r\n"
               "Transfer-Encoding: chunked\r\n\r\n").encode()
            + b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunked), chunked)
            + json_request("ListQueues", {}))
        statuses = []
        for _ in range(4):
            status, headers, body = await read_response(reader)
            statuses.append(status)
            assert "connection" not in headers
        assert statuses == [200, 200, 200, 200]
        # Head and body of an upgrade request in separate segments.
        request = json_request("SendMessage", {"QueueUrl": "u", "MessageBody": "abc"},
                               extra=extra)
        split = request.index(b"\r\n\r\n") + 4
        writer.write(request[:split])
        await writer.drain()
        await asyncio.sleep(0.01)
        writer.write(request[split:] + json_request("ListQueues", {},
                                                    extra="Connection: close\r\n"))
        responses = await read_until_closed(reader)
        assert [r[0] for r in responses] == [200, 200]
        assert orjson.loads(responses[0][2])["SequenceNumber"] == "3"
        assert responses[1][1]["connection"] == "close"
        writer.close()

    service = run(scenario)
    assert [c[0] for c in service.calls] == [
        "GetQueueUrl", "SendMessage", "SendMessage", "ListQueues", "SendMessage", "ListQueues"]
    assert [c[1].get("MessageBody") for c in service.calls if c[0] == "SendMessage"] == [
        "12345", "c" * 7, "abc"]


def test_connect_is_answered_once_then_the_connection_closes() -> None:
    async def scenario(port: int, service: StubService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # A 2xx here must not read as an open tunnel: the answer says close, and
        # what follows is not parsed.
        writer.write(b"CONNECT /?Action=ListQueues HTTP/1.1\r\nHost: h\r\n\r\n"
                     + json_request("ListQueues", {}))
        responses = await read_until_closed(reader)
        assert [(r[0], r[1]["connection"]) for r in responses] == [(200, "close")]
        writer.close()

    service = run(scenario)
    assert [c[0] for c in service.calls] == ["ListQueues"]


# ---- deadlines, connection cap, write stalls ------------------------------------------

# Sweeps every 20 ms so the small deadlines below hold to within 20 ms.
_FAST_SWEEP_S = 0.02
LimitedScenario = Callable[[int, asyncio.Server, StubService], Awaitable[None]]


def run_limited(scenario: LimitedScenario, limits: HttpLimits,
                handler: Handler | None = None) -> StubService:
    """Like ``run``, with ``limits`` (and ``handler`` instead of the gateway if given);
    the scenario may close the server itself."""
    service = StubService()

    async def main() -> None:
        handle = handler or Gateway(service, public_url=None).handle
        server = await serve_http(handle, "127.0.0.1", 0, fault=http_fault, limits=limits)
        try:
            port = server.sockets[0].getsockname()[1]
            await asyncio.wait_for(scenario(port, server, service), 30)
        finally:
            await close_server(server, drain_timeout_s=1.0)

    if _LOOP_KIND == "uvloop":
        uvloop.run(main())
    else:
        asyncio.run(main())
    return service


async def dribble(writer: asyncio.StreamWriter, data: bytes, interval_s: float) -> None:
    """Send ``data`` a byte at a time until done or the server closes."""
    try:
        for i in range(len(data)):
            writer.write(data[i:i + 1])
            await writer.drain()
            await asyncio.sleep(interval_s)
    except ConnectionError:
        pass


def test_a_request_head_must_arrive_within_its_deadline() -> None:
    limits = HttpLimits(head_timeout_s=0.3, sweep_interval_s=_FAST_SWEEP_S)

    async def scenario(port: int, server: asyncio.Server, service: StubService) -> None:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        begun = loop.time()
        writer.write(f"POST / HTTP/1.1\r\n{JSON_HEADERS}".encode())
        # A byte every 20 ms keeps the socket busy but does not extend the deadline.
        feeder = asyncio.create_task(dribble(writer, b"X-Slow: " + b"a" * 1000, 0.02))
        other_reader, other_writer = await asyncio.open_connection("127.0.0.1", port)
        other_writer.write(json_request("ListQueues", {}))
        assert (await read_response(other_reader))[0] == 200
        status, headers, body = await read_response(reader)
        elapsed_s = loop.time() - begun
        assert (status, headers["connection"]) == (408, "close")
        assert orjson.loads(body)["__type"].startswith("com.amazonaws.sqs#")
        assert 0.3 - _FAST_SWEEP_S <= elapsed_s < 1.5
        await assert_closed(reader)
        feeder.cancel()
        writer.close()
        # The other connection is not affected.
        other_writer.write(json_request("ListQueues", {}))
        assert (await read_response(other_reader))[0] == 200
        other_writer.close()

    run_limited(scenario, limits)


def test_a_request_body_must_keep_up_a_minimum_rate() -> None:
    limits = HttpLimits(body_timeout_s=0.3, body_rate_min_bytes_per_s=1000,
                        sweep_interval_s=_FAST_SWEEP_S)

    async def scenario(port: int, server: asyncio.Server, service: StubService) -> None:
        loop = asyncio.get_running_loop()
        body = urlencode({"Action": "SendMessage", "QueueUrl": "u",
                          "MessageBody": "z" * 1400}).encode()
        head = (f"POST / HTTP/1.1\r\nHost: h\r\nContent-Type: application/x-www-form-urlencoded"
                f"\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        # 3000 bytes/s: about 0.5 s in all, longer than body_timeout_s, and accepted.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        begun = loop.time()
        for start in range(0, len(body), 60):
            writer.write(body[start:start + 60])
            await writer.drain()
            await asyncio.sleep(0.02)
        status, _, answer = await read_response(reader)
        assert status == 200 and b"<SequenceNumber>1400</SequenceNumber>" in answer
        assert loop.time() - begun > 0.3
        writer.close()
        # 200 bytes/s, below the minimum: 408 once the grace and the credit run out.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        begun = loop.time()
        feeder = asyncio.create_task(dribble(writer, body, 0.005))
        status, headers, answer = await read_response(reader)
        elapsed_s = loop.time() - begun
        assert (status, headers["connection"]) == (408, "close")
        assert b"<ErrorResponse" in answer
        # Deadline: 0.3 s + bytes / 1000 with 200 bytes/s arriving, i.e. about 0.375 s.
        assert 0.3 <= elapsed_s < 1.5
        await assert_closed(reader)
        feeder.cancel()
        writer.close()

    service = run_limited(scenario, limits)
    assert [c[0] for c in service.calls] == ["SendMessage"]


def test_idle_connections_close_and_requests_in_flight_are_not_cut() -> None:
    limits = HttpLimits(idle_timeout_s=0.3, head_timeout_s=0.3, body_timeout_s=0.3,
                        sweep_interval_s=_FAST_SWEEP_S)

    async def scenario(port: int, server: asyncio.Server, service: StubService) -> None:
        loop = asyncio.get_running_loop()
        silent_reader, silent_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        idle_writer.write(json_request("ListQueues", {}))
        assert (await read_response(idle_reader))[0] == 200
        idle_from = loop.time()
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        # Parked for 0.8 s, longer than every deadline: the answer still comes.
        busy_writer.write(json_request("ReceiveMessage", {"QueueUrl": "q", "WaitTimeSeconds": 800}))
        # A closed idle connection ends with FIN (an empty read), not a reset.
        await assert_closed(idle_reader)
        await assert_closed(silent_reader)
        assert 0.3 - _FAST_SWEEP_S <= loop.time() - idle_from < 0.8
        status, headers, _ = await read_response(busy_reader)
        assert status == 200 and "connection" not in headers
        busy_writer.write(json_request("ListQueues", {}))
        assert (await read_response(busy_reader))[0] == 200
        for writer in (silent_writer, idle_writer, busy_writer):
            writer.close()

    run_limited(scenario, limits)


async def _established(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A keep-alive connection that has had one answer (so the server has admitted it)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(json_request("ListQueues", {}))
    assert (await read_response(reader))[0] == 200
    return reader, writer


async def _closed_soon(reader: asyncio.StreamReader, timeout_s: float) -> bool:
    try:
        return await asyncio.wait_for(reader.read(), timeout_s) == b""
    except TimeoutError:
        return False


def test_at_the_connection_cap_an_idle_connection_makes_room() -> None:
    limits = HttpLimits(connections_max=3, sweep_interval_s=_FAST_SWEEP_S)

    async def scenario(port: int, server: asyncio.Server, service: StubService) -> None:
        idle = [await _established(port) for _ in range(3)]
        fresh_reader, fresh_writer = await asyncio.open_connection("127.0.0.1", port)
        fresh_writer.write(json_request("ListQueues", {}))
        assert (await read_response(fresh_reader))[0] == 200
        closed = [await _closed_soon(reader, 0.3) for reader, _ in idle]
        assert closed.count(True) == 1, closed
        # The fresh one is now idle too, and the next newcomer evicts an idle one again.
        newest = await _established(port)
        for _, writer in [*idle, (fresh_reader, fresh_writer), newest]:
            writer.close()

    run_limited(scenario, limits)


def test_at_the_connection_cap_requests_in_flight_are_kept_and_newcomers_get_503() -> None:
    limits = HttpLimits(connections_max=3, sweep_interval_s=_FAST_SWEEP_S)

    async def scenario(port: int, server: asyncio.Server, service: StubService) -> None:
        busy = []
        for i in range(3):
            reader, writer = await _established(port)
            writer.write(json_request("ReceiveMessage", {"QueueUrl": f"q{i}",
                                                         "WaitTimeSeconds": 600}))
            busy.append((reader, writer))
        await asyncio.sleep(0.05)  # let the server parse the three receives
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(json_request("ListQueues", {}))
        status, headers, body = await read_response(reader)
        assert (status, headers["connection"]) == (503, "close")
        # Refused on arrival, before the request was read: its protocol is unknown.
        assert b"<ErrorResponse" in body
        await assert_closed(reader)
        writer.close()
        for i, (reader, writer) in enumerate(busy):
            status, _, body = await read_response(reader)
            assert status == 200 and orjson.loads(body)["Messages"][0]["Body"] == f"q{i}"
            writer.close()

    service = run_limited(scenario, limits)
    assert [c[0] for c in service.calls].count("ReceiveMessage") == 3


def test_at_the_connection_cap_a_dribbling_head_is_evicted() -> None:
    # Heads count as stuck after min(1 s, head_timeout_s / 2) = 0.8 s.
    limits = HttpLimits(connections_max=3, head_timeout_s=1.6, sweep_interval_s=_FAST_SWEEP_S)

    async def scenario(port: int, server: asyncio.Server, service: StubService) -> None:
        slow = []
        for _ in range(3):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"POST / HTTP/1.1\r\nHost: h\r\n")
            slow.append((reader, writer))
        await asyncio.sleep(0.9)
        reader, writer = await _established(port)

        async def answer_soon(slow_reader: asyncio.StreamReader) -> int | None:
            try:
                return (await asyncio.wait_for(read_response(slow_reader), 0.2))[0]
            except TimeoutError:
                return None

        # One is evicted; the others are left alone until their head deadline (1.6 s).
        answers = await asyncio.gather(*(answer_soon(r) for r, _ in slow))
        assert sorted(answers, key=str) == [503, None, None]
        writer.close()
        for _, slow_writer in slow:
            slow_writer.close()

    run_limited(scenario, limits)


def test_a_client_that_does_not_read_its_answers_is_dropped() -> None:
    limits = HttpLimits(write_stall_timeout_s=0.3, sweep_interval_s=_FAST_SWEEP_S)
    big = Response(200, [("Content-Type", "application/octet-stream")], b"x" * (1024 * 1024))

    async def handler(request: Request) -> Response:
        return big

    async def scenario(port: int, server: asyncio.Server, service: StubService) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # 16 MiB of answers: more than the transport's buffer and the kernel's together.
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n" * 16)
        await asyncio.sleep(0.8)  # not reading, for longer than the stall bound
        received = 0
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            for _ in range(16):
                _, _, body = await read_response(reader)
                received += len(body)
        assert received < 16 * len(big.body)
        writer.close()

    run_limited(scenario, limits, handler)


def test_limits_are_validated_and_fitted_to_the_descriptor_limit(
        monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="connections_max"):
        HttpLimits(connections_max=0)
    with pytest.raises(ValueError, match="head_timeout_s"):
        HttpLimits(head_timeout_s=0)
    resource = pytest.importorskip("resource")
    monkeypatch.setattr(resource, "getrlimit", lambda _kind: (256, 4096))
    assert _http._fit_to_fd_limit(4096) == 256 - _http._FDS_RESERVED
    assert _http._fit_to_fd_limit(100) == 100


# ---- graceful drain ---------------------------------------------------------------------


def test_close_server_answers_requests_in_flight_then_closes() -> None:
    async def scenario(port: int, server: asyncio.Server, service: StubService) -> None:
        loop = asyncio.get_running_loop()
        idle_reader, idle_writer = await _established(port)
        busy_reader, busy_writer = await _established(port)
        # A parked request with another pipelined behind it: both were sent, both are
        # answered, the last one saying close.
        busy_writer.write(
            json_request("ReceiveMessage", {"QueueUrl": "q", "WaitTimeSeconds": 300})
            + json_request("ListQueues", {}))
        partial_reader, partial_writer = await asyncio.open_connection("127.0.0.1", port)
        partial_writer.write(f"POST / HTTP/1.1\r\n{JSON_HEADERS}".encode())
        await asyncio.sleep(0.05)  # let the server see all of it
        begun = loop.time()
        closing = asyncio.create_task(close_server(server))
        await assert_closed(idle_reader)
        assert loop.time() - begun < 0.25  # at once, not after the parked request
        idle_writer.close()
        status, headers, _ = await read_response(partial_reader)
        assert (status, headers["connection"]) == (503, "close")
        partial_writer.close()
        responses = await read_until_closed(busy_reader)
        assert [r[0] for r in responses] == [200, 200]
        assert "connection" not in responses[0][1]
        assert responses[1][1]["connection"] == "close"
        busy_writer.close()  # as a client does after "Connection: close"
        # Done once the clients have closed: no waiting out the drain timeout.
        await asyncio.wait_for(closing, 1.0)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)

    run_limited(scenario, HttpLimits())


def test_close_server_drops_what_outlives_the_drain_timeout() -> None:
    async def scenario(port: int, server: asyncio.Server, service: StubService) -> None:
        loop = asyncio.get_running_loop()
        reader, writer = await _established(port)
        writer.write(json_request("ReceiveMessage", {"QueueUrl": "q", "WaitTimeSeconds": 5000}))
        await asyncio.sleep(0.05)
        begun = loop.time()
        await asyncio.wait_for(close_server(server, drain_timeout_s=0.2), _STEP_TIMEOUT_S)
        elapsed_s = loop.time() - begun
        # Well short of the handler's 5 s (the lower bound allows uvloop's ms clock).
        assert 0.19 <= elapsed_s < 2.0, elapsed_s
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await read_response(reader)
        writer.close()

    run_limited(scenario, HttpLimits())
