"""The gateway's request pipeline: HTTP request -> canonical call -> service -> response.

This is the I/O shell around the service: it draws request ids, reads the caller's
identity and the URL it used, and guarantees that every request gets an SQS-shaped
answer in its own protocol, whatever the service does.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from ferrymq._api import CallContext, Service
from ferrymq._core._errors import SqsError
from ferrymq._gateway._http import (
    INTERNAL_FAILURE_MESSAGE,
    HttpLimits,
    Request,
    Response,
    serve_http,
)
from ferrymq._gateway._protocol import (
    decode,
    encode_error,
    encode_result,
    http_fault,
    protocol_of,
)
from ferrymq._gateway._wire_model import OPERATIONS

__all__ = ["Gateway", "access_key_of", "queue_path_of", "start_gateway"]

_log = logging.getLogger("ferrymq.gateway")

# Actions whose input has a QueueUrl member: the ones a queue-path request can address.
_QUEUE_URL_ACTIONS = frozenset(
    action for action, (inp, _out) in OPERATIONS.items()
    if any(member[0] == "QueueUrl" for member in inp[1])
)
# What SQS refuses with InvalidAction when a Query request is sent to a queue URL
# (AWS-validated in LocalStack's TestSqsQueryApi: GetQueueUrl there is allowed). JSON
# requests to a queue path are served as if sent to "/", as the PHP SDK relies on.
_NOT_ON_QUEUE_PATH = frozenset({"CreateQueue", "ListQueues"})
_CREDENTIAL = "Credential="
# X-Ray's HTTP trace header. SQS stores it as the AWSTraceHeader system attribute of
# every message a SendMessage or SendMessageBatch sends; an explicit AWSTraceHeader
# message system attribute overrides it (AWS X-Ray developer guide, "Amazon SQS").
_TRACE_HEADER = "x-amzn-trace-id"
_TRACE_ATTRIBUTE = "AWSTraceHeader"
_TRACED_ACTIONS = frozenset({"SendMessage", "SendMessageBatch"})


# Cluster mode: given the decoded call (action and parameters), answer it elsewhere
# (forward it to the leader of the queue's replica set) or return None to let this
# node's service answer it.
Route = Callable[[Request, str, dict[str, Any]], Awaitable[Response | None]]
# Cluster mode: paths answered by the node itself, before any SQS decoding (its status
# page, and copies of messages between replica sets).
Page = Callable[[Request], Awaitable[Response]]


def queue_path_of(path: str) -> str | None:
    """``"/<account>/<name>"`` if the path addresses a queue, else None."""
    if path.count("/") != 2:
        return None
    _empty, account, name = path.split("/")
    if _empty or not account or not name:
        return None
    return path


def _key_from_credential(credential: str) -> str | None:
    key = credential.split("/", 1)[0].strip()
    return key or None


def access_key_of(request: Request) -> str | None:
    """The caller's access key id, if the request says (SigV4 header, presigned query
    or SigV2 ``AWSAccessKeyId``). Not verified here: that is authentication's job."""
    auth = request.headers.get("authorization")
    if auth is not None:
        start = auth.find(_CREDENTIAL)
        if start >= 0:
            start += len(_CREDENTIAL)
            end = auth.find(",", start)
            return _key_from_credential(auth[start:] if end < 0 else auth[start:end])
        return None
    sources = [request.query]
    if request.body and protocol_of(request) != "json":
        sources.append(request.body.decode("utf-8", "replace"))
    for text in sources:
        if "X-Amz-Credential=" not in text and "AWSAccessKeyId=" not in text:
            continue
        for name, value in parse_qsl(text, keep_blank_values=True):
            if name == "X-Amz-Credential":
                return _key_from_credential(value)
            if name == "AWSAccessKeyId":
                return value.strip() or None
    return None


# Request ids only need to be unique, not secret: a random per-process prefix and a
# counter, formatted like the UUIDs SQS returns. uuid4() made a system call per request.
_REQUEST_ID_PREFIX = os.urandom(8).hex()
_request_counter = itertools.count(1)


def _with_trace(params: dict[str, Any], trace: dict[str, Any]) -> None:
    system = params.get("MessageSystemAttributes")
    if system is None:
        params["MessageSystemAttributes"] = {_TRACE_ATTRIBUTE: trace}
    elif _TRACE_ATTRIBUTE not in system:
        params["MessageSystemAttributes"] = {**system, _TRACE_ATTRIBUTE: trace}


def _apply_trace_header(action: str, params: dict[str, Any], header: str) -> None:
    """The trace header as each message's AWSTraceHeader, unless the message names one."""
    # A header is latin-1 text; only a visible-ASCII value can be an X-Ray header, and
    # anything else is ignored rather than failing a send the client did not annotate.
    if not header or not header.isascii() or not header.isprintable():
        return
    trace = {"DataType": "String", "StringValue": header}
    if action == "SendMessage":
        _with_trace(params, trace)
    elif action == "SendMessageBatch":
        for entry in params.get("Entries", ()):
            _with_trace(entry, trace)


def _next_request_id() -> str:
    p = _REQUEST_ID_PREFIX
    n = f"{next(_request_counter) & 0xFFFFFFFFFFFFFFF:015x}"
    return f"{p[:8]}-{p[8:12]}-4{p[13:16]}-8{n[:3]}-{n[3:]}"


class Gateway:
    """Answers HTTP requests by calling ``service``; see ``handle``."""

    def __init__(self, service: Service, *, public_url: str | None,
                 account_id: str = "000000000000", region: str = "us-east-1",
                 listen_address: str | None = None, route: Route | None = None,
                 pages: dict[str, Page] | None = None) -> None:
        self._service = service
        self._route = route
        self._pages = pages or {}
        self._public_url = public_url.rstrip("/") if public_url else None
        self._account_id = account_id
        self._region = region
        # "host:port" the server listens on: the base URL when a request has no Host.
        self.listen_address = listen_address

    def _base_url(self, request: Request) -> str:
        if self._public_url is not None:
            return self._public_url
        host = request.headers.get("host")
        if host:
            return "http://" + host
        return "http://" + (self.listen_address or "localhost")

    def refuse(self, request: Request, err: SqsError) -> Response:
        """``err`` as the answer to ``request``, in the request's wire protocol."""
        return encode_error(protocol_of(request), err, _next_request_id())

    async def handle(self, request: Request) -> Response:
        """Never raises (except cancellation): every failure becomes an SQS error."""
        page = self._pages.get(request.path) if self._pages else None
        if page is not None:
            try:
                return await page(request)
            except Exception:
                _log.exception("bug: the page %s failed", request.path)
                return self.refuse(request, SqsError("InternalFailure",
                                                     INTERNAL_FAILURE_MESSAGE))
        request_id = _next_request_id()
        protocol = protocol_of(request)
        try:
            protocol, action, params = decode(request)
            path_queue = queue_path_of(request.path)
            if path_queue is not None and protocol != "json" and action in _NOT_ON_QUEUE_PATH:
                raise SqsError("InvalidAction",
                               f"The action {action} is not valid for this endpoint.")
            trace = request.headers.get(_TRACE_HEADER)
            if trace is not None and action in _TRACED_ACTIONS:
                _apply_trace_header(action, params, trace.strip())
            ctx = CallContext(
                request_id=request_id,
                base_url=self._base_url(request),
                account_id=self._account_id,
                region=self._region,
                access_key_id=access_key_of(request),
                path_queue=path_queue,
            )
            # An explicit QueueUrl wins over the path, as in SQS.
            if path_queue is not None and "QueueUrl" not in params \
                    and action in _QUEUE_URL_ACTIONS:
                params["QueueUrl"] = ctx.base_url + path_queue
            if self._route is not None:
                routed = await self._route(request, action, params)
                if routed is not None:
                    return routed
            result: dict[str, Any] = await self._service.call(action, params, ctx)
            return encode_result(protocol, action, result, request_id)
        except SqsError as err:
            return encode_error(protocol, err, request_id)
        except Exception:
            _log.exception("bug: request %s failed", request_id)
            return encode_error(
                protocol, SqsError("InternalFailure", INTERNAL_FAILURE_MESSAGE),
                request_id)


async def start_gateway(service: Service, host: str | None, port: int | None,
                        public_url: str | None = None, reuse_port: bool = False, *,
                        account_id: str = "000000000000", region: str = "us-east-1",
                        http_limits: HttpLimits | None = None,
                        sock: socket.socket | None = None,
                        gateway: Gateway | None = None) -> asyncio.Server:
    """Serve ``service`` over HTTP on host:port (port 0 picks a free one), or on the
    listening socket ``sock``, within ``http_limits`` (the HTTP layer's defaults if None).
    ``gateway``: one built by the caller (cluster mode routes through it)."""
    if gateway is None:
        gateway = Gateway(service, public_url=public_url, account_id=account_id,
                          region=region)
    server = await serve_http(gateway.handle, host, port, reuse_port=reuse_port,
                              fault=http_fault, limits=http_limits, sock=sock)
    sockname = server.sockets[0].getsockname()
    host_text = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
    gateway.listen_address = f"{host_text}:{sockname[1]}"
    return server
