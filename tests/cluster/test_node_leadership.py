"""A replica that etcd names leader of an epoch it no longer leads resigns on its tick
(``_Host.check_leadership``): the controller that fenced a later epoch may have been
replaced before it elected anyone, and its successor, seeing a live leader, elects
nobody. Found by the cluster simulation (seed 10 at the time); the schedule that
produced it has since moved, so the rule is tested here on its own."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace
from typing import Any

from ferrymq._cluster._node import _RESIGN_GRACE_MS, _Host
from ferrymq._replication._election import PartitionState
from ferrymq._replication._replica import Replica


def _host(replica: Replica, state: PartitionState, revision: int) -> tuple[_Host, list[Any]]:
    host = _Host.__new__(_Host)
    spawned: list[Any] = []
    host.node = SimpleNamespace(cfg=SimpleNamespace(node_id="n1"))  # type: ignore[assignment]
    host.store = SimpleNamespace(replica=replica)  # type: ignore[assignment]
    host.state, host.revision, host.closed, host._resigned_at = state, revision, False, -1
    host._not_leading_since_ms = None

    def spawn(coro: Any, name: str) -> None:
        spawned.append((name, coro.cr_frame.f_locals.get("revision")))
        coro.close()

    host._spawn = spawn  # type: ignore[method-assign]
    return host, spawned


def _ticks(host: _Host) -> None:
    """Two ticks, the grace apart: a replica that is to resign has by the second."""
    host.check_leadership(0)
    host.check_leadership(2 * _RESIGN_GRACE_MS)


STATE = PartitionState(leader="n1", epoch=3, replicas=("n1", "n2", "n3"),
                       isr=("n1", "n2", "n3"), min_isr=2, sync=True)


def test_a_named_leader_that_does_not_lead_resigns_once_per_state() -> None:
    replica = Replica("p", "n1")          # a follower: it stepped down
    host, spawned = _host(replica, STATE, revision=7)
    # Not at once: the controller that fenced it may be electing right now.
    host.check_leadership(1_000)
    host.check_leadership(1_000 + _RESIGN_GRACE_MS - 1)
    assert spawned == []
    host.check_leadership(1_000 + _RESIGN_GRACE_MS)
    host.check_leadership(1_000 + _RESIGN_GRACE_MS + 100)
    assert spawned == [("resignation", 7)]
    host.revision = 9                      # etcd wrote the set again: try again
    host.check_leadership(1_000 + _RESIGN_GRACE_MS + 200)
    assert spawned == [("resignation", 7), ("resignation", 9)]


def test_the_grace_starts_again_once_it_leads_or_is_not_named() -> None:
    replica = Replica("p", "n1")
    host, spawned = _host(replica, STATE, revision=7)
    host.check_leadership(0)
    host.state = replace(STATE, leader="n2")   # the election named another
    host.check_leadership(100)
    host.state = STATE                         # named again later
    host.check_leadership(_RESIGN_GRACE_MS + 100)
    assert spawned == []
    host.check_leadership(2 * _RESIGN_GRACE_MS + 100)
    assert spawned == [("resignation", 7)]


def test_a_leader_of_that_epoch_or_a_later_one_does_not_resign() -> None:
    replica = Replica("p", "n1")
    replica.lead(3, replicas=STATE.replicas, isr=STATE.isr, min_isr=2, sync=True, now_ms=0)
    host, spawned = _host(replica, STATE, revision=7)
    _ticks(host)
    replica4 = Replica("p", "n1")
    replica4.lead(4, replicas=STATE.replicas, isr=STATE.isr, min_isr=2, sync=True, now_ms=0)
    host4, spawned4 = _host(replica4, STATE, revision=7)
    _ticks(host4)
    # Named leader of another node, or closing: not this replica's business.
    other, spawned_other = _host(Replica("p", "n1"), replace(STATE, leader="n2"), 7)
    _ticks(other)
    closing, spawned_closing = _host(Replica("p", "n1"), STATE, 7)
    closing.closed = True
    _ticks(closing)
    assert spawned == spawned4 == spawned_other == spawned_closing == []
