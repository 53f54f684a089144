"""The replication wire format: every frame round-trips, split anywhere, and malformed
bytes are a FrameError, never a crash."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferrymq._replication._frames import (
    FRAME_BYTES_MAX,
    FrameDecoder,
    FrameError,
    Hello,
    SnapshotBegin,
    SnapshotChunk,
    SnapshotDone,
    SnapshotEnd,
    encode,
)
from ferrymq._replication._log import Entry, Position
from ferrymq._replication._messages import Append, AppendReply, Fence, FenceReply

names = st.text(max_size=20)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
positions = st.builds(Position, u32, u64)
entries = st.builds(Entry, u64, u32, st.binary(max_size=64))
frames = st.one_of(
    st.builds(Append, names, u32, names, positions, st.tuples(entries, entries), u64),
    st.builds(AppendReply, names, u32, names, st.booleans(), positions, u32, names,
              st.booleans()),
    st.builds(Fence, names, u32, names),
    st.builds(FenceReply, names, u32, names, st.booleans(), positions, u32, st.booleans()),
    st.builds(Hello, u32, names, names),
    st.builds(SnapshotBegin, names, u32, positions,
              st.lists(st.tuples(u32, u64), max_size=4).map(tuple), u64),
    st.builds(SnapshotChunk, names, u64, st.binary(max_size=100)),
    st.builds(SnapshotEnd, names, u32),
    st.builds(SnapshotDone, names, st.booleans(), names, names),
)


@given(st.lists(frames, min_size=1, max_size=5), st.integers(1, 50))
def test_frames_round_trip_in_any_split(items: list[object], chunk: int) -> None:
    data = b"".join(encode(f) for f in items)  # type: ignore[arg-type]
    decoder = FrameDecoder()
    got = []
    for i in range(0, len(data), chunk):
        got.extend(decoder.feed(data[i:i + chunk]))
    assert got == items


@given(st.binary(max_size=200))
def test_garbage_is_a_frame_error_or_incomplete(data: bytes) -> None:
    decoder = FrameDecoder()
    try:
        list(decoder.feed(data))
    except FrameError:
        pass


def test_bounds() -> None:
    with pytest.raises(FrameError, match="out of bounds"):
        list(FrameDecoder().feed((FRAME_BYTES_MAX + 1).to_bytes(4, "big") + b"\x02"))
    frame = bytearray(encode(Fence("q", 3, "c")))
    frame[4] = 99
    with pytest.raises(FrameError, match="unknown frame kind"):
        list(FrameDecoder().feed(bytes(frame)))
    short = encode(Fence("q", 3, "c"))
    cut = (len(short) - 5).to_bytes(4, "big") + short[4:-1]
    with pytest.raises(FrameError, match="ends early"):
        list(FrameDecoder().feed(cut))
