"""Unit tests of the one-queue message state machine (ferrymq._core._queue)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ferrymq._core._effects import Effect, MessageRemoved, MessageStored
from ferrymq._core._errors import SqsError
from ferrymq._core._messages import (
    NAMES_PER_LIST_MAX,
    decode_receipt_handle,
    encode_receipt_handle,
)
from ferrymq._core._queue import MessageQueue
from ferrymq._core._settings import QueueSettings

T0 = 1_700_000_000_000  # an injected clock: just an int of epoch ms


class SeqEntropy:
    """Deterministic Entropy test double: numbered ids and tokens."""

    def __init__(self, prefix: str = "") -> None:
        self.ids = 0
        self.tokens = 0
        self.prefix = prefix

    def message_id(self) -> str:
        self.ids += 1
        return f"{self.prefix}m{self.ids:06d}"

    def token(self) -> str:
        self.tokens += 1
        return f"tok{self.tokens:016d}"


def make(fifo: bool = False, name: str | None = None, **settings: Any) -> MessageQueue:
    name = name or ("q.fifo" if fifo else "q")
    return MessageQueue(name, f"arn:aws:sqs:us-east-1:123456789012:{name}",
                        QueueSettings(fifo=fifo, **settings))


class Harness:
    """A queue plus its clock, entropy and the log of every effect it emitted."""

    def __init__(self, queue: MessageQueue, dlq: MessageQueue | None = None) -> None:
        self.q = queue
        self.dlq = dlq
        self.now = T0
        self.entropy = SeqEntropy()
        self.effects: list[Effect] = []

    def send(self, body: str = "body", **params: Any) -> dict[str, Any]:
        response, effects = self.q.send_message(
            {"MessageBody": body, **params}, self.now, self.entropy, "AIDSENDER"
        )
        self.effects += effects
        return dict(response)

    def receive(self, **params: Any) -> list[dict[str, Any]]:
        response, effects, _ = self.q.receive_message(params, self.now, self.entropy, self.dlq)
        self.effects += effects
        assert "Messages" not in response or response["Messages"]
        return list(response.get("Messages", []))

    def delete(self, handle: str) -> None:
        _, effects = self.q.delete_message({"ReceiptHandle": handle}, self.now)
        self.effects += effects

    def change(self, handle: str, timeout_s: Any) -> None:
        _, effects = self.q.change_message_visibility(
            {"ReceiptHandle": handle, "VisibilityTimeout": timeout_s}, self.now
        )
        self.effects += effects

    def bodies(self, **params: Any) -> list[str]:
        return [m["Body"] for m in self.receive(**params)]

    def rebuilt(self) -> MessageQueue:
        fresh = MessageQueue(self.q.name, self.q.arn, self.q.settings)
        for effect in self.effects:
            if getattr(effect, "queue", None) == self.q.name or (
                isinstance(effect, MessageStored) and effect.record.queue == self.q.name
            ):
                fresh.apply(effect)
        return fresh


def assert_same_state(a: MessageQueue, b: MessageQueue, now_ms: int) -> None:
    assert a.snapshot() == b.snapshot()
    assert a.counts(now_ms) == b.counts(now_ms)
    assert a.next_visible_ms() == b.next_visible_ms()
    assert a.dedup_entries(now_ms) == b.dedup_entries(now_ms)


def sqs_error(excinfo: pytest.ExceptionInfo[SqsError]) -> tuple[str, str]:
    return excinfo.value.shape, excinfo.value.message


# ---- send validation ----------------------------------------------------------


def test_send_returns_id_and_md5_and_omits_attribute_md5() -> None:
    h = Harness(make())
    response = h.send("hello")
    assert response == {
        "MessageId": "m000001", "MD5OfMessageBody": "5d41402abc4b2a76b9719d911017c592"
    }


def test_send_with_attributes_returns_attribute_md5() -> None:
    h = Harness(make())
    response = h.send("hello", MessageAttributes={"a": {"DataType": "String", "StringValue": "v"}})
    assert response["MD5OfMessageAttributes"] == "a18cbb58171ebf4ce88d9fb787f9210b"


def test_empty_body_is_missing_parameter() -> None:
    h = Harness(make())
    with pytest.raises(SqsError) as info:
        h.send("")
    assert sqs_error(info) == (
        "MissingRequiredParameterException", "The request must contain the parameter MessageBody."
    )


ALLOWED_CHARS = ("the set of allowed characters is #x9 | #xA | #xD | [#x20-#xD7FF] | "
                 "[#xE000-#xFFFD] | [#x10000-#x10FFFF].")


@pytest.mark.parametrize(("body", "char"), [
    ("a\x01b", "#x1"), ("\x00", "#x0"), ("\ud800", "#xD800"), ("\ufffe", "#xFFFE"),
    ("bell\x07, then \x01", "#x7"), ("x\uffff", "#xFFFF"), ("\x1b[0m", "#x1B"),
])
def test_invalid_characters(body: str, char: str) -> None:
    # AWS's text names the first bad character in upper-case hex ('#x7', '#x1', '#xFFFF').
    h = Harness(make())
    with pytest.raises(SqsError) as info:
        h.send(body)
    assert sqs_error(info) == (
        "InvalidMessageContents",
        f"Invalid binary character '{char}' was found in the message body, {ALLOWED_CHARS}")


def test_allowed_characters_round_trip() -> None:
    h = Harness(make())
    body = "\t\n\r x\ud7ff\ue000\ufffd\U00010000\U0010ffff"
    h.send(body)
    assert h.bodies() == [body]


def test_size_limit_counts_body_and_attributes() -> None:
    h = Harness(make(message_size_bytes_max=1024))
    h.send("x" * 1024)
    attrs = {"ab": {"DataType": "String", "StringValue": "x" * 10}}  # 2 + 6 + 10 = 18
    h.send("x" * (1024 - 18), MessageAttributes=attrs)
    with pytest.raises(SqsError) as info:
        h.send("x" * (1024 - 17), MessageAttributes=attrs)
    assert sqs_error(info) == (
        "InvalidParameterValueException",
        "One or more parameters are invalid. Reason: Message must be shorter than 1024 bytes.",
    )


@pytest.mark.parametrize(
    ("attrs", "fragment"),
    [
        ({f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(11)},
         "Number of message attributes [11] exceeds the allowed maximum [10]."),
        ({"ErrorDetails": {"DataType": "String", "StringValue": ""}},
         "Message (user) attribute 'ErrorDetails' must contain a non-empty value of type "
         "'String'."),
        ({"n": {"DataType": "Number", "StringValue": "abc"}}, "to a number"),
        ({"b": {"DataType": "Binary"}}, "non-empty value of type 'Binary'"),
        ({"t": {"DataType": "Float", "StringValue": "1"}}, "supported type prefixes"),
        ({"t": {"StringValue": "1"}}, "non-empty message attribute type"),
        ({"AWS.x": {"DataType": "String", "StringValue": "1"}}, "reserved"),
        ({"a..b": {"DataType": "String", "StringValue": "1"}}, "periods"),
        ({".a": {"DataType": "String", "StringValue": "1"}}, "period"),
        ({"a b": {"DataType": "String", "StringValue": "1"}}, "can only contain"),
        ({"a": "notadict"}, "structure"),
    ],
)
def test_attribute_validation(attrs: dict[str, Any], fragment: str) -> None:
    h = Harness(make())
    with pytest.raises(SqsError) as info:
        h.send("x", MessageAttributes=attrs)
    assert info.value.shape == "InvalidParameterValueException"
    assert fragment in info.value.message


@pytest.mark.parametrize("name", ["attr.1øßä", "Größe", "名前", "x٣"])
def test_attribute_names_may_use_letters_and_digits_beyond_ascii(name: str) -> None:
    # Recorded on AWS: "attr.1øßä" is accepted (the documented rule says A-Z a-z 0-9 _ - .).
    h = Harness(make())
    h.send("x", MessageAttributes={name: {"DataType": "String", "StringValue": "v"}})
    (m,) = h.receive(MessageAttributeNames=["All"])
    assert list(m["MessageAttributes"]) == [name]


@pytest.mark.parametrize("name", ["Invalid-!-attr", 'Invalid-"-attr', "Invalid-§-attr",
                                  "Invalid-(-attr", "Invalid-?-attr", "a×b", "a²b", "a b"])
def test_attribute_names_refuse_symbols_and_spaces(name: str) -> None:
    # The characters AWS refused in the same recording, and non-letter symbols.
    h = Harness(make())
    with pytest.raises(SqsError) as info:
        h.send("x", MessageAttributes={name: {"DataType": "String", "StringValue": "v"}})
    assert info.value.shape == "InvalidParameterValueException"
    assert "can only contain" in info.value.message


@pytest.mark.parametrize(("value", "char"), [
    (f"Invalid-{chr(8)},{chr(11)}", "#x8"), ("\x00", "#x0"), ("\ufffe", "#xFFFE"),
])
def test_control_characters_in_attribute_values_are_invalid_parameter_values(
    value: str, char: str
) -> None:
    h = Harness(make())
    with pytest.raises(SqsError) as info:
        h.send("x", MessageAttributes={"a": {"DataType": "String", "StringValue": value}})
    assert sqs_error(info) == (
        "InvalidParameterValueException",
        f"Invalid binary character '{char}' was found in the message attribute 'a' value, "
        f"{ALLOWED_CHARS}")


def test_empty_attribute_name_text() -> None:
    h = Harness(make())
    with pytest.raises(SqsError) as info:
        h.send("x", MessageAttributes={"": {"DataType": "String", "StringValue": "v"}})
    assert sqs_error(info) == (
        "InvalidParameterValueException",
        "The request must contain non-empty message attribute name.")


@pytest.mark.parametrize("value", [
    {"DataType": "String", "StringValue": "v", "StringListValues": ["a", "b"]},
    {"DataType": "String", "StringValue": "v", "StringListValues": []},
    {"DataType": "Binary", "BinaryValue": b"v", "BinaryListValues": []},
    {"DataType": "String", "StringListValues": ["a"]},
    {"DataType": "Nonsense", "BinaryListValues": [b"a"]},
])
def test_attribute_list_values_are_unsupported_even_empty(value: dict[str, Any]) -> None:
    # AWS: UnsupportedOperation, also for empty lists (ruby-shoryuken/shoryuken#769).
    h = Harness(make())
    with pytest.raises(SqsError) as info:
        h.send("x", MessageAttributes={"a": value})
    assert sqs_error(info) == (
        "UnsupportedOperation",
        "Message attribute list values in SendMessage operation are not supported.")
    assert info.value.code == "AWS.SimpleQueueService.UnsupportedOperation"
    with pytest.raises(SqsError) as info:
        h.send("x", MessageSystemAttributes={"AWSTraceHeader": value})
    assert info.value.shape == "UnsupportedOperation"


def test_attribute_list_values_fail_the_whole_batch() -> None:
    h = Harness(make())
    listed = {"a": {"DataType": "String", "StringValue": "v", "StringListValues": []}}
    entries = [
        {"Id": "ok", "MessageBody": "fine"},
        {"Id": "bad", "MessageBody": "\x00"},  # a per-entry failure comes first
        {"Id": "listed", "MessageBody": "x", "MessageAttributes": listed},
    ]
    with pytest.raises(SqsError) as info:
        h.q.send_message_batch({"Entries": entries}, h.now, h.entropy, "AIDSENDER")
    assert sqs_error(info) == (
        "UnsupportedOperation",
        "Message attribute list values in SendMessageBatch operation are not supported.")
    assert h.q.snapshot() == []


@pytest.mark.parametrize("value", [
    "0", "-0.000", "+5", ".5", "5.", "1e5", "1E+5", "-1.5e3", "9" * 38, "1" + "0" * 120,
    "0." + "0" * 100 + "1", "1" + "0" * 126, "1e126", "9.9e125", "1e-128", "-1e-128",
    "1" + "0" * 5000 + "e-5000", "0e99999999999", "12345678901234567890123456789012345678",
    "0.0000000000000000000000000000000000000012345678901234567890123456789012345678",
])
def test_number_attributes_within_sqs_range_are_accepted(value: str) -> None:
    h = Harness(make())
    h.send("x", MessageAttributes={"n": {"DataType": "Number", "StringValue": value}})


@pytest.mark.parametrize("value", [
    "9" * 39, "1" * 5000, "1.000000000000000000000000000000000000001", "1e127", "2e126",
    "1" + "0" * 127, "1e-129", "0." + "0" * 128 + "1", "1e" + "9" * 5000, "1e-" + "9" * 20,
    "abc", "", " 1", "1 ", "1_000", "Infinity", "NaN", "0x10", "1e", "e5", ".", "--1", "١",
])
def test_number_attributes_beyond_sqs_precision_or_range_are_refused(value: str) -> None:
    h = Harness(make())
    with pytest.raises(SqsError) as info:
        h.send("x", MessageAttributes={"n": {"DataType": "Number", "StringValue": value}})
    assert info.value.shape == "InvalidParameterValueException"
    if value:
        assert info.value.message == (
            "Can't cast the value of message (user) attribute 'n' to a number.")


def test_attribute_types_with_labels_accepted() -> None:
    h = Harness(make())
    h.send("x", MessageAttributes={
        "n": {"DataType": "Number.float", "StringValue": "-1.5e3"},
        "b": {"DataType": "Binary.gif", "BinaryValue": b"\x00"},
        "s": {"DataType": "String.x", "StringValue": "y"},
    })
    (message,) = h.receive(MessageAttributeNames=["All"])
    assert message["MessageAttributes"]["b"] == {"DataType": "Binary.gif", "BinaryValue": b"\x00"}
    assert message["MessageAttributes"]["n"] == {
        "DataType": "Number.float", "StringValue": "-1.5e3"
    }


def test_system_attributes_only_trace_header() -> None:
    h = Harness(make())
    trace = {"AWSTraceHeader": {"DataType": "String", "StringValue": "Root=1-abc"}}
    response = h.send("x", MessageSystemAttributes=trace)
    assert len(response["MD5OfMessageSystemAttributes"]) == 32
    assert "MD5OfMessageAttributes" not in response
    with pytest.raises(SqsError) as info:
        h.send("x", MessageSystemAttributes={"Other": {"DataType": "String", "StringValue": "1"}})
    assert info.value.shape == "InvalidParameterValueException"
    (message,) = h.receive(MessageSystemAttributeNames=["AWSTraceHeader"])
    assert message["Attributes"] == {"AWSTraceHeader": "Root=1-abc"}


@pytest.mark.parametrize("bad", ["5", True, 1.5, -1, 901])
def test_delay_seconds_type_and_range(bad: Any) -> None:
    h = Harness(make())
    with pytest.raises(SqsError) as info:
        h.send("x", DelaySeconds=bad)
    assert info.value.shape == "InvalidParameterValueException"
    assert info.value.message.startswith(f"Value {bad} for parameter DelaySeconds is invalid.")


def test_dedup_id_on_standard_queue_rejected_group_id_allowed() -> None:
    h = Harness(make())
    with pytest.raises(SqsError) as info:
        h.send("x", MessageDeduplicationId="d")
    assert "not valid for this queue type" in info.value.message
    h.send("x", MessageGroupId="tenant-1")
    (message,) = h.receive(AttributeNames=["All"])
    assert message["Attributes"]["MessageGroupId"] == "tenant-1"
    assert "SequenceNumber" not in message["Attributes"]


# ---- receive ----------------------------------------------------------------


def test_empty_receive_has_no_messages_key() -> None:
    q = make()
    response, effects, wait_ms = q.receive_message({}, T0, SeqEntropy(), None)
    assert response == {} and effects == [] and wait_ms == 0


def test_wait_time_defaults_to_queue_and_is_validated() -> None:
    q = make(receive_wait_ms=7000)
    assert q.receive_message({}, T0, SeqEntropy(), None)[2] == 7000
    assert q.receive_message({"WaitTimeSeconds": 3}, T0, SeqEntropy(), None)[2] == 3000
    with pytest.raises(SqsError) as info:
        q.receive_message({"WaitTimeSeconds": 21}, T0, SeqEntropy(), None)
    assert info.value.message == (
        "Value 21 for parameter WaitTimeSeconds is invalid. Reason: Must be >= 0 and <= 20, "
        "if provided."
    )


@pytest.mark.parametrize("bad", [0, 11, "3", False])
def test_max_number_of_messages_validated(bad: Any) -> None:
    with pytest.raises(SqsError) as info:
        make().receive_message({"MaxNumberOfMessages": bad}, T0, SeqEntropy(), None)
    assert info.value.shape == "InvalidParameterValueException"
    if bad == 11:
        assert info.value.message == (
            "Value 11 for parameter MaxNumberOfMessages is invalid. Reason: Must be between 1 "
            "and 10, if provided."
        )


def test_receive_order_and_max() -> None:
    h = Harness(make())
    for i in range(15):
        h.send(f"b{i}")
    assert h.bodies(MaxNumberOfMessages=10) == [f"b{i}" for i in range(10)]
    assert h.bodies(MaxNumberOfMessages=10) == [f"b{i}" for i in range(10, 15)]
    assert h.receive() == []


def test_receive_system_attributes_and_counts() -> None:
    h = Harness(make(visibility_timeout_ms=1000))
    h.send("x")
    h.now += 5
    (first,) = h.receive(AttributeNames=["SentTimestamp"], MessageSystemAttributeNames=[
        "ApproximateReceiveCount", "ApproximateFirstReceiveTimestamp", "SenderId", "Bogus"])
    assert first["Attributes"] == {
        "SentTimestamp": str(T0), "ApproximateReceiveCount": "1",
        "ApproximateFirstReceiveTimestamp": str(T0 + 5), "SenderId": "AIDSENDER",
    }
    assert "MessageAttributes" not in first and "MD5OfMessageAttributes" not in first
    h.now += 1000
    (second,) = h.receive(AttributeNames=["All"])
    assert second["Attributes"]["ApproximateReceiveCount"] == "2"
    assert second["Attributes"]["ApproximateFirstReceiveTimestamp"] == str(T0 + 5)
    assert second["ReceiptHandle"] != first["ReceiptHandle"]
    assert second["MD5OfBody"] == first["MD5OfBody"]
    assert "DeadLetterQueueSourceArn" not in second["Attributes"]


def test_message_attribute_filters_and_md5_of_returned_only() -> None:
    h = Harness(make(visibility_timeout_ms=0))
    attrs = {
        "Foo": {"DataType": "String", "StringValue": "Bar"},
        "app.x": {"DataType": "String", "StringValue": "1"},
        "app.y": {"DataType": "Number", "StringValue": "2"},
    }
    full = h.send("x", MessageAttributes=attrs)["MD5OfMessageAttributes"]
    (m,) = h.receive()
    assert "MessageAttributes" not in m
    (m,) = h.receive(MessageAttributeNames=["Foo"])
    assert m["MD5OfMessageAttributes"] == "ae7155c6026991b6d54b11589678bf9c"
    assert list(m["MessageAttributes"]) == ["Foo"]
    (m,) = h.receive(MessageAttributeNames=["app.*"])
    assert sorted(m["MessageAttributes"]) == ["app.x", "app.y"]
    (m,) = h.receive(MessageAttributeNames=[".*"])
    assert m["MD5OfMessageAttributes"] == full and len(m["MessageAttributes"]) == 3
    (m,) = h.receive(MessageAttributeNames=["nothing"])
    assert "MessageAttributes" not in m and "MD5OfMessageAttributes" not in m


@pytest.mark.parametrize(("names", "expected"), [
    (["All"], ["General", "Hello", "Help.Me"]),
    (["*"], ["General", "Hello", "Help.Me"]),
    ([".*"], ["General", "Hello", "Help.Me"]),
    (["Foo", "Help"], []),
    (["Hello", "General"], ["General", "Hello"]),
    (["Foo", "Hello"], ["Hello"]),
    (["Hel.*"], ["Hello", "Help.Me"]),
    (["Help.*"], ["Help.Me"]),
    (["AWS."], []),
    (["..foo"], []),
])
def test_message_attribute_name_filters_as_recorded(
    names: list[str], expected: list[str]
) -> None:
    # tests/aws/services/sqs test_receive_message_message_attribute_names_filters,
    # recorded on AWS: "*" is everything and "Hel.*" is the prefix "Hel".
    h = Harness(make(visibility_timeout_ms=0))
    h.send("msg", MessageAttributes={
        "Help.Me": {"DataType": "String", "StringValue": "Me"},
        "Hello": {"DataType": "String", "StringValue": "There"},
        "General": {"DataType": "String", "StringValue": "Kenobi"},
    })
    (m,) = h.receive(MessageAttributeNames=names)
    assert sorted(m.get("MessageAttributes", {})) == expected
    recorded_md5 = {
        ("General", "Hello", "Help.Me"): "4c360f3fdafd970e05fae2f149d997f5",
        ("General", "Hello"): "fca026605781cb4126a1e9044df24232",
        ("Hello",): "a311262e065454b75da111d535b8dacd",
        ("Hello", "Help.Me"): "83fee93c1bcd8b9a5a923ffacdc636c7",
    }
    if tuple(expected) in recorded_md5:
        assert m["MD5OfMessageAttributes"] == recorded_md5[tuple(expected)]
    elif not expected:
        assert "MD5OfMessageAttributes" not in m


def test_system_attribute_names_all_and_exact_only() -> None:
    h = Harness(make(visibility_timeout_ms=0))
    h.send("msg")
    for key in ("AttributeNames", "MessageSystemAttributeNames"):
        (m,) = h.receive(**{key: ["All"]})
        assert sorted(m["Attributes"]) == [
            "ApproximateFirstReceiveTimestamp", "ApproximateReceiveCount", "SenderId",
            "SentTimestamp"]
        (m,) = h.receive(**{key: ["SenderId", "SequenceNumber"]})
        assert m["Attributes"] == {"SenderId": "AIDSENDER"}


@pytest.mark.parametrize("key", [
    "MessageAttributeNames", "AttributeNames", "MessageSystemAttributeNames"])
def test_receive_name_lists_are_bounded_before_use(key: str) -> None:
    h = Harness(make())
    h.send("x")
    h.receive(**{key: ["All"] * NAMES_PER_LIST_MAX})
    with pytest.raises(SqsError) as info:
        h.receive(**{key: ["All"] * (NAMES_PER_LIST_MAX + 1)})
    assert sqs_error(info) == (
        "InvalidParameterValueException",
        f"Value for parameter {key} is invalid. Reason: at most {NAMES_PER_LIST_MAX} values "
        f"are allowed, {NAMES_PER_LIST_MAX + 1} were given.")
    # Refused before anything else is looked at, even the type of each item.
    with pytest.raises(SqsError):
        h.receive(**{key: [1] * (NAMES_PER_LIST_MAX + 1)})


def test_receive_with_many_filter_names_stays_cheap() -> None:
    h = Harness(make(visibility_timeout_ms=0))
    attrs = {f"a{i}": {"DataType": "String", "StringValue": "v"} for i in range(10)}
    for _ in range(10):
        h.send("x", MessageAttributes=attrs)
    names = [f"n{i}.*" for i in range(NAMES_PER_LIST_MAX - 1)] + ["a9"]
    start = time.perf_counter()
    for _ in range(20):
        for m in h.receive(MaxNumberOfMessages=10, MessageAttributeNames=names):
            assert list(m["MessageAttributes"]) == ["a9"]
    # ~0.05 s with the filter compiled once per receive; recompiling it for each message
    # rendered made it ~10 times slower.
    assert time.perf_counter() - start < 1


def test_visibility_timeout_and_per_receive_override() -> None:
    h = Harness(make(visibility_timeout_ms=30_000))
    h.send("x")
    assert h.bodies(VisibilityTimeout=5) == ["x"]
    assert h.q.counts(h.now) == (0, 1, 0)
    assert h.q.next_visible_ms() == T0 + 5000
    h.now += 4999
    assert h.receive() == []
    h.now += 1
    assert h.bodies() == ["x"]  # default 30 s applies now
    h.now += 29_999
    assert h.receive() == []
    h.now += 1
    assert h.bodies() == ["x"]


def test_visibility_zero_returns_message_once_per_receive() -> None:
    h = Harness(make())
    h.send("a")
    h.send("b")
    assert h.bodies(VisibilityTimeout=0, MaxNumberOfMessages=10) == ["a", "b"]
    assert h.bodies(VisibilityTimeout=0, MaxNumberOfMessages=10) == ["a", "b"]


def test_delay_queue_and_per_message_delay() -> None:
    h = Harness(make(delay_ms=10_000))
    h.send("queue-delay")
    h.send("no-delay", DelaySeconds=0)
    h.send("long", DelaySeconds=20)
    assert h.q.counts(h.now) == (1, 0, 2)
    assert h.bodies(MaxNumberOfMessages=10) == ["no-delay"]
    assert h.q.next_visible_ms() == T0 + 10_000
    h.now += 10_000
    assert h.q.counts(h.now) == (1, 1, 1)
    assert h.bodies(MaxNumberOfMessages=10) == ["queue-delay"]
    h.now += 10_000
    assert h.bodies(MaxNumberOfMessages=10) == ["long"]


def test_inflight_limit_standard_over_limit_fifo_empty() -> None:
    h = Harness(make())
    h.q.inflight_messages_max = 3
    for _ in range(5):
        h.send()
    assert len(h.receive(MaxNumberOfMessages=10)) == 3
    with pytest.raises(SqsError) as info:
        h.receive()
    assert info.value.shape == "OverLimit" and info.value.status == 403
    # AWS's text (a raw response), line break included.
    assert info.value.message == (
        "Too many messages have been received without being deleted.\nPlease delete your "
        "received messages or let them timeout before receiving more.")
    f = Harness(make(fifo=True, content_based_dedup=True))
    f.q.inflight_messages_max = 2
    for i in range(4):
        f.send(f"b{i}", MessageGroupId=f"g{i}")
    assert len(f.receive(MaxNumberOfMessages=10)) == 2
    assert f.receive() == []


# ---- delete and visibility changes --------------------------------------------


def test_delete_with_old_handle_and_repeat_delete() -> None:
    h = Harness(make(visibility_timeout_ms=1000))
    h.send("x")
    (old,) = h.receive()
    h.now += 1000
    (new,) = h.receive()
    h.delete(old["ReceiptHandle"])
    assert h.q.counts(h.now) == (0, 0, 0)
    h.delete(old["ReceiptHandle"])
    h.delete(new["ReceiptHandle"])
    assert h.q.snapshot() == []


def test_garbage_and_missing_handles() -> None:
    h = Harness(make())
    with pytest.raises(SqsError) as info:
        h.delete("garbage")
    assert sqs_error(info) == (
        "ReceiptHandleIsInvalid",
        'The input receipt handle "garbage" is not a valid receipt handle.',
    )
    with pytest.raises(SqsError) as info:
        h.q.delete_message({}, h.now)
    assert info.value.shape == "MissingRequiredParameterException"


def test_change_visibility_semantics_standard() -> None:
    h = Harness(make(visibility_timeout_ms=10_000))
    h.send("x")
    (m,) = h.receive()
    handle = m["ReceiptHandle"]
    h.change(handle, 0)
    assert h.q.counts(h.now) == (1, 0, 0)
    (m,) = h.receive()
    h.change(m["ReceiptHandle"], 100)
    h.now += 99_999
    assert h.receive() == []
    h.now += 1
    assert h.q.counts(h.now) == (1, 0, 0)
    h.change(m["ReceiptHandle"], 5)  # expired: 200, and hidden again
    assert h.q.counts(h.now) == (0, 1, 0)
    for bad in (43_201, -1, "1", None):
        with pytest.raises(SqsError) as info:
            h.change(m["ReceiptHandle"], bad)
        assert info.value.shape in (
            "InvalidParameterValueException", "MissingRequiredParameterException"
        )
    h.delete(m["ReceiptHandle"])
    with pytest.raises(SqsError) as info:
        h.change(handle, 10)
    assert sqs_error(info) == (
        "InvalidParameterValueException",
        f"Value {handle} for parameter ReceiptHandle is invalid. Reason: Message does not exist "
        "or is not available for visibility timeout change.",
    )


def test_change_visibility_twelve_hour_cap_since_receive() -> None:
    h = Harness(make())
    h.send("x")
    (m,) = h.receive()
    h.now += 1000
    with pytest.raises(SqsError) as info:
        h.change(m["ReceiptHandle"], 43_200)
    assert sqs_error(info) == (
        "InvalidParameterValueException",
        "Value 43200 for parameter VisibilityTimeout is invalid. Reason: Total VisibilityTimeout "
        "for the message is beyond the limit [43200 seconds].")
    h.change(m["ReceiptHandle"], 43_199)
    # The cap survives a rebuild for a message received once.
    fresh = h.rebuilt()
    with pytest.raises(SqsError):
        fresh.change_message_visibility(
            {"ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 43_200}, h.now
        )


# ---- batches ------------------------------------------------------------------


def test_send_batch_partial_failure_and_omitted_failed_key() -> None:
    h = Harness(make())
    response, effects = h.q.send_message_batch({"Entries": [
        {"Id": "ok", "MessageBody": "a"},
        {"Id": "bad", "MessageBody": "\x01"},
        {"Id": "big", "MessageBody": "y", "DelaySeconds": 1000},
        {"Id": "empty", "MessageBody": ""},
    ]}, h.now, h.entropy, "S")
    assert [e["Id"] for e in response["Successful"]] == ["ok"]
    assert response["Successful"][0]["MD5OfMessageBody"] == "0cc175b9c0f1b6a831c399e269772661"
    failed = {f["Id"]: f for f in response["Failed"]}
    assert failed["bad"]["Code"] == "InvalidMessageContents" and failed["bad"]["SenderFault"]
    assert failed["big"]["Code"] == "InvalidParameterValue"
    assert failed["empty"]["Code"] == "MissingParameter"
    assert len(effects) == 1
    response, _ = h.q.send_message_batch(
        {"Entries": [{"Id": "x", "MessageBody": "b"}]}, h.now, h.entropy, "S")
    assert "Failed" not in response


@pytest.mark.parametrize(
    ("entries", "shape", "message"),
    [
        ([], "EmptyBatchRequest",
         "There should be at least one SendMessageBatchRequestEntry in the request."),
        ([{"Id": str(i), "MessageBody": "x"} for i in range(20)], "TooManyEntriesInBatchRequest",
         "Maximum number of entries per request are 10. You have sent 20."),
        ([{"Id": "a", "MessageBody": "x"}, {"Id": "a", "MessageBody": "y"}],
         "BatchEntryIdsNotDistinct", "Id a repeated."),
        ([{"Id": "a.b", "MessageBody": "x"}], "InvalidBatchEntryId",
         "A batch entry id can only contain alphanumeric characters, hyphens and underscores. "
         "It can be at most 80 letters long."),
        ([{"Id": "x" * 81, "MessageBody": "x"}], "InvalidBatchEntryId", None),
        ([{"Id": "a", "MessageBody": "x" * 600_000}, {"Id": "b", "MessageBody": "x" * 448_577}],
         "BatchRequestTooLong",
         "Batch requests cannot be longer than 1048576 bytes. You have sent 1048577 bytes."),
    ],
)
def test_send_batch_request_errors(
    entries: list[dict[str, Any]], shape: str, message: str | None
) -> None:
    q = make()
    with pytest.raises(SqsError) as info:
        q.send_message_batch({"Entries": entries}, T0, SeqEntropy(), "S")
    assert info.value.shape == shape
    if message is not None:
        assert info.value.message == message
    assert q.snapshot() == []


def test_a_missing_handle_is_named_message_handle_by_delete_message() -> None:
    # Recorded for DeleteMessage (aws/aws-sdk-js-v3#5478, syndesisio/syndesis#6254); the
    # other actions keep ReceiptHandle, which is what their model calls it.
    h = Harness(make())
    for params in ({}, {"ReceiptHandle": ""}):
        with pytest.raises(SqsError) as info:
            h.q.delete_message(params, h.now)
        assert sqs_error(info) == (
            "MissingRequiredParameterException",
            "The request must contain the parameter MessageHandle.")
    with pytest.raises(SqsError) as info:
        h.q.change_message_visibility({"VisibilityTimeout": 5}, h.now)
    assert info.value.message == "The request must contain the parameter ReceiptHandle."
    response, _ = h.q.delete_message_batch({"Entries": [{"Id": "a"}]}, h.now)
    assert response["Failed"][0]["Message"] == (
        "The request must contain the parameter ReceiptHandle.")


def test_delete_and_change_visibility_batches() -> None:
    h = Harness(make())
    for i in range(3):
        h.send(f"b{i}")
    handles = [m["ReceiptHandle"] for m in h.receive(MaxNumberOfMessages=3)]
    response, effects = h.q.change_message_visibility_batch({"Entries": [
        {"Id": "a", "ReceiptHandle": handles[0], "VisibilityTimeout": 0},
        {"Id": "b", "ReceiptHandle": "garbage", "VisibilityTimeout": 0},
        {"Id": "c", "ReceiptHandle": handles[1]},
    ]}, h.now)
    assert response["Successful"] == [{"Id": "a"}]
    assert {f["Id"]: f["Code"] for f in response["Failed"]} == {
        "b": "ReceiptHandleIsInvalid", "c": "MissingParameter"}
    assert len(effects) == 1
    response, effects = h.q.delete_message_batch({"Entries": [
        {"Id": "a", "ReceiptHandle": handles[1]}, {"Id": "b", "ReceiptHandle": handles[2]},
    ]}, h.now)
    assert response == {"Successful": [{"Id": "a"}, {"Id": "b"}]}
    assert h.q.counts(h.now) == (1, 0, 0)
    with pytest.raises(SqsError) as info:
        h.q.delete_message_batch({"Entries": []}, h.now)
    assert info.value.message == (
        "There should be at least one DeleteMessageBatchRequestEntry in the request.")


# ---- retention and purge --------------------------------------------------------


def test_retention_expires_in_flight_too() -> None:
    h = Harness(make(retention_ms=60_000))
    h.send("a")
    h.now += 10_000
    h.send("b")
    h.receive()  # "a" in flight
    assert h.q.expire(h.now + 49_999) == []
    h.now += 50_000
    removed = h.q.expire(h.now)
    assert removed == [MessageRemoved("q", "m000001")]
    assert h.q.counts(h.now) == (1, 0, 0)


def test_purge_removes_everything_and_dedup() -> None:
    h = Harness(make(fifo=True))
    h.send("a", MessageGroupId="g", MessageDeduplicationId="d")
    h.receive()
    h.send("b", MessageGroupId="g", MessageDeduplicationId="e")
    effects = h.q.purge(h.now)
    assert h.q.counts(h.now) == (0, 0, 0) and h.q.next_visible_ms() is None
    assert h.q.dedup_entries(h.now) == []
    h.effects += effects
    h.send("a", MessageGroupId="g", MessageDeduplicationId="d")
    assert h.bodies() == ["a"]
    assert_same_state(h.q, h.rebuilt(), h.now)


# ---- FIFO ---------------------------------------------------------------------


def test_fifo_requires_group_and_dedup() -> None:
    h = Harness(make(fifo=True))
    with pytest.raises(SqsError) as info:
        h.send("x")
    assert sqs_error(info) == (
        "MissingRequiredParameterException",
        "The request must contain the parameter MessageGroupId.",
    )
    with pytest.raises(SqsError) as info:
        h.send("x", MessageGroupId="g")
    assert info.value.message == (
        "The queue should either have ContentBasedDeduplication enabled or "
        "MessageDeduplicationId provided explicitly")
    with pytest.raises(SqsError) as info:
        h.send("x", MessageGroupId="a b", MessageDeduplicationId="d")
    assert info.value.message == (
        "Value a b for parameter MessageGroupId is invalid. Reason: MessageGroupId can only "
        "include alphanumeric and punctuation characters. 1 to 128 in length.")
    with pytest.raises(SqsError):
        h.send("x", MessageGroupId="g", MessageDeduplicationId="d" * 129)
    with pytest.raises(SqsError) as info:
        h.send("x", MessageGroupId="g", MessageDeduplicationId="d", DelaySeconds=2)
    assert info.value.message == (
        "Value 2 for parameter DelaySeconds is invalid. Reason: The request include parameter "
        "that is not valid for this queue type.")
    h.send("x", MessageGroupId="g", MessageDeduplicationId="d", DelaySeconds=0)


GOOD_FIFO_ENTRY = {"Id": "ok", "MessageBody": "a", "MessageGroupId": "g",
                   "MessageDeduplicationId": "d1"}


@pytest.mark.parametrize(("entry", "message"), [
    ({"Id": "bad", "MessageBody": "b", "MessageDeduplicationId": "d2"},
     "The request must contain the parameter MessageGroupId."),
    ({"Id": "bad", "MessageBody": "b", "MessageGroupId": "g"},
     "The queue should either have ContentBasedDeduplication enabled or "
     "MessageDeduplicationId provided explicitly"),
])
def test_fifo_batch_missing_ids_fail_the_whole_request(
    entry: dict[str, Any], message: str
) -> None:
    # Recorded on SQS: 400 InvalidParameterValue, and the valid entry is not sent.
    q = make(fifo=True)
    with pytest.raises(SqsError) as info:
        q.send_message_batch({"Entries": [GOOD_FIFO_ENTRY, entry]}, T0, SeqEntropy(), "S")
    assert sqs_error(info) == ("InvalidParameterValueException", message)
    assert q.snapshot() == []


def test_fifo_batch_malformed_ids_and_delays_fail_per_entry() -> None:
    q = make(fifo=True, content_based_dedup=True)
    response, _ = q.send_message_batch({"Entries": [
        GOOD_FIFO_ENTRY,
        {"Id": "nodedup", "MessageBody": "b", "MessageGroupId": "g"},  # content-based
        {"Id": "group", "MessageBody": "c", "MessageGroupId": "a b"},
        {"Id": "dedup", "MessageBody": "d", "MessageGroupId": "g",
         "MessageDeduplicationId": "x" * 129},
        {"Id": "delay", "MessageBody": "e", "MessageGroupId": "g", "DelaySeconds": 5},
    ]}, T0, SeqEntropy(), "S")
    assert [e["Id"] for e in response["Successful"]] == ["ok", "nodedup"]
    assert {f["Id"]: f["Code"] for f in response["Failed"]} == {
        "group": "InvalidParameterValue", "dedup": "InvalidParameterValue",
        "delay": "InvalidParameterValue"}


WRONG_QUEUE_TYPE_ENTRY = {  # what AWS put in a SendMessageBatch Failed entry
    "SenderFault": True, "Code": "InvalidParameterValue",
    "Message": "The request include parameter that is not valid for this queue type"}


@pytest.mark.parametrize(("fifo", "extra"), [
    (True, {"MessageGroupId": "g", "DelaySeconds": 5}),
    (False, {"MessageDeduplicationId": "d"}),
])
def test_batch_entry_with_a_parameter_of_the_other_queue_type(
    fifo: bool, extra: dict[str, Any]
) -> None:
    q = make(fifo=fifo, content_based_dedup=fifo)
    response, _ = q.send_message_batch(
        {"Entries": [{"Id": "e", "MessageBody": "b", **extra}]}, T0, SeqEntropy(), "S")
    assert response == {"Successful": [], "Failed": [{"Id": "e", **WRONG_QUEUE_TYPE_ENTRY}]}


def test_fifo_dedup_window_survives_delete_and_returns_original() -> None:
    h = Harness(make(fifo=True, content_based_dedup=True))
    first = h.send("same", MessageGroupId="g")
    (m,) = h.receive()
    h.delete(m["ReceiptHandle"])
    h.now += 299_999
    h.q.expire(h.now)
    again = h.send("same", MessageGroupId="g")
    assert again["MessageId"] == first["MessageId"]
    assert again["SequenceNumber"] == first["SequenceNumber"]
    assert h.q.counts(h.now) == (0, 0, 0)
    h.now += 1
    h.q.expire(h.now)
    third = h.send("same", MessageGroupId="g")
    assert third["MessageId"] != first["MessageId"]
    assert int(third["SequenceNumber"]) > int(first["SequenceNumber"])


def test_fifo_dedup_scope_message_group() -> None:
    queue_scope = Harness(make(fifo=True))
    group_scope = Harness(make(fifo=True, dedup_scope_group=True))
    for h in (queue_scope, group_scope):
        h.send("a", MessageGroupId="g1", MessageDeduplicationId="d")
        h.send("b", MessageGroupId="g2", MessageDeduplicationId="d")
    assert queue_scope.q.counts(T0)[0] == 1
    assert group_scope.q.counts(T0)[0] == 2


def test_fifo_sequence_numbers_increase_and_survive_restart() -> None:
    h = Harness(make(fifo=True, content_based_dedup=True))
    seqs = [int(h.send(f"b{i}", MessageGroupId="g")["SequenceNumber"]) for i in range(5)]
    assert seqs == sorted(set(seqs)) and len(str(seqs[0])) == 19
    assert seqs[-1] < 2**63  # fits a signed 64-bit integer column in any store
    fresh = h.rebuilt()
    response, _ = fresh.send_message(
        {"MessageBody": "n", "MessageGroupId": "g"}, T0, SeqEntropy("x"), "S")
    assert int(response["SequenceNumber"]) > seqs[-1]


def test_fifo_group_ordering_and_blocking() -> None:
    h = Harness(make(fifo=True, content_based_dedup=True, visibility_timeout_ms=10_000))
    for body, group in [("a1", "A"), ("b1", "B"), ("a2", "A"), ("a3", "A"), ("b2", "B")]:
        h.send(body, MessageGroupId=group)
    assert h.bodies(MaxNumberOfMessages=2) == ["a1", "a2"]
    assert h.bodies(MaxNumberOfMessages=10) == ["b1", "b2"]
    assert h.receive() == []  # both groups blocked
    h.now += 10_000
    assert h.bodies(MaxNumberOfMessages=10) == ["a1", "a2", "a3", "b1", "b2"]


def test_fifo_group_blocked_while_any_in_flight_after_partial_delete() -> None:
    h = Harness(make(fifo=True, content_based_dedup=True, visibility_timeout_ms=10_000))
    for i in range(3):
        h.send(f"a{i}", MessageGroupId="A")
    msgs = h.receive(MaxNumberOfMessages=2)
    h.delete(msgs[0]["ReceiptHandle"])
    assert h.receive() == []  # a1 is still in flight
    h.change(msgs[1]["ReceiptHandle"], 0)
    assert h.bodies(MaxNumberOfMessages=10) == ["a1", "a2"]


def test_fifo_group_delivers_its_head_up_to_the_first_message_in_flight() -> None:
    """Recorded on SQS: g1-m1, g1-m2, g2-m1; receive 2; g1-m1 made visible; receive 3
    returns g2-m1 then g1-m1 (g1-m2, still in flight, holds back nothing before it)."""
    h = Harness(make(fifo=True, content_based_dedup=True, visibility_timeout_ms=30_000))
    for body, group in [("g1-m1", "g1"), ("g1-m2", "g1"), ("g2-m1", "g2")]:
        h.send(body, MessageGroupId=group)
    first = h.receive(MaxNumberOfMessages=2)
    assert [m["Body"] for m in first] == ["g1-m1", "g1-m2"]
    h.now += 5
    h.change(first[0]["ReceiptHandle"], 0)
    assert h.bodies(MaxNumberOfMessages=3) == ["g2-m1", "g1-m1"]
    assert h.receive(MaxNumberOfMessages=10) == []


@pytest.mark.parametrize(("extended", "expected"), [
    (0, []), (1, ["foo"]), (2, ["foo", "bar"]),
])
def test_fifo_messages_after_an_extended_one_are_held_back(
    extended: int, expected: list[str]
) -> None:
    """Recorded on SQS: foo, bar, baz in one group (VisibilityTimeout 1 s), all received,
    one extended to 4 s; 2.5 s later a receive returns what precedes the extended one."""
    h = Harness(make(fifo=True, content_based_dedup=True, visibility_timeout_ms=1000))
    for body in ("foo", "bar", "baz"):
        h.send(body, MessageGroupId="1")
    msgs = h.receive(MaxNumberOfMessages=5)
    assert [m["Body"] for m in msgs] == ["foo", "bar", "baz"]
    h.change(msgs[extended]["ReceiptHandle"], 4)
    h.now += 2500
    assert h.bodies(MaxNumberOfMessages=5) == expected


def test_fifo_groups_go_in_the_order_their_heads_became_visible() -> None:
    """Recorded on SQS: g1-m1, g2-m1, g2-m2, g3-m1, g1-m2; receive 3 with visibility 0
    gives g1-m1, g1-m2, g2-m1; the next receive puts g3 (never received) first, then
    g1 and g2, visible again since that receive, in sequence order."""
    h = Harness(make(fifo=True, content_based_dedup=True))
    for body, group in [("g1-m1", "g1"), ("g2-m1", "g2"), ("g2-m2", "g2"), ("g3-m1", "g3"),
                        ("g1-m2", "g1")]:
        h.send(body, MessageGroupId=group)
        h.now += 1
    assert h.bodies(MaxNumberOfMessages=3, VisibilityTimeout=0) == ["g1-m1", "g1-m2", "g2-m1"]
    h.now += 1
    assert h.bodies(MaxNumberOfMessages=10, VisibilityTimeout=0) == [
        "g3-m1", "g1-m1", "g1-m2", "g2-m1", "g2-m2"]


def test_fifo_group_whose_head_was_deleted_keeps_its_place() -> None:
    """Recorded on SQS: after g1's first two messages are deleted, its next message
    (sent before g3-m1, never received) comes before g3."""
    h = Harness(make(fifo=True, content_based_dedup=True))
    for body, group in [("g1-m1", "g1"), ("g2-m1", "g2"), ("g1-m2", "g1"), ("g2-m2", "g2"),
                        ("g1-m3", "g1"), ("g1-m4", "g1"), ("g3-m1", "g3")]:
        h.send(body, MessageGroupId=group)
        h.now += 1
    for m in h.receive(MaxNumberOfMessages=2):
        h.delete(m["ReceiptHandle"])
    assert h.bodies(MaxNumberOfMessages=10) == ["g2-m1", "g2-m2", "g1-m3", "g1-m4", "g3-m1"]


def test_fifo_groups_do_not_keep_deleted_messages_behind_the_head() -> None:
    # A head that keeps being made visible again while the messages behind it are
    # received and deleted: a group that kept deleted entries until they reached the
    # head walked all of them on every receive (quadratic overall). Counted, not
    # timed: the group's list must hold exactly its live messages at every step.
    h = Harness(make(fifo=True, content_based_dedup=True))
    cycles = 60
    for i in range(cycles * 9 + 1):
        h.send(f"m{i}", MessageGroupId="A")
    for i in range(cycles):
        head, *rest = h.receive(MaxNumberOfMessages=10)
        assert head["Body"] == "m0" and len(rest) == 9
        for m in rest:
            h.delete(m["ReceiptHandle"])
        h.change(head["ReceiptHandle"], 0)
        state = h.q.dump_state(h.now)
        assert len(state["groups"]["A"]) == len(state["messages"]) == (cycles - i - 1) * 9 + 1
    assert len(h.q._groups_ready) <= 70  # noqa: SLF001 - offers are compacted too


def test_fifo_restore_in_any_order_keeps_groups_in_sequence_order() -> None:
    # A store may hand back a group's messages in any order; each group is linked in
    # sequence order whatever the order of arrival (front, middle and tail inserts).
    h = Harness(make(fifo=True, content_based_dedup=True))
    for i in range(6):
        h.send(f"a{i}", MessageGroupId="A")
    stored = [e for e in h.effects if isinstance(e, MessageStored)]
    fresh = make(fifo=True, content_based_dedup=True)
    for index in (3, 5, 0, 4, 1, 2):
        fresh.apply(stored[index])
    response, _, _ = fresh.receive_message({"MaxNumberOfMessages": 10}, h.now, SeqEntropy(), None)
    assert [m["Body"] for m in response["Messages"]] == [f"a{i}" for i in range(6)]


def test_fifo_stale_handle_expired() -> None:
    h = Harness(make(fifo=True, content_based_dedup=True, visibility_timeout_ms=1000))
    h.send("x", MessageGroupId="g")
    (old,) = h.receive()
    h.now += 1000
    (new,) = h.receive()
    for timeout_s in (None, 5):
        with pytest.raises(SqsError) as info:
            if timeout_s is None:
                h.delete(old["ReceiptHandle"])
            else:
                h.change(old["ReceiptHandle"], timeout_s)
        assert info.value.message == (
            f"Value {old['ReceiptHandle']} for parameter ReceiptHandle is invalid. Reason: "
            "The receipt handle has expired.")
    h.delete(new["ReceiptHandle"])
    assert h.q.snapshot() == []


@pytest.mark.parametrize("lapse", ["timeout", "visibility-0"])
def test_fifo_handle_expires_when_its_visibility_lapses(lapse: str) -> None:
    """Recorded on SQS: a FIFO delete after the visibility timeout, with no newer
    receive, is refused; the message stays. The same for visibility changes, and for
    a handle whose message was made visible with visibility 0."""
    h = Harness(make(fifo=True, content_based_dedup=True, visibility_timeout_ms=1000))
    h.send("x", MessageGroupId="g")
    (m,) = h.receive()
    handle = m["ReceiptHandle"]
    if lapse == "timeout":
        h.now += 1000
    else:
        h.change(handle, 0)
    expired = (
        f"Value {handle} for parameter ReceiptHandle is invalid. Reason: The receipt "
        "handle has expired."
    )
    with pytest.raises(SqsError) as info:
        h.delete(handle)
    assert sqs_error(info) == ("InvalidParameterValueException", expired)
    with pytest.raises(SqsError) as info:
        h.change(handle, 5)
    assert sqs_error(info) == ("InvalidParameterValueException", expired)
    for method, extra in ((h.q.delete_message_batch, {}),
                          (h.q.change_message_visibility_batch, {"VisibilityTimeout": 5})):
        response, effects = method(
            {"Entries": [{"Id": "a", "ReceiptHandle": handle, **extra}]}, h.now)
        assert effects == []
        assert response == {"Successful": [], "Failed": [{
            "Id": "a", "SenderFault": True, "Code": "ReceiptHandleIsInvalid",
            "Message": "The receipt handle has expired"}]}
    assert h.q.counts(h.now) == (1, 0, 0)
    (again,) = h.receive()
    h.delete(again["ReceiptHandle"])
    assert h.q.snapshot() == []


def test_standard_handle_still_works_after_its_visibility_lapses() -> None:
    # Recorded on SQS: standard queues delete (and change visibility) with such handles.
    h = Harness(make(visibility_timeout_ms=1000))
    h.send("x")
    (m,) = h.receive()
    h.now += 1000
    h.change(m["ReceiptHandle"], 5)
    assert h.q.counts(h.now) == (0, 1, 0)
    h.delete(m["ReceiptHandle"])
    assert h.q.snapshot() == []


def test_fifo_receive_request_attempt_id() -> None:
    h = Harness(make(fifo=True, content_based_dedup=True))
    for i in range(3):
        h.send(f"a{i}", MessageGroupId="A")
    h.send("b0", MessageGroupId="B")
    first = h.receive(MaxNumberOfMessages=2, ReceiveRequestAttemptId="try-1")
    retry = h.receive(MaxNumberOfMessages=2, ReceiveRequestAttemptId="try-1")
    assert retry == first
    assert h.bodies(ReceiveRequestAttemptId="try-2") == ["b0"]
    with pytest.raises(SqsError):
        h.receive(ReceiveRequestAttemptId="")


NOT_RETRYABLE = ("Value try-1 for parameter ReceiveRequestAttemptId is invalid. Reason: The "
                 "receiveRequestAttemptId is not valid anymore since the receive call is not "
                 "retryable.")


@pytest.mark.parametrize("modify", ["delete", "change-visibility"])
def test_fifo_attempt_id_is_not_retryable_once_a_message_was_modified(modify: str) -> None:
    # Documented: a retry works "if none of the messages have been modified (deleted or
    # had their visibility changes)"; AWS's answer otherwise is this text.
    h = Harness(make(fifo=True, content_based_dedup=True))
    for i in range(3):
        h.send(f"a{i}", MessageGroupId="A")
    first = h.receive(MaxNumberOfMessages=2, ReceiveRequestAttemptId="try-1")
    if modify == "delete":
        h.delete(first[0]["ReceiptHandle"])
    else:
        h.change(first[1]["ReceiptHandle"], 60)
    with pytest.raises(SqsError) as info:
        h.receive(MaxNumberOfMessages=2, ReceiveRequestAttemptId="try-1")
    assert sqs_error(info) == ("InvalidParameterValueException", NOT_RETRYABLE)
    # Another attempt id is a receive of its own; after the 5-minute window the old id
    # is forgotten and starts afresh too.
    h.receive(ReceiveRequestAttemptId="try-2")
    h.now += 300_000
    h.receive(ReceiveRequestAttemptId="try-1")


def test_fifo_attributes_on_receive() -> None:
    h = Harness(make(fifo=True))
    sent = h.send("x", MessageGroupId="g", MessageDeduplicationId="d")
    (m,) = h.receive(MessageSystemAttributeNames=["All"])
    assert m["Attributes"]["SequenceNumber"] == sent["SequenceNumber"]
    assert m["Attributes"]["MessageGroupId"] == "g"
    assert m["Attributes"]["MessageDeduplicationId"] == "d"


# ---- redrive and moves -------------------------------------------------------------


@pytest.mark.parametrize("fifo", [False, True])
def test_redrive_to_dead_letter_queue(fifo: bool) -> None:
    dlq = make(fifo=fifo, name="dlq.fifo" if fifo else "dlq")
    source = make(fifo=fifo, content_based_dedup=True, visibility_timeout_ms=0,
                  dead_letter_queue=dlq.name, max_receive_count=2)
    h = Harness(source, dlq)
    extra = {"MessageGroupId": "g"} if fifo else {}
    h.send("poison", **extra)
    h.send("next", **extra)
    assert h.bodies() == ["poison"]
    assert h.bodies() == ["poison"]
    assert h.bodies() == ["next"]  # poison moved instead of a third delivery
    assert dlq.counts(h.now) == (1, 0, 0)
    response, _, _ = dlq.receive_message(
        {"AttributeNames": ["All"], "VisibilityTimeout": 0}, h.now, SeqEntropy("d"), None)
    (moved,) = response["Messages"]
    assert moved["Body"] == "poison" and moved["MessageId"] == "m000001"
    assert moved["Attributes"]["DeadLetterQueueSourceArn"] == source.arn
    assert moved["Attributes"]["ApproximateReceiveCount"] == "3"
    assert moved["Attributes"]["SentTimestamp"] == str(T0)
    # A move task back to the source resets the count, so it is not redriven at once.
    (record,) = dlq.take_visible(10, h.now)
    source.accept_moved(record, h.now, h.entropy, None)
    dlq.remove(record.message_id)
    assert h.bodies(MaxNumberOfMessages=10) == ["next", "poison"]
    if fifo:
        assert moved["Attributes"]["MessageGroupId"] == "g"


def test_take_visible_and_remove_for_move_tasks() -> None:
    h = Harness(make())
    for i in range(5):
        h.send(f"b{i}")
    h.receive()  # b0 in flight
    taken = h.q.take_visible(3, h.now)
    assert [r.body for r in taken] == ["b1", "b2", "b3"]
    assert h.q.approximate_number_of_messages(h.now) == 4  # left in place
    target = make(name="other")
    for record in taken:
        target.accept_moved(record, h.now, h.entropy, None)
        h.q.remove(record.message_id)
    assert h.q.remove("nope") == []
    assert h.bodies(MaxNumberOfMessages=10) == ["b4"]
    assert [r.body for r in target.take_visible(10, h.now)] == ["b1", "b2", "b3"]
    # A move task (no source ARN) starts the receive history afresh.
    assert {(r.receive_count, r.dead_letter_source_arn) for r in target.snapshot()} == {(0, None)}
    f = Harness(make(fifo=True, content_based_dedup=True))
    for body, group in [("a1", "A"), ("b1", "B"), ("a2", "A")]:
        f.send(body, MessageGroupId=group)
    assert [r.body for r in f.q.take_visible(10, f.now)] == ["a1", "a2", "b1"]
    assert f.bodies(MaxNumberOfMessages=10) == ["a1", "a2", "b1"]


# ---- effects reproduce state ---------------------------------------------------------


@pytest.mark.parametrize("fifo", [False, True])
def test_apply_effects_on_fresh_queue_gives_same_state(fifo: bool) -> None:
    h = Harness(make(fifo=fifo, content_based_dedup=True, visibility_timeout_ms=1000,
                     delay_ms=0 if fifo else 500))
    extra = {"MessageGroupId": "g"} if fifo else {}
    for i in range(8):
        h.send(f"b{i}", **extra)
        h.now += 100
    msgs = h.receive(MaxNumberOfMessages=3)
    h.delete(msgs[0]["ReceiptHandle"])
    h.change(msgs[1]["ReceiptHandle"], 0)
    h.now += 100
    h.receive(MaxNumberOfMessages=2)
    fresh = h.rebuilt()
    assert_same_state(h.q, fresh, h.now)
    # ... and it behaves the same from here on.
    e1, e2 = SeqEntropy("z"), SeqEntropy("z")
    h.now += 2000
    r1 = h.q.receive_message({"MaxNumberOfMessages": 10}, h.now, e1, None)
    r2 = fresh.receive_message({"MaxNumberOfMessages": 10}, h.now, e2, None)
    assert r1 == r2


def test_decode_of_issued_handles() -> None:
    h = Harness(make())
    h.send("x")
    (m,) = h.receive()
    assert decode_receipt_handle(m["ReceiptHandle"]) == ("m000001", "tok0000000000000001")
    assert m["ReceiptHandle"] == encode_receipt_handle("m000001", "tok0000000000000001")


# ---- scale --------------------------------------------------------------------------


def test_hundred_thousand_messages_stay_fast() -> None:
    h = Harness(make(visibility_timeout_ms=1000))
    start = time.perf_counter()
    for i in range(100_000):
        h.q.send_message({"MessageBody": "x"}, h.now + i // 100, h.entropy, "S")
    h.now += 1000
    assert time.perf_counter() - start < 10  # ~1 s normally
    start = time.perf_counter()
    for _ in range(300):
        h.receive(MaxNumberOfMessages=10)
        h.q.counts(h.now)
        h.q.expire(h.now)
    # ~0.05 s when each receive is O(log n); a scan of 100k messages per call would
    # take several seconds.
    assert time.perf_counter() - start < 1.5
    assert h.q.counts(h.now) == (97_000, 3000, 0)
    h.now += 1000
    assert len(h.receive(MaxNumberOfMessages=10)) == 10
    assert h.q.counts(h.now) == (99_990, 10, 0)


def test_lazy_indexes_are_compacted_after_deletes() -> None:
    h = Harness(make(visibility_timeout_ms=1000))
    for _ in range(5000):
        h.send("x")
        (m,) = h.receive()
        h.change(m["ReceiptHandle"], 0)
        (m,) = h.receive()
        h.delete(m["ReceiptHandle"])
    # Deleted messages (and their bodies) must not stay referenced until retention.
    heaps = (h.q._by_sent, h.q._pending, h.q._ready)  # noqa: SLF001
    assert all(len(heap) <= 200 for heap in heaps), [len(heap) for heap in heaps]
    assert h.q.counts(h.now) == (0, 0, 0)


# ---- nothing lives only in the node that made it ---------------------------------------


def restored(h: Harness) -> MessageQueue:
    """A queue rebuilt the way a restart does: one MessageStored per live message and its
    dedup entries and attempts, as a store's load() yields them."""
    from ferrymq._core._effects import HighWaterMarks

    fresh = MessageQueue(h.q.name, h.q.arn, h.q.settings)
    state = h.q.dump_state(h.now)
    fresh.apply(HighWaterMarks(h.q.name, state["last sequence"], state["dedup horizon"]))
    for record in h.q.snapshot():
        fresh.apply(MessageStored(record))
    for _, entry in state["dedup"]:
        fresh.apply(entry)
    for _, attempt in state["attempts"]:
        fresh.apply(attempt)
    return fresh


def test_the_visibility_cap_counts_from_the_latest_receive_after_a_restore() -> None:
    h = Harness(make(visibility_timeout_ms=1000))
    h.send("x")
    h.receive()
    h.now += 5_000  # visible again
    (m,) = h.receive()  # the latest receive, four hours later than the first once...
    h.now += 1_000
    for queue in (h.q, h.rebuilt(), restored(h)):
        with pytest.raises(SqsError):  # ...the cap counts from this one
            queue.change_message_visibility(
                {"ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 43_200}, h.now)
        # 43_199 s from now is within 12 hours of the latest receive.
        queue.change_message_visibility(
            {"ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 43_199}, h.now)


def test_a_receive_attempt_is_replayed_after_a_restore_and_by_a_follower() -> None:
    h = Harness(make(fifo=True, content_based_dedup=True))
    for i in range(3):
        h.send(f"a{i}", MessageGroupId="A")
    first = h.receive(MaxNumberOfMessages=2, ReceiveRequestAttemptId="try-1")
    for queue in (h.rebuilt(), restored(h)):
        again, effects, _ = queue.receive_message(
            {"MaxNumberOfMessages": 2, "ReceiveRequestAttemptId": "try-1"}, h.now,
            h.entropy, None)
        assert again["Messages"] == first and effects == []


def test_the_attempt_cache_forgets_through_its_effects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ferrymq._core._queue as queue_module
    from ferrymq._core._effects import ReceiveAttemptRecorded

    monkeypatch.setattr(queue_module, "ATTEMPTS_MAX", 3)
    h = Harness(make(fifo=True, content_based_dedup=True))
    recorded: list[ReceiveAttemptRecorded] = []
    for i in range(6):
        h.send(f"m{i}", MessageGroupId=f"g{i}")
        before = len(h.effects)
        h.receive(ReceiveRequestAttemptId=f"try-{i}")
        recorded += [e for e in h.effects[before:] if isinstance(e, ReceiveAttemptRecorded)]
        if i == 3:
            h.now += 300_000  # try-0 .. try-3 expire
    assert [r.forgotten for r in recorded] == [
        (), (), (), ("try-0",),  # full: the oldest goes
        ("try-1", "try-2", "try-3"),  # expired
        (),
    ]
    assert [k for k, _ in h.q.dump_state(h.now)["attempts"]] == ["try-4", "try-5"]
    assert h.rebuilt().dump_state(h.now) == h.q.dump_state(h.now)


def test_a_clock_that_goes_back_sorts_messages_for_the_earlier_time() -> None:
    h = Harness(make())
    h.send("late", DelaySeconds=10)
    h.now += 20_000
    assert h.q.counts(h.now) == (1, 0, 0)
    h.now -= 15_000  # before the delay ended: not visible, as for any node at this time
    assert h.q.counts(h.now) == (0, 0, 1)
    assert h.receive() == []
    assert h.rebuilt().dump_state(h.now) == h.q.dump_state(h.now)
    h.now += 5_000
    assert h.bodies() == ["late"]


def test_a_clock_that_goes_back_holds_a_fifo_group_back_again() -> None:
    h = Harness(make(fifo=True, content_based_dedup=True))
    h.send("first", MessageGroupId="g")
    h.send("second", MessageGroupId="g")
    (m,) = h.receive(VisibilityTimeout=5)
    h.now += 10_000  # "first" is visible again, so the group delivers from it
    assert h.q.counts(h.now) == (2, 0, 0)
    h.now -= 8_000  # back into its visibility timeout: the group is blocked again
    assert h.receive() == []
    assert h.rebuilt().dump_state(h.now) == h.q.dump_state(h.now)
    h.now += 8_000
    assert h.bodies(MaxNumberOfMessages=2) == ["first", "second"]
    del m


def test_sequence_numbers_keep_rising_after_the_newest_are_deleted_and_restored() -> None:
    h = Harness(make(fifo=True, content_based_dedup=True))
    h.send("a", MessageGroupId="g")
    last = int(h.send("b", MessageGroupId="g")["SequenceNumber"])
    for m in h.receive(MaxNumberOfMessages=2):
        h.delete(m["ReceiptHandle"])
    h.now -= 1  # the clock is no help: it went back
    fresh = restored(h)
    assert fresh.snapshot() == [] and fresh.dedup_entries(h.now)  # only entries remain
    h.q.purge(h.now)  # the entries go too; the high-water mark does not
    fresh = restored(h)
    response, _ = fresh.send_message(
        {"MessageBody": "c", "MessageGroupId": "g"}, h.now, h.entropy, "S")
    assert int(response["SequenceNumber"]) == last + 1


def test_dedup_entries_are_forgotten_by_newer_entries_never_by_the_clock() -> None:
    h = Harness(make(fifo=True, content_based_dedup=True))
    h.send("a", MessageGroupId="g")
    h.now += 400_000  # past the window: the entry is dead...
    h.receive()
    assert len(h.q.dump_state(h.now)["dedup"]) == 1  # ...but held until a newer one
    assert h.q.dedup_entries(h.now) == []  # and never consulted
    h.send("b", MessageGroupId="g")
    assert [key for key, _ in h.q.dump_state(h.now)["dedup"]] == [
        h.q.dedup_entries(h.now)[0].key]
    assert h.rebuilt().dump_state(h.now) == h.q.dump_state(h.now)
