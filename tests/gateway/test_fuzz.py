"""A structure-aware fuzzer of both protocol decoders, through ``Gateway.handle`` into a
real ``QueueService`` (``MemoryStore``, injected clock and entropy).

Requests are built from the wire model (``_wire_model.OPERATIONS``) for all 23 actions:
first valid ones with realistic values (the queues, receipt handles, ARNs and task
handle of a seeded service), then the same requests mutated at the wire level: wrong
types, missing and extra members, huge, negative and non-ASCII numbers, odd indices,
empty and over-long lists, deep nesting, bad base64, invalid UTF-8, control
characters, very long strings, duplicate keys and either protocol's special names,
sent as JSON, Query POST, Query GET, to "/" or to a queue path, asking for XML or JSON.

Every example gets a fresh service seeded with the same requests (a standard queue, a
FIFO queue, a dead-letter queue with its source, messages, receives, a move task), so
an example replays exactly. Properties of every answer:

- never a 5xx, and nothing logged at ERROR or above by the ``ferrymq`` loggers (a
  gateway "bug: request ... failed" line is logged at ERROR with its traceback);
- it parses in its protocol (JSON 1.0 with ``__type`` and ``x-amzn-query-error`` for
  errors; Query XML, or the JSON rendering of Query when Accept asked for JSON), and a
  success also parses in botocore's own parser for the action;
- an error's code is one of ``ferrymq._core._errors.ERRORS``.

Runs are derandomized (the same examples every run, so a failure replays) and bounded:
``max_examples`` per test and a per-example ``deadline``, about 20 s for the module on
a 2-core machine. A failing example's assertion message shows its request and the answer.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import botocore.loaders
import botocore.model
import botocore.parsers
import orjson
import pytest
from _doubles import CountingEntropy
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferrymq._core._broker import Broker
from ferrymq._core._errors import ERRORS
from ferrymq._gateway._app import Gateway
from ferrymq._gateway._http import Request, Response
from ferrymq._gateway._protocol import DECODED_ITEMS_MAX, XMLNS
from ferrymq._gateway._wire_model import OPERATIONS
from ferrymq._service import QueueService
from ferrymq._storage import MemoryStore

ACTIONS = sorted(OPERATIONS)
HOST = "h:1"
BASE = f"http://{HOST}"
ACCOUNT = "000000000000"
# One clock step per reading, longer than the longest long poll (20 s): a receive that
# finds nothing answers at once instead of parking on a real timer.
_CLOCK_STEP_MS = 21_000
_CLOCK_START_MS = 1_700_000_000_000
# Bounds of the run: (examples per test) x (tests) stays near 20 s on a 2-core machine;
# the deadline is generous because other suites share the machine.
_EXAMPLES = int(os.environ.get("FERRY_FUZZ_EXAMPLES", "1000"))
_DEADLINE_MS = 3_000

QUERY_CODES = {code for code, _status, _fault in ERRORS.values()}
# The JSON ``__type`` namespace: the service framework's for the shapes it raises (AWS
# answered com.amazon.coral.service# for InvalidParameterValueException and
# UnknownOperationException), SQS's own for the rest.
CORAL_SHAPES = frozenset({"InvalidParameterValueException", "MissingRequiredParameterException",
                          "UnknownOperationException", "SerializationException",
                          "InternalFailure"})
# Answered with a bare {"__type": ...}: no message, no x-amzn-query-error (as AWS does).
BARE_SHAPES = frozenset({"UnknownOperationException"})

QUEUES = ("std", "fifo.fifo", "dlq", "src", "dlq2.fifo", "src2.fifo")


def url(name: str) -> str:
    return f"{BASE}/{ACCOUNT}/{name}"


def arn(name: str) -> str:
    return f"arn:aws:sqs:us-east-1:{ACCOUNT}:{name}"


# ---- the service under test ------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now_ms = _CLOCK_START_MS

    def __call__(self) -> int:
        self.now_ms += _CLOCK_STEP_MS
        return self.now_ms


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


_LOG_ERRORS = _Errors()
_LOOP = asyncio.new_event_loop()


@pytest.fixture(scope="module", autouse=True)
def _capture_and_close() -> Iterator[None]:
    logger = logging.getLogger("ferrymq")
    logger.addHandler(_LOG_ERRORS)
    yield
    logger.removeHandler(_LOG_ERRORS)
    _LOOP.close()


def _json_request(action: str, params: dict[str, Any]) -> Request:
    return Request("POST", "/", "", {"host": HOST, "content-type": "application/x-amz-json-1.0",
                                     "x-amz-target": f"AmazonSQS.{action}"},
                   orjson.dumps(params, default=_b64), "127.0.0.1:1")


def _b64(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    raise TypeError(type(value).__name__)


_SEED: list[tuple[str, dict[str, Any]]] = [
    ("CreateQueue", {"QueueName": "std", "tags": {"team": "a"}}),
    ("CreateQueue", {"QueueName": "fifo.fifo", "Attributes": {
        "FifoQueue": "true", "ContentBasedDeduplication": "true"}}),
    ("CreateQueue", {"QueueName": "dlq"}),
    ("CreateQueue", {"QueueName": "src", "Attributes": {"RedrivePolicy": orjson.dumps(
        {"deadLetterTargetArn": arn("dlq"), "maxReceiveCount": 1}).decode()}}),
    ("CreateQueue", {"QueueName": "dlq2.fifo", "Attributes": {"FifoQueue": "true"}}),
    ("CreateQueue", {"QueueName": "src2.fifo", "Attributes": {
        "FifoQueue": "true", "ContentBasedDeduplication": "true",
        "RedrivePolicy": orjson.dumps({"deadLetterTargetArn": arn("dlq2.fifo"),
                                       "maxReceiveCount": 1}).decode()}}),
    ("AddPermission", {"QueueUrl": url("std"), "Label": "p1", "AWSAccountIds": ["111122223333"],
                       "Actions": ["SendMessage"]}),
    ("SendMessageBatch", {"QueueUrl": url("std"), "Entries": [
        {"Id": f"m{i}", "MessageBody": f"body {i}",
         "MessageAttributes": {"a": {"DataType": "String", "StringValue": "v"}}}
        for i in range(4)]}),
    ("SendMessage", {"QueueUrl": url("fifo.fifo"), "MessageBody": "f1", "MessageGroupId": "g"}),
    ("SendMessage", {"QueueUrl": url("fifo.fifo"), "MessageBody": "f2", "MessageGroupId": "g"}),
    ("SendMessage", {"QueueUrl": url("src"), "MessageBody": "to the dlq"}),
    ("SendMessage", {"QueueUrl": url("src"), "MessageBody": "stays"}),
    ("SendMessage", {"QueueUrl": url("src2.fifo"), "MessageBody": "s2", "MessageGroupId": "g"}),
    ("ReceiveMessage", {"QueueUrl": url("std"), "MaxNumberOfMessages": 2,
                        "VisibilityTimeout": 600}),
    ("ReceiveMessage", {"QueueUrl": url("fifo.fifo"), "VisibilityTimeout": 600}),
    # Received once with maxReceiveCount 1: the next receive moves it to the DLQ.
    ("ReceiveMessage", {"QueueUrl": url("src"), "VisibilityTimeout": 0}),
    ("ReceiveMessage", {"QueueUrl": url("src"), "VisibilityTimeout": 0}),
    ("ReceiveMessage", {"QueueUrl": url("src2.fifo"), "VisibilityTimeout": 0}),
    ("ReceiveMessage", {"QueueUrl": url("src2.fifo"), "VisibilityTimeout": 0}),
    ("StartMessageMoveTask", {"SourceArn": arn("dlq"), "MaxNumberOfMessagesPerSecond": 1}),
]


@dataclass
class _Seeded:
    gateway: Gateway
    handles: list[str]
    task_handles: list[str]


def _seeded() -> _Seeded:
    service = QueueService(Broker(), MemoryStore(), clock_ms=_Clock(),
                           entropy=CountingEntropy())
    gateway = Gateway(service, public_url=None)
    handles: list[str] = []
    tasks: list[str] = []
    for action, params in _SEED:
        response = _LOOP.run_until_complete(gateway.handle(_json_request(action, params)))
        if response.status != 200:
            raise AssertionError(f"seed {action} failed: {response.body!r}")
        doc = orjson.loads(response.body)
        handles.extend(m["ReceiptHandle"] for m in doc.get("Messages", ()))
        if "TaskHandle" in doc:
            tasks.append(doc["TaskHandle"])
    return _Seeded(gateway, handles, tasks)


# The seed is deterministic (clock, entropy), so these are the handles of every run.
_REFERENCE = _seeded()
HANDLES = _REFERENCE.handles
TASK_HANDLES = _REFERENCE.task_handles
assert HANDLES and TASK_HANDLES, "the seed must leave receipt and task handles"


# ---- strategies: valid canonical params ------------------------------------------------


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
_NAMES = st.sampled_from(["a", "b", "a.b", "x-y_z", "All", ".*", "a.*", "AWS.x", "..", ""])
_QUEUE_ATTRS = ["All", "Policy", "VisibilityTimeout", "MaximumMessageSize",
                "MessageRetentionPeriod", "ApproximateNumberOfMessages", "QueueArn",
                "DelaySeconds", "ReceiveMessageWaitTimeSeconds", "RedrivePolicy", "FifoQueue",
                "ContentBasedDeduplication", "KmsMasterKeyId", "DeduplicationScope",
                "FifoThroughputLimit", "RedriveAllowPolicy", "SqsManagedSseEnabled",
                "CreatedTimestamp", "Bogus"]
_SYSTEM_ATTRS = ["All", "SenderId", "SentTimestamp", "ApproximateReceiveCount",
                 "ApproximateFirstReceiveTimestamp", "SequenceNumber", "MessageGroupId",
                 "MessageDeduplicationId", "AWSTraceHeader", "DeadLetterQueueSourceArn", "Nope"]
_ATTR_VALUES = {
    "VisibilityTimeout": ["0", "30", "43200", "43201", "-1", "x"],
    "DelaySeconds": ["0", "900", "901"],
    "MaximumMessageSize": ["1024", "1048576", "1023"],
    "MessageRetentionPeriod": ["60", "1209600", "59"],
    "ReceiveMessageWaitTimeSeconds": ["0", "20", "21"],
    "FifoQueue": ["true", "false", "TRUE"],
    "ContentBasedDeduplication": ["true", "false"],
    "DeduplicationScope": ["queue", "messageGroup", "nope"],
    "FifoThroughputLimit": ["perQueue", "perMessageGroupId"],
    "RedrivePolicy": ["", orjson.dumps({"deadLetterTargetArn": arn("dlq"),
                                        "maxReceiveCount": 3}).decode(), "{", "[]",
                      '{"deadLetterTargetArn": 5}',
                      f'{{"deadLetterTargetArn": "{arn("dlq")}", "maxReceiveCount": "5"}}',
                      f'{{"deadLetterTargetArn": "{arn("dlq")}", "maxReceiveCount": 1.5}}',
                      f'{{"deadLetterTargetArn": "{arn("fifo.fifo")}", "maxReceiveCount": 2}}'],
    "RedriveAllowPolicy": ['{"redrivePermission":"allowAll"}', '{"redrivePermission":"byQueue",'
                           f'"sourceQueueArns":["{arn("src")}"]}}', "{}", "nope"],
    "Policy": ["", '{"Version":"2012-10-17"}', "{", '{"Statement": 5}',
               '{"Version":"2012-10-17","Statement":[{"Sid":"p1","Effect":"Allow"}]}'],
    "KmsMasterKeyId": ["alias/aws/sqs", ""],
    "SqsManagedSseEnabled": ["true", "false"],
}
_QUEUE_ATTR_MAP = st.one_of(
    st.dictionaries(st.sampled_from(sorted(_ATTR_VALUES) + ["Bogus", "QueueArn"]),
                    st.one_of(_TEXT, st.sampled_from(sum(_ATTR_VALUES.values(), []))),
                    max_size=4),
    # Each attribute with a value for it, so most of them get set.
    st.sampled_from(sorted(_ATTR_VALUES)).flatmap(
        lambda name: st.sampled_from(_ATTR_VALUES[name]).map(lambda v: {name: v})))
_ATTRIBUTE_VALUE = st.one_of(
    st.builds(lambda t, v: {"DataType": t, "StringValue": v},
              st.sampled_from(["String", "Number", "String.x", "Number.int", "Bogus"]),
              st.one_of(_TEXT, st.sampled_from(["1", "-1.5", "1e3", "nan", " 2", "9" * 5000,
                                                "1e99999999999999999999", "-0", "1e-400",
                                                "Infinity", "0x10", "1_0", "\u0661"]))),
    st.builds(lambda t, v: {"DataType": t, "BinaryValue": v},
              st.sampled_from(["Binary", "Binary.gif", "String"]), st.binary(max_size=8)),
    st.fixed_dictionaries({}, optional={"DataType": _TEXT, "StringValue": _TEXT,
                                        "BinaryValue": st.binary(max_size=4),
                                        "StringListValues": st.lists(_TEXT, max_size=2),
                                        "BinaryListValues": st.lists(st.binary(max_size=2),
                                                                     max_size=2)}),
)
_MESSAGE_ATTRIBUTES = st.dictionaries(st.one_of(_NAMES, _TEXT), _ATTRIBUTE_VALUE, max_size=3)
_TRACE = st.sampled_from(["Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1", "x", ""])
_SYSTEM_ATTRIBUTES = st.one_of(
    st.builds(lambda v: {"AWSTraceHeader": {"DataType": "String", "StringValue": v}}, _TRACE),
    st.dictionaries(st.sampled_from(["AWSTraceHeader", "SenderId"]), _ATTRIBUTE_VALUE,
                    max_size=2))
_SMALL_INT = st.one_of(st.integers(-2, 25), st.sampled_from([43200, 43201, 900, 901, 1000]))

def _mostly(valid: list[Any], invalid: list[Any]) -> Any:
    """Mostly valid values (so most valid requests get past validation to the queue),
    sometimes not; hypothesis favours early entries, so the valid ones come first."""
    return st.sampled_from(valid * 3 + invalid)


_GOOD_QUEUES = [url(q) for q in QUEUES]
_BY_MEMBER: dict[str, Any] = {
    "QueueUrl": _mostly(_GOOD_QUEUES, [url("missing"), "std", f"{BASE}/111111111111/std", "",
                                       "not a url", f"http://other:9/{ACCOUNT}/std"]),
    "QueueName": _mostly(["std", "fifo.fifo", "new-q", "dlq"],
                         ["new.fifo", "bad name", "", "x" * 81]),
    "QueueNamePrefix": st.sampled_from(["", "s", "f", "zzz"]),
    "QueueOwnerAWSAccountId": _mostly([ACCOUNT], ["123456789012", ""]),
    "NextToken": st.one_of(st.sampled_from(["", "garbage", "c3Rk"]), _TEXT),
    "Attributes": _QUEUE_ATTR_MAP,
    "tags": st.dictionaries(_TEXT, _TEXT, max_size=3),
    "Tags": st.dictionaries(_TEXT, _TEXT, max_size=3),
    "TagKeys": st.lists(st.one_of(st.just("team"), _TEXT), max_size=3),
    "AttributeNames": st.lists(st.sampled_from(_QUEUE_ATTRS + _SYSTEM_ATTRS), max_size=3),
    "MessageSystemAttributeNames": st.lists(st.sampled_from(_SYSTEM_ATTRS), max_size=3),
    "MessageAttributeNames": st.lists(_NAMES, max_size=3),
    "MessageBody": st.one_of(st.text(min_size=1, max_size=12), st.sampled_from(
        ["\x00", "\ufffe", "a\r\nb", "\U0001f600"]), _TEXT),
    "MessageAttributes": _MESSAGE_ATTRIBUTES,
    "MessageSystemAttributes": _SYSTEM_ATTRIBUTES,
    "MessageDeduplicationId": _mostly(["d1", "d2"], ["", "bad id!", "x" * 129]),
    "MessageGroupId": _mostly(["g", "h"], ["", "bad id!"]),
    "ReceiptHandle": _mostly(HANDLES, ["garbage", "", "AAAA",
                                       base64.urlsafe_b64encode(b"x:y").decode()]),
    "ReceiveRequestAttemptId": _mostly(["a1"], ["", "bad id!"]),
    "Label": _mostly(["p1", "p2"], ["", "bad label!"]),
    "AWSAccountIds": st.lists(_mostly(["111122223333"], ["x", ""]), max_size=2),
    "Actions": st.lists(_mostly(["SendMessage", "ReceiveMessage", "*"], ["Bogus"]), max_size=8),
    "SourceArn": _mostly([arn(q) for q in QUEUES], [arn("missing"), "", "x"]),
    "DestinationArn": _mostly([arn(q) for q in QUEUES], [arn("missing"), ""]),
    "TaskHandle": _mostly(TASK_HANDLES, ["", "garbage",
                                         base64.b64encode(b'{"taskId":"x"}').decode()]),
    "MaxNumberOfMessages": _SMALL_INT,
    "VisibilityTimeout": _SMALL_INT,
    "WaitTimeSeconds": _SMALL_INT,
    "DelaySeconds": _SMALL_INT,
    "MaxResults": st.one_of(_SMALL_INT, st.sampled_from([1000, 1001])),
    "MaxNumberOfMessagesPerSecond": st.one_of(_SMALL_INT, st.sampled_from([500, 501])),
}
# Batch entry ids, distinct in most batches: drawn per entry position (see _entries).
_ENTRY_IDS = ["a", "b", "c", "d"]
_BAD_ENTRY_IDS = ["", "bad id!", "x" * 81, "a"]
_BY_TYPE = {"s": _TEXT, "i": _SMALL_INT, "b": st.booleans(), "B": st.binary(max_size=8)}


_JSON_MODEL = botocore.model.ServiceModel(
    botocore.loaders.Loader().load_service_model("sqs", "service-2", "2012-11-05"), "sqs")


def _canonical(desc: Any, shape: Any, member: str | None = None) -> Any:
    """A strategy for a canonical value of ``desc`` (botocore's ``shape`` of it says
    which members are required); realistic values for the members SQS validates."""
    if member is not None and member in _BY_MEMBER:
        return _BY_MEMBER[member]
    if isinstance(desc, str):
        return _BY_TYPE[desc]
    kind = desc[0]
    if kind == "S":
        required, optional = {}, {}
        for m, _k, _n, d in desc[1]:
            strategy = _canonical(d, shape.members[m], m)
            if m == "Entries":
                strategy = _entries(_canonical(d[2], shape.members[m].member))
            (required if m in shape.required_members else optional)[m] = strategy
        return st.fixed_dictionaries(required, optional=optional)
    if kind == "L":
        return st.lists(_canonical(desc[2], shape.member), max_size=3)
    return st.dictionaries(_canonical(desc[4], shape.key), _canonical(desc[5], shape.value),
                           max_size=3)


@st.composite
def _entries(draw: Any, item: Any) -> list[dict[str, Any]]:
    entries = draw(st.lists(item, min_size=1, max_size=4))
    for i, entry in enumerate(entries):
        entry["Id"] = draw(_mostly([_ENTRY_IDS[i]], _BAD_ENTRY_IDS))
    return entries


def _input_strategy(action: str) -> Any:
    return _canonical(OPERATIONS[action][0], _JSON_MODEL.operation_model(action).input_shape)


_INPUTS = {action: _input_strategy(action) for action in ACTIONS}


# ---- the wire: JSON text with raw fragments, Query forms -----------------------------


@dataclass(frozen=True)
class Raw:
    """A JSON fragment written as is: numbers orjson cannot write, broken text."""

    text: bytes


def _dump(value: Any, out: list[bytes]) -> None:
    if isinstance(value, Raw):
        out.append(value.text)
    elif isinstance(value, dict):
        out.append(b"{")
        for i, (k, v) in enumerate(value.items()):
            if i:
                out.append(b",")
            out.append(k.text if isinstance(k, Raw) else orjson.dumps(k))
            out.append(b":")
            _dump(v, out)
        out.append(b"}")
    elif isinstance(value, list):
        out.append(b"[")
        for i, v in enumerate(value):
            if i:
                out.append(b",")
            _dump(v, out)
        out.append(b"]")
    elif isinstance(value, bytes):
        out.append(orjson.dumps(base64.b64encode(value).decode()))
    else:
        out.append(orjson.dumps(value))


def dump_json(value: Any) -> bytes:
    out: list[bytes] = []
    _dump(value, out)
    return b"".join(out)


def _form_fields(value: Any, desc: Any, prefix: str, out: list[tuple[str, str]]) -> None:
    """Canonical params as Query fields, from the wire model (all SQS lists and maps
    are flattened: ``Key.N`` and ``Key.N.Name`` / ``Key.N.Value``)."""
    if isinstance(desc, str):
        if desc == "B":
            out.append((prefix, base64.b64encode(value).decode()))
        elif desc == "b":
            out.append((prefix, "true" if value else "false"))
        else:
            out.append((prefix, str(value)))
        return
    kind = desc[0]
    if kind == "S":
        for member, key, _name, child in desc[1]:
            if member in value:
                _form_fields(value[member], child, f"{prefix}.{key}" if prefix else key, out)
    elif kind == "L":
        for i, item in enumerate(value, 1):
            _form_fields(item, desc[2], f"{prefix}.{i}", out)
    else:
        for i, (k, v) in enumerate(value.items(), 1):
            _form_fields(k, desc[4], f"{prefix}.{i}.{desc[2]}", out)
            _form_fields(v, desc[5], f"{prefix}.{i}.{desc[3]}", out)


@dataclass
class Wire:
    """One request as sent, and what the answer must be rendered as."""

    action: str
    expect: str  # "json", "query" or "query-json"
    request: Request

    def describe(self) -> str:
        r = self.request
        body = r.body if len(r.body) < 600 else r.body[:600] + b"...(%d bytes)" % len(r.body)
        query = r.query if len(r.query) < 600 else r.query[:600] + "..."
        return f"{r.method} {r.path}?{query}\nheaders={r.headers}\nbody={body!r}"


# ---- mutations ----------------------------------------------------------------------------


_BIG_DIGITS = "9" * 5000
_NUMBERS_JSON = [Raw(_BIG_DIGITS.encode()), Raw(b"-" + _BIG_DIGITS.encode()), Raw(b"1e400"),
                 Raw(b"1.5"), Raw(b"-0"), 2**31, 2**31 - 1, -(2**31), -(2**31) - 1, 2**63 - 1,
                 Raw(b"18446744073709551616"), -1, 0, Raw(b"1E2")]
_NUMBERS_QUERY = [_BIG_DIGITS, "-" + _BIG_DIGITS, "2147483648", "-2147483649", "2147483647",
                  "00000000000000000000000005", "+5", " 7 ", "\u00b2", "\u0661", "1e3", "1.5",
                  "", "-", "0x10", "٣", "５"]
_INDICES = ["0", "01", "-1", "x", "", "\u00b2", "\u0661", "1001", "999", str(DECODED_ITEMS_MAX),
            _BIG_DIGITS, "1 ", "+1", "１"]
_WEIRD = [None, True, 1, -1, 1.5, "", "x" * 70_000, [], {}, [None], {"a": None}, "\x00\x01\x7f",
          "\ud7ff\ue000\U0010ffff", "\u2028\u202e", "not base64!!", "AAE=", "====",
          Raw(b'"\\ud800"'), Raw(b'"\\udfff\\ud800"'), Raw(b'"\xff\xfe"'), Raw(b'"\xc3"'),
          Raw(b"NaN"), Raw(b"Infinity")]
_SPECIAL_JSON_MEMBERS = ["__type", "Action", "Version", "QueueUrl", "message", "", "Entries",
                         "MessageSystemAttributes", "\x00"]
_SPECIAL_QUERY_FIELDS = [("Action", "ListQueues"), ("Action", ""), ("Action", "Nope"),
                         ("Version", "2012-11-05"), ("Version", "1999"), ("ContentType", "JSON"),
                         ("AWSAccessKeyId", "AKID"), ("X-Amz-Credential", "AKID/x/y"),
                         ("QueueUrl", url("std")), ("QueueUrl", ""), ("a..b", "1"), (".", ""),
                         ("Attribute.1.Name.x", "y"), ("Attribute", "x"),
                         ("MessageAttribute.1.Value.DataType.x", "y"), ("", ""),
                         ("AttributeName", ""), ("Entries", ""), ("x" * 3000, "y")]
_DEPTHS = [64, 1000, 1023, 1024, 1025, 3000]
# Strings that are JSON documents themselves (queue policies are): deeply nested, with
# numbers no parser should convert, with members of the wrong type.
_JSON_TEXTS = ["[" * 1000 + "]" * 1000, '{"a":' * 3000 + "1" + "}" * 3000,
               orjson.dumps({"deadLetterTargetArn": arn("dlq"), "maxReceiveCount": 0}).decode()
               .replace("0}", "9" * 5000 + "}"),
               '{"redrivePermission": "byQueue", "sourceQueueArns": "x"}',
               '{"redrivePermission": "byQueue", "sourceQueueArns": [5]}',
               '{"Version": "2012-10-17", "Statement": [5, null, {"Sid": 7}]}',
               '{"deadLetterTargetArn": [], "maxReceiveCount": {}}', "1e400", '"\\ud800"']


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*path, i))


def _replace(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        copy = dict(value)
        copy[head] = _replace(value[head], rest, new)
        return copy
    copy_list = list(value)
    copy_list[head] = _replace(value[head], rest, new)
    return copy_list


def _delete(value: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        if isinstance(value, dict):
            return {k: v for k, v in value.items() if k != path[0]}
        return [v for i, v in enumerate(value) if i != path[0]]
    head = path[0]
    if isinstance(value, dict):
        return {**value, head: _delete(value[head], path[1:])}
    copy = list(value)
    copy[head] = _delete(value[head], path[1:])
    return copy


# Marks "damage the X-Amz-Target header instead of the body".
_BAD_TARGET = b"<bad target>"


def _nested(depth: int, leaf: Any, kind: str) -> Raw:
    if kind == "list":
        return Raw(b"[" * depth + dump_json(leaf) + b"]" * depth)
    return Raw(b'{"a":' * depth + dump_json(leaf) + b"}" * depth)


@st.composite
def _json_mutation(draw: Any, doc: dict[str, Any]) -> tuple[Any, bytes | None]:
    """(mutated document, or raw body bytes for text-level damage)."""
    paths = [p for p in _paths(doc) if p]
    kind = draw(st.sampled_from(["value", "number", "delete", "extra", "nest", "many",
                                 "text", "duplicate", "top", "target"]))
    if kind == "target":
        return doc, _BAD_TARGET
    if kind in ("value", "number", "nest", "many", "delete") and not paths:
        kind = "extra"
    if kind == "value":
        # Leaves twice as often as containers: most checks are on scalar values.
        leaves = [p for p in paths if not isinstance(_get(doc, p), dict | list)]
        pool = _WEIRD + _JSON_TEXTS
        return _replace(doc, draw(st.sampled_from(leaves * 2 + paths)),
                        draw(st.sampled_from(pool))), None
    if kind == "number":
        return _replace(doc, draw(st.sampled_from(paths)),
                        draw(st.sampled_from(_NUMBERS_JSON))), None
    if kind == "delete":
        return _delete(doc, draw(st.sampled_from(paths))), None
    if kind == "extra":
        target = draw(st.sampled_from([()] + [p for p in paths if isinstance(
            _get(doc, p), dict)]))
        name = draw(st.one_of(st.sampled_from(_SPECIAL_JSON_MEMBERS), _TEXT))
        sub = dict(_get(doc, target))
        sub[name] = draw(st.sampled_from(_WEIRD + ["v"]))
        return _replace(doc, target, sub), None
    if kind == "nest":
        depth = draw(st.sampled_from(_DEPTHS))
        shape = draw(st.sampled_from(["list", "object"]))
        return _replace(doc, draw(st.sampled_from(paths)), _nested(depth, 1, shape)), None
    if kind == "many":
        count = draw(st.sampled_from([0, DECODED_ITEMS_MAX, DECODED_ITEMS_MAX + 1, 20_000]))
        item = draw(st.sampled_from(["a", 1, {"DataType": "String", "StringValue": "v"}]))
        as_map = draw(st.booleans())
        many: Any = {f"k{i}": item for i in range(count)} if as_map else [item] * count
        return _replace(doc, draw(st.sampled_from(paths)), many), None
    if kind == "duplicate":
        body = dump_json(doc)
        if len(body) > 2 and body.startswith(b"{") and paths:
            key = draw(st.sampled_from(sorted(str(k) for k in doc)))
            dup = orjson.dumps(key) + b":" + dump_json(draw(st.sampled_from(_WEIRD[:12])))
            return doc, b"{" + dup + b"," + body[1:]
        return doc, body
    if kind == "top":
        return doc, draw(st.sampled_from([b"", b" ", b"null", b"[]", b'"x"', b"1", b"{",
                                          b"{}garbage", b"\xef\xbb\xbf{}", b"{}\x00",
                                          b'{"a":1,}', b"\xff"]))
    body = dump_json(doc)
    at = draw(st.integers(0, len(body)))
    junk = draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b"\\", b'"', b"}", b"\n",
                                 b"\xed\xa0\x80"]))
    cut = draw(st.booleans())
    return doc, body[:at] + junk + (b"" if cut else body[at:])


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


@st.composite
def _query_mutation(draw: Any, fields: list[tuple[str, str]]) -> tuple[list[tuple[str, str]],
                                                                        bytes | None]:
    """(mutated fields, or a raw form for encoding-level damage)."""
    kind = draw(st.sampled_from(["value", "number", "index", "delete", "duplicate", "extra",
                                 "many", "deep", "encoding"]))
    body = [f for f in fields if f[0] != "Action"]
    if kind in ("value", "number", "index", "delete", "duplicate") and not body:
        kind = "extra"
    out = list(fields)
    if kind in ("value", "number"):
        i = fields.index(draw(st.sampled_from(body)))
        pool = _NUMBERS_QUERY if kind == "number" else [
            "", "x" * 70_000, "\x00\x01", "not base64!!", "\ud7ff", "true", "TRUE",
            "\u2028", "%", "a=b&c", *_JSON_TEXTS]
        out[i] = (fields[i][0], draw(st.sampled_from(pool)))
    elif kind == "index":
        keyed = [f for f in body if any(p.isdigit() for p in f[0].split("."))]
        if keyed:
            i = fields.index(draw(st.sampled_from(keyed)))
            parts = fields[i][0].split(".")
            at = draw(st.sampled_from([j for j, p in enumerate(parts) if p.isdigit()]))
            parts[at] = draw(st.sampled_from(_INDICES))
            out[i] = (".".join(parts), fields[i][1])
        else:
            out.append((f"{draw(st.sampled_from(['TagKey', 'AttributeName']))}."
                        f"{draw(st.sampled_from(_INDICES))}", "v"))
    elif kind == "delete":
        out.remove(draw(st.sampled_from(body)))
    elif kind == "duplicate":
        pick = draw(st.sampled_from(body))
        out.append((pick[0], draw(st.sampled_from(["", "other", "1"]))))
    elif kind == "extra":
        out.append(draw(st.sampled_from(_SPECIAL_QUERY_FIELDS)))
    elif kind == "many":
        count = draw(st.sampled_from([DECODED_ITEMS_MAX, DECODED_ITEMS_MAX + 1, 4095, 5000]))
        name = draw(st.sampled_from(["MessageAttributeName", "AttributeName", "TagKey",
                                     "SendMessageBatchRequestEntry"]))
        leaf = ".Id" if name == "SendMessageBatchRequestEntry" else ""
        out.extend((f"{name}.{i}{leaf}", "a") for i in range(1, count + 1))
    elif kind == "deep":
        depth = draw(st.sampled_from([9, 100, 1000]))
        out.append((".".join(["MessageAttribute"] + ["1"] * depth), "x"))
    else:
        form = urlencode(out).encode()
        at = draw(st.integers(0, len(form)))
        junk = draw(st.sampled_from([b"%FF", b"%C3", b"%ZZ", b"%", b"\xff", b"\xc3\xa9",
                                     b"%00", b"&&", b"=", b"%ED%A0%80", b";"]))
        return out, form[:at] + junk + form[at:]
    return out, None


_ACCEPTS = [None, "application/json", "text/xml", "*/*", "application/json;q=0.5, text/xml",
            "text/xml;q=0.1, application/json", "application/json;q=0"]
_TRACES = [None, "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1", "", "\x01", "\xe9"]


def _path(draw: Any) -> str:
    return str(draw(st.sampled_from(["/", "/", f"/{ACCOUNT}/std", f"/{ACCOUNT}/fifo.fifo",
                                     f"/{ACCOUNT}/missing", "/a/b/c", "//"])))


def _common_headers(draw: Any) -> dict[str, str]:
    headers = {"host": HOST}
    trace = draw(st.sampled_from(_TRACES))
    if trace is not None:
        headers["x-amzn-trace-id"] = trace
    return headers


def _accepts_json(accept: str | None) -> bool:
    return accept in ("application/json", "text/xml;q=0.1, application/json")


@st.composite
def json_wire(draw: Any, mutate: bool) -> Wire:
    action = draw(st.sampled_from(ACTIONS))
    doc: Any = draw(_INPUTS[action])
    raw: bytes | None = None
    if mutate:
        doc, raw = draw(_json_mutation(doc))
    headers = {**_common_headers(draw), "content-type": "application/x-amz-json-1.0",
               "x-amz-target": f"AmazonSQS.{action}"}
    if raw == _BAD_TARGET:
        raw = None
        headers["x-amz-target"] = draw(st.sampled_from(
            ["AmazonSQS.Nope", "AmazonSQS.", "Other.SendMessage", "AmazonSQS.sendmessage", ""]))
    accept = draw(st.sampled_from(_ACCEPTS))
    if accept is not None:
        headers["accept"] = accept
    body = raw if raw is not None else dump_json(doc)
    return Wire(action, "json", Request("POST", _path(draw), "", headers, body, "127.0.0.1:1"))


@st.composite
def query_wire(draw: Any, mutate: bool) -> Wire:
    action = draw(st.sampled_from(ACTIONS))
    params = draw(_INPUTS[action])
    fields: list[tuple[str, str]] = [("Action", action), ("Version", "2012-11-05")]
    _form_fields(params, OPERATIONS[action][0], "", fields)
    raw: bytes | None = None
    if mutate:
        fields, raw = draw(_query_mutation(fields))
    headers = _common_headers(draw)
    accept = draw(st.sampled_from(_ACCEPTS))
    if accept is not None:
        headers["accept"] = accept
    expect = "query-json" if _accepts_json(accept) else "query"
    form = raw if raw is not None else urlencode(fields, quote_via=quote).encode()
    if draw(st.booleans()):
        request = Request("GET", _path(draw), form.decode("latin-1"), headers, b"",
                          "127.0.0.1:1")
    else:
        headers["content-type"] = "application/x-www-form-urlencoded; charset=utf-8"
        request = Request("POST", _path(draw), "", headers, form, "127.0.0.1:1")
    return Wire(action, expect, request)


# ---- the properties -------------------------------------------------------------------------


def _models() -> dict[str, botocore.model.ServiceModel | None]:
    models: dict[str, botocore.model.ServiceModel | None] = {"json": _JSON_MODEL}
    query_dir = Path(os.environ.get("FERRY_QUERY_DATA",
                                    Path(__file__).resolve().parents[2] / ".venv" / "query-data"))
    if (query_dir / "sqs" / "2012-11-05" / "service-2.json").exists():
        qloader = botocore.loaders.Loader(extra_search_paths=[str(query_dir)],
                                          include_default_search_paths=False)
        models["query"] = botocore.model.ServiceModel(
            qloader.load_service_model("sqs", "service-2", "2012-11-05"), "sqs")
    else:
        # Without the Query model, Query answers are still checked as XML; only
        # botocore's parse of them is skipped.
        models["query"] = None
    return models


_MODELS = _models()
_PARSERS = {"json": botocore.parsers.create_parser("json"),
            "query": botocore.parsers.create_parser("query")}


def _headers_of(response: Response) -> dict[str, str]:
    return {k.lower(): v for k, v in response.headers}


def _check_json(wire: Wire, response: Response) -> None:
    headers = _headers_of(response)
    assert headers["content-type"] == "application/x-amz-json-1.0", headers
    doc = orjson.loads(response.body)
    assert isinstance(doc, dict), doc
    if response.status >= 400:
        type_ = doc.get("__type", "")
        namespace, _hash, shape = type_.partition("#")
        assert shape in ERRORS, f"unknown error shape {shape!r}"
        expected = "com.amazon.coral.service" if shape in CORAL_SHAPES else "com.amazonaws.sqs"
        assert namespace == expected, doc
        code, status, fault = ERRORS[shape]
        assert response.status == status, (shape, response.status)
        if shape in BARE_SHAPES:
            assert doc == {"__type": type_} and "x-amzn-query-error" not in headers, doc
            return
        assert headers["x-amzn-query-error"] == f"{code};{fault}", headers
        assert isinstance(doc.get("message"), str), doc
        return
    _botocore_parse("json", wire.action, response)


def _check_query(wire: Wire, response: Response) -> None:
    headers = _headers_of(response)
    if response.status == 404 and response.body == b"<UnknownOperationException/>":
        return  # SQS's answer to a request without an Action, in either rendering
    if wire.expect == "query-json":
        assert headers["content-type"] == "application/json", headers
        doc = orjson.loads(response.body)
        if response.status >= 400:
            error = doc["Error"]
            assert error["Code"] in QUERY_CODES, f"unknown error code {error['Code']!r}"
            assert error["Type"] in ("Sender", "Receiver") and isinstance(error["Message"], str)
            assert doc["RequestId"] == headers["x-amzn-requestid"]
            return
        (root,) = doc
        assert root.endswith("Response") and root[:-len("Response")] in OPERATIONS, root
        assert doc[root]["ResponseMetadata"]["RequestId"] == headers["x-amzn-requestid"]
        return
    assert headers["content-type"] == "text/xml", headers
    root = ET.fromstring(response.body)
    if response.status >= 400:
        assert root.tag == f"{{{XMLNS}}}ErrorResponse", root.tag
        code = root.findtext(f"{{{XMLNS}}}Error/{{{XMLNS}}}Code")
        assert code in QUERY_CODES, f"unknown error code {code!r}"
        assert root.findtext(f"{{{XMLNS}}}Error/{{{XMLNS}}}Type") in ("Sender", "Receiver")
        return
    action = root.tag.removeprefix(f"{{{XMLNS}}}").removesuffix("Response")
    assert action in OPERATIONS, root.tag
    _botocore_parse("query", action, response)


def _botocore_parse(protocol: str, action: str, response: Response) -> None:
    model = _MODELS[protocol]
    if model is None:
        return
    parsed = _PARSERS[protocol].parse(
        {"status_code": response.status, "headers": _headers_of(response),
         "body": response.body}, model.operation_model(action).output_shape)
    assert "Error" not in parsed or not parsed["Error"], parsed


def check(wire: Wire) -> Response:
    """Send ``wire`` to a freshly seeded service and check every property of the answer;
    a failure names the request and the answer."""
    seeded = _seeded()
    _LOG_ERRORS.records.clear()
    response = _LOOP.run_until_complete(seeded.gateway.handle(wire.request))
    try:
        _check_answer(wire, response)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrequest: {wire.describe()}\n"
                             f"answer: {response.status} {response.body[:2000]!r}") from None
    return response


def _check_answer(wire: Wire, response: Response) -> None:
    logged = []
    for record in _LOG_ERRORS.records:
        trace = logging.Formatter().formatException(record.exc_info) if record.exc_info else ""
        logged.append(f"{record.levelname} {record.name}: {record.getMessage()}\n{trace}")
    assert not logged, "logged at ERROR:\n" + "\n".join(logged)
    assert response.status < 500, f"status {response.status}"
    assert any(k.lower() == "x-amzn-requestid" for k, _v in response.headers)
    if wire.expect == "json":
        _check_json(wire, response)
    else:
        _check_query(wire, response)


_SETTINGS = settings(max_examples=_EXAMPLES, deadline=_DEADLINE_MS, derandomize=True,
                     database=None, print_blob=True,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_SETTINGS
@given(json_wire(mutate=False))
def test_valid_json_requests(wire: Wire) -> None:
    check(wire)


@_SETTINGS
@given(query_wire(mutate=False))
def test_valid_query_requests(wire: Wire) -> None:
    check(wire)


@_SETTINGS
@given(json_wire(mutate=True))
def test_mutated_json_requests(wire: Wire) -> None:
    check(wire)


@_SETTINGS
@given(query_wire(mutate=True))
def test_mutated_query_requests(wire: Wire) -> None:
    check(wire)


# ---- deterministic sweeps: every member position, every integer member -----------------------


def _member_paths(desc: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path of member names through structures, list items and map values, desc)."""
    if isinstance(desc, str):
        return
    kind = desc[0]
    if kind == "S":
        for member, _key, _name, child in desc[1]:
            yield (*prefix, member), child
            yield from _member_paths(child, (*prefix, member))
    elif kind == "L":
        yield (*prefix, "[]"), desc[2]
        yield from _member_paths(desc[2], (*prefix, "[]"))
    else:
        yield (*prefix, "{}"), desc[5]
        yield from _member_paths(desc[5], (*prefix, "{}"))


def _place(path: tuple[str, ...], leaf: Any) -> Any:
    """A document holding ``leaf`` at ``path`` (lists and maps of one item)."""
    if not path:
        return leaf
    head, rest = path[0], path[1:]
    if head == "[]":
        return [_place(rest, leaf)]
    if head == "{}":
        return {"k": _place(rest, leaf)}
    return {head: _place(rest, leaf)}


_POSITIONS = [(action, path, desc) for action in ACTIONS
              for path, desc in _member_paths(OPERATIONS[action][0])]


def _queue_url_for(action: str) -> dict[str, Any]:
    members = {m for m, _k, _n, _d in OPERATIONS[action][0][1]}
    return {"QueueUrl": url("std")} if "QueueUrl" in members else {}


@pytest.mark.parametrize("depth", [1000, 1024, 1025])
def test_deep_nesting_in_every_member_position(depth: int) -> None:
    for action, path, _desc in _POSITIONS:
        for shape in ("list", "object"):
            doc = {**_queue_url_for(action), **_place(path, _nested(depth, "x", shape))}
            wire = Wire(action, "json", Request(
                "POST", "/", "", {"host": HOST, "content-type": "application/x-amz-json-1.0",
                                  "x-amz-target": f"AmazonSQS.{action}"},
                dump_json(doc), "127.0.0.1:1"))
            response = check(wire)
            assert response.status == 400, (action, path, shape, response.body)


# Queue attributes whose values are JSON documents the core parses.
_JSON_ATTRIBUTES = ("Policy", "RedrivePolicy", "RedriveAllowPolicy")


def _string_positions() -> list[tuple[str, tuple[str, ...]]]:
    out = []
    for action, path, desc in _POSITIONS:
        if desc != "s":
            continue
        if path[-2:] == ("Attributes", "{}") and action in ("CreateQueue", "SetQueueAttributes"):
            out.extend((action, (*path[:-1], name)) for name in _JSON_ATTRIBUTES)
        else:
            out.append((action, path))
    return out


@pytest.mark.parametrize("text", _JSON_TEXTS[:3], ids=["array-1000", "object-3000", "digits"])
def test_json_text_in_every_string_member(text: str) -> None:
    # Fails while the core parses queue policies with json.loads, which raises
    # RecursionError (not ValueError) on deep nesting: a 500 for SetQueueAttributes
    # or CreateQueue with such a Policy, RedrivePolicy or RedriveAllowPolicy.
    for action, path in _string_positions():
        doc = {**_queue_url_for(action), **_place(path, text)}
        if path == ("QueueUrl",):
            doc = _place(path, text)
        check(Wire(action, "json", _json_request(action, doc)))


def _integer_positions() -> list[tuple[str, tuple[str, ...]]]:
    return [(action, path) for action, path, desc in _POSITIONS if desc == "i"]


def test_every_integer_member_is_found() -> None:
    # DelaySeconds twice (SendMessage, batch entries), VisibilityTimeout three times, ...
    assert len(_integer_positions()) == 11


@pytest.mark.parametrize("number", ["9" * 5000, "-" + "9" * 5000, "2147483648", "-2147483649",
                                    "1e400", "99999999999999999999"])
def test_absurd_json_integers_in_every_integer_member(number: str) -> None:
    for action, path in _integer_positions():
        doc = {**_queue_url_for(action), **_place(path, Raw(number.encode()))}
        wire = Wire(action, "json", Request(
            "POST", "/", "", {"host": HOST, "content-type": "application/x-amz-json-1.0",
                              "x-amz-target": f"AmazonSQS.{action}"},
            dump_json(doc), "127.0.0.1:1"))
        response = check(wire)
        assert response.status == 400, (action, path, response.body)


def _query_key(action: str, path: tuple[str, ...]) -> str:
    """The Query key of an integer member (list and map items at index 1)."""
    desc = OPERATIONS[action][0]
    parts: list[str] = []
    for name in path:
        if name == "[]":
            parts.append("1")
            desc = desc[2]
            continue
        for member, key, _n, child in desc[1]:
            if member == name:
                parts.append(key)
                desc = child
                break
    return ".".join(parts)


@pytest.mark.parametrize("number", ["9" * 5000, "-" + "9" * 5000, "2147483648", "-2147483649",
                                    "\u00b2", "\u0661", "0" * 5000 + "7"])
def test_absurd_query_integers_in_every_integer_member(number: str) -> None:
    for action, path in _integer_positions():
        fields = [("Action", action), *_queue_url_for(action).items(),
                  (_query_key(action, path), number)]
        wire = Wire(action, "query", Request(
            "POST", "/", "", {"host": HOST, "content-type": "application/x-www-form-urlencoded"},
            urlencode(fields).encode(), "127.0.0.1:1"))
        response = check(wire)
        if number.startswith("0"):
            assert b"Must be an integer" not in response.body, (action, path)
        else:
            assert response.status == 400, (action, path, response.body)
            assert b"Must be an integer" in response.body, (action, path, response.body)
