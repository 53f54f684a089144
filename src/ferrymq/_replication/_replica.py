"""One replica of one partition: the replication protocol as a sans-I/O state machine.

A ``Replica`` takes events (a role from the coordinator, a proposal, a message from a
peer, a local write made durable, the passing of time) and returns *actions* for its
shell to carry out (send a message, make entries durable, report a commit, ask the
coordinator to change the in-sync replica set, ship or await a snapshot). It never
reads a clock, touches a socket or a disk; the same code runs in a node and in the
deterministic simulator (``ferrymq._sim``).

The protocol (docs/architecture.md, "Replication"):

- The leader of epoch E writes a marker entry first, then one entry per proposal, and
  pushes entries to every follower in pipelined ``Append`` messages, each naming the
  position it continues (``prev``). A follower appends only what continues its log,
  makes it durable (that is also when its store applies it), and only then replies
  with its durable position.
- ``sync`` partitions: an entry is committed once every member of the in-sync set
  (the leader included) has it durable, and the set has at least ``min_isr`` members;
  with fewer, nothing commits and proposals are refused. ``async``: committed once the
  leader has it durable.
- The coordinator (etcd) holds ``{leader, epoch, isr}``. The leader asks it to drop a
  follower that lags more than ``lag_max_ms`` and to re-add one that caught up; a
  follower being re-added counts for commits from the moment it is proposed.
- Fencing: every replica durably remembers the highest epoch it promised (in appends or
  in a controller's ``Fence``) and refuses anything older. A leader that learns of a
  higher epoch steps down at once, so a paused or cut-off leader commits nothing after
  its successor is elected: its successor was in the in-sync set, and refuses it.
- A follower whose log holds entries the leader's does not (written by a leader that
  died before they committed) has diverged. Its store applied them, so it cannot cut
  them off: it is rebuilt from a snapshot of the leader. The controller elects the most
  advanced in-sync replica, so this only happens to replicas that missed the election
  (the old leader among them), never to the new in-sync set.
"""

from __future__ import annotations

import collections
import enum
from collections.abc import Iterable
from dataclasses import dataclass, field

from ferrymq._core._errors import InternalError
from ferrymq._replication._log import (
    NO_POSITION,
    Entry,
    EpochHistory,
    Position,
    RetainedEntries,
)
from ferrymq._replication._messages import Append, AppendReply, Fence, FenceReply, Message

__all__ = [
    "APPEND_BYTES_MAX",
    "HEARTBEAT_MS",
    "IN_FLIGHT_BYTES_MAX",
    "LAG_MAX_MS",
    "RESEND_AFTER_MS",
    "RETAINED_BYTES_MAX",
    "Action",
    "ChangeIsr",
    "Committed",
    "NotWritable",
    "Persist",
    "Replica",
    "Role",
    "Send",
    "SendSnapshot",
    "SteppedDown",
    "WaitForSnapshot",
]

# Payload bytes of the newest entries each replica keeps in memory for followers that
# fall behind (a restart, a slow disk). Past it a follower is rebuilt from a snapshot,
# which costs a copy of the partition: 64 MiB covers several seconds of a busy
# partition (~25k 1 KiB messages/s) with room to spare.
RETAINED_BYTES_MAX = 64 * 1024 * 1024
# Payload bytes per Append message: large enough to batch a busy second's worth of
# small entries into a few messages, small enough that one message never holds a
# connection for long.
APPEND_BYTES_MAX = 1024 * 1024
# Payload bytes sent to a follower and not yet acknowledged: the pipeline depth. Four
# messages' worth keeps a follower's disk busy while its acknowledgements travel back.
IN_FLIGHT_BYTES_MAX = 4 * APPEND_BYTES_MAX
# A follower that has not reached the leader's end of log as it was this long ago (or
# has not replied for this long) is dropped from the in-sync set. Long enough to ride
# out a GC pause or an fsync stall, short enough that a dead follower stops writes (on
# a partition at min_isr) only for a few seconds.
LAG_MAX_MS = 3_000
# An idle leader sends an empty Append this often, so followers learn the commit point
# and the leader learns they are alive.
HEARTBEAT_MS = 500
# Sent entries with no reply for this long are sent again (the network may have lost
# them; a reconnect loses whatever was in flight).
RESEND_AFTER_MS = 1_000
# Samples of (time, end of log) the leader keeps to judge lag: one per tick; the shell
# ticks at least every HEARTBEAT_MS, so LAG_MAX_MS // HEARTBEAT_MS samples suffice,
# and twice that tolerates faster ticks.
_LAG_SAMPLES_MAX = 4 * (LAG_MAX_MS // HEARTBEAT_MS) + 4


class Role(enum.Enum):
    FOLLOWER = "follower"
    LEADER = "leader"
    # Holds entries no current leader has (or fell out of every window): waiting for a
    # snapshot; never elected, never acknowledges an append.
    REBUILDING = "rebuilding"


# (role, event) -> new role. Anything not listed is a bug in the caller.
_TRANSITIONS: dict[tuple[Role, str], Role] = {
    (Role.FOLLOWER, "lead"): Role.LEADER,
    (Role.FOLLOWER, "follow"): Role.FOLLOWER,
    (Role.FOLLOWER, "diverge"): Role.REBUILDING,
    # A follower further behind than the leader's window is sent a snapshot too.
    (Role.FOLLOWER, "install"): Role.FOLLOWER,
    (Role.LEADER, "lead"): Role.LEADER,  # re-elected in a later epoch
    (Role.LEADER, "follow"): Role.FOLLOWER,
    (Role.LEADER, "step_down"): Role.FOLLOWER,
    (Role.LEADER, "diverge"): Role.REBUILDING,
    (Role.REBUILDING, "follow"): Role.REBUILDING,
    (Role.REBUILDING, "install"): Role.FOLLOWER,
    (Role.REBUILDING, "diverge"): Role.REBUILDING,  # also: a snapshot begins
}


class NotWritable(Exception):
    """A proposal this replica cannot take: not the leader, or too few in-sync replicas.
    Clients retry (the shell answers 503 ``ServiceUnavailable``)."""


# ---- actions -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    to: str
    message: Message


@dataclass(frozen=True, slots=True)
class Persist:
    """Make ``entries`` durable after every earlier Persist (and, with them, the epoch
    promise ``fence_epoch`` and the epoch history), then call ``persisted``.
    ``through_seq`` is the log's end when the write was issued (nothing beyond it is
    made durable by it). With no entries only the promise changes."""

    entries: tuple[Entry, ...]
    fence_epoch: int
    through_seq: int
    # The store this write is for: a snapshot replaces the store, and writes issued
    # for the replaced one are void (``persisted`` ignores their completion).
    generation: int


@dataclass(frozen=True, slots=True)
class Committed:
    """Leader: every entry up to ``seq`` is committed (answer the clients waiting)."""

    seq: int


@dataclass(frozen=True, slots=True)
class ChangeIsr:
    """Leader: ask the coordinator to set the in-sync set to ``isr`` for ``epoch``
    (conditioned on the state the leader was given); report with ``isr_changed`` or
    ``isr_change_failed``."""

    epoch: int
    isr: frozenset[str]


@dataclass(frozen=True, slots=True)
class SendSnapshot:
    """Leader: ``to`` needs a copy of this replica's durable state."""

    to: str


@dataclass(frozen=True, slots=True)
class WaitForSnapshot:
    """Follower: this replica's log diverged or fell out of the leader's window; stop
    serving it and wait for ``installed``."""

    reason: str


@dataclass(frozen=True, slots=True)
class SteppedDown:
    """Leader: a higher epoch exists; fail every proposal that has not committed."""

    epoch: int
    reason: str


Action = Send | Persist | Committed | ChangeIsr | SendSnapshot | WaitForSnapshot | SteppedDown


# ---- the replica ------------------------------------------------------------------------


@dataclass(slots=True)
class _Progress:
    """The leader's view of one follower."""

    acked_seq: int = 0  # durable on the follower, in agreement with the leader's log
    next_seq: int = 1  # the next entry to send
    sent_at_ms: int = 0  # when the oldest unacknowledged entry was sent (0: none)
    replied_ms: int = 0
    snapshot: bool = False  # a snapshot is being sent; send nothing else
    # The follower's store identity: a reply from another incarnation (the node lost
    # its disk and started empty) resets what the leader believes it holds.
    incarnation: str = ""
    # Appends sent and not acknowledged, as (last seq, payload bytes), oldest first,
    # and their byte total: the pipeline window. Bounded by IN_FLIGHT_BYTES_MAX.
    in_flight: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)
    in_flight_bytes: int = 0

    def acknowledge(self, seq: int) -> None:
        self.acked_seq = seq
        while self.in_flight and self.in_flight[0][0] <= seq:
            self.in_flight_bytes -= self.in_flight.popleft()[1]

    def rewind(self, seq: int) -> None:
        """Send again from ``seq`` (what was in flight is presumed lost)."""
        self.next_seq = seq
        self.in_flight.clear()
        self.in_flight_bytes = 0
        self.sent_at_ms = 0


@dataclass(slots=True)
class _LeaderState:
    replicas: frozenset[str]
    isr: frozenset[str]  # as the coordinator holds it
    adding: frozenset[str]  # proposed for the in-sync set: they count for commits already
    min_isr: int
    sync: bool
    commit_seq: int
    first_seq: int  # the epoch's marker entry
    isr_change_pending: bool = False
    followers: dict[str, _Progress] = field(default_factory=dict)
    # (time, end of log) samples, oldest first, for lag; bounded by _LAG_SAMPLES_MAX.
    ends: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)
    heartbeat_ms: int = 0


class Replica:
    """See the module docstring. ``durable`` is what the replica's store holds when the
    shell builds it (its last position, promised epoch and epoch history)."""

    def __init__(self, partition: str, node: str, *, last: Position = NO_POSITION,
                 fence_epoch: int = 0, history: EpochHistory | None = None,
                 incarnation: str = "", generation: int = 0,
                 retained_bytes_max: int = RETAINED_BYTES_MAX) -> None:
        self.partition = partition
        self.node = node
        # The epoch promised before this process started: it may have led that epoch
        # and lost unfsynced entries of it in a crash, so it must never lead it (or an
        # older one) again: writing different entries under an (epoch, seq) a follower
        # already holds would go unnoticed.
        self._boot_fence_epoch = fence_epoch
        # Names this replica's store (a new one for an empty store), so a leader can
        # tell a follower that restarted from one that lost its data.
        self.incarnation = incarnation
        self.role = Role.FOLLOWER
        self.fence_epoch = fence_epoch  # durable once _fence_durable catches up
        self._fence_durable = fence_epoch
        self.history = history if history is not None else EpochHistory()
        if last != NO_POSITION and self.history.epoch_at(last.seq) != last.epoch:
            raise InternalError(f"{partition}@{node}: last position {last} disagrees "
                                f"with the epoch history {self.history}")
        self.appended = last  # the log's end, durable or not
        self.durable_seq = last.seq
        self.epoch = 0  # the epoch of the current leader, as far as this replica knows
        self.leader: str | None = None
        self._retained = RetainedEntries(retained_bytes_max)
        self._leading: _LeaderState | None = None
        # Follower: an accepted append waits for its Persist to be answered.
        self._reply_due = False
        # Controller fences waiting for their promise to be durable.
        self._pending_fences: list[Fence] = []
        # Bumped when a snapshot starts replacing the store (see Persist); the shell
        # persists it with the store and passes it back after a restart.
        self.generation = generation
        # Set by the shell when this replica starts with an empty store in a replica
        # set that already has data (its node lost its disk): until a leader has given
        # it a copy it must not be elected, or it would lead with nothing.
        self.needs_copy = False

    # ---- queries -------------------------------------------------------------------

    @property
    def writable(self) -> bool:
        st = self._leading
        return (self.role is Role.LEADER and st is not None
                and (not st.sync or len(st.isr) >= st.min_isr))

    @property
    def commit_seq(self) -> int:
        return self._leading.commit_seq if self._leading is not None else 0

    @property
    def isr(self) -> frozenset[str]:
        return self._leading.isr if self._leading is not None else frozenset()

    def follower_acked(self) -> dict[str, int]:
        """Leader: each follower's durable, agreed seq (for status and lag reports)."""
        st = self._leading
        return {} if st is None else {n: p.acked_seq for n, p in st.followers.items()}

    def position(self) -> Position:
        """The durable end of this replica's log."""
        return Position(self.history.epoch_at(self.durable_seq), self.durable_seq)

    def may_lead(self, epoch: int) -> bool:
        """Whether ``lead(epoch)`` is allowed. When the coordinator names this replica
        leader of an epoch it may not lead (it restarted since, or it is rebuilding), the
        shell resigns the leadership so the controller elects a later epoch."""
        return (epoch > self._boot_fence_epoch and epoch >= self.fence_epoch
                and self.role is not Role.REBUILDING
                and not (self.role is Role.LEADER and epoch <= self.epoch))

    # ---- role changes --------------------------------------------------------------

    def _move(self, event: str) -> None:
        new = _TRANSITIONS.get((self.role, event))
        if new is None:
            raise InternalError(f"{self.partition}@{self.node}: no transition for "
                                f"{event!r} from {self.role.value}")
        self.role = new

    def lead(self, epoch: int, *, replicas: Iterable[str], isr: Iterable[str], min_isr: int,
             sync: bool, now_ms: int) -> list[Action]:
        """Become the leader of ``epoch`` (the coordinator says so). The controller fenced
        this replica at ``epoch`` before electing it, so nothing older can arrive."""
        if not self.may_lead(epoch):
            raise InternalError(f"{self.partition}@{self.node}: may not lead epoch {epoch} "
                                f"(promised {self.fence_epoch}, {self._boot_fence_epoch} "
                                f"before starting, {self.role.value})")
        self._move("lead")
        actions: list[Action] = []
        if epoch > self.fence_epoch:
            self.fence_epoch = epoch
        self.epoch = epoch
        self.leader = self.node
        replica_set = frozenset(replicas)
        in_sync = frozenset(isr)
        if self.node not in in_sync or not in_sync <= replica_set:
            raise InternalError(f"{self.partition}@{self.node}: leading epoch {epoch} with "
                                f"in-sync set {sorted(in_sync)} of {sorted(replica_set)}")
        marker = Entry(self.appended.seq + 1, epoch, b"")
        st = _LeaderState(replicas=replica_set, isr=in_sync, adding=frozenset(),
                          min_isr=min_isr, sync=sync, commit_seq=0, first_seq=marker.seq)
        # Sorted: the order of sends must not depend on string hashing (the simulator
        # replays a seed only if every choice is made in the same order).
        for peer in sorted(replica_set - {self.node}):
            # Optimistic: start at the marker; a follower whose log ends elsewhere says
            # so and the leader resumes from there. Counted as replied now, so it is not
            # dropped from the in-sync set before it had a chance to answer.
            st.followers[peer] = _Progress(next_seq=marker.seq, replied_ms=now_ms)
        st.ends.append((now_ms, self.appended.seq))
        self._leading = st
        actions.append(self._append_local(marker))
        actions.extend(self._pump(now_ms))
        return actions

    def follow(self, epoch: int, leader: str) -> list[Action]:
        """The coordinator says ``leader`` leads ``epoch``. Ignored when older than what
        this replica promised."""
        if epoch < self.fence_epoch or leader == self.node:
            return []
        actions: list[Action] = []
        if self.role is Role.LEADER:
            actions.append(SteppedDown(epoch, f"{leader} leads epoch {epoch}"))
        self._move("follow")
        self._leading = None
        self.epoch = epoch
        self.leader = leader
        if epoch > self.fence_epoch:
            self.fence_epoch = epoch
            actions.append(self._persist_fence())
        return actions

    def begin_install(self) -> int:
        """A snapshot from the leader is about to replace this replica's store: accept no
        append until ``installed``, and void the writes still pending for the old store.
        Returns the new store's generation (the shell tags the install with it)."""
        self._move("diverge")
        self._leading = None
        self._reply_due = False
        self.generation += 1
        return self.generation

    def installed(self, last: Position, history: EpochHistory) -> list[Action]:
        """A snapshot of the leader, durable at ``last``, replaced this replica's store."""
        self._move("install")
        if last != NO_POSITION and history.epoch_at(last.seq) != last.epoch:
            raise InternalError(f"snapshot at {last} disagrees with its history {history}")
        self.history = history
        self.appended = last
        self.durable_seq = last.seq
        self._retained.clear()
        self.needs_copy = False
        if self.leader is None:
            return []
        # Tell the leader where to resume.
        return [self._reply(ok=True)]

    # ---- the leader's side -----------------------------------------------------------

    def propose(self, payload: bytes, now_ms: int, *,
                send: bool = True) -> tuple[int, list[Action]]:
        """Append one entry; returns its seq and the actions. Raises ``NotWritable``.
        With ``send`` False the entry is not sent yet: the shell calls ``pump`` once for
        many proposals, so followers get them in one ``Append``."""
        st = self._leading
        if st is None or self.role is not Role.LEADER:
            raise NotWritable(f"{self.node} does not lead {self.partition}")
        if st.sync and len(st.isr) < st.min_isr:
            raise NotWritable(f"{self.partition} has {len(st.isr)} in-sync replicas, fewer "
                              f"than the {st.min_isr} it needs")
        entry = Entry(self.appended.seq + 1, self.epoch, payload)
        actions: list[Action] = [self._append_local(entry)]
        if send:
            actions.extend(self._pump(now_ms))
        return entry.seq, actions

    def pump(self, now_ms: int) -> list[Action]:
        """Send every follower what it has not been sent yet (after proposals made with
        ``send=False``)."""
        return self._pump(now_ms)

    def _append_local(self, entry: Entry) -> Persist:
        self.history.note(entry.epoch, entry.seq)
        self._retained.append(entry)
        self.appended = entry.position
        return Persist((entry,), self.fence_epoch, entry.seq, self.generation)

    def _pump(self, now_ms: int, only: str | None = None) -> list[Action]:
        """Send each follower what it has not been sent, within its window."""
        st = self._leading
        if st is None:
            return []
        actions: list[Action] = []
        # Followers in step are sent the same Append object, which the transport then
        # encodes once for all of them (keyed by the span it carries).
        shared: dict[tuple[int, int], Append] = {}
        for peer, prog in st.followers.items():
            if only is not None and peer != only:
                continue
            if prog.snapshot:
                continue
            while prog.next_seq <= self.appended.seq \
                    and prog.in_flight_bytes < IN_FLIGHT_BYTES_MAX:
                if not self._retained.has_from(prog.next_seq):
                    prog.snapshot = True
                    actions.append(SendSnapshot(peer))
                    break
                entries = tuple(self._retained.from_seq(prog.next_seq, APPEND_BYTES_MAX))
                if not entries:
                    break
                prev_seq = prog.next_seq - 1
                if not prog.in_flight:
                    prog.sent_at_ms = now_ms
                size = sum(len(e.payload) for e in entries)
                prog.in_flight.append((entries[-1].seq, size))
                prog.in_flight_bytes += size
                span = (prev_seq, entries[-1].seq)
                append = shared.get(span)
                if append is None:
                    append = shared[span] = Append(
                        self.partition, self.epoch, self.node,
                        Position(self.history.epoch_at(prev_seq), prev_seq), entries,
                        st.commit_seq)
                actions.append(Send(peer, append))
                prog.next_seq = entries[-1].seq + 1
        return actions

    def _on_reply(self, msg: AppendReply, now_ms: int) -> list[Action]:
        st = self._leading
        if st is None or self.role is not Role.LEADER:
            return []
        if msg.fence_epoch > self.epoch:
            return self._step_down(msg.fence_epoch, f"{msg.node} promised epoch "
                                                    f"{msg.fence_epoch}")
        if msg.epoch != self.epoch:
            return []  # an answer to an earlier epoch of this replica's
        prog = st.followers.get(msg.node)
        if prog is None:
            return []
        prog.replied_ms = now_ms
        actions: list[Action] = []
        if prog.snapshot:
            return actions  # snapshot_sent or snapshot_failed says how it went
        if msg.needs_snapshot or not self._agrees(msg.last):
            prog.snapshot = True
            prog.acked_seq = 0
            prog.rewind(0)
            actions.append(SendSnapshot(msg.node))
            return actions
        if msg.incarnation != prog.incarnation:
            # Not the store the leader knew (a first answer, or a node that lost its
            # disk and came back empty): it holds exactly what it says now.
            prog.incarnation = msg.incarnation
            prog.acknowledge(msg.last.seq)
            prog.acked_seq = msg.last.seq
            prog.rewind(msg.last.seq + 1)
        elif msg.last.seq > prog.acked_seq:
            prog.acknowledge(msg.last.seq)
            if not prog.in_flight:
                prog.sent_at_ms = 0
            elif msg.ok:
                prog.sent_at_ms = now_ms
            if not msg.ok:
                # The append did not continue the follower's log: resume where it ends.
                prog.rewind(msg.last.seq + 1)
        elif not msg.ok and msg.last.seq == prog.acked_seq:
            prog.rewind(msg.last.seq + 1)
        # Otherwise a stale answer (an older durable position): nothing to learn.
        prog.next_seq = max(prog.next_seq, prog.acked_seq + 1)
        actions.extend(self._maybe_expand(msg.node))
        actions.extend(self._advance_commit())
        actions.extend(self._pump(now_ms, only=msg.node))
        return actions

    def _agrees(self, pos: Position) -> bool:
        """Whether a log ending at ``pos`` is a prefix of this one."""
        if pos == NO_POSITION:
            return True
        if pos.seq > self.appended.seq:
            return False
        return (self.history.epoch_at(pos.seq) == pos.epoch
                and pos.seq <= self.history.end_of(pos.epoch, self.appended.seq))

    def _maybe_expand(self, peer: str) -> list[Action]:
        st = self._leading
        assert st is not None
        prog = st.followers[peer]
        # Caught up: it holds everything committed in this epoch (the marker at least).
        # From the moment it is proposed it counts for commits, so the entries after it
        # wait for it too.
        if (peer in st.isr or peer in st.adding or st.isr_change_pending or prog.snapshot
                or prog.acked_seq < max(st.commit_seq, st.first_seq)):
            return []
        st.adding = st.adding | {peer}
        st.isr_change_pending = True
        return [ChangeIsr(self.epoch, st.isr | {peer})]

    def _commit_set(self) -> frozenset[str]:
        st = self._leading
        assert st is not None
        return (st.isr | st.adding) - {self.node}

    def _advance_commit(self) -> list[Action]:
        st = self._leading
        if st is None:
            return []
        if not st.sync:
            candidate = self.durable_seq
        else:
            if len(st.isr) < st.min_isr:
                return []
            candidate = self.durable_seq
            for peer in self._commit_set():
                candidate = min(candidate, st.followers[peer].acked_seq)
        if candidate <= st.commit_seq:
            return []
        if candidate > self.appended.seq:
            raise InternalError(f"{self.partition}: commit {candidate} beyond the log's end "
                                f"{self.appended.seq}")
        st.commit_seq = candidate
        return [Committed(candidate)]

    def _step_down(self, epoch: int, reason: str) -> list[Action]:
        self._move("step_down")
        self._leading = None
        self.leader = None
        actions: list[Action] = [SteppedDown(epoch, reason)]
        if epoch > self.fence_epoch:
            self.fence_epoch = epoch
            actions.append(self._persist_fence())
        return actions

    def isr_changed(self, isr: Iterable[str], now_ms: int) -> list[Action]:
        """Leader: the coordinator now holds ``isr`` (after a ChangeIsr, or a watch)."""
        st = self._leading
        if st is None:
            return []
        new = frozenset(isr)
        if self.node not in new:
            raise InternalError(f"{self.partition}: the leader {self.node} left the "
                                f"in-sync set {sorted(new)}")
        st.isr = new
        st.adding = st.adding - new
        st.isr_change_pending = False
        actions = self._advance_commit()
        actions.extend(self.tick(now_ms))
        return actions

    def isr_change_failed(self) -> list[Action]:
        """Leader: the coordinator refused the change (its state moved on); the shell
        reloads it and calls ``lead``/``follow``/``isr_changed`` as it now says."""
        st = self._leading
        if st is not None:
            st.adding = frozenset()
            st.isr_change_pending = False
        return []

    def snapshot_sent(self, peer: str, last: Position, incarnation: str,
                      now_ms: int) -> list[Action]:
        """Leader: ``peer`` installed a snapshot of this replica taken at ``last`` (its
        store is now ``incarnation``); stream to it from there."""
        st = self._leading
        if st is None or peer not in st.followers or not self._agrees(last):
            return []
        prog = st.followers[peer]
        prog.snapshot = False
        prog.incarnation = incarnation
        prog.acked_seq = last.seq
        prog.rewind(last.seq + 1)
        prog.replied_ms = now_ms
        actions = self._maybe_expand(peer)
        # The copy may be what the last in-sync replica lacked for an entry to commit.
        actions.extend(self._advance_commit())
        actions.extend(self._pump(now_ms, only=peer))
        return actions

    def snapshot_failed(self, peer: str) -> None:
        """Leader: the snapshot to ``peer`` did not arrive; it is offered again when the
        follower next answers."""
        st = self._leading
        if st is not None and peer in st.followers:
            st.followers[peer].snapshot = False

    def tick(self, now_ms: int) -> list[Action]:
        """Time passes: heartbeats, resends, and in-sync set maintenance (leader)."""
        st = self._leading
        if st is None or self.role is not Role.LEADER:
            return []
        st.ends.append((now_ms, self.appended.seq))
        while len(st.ends) > _LAG_SAMPLES_MAX or (
                len(st.ends) > 1 and st.ends[1][0] <= now_ms - LAG_MAX_MS):
            st.ends.popleft()
        # The end of log as of LAG_MAX_MS ago: an in-sync follower has reached it.
        due_seq = st.ends[0][1] if st.ends[0][0] <= now_ms - LAG_MAX_MS else 0
        actions: list[Action] = []
        lagging: set[str] = set()
        for peer, prog in st.followers.items():
            if prog.snapshot:
                lagging.add(peer)
                continue
            if prog.in_flight and now_ms - prog.sent_at_ms >= RESEND_AFTER_MS:
                # Resend what was not acknowledged. A follower not heard from in this
                # epoch is resent from the epoch's marker, where it started: from its
                # acknowledged 0 the leader may hold nothing (it restarted), and a
                # follower that is merely down must not be offered a snapshot it cannot
                # take; its first answer says where its log ends.
                prog.rewind(prog.acked_seq + 1 if prog.incarnation
                            else max(prog.acked_seq + 1, st.first_seq))
            if now_ms - prog.replied_ms > LAG_MAX_MS or prog.acked_seq < due_seq:
                lagging.add(peer)
        heartbeat = now_ms - st.heartbeat_ms >= HEARTBEAT_MS
        if heartbeat:
            st.heartbeat_ms = now_ms
        for peer, prog in st.followers.items():
            if heartbeat and not prog.snapshot and prog.next_seq > self.appended.seq:
                prev = Position(self.history.epoch_at(prog.next_seq - 1), prog.next_seq - 1)
                actions.append(Send(peer, Append(self.partition, self.epoch, self.node, prev,
                                                 (), st.commit_seq)))
        actions.extend(self._pump(now_ms))
        dropping = (lagging & st.isr) - {self.node}
        if dropping and not st.isr_change_pending:
            st.isr_change_pending = True
            actions.append(ChangeIsr(self.epoch, st.isr - dropping))
        return actions

    # ---- the follower's side -------------------------------------------------------------

    def _reply(self, *, ok: bool, needs_snapshot: bool = False) -> Send:
        if self.leader is None:
            raise InternalError(f"{self.partition}@{self.node}: reply with no leader")
        return Send(self.leader, AppendReply(
            self.partition, self.epoch, self.node, ok, self.position(), self.fence_epoch,
            self.incarnation, needs_snapshot))

    def _persist_fence(self) -> Persist:
        return Persist((), self.fence_epoch, self.appended.seq, self.generation)

    def _diverge(self, reason: str) -> list[Action]:
        self._move("diverge")
        self._leading = None
        actions: list[Action] = [WaitForSnapshot(reason)]
        if self.leader is not None and self.leader != self.node:
            actions.append(self._reply(ok=False, needs_snapshot=True))
        return actions

    def _on_append(self, msg: Append) -> list[Action]:
        if msg.epoch < self.fence_epoch:
            # A stale leader: tell it which epoch replaced it.
            return [Send(msg.leader, AppendReply(
                self.partition, msg.epoch, self.node, False, self.position(),
                self.fence_epoch, self.incarnation))]
        if msg.leader == self.node:
            raise InternalError(f"{self.partition}@{self.node}: an append from itself")
        actions: list[Action] = []
        if self.role is Role.LEADER:
            # Only the coordinator makes a leader; an append of a newer epoch means this
            # replica has been replaced.
            actions.extend(self._step_down(msg.epoch, f"{msg.leader} appends in epoch "
                                                      f"{msg.epoch}"))
        fence_changed = msg.epoch > self.fence_epoch
        if fence_changed:
            self.fence_epoch = msg.epoch
        self.epoch = msg.epoch
        self.leader = msg.leader
        if self.role is Role.REBUILDING:
            if fence_changed:
                actions.append(self._persist_fence())
            actions.append(self._reply(ok=False, needs_snapshot=True))
            return actions
        prev = msg.prev
        if prev.seq > self.appended.seq:
            # A gap (something was lost on the way): say where this log ends.
            if fence_changed:
                actions.append(self._persist_fence())
            actions.append(self._reply(ok=False))
            return actions
        if prev != NO_POSITION and self.history.epoch_at(prev.seq) != prev.epoch:
            return actions + self._diverge(
                f"entry {prev.seq} is of epoch {self.history.epoch_at(prev.seq)} here, "
                f"{prev.epoch} at the leader")
        new: list[Entry] = []
        for entry in msg.entries:
            if entry.seq <= self.appended.seq:
                if self.history.epoch_at(entry.seq) != entry.epoch:
                    return actions + self._diverge(
                        f"entry {entry.seq} is of epoch {self.history.epoch_at(entry.seq)} "
                        f"here, {entry.epoch} at the leader")
                continue  # already held (a resend)
            if entry.seq != self.appended.seq + 1:
                raise InternalError(f"{self.partition}: append skips from "
                                    f"{self.appended.seq} to {entry.seq}")
            if entry.epoch > msg.epoch:
                raise InternalError(f"{self.partition}: entry of epoch {entry.epoch} in an "
                                    f"append of epoch {msg.epoch}")
            self.history.note(entry.epoch, entry.seq)
            self._retained.append(entry)
            self.appended = entry.position
            new.append(entry)
        if new or fence_changed:
            actions.append(Persist(tuple(new), self.fence_epoch, self.appended.seq,
                                   self.generation))
            self._reply_due = True  # answered when it is durable
        else:
            actions.append(self._reply(ok=True))  # a heartbeat or a resend
        return actions

    def _on_fence(self, msg: Fence) -> list[Action]:
        if msg.epoch < self.fence_epoch:
            return [Send(msg.controller, self._fence_reply(msg, accepted=False))]
        actions: list[Action] = []
        if self.role is Role.LEADER and msg.epoch > self.epoch:
            actions.extend(self._step_down(msg.epoch, f"fenced for epoch {msg.epoch}"))
        if msg.epoch > self.fence_epoch:
            self.fence_epoch = msg.epoch
            actions.append(self._persist_fence())
        self._pending_fences.append(msg)
        actions.extend(self._answer_fences())
        return actions

    def _fence_reply(self, msg: Fence, *, accepted: bool) -> FenceReply:
        return FenceReply(self.partition, msg.epoch, self.node, accepted, self.position(),
                          self.fence_epoch,
                          eligible=self.role is not Role.REBUILDING and not self.needs_copy)

    def _answer_fences(self) -> list[Action]:
        """Answer the controller's fences whose promise (and every write before it) is
        durable: then the position reported can no longer grow under an older epoch."""
        if self._fence_durable < self.fence_epoch or self.durable_seq < self.appended.seq:
            return []
        actions: list[Action] = [
            Send(msg.controller, self._fence_reply(msg, accepted=True))
            for msg in self._pending_fences]
        self._pending_fences.clear()
        return actions

    # ---- events from the shell -------------------------------------------------------------

    def persisted(self, through_seq: int, fence_epoch: int, generation: int) -> list[Action]:
        """A Persist is durable: entries up to ``through_seq``, promise ``fence_epoch``."""
        if generation != self.generation:
            return []  # for a store a snapshot has replaced
        if through_seq > self.appended.seq:
            raise InternalError(f"{self.partition}: durable {through_seq} beyond the log's "
                                f"end {self.appended.seq}")
        # Writes complete in order, so both only grow; a promise written while a
        # snapshot was being installed names the old log's end, which the snapshot may
        # have passed: it makes nothing less durable.
        self.durable_seq = max(self.durable_seq, through_seq)
        self._fence_durable = max(self._fence_durable, fence_epoch)
        if self.durable_seq > 0 and self.role is not Role.REBUILDING:
            self.needs_copy = False  # it holds a leader's log now
        actions: list[Action] = []
        if self.role is Role.LEADER:
            actions.extend(self._advance_commit())
        elif self._reply_due and self.leader is not None and self.role is Role.FOLLOWER:
            # Acknowledge what is durable now, even while later appends are still being
            # written: the leader's commit follows the slowest in-sync disk, not the
            # pipeline's tail.
            self._reply_due = self.durable_seq < self.appended.seq
            actions.append(self._reply(ok=True))
        actions.extend(self._answer_fences())
        return actions

    def receive(self, msg: Message, now_ms: int) -> list[Action]:
        """A message from a peer or the controller."""
        if msg.partition != self.partition:
            raise InternalError(f"message for {msg.partition} given to {self.partition}")
        if isinstance(msg, Append):
            return self._on_append(msg)
        if isinstance(msg, AppendReply):
            return self._on_reply(msg, now_ms)
        if isinstance(msg, Fence):
            return self._on_fence(msg)
        return []  # FenceReply goes to the controller, not to replicas
