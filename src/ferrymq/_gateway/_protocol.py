"""The two SQS wire protocols: AWS JSON 1.0 and the older Query (form in, XML out).

``decode`` turns an HTTP request into the canonical call (the JSON 1.0 shape of
botocore's current model: integers as ``int``, blobs as ``bytes``); ``encode_result``
and ``encode_error`` turn the canonical result or an ``SqsError`` back into the
request's protocol. Everything is driven by the generated table in ``_wire_model``, so
the 23 actions share one code path per protocol and no per-action code exists here.
Nothing in this module knows about queues.

A Query request that asks for JSON (``Accept: application/json``) is answered in the
JSON rendering of the Query response (``{"<Action>Response": {"<Action>Result": …}}``,
errors as ``{"Error": {...}}``), not in JSON 1.0: that is what SQS answered in the
AWS-validated JSON-format tests of LocalStack's TestSqsQueryApi. It is the third
``WireProtocol``, ``"query-json"``.

The decoders bound their own work before the core sees anything: integers must fit the
model's 32-bit ``integer``, Query indices are small ASCII decimals, and a request may
hold at most ``DECODED_ITEMS_MAX`` list and map items in all, counted before any item
is looked at.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson

from ferrymq._core._errors import (
    InternalError,
    SqsError,
    invalid_parameter,
    missing_parameter,
)
from ferrymq._gateway._http import Request, Response
from ferrymq._gateway._wire_model import OPERATIONS

__all__ = [
    "ACTIONS",
    "DECODED_ITEMS_MAX",
    "INTEGER_MAX",
    "INTEGER_MIN",
    "XMLNS",
    "WireProtocol",
    "decode",
    "encode_error",
    "encode_fault",
    "encode_result",
    "http_fault",
    "protocol_of",
    "xml_escape",
    "xml_text",
]

# "query-json": a Query request answered in JSON because its Accept header asks for it.
WireProtocol = Literal["json", "query", "query-json"]

XMLNS = "http://queue.amazonaws.com/doc/2012-11-05/"
ACTIONS: frozenset[str] = frozenset(OPERATIONS)

_JSON_CONTENT_TYPE = "application/x-amz-json-1.0"
# The JSON rendering of Query responses is plain JSON, not the JSON 1.0 protocol.
_LEGACY_JSON_CONTENT_TYPE = "application/json"
_TARGET_PREFIX = "AmazonSQS."
# The JSON ``__type`` namespace: SQS's own (modelled) errors are ``com.amazonaws.sqs#``;
# the ones its service framework raises are ``com.amazon.coral.service#``. Recorded
# on AWS for InvalidParameterValueException and UnknownOperationException; the other
# framework shapes here are taken to be the same family (not recorded).
_SQS_NAMESPACE = "com.amazonaws.sqs#"
_CORAL_NAMESPACE = "com.amazon.coral.service#"
_CORAL_SHAPES = frozenset({
    "InvalidParameterValueException",
    "MissingRequiredParameterException",
    "UnknownOperationException",
    "SerializationException",
    "InternalFailure",
})
# Errors whose JSON answer is the bare ``{"__type": ...}``, without message or
# x-amzn-query-error: what AWS sent for an unknown operation (recorded).
_BARE_JSON_SHAPES = frozenset({"UnknownOperationException"})
_QDNE_JSON_MESSAGE = "The specified queue does not exist."
_QDNE_QUERY_MESSAGE = "The specified queue does not exist for this wsdl version."

# Bounds on what a Query form may describe, so a hostile form cannot make the decoder
# build huge trees: no SQS request needs more than a few hundred fields (10 batch
# entries x 10 attributes x 4 fields) or nesting deeper than 6 dots
# (SendMessageBatchRequestEntry.N.MessageAttribute.N.Value.DataType).
_FORM_FIELDS_MAX = 4096
_FORM_KEY_DEPTH_MAX = 8

# Every number in an SQS request is an ``integer`` (32-bit signed) in botocore's model;
# none is a ``long`` (tests/gateway checks this). A value outside this range can never
# be valid, so it is refused here, before the core or any int() of unbounded text.
INTEGER_MIN = -(2**31)
INTEGER_MAX = 2**31 - 1
# Decimal digits of INTEGER_MAX: a Query integer with more significant digits is out
# of range without converting it.
_INTEGER_DIGITS_MAX = len(str(INTEGER_MAX))

# List and map items (of all lists and maps together) one decoded request may carry,
# charged before any item is looked at. The largest valid SQS requests carry far fewer:
# SendMessageBatch 120 (10 entries with 10 message attributes and 1 system attribute
# each), TagQueue or CreateQueue 50 tags (the per-queue tag limit) plus 15 settable
# queue attributes, AddPermission 7 actions. The lists SQS sets no count for
# (MessageAttributeNames, TagKeys, AttributeNames, AWSAccountIds) name at most a few
# dozen things worth naming. 1000 admits all of that with a wide margin, lets plausible
# over-limit requests reach the core for SQS's own error (11 entries, 51 tags), and
# caps the per-item work a request under the 6 MiB body bound can cause: 400,000
# names took 0.49 s of loop time before (the decode alone 57 ms).
DECODED_ITEMS_MAX = 1000
# A Query list index is 1..N in every SDK; no valid request needs one past the items
# it may carry, and digits past this many are refused before any int().
_QUERY_INDEX_MAX = DECODED_ITEMS_MAX
_QUERY_INDEX = re.compile(f"[1-9][0-9]{{0,{len(str(_QUERY_INDEX_MAX)) - 1}}}")
# How much of an offending value an error message repeats: enough to recognise it,
# without echoing megabytes of a hostile parameter back.
_ECHO_CHARS_MAX = 64


# ---- compiled descriptors --------------------------------------------------------


class _Struct:
    __slots__ = ("by_name", "by_query", "members")

    def __init__(self, members: tuple[tuple[str, str, str, Any], ...]) -> None:
        # (member, query key, query name, node): order kept for XML output.
        self.members = tuple((m, key, name, _compile(d)) for m, key, name, d in members)
        self.by_name: dict[str, Any] = {m: node for m, _k, _n, node in self.members}
        self.by_query = tuple((key, name, m, node) for m, key, name, node in self.members)


class _List:
    __slots__ = ("inner", "item")

    def __init__(self, inner: str | None, item: Any) -> None:
        self.inner = inner
        self.item = _compile(item)


class _Map:
    __slots__ = ("inner", "key", "key_name", "value", "value_name")

    def __init__(self, inner: str | None, key_name: str, value_name: str, key: Any,
                 value: Any) -> None:
        self.inner = inner
        self.key_name = key_name
        self.value_name = value_name
        self.key = _compile(key)
        self.value = _compile(value)


def _compile(desc: Any) -> Any:
    if isinstance(desc, str):
        return desc
    kind = desc[0]
    if kind == "S":
        return _Struct(desc[1])
    if kind == "L":
        return _List(desc[1], desc[2])
    if kind != "M":
        raise InternalError(f"unknown wire descriptor {desc!r}")
    return _Map(desc[1], desc[2], desc[3], desc[4], desc[5])


_INPUTS: dict[str, _Struct] = {}
_OUTPUTS: dict[str, _Struct | None] = {}
for _action, (_inp, _outp) in OPERATIONS.items():
    _INPUTS[_action] = _compile(_inp)
    _OUTPUTS[_action] = None if _outp is None else _compile(_outp)


# ---- decoding ---------------------------------------------------------------------


# RFC 9110 qvalue: 0 to 1 with at most three decimals.
_QUALITY = re.compile(r"0(\.[0-9]{0,3})?|1(\.0{0,3})?")


def _accepts_json(accept: str) -> bool:
    """Whether an Accept header prefers JSON to XML (the Query default)."""
    best_json = best_xml = 0.0
    first = ""
    for part in accept.split(","):
        media, _sep, params = part.partition(";")
        media = media.strip().lower()
        if media == "application/json":
            kind = "json"
        elif media in ("text/xml", "application/xml"):
            kind = "xml"
        else:
            continue  # */*, text/* and the like leave the default (XML) in place
        quality = 1.0
        for param in params.split(";"):
            name, _eq, value = param.partition("=")
            if name.strip().lower() == "q":
                value = value.strip()
                quality = float(value) if _QUALITY.fullmatch(value) else 0.0
        if kind == "json":
            best_json = max(best_json, quality)
        else:
            best_xml = max(best_xml, quality)
        if quality > 0 and not first:
            first = kind
    if best_json <= 0:
        return False
    return best_json > best_xml or (best_json == best_xml and first == "json")


def protocol_of(request: Request) -> WireProtocol:
    """Which protocol a request speaks (and so which one its errors must use)."""
    headers = request.headers
    if headers.get("content-type", "").startswith("application/x-amz-json"):
        return "json"
    accept = headers.get("accept")
    if accept is not None and _accepts_json(accept):
        return "query-json"
    return "query"


def decode(request: Request) -> tuple[WireProtocol, str, dict[str, Any]]:
    """(protocol, action, canonical params) of a request; ``SqsError`` if undecodable."""
    protocol = protocol_of(request)
    if protocol == "json":
        action, params = _decode_json(request)
        return "json", action, params
    action, params = _decode_query(request)
    return protocol, action, params


def _serialization(message: str) -> SqsError:
    return SqsError("SerializationException", message)


def _echo(value: str) -> str:
    return value if len(value) <= _ECHO_CHARS_MAX else value[:_ECHO_CHARS_MAX] + "..."


def _not_an_integer(shown: str, path: str) -> SqsError:
    return invalid_parameter(
        f"Value {_echo(shown)} for parameter {path} is invalid. Reason: Must be an integer.")


class _Budget:
    """The list and map items a request may still carry (``DECODED_ITEMS_MAX``)."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = DECODED_ITEMS_MAX

    def take(self, count: int, path: str) -> None:
        # Charged with a container's length before any of its items is looked at.
        self.left -= count
        if self.left < 0:
            raise invalid_parameter(
                f"Value for parameter {path} is invalid. Reason: A request can carry at most "
                f"{DECODED_ITEMS_MAX} list and map items.")


def _decode_json(request: Request) -> tuple[str, dict[str, Any]]:
    target = request.headers.get("x-amz-target")
    if target is None:
        raise SqsError("UnknownOperationException", "Missing X-Amz-Target header.")
    action = target[len(_TARGET_PREFIX):] if target.startswith(_TARGET_PREFIX) else ""
    if action not in ACTIONS:
        raise SqsError("UnknownOperationException",
                       f"The operation {_echo(target)} is not valid for this endpoint.")
    body = request.body
    try:
        # orjson refuses nesting deeper than 1024 and numbers that overflow a double,
        # so neither reaches the walk below.
        raw = orjson.loads(body) if body.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise _serialization("The request body is not valid JSON.") from exc
    if not isinstance(raw, dict):
        raise _serialization("The request body must be a JSON object.")
    params: dict[str, Any] = _json_struct(raw, _INPUTS[action], "", _Budget())
    return action, params


def _json_value(value: Any, node: Any, path: str, budget: _Budget) -> Any:
    if node == "s":
        if type(value) is str:
            return value
        raise _serialization(f"Expected a string for {path}.")
    if node == "i":
        if type(value) is int:
            if INTEGER_MIN <= value <= INTEGER_MAX:
                return value
            raise _not_an_integer(str(value), path)
        if type(value) is str:
            # AWS's text for exactly this case (a JSON string for an integer member).
            raise _serialization("STRING_VALUE can not be converted to an Integer")
        raise _serialization(f"Expected an integer for {path}.")
    if node == "b":
        if type(value) is bool:
            return value
        raise _serialization(f"Expected a boolean for {path}.")
    if node == "B":
        if type(value) is not str:
            raise _serialization(f"Expected a base64 string for {path}.")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise _serialization(f"Invalid base64 value for {path}.") from exc
    if isinstance(node, _Struct):
        if type(value) is not dict:
            raise _serialization(f"Expected an object for {path}.")
        return _json_struct(value, node, path + ".", budget)
    if isinstance(node, _List):
        if type(value) is not list:
            raise _serialization(f"Expected a list for {path}.")
        budget.take(len(value), path)
        item = node.item
        return [_json_value(v, item, path, budget) for v in value]
    if not isinstance(node, _Map):
        raise InternalError(f"unknown wire descriptor {node!r}")
    if type(value) is not dict:
        raise _serialization(f"Expected an object for {path}.")
    budget.take(len(value), path)
    vnode = node.value
    out: dict[str, Any] = {}
    for k, v in value.items():
        if v is not None:
            out[k] = _json_value(v, vnode, f"{path}.{k}", budget)
    return out


def _json_struct(value: dict[str, Any], node: _Struct, prefix: str,
                 budget: _Budget) -> dict[str, Any]:
    by_name = node.by_name
    out: dict[str, Any] = {}
    for k, v in value.items():
        member = by_name.get(k)
        # Unknown members are ignored, as the service ignores fields newer SDKs add;
        # null is how some SDKs spell "absent".
        if member is None or v is None:
            continue
        if member == "s" and type(v) is str:  # the common case, without a call
            out[k] = v
        else:
            out[k] = _json_value(v, member, prefix + k, budget)
    return out


def _malformed(message: str) -> SqsError:
    return SqsError("MalformedQueryString", message)


def _parse_form(text: str, fields: dict[str, str]) -> None:
    try:
        pairs = parse_qsl(text, keep_blank_values=True, encoding="utf-8", errors="strict",
                          max_num_fields=_FORM_FIELDS_MAX)
    except (UnicodeDecodeError, ValueError) as exc:
        raise _malformed("The query string is malformed.") from exc
    for k, v in pairs:
        fields[k] = v


def _decode_query(request: Request) -> tuple[str, dict[str, Any]]:
    fields: dict[str, str] = {}
    if request.query:
        # The HTTP layer hands the raw query string over as latin-1 text; a client
        # that sent raw UTF-8 there (not %-escaped) meant UTF-8.
        try:
            query = request.query.encode("latin-1").decode("utf-8")
        except UnicodeError as exc:
            raise _malformed("The query string is not valid UTF-8.") from exc
        _parse_form(query, fields)
    if request.body:
        try:
            text = request.body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _malformed("The request body is not valid UTF-8.") from exc
        _parse_form(text, fields)
    action = fields.get("Action")
    if not action:
        err = SqsError("UnknownOperationException", "Missing Action parameter.")
        # What SQS answers to a bare GET or POST on an endpoint: 404, not 400.
        err.status = 404
        raise err
    if action not in ACTIONS:
        raise SqsError("InvalidAction",
                       f"The action {_echo(action)} is not valid for this endpoint.")
    tree: dict[str, Any] = {}
    for key, value in fields.items():
        parts = key.split(".", _FORM_KEY_DEPTH_MAX)
        node = tree
        for part in parts[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        # A leaf never replaces a subtree: "X=" next to "X.1=..." keeps the subtree.
        if not isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = value
    return action, _query_struct(tree, _INPUTS[action], "", _Budget())


def _query_struct(tree: dict[str, Any], node: _Struct, prefix: str,
                  budget: _Budget) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, name, member, child in node.by_query:
        raw = tree.get(key)
        if raw is None:
            # botocore sends an empty list as "<name>=" (the member's own name).
            if isinstance(child, _List) and tree.get(name) == "":
                out[member] = []
            continue
        out[member] = _query_value(raw, child, prefix + key, budget)
    return out


def _indexed(raw: Any, path: str, budget: _Budget) -> list[tuple[int, Any]]:
    if not isinstance(raw, dict):
        if raw == "":
            return []
        raise _malformed(f"Parameter {path} must be given as {path}.N.")
    budget.take(len(raw), path)
    items: list[tuple[int, Any]] = []
    for index, value in raw.items():
        # ASCII decimal only (str.isdigit() also takes "²" and "١"), no leading zero,
        # and short enough that int() is cheap.
        if not _QUERY_INDEX.fullmatch(index) or int(index) > _QUERY_INDEX_MAX:
            raise _malformed(f"Invalid index {_echo(index)!r} in parameter {path}.")
        items.append((int(index), value))
    items.sort(key=lambda item: item[0])
    return items


def _query_integer(raw: str, path: str) -> int:
    text = raw.strip()
    digits = text[1:] if text[:1] in ("-", "+") else text
    if not digits or not digits.isascii() or not digits.isdigit():
        raise _not_an_integer(raw, path)
    # Leading zeros do not change the value; more significant digits than
    # INTEGER_MAX has are out of range whatever they are.
    significant = digits.lstrip("0")
    if len(significant) > _INTEGER_DIGITS_MAX:
        raise _not_an_integer(raw, path)
    value = int(significant or "0")
    if text[:1] == "-":
        value = -value
    if not INTEGER_MIN <= value <= INTEGER_MAX:
        raise _not_an_integer(raw, path)
    return value


def _query_value(raw: Any, node: Any, path: str, budget: _Budget) -> Any:
    if isinstance(node, str):
        if isinstance(raw, dict):
            raise _malformed(f"Parameter {path} must be a single value.")
        if node == "s":
            return raw
        if node == "i":
            return _query_integer(raw, path)
        if node == "b":
            if raw in ("true", "false"):
                return raw == "true"
            raise invalid_parameter(f"Value {_echo(raw)} for parameter {path} is invalid. "
                                    "Reason: Must be true or false.")
        if node != "B":
            raise InternalError(f"unknown wire descriptor {node!r}")
        try:
            return base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise invalid_parameter(
                f"Value for parameter {path} is invalid. Reason: Not valid base64.") from exc
    if isinstance(node, _Struct):
        if not isinstance(raw, dict):
            raise _malformed(f"Parameter {path} must have members.")
        return _query_struct(raw, node, path + ".", budget)
    if isinstance(node, _List):
        if node.inner is not None:
            raw = raw.get(node.inner, "") if isinstance(raw, dict) else raw
            path = f"{path}.{node.inner}"
        return [_query_value(v, node.item, f"{path}.{i}", budget)
                for i, v in _indexed(raw, path, budget)]
    if not isinstance(node, _Map):
        raise InternalError(f"unknown wire descriptor {node!r}")
    if node.inner is not None:
        raw = raw.get(node.inner, "") if isinstance(raw, dict) else raw
        path = f"{path}.{node.inner}"
    out: dict[str, Any] = {}
    for i, entry in _indexed(raw, path, budget):
        epath = f"{path}.{i}"
        if not isinstance(entry, dict):
            raise _malformed(f"Parameter {epath} must have members.")
        key = entry.get(node.key_name)
        if key is None:
            raise missing_parameter(f"{epath}.{node.key_name}")
        value = entry.get(node.value_name)
        if value is None:
            raise missing_parameter(f"{epath}.{node.value_name}")
        out[_query_value(key, node.key, f"{epath}.{node.key_name}", budget)] = _query_value(
            value, node.value, f"{epath}.{node.value_name}", budget)
    return out


# ---- encoding ---------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def xml_escape(text: str) -> str:
    """Escape character data; ``\\r`` too, or an XML parser turns "\\r\\n" into "\\n"."""
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    if "\r" in text:
        text = text.replace("\r", "&#xD;")
    return text


# Characters XML 1.0 cannot carry at all, not even as character references.
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# The member whose text is exempt from that scan: message bodies are refused by the
# core when they hold such a character (InvalidMessageContents), and scanning up to
# 1 MiB per message again costs ~4 ms per MiB.
_UNSCANNED_TAG = "Body"


def xml_text(text: str) -> str:
    """``text`` as XML character data: escaped, and every character XML cannot carry
    (an echoed control character, say) replaced by U+FFFD so the document parses."""
    # Printable characters are all valid XML: the common case costs one C call.
    if not text.isprintable() and _XML_INVALID.search(text) is not None:
        text = _XML_INVALID.sub("\ufffd", text)
    return xml_escape(text)


def _xml_scalar(value: Any, node: str) -> str:
    if node == "b":
        return "true" if value else "false"
    if node == "B":
        return base64.b64encode(value).decode("ascii")
    return str(int(value))


def _xml(out: list[str], tag: str, value: Any, node: Any) -> None:
    if node == "s":  # most scalars: inline, this runs for every one of them
        text = value if type(value) is str else str(value)
        if tag != _UNSCANNED_TAG and not text.isprintable() \
                and _XML_INVALID.search(text) is not None:
            text = _XML_INVALID.sub("\ufffd", text)
        out.append(f"<{tag}>{xml_escape(text)}</{tag}>")
    elif isinstance(node, str):
        out.append(f"<{tag}>{_xml_scalar(value, node)}</{tag}>")
    elif isinstance(node, _Struct):
        out.append(f"<{tag}>")
        _xml_members(out, value, node)
        out.append(f"</{tag}>")
    elif isinstance(node, _List):
        if node.inner is None:
            for item in value:
                _xml(out, tag, item, node.item)
        else:
            out.append(f"<{tag}>")
            for item in value:
                _xml(out, node.inner, item, node.item)
            out.append(f"</{tag}>")
    else:
        if not isinstance(node, _Map):
            raise InternalError(f"unknown wire descriptor {node!r}")
        entry_tag = tag if node.inner is None else node.inner
        if node.inner is not None:
            out.append(f"<{tag}>")
        for k, v in value.items():
            out.append(f"<{entry_tag}>")
            _xml(out, node.key_name, k, node.key)
            _xml(out, node.value_name, v, node.value)
            out.append(f"</{entry_tag}>")
        if node.inner is not None:
            out.append(f"</{tag}>")


def _xml_members(out: list[str], value: dict[str, Any], node: _Struct) -> None:
    # Members the model does not know are dropped: old SDKs could not parse them.
    for member, key, _name, child in node.members:
        v = value.get(member)
        if v is not None:
            _xml(out, key, v, child)


def _legacy_json(value: Any, node: Any) -> Any:
    """A canonical value in the JSON rendering of a Query response: members under their
    model names, lists as arrays, maps as arrays of {key name: k, value name: v} (as
    SQS renders GetQueueAttributes' ``Attributes``), blobs as base64."""
    if isinstance(node, str):
        if node == "s":
            return value if type(value) is str else str(value)
        if node == "b":
            return bool(value)
        if node == "B":
            return base64.b64encode(value).decode("ascii")
        return int(value)
    if isinstance(node, _Struct):
        out: dict[str, Any] = {}
        for member, _key, _name, child in node.members:
            v = value.get(member)
            if v is not None:
                out[member] = _legacy_json(v, child)
        return out
    if isinstance(node, _List):
        return [_legacy_json(item, node.item) for item in value]
    if not isinstance(node, _Map):
        raise InternalError(f"unknown wire descriptor {node!r}")
    return [{node.key_name: _legacy_json(k, node.key),
             node.value_name: _legacy_json(v, node.value)} for k, v in value.items()]


def encode_result(protocol: WireProtocol, action: str, result: dict[str, Any],
                  request_id: str) -> Response:
    if protocol == "json":
        body = orjson.dumps(result, default=_json_default) if result else b"{}"
        return Response(200, [("Content-Type", _JSON_CONTENT_TYPE),
                              ("x-amzn-RequestId", request_id)], body)
    node = _OUTPUTS[action]
    if protocol == "query-json":
        doc: dict[str, Any] = {}
        if node is not None:
            doc[f"{action}Result"] = _legacy_json(result, node)
        doc["ResponseMetadata"] = {"RequestId": request_id}
        return Response(200, [("Content-Type", _LEGACY_JSON_CONTENT_TYPE),
                              ("x-amzn-RequestId", request_id)],
                        orjson.dumps({f"{action}Response": doc}))
    out = [f'<{action}Response xmlns="{XMLNS}">']
    if node is not None:
        out.append(f"<{action}Result>")
        _xml_members(out, result, node)
        out.append(f"</{action}Result>")
    out.append(f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
               f"</{action}Response>")
    return Response(200, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)],
                    "".join(out).encode("utf-8"))


def encode_fault(protocol: WireProtocol, status: int, shape: str, code: str, message: str,
                 request_id: str, *, sender_fault: bool = True) -> Response:
    """An error response from its parts; ``encode_error`` for an ``SqsError``, and the
    HTTP layer for faults that happen before a request is decoded."""
    fault = "Sender" if sender_fault else "Receiver"
    if protocol == "json":
        namespace = _CORAL_NAMESPACE if shape in _CORAL_SHAPES else _SQS_NAMESPACE
        headers = [("Content-Type", _JSON_CONTENT_TYPE), ("x-amzn-RequestId", request_id)]
        if shape in _BARE_JSON_SHAPES:
            return Response(status, headers, orjson.dumps({"__type": namespace + shape}))
        headers.append(("x-amzn-query-error", f"{code};{fault}"))
        return Response(status, headers,
                        orjson.dumps({"__type": namespace + shape, "message": message}))
    if status == 404 and shape == "UnknownOperationException":
        # Bare XML even when JSON was asked for: what SQS answers a request without
        # an Action (AWS-validated in LocalStack's TestSqsQueryApi).
        text = "<UnknownOperationException/>"
    elif protocol == "query-json":
        return Response(status, [("Content-Type", _LEGACY_JSON_CONTENT_TYPE),
                                 ("x-amzn-RequestId", request_id)],
                        orjson.dumps({"Error": {"Type": fault, "Code": code,
                                                "Message": message},
                                      "RequestId": request_id}))
    else:
        text = (f'<ErrorResponse xmlns="{XMLNS}"><Error><Type>{fault}</Type>'
                f"<Code>{xml_text(code)}</Code><Message>{xml_text(message)}</Message>"
                f"<Detail/></Error><RequestId>{request_id}</RequestId></ErrorResponse>")
    return Response(status, [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)],
                    text.encode("utf-8"))


def encode_error(protocol: WireProtocol, err: SqsError, request_id: str) -> Response:
    message = err.message
    if protocol != "json" and err.shape == "QueueDoesNotExist" \
            and message == _QDNE_JSON_MESSAGE:
        message = _QDNE_QUERY_MESSAGE
    return encode_fault(protocol, err.status, err.shape, err.code, message, request_id,
                        sender_fault=err.sender_fault)


# HTTP-level faults, found before a request could be decoded: (shape = code) by status.
_HTTP_FAULT_CODES = {
    400: "MalformedHttpRequest",
    # A request that did not arrive within its deadline; botocore's standard retry
    # mode retries this code.
    408: "RequestTimeout",
    413: "RequestEntityTooLarge",
    431: "RequestHeaderFieldsTooLarge",
    500: "InternalFailure",
    # Over the connection cap, or shutting down: retriable, like every 503.
    503: "ServiceUnavailable",
}


def http_fault(headers: dict[str, str], status: int, message: str, request_id: str) -> Response:
    """The SQS-shaped answer to a fault of the HTTP layer, in the protocol the request's
    headers announce (plain Query XML when even those are unknown)."""
    code = _HTTP_FAULT_CODES.get(status, "InternalFailure")
    protocol = protocol_of(Request("", "", "", headers, b"", ""))
    return encode_fault(protocol, status, code, code, message, request_id,
                        sender_fault=status < 500)
