"""The messages replicas and the controller exchange, as values.

Their binary form (what crosses a TCP connection between nodes) is in ``_frames``; the
protocol that produces and consumes them is in ``_replica`` (appends and replies) and
``_election`` (fences). Every message names its partition, so one connection per pair
of nodes carries all of their partitions.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferrymq._replication._log import Entry, Position

__all__ = ["Append", "AppendReply", "Fence", "FenceReply", "Message"]


@dataclass(frozen=True, slots=True)
class Append:
    """Leader -> follower: ``entries`` continue the log after ``prev``. With no entries
    it is a heartbeat: it still carries ``commit_seq`` and asks for a reply."""

    partition: str
    epoch: int
    leader: str
    prev: Position
    entries: tuple[Entry, ...]
    commit_seq: int


@dataclass(frozen=True, slots=True)
class AppendReply:
    """Follower -> leader, sent only once ``last`` is durable on the follower.

    ``ok``: the append continued the follower's log. Otherwise ``last`` says where the
    follower's log ends, so the leader can resume from there, and ``needs_snapshot``
    that the follower holds entries the leader does not (or fell out of the window) and
    must be rebuilt. ``fence_epoch`` is the highest epoch the follower has promised: a
    leader that sees one above its own has been replaced."""

    partition: str
    epoch: int
    node: str
    ok: bool
    last: Position
    fence_epoch: int
    incarnation: str  # the follower's store identity (see Replica)
    needs_snapshot: bool = False


@dataclass(frozen=True, slots=True)
class Fence:
    """Controller -> every replica, before it writes a new leader for ``epoch`` into the
    coordinator: promise to accept nothing from an older epoch, and say where your
    durable log ends."""

    partition: str
    epoch: int
    controller: str


@dataclass(frozen=True, slots=True)
class FenceReply:
    """Replica -> controller, sent once the promise is durable. ``accepted`` is False
    when the replica had already promised a higher epoch (``fence_epoch``).
    ``eligible`` is False for a replica whose log cannot be trusted (it is waiting to
    be rebuilt from a snapshot): it must not be elected."""

    partition: str
    epoch: int
    node: str
    accepted: bool
    last: Position
    fence_epoch: int
    eligible: bool


Message = Append | AppendReply | Fence | FenceReply
