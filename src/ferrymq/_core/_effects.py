"""Effect records: the whole truth of a node's durable state, their meaning, and the
binary codec replication ships them in.

An *effect* is a durable fact the core applied while executing a command. Applying
the same effects, in order, to an empty core reproduces the same state (``Broker.apply``),
whoever applies them: the core that produced them, a restart reading a store's ``load()``,
a follower replaying the leader's log. So everything the core decides from its clock,
its randomness or its history is carried by an effect, or derived from effects by a
rule stated here, once, and applied by every interpreter (``Broker.apply`` and
``MessageQueue.apply``, ``MemoryStore``, the SQLite writer). Each of them dispatches with
a ``match`` that ends in ``typing.assert_never``, so that mypy fails when one forgets an
effect kind.

What belongs here: the effect records, the rules that give each its meaning (below and
on each class), and ``encode_effects`` / ``decode_effects``. The value records the
effects carry are in ``_records.py``. Nothing here may reference a clock, socket or
random source.

The meaning of each effect on the durable state (a store holds exactly this; the core
holds it plus what is derived from it):

- ``MessageStored`` upserts the message (queue + message id) with exactly this state.
- ``MessageReceived`` sets receipt token, visible_at_ms, receive count, first and latest
  receive time; ``VisibilityChanged`` sets visible_at_ms; ``MessageRemoved`` deletes the
  message. Effects on messages that do not exist change nothing.
- ``DedupRecorded`` raises its queue's *dedup horizon* to ``dedup_horizon_ms(effect)``
  (it never lowers it), upserts the entry, then forgets every entry of the queue that
  expires at or before the horizon (the new one too, if the horizon already passed
  it). So the entries held are exactly the latest entry per key that expires after the
  horizon, whatever order they were recorded in; a dead entry is never consulted (a
  send checks ``expires_at_ms > now``), so forgetting one changes no answer.
- ``ReceiveAttemptRecorded`` forgets the attempts it names in ``forgotten``, then
  records its attempt as the queue's newest (replacing one of the same id).
- ``QueuePurged`` deletes the queue's messages, dedup entries and receive attempts.
- ``QueueUpserted`` upserts the queue and forgets a remembered deletion of its name.
- ``QueueDeleted`` deletes the queue with all of the above and its high-water marks,
  and remembers (name, deleted_at_ms), the latest per name.
- ``MoveTaskUpserted`` upserts the task by handle.
- A queue's *high-water marks* are the highest sequence number it ever issued (raised by
  every ``MessageStored`` and ``DedupRecorded`` that carries one) and its dedup horizon.
  They outlive the effects they were derived from (the newest messages may be deleted,
  the entries forgotten), so a store keeps them and ``load()`` yields them as
  ``HighWaterMarks``, which raises both (never lowers them).

Effects are values: nothing mutates one after it is built. The ones made for every
message are not ``frozen`` for the reason ``_records.py`` gives.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import assert_never

from ._errors import InternalError
from ._records import AttributeValue, MessageRecord, MoveTaskRecord, QueueRecord

__all__ = [
    "CODEC_VERSION",
    "DEDUP_WINDOW_MS",
    "DedupRecorded",
    "Effect",
    "EffectDecodeError",
    "HighWaterMarks",
    "MessageEffect",
    "MessageReceived",
    "MessageRemoved",
    "MessageStored",
    "MoveTaskUpserted",
    "QueueDeleted",
    "QueuePurged",
    "QueueUpserted",
    "ReceiveAttemptRecorded",
    "VisibilityChanged",
    "decode_effects",
    "dedup_horizon_ms",
    "effect_queue",
    "encode_effects",
]

DEDUP_WINDOW_MS = 300_000  # FIFO deduplication interval, 5 minutes


# ---- effects -----------------------------------------------------------------------


@dataclass(slots=True)  # a value: see the module docstring
class MessageStored:
    """A message now exists with exactly this state (send, DLQ move, restore).

    A move whose body is not in memory carries ``record.body is None`` and
    ``moved_from``, the queue the message leaves in the same commit: the store takes
    the body from that queue's copy, which the ``MessageRemoved`` following this effect
    then deletes; if there is none, nothing is stored.
    """

    record: MessageRecord
    moved_from: str | None = None


@dataclass(slots=True)  # a value: see the module docstring
class MessageReceived:
    queue: str
    message_id: str
    receipt_token: str
    visible_at_ms: int
    receive_count: int
    first_receive_ms: int
    received_ms: int  # the leader's clock at this receive (the visibility cap counts from it)


@dataclass(slots=True)  # a value: see the module docstring
class VisibilityChanged:
    queue: str
    message_id: str
    visible_at_ms: int


@dataclass(slots=True)  # a value: see the module docstring
class MessageRemoved:
    """Deleted by a client, expired by retention, or moved away to a DLQ."""

    queue: str
    message_id: str


@dataclass(slots=True)  # a value: see the module docstring
class DedupRecorded:
    """A FIFO deduplication entry; ``key`` already includes the group when the
    queue's DeduplicationScope is messageGroup. See the module docstring for what
    recording one forgets."""

    queue: str
    key: str
    message_id: str
    sequence_number: int
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class ReceiveAttemptRecorded:
    """A FIFO receive that named a ReceiveRequestAttemptId: what it returned, so that a
    retry within ``expires_at_ms`` returns the same messages.

    ``received`` holds (message id, receipt token, visible_at_ms that receive gave it)
    per message, in the order returned. ``forgotten`` names the attempts of this queue
    the leader dropped when it recorded this one (expired ones, and the oldest when the
    cache is full): forgetting is the leader's decision, carried here so that nobody
    else needs a clock or a rule to make it.
    """

    queue: str
    attempt_id: str
    expires_at_ms: int
    received: tuple[tuple[str, str, int], ...]
    forgotten: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QueuePurged:
    """Every message, dedup entry and receive attempt of the queue is gone."""

    queue: str
    purged_at_ms: int


@dataclass(frozen=True, slots=True)
class QueueUpserted:
    record: QueueRecord


@dataclass(frozen=True, slots=True)
class QueueDeleted:
    name: str
    deleted_at_ms: int


@dataclass(frozen=True, slots=True)
class MoveTaskUpserted:
    record: MoveTaskRecord


@dataclass(frozen=True, slots=True)
class HighWaterMarks:
    """A queue's high-water marks (module docstring), as a store's ``load()`` yields
    them: the core never emits one, it derives them from the effects it applies."""

    queue: str
    sequence_number: int  # the highest the queue issued; 0 if none
    dedup_horizon_ms: int  # 0 if it never recorded a dedup entry


Effect = (
    MessageStored
    | MessageReceived
    | VisibilityChanged
    | MessageRemoved
    | DedupRecorded
    | ReceiveAttemptRecorded
    | QueuePurged
    | QueueUpserted
    | QueueDeleted
    | MoveTaskUpserted
    | HighWaterMarks
)

# The effects one queue's message state machine applies (``MessageQueue.apply``).
MessageEffect = (
    MessageStored
    | MessageReceived
    | VisibilityChanged
    | MessageRemoved
    | DedupRecorded
    | ReceiveAttemptRecorded
    | QueuePurged
    | HighWaterMarks
)


def dedup_horizon_ms(entry: DedupRecorded) -> int:
    """The time ``entry`` was recorded at: the horizon recording it raises its queue's to."""
    return entry.expires_at_ms - DEDUP_WINDOW_MS


def effect_queue(effect: Effect) -> str | None:
    """The queue whose state ``effect`` changes; None for a move task (not a queue's)."""
    match effect:
        case MessageStored():
            return effect.record.queue
        case (MessageReceived() | VisibilityChanged() | MessageRemoved() | DedupRecorded()
              | ReceiveAttemptRecorded() | QueuePurged() | HighWaterMarks()):
            return effect.queue
        case QueueUpserted():
            return effect.record.name
        case QueueDeleted():
            return effect.name
        case MoveTaskUpserted():
            return None
        case _:
            assert_never(effect)


# ---- the codec ---------------------------------------------------------------------
#
# Version 1, little-endian:
#
#   batch    := version:u8  n:uvarint string*n  m:uvarint effect*m
#   string   := len:uvarint utf8[len]
#   effect   := tag:u8 fields (per tag, in the order _encode_one writes them)
#
# The strings of the batch header form a table: fields that repeat across effects
# (queue names, ARNs, sender ids, attribute names and data types, group ids, move-task
# statuses) are written as a uvarint index into it, so a batch of effects on one queue
# names it once. Other strings are written inline. Integers are i64; an optional
# integer holds -2**63 for None (so that value is out of range for those fields). An
# effect with optional strings starts with a flags byte saying which are present.
#
# Decoding checks every length and index against the input, so truncated or
# corrupted bytes raise EffectDecodeError, never another exception; a version byte it
# does not know is refused the same way.

CODEC_VERSION = 1

_T_STORED = 1
_T_RECEIVED = 2
_T_VISIBILITY = 3
_T_REMOVED = 4
_T_DEDUP = 5
_T_ATTEMPT = 6
_T_PURGED = 7
_T_QUEUE = 8
_T_QUEUE_DELETED = 9
_T_TASK = 10
_T_MARKS = 11

_NONE_INT = -(2**63)
_I64 = struct.Struct("<q")
_I64x2 = struct.Struct("<qq")
_I64x3 = struct.Struct("<qqq")
_I64x4 = struct.Struct("<qqqq")
_I64x5 = struct.Struct("<qqqqq")
_I64x6 = struct.Struct("<qqqqqq")

# MessageStored: which optional fields are present.
_S_BODY = 1
_S_MD5_ATTRIBUTES = 2
_S_TOKEN = 4
_S_GROUP = 8
_S_DEDUP = 16
_S_TRACE = 32
_S_DLQ_SOURCE = 64
_S_MOVED_FROM = 128
# An attribute value: which values are present.
_A_STRING = 1
_A_BINARY = 2
# MoveTaskUpserted: which optional strings are present.
_M_DESTINATION = 1
_M_FAILURE = 2

# A uvarint longer than this does not fit 64 bits: the input is corrupt.
_UVARINT_BYTES_MAX = 10


class EffectDecodeError(ValueError):
    """Bytes that are not an encoded effect list: truncated, corrupted, or written by a
    codec version this one does not know."""


def _uvarint(out: bytearray, n: int) -> None:
    if n < 0:
        raise InternalError(f"cannot encode a negative length or index {n}")
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _text(out: bytearray, text: str) -> None:
    raw = text.encode()
    size = len(raw)
    if size < 0x80:
        out.append(size)
    else:
        _uvarint(out, size)
    out += raw


def _blob(out: bytearray, raw: bytes) -> None:
    size = len(raw)
    if size < 0x80:
        out.append(size)
    else:
        _uvarint(out, size)
    out += raw


def _ref(out: bytearray, table: dict[str, int], text: str) -> None:
    index = table.get(text)
    if index is None:
        index = table[text] = len(table)
    if index < 0x80:
        out.append(index)
    else:
        _uvarint(out, index)


def encode_effects(effects: Iterable[Effect]) -> bytes:
    """``effects`` as one compact batch (see the format above). Raises
    ``InternalError`` for a record no effect can hold (an integer beyond 64 bits, a
    string that is not Unicode text)."""
    body = bytearray()
    table: dict[str, int] = {}
    count = 0
    try:
        for effect in effects:
            _encode_one(body, table, effect)
            count += 1
    except (struct.error, UnicodeEncodeError, TypeError, AttributeError) as exc:
        raise InternalError(f"an effect cannot be encoded: {exc}") from exc
    out = bytearray((CODEC_VERSION,))
    _uvarint(out, len(table))
    for text in table:  # a dict keeps insertion order, which is index order
        _text(out, text)
    _uvarint(out, count)
    out += body
    return bytes(out)


def _encode_one(out: bytearray, table: dict[str, int], effect: Effect) -> None:
    # Cases in order of frequency: a match tries them one after the other.
    match effect:
        case MessageStored():
            _encode_stored(out, table, effect)
        case MessageReceived():
            out.append(_T_RECEIVED)
            _ref(out, table, effect.queue)
            _text(out, effect.message_id)
            _text(out, effect.receipt_token)
            out += _I64x4.pack(effect.visible_at_ms, effect.receive_count,
                               effect.first_receive_ms, effect.received_ms)
        case MessageRemoved():
            out.append(_T_REMOVED)
            _ref(out, table, effect.queue)
            _text(out, effect.message_id)
        case DedupRecorded():
            out.append(_T_DEDUP)
            _ref(out, table, effect.queue)
            _text(out, effect.key)
            _text(out, effect.message_id)
            out += _I64x2.pack(effect.sequence_number, effect.expires_at_ms)
        case VisibilityChanged():
            out.append(_T_VISIBILITY)
            _ref(out, table, effect.queue)
            _text(out, effect.message_id)
            out += _I64.pack(effect.visible_at_ms)
        case ReceiveAttemptRecorded():
            out.append(_T_ATTEMPT)
            _ref(out, table, effect.queue)
            _text(out, effect.attempt_id)
            out += _I64.pack(effect.expires_at_ms)
            _uvarint(out, len(effect.received))
            for message_id, token, visible_at_ms in effect.received:
                _text(out, message_id)
                _text(out, token)
                out += _I64.pack(visible_at_ms)
            _uvarint(out, len(effect.forgotten))
            for attempt_id in effect.forgotten:
                _text(out, attempt_id)
        case QueuePurged():
            out.append(_T_PURGED)
            _ref(out, table, effect.queue)
            out += _I64.pack(effect.purged_at_ms)
        case QueueUpserted():
            record = effect.record
            out.append(_T_QUEUE)
            _ref(out, table, record.name)
            _uvarint(out, len(record.attributes))
            for name, value in record.attributes:
                _ref(out, table, name)
                _text(out, value)
            _uvarint(out, len(record.tags))
            for key, value in record.tags:
                _text(out, key)
                _text(out, value)
            last_purge_ms = record.last_purge_ms
            out += _I64x3.pack(record.created_ms, record.modified_ms,
                               _NONE_INT if last_purge_ms is None else last_purge_ms)
        case QueueDeleted():
            out.append(_T_QUEUE_DELETED)
            _ref(out, table, effect.name)
            out += _I64.pack(effect.deleted_at_ms)
        case MoveTaskUpserted():
            task = effect.record
            flags = ((_M_DESTINATION if task.destination_arn is not None else 0)
                     | (_M_FAILURE if task.failure_reason is not None else 0))
            out.append(_T_TASK)
            out.append(flags)
            _text(out, task.task_handle)
            _ref(out, table, task.source_arn)
            if task.destination_arn is not None:
                _ref(out, table, task.destination_arn)
            _ref(out, table, task.status)
            rate = task.max_per_second
            out += _I64x5.pack(_NONE_INT if rate is None else rate, task.started_ms,
                               task.moved, task.to_move, task.progress_ms)
            if task.failure_reason is not None:
                _text(out, task.failure_reason)
        case HighWaterMarks():
            out.append(_T_MARKS)
            _ref(out, table, effect.queue)
            out += _I64x2.pack(effect.sequence_number, effect.dedup_horizon_ms)
        case _:
            assert_never(effect)


def _encode_stored(out: bytearray, table: dict[str, int], effect: MessageStored) -> None:
    m = effect.record
    body, md5_attrs, token = m.body, m.md5_of_attributes, m.receipt_token
    group, dedup, trace = m.group_id, m.dedup_id, m.trace_header
    source, moved_from = m.dead_letter_source_arn, effect.moved_from
    flags = 0
    if body is not None:
        flags = _S_BODY
    if md5_attrs is not None:
        flags |= _S_MD5_ATTRIBUTES
    if token is not None:
        flags |= _S_TOKEN
    if group is not None:
        flags |= _S_GROUP
    if dedup is not None:
        flags |= _S_DEDUP
    if trace is not None:
        flags |= _S_TRACE
    if source is not None:
        flags |= _S_DLQ_SOURCE
    if moved_from is not None:
        flags |= _S_MOVED_FROM
    out.append(_T_STORED)
    out.append(flags)
    _ref(out, table, m.queue)
    _text(out, m.message_id)
    if body is not None:
        _text(out, body)
    attributes = m.attributes
    _uvarint(out, len(attributes))
    for name, value in attributes:
        _ref(out, table, name)
        _ref(out, table, value.data_type)
        string_value, binary_value = value.string_value, value.binary_value
        out.append((_A_STRING if string_value is not None else 0)
                   | (_A_BINARY if binary_value is not None else 0))
        if string_value is not None:
            _text(out, string_value)
        if binary_value is not None:
            _blob(out, binary_value)
    _text(out, m.md5_of_body)
    if md5_attrs is not None:
        _text(out, md5_attrs)
    first, sequence, received = m.first_receive_ms, m.sequence_number, m.received_ms
    out += _I64x6.pack(
        m.sent_ms, m.visible_at_ms, m.receive_count,
        _NONE_INT if first is None else first,
        _NONE_INT if sequence is None else sequence,
        _NONE_INT if received is None else received,
    )
    if token is not None:
        _text(out, token)
    _ref(out, table, m.sender_id)
    if group is not None:
        _ref(out, table, group)
    if dedup is not None:
        _text(out, dedup)
    if trace is not None:
        _text(out, trace)
    if source is not None:
        _ref(out, table, source)
    if moved_from is not None:
        _ref(out, table, moved_from)


class _Reader:
    """A cursor over one encoded batch; every read checks the input's bounds."""

    __slots__ = ("data", "pos", "size", "table")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.size = len(data)
        self.table: list[str] = []

    def uvarint(self) -> int:
        data, pos = self.data, self.pos
        byte = data[pos]
        pos += 1
        if byte < 0x80:
            self.pos = pos
            return byte
        value = byte & 0x7F
        shift = 7
        while True:
            if shift >= 7 * _UVARINT_BYTES_MAX:
                raise EffectDecodeError("a length or index does not fit 64 bits")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return value
            shift += 7

    def raw(self) -> bytes:
        data, pos = self.data, self.pos
        size = data[pos]
        if size < 0x80:
            pos += 1
        else:
            size = self.uvarint()
            pos = self.pos
        end = pos + size
        if end > self.size:
            raise EffectDecodeError("truncated: a string runs past the end")
        self.pos = end
        return data[pos:end]

    def text(self) -> str:
        return self.raw().decode()

    def ref(self) -> str:
        data, pos = self.data, self.pos
        index = data[pos]
        if index < 0x80:
            self.pos = pos + 1
        else:
            index = self.uvarint()
        table = self.table
        if index >= len(table):
            raise EffectDecodeError(f"string index {index} is not in the batch's table")
        return table[index]

    def byte(self) -> int:
        value = self.data[self.pos]
        self.pos += 1
        return value

    def ints(self, layout: struct.Struct) -> tuple[int, ...]:
        values = layout.unpack_from(self.data, self.pos)
        self.pos += layout.size
        return values


def _opt(value: int) -> int | None:
    return None if value == _NONE_INT else value


def decode_effects(data: bytes) -> list[Effect]:
    """The effects ``encode_effects`` wrote into ``data``. Raises ``EffectDecodeError``
    for anything else (truncated or corrupted input, an unknown version)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EffectDecodeError(f"expected bytes, got {type(data).__name__}")
    reader = _Reader(bytes(data))
    try:
        version = reader.byte()
        if version != CODEC_VERSION:
            raise EffectDecodeError(
                f"codec version {version} is not {CODEC_VERSION}, the one this Ferry reads")
        table = reader.table
        for _ in range(reader.uvarint()):
            table.append(reader.text())
        effects: list[Effect] = []
        for _ in range(reader.uvarint()):
            effects.append(_decode_one(reader))
    except (IndexError, struct.error) as exc:
        raise EffectDecodeError("truncated: the input ends inside an effect") from exc
    except UnicodeDecodeError as exc:
        raise EffectDecodeError(f"a string is not UTF-8: {exc}") from exc
    if reader.pos != reader.size:
        raise EffectDecodeError(f"{reader.size - reader.pos} bytes after the last effect")
    return effects


def _decode_one(r: _Reader) -> Effect:
    tag = r.byte()
    if tag == _T_STORED:
        return _decode_stored(r)
    if tag == _T_RECEIVED:
        queue, message_id, token = r.ref(), r.text(), r.text()
        visible_at_ms, count, first_ms, received_ms = r.ints(_I64x4)
        return MessageReceived(queue, message_id, token, visible_at_ms, count, first_ms,
                               received_ms)
    if tag == _T_REMOVED:
        return MessageRemoved(r.ref(), r.text())
    if tag == _T_DEDUP:
        queue, key, message_id = r.ref(), r.text(), r.text()
        sequence_number, expires_at_ms = r.ints(_I64x2)
        return DedupRecorded(queue, key, message_id, sequence_number, expires_at_ms)
    if tag == _T_VISIBILITY:
        queue, message_id = r.ref(), r.text()
        return VisibilityChanged(queue, message_id, r.ints(_I64)[0])
    if tag == _T_ATTEMPT:
        queue, attempt_id = r.ref(), r.text()
        (expires_at_ms,) = r.ints(_I64)
        received = []
        for _ in range(r.uvarint()):
            message_id, token = r.text(), r.text()
            received.append((message_id, token, r.ints(_I64)[0]))
        forgotten = tuple(r.text() for _ in range(r.uvarint()))
        return ReceiveAttemptRecorded(queue, attempt_id, expires_at_ms, tuple(received),
                                      forgotten)
    if tag == _T_PURGED:
        queue = r.ref()
        return QueuePurged(queue, r.ints(_I64)[0])
    if tag == _T_QUEUE:
        name = r.ref()
        attributes = []
        for _ in range(r.uvarint()):
            key = r.ref()
            attributes.append((key, r.text()))
        tags = []
        for _ in range(r.uvarint()):
            key = r.text()
            tags.append((key, r.text()))
        created_ms, modified_ms, last_purge_ms = r.ints(_I64x3)
        return QueueUpserted(QueueRecord(name, tuple(attributes), tuple(tags), created_ms,
                                         modified_ms, _opt(last_purge_ms)))
    if tag == _T_QUEUE_DELETED:
        name = r.ref()
        return QueueDeleted(name, r.ints(_I64)[0])
    if tag == _T_TASK:
        flags = r.byte()
        if flags & ~(_M_DESTINATION | _M_FAILURE):
            raise EffectDecodeError(f"unknown move-task flags {flags:#x}")
        handle, source_arn = r.text(), r.ref()
        destination_arn = r.ref() if flags & _M_DESTINATION else None
        status = r.ref()
        rate, started_ms, moved, to_move, progress_ms = r.ints(_I64x5)
        failure_reason = r.text() if flags & _M_FAILURE else None
        return MoveTaskUpserted(MoveTaskRecord(
            handle, source_arn, destination_arn, _opt(rate), status, started_ms, moved,
            to_move, progress_ms, failure_reason))
    if tag == _T_MARKS:
        queue = r.ref()
        sequence_number, horizon_ms = r.ints(_I64x2)
        return HighWaterMarks(queue, sequence_number, horizon_ms)
    raise EffectDecodeError(f"unknown effect tag {tag}")


def _decode_stored(r: _Reader) -> MessageStored:
    flags = r.byte()
    queue, message_id = r.ref(), r.text()
    body = r.text() if flags & _S_BODY else None
    attributes = []
    for _ in range(r.uvarint()):
        name, data_type = r.ref(), r.ref()
        value_flags = r.byte()
        if value_flags & ~(_A_STRING | _A_BINARY):
            raise EffectDecodeError(f"unknown attribute flags {value_flags:#x}")
        string_value = r.text() if value_flags & _A_STRING else None
        binary_value = r.raw() if value_flags & _A_BINARY else None
        attributes.append((name, AttributeValue(data_type, string_value, binary_value)))
    md5_of_body = r.text()
    md5_of_attributes = r.text() if flags & _S_MD5_ATTRIBUTES else None
    sent_ms, visible_at_ms, receive_count, first_ms, sequence, received_ms = r.ints(_I64x6)
    token = r.text() if flags & _S_TOKEN else None
    sender_id = r.ref()
    group_id = r.ref() if flags & _S_GROUP else None
    dedup_id = r.text() if flags & _S_DEDUP else None
    trace_header = r.text() if flags & _S_TRACE else None
    source_arn = r.ref() if flags & _S_DLQ_SOURCE else None
    moved_from = r.ref() if flags & _S_MOVED_FROM else None
    return MessageStored(
        MessageRecord(
            queue, message_id, body, tuple(attributes), md5_of_body, md5_of_attributes,
            sent_ms, visible_at_ms, receive_count, _opt(first_ms), token, sender_id,
            group_id, dedup_id, _opt(sequence), trace_header, source_arn,
            _opt(received_ms),
        ),
        moved_from,
    )
