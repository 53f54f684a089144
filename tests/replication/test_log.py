"""Epoch histories and the retained window: how replicas compare and resend logs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ferrymq._core._errors import InternalError
from ferrymq._replication._log import NO_POSITION, Entry, EpochHistory, Position, RetainedEntries


def test_epoch_at_and_end_of() -> None:
    h = EpochHistory([(1, 1), (3, 6), (4, 9)])
    assert [h.epoch_at(s) for s in (0, 1, 5, 6, 8, 9, 20)] == [0, 1, 1, 3, 3, 4, 4]
    assert h.end_of(1, 12) == 5
    assert h.end_of(2, 12) == 5  # epoch 2 wrote nothing here: it ended where 1 did
    assert h.end_of(3, 12) == 8
    assert h.end_of(4, 12) == 12
    h.truncate_after(7)
    assert h.starts() == [(1, 1), (3, 6)]


def test_history_cannot_go_backwards() -> None:
    h = EpochHistory([(2, 4)])
    with pytest.raises(InternalError):
        h.note(1, 9)
    with pytest.raises(InternalError):
        h.note(3, 4)


@given(st.lists(st.integers(1, 5), min_size=1, max_size=40))
def test_history_from_entries_agrees_with_the_entries(steps: list[int]) -> None:
    epochs, epoch = [], 1
    for step in steps:
        epoch += step % 2  # non-decreasing epochs
        epochs.append(epoch)
    h = EpochHistory()
    for seq, e in enumerate(epochs, 1):
        h.note(e, seq)
    for seq, e in enumerate(epochs, 1):
        assert h.epoch_at(seq) == e
        assert h.end_of(e, len(epochs)) == max(s for s, x in enumerate(epochs, 1) if x <= e)


def test_positions_order_epoch_first() -> None:
    assert Position(2, 1) > Position(1, 100) > NO_POSITION


def test_retained_window_is_bounded_and_keeps_the_newest() -> None:
    w = RetainedEntries(bytes_max=10)
    for seq in range(1, 8):
        w.append(Entry(seq, 1, b"xxx"))
    assert w.first_seq == 5  # 3 entries of 3 bytes fit in 10
    assert w.has_from(5) and w.has_from(8) and not w.has_from(4)
    assert [e.seq for e in w.from_seq(5, 6)] == [5, 6]
    assert [e.seq for e in w.from_seq(6, 1)] == [6]  # one entry always moves
    big = RetainedEntries(bytes_max=2)
    big.append(Entry(1, 1, b"much larger than the bound"))
    assert big.first_seq == 1
    with pytest.raises(InternalError):
        w.append(Entry(9, 1, b""))
