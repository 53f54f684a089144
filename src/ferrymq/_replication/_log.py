"""The replicated log's vocabulary: positions, entries, the epoch history and the
window of recent entries a replica keeps for followers that fall behind.

Pure values and bookkeeping, no I/O. A replica's *durable* log is its store (what it
applied and fsynced); these structures describe it so replicas can compare logs:

- ``Position(epoch, seq)``: the last entry a replica holds. Logs are compared by
  (epoch, seq), epoch first, as Raft compares (term, index): the log whose last entry
  was written under the newer epoch is the more advanced one.
- ``EpochHistory``: for every epoch a replica has entries of, the first seq written in
  it. From it a replica answers "which epoch wrote seq s" and "where did epoch e end",
  which is how a leader tells a follower that lags (resume from its last seq) from one
  that diverged (it holds entries of an epoch beyond where that epoch ended for the
  leader: those were never committed, and the follower must be rebuilt from a snapshot).
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from ferrymq._core._errors import InternalError

__all__ = ["NO_POSITION", "Entry", "EpochHistory", "Position", "RetainedEntries"]


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """The (epoch, seq) of a log's last entry; ordered epoch first."""

    epoch: int
    seq: int


# The position of an empty log: every real entry has seq >= 1 and epoch >= 1.
NO_POSITION = Position(0, 0)


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry: the effects of one group commit of one partition, encoded by the
    layer above (replication never looks inside ``payload``). An empty payload is the
    marker a new leader writes first in its epoch."""

    seq: int
    epoch: int
    payload: bytes

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.seq)


class EpochHistory:
    """First seq of every epoch that wrote entries, in increasing order of both."""

    __slots__ = ("_epochs", "_firsts")

    def __init__(self, starts: Iterable[tuple[int, int]] = ()) -> None:
        self._epochs: list[int] = []
        self._firsts: list[int] = []
        for epoch, first in starts:
            self.note(epoch, first)

    def starts(self) -> list[tuple[int, int]]:
        """(epoch, first seq) pairs: what a store persists."""
        return list(zip(self._epochs, self._firsts, strict=True))

    def note(self, epoch: int, seq: int) -> None:
        """Record that ``seq`` was written under ``epoch`` (called for every appended
        entry, in log order; only an epoch's first entry changes anything)."""
        if self._epochs:
            last_epoch = self._epochs[-1]
            if epoch == last_epoch:
                return
            if epoch < last_epoch or seq <= self._firsts[-1]:
                raise InternalError(
                    f"epoch history going backwards: epoch {epoch} at seq {seq} after "
                    f"epoch {last_epoch} from seq {self._firsts[-1]}")
        self._epochs.append(epoch)
        self._firsts.append(seq)

    def epoch_at(self, seq: int) -> int:
        """The epoch that wrote ``seq`` (0 for seq 0, before every entry). Only meaningful
        for a seq the log holds."""
        if seq <= 0:
            return 0
        i = bisect.bisect_right(self._firsts, seq) - 1
        return self._epochs[i] if i >= 0 else 0

    def end_of(self, epoch: int, last_seq: int) -> int:
        """The last seq written under ``epoch`` or any older epoch, in a log whose last
        seq is ``last_seq``: where that epoch ended, as this log knows it."""
        i = bisect.bisect_right(self._epochs, epoch)
        if i >= len(self._epochs):
            return last_seq
        return self._firsts[i] - 1

    def truncate_after(self, seq: int) -> None:
        """Forget epochs that start after ``seq`` (the log was cut back to ``seq``)."""
        while self._firsts and self._firsts[-1] > seq:
            self._firsts.pop()
            self._epochs.pop()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EpochHistory) and self.starts() == other.starts()

    def __repr__(self) -> str:
        return f"EpochHistory({self.starts()!r})"


class RetainedEntries:
    """The newest entries of a log, kept in memory so a follower that fell behind can be
    sent what it missed without reading the store. Bounded by ``bytes_max`` (payload
    bytes): a follower further behind than the window is rebuilt from a snapshot."""

    __slots__ = ("_bytes", "_entries", "bytes_max")

    def __init__(self, bytes_max: int) -> None:
        if bytes_max <= 0:
            raise InternalError(f"retained bytes bound must be positive, not {bytes_max}")
        self.bytes_max = bytes_max
        self._entries: collections.deque[Entry] = collections.deque()
        self._bytes = 0

    def append(self, entry: Entry) -> None:
        if self._entries and entry.seq != self._entries[-1].seq + 1:
            raise InternalError(f"retained entries out of order: {entry.seq} after "
                                f"{self._entries[-1].seq}")
        self._entries.append(entry)
        self._bytes += len(entry.payload)
        # Keep at least the newest entry, however large: it is what every follower
        # needs next.
        while self._bytes > self.bytes_max and len(self._entries) > 1:
            self._bytes -= len(self._entries.popleft().payload)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    @property
    def first_seq(self) -> int | None:
        """The oldest seq held, or None when empty."""
        return self._entries[0].seq if self._entries else None

    def has_from(self, seq: int) -> bool:
        """Whether every entry from ``seq`` to the newest is held (an empty range
        counts)."""
        if not self._entries:
            return False
        return self._entries[0].seq <= seq <= self._entries[-1].seq + 1

    def from_seq(self, seq: int, bytes_max: int) -> Iterator[Entry]:
        """Entries from ``seq`` on, stopping before ``bytes_max`` payload bytes are
        exceeded (the first entry is always given, so one large entry still moves)."""
        if not self._entries or seq > self._entries[-1].seq:
            return
        start = seq - self._entries[0].seq
        if start < 0:
            raise InternalError(f"entry {seq} is older than the retained window")
        total = 0
        entries = self._entries
        # Indexed, not sliced: a deque reaches an index from its nearer end, and
        # followers ask for the newest entries, so this costs what it yields; islice
        # would walk the whole window (64 MiB of entries) from the oldest on every call.
        for i in range(start, len(entries)):
            entry = entries[i]
            total += len(entry.payload)
            if total > bytes_max and i > start:
                return
            yield entry
