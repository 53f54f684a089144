"""The replication protocol's rules, one at a time, on replicas wired together by hand.

``Wire`` delivers messages and makes writes durable only when a test says so, so each
test controls exactly what reached whom. The seeded simulation (tests/sim) checks the
same code under random faults; these tests pin down the individual rules.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from ferrymq._core._errors import InternalError
from ferrymq._replication._log import NO_POSITION, Entry, EpochHistory, Position
from ferrymq._replication._messages import Append, AppendReply, Fence, FenceReply
from ferrymq._replication._replica import (
    LAG_MAX_MS,
    RESEND_AFTER_MS,
    Action,
    ChangeIsr,
    Committed,
    NotWritable,
    Persist,
    Replica,
    Role,
    Send,
    SendSnapshot,
    SteppedDown,
    WaitForSnapshot,
)

P = "q"


class Wire:
    """Replicas by name; the actions they emit are queued until delivered."""

    def __init__(self, *names: str) -> None:
        self.replicas = {n: Replica(P, n, incarnation=f"{n}.1") for n in names}
        self.outbox: list[tuple[str, Send]] = []  # (from, send)
        self.pending: dict[str, list[Persist]] = {n: [] for n in names}
        self.events: list[tuple[str, Action]] = []
        self.now_ms = 1_000

    def run(self, name: str, actions: Iterable[Action]) -> None:
        for action in actions:
            self.events.append((name, action))
            if isinstance(action, Send):
                self.outbox.append((name, action))
            elif isinstance(action, Persist):
                self.pending[name].append(action)

    def deliver(self, *, to: str | None = None, drop: bool = False) -> int:
        """Deliver (or drop) queued messages, optionally only those to ``to``."""
        keep, todo = [], []
        for item in self.outbox:
            (todo if to is None or item[1].to == to else keep).append(item)
        self.outbox = keep
        for _src, send in todo:
            if not drop and send.to in self.replicas:
                dst = self.replicas[send.to]
                self.run(send.to, dst.receive(send.message, self.now_ms))
        return len(todo)

    def sync(self, name: str | None = None) -> None:
        """Make every pending write durable (of one replica, or all)."""
        for n in [name] if name else list(self.replicas):
            todo, self.pending[n] = self.pending[n], []
            for p in todo:
                self.run(n, self.replicas[n].persisted(p.through_seq, p.fence_epoch,
                                                       p.generation))

    def settle(self, rounds: int = 20) -> None:
        for _ in range(rounds):
            self.sync()
            if not self.deliver() and not any(self.pending.values()):
                return

    def committed(self, name: str) -> int:
        seqs = [a.seq for n, a in self.events if n == name and isinstance(a, Committed)]
        return max(seqs, default=0)

    def of(self, kind: type) -> list[tuple[str, Action]]:
        return [(n, a) for n, a in self.events if isinstance(a, kind)]


def elect(w: Wire, leader: str, epoch: int = 1, *, isr: Iterable[str] | None = None,
          min_isr: int = 2, sync: bool = True) -> None:
    names = list(w.replicas)
    for name, replica in w.replicas.items():
        if name != leader:
            w.run(name, replica.follow(epoch, leader))
    w.run(leader, w.replicas[leader].lead(epoch, replicas=names, isr=isr or names,
                                          min_isr=min_isr, sync=sync, now_ms=w.now_ms))


def test_a_sync_entry_commits_only_when_every_in_sync_replica_has_it_durable() -> None:
    w = Wire("a", "b", "c")
    elect(w, "a")
    w.settle()
    marker = w.committed("a")
    assert marker == 1  # the epoch's marker entry
    seq, actions = w.replicas["a"].propose(b"m1", w.now_ms)
    w.run("a", actions)
    w.sync("a")
    w.deliver()  # b and c append, but have not fsynced
    assert w.committed("a") == marker
    w.sync("b")
    w.deliver()
    assert w.committed("a") == marker, "c has not made it durable yet"
    w.sync("c")
    w.deliver()
    assert w.committed("a") == seq


def test_async_commits_on_the_leaders_own_fsync() -> None:
    w = Wire("a", "b", "c")
    elect(w, "a", sync=False)
    w.sync("a")
    seq, actions = w.replicas["a"].propose(b"m1", w.now_ms)
    w.run("a", actions)
    w.sync("a")
    assert w.committed("a") == seq  # no follower was even reached


def test_below_min_isr_proposals_are_refused() -> None:
    w = Wire("a", "b", "c")
    elect(w, "a", isr=["a"], min_isr=2)
    assert not w.replicas["a"].writable
    with pytest.raises(NotWritable, match="fewer than the 2"):
        w.replicas["a"].propose(b"x", w.now_ms)
    with pytest.raises(NotWritable, match="does not lead"):
        w.replicas["b"].propose(b"x", w.now_ms)


def test_a_follower_refuses_an_older_epoch_and_the_stale_leader_steps_down() -> None:
    w = Wire("a", "b", "c")
    elect(w, "a", epoch=1)
    w.settle()
    # b is elected for epoch 2 (the controller fenced c at 2); a does not know yet.
    w.run("c", w.replicas["c"].receive(Fence(P, 2, "ctl"), w.now_ms))
    w.sync("c")
    w.outbox.clear()
    seq, actions = w.replicas["a"].propose(b"stale", w.now_ms)
    w.run("a", actions)
    w.sync("a")
    w.deliver(to="c")
    reply = next(s.message for src, s in w.outbox if src == "c" and s.to == "a")
    assert isinstance(reply, AppendReply) and not reply.ok and reply.fence_epoch == 2
    w.deliver(to="a")
    assert w.replicas["a"].role is Role.FOLLOWER
    assert w.of(SteppedDown) and w.committed("a") < seq, "nothing committed after the fence"


def test_a_fence_is_answered_only_once_durable_with_the_final_position() -> None:
    w = Wire("a", "b")
    elect(w, "a", min_isr=1)
    w.settle()
    seq, actions = w.replicas["a"].propose(b"m", w.now_ms)
    w.run("a", actions)
    w.sync("a")
    w.deliver(to="b")  # b appended seq, not yet durable
    w.run("b", w.replicas["b"].receive(Fence(P, 2, "ctl"), w.now_ms))
    assert not [s for src, s in w.outbox if src == "b" and s.to == "ctl"]
    w.sync("b")
    (reply,) = [s.message for src, s in w.outbox if src == "b" and s.to == "ctl"]
    assert isinstance(reply, FenceReply) and reply.accepted
    assert reply.last == Position(1, seq) and reply.fence_epoch == 2
    # A lower fence later is refused, naming the promise.
    w.outbox.clear()
    w.run("b", w.replicas["b"].receive(Fence(P, 1, "ctl"), w.now_ms))
    (refusal,) = [s.message for _src, s in w.outbox]
    assert isinstance(refusal, FenceReply) and not refusal.accepted and refusal.fence_epoch == 2


def test_a_diverged_follower_waits_for_a_snapshot_and_rejoins() -> None:
    w = Wire("a", "b", "c")
    elect(w, "a", epoch=1)
    w.settle()
    # a appends seq 2 and only b gets it; then a dies and c leads epoch 2 without it.
    _, actions = w.replicas["a"].propose(b"lost", w.now_ms)
    w.run("a", actions)
    w.sync("a")
    w.deliver(to="b")
    w.deliver(to="c", drop=True)
    w.sync("b")
    w.outbox.clear()
    del w.replicas["a"]
    w.run("b", w.replicas["b"].follow(2, "c"))
    w.run("c", w.replicas["c"].lead(2, replicas=["a", "b", "c"], isr=["b", "c"], min_isr=2,
                                    sync=True, now_ms=w.now_ms))
    w.settle()
    assert w.replicas["b"].role is Role.REBUILDING
    assert ("b", WaitForSnapshot) in [(n, type(a)) for n, a in w.events]
    assert ("c", SendSnapshot(to="b")) in w.events
    # The snapshot: c's durable log, installed on b.
    c = w.replicas["c"]
    snapshot = (c.position(), EpochHistory(c.history.starts()))
    generation = w.replicas["b"].begin_install()
    assert generation == 1
    w.run("b", w.replicas["b"].installed(*snapshot))
    w.run("c", c.snapshot_sent("b", snapshot[0], "b.2", w.now_ms))
    seq, actions = c.propose(b"after", w.now_ms)
    w.run("c", actions)
    w.settle()
    assert w.replicas["b"].position() == Position(2, seq)
    assert w.committed("c") == seq


def test_writes_for_a_replaced_store_are_void() -> None:
    r = Replica(P, "b")
    r.follow(1, "a")
    actions = r.receive(Append(P, 1, "a", NO_POSITION, (Entry(1, 1, b"x"),), 0), 0)
    (persist,) = [a for a in actions if isinstance(a, Persist)]
    r.begin_install()
    r.installed(NO_POSITION, EpochHistory())
    assert r.persisted(persist.through_seq, persist.fence_epoch, persist.generation) == []
    assert r.position() == NO_POSITION


def test_a_lagging_follower_leaves_the_isr_and_rejoins_when_caught_up() -> None:
    w = Wire("a", "b", "c")
    elect(w, "a")
    w.settle()
    for i in range(3):
        _, actions = w.replicas["a"].propose(f"m{i}".encode(), w.now_ms)
        w.run("a", actions)
        w.sync("a")
        w.deliver(to="b")
        w.deliver(to="c", drop=True)  # c is unreachable
        w.sync("b")
        w.deliver(to="a")
        w.now_ms += LAG_MAX_MS // 2
        w.run("a", w.replicas["a"].tick(w.now_ms))
        w.deliver(to="c", drop=True)
    (change,) = [a for _n, a in w.of(ChangeIsr)]
    assert isinstance(change, ChangeIsr) and change.isr == frozenset({"a", "b"})
    # The coordinator applied it: commits no longer wait for c.
    w.run("a", w.replicas["a"].isr_changed(change.isr, w.now_ms))
    seq, actions = w.replicas["a"].propose(b"without c", w.now_ms)
    w.run("a", actions)
    w.sync("a")
    w.deliver(to="b")
    w.sync("b")
    w.deliver(to="a")
    assert w.committed("a") == seq
    # c comes back: it is resent what it missed, catches up, and is proposed again.
    w.now_ms += RESEND_AFTER_MS
    w.run("a", w.replicas["a"].tick(w.now_ms))
    w.settle()
    rejoin = [a for _n, a in w.of(ChangeIsr)][-1]
    assert isinstance(rejoin, ChangeIsr) and rejoin.isr == frozenset({"a", "b", "c"})
    assert w.replicas["c"].position() == w.replicas["a"].position()


def test_a_restarted_replica_never_leads_the_epoch_it_promised_before() -> None:
    r = Replica(P, "a", last=Position(3, 10), fence_epoch=3,
                history=EpochHistory([(1, 1), (3, 5)]))
    assert not r.may_lead(3)
    with pytest.raises(InternalError, match="may not lead epoch 3"):
        r.lead(3, replicas=["a"], isr=["a"], min_isr=1, sync=True, now_ms=0)
    assert r.may_lead(4)


def test_history_must_match_the_last_position() -> None:
    with pytest.raises(InternalError, match="disagrees"):
        Replica(P, "a", last=Position(2, 5), history=EpochHistory([(1, 1)]))


def test_a_resent_append_is_acknowledged_without_a_second_write() -> None:
    r = Replica(P, "b")
    r.follow(1, "a")
    append = Append(P, 1, "a", NO_POSITION, (Entry(1, 1, b"x"), Entry(2, 1, b"y")), 0)
    first = r.receive(append, 0)
    (persist,) = [a for a in first if isinstance(a, Persist)]
    r.persisted(persist.through_seq, persist.fence_epoch, persist.generation)
    again = r.receive(append, 0)
    assert not [a for a in again if isinstance(a, Persist)]
    (send,) = again
    assert isinstance(send, Send) and isinstance(send.message, AppendReply)
    assert send.message.ok and send.message.last == Position(1, 2)


def test_a_gap_is_answered_with_where_the_log_ends() -> None:
    r = Replica(P, "b")
    r.follow(1, "a")
    (send,) = r.receive(Append(P, 1, "a", Position(1, 5), (Entry(6, 1, b"x"),), 0), 0)
    assert isinstance(send, Send) and isinstance(send.message, AppendReply)
    assert not send.message.ok and send.message.last == NO_POSITION


def test_a_replica_that_needs_a_copy_is_not_electable_until_it_holds_one() -> None:
    w = Wire("a", "b")
    w.replicas["b"].needs_copy = True  # the shell: an empty store in a set that had data
    w.run("b", w.replicas["b"].receive(Fence(P, 1, "ctl"), w.now_ms))
    w.sync("b")
    (reply,) = [s.message for src, s in w.outbox if src == "b" and s.to == "ctl"]
    assert isinstance(reply, FenceReply) and reply.accepted and not reply.eligible
    w.outbox.clear()
    elect(w, "a", epoch=2, min_isr=1)
    w.settle()  # b now holds a's log
    w.run("b", w.replicas["b"].receive(Fence(P, 3, "ctl"), w.now_ms))
    w.sync("b")
    (reply,) = [s.message for src, s in w.outbox if src == "b" and s.to == "ctl"]
    assert isinstance(reply, FenceReply) and reply.eligible


def test_a_follower_not_heard_from_is_resent_from_the_marker_not_offered_a_snapshot(
) -> None:
    # A leader that restarted holds nothing before its own marker in memory; a follower
    # that is down answers nothing. Resending must not turn into a snapshot offer.
    history = EpochHistory([(1, 1)])
    w = Wire("a", "b")
    w.replicas["a"] = Replica(P, "a", last=Position(1, 40), fence_epoch=1, history=history,
                              incarnation="a.2")
    elect(w, "a", epoch=2, min_isr=1)
    w.sync("a")
    w.deliver(to="b", drop=True)  # b is down
    for _ in range(5):
        w.now_ms += RESEND_AFTER_MS
        w.run("a", w.replicas["a"].tick(w.now_ms))
        w.deliver(to="b", drop=True)
    assert w.of(SendSnapshot) == []
