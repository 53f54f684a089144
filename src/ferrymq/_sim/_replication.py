"""A seeded simulation of one partition's replication: the real ``Replica`` and the
real election rule on every node, over the simulated network, disks and coordinator of
``_world``, under a seeded schedule of faults, with the protocol's invariants checked as
it runs.

Faults: a node crashes (``kill -9`` with power loss: its unfsynced writes are gone) and
restarts from its disk; a node pauses (SIGSTOP: it stops answering and renewing its
lease, then carries on where it was); a node is cut off from the others and from the
coordinator; every node loses power at once; the network drops, duplicates and reorders.

Invariants (any violation fails the run with the seed, the fault schedule and the tail
of the trace):

- committed entries never conflict: no two leaders commit different entries at one seq
  (``sync`` partitions; ``async`` ones acknowledge after the leader's fsync alone and
  may lose that tail in a crash, as documented, so only the other invariants hold);
- only the leader the coordinator elected for an epoch commits in it;
- every acknowledged proposal is, after healing, in the log of every in-sync replica,
  at its seq;
- no replica's promised epoch goes backwards, across restarts included;
- liveness after healing: a leader exists and new proposals are acknowledged.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ferrymq._core._errors import InternalError
from ferrymq._replication._election import PartitionState, choose_leader, fence_epoch_for
from ferrymq._replication._log import NO_POSITION, Entry, EpochHistory, Position
from ferrymq._replication._messages import Fence, FenceReply
from ferrymq._replication._replica import (
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
from ferrymq._sim._world import Coordinator, Disk, Network, World

__all__ = ["Scenario", "SimulationFailure", "run_seed"]

PARTITION = "q"
STATE_KEY = f"partitions/{PARTITION}"
CONTROLLER = "controller"
# How often a node ticks its replica and renews its lease (as a node's runtime does).
_TICK_MS = 100
_RENEW_MS = 500
# How often the controller checks the partition's leader, and how long it collects
# fence answers before it decides.
_CONTROLLER_CHECK_MS = 200
_FENCE_WAIT_MS = 300
# A coordinator round trip (a CAS, a watch notification).
_COORDINATOR_DELAY_MS = (2, 15)
# Copying a snapshot between nodes.
_SNAPSHOT_MS = (20, 200)


class SimulationFailure(AssertionError):
    """An invariant broke; the message says which, with the replay command."""


@dataclass
class Scenario:
    """What one seed runs: its nodes, fault mix and durations (virtual ms)."""

    nodes: tuple[str, ...] = ("n1", "n2", "n3")
    min_isr: int = 2
    sync: bool = True
    fault_ms: int = 6_000
    settle_ms: int = 4_000
    propose_every_ms: tuple[int, int] = (10, 40)
    faults: tuple[str, ...] = ("crash", "pause", "isolate", "power", "lossy")
    fault_gap_ms: tuple[int, int] = (300, 1_500)


@dataclass
class _Node:
    name: str
    disk: Disk
    replica: Replica | None = None
    up: bool = True
    paused: bool = False
    backlog: list[Any] = field(default_factory=list)  # events held while paused
    log: list[Entry] = field(default_factory=list)  # the appended log, as the shell sees it
    state: PartitionState | None = None
    state_rev: int = 0
    # seq -> proposal id, for proposals this node made as leader in ``proposing_epoch``
    proposals: dict[int, int] = field(default_factory=dict)
    proposing_epoch: int = 0
    incarnations: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    checked_seq: int = 0  # committed entries of ``log`` already compared with the others


class _Simulation:
    def __init__(self, seed: int, scenario: Scenario) -> None:
        self.seed = seed
        self.sc = scenario
        self.world = World(seed)
        self.net = Network(self.world)
        self.coord = Coordinator(self.world)
        self.nodes = {n: _Node(n, Disk(self.world)) for n in scenario.nodes}
        self.net.deliver = self._deliver
        self.net.up = lambda n: n == CONTROLLER or (self.nodes[n].up)
        # Nodes cut off from the coordinator (an isolated node is cut from it too).
        self.coord_cut: set[str] = set()
        self.coord.reachable = lambda n: n == CONTROLLER or n not in self.coord_cut
        self.schedule: list[str] = []
        # Invariant state.
        self.committed: dict[int, tuple[int, bytes]] = {}  # seq -> (epoch, payload)
        self.leaders: dict[int, str] = {}  # epoch -> leader written by the controller
        self.fences: dict[str, int] = {n: 0 for n in scenario.nodes}
        self.acked: dict[int, tuple[int, int]] = {}  # proposal id -> (epoch, seq)
        self.proposal_ids = itertools.count(1)
        self.payloads: dict[int, bytes] = {}
        self.election: dict[str, Any] | None = None
        # The newest fence answers the controller saw (bounded: only the highest
        # promised epoch among them matters).
        self._seen_fences: list[FenceReply] = []
        self._fenced_epoch = 0  # the highest epoch the controller has fenced
        self.acks_after_heal = 0
        self.healed = False

    # ---- failures ---------------------------------------------------------------

    def fail(self, what: str) -> None:
        trace = "\n".join(self.world.trace[-60:])
        raise SimulationFailure(
            f"seed {self.seed}: {what}\nfaults: {self.schedule}\n"
            f"replay: python -m ferrymq._sim --seed {self.seed} --verbose\n"
            f"last events:\n{trace}")

    # ---- set-up -------------------------------------------------------------------

    def start(self) -> None:
        replicas = self.sc.nodes
        state = PartitionState(leader=None, epoch=0, replicas=replicas, isr=replicas,
                               min_isr=self.sc.min_isr, sync=self.sc.sync)
        self.coord.values[STATE_KEY] = (state, 0)
        self.coord.watchers.append(self._on_coordinator_change)
        for node in self.nodes.values():
            self._boot(node)
        self.world.at(0, self._controller_check)
        self.world.at(1, self._client)
        self._schedule_faults()

    def _boot(self, node: _Node) -> None:
        """Start (or restart) a node from what its disk holds."""
        durable = node.disk.durable
        entries: list[Entry] = list(durable.get("entries", ()))
        node.checked_seq = 0
        history = EpochHistory(durable.get("history", ()))
        fence = int(durable.get("fence", 0))
        if fence < self.fences[node.name]:
            self.fail(f"{node.name} restarted with promised epoch {fence} after promising "
                      f"{self.fences[node.name]}")
        incarnation = durable.get("incarnation")
        if incarnation is None:
            incarnation = durable["incarnation"] = f"{node.name}.{next(node.incarnations)}"
        last = entries[-1].position if entries else NO_POSITION
        node.replica = Replica(PARTITION, node.name, last=last, fence_epoch=fence,
                               history=history, incarnation=incarnation,
                               generation=int(durable.get("generation", 0)),
                               retained_bytes_max=4096)
        node.log = entries
        node.up = True
        node.paused = False
        node.backlog.clear()
        node.proposals.clear()
        node.state = None
        self.coord.renew(node.name)
        state, rev = self.coord.get(STATE_KEY)
        self.world.at(self._coord_delay(), lambda: self._learn(node, state, rev))
        self.world.at(_TICK_MS, lambda: self._tick(node))
        self.world.at(_RENEW_MS, lambda: self._renew(node))

    def _coord_delay(self) -> int:
        return self.world.rng.randint(*_COORDINATOR_DELAY_MS)

    # ---- node runtime ----------------------------------------------------------------

    def _event(self, node: _Node, event: Any) -> None:
        """Run ``event`` (a callable) on ``node`` now, or later if it is paused."""
        if not node.up:
            return
        if node.paused:
            node.backlog.append(event)
            return
        event()

    def _tick(self, node: _Node) -> None:
        if not node.up:
            return
        self.world.at(_TICK_MS, lambda: self._tick(node))
        if node.paused or node.replica is None:
            return
        self._run(node, node.replica.tick(self.world.now_ms))

    def _renew(self, node: _Node) -> None:
        if not node.up:
            return
        self.world.at(_RENEW_MS, lambda: self._renew(node))
        if not node.paused:
            self.coord.renew(node.name)

    def _deliver(self, src: str, dst: str, message: Any) -> None:
        if dst == CONTROLLER:
            self._controller_receive(message)
            return
        node = self.nodes[dst]

        def handle() -> None:
            if node.replica is not None:
                self._run(node, node.replica.receive(message, self.world.now_ms))

        self._event(node, handle)

    def _on_coordinator_change(self, key: str, value: Any) -> None:
        if key != STATE_KEY:
            return
        _, rev = self.coord.get(key)
        for node in self.nodes.values():
            if node.up and self.coord.reachable(node.name):
                self.world.at(self._coord_delay(), functools.partial(
                    self._event, node, functools.partial(self._learn, node, value, rev)))

    def _learn(self, node: _Node, state: PartitionState, rev: int) -> None:
        """The node's watch delivers the partition's state."""
        if not node.up or node.replica is None or rev < node.state_rev:
            return
        node.state, node.state_rev = state, rev
        replica = node.replica
        now = self.world.now_ms
        if state.leader is None:
            return
        if state.leader == node.name:
            if replica.role is Role.LEADER and replica.epoch == state.epoch:
                self._run(node, replica.isr_changed(state.isr, now))
            elif not replica.may_lead(state.epoch):
                # It restarted since, or promised a later epoch to a controller whose
                # election has not completed: either way this epoch is over for it.
                self._resign(node, state, rev)
            else:
                node.proposals.clear()
                node.proposing_epoch = state.epoch
                self.world.log(f"{node.name} leads epoch {state.epoch} isr {state.isr}")
                self._run(node, replica.lead(state.epoch, replicas=state.replicas,
                                             isr=state.isr, min_isr=state.min_isr,
                                             sync=state.sync, now_ms=now))
        else:
            self._run(node, replica.follow(state.epoch, state.leader))

    def _resign(self, node: _Node, state: PartitionState, rev: int) -> None:
        """Named leader of an epoch it may not lead: hand it back to the controller."""
        self.world.log(f"{node.name} resigns epoch {state.epoch}")

        def attempt() -> None:
            self.coord.cas(node.name, STATE_KEY, rev, PartitionState(
                leader=None, epoch=state.epoch, replicas=state.replicas, isr=state.isr,
                min_isr=state.min_isr, sync=state.sync))

        self.world.at(self._coord_delay(), attempt)

    def _run(self, node: _Node, actions: Iterable[Action]) -> None:
        for action in actions:
            self._act(node, action)

    def _act(self, node: _Node, action: Action) -> None:
        replica = node.replica
        if replica is None:
            return
        if isinstance(action, Send):
            self.net.send(node.name, action.to, action.message)
        elif isinstance(action, Persist):
            self._persist(node, action)
        elif isinstance(action, Committed):
            self._committed(node, action.seq)
        elif isinstance(action, ChangeIsr):
            self._change_isr(node, action)
        elif isinstance(action, SendSnapshot):
            self._send_snapshot(node, action.to)
        elif isinstance(action, SteppedDown):
            self.world.log(f"{node.name} stepped down: {action.reason}")
            node.proposals.clear()
        elif isinstance(action, WaitForSnapshot):
            self.world.log(f"{node.name} waits for a snapshot: {action.reason}")
        else:  # pragma: no cover - the union is closed
            raise InternalError(f"unknown action {action!r}")

    def _persist(self, node: _Node, action: Persist) -> None:
        replica = node.replica
        assert replica is not None
        for entry in action.entries:
            if entry.seq != len(node.log) + 1:
                self.fail(f"{node.name} persists seq {entry.seq} after {len(node.log)}")
            node.log.append(entry)
        history = replica.history.starts()
        fence = action.fence_epoch

        def apply(durable: dict[str, Any]) -> None:
            if durable.get("generation", 0) != action.generation:
                return  # for a store a snapshot replaced
            previous = int(durable.get("fence", 0))
            if fence < previous:
                self.fail(f"{node.name}'s promised epoch went back from {previous} to {fence}")
            log: list[Entry] = durable.setdefault("entries", [])
            for entry in action.entries:
                if entry.seq != len(log) + 1:
                    self.fail(f"{node.name}'s disk gets seq {entry.seq} after {len(log)}")
                log.append(entry)
            durable["history"] = history
            durable["fence"] = fence
            self.fences[node.name] = max(self.fences[node.name], fence)

        def done() -> None:
            self._event(node, lambda: self._run(
                node, node.replica.persisted(action.through_seq, fence, action.generation)
                if node.replica is replica else ()))

        node.disk.write(apply, done)

    def _committed(self, node: _Node, seq: int) -> None:
        replica = node.replica
        assert replica is not None
        epoch = replica.epoch
        if self.leaders.get(epoch) != node.name:
            self.fail(f"{node.name} committed in epoch {epoch}, whose elected leader is "
                      f"{self.leaders.get(epoch)}")
        for s in range(node.checked_seq + 1, seq + 1):
            entry = node.log[s - 1]
            known = self.committed.get(s)
            if known is None or not self.sc.sync:
                # async: an acknowledgement is only the leader's fsync, and a leader
                # crash may lose it (the documented window), so a later leader may commit
                # another entry at the same seq.
                self.committed[s] = (entry.epoch, entry.payload)
            elif known != (entry.epoch, entry.payload):
                self.fail(f"seq {s} committed as {known} and as {(entry.epoch, entry.payload)}")
        node.checked_seq = max(node.checked_seq, seq)
        if node.proposing_epoch == epoch:
            for s in [s for s in node.proposals if s <= seq]:
                pid = node.proposals.pop(s)
                entry = node.log[s - 1]
                if entry.payload != self.payloads[pid]:
                    self.fail(f"proposal {pid} acknowledged at seq {s}, which holds "
                              f"another entry")
                self.acked[pid] = (entry.epoch, s)
                if self.healed:
                    self.acks_after_heal += 1

    def _change_isr(self, node: _Node, action: ChangeIsr) -> None:
        state, rev = node.state, node.state_rev
        replica = node.replica
        if state is None or state.epoch != action.epoch or replica is None:
            self._run(node, replica.isr_change_failed() if replica else ())
            return
        new = state.with_isr(action.isr)

        def attempt() -> None:
            ok = self.coord.cas(node.name, STATE_KEY, rev, new)
            self.world.log(f"{node.name} isr {state.isr} -> {new.isr}: {'ok' if ok else 'no'}")
            if not ok:
                self._event(node, lambda: self._run(
                    node, node.replica.isr_change_failed() if node.replica else ()))

        self.world.at(self._coord_delay(), attempt)

    def _send_snapshot(self, leader_node: _Node, to: str) -> None:
        source = leader_node.replica
        assert source is not None
        target = self.nodes[to]
        delay = self.world.rng.randint(*_SNAPSHOT_MS)

        def arrive() -> None:
            ok = (leader_node.up and not leader_node.paused and target.up
                  and not target.paused and self.net.reachable(leader_node.name, to)
                  and leader_node.replica is source and source.role is Role.LEADER
                  and target.replica is not None)
            if not ok:
                self._event(leader_node, lambda: source.snapshot_failed(to))
                return
            replica = target.replica
            assert replica is not None
            if replica.role is Role.LEADER:
                self._event(leader_node, lambda: source.snapshot_failed(to))
                return
            durable = leader_node.disk.durable
            entries = tuple(durable.get("entries", ()))
            history = EpochHistory(durable.get("history", ()))
            history.truncate_after(len(entries))
            last = entries[-1].position if entries else NO_POSITION
            incarnation = f"{to}.{next(target.incarnations)}"
            generation = replica.begin_install()

            def apply(store: dict[str, Any]) -> None:
                store["entries"] = list(entries)
                store["history"] = history.starts()
                store["incarnation"] = incarnation
                store["generation"] = generation
                store["fence"] = max(int(store.get("fence", 0)), replica.fence_epoch)

            def done() -> None:
                if target.replica is not replica or replica.generation != generation:
                    return
                target.log = list(entries)
                target.checked_seq = 0
                replica.incarnation = incarnation
                self.world.log(f"{to} installed a snapshot at {last}")
                self._run(target, replica.installed(last, EpochHistory(history.starts())))
                self._event(leader_node, lambda: self._run(
                    leader_node, source.snapshot_sent(to, last, incarnation,
                                                      self.world.now_ms)))

            target.disk.write(apply, lambda: self._event(target, done))

        self.world.at(delay, arrive)

    # ---- the controller ------------------------------------------------------------------

    def _controller_check(self) -> None:
        self.world.at(_CONTROLLER_CHECK_MS, self._controller_check)
        if self.election is not None:
            return
        state, rev = self.coord.get(STATE_KEY)
        alive = self.coord.alive()
        # Once replicas were fenced past the coordinator's epoch, its leader can commit
        # nothing more: the election must be finished, alive leader or not.
        unfinished = self._fenced_epoch > state.epoch
        if state.leader is not None and state.leader in alive and not unfinished:
            return
        epoch = fence_epoch_for(state, self._seen_fences)
        self._fenced_epoch = max(self._fenced_epoch, epoch)
        self.election = {"epoch": epoch, "rev": rev, "state": state, "replies": {}}
        self.world.log(f"controller fences epoch {epoch} (leader {state.leader} gone)")
        for node in state.replicas:
            self.net.send(CONTROLLER, node, Fence(PARTITION, epoch, CONTROLLER))
        self.world.at(_FENCE_WAIT_MS, self._controller_decide)

    def _controller_receive(self, message: Any) -> None:
        if not isinstance(message, FenceReply):
            return
        self._seen_fences = [*self._seen_fences[-20:], message]
        election = self.election
        if election is not None and message.epoch == election["epoch"]:
            election["replies"][message.node] = message

    def _controller_decide(self) -> None:
        election, self.election = self.election, None
        assert election is not None
        state: PartitionState = election["state"]
        chosen = choose_leader(state, election["epoch"], election["replies"],
                               self.coord.alive())
        if chosen is None:
            self.world.log(f"controller: no leader for epoch {election['epoch']}")
            return
        if self.coord.cas(CONTROLLER, STATE_KEY, election["rev"], chosen):
            if chosen.epoch in self.leaders:
                self.fail(f"two leaders written for epoch {chosen.epoch}")
            self.leaders[chosen.epoch] = chosen.leader or ""
            self.world.log(f"controller elected {chosen.leader} for epoch {chosen.epoch} "
                           f"isr {chosen.isr}")

    # ---- clients --------------------------------------------------------------------------

    def _client(self) -> None:
        self.world.at(self.world.rng.randint(*self.sc.propose_every_ms), self._client)
        state, _ = self.coord.get(STATE_KEY)
        if state.leader is None:
            return
        node = self.nodes[state.leader]
        replica = node.replica
        if not node.up or node.paused or replica is None or not replica.writable:
            return
        pid = next(self.proposal_ids)
        payload = f"p{pid}".encode()
        self.payloads[pid] = payload
        try:
            seq, actions = replica.propose(payload, self.world.now_ms)
        except NotWritable:
            return
        if node.proposing_epoch == replica.epoch:
            node.proposals[seq] = pid
        self._run(node, actions)

    # ---- faults ---------------------------------------------------------------------------

    def _schedule_faults(self) -> None:
        rng = self.world.rng
        t = rng.randint(200, 800)
        while t < self.sc.fault_ms:
            kind = rng.choice(self.sc.faults)
            node = rng.choice(self.sc.nodes)
            length = rng.randint(200, 2_500)
            self.schedule.append(f"{t}ms {kind} {node} for {length}ms")
            self.world.at(t, functools.partial(self._fault, kind, node, length))
            t += rng.randint(*self.sc.fault_gap_ms)
        self.world.at(self.sc.fault_ms, self._heal)

    def _fault(self, kind: str, name: str, length_ms: int) -> None:
        node = self.nodes[name]
        self.world.log(f"fault: {kind} {name} for {length_ms} ms")
        if kind == "crash":
            self._crash(node)
            self.world.at(length_ms, lambda: self._restart(node))
        elif kind == "pause":
            if node.up:
                node.paused = True
                self.world.at(length_ms, lambda: self._resume(node))
        elif kind == "isolate":
            self.net.isolate(name, [*self.sc.nodes, CONTROLLER])
            self.coord_cut.add(name)
            self.world.at(length_ms, lambda: self._reconnect(name))
        elif kind == "power":
            for other in self.nodes.values():
                self._crash(other)
            for other in self.nodes.values():
                self.world.at(length_ms, functools.partial(self._restart, other))
        elif kind == "lossy":
            self.net.drop_rate, self.net.duplicate_rate = 0.2, 0.1
            self.world.at(length_ms, self._clean_network)

    def _crash(self, node: _Node) -> None:
        if not node.up:
            return
        node.up = False
        node.disk.crash()
        node.replica = None
        node.proposals.clear()

    def _restart(self, node: _Node) -> None:
        if node.up:
            return
        self.world.log(f"{node.name} restarts")
        self._boot(node)

    def _resume(self, node: _Node) -> None:
        if not node.up or not node.paused:
            return
        node.paused = False
        backlog, node.backlog = node.backlog, []
        for event in backlog:
            if node.up and not node.paused:
                event()

    def _reconnect(self, name: str) -> None:
        for pair in [p for p in self.net.cut if name in p]:
            self.net.cut.discard(pair)
        self.coord_cut.discard(name)
        node = self.nodes[name]
        if node.up:
            state, rev = self.coord.get(STATE_KEY)
            self.world.at(self._coord_delay(), lambda: self._event(
                node, lambda: self._learn(node, state, rev)))

    def _clean_network(self) -> None:
        self.net.drop_rate = self.net.duplicate_rate = 0.0

    def _heal(self) -> None:
        self.world.log("heal")
        self.healed = True
        self._clean_network()
        for name in self.sc.nodes:
            self._reconnect(name)
        for node in self.nodes.values():
            if not node.up:
                self._restart(node)
            elif node.paused:
                self._resume(node)

    # ---- the end -----------------------------------------------------------------------------

    def check_end(self) -> None:
        state, _ = self.coord.get(STATE_KEY)
        if state.leader is None:
            self.fail("no leader after healing")
        if self.acks_after_heal == 0:
            self.fail("nothing acknowledged after healing")
        if not self.sc.sync:
            return  # async may lose acknowledged entries (see _committed)
        for pid, (epoch, seq) in self.acked.items():
            for name in state.isr:
                log = self.nodes[name].disk.durable.get("entries", ())
                if len(log) < seq or log[seq - 1] != Entry(seq, epoch, self.payloads[pid]):
                    self.fail(f"acknowledged proposal {pid} at {Position(epoch, seq)} is "
                              f"missing from in-sync replica {name}")


def run_seed(seed: int, scenario: Scenario | None = None, *,
             verbose: bool = False) -> dict[str, Any]:
    """Run one seed; raises ``SimulationFailure``. Returns a few counts for reports."""
    sim = _Simulation(seed, scenario or Scenario())
    try:
        sim.start()
        sim.world.run(sim.sc.fault_ms + sim.sc.settle_ms)
        sim.check_end()
    except SimulationFailure:
        raise
    except Exception as exc:  # an InternalError (a broken invariant) or a crash
        try:
            sim.fail(f"{type(exc).__name__}: {exc}")
        except SimulationFailure as failure:
            raise failure from exc
    if verbose:
        print("\n".join(sim.world.trace))
    state, _ = sim.coord.get(STATE_KEY)
    return {"acked": len(sim.acked), "committed": len(sim.committed), "epoch": state.epoch,
            "faults": len(sim.schedule), "digest": sim.world.digest()}
