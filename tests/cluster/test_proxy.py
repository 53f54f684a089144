"""Forwarding raw requests to another node's gateway over real sockets."""

from __future__ import annotations

import asyncio

import pytest

from ferrymq._cluster._proxy import FORWARDED_HEADER, Proxy, ProxyError
from ferrymq._gateway._http import Request, Response, close_server, serve_http


def test_requests_and_answers_pass_through_unchanged() -> None:
    async def scenario() -> None:
        seen: list[Request] = []

        async def handler(request: Request) -> Response:
            seen.append(request)
            return Response(201, [("Content-Type", "text/xml"), ("x-amzn-RequestId", "r1")],
                            b"<ok/>" + request.body)

        server = await serve_http(handler, "127.0.0.1", 0)
        target = server.sockets[0].getsockname()[:2]
        proxy = Proxy()
        request = Request("POST", "/000000000000/q", "Action=X", {
            "host": "node-a:9324", "content-type": "application/x-www-form-urlencoded",
            "authorization": "AWS4-HMAC-SHA256 Credential=AKID/x", "connection": "close"},
            b"Action=SendMessage&MessageBody=hi", "1.2.3.4:5")
        for _ in range(3):  # the second and third reuse the connection
            answer = await proxy.forward(target, request)
            assert answer.status == 201 and answer.body == b"<ok/>" + request.body
            assert ("x-amzn-RequestId", "r1") in answer.headers
        got = seen[-1]
        assert (got.method, got.path, got.query, got.body) == (
            "POST", "/000000000000/q", "Action=X", request.body)
        assert got.headers["host"] == "node-a:9324"  # queue URLs name the node asked
        assert got.headers["authorization"].startswith("AWS4")
        assert got.headers[FORWARDED_HEADER] == "1"
        assert "connection" not in got.headers  # hop-by-hop headers stay behind
        await proxy.close()
        await close_server(server)
        with pytest.raises(ProxyError):
            await Proxy().forward(target, request)

    asyncio.run(scenario())
