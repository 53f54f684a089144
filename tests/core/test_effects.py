"""The effect codec (ferrymq._core._effects): every effect type and field round-trips,
and bytes that are not an encoded batch raise EffectDecodeError, never anything else."""

from __future__ import annotations

import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrymq._core._effects import (
    CODEC_VERSION,
    DedupRecorded,
    Effect,
    EffectDecodeError,
    HighWaterMarks,
    MessageReceived,
    MessageRemoved,
    MessageStored,
    MoveTaskUpserted,
    QueueDeleted,
    QueuePurged,
    QueueUpserted,
    ReceiveAttemptRecorded,
    VisibilityChanged,
    decode_effects,
    effect_queue,
    encode_effects,
)
from ferrymq._core._errors import InternalError
from ferrymq._core._records import AttributeValue, MessageRecord, MoveTaskRecord, QueueRecord

# Integers are i64; an optional one reserves -2**63 for None.
I64 = st.integers(-(2**63), 2**63 - 1)
OPT_I64 = st.none() | st.integers(-(2**63) + 1, 2**63 - 1)
# Any Unicode text (hypothesis leaves out lone surrogates, which no record can hold),
# long enough now and then to need a multi-byte length.
TEXT = st.text() | st.text(min_size=130, max_size=400)
OPT_TEXT = st.none() | TEXT

ATTRIBUTE_VALUES = st.builds(AttributeValue, TEXT, OPT_TEXT, st.none() | st.binary(max_size=300))
RECORDS = st.builds(
    MessageRecord,
    queue=TEXT, message_id=TEXT, body=OPT_TEXT,
    attributes=st.lists(st.tuples(TEXT, ATTRIBUTE_VALUES), max_size=4).map(tuple),
    md5_of_body=TEXT, md5_of_attributes=OPT_TEXT, sent_ms=I64, visible_at_ms=I64,
    receive_count=I64, first_receive_ms=OPT_I64, receipt_token=OPT_TEXT, sender_id=TEXT,
    group_id=OPT_TEXT, dedup_id=OPT_TEXT, sequence_number=OPT_I64, trace_header=OPT_TEXT,
    dead_letter_source_arn=OPT_TEXT, received_ms=OPT_I64,
)
PAIRS = st.lists(st.tuples(TEXT, TEXT), max_size=5).map(tuple)
EFFECTS: dict[type, st.SearchStrategy[Effect]] = {
    MessageStored: st.builds(MessageStored, RECORDS, OPT_TEXT),
    MessageReceived: st.builds(MessageReceived, TEXT, TEXT, TEXT, I64, I64, I64, I64),
    VisibilityChanged: st.builds(VisibilityChanged, TEXT, TEXT, I64),
    MessageRemoved: st.builds(MessageRemoved, TEXT, TEXT),
    DedupRecorded: st.builds(DedupRecorded, TEXT, TEXT, TEXT, I64, I64),
    ReceiveAttemptRecorded: st.builds(
        ReceiveAttemptRecorded, TEXT, TEXT, I64,
        st.lists(st.tuples(TEXT, TEXT, I64), max_size=10).map(tuple),
        st.lists(TEXT, max_size=5).map(tuple)),
    QueuePurged: st.builds(QueuePurged, TEXT, I64),
    QueueUpserted: st.builds(QueueUpserted, st.builds(QueueRecord, TEXT, PAIRS, PAIRS, I64,
                                                      I64, OPT_I64)),
    QueueDeleted: st.builds(QueueDeleted, TEXT, I64),
    MoveTaskUpserted: st.builds(MoveTaskUpserted, st.builds(
        MoveTaskRecord, TEXT, TEXT, OPT_TEXT, OPT_I64, TEXT, I64, I64, I64, I64, OPT_TEXT)),
    HighWaterMarks: st.builds(HighWaterMarks, TEXT, I64, I64),
}
ANY_EFFECT = st.one_of(*EFFECTS.values())
BATCHES = st.lists(ANY_EFFECT, max_size=12)


def test_every_effect_type_has_a_strategy() -> None:
    # The round trip below covers every member of the union, so a new effect kind
    # without a strategy (and so without a tested encoding) fails here.
    assert set(EFFECTS) == set(typing.get_args(Effect))


@given(BATCHES)
@settings(max_examples=500, deadline=None)
def test_round_trip_keeps_every_field(effects: list[Effect]) -> None:
    data = encode_effects(effects)
    assert data[0] == CODEC_VERSION
    assert decode_effects(data) == effects


@pytest.mark.parametrize("kind", sorted(EFFECTS, key=lambda k: k.__name__),
                         ids=lambda k: k.__name__)
@given(data=st.data())
@settings(max_examples=60, deadline=None)
def test_round_trip_of_each_kind(kind: type, data: st.DataObject) -> None:
    effects = data.draw(st.lists(EFFECTS[kind], min_size=1, max_size=3))
    assert decode_effects(encode_effects(effects)) == effects


def test_the_batch_names_a_repeated_queue_once() -> None:
    effects: list[Effect] = [MessageRemoved("orders-queue-with-a-long-name", f"m{i}")
                             for i in range(50)]
    data = encode_effects(effects)
    assert data.count(b"orders-queue-with-a-long-name") == 1
    assert len(data) <= 1 + 1 + 1 + 29 + 1 + 50 * 6  # per effect: tag, index, id
    assert decode_effects(data) == effects


def test_an_empty_batch_round_trips() -> None:
    assert decode_effects(encode_effects([])) == []


@given(BATCHES.filter(bool))
@settings(max_examples=200, deadline=None)
def test_every_truncation_is_refused(effects: list[Effect]) -> None:
    data = encode_effects(effects)
    for cut in range(len(data)):
        with pytest.raises(EffectDecodeError):
            decode_effects(data[:cut])


@given(BATCHES, st.data())
@settings(max_examples=500, deadline=None)
def test_corrupted_bytes_decode_or_are_refused_never_crash(
    effects: list[Effect], data: st.DataObject
) -> None:
    encoded = bytearray(encode_effects(effects))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    try:
        decoded = decode_effects(bytes(encoded))
    except EffectDecodeError:
        return
    # Whatever still decodes is a list of well-formed effects, which encode again.
    assert all(isinstance(e, typing.get_args(Effect)) for e in decoded)
    encode_effects(decoded)


@given(st.binary(max_size=200))
@settings(max_examples=500, deadline=None)
def test_random_bytes_decode_or_are_refused_never_crash(data: bytes) -> None:
    try:
        decode_effects(bytes([CODEC_VERSION]) + data)
    except EffectDecodeError:
        pass


def test_unknown_version_trailing_bytes_and_non_bytes_are_refused() -> None:
    data = encode_effects([MessageRemoved("q", "m")])
    with pytest.raises(EffectDecodeError, match="version 2"):
        decode_effects(bytes([2]) + data[1:])
    with pytest.raises(EffectDecodeError, match="after the last effect"):
        decode_effects(data + b"\0")
    with pytest.raises(EffectDecodeError, match="expected bytes"):
        decode_effects("not bytes")  # type: ignore[arg-type]
    with pytest.raises(EffectDecodeError, match="unknown effect tag"):
        decode_effects(bytes([CODEC_VERSION, 0, 1, 99]))
    # A length whose uvarint runs on past 64 bits.
    with pytest.raises(EffectDecodeError, match="64 bits"):
        decode_effects(bytes([CODEC_VERSION]) + b"\xff" * 11)
    # bytearray and memoryview are bytes too.
    assert decode_effects(bytearray(data)) == decode_effects(memoryview(data)) == [
        MessageRemoved("q", "m")]


@pytest.mark.parametrize("effect", [
    VisibilityChanged("q", "m", 2**63),  # beyond i64
    MessageRemoved("q", "\ud800"),  # a lone surrogate is not Unicode text
    MessageRemoved("q", 5),  # type: ignore[arg-type]  # not a string at all
])
def test_a_record_no_effect_can_hold_is_a_bug(effect: Effect) -> None:
    with pytest.raises(InternalError):
        encode_effects([effect])


def test_effect_queue_names_the_queue_each_effect_changes() -> None:
    record = MessageRecord("q", "m", "b", (), "0" * 32, None, 1, 1, 0, None, None, "s")
    assert effect_queue(MessageStored(record)) == "q"
    assert effect_queue(QueueDeleted("d", 1)) == "d"
    assert effect_queue(HighWaterMarks("h", 1, 1)) == "h"
    assert effect_queue(MoveTaskUpserted(MoveTaskRecord(
        "t", "arn", None, None, "RUNNING", 1, 0, 0, 1))) is None
