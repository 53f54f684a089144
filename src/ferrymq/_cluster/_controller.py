"""The controller: one node at a time, elected through etcd, replaces dead leaders.

It runs on every node and acts only while it holds the controller key. It keeps every
replica set under ``partitions/`` (placed by the node that created its queue) in the
state the election rule (``ferrymq._replication._election``) prescribes:

- a replica set whose leader's node lease has lapsed (or that has none) gets a new one:
  every replica is fenced with the next epoch, the answers are collected for at most
  ``FENCE_WAIT_S``, and the most advanced in-sync replica is written as leader by a
  transaction conditioned on the partition's revision. Once replicas were fenced past
  the partition's epoch its old leader can commit nothing, so the election is retried
  until it completes.

- replicas are moved, one at a time (``MOVES_IN_FLIGHT_MAX``), off nodes an operator
  decommissioned (``decommission/<node>``) and from the node with the most replicas to
  the one with the fewest (a node that just joined), while the two differ by
  ``IMBALANCE_MIN`` or more. A move of ``from`` to ``to`` is two elections: the first
  writes ``to`` into the replicas (and ``moving``); it catches up from the leader as any
  follower does (a snapshot, then appends) and the leader adds it to the in-sync set;
  the second writes the set without ``from``. Each election fences every replica at a
  new epoch first, so nothing of the old epoch commits after it, and neither picks
  ``from`` as leader while another in-sync replica can lead. A ``to`` that dies before
  it is in sync is dropped again by an election.
- leaders are moved, once the replicas are even: while the node leading the most
  replica sets leads ``IMBALANCE_MIN`` or more than one leading the fewest, one set
  led by the first and in sync on the second is re-elected with the second preferred
  (it leads only if its log is as advanced as any: nothing is lost or rebuilt). A set
  tried is left alone for ``LEADER_MOVE_BACKOFF_S``, so a busy one whose logs never
  match at the fence is not re-elected over and over; none is moved until no other
  election has happened for ``LEADER_SETTLE_S`` (a failover, a move, a restarted node
  catching up come first); and at most ``LEADER_MOVES_AT_ONCE`` are moved at once,
  ``LEADER_MOVE_INTERVAL_S`` apart, each pausing only its own set's writes for a fence.

The decision is etcd's: two controllers (a paused one and its successor) may both try,
and only the transaction whose revision still matches applies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from ferrymq._cluster._layout import Layout, decode_state, encode_state
from ferrymq._coordination import (
    CoordinationError,
    Coordinator,
    Election,
    Lease,
    Put,
)
from ferrymq._replication._election import PartitionState, choose_leader, fence_epoch_for
from ferrymq._replication._messages import Fence, FenceReply

__all__ = ["FENCE_WAIT_S", "Controller", "ControllerSettings"]

log = logging.getLogger("ferrymq.cluster.controller")

# How long the controller waits for replicas to answer a fence before it decides with
# the answers it has: a live replica answers within a round trip plus an fsync; one that
# is slower is treated as absent (it rejoins later) rather than delaying failover.
FENCE_WAIT_S = 0.5
# A fence not answered this soon is sent again (within FENCE_WAIT_S): long enough for a
# live replica's answer (a round trip and an fsync), short enough for a few tries.
_FENCE_RESEND_S = 0.1
# What is left of a wait below this counts as nothing: a sub-millisecond remainder (a
# float's rounding) would otherwise be waited for again and again on a clock that does
# not advance within the loop's resolution (the simulation's virtual one).
_WAIT_RESOLUTION_S = 0.001
# How often the controller looks at the cluster even without a watch event: a safety
# net for missed events and for retrying an election that found no candidate.
_RECONCILE_S = 0.5
# Replica moves under way at once, cluster-wide: each copies a replica set's store to
# another node while clients keep writing to it; one at a time keeps the copies' disk
# and network use from crowding out client traffic (and bounds what a failure midway
# leaves to finish).
MOVES_IN_FLIGHT_MAX = 1
# Replicas per node that the most and the least loaded live nodes may differ by before
# a replica is moved between them: 1 is as even as the count allows.
IMBALANCE_MIN = 2
# See the module docstring: a replica set whose leadership was just offered to another
# replica is not offered again before this long. Each try is an election: in-flight
# writes of that set are answered 503 (retriable) and its writes pause for a fence
# round trip.
LEADER_MOVE_BACKOFF_S = 10.0
# See the module docstring: a cluster is left this long after its last election (other
# than a leader move's) before leaderships are evened out, so they are not moved while
# it is still recovering.
LEADER_SETTLE_S = 10.0
# See the module docstring: leader moves start at most this often. A move pauses one
# replica set's writes for a fence round trip (milliseconds) and answers its writes in
# flight 503. Counting leader moves in LEADER_SETTLE_S instead (as before) made giving
# a node that came back its share of 240 partitions (80 moves) take 13 minutes.
LEADER_MOVE_INTERVAL_S = 0.5
# Leader moves started together (each its own replica set's election, side by side):
# each pauses only its own set, for a fence round trip. With 8 every half second (a
# move's election and the watch events after it took about 1.5 s on this 2-core VM,
# one at a time), 80 moves are 10 rounds.
LEADER_MOVES_AT_ONCE = 8
# Fence answers kept per partition, to fence past any epoch a replica already promised
# (a controller that died mid-election may have fenced one).
_SEEN_REPLIES_MAX = 32


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    lease_ttl_s: int
    fence_wait_s: float = FENCE_WAIT_S
    reconcile_s: float = _RECONCILE_S


class Controller:
    """See the module docstring. ``send_fence(node, fence)`` delivers a fence to a
    replica (through the transport); their answers come back to ``on_fence_reply``."""

    def __init__(self, coordinator: Coordinator, layout: Layout, node: str,
                 settings: ControllerSettings,
                 send_fence: Callable[[str, Fence], None]) -> None:
        self._coord = coordinator
        self._layout = layout
        self._node = node
        self._settings = settings
        self._send_fence = send_fence
        self._election = Election(coordinator, layout.controller)
        self._replies: dict[str, dict[str, FenceReply]] = {}
        self._answered: dict[str, asyncio.Event] = {}
        self._seen: dict[str, list[FenceReply]] = {}
        self._fenced: dict[str, int] = {}
        self._changed = asyncio.Event()
        # partition -> loop time before which its leadership is not moved again.
        self._leader_moved: dict[str, float] = {}
        # Loop times of the last election this controller held other than a leader
        # move's (LEADER_SETTLE_S), and of the last leader move (LEADER_MOVE_INTERVAL_S).
        self._last_election = float("-inf")
        self._last_leader_move = float("-inf")
        self.leading = False  # for status and tests

    def on_fence_reply(self, reply: FenceReply) -> None:
        seen = self._seen.setdefault(reply.partition, [])
        seen.append(reply)
        del seen[:-_SEEN_REPLIES_MAX]
        replies = self._replies.get(reply.partition)
        if replies is not None:
            replies[reply.node] = reply
            event = self._answered.get(reply.partition)
            if event is not None:
                event.set()

    def poke(self) -> None:
        """Something changed (a watch event): look again now."""
        self._changed.set()

    async def run(self) -> None:
        """Campaign, and while elected keep the partitions in shape. Runs until cancelled."""
        lease: Lease | None = None
        while True:
            try:
                # Kept across a coordination error: the seat may still hang on it (etcd
                # kept the lease alive through a short outage), and a campaign on a new
                # lease would then lose to ourselves and wait for a vacancy that never
                # comes (found by the cluster simulation, seed 20).
                if lease is None or lease.lost:
                    lease = await self._coord.grant_lease(self._settings.lease_ttl_s)
                won = await self._election.campaign(self._node.encode(), lease)
                if won is None:
                    holder = await self._election.holder()
                    if holder is None or holder.lease_id != lease.id:
                        await self._election.wait_vacant()
                        continue
                    # Still ours, from before the error: lead on.
                log.info("%s is the controller", self._node)
                self.leading = True
                try:
                    await self._lead(lease)
                finally:
                    self.leading = False
            except CoordinationError as exc:
                log.info("controller on %s: %r; campaigning again", self._node, exc)
                await asyncio.sleep(self._settings.reconcile_s)

    async def _lead(self, lease: Lease) -> None:
        while not lease.lost:
            await self._reconcile()
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self._settings.reconcile_s)

    async def _alive(self) -> list[str]:
        snapshot = await self._coord.get_prefix(self._layout.nodes)
        return sorted(self._layout.name_of(self._layout.nodes, kv.key)
                      for kv in snapshot.items)

    async def _leaving(self) -> set[str]:
        snapshot = await self._coord.get_prefix(self._layout.decommission)
        return {self._layout.name_of(self._layout.decommission, kv.key)
                for kv in snapshot.items}

    async def _reconcile(self) -> None:
        alive = await self._alive()
        prefix = self._layout.partitions
        snapshot = await self._coord.get_prefix(prefix)
        present = set()
        elections = []
        states: dict[str, tuple[PartitionState, int]] = {}
        for kv in snapshot.items:
            partition = self._layout.name_of(prefix, kv.key)
            present.add(partition)
            state = decode_state(kv.value)
            states[partition] = (state, kv.mod_revision)
            unfinished = self._fenced.get(partition, 0) > state.epoch
            if state.leader is None or state.leader not in alive or unfinished:
                elections.append(self._elect(partition, state, kv.mod_revision, alive))
        # Side by side: a node that led many replica sets fails them all over at once,
        # in one fence round trip rather than one per set.
        for outcome in await asyncio.gather(*elections, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        if not elections:
            # Moves only once every replica set has a live leader: failover first.
            await self._move(states, alive, await self._leaving())
        for gone in [p for p in self._fenced if p not in present]:
            # A deleted replica set: forget what was kept for its elections.
            self._fenced.pop(gone, None)
            self._seen.pop(gone, None)
            self._leader_moved.pop(gone, None)

    async def _move(self, states: dict[str, tuple[PartitionState, int]], alive: list[str],
                    leaving: set[str]) -> None:
        """Carry the moves under way one step on, or start one (module docstring)."""
        moving = {p: st for p, (st, _) in states.items() if st.moving is not None}
        for partition, state in sorted(moving.items()):
            assert state.moving is not None
            source, target = state.moving
            revision = states[partition][1]
            if target not in alive:
                # Gone before it caught up: the move is dropped, the source stays.
                log.warning("%s: moving a replica to %s given up (it is gone)", partition,
                            target)
                await self._elect(partition, state, revision, alive,
                                  target=_without(state, target))
            elif target in state.isr:
                log.warning("%s: %s is in sync; removing %s", partition, target, source)
                await self._elect(partition, state, revision, alive, avoid=source,
                                  target=_without(state, source))
        if len(moving) >= MOVES_IN_FLIGHT_MAX:
            return
        chosen = _plan_move({p: st for p, (st, _) in states.items()}, alive, leaving)
        if chosen is None:
            await self._move_leader(states, alive, leaving)
            return
        partition, source, target = chosen
        state, revision = states[partition]
        log.warning("%s: moving its replica on %s to %s", partition, source, target)
        await self._elect(partition, state, revision, alive, avoid=source, target=replace(
            state, replicas=(*state.replicas, target), moving=(source, target)))

    async def _move_leader(self, states: dict[str, tuple[PartitionState, int]],
                           alive: list[str], leaving: set[str]) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_election < LEADER_SETTLE_S \
                or now - self._last_leader_move < LEADER_MOVE_INTERVAL_S:
            return
        waiting = {p for p, until in self._leader_moved.items() if until > now}
        planned = {p: st for p, (st, _) in states.items()}
        elections = []
        for _ in range(LEADER_MOVES_AT_ONCE):
            chosen = _plan_leader_move(planned, alive, leaving, skip=waiting)
            if chosen is None:
                break
            partition, source, target = chosen
            # Planned as if it went through, so the next pick counts it.
            planned[partition] = replace(planned[partition], leader=target)
            waiting.add(partition)
            self._leader_moved[partition] = now + LEADER_MOVE_BACKOFF_S
            state, revision = states[partition]
            log.warning("%s: offering its leadership on %s to %s", partition, source,
                        target)
            elections.append(self._elect(partition, state, revision, alive, prefer=target))
        if elections:
            self._last_leader_move = now
        # Side by side, as a failover's: each pauses only its own set's writes.
        for outcome in await asyncio.gather(*elections, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome

    async def _elect(self, partition: str, state: PartitionState, revision: int,
                     alive: list[str], *, target: PartitionState | None = None,
                     avoid: str | None = None, prefer: str | None = None) -> None:
        """Fence every live replica of ``state`` at a new epoch and write the leader
        chosen from them: into ``state``, or into ``target`` (the replica set a move
        makes of it); ``avoid`` leads only if no other in-sync replica can."""
        if prefer is None:  # a leader move is paced by LEADER_MOVE_INTERVAL_S instead
            self._last_election = asyncio.get_running_loop().time()
        epoch = fence_epoch_for(state, self._seen.get(partition, ()))
        self._fenced[partition] = max(self._fenced.get(partition, 0), epoch)
        replies: dict[str, FenceReply] = {}
        answered = asyncio.Event()
        self._replies[partition] = replies
        self._answered[partition] = answered
        live = [n for n in state.replicas if n in alive]
        log.info("fencing %s at epoch %d (%s)", partition, epoch,
                 "moving a replica" if target is not None else f"leader {state.leader} gone")
        for node in live:
            self._send_fence(node, Fence(partition, epoch, self._node))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._settings.fence_wait_s
        try:
            while len([r for r in replies.values() if r.epoch == epoch]) < len(live):
                remaining = deadline - loop.time()
                if remaining < _WAIT_RESOLUTION_S:
                    break
                answered.clear()
                try:
                    await asyncio.wait_for(answered.wait(), min(remaining, _FENCE_RESEND_S))
                except TimeoutError:
                    # A fence can be lost on the way (written to the connection of a
                    # replica's previous process, which restarted): sent again to the
                    # replicas that have not answered. A fence is idempotent.
                    for node in live:
                        reply = replies.get(node)
                        if reply is None or reply.epoch != epoch:
                            self._send_fence(node, Fence(partition, epoch, self._node))
        finally:
            self._replies.pop(partition, None)
            self._answered.pop(partition, None)
        chosen = choose_leader(target if target is not None else state, epoch, replies,
                               alive, avoid=avoid, prefer=prefer)
        if chosen is None:
            log.warning("no in-sync replica of %s can lead epoch %d yet", partition, epoch)
            return
        key = self._layout.partition(partition)
        result = await self._coord.transact({key: revision}, [Put(key, encode_state(chosen))])
        if result.succeeded:
            log.warning("%s: %s leads epoch %d, in sync: %s", partition, chosen.leader,
                        chosen.epoch, ", ".join(chosen.isr))


def _without(state: PartitionState, node: str) -> PartitionState:
    """The replica set ``state`` without ``node``, its move done (or given up)."""
    return replace(state, replicas=tuple(n for n in state.replicas if n != node),
                   isr=tuple(n for n in state.isr if n != node), moving=None)


def _plan_move(states: dict[str, PartitionState], alive: list[str], leaving: set[str]
               ) -> tuple[str, str, str] | None:
    """The next replica to move, as (partition, from, to), or None: off a
    decommissioned node first, else from the most to the least loaded live node. Pure,
    and deterministic (sorted choices), so the simulation replays it."""
    eligible = sorted(n for n in alive if n not in leaving)
    if not eligible:
        return None
    load = {n: 0 for n in eligible}
    for state in states.values():
        for n in state.replicas:
            if n in load:
                load[n] += 1

    def lightest(state: PartitionState) -> str | None:
        free = [n for n in eligible if n not in state.replicas]
        return min(free, key=lambda n: (load[n], n)) if free else None

    # Led and not moving; a balancing move also waits for a full in-sync set (a
    # decommission does not: the node leaving may be down).
    led = {p: st for p, st in sorted(states.items())
           if st.moving is None and st.leader is not None}
    for partition, state in led.items():
        for source in state.replicas:
            if source in leaving:
                target = lightest(state)
                if target is not None:
                    return partition, source, target
    ready = {p: st for p, st in led.items() if set(st.isr) == set(st.replicas)}
    heaviest = max(eligible, key=lambda n: (load[n], n))
    for partition, state in ready.items():
        if heaviest not in state.replicas:
            continue
        target = lightest(state)
        if target is not None and load[heaviest] - load[target] >= IMBALANCE_MIN:
            return partition, heaviest, target
    return None


def _plan_leader_move(states: dict[str, PartitionState], alive: list[str],
                      leaving: set[str], skip: frozenset[str] | set[str] = frozenset()
                      ) -> tuple[str, str, str] | None:
    """The next leadership to offer, as (partition, its leader, the replica offered
    it), or None: the first set (by name, not in ``skip``) whose leader leads
    IMBALANCE_MIN or more sets than the in-sync replica of it that leads the fewest;
    that replica is offered it. Every set counts, skipped or not (counting only the
    others, a node given a skipped set's leadership a moment ago would look idle and
    be given more). Pure and deterministic, as ``_plan_move``."""
    eligible = sorted(n for n in alive if n not in leaving)
    if len(eligible) < 2:
        return None
    leads = {n: 0 for n in eligible}
    for state in states.values():
        if state.leader in leads:
            leads[state.leader] += 1
    for partition, state in sorted(states.items()):
        source = state.leader
        if partition in skip or source not in leads or state.moving is not None \
                or set(state.isr) != set(state.replicas):
            continue
        others = [n for n in state.isr if n in leads and n != source]
        if not others:
            continue
        target = min(others, key=lambda n: (leads[n], n))
        if leads[source] - leads[target] >= IMBALANCE_MIN:
            return partition, source, target
    return None
