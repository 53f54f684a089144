"""The controller's election rule."""

from __future__ import annotations

from ferrymq._replication._election import PartitionState, choose_leader, fence_epoch_for
from ferrymq._replication._log import Position
from ferrymq._replication._messages import FenceReply

STATE = PartitionState(leader="a", epoch=4, replicas=("a", "b", "c"), isr=("a", "b", "c"),
                       min_isr=2, sync=True)


def reply(node: str, last: Position, *, epoch: int = 5, accepted: bool = True,
          eligible: bool = True, fence: int = 5) -> FenceReply:
    return FenceReply("q", epoch, node, accepted, last, fence, eligible)


def test_the_most_advanced_in_sync_replica_leads() -> None:
    replies = {"b": reply("b", Position(4, 9)), "c": reply("c", Position(4, 11))}
    chosen = choose_leader(STATE, 5, replies, alive={"b", "c"})
    assert chosen is not None
    assert (chosen.leader, chosen.epoch, chosen.isr) == ("c", 5, ("b", "c"))


def test_a_newer_epoch_beats_a_longer_log() -> None:
    replies = {"b": reply("b", Position(3, 20)), "c": reply("c", Position(4, 11))}
    chosen = choose_leader(STATE, 5, replies, alive={"b", "c"})
    assert chosen is not None and chosen.leader == "c"


def test_no_leader_without_an_eligible_in_sync_answer() -> None:
    out_of_sync = PartitionState(leader="a", epoch=4, replicas=("a", "b", "c"),
                                 isr=("a", "b"), min_isr=2, sync=True)
    replies = {"c": reply("c", Position(4, 30)), "b": reply("b", Position(4, 9),
                                                            eligible=False)}
    assert choose_leader(out_of_sync, 5, replies, alive={"b", "c"}) is None
    refused = {"b": reply("b", Position(4, 9), accepted=False, fence=7)}
    assert choose_leader(STATE, 5, refused, alive={"b"}) is None
    dead = {"b": reply("b", Position(4, 9))}
    assert choose_leader(STATE, 5, dead, alive=set()) is None


def test_the_fence_epoch_passes_every_promise_seen() -> None:
    assert fence_epoch_for(STATE, []) == 5
    assert fence_epoch_for(STATE, [reply("b", Position(4, 9), fence=8)]) == 9


def test_a_replica_being_moved_away_leads_only_if_no_other_can() -> None:
    replies = {"a": reply("a", Position(4, 11)), "b": reply("b", Position(4, 11))}
    chosen = choose_leader(STATE, 5, replies, alive={"a", "b"}, avoid="a")
    assert chosen is not None and chosen.leader == "b"
    alone = {"a": reply("a", Position(4, 11))}
    chosen = choose_leader(STATE, 5, alone, alive={"a"}, avoid="a")
    assert chosen is not None and chosen.leader == "a"


def test_a_preferred_replica_leads_only_with_the_most_advanced_log() -> None:
    level = {"a": reply("a", Position(4, 11)), "b": reply("b", Position(4, 11))}
    chosen = choose_leader(STATE, 5, level, alive={"a", "b"}, prefer="b")
    assert chosen is not None and chosen.leader == "b"
    # Behind by one entry: preferring it would lose that entry (or rebuild "a").
    behind = {"a": reply("a", Position(4, 12)), "b": reply("b", Position(4, 11))}
    chosen = choose_leader(STATE, 5, behind, alive={"a", "b"}, prefer="b")
    assert chosen is not None and chosen.leader == "a"
