"""The controller's rule for electing a partition's leader after the old one is gone.

Pure: the partition's state as the coordinator holds it, the set of live nodes, and the
replicas' answers to a ``Fence`` of the new epoch go in; the state to write (by a
compare-and-swap on the coordinator's revision) comes out. The shell sends the fences,
waits for answers within a bound, and performs the write; etcd decides, by that CAS,
which controller's choice stands.

The rule: every replica that answers has durably promised the new epoch, so nothing of
the old one can still reach it; the leader is the in-sync replica with the most
advanced log among those (by (epoch, seq) of its last entry). Every committed entry is
on every in-sync replica, so any of them would keep every acknowledged write; picking
the most advanced one also keeps the uncommitted tail that reached it, so no surviving
in-sync replica holds entries the new leader lacks and has to be rebuilt.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from ferrymq._replication._messages import FenceReply

__all__ = ["PartitionState", "choose_leader", "fence_epoch_for"]


@dataclass(frozen=True, slots=True)
class PartitionState:
    """A partition's replica set as the coordinator holds it."""

    leader: str | None
    epoch: int
    replicas: tuple[str, ...]
    isr: tuple[str, ...]
    min_isr: int
    sync: bool
    # A replica being moved (the controller's, docs/architecture.md): (from, to). ``to``
    # is in ``replicas`` already and joins ``isr`` once it has caught up; then ``from``
    # leaves both. None when nothing moves.
    moving: tuple[str, str] | None = None

    def with_isr(self, isr: Iterable[str]) -> PartitionState:
        members = frozenset(isr)
        return replace(self, isr=tuple(n for n in self.replicas if n in members))


def fence_epoch_for(state: PartitionState, replies: Iterable[FenceReply]) -> int:
    """The epoch to fence with: past the coordinator's and past any epoch a replica
    already promised (a controller that died mid-election may have fenced one)."""
    return max([state.epoch, *(r.fence_epoch for r in replies)]) + 1


def choose_leader(state: PartitionState, epoch: int, replies: Mapping[str, FenceReply],
                  alive: Iterable[str], *, avoid: str | None = None,
                  prefer: str | None = None) -> PartitionState | None:
    """The new state for ``epoch``, or None when no in-sync replica can lead (the
    partition stays unavailable rather than lose acknowledged writes). ``avoid``: a
    replica that leads only if no other can (one about to be moved away). ``prefer``:
    the replica to lead if its log is as advanced as the most advanced one's (a
    planned transfer of leadership: it never costs an entry or a rebuild)."""
    live = frozenset(alive)
    fenced = {
        node: reply for node, reply in replies.items()
        if reply.accepted and reply.epoch == epoch and node in live
    }
    candidates = [node for node in state.isr if node in fenced and fenced[node].eligible]
    if avoid is not None and len(candidates) > 1:
        candidates = [node for node in candidates if node != avoid]
    if not candidates:
        return None
    order = {node: i for i, node in enumerate(state.replicas)}
    # Most advanced log first; among equals, the replica listed first (deterministic).
    leader = max(candidates, key=lambda n: (fenced[n].last, -order.get(n, len(order))))
    if prefer in candidates and fenced[prefer].last == fenced[leader].last:
        leader = prefer
    # The in-sync set keeps the members that answered: the ones that did not are
    # re-added by the new leader once they catch up, instead of stalling its commits.
    isr = [n for n in state.isr if n in fenced]
    return replace(state, leader=leader, epoch=epoch).with_isr(isr)
