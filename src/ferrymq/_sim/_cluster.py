"""The service-level simulation: real nodes, on virtual time, under faults.

What runs real: every simulated node is a ``ferrymq._cluster._node.Node`` built
through its seams, so what it does between etcd and its replicas is the production
code: registration on a lease, the watches of the nodes, the replica sets' state and
the queue catalog, the state poll, the tick, frame routing, and per replica set the
``_Host`` that leads, follows, resigns and changes the in-sync set. Under it, the
``Controller`` (campaigning and fencing through a client of one
``LocalCoordinationServer``, the fake that passes etcd's contract suite), and per
replica set a ``ReplicatedStore`` (the real shell around the real ``Replica``) holding
a ``Broker`` and its ``QueueService``. Queues are created as a node's gateway creates
them: ``Node._place`` writes the catalog entry and the replica set in one
transaction, the controller elects, and the leader's ``Node.call`` executes the
CreateQueue and publishes the queue in the catalog. Clients call ``Node.call`` on the
node etcd names the leader (the gateway and the forwarding ``Proxy`` are HTTP, which
the simulation leaves out). The history is recorded with ``ferrymq._verify`` and judged
by its checker.

What is simulated: the event loop's time (``_loop.VirtualTimeLoop``: both of the
node's clocks are its clock), the disk (``_disk.SimDisk``, the node's ``disk``: what is
not fsynced is lost in a crash), the network between nodes (the node's ``transport``:
seeded delay; loss, duplication and reordering while "lossy"; cuts), the entropy
(seeded), and processes (``_loop.Actor``: kill, pause). ``_ObservedStore``, the node's
``store_factory``, is the real store telling the invariants what it logs and commits.

Faults, seeded per run: a node crashes with power loss and restarts from its disk;
pauses past its lease; is cut off from the other nodes and from the coordinator; every
node loses power at once; the network turns lossy. At the end (after healing and a
drain) the run fails unless the checker finds no violation (no acknowledged message
lost, no FIFO order violation, no delivery inside another's visibility lease, ...) and
these protocol invariants held: one leader per epoch in etcd; only the elected leader
commits in an epoch; no two commits of one seq differ; no promised epoch went back on
any disk; the in-sync replicas of each set hold the same state after quiescence.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import logging
import random
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ferrymq._api import CallContext
from ferrymq._cluster._catalog import QueueEntry
from ferrymq._cluster._layout import Layout, decode_state
from ferrymq._cluster._node import Node, NodeConfig
from ferrymq._cluster._partition import ReplicatedStore
from ferrymq._cluster._transport import AddressOf, FrameHandler
from ferrymq._coordination import (
    CoordinationError,
    EventKind,
    Lease,
    LocalCoordinationServer,
    LocalCoordinator,
    ManualClock,
    Op,
    Snapshot,
    TxnResult,
    WatchStream,
)
from ferrymq._coordination._types import KeyValue
from ferrymq._core._broker import Broker
from ferrymq._core._errors import InternalError, SqsError
from ferrymq._gateway._http import HttpLimits
from ferrymq._replication._replica import Persist
from ferrymq._sim._disk import SimDisk
from ferrymq._sim._loop import Actor, VirtualTimeLoop
from ferrymq._sim._replication import SimulationFailure
from ferrymq._verify import CONTROL, NEMESIS, Recorder, check, make_body
from ferrymq._verify._workload import batch_outcome, decide_received

__all__ = ["ClusterScenario", "SimulationFailure", "run_cluster_seed"]

log = logging.getLogger("ferrymq.sim")

# Virtual time starts at a plausible wall-clock time: the core stores deadlines as
# absolute milliseconds, and some checks compare them with "now".
_EPOCH_MS = 1_700_000_000_000
_ACCOUNT = "000000000000"
_REGION = "us-east-1"
_BASE_URL = "http://sim"
_CLUSTER = "sim"
# The workload's queues, each on its own replica set: one standard, one FIFO.
_QUEUES = {"std": "std", "fifo": "fifo.fifo"}
# A node that could not join the cluster at start (cut off from etcd) exits; its
# supervisor starts it again after this long.
_RESTART_S = 0.5
# A coordinator round trip (an etcd request on a LAN), ms.
_COORDINATOR_MS = (1, 4)
# A frame between nodes, and a client request or answer, ms; while lossy, frames may
# take longer and overtake each other.
_NETWORK_MS = (1, 5)
_LOSSY_NETWORK_MS = (1, 40)
_LOSSY_DROP = 0.2
_LOSSY_DUPLICATE = 0.1
# A client gives up on an answer after this long (an SDK's read timeout, shortened to
# keep runs short; still above a failover's ~2-3 s).
_REQUEST_TIMEOUT_S = 6.0
# Client pacing.
_SEND_EVERY_MS = (20, 80)
_BACKOFF_MS = 50
_VISIBILITY_S = 3
_WAIT_S = 1
_RECEIVE_MAX = 10
_CRASH_FRACTION = 0.1  # a consumer that "crashes" leaves the message to its lease
_RELEASE_FRACTION = 0.05  # one that gives it back (visibility 0)
_RECEIVE_RETRIES_MAX = 3
# Lines of the trace kept for a failure's report (the tail explains it).
_TRACE_LINES_MAX = 400
# Of those, the lines a failure report shows.
_REPORT_LINES = 80


# How many times (0.1 s apart) the end checks the replicas agree before failing: 3 s,
# six heartbeats.
_CONVERGE_CHECKS = 30


@dataclass(frozen=True)
class ClusterScenario:
    """What one seed runs (virtual ms)."""

    nodes: tuple[str, ...] = ("n1", "n2", "n3")
    min_isr: int = 2
    fault_ms: int = 8_000
    # After healing: producers go on this long, then stop, and the drain has until
    # ``drain_ms`` to receive and delete every acknowledged message.
    traffic_after_heal_ms: int = 2_000
    # Unless no send has been acknowledged since healing: then they go on until one is,
    # for at most this long. A node that crashed just before the heal holds its
    # replica sets until its lease expires (``lease_ttl_s``), and then they are elected
    # anew, so recovery may take a little more than a lease; a cluster that has not
    # recovered by three leases has failed.
    recovery_ms_max: int = 6_000
    drain_ms: int = 20_000
    faults: tuple[str, ...] = ("crash", "pause", "isolate", "power", "lossy")
    fault_gap_ms: tuple[int, int] = (400, 1_800)
    fault_length_ms: tuple[int, int] = (300, 3_000)
    lease_ttl_s: int = 2
    producers: int = 2
    consumers: int = 2


class SimEntropy:
    """The core's randomness from a seeded source, with UUIDv7 message ids whose time
    is the virtual clock's (as ``SystemEntropy``'s is the wall clock's)."""

    def __init__(self, rng: random.Random, clock_ms: Callable[[], int]) -> None:
        self._rng = rng
        self._clock_ms = clock_ms

    def message_id(self) -> str:
        rand_a, rand_b = self._rng.getrandbits(12), self._rng.getrandbits(62)
        value = ((self._clock_ms() & (2**48 - 1)) << 80) | (7 << 76) | (rand_a << 64) \
            | (2 << 62) | rand_b
        return str(uuid.UUID(int=value))

    def token(self) -> str:
        return base64.urlsafe_b64encode(self._rng.getrandbits(144).to_bytes(18, "big")
                                        ).decode("ascii")


class _DelayedCoordinator:
    """A ``LocalCoordinator`` one network round trip away: every request waits a seeded
    delay first (in the caller's actor, so a paused caller's request waits too)."""

    def __init__(self, inner: LocalCoordinator, rng: random.Random) -> None:
        self.inner = inner
        self._rng = rng

    async def _trip(self) -> None:
        await asyncio.sleep(self._rng.randint(*_COORDINATOR_MS) / 1000)

    async def get(self, key: bytes) -> KeyValue | None:
        await self._trip()
        return await self.inner.get(key)

    async def get_prefix(self, prefix: bytes) -> Snapshot:
        await self._trip()
        return await self.inner.get_prefix(prefix)

    async def put(self, key: bytes, value: bytes, *, lease: Lease | None = None) -> int:
        await self._trip()
        return await self.inner.put(key, value, lease=lease)

    async def delete(self, key: bytes) -> int:
        await self._trip()
        return await self.inner.delete(key)

    async def transact(self, compare: Mapping[bytes, int], ops: Sequence[Op]) -> TxnResult:
        await self._trip()
        return await self.inner.transact(compare, ops)

    async def grant_lease(self, ttl_s: int) -> Lease:
        await self._trip()
        return await self.inner.grant_lease(ttl_s)

    async def revoke_lease(self, lease: Lease) -> None:
        await self._trip()
        await self.inner.revoke_lease(lease)

    def watch_prefix(self, prefix: bytes, *, start_revision: int) -> WatchStream:
        return self.inner.watch_prefix(prefix, start_revision=start_revision)

    async def close(self, *, revoke_leases: bool = True) -> None:
        await self.inner.close(revoke_leases=revoke_leases)


class _ObservedStore(ReplicatedStore):
    """The real ``ReplicatedStore``, telling the simulation what it logs and commits
    (for the protocol invariants; nothing is changed)."""

    def __init__(self, *, world: _World, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._world = world
        # seq -> (epoch, payload) of this store's log as this incarnation saw it; emptied
        # when a snapshot replaces the store (a new generation).
        self.entries: dict[int, tuple[int, bytes]] = {}
        self._entries_generation = self.replica.generation
        self.checked_seq = 0

    def _persist(self, p: Persist) -> None:
        if p.generation != self._entries_generation:
            self.entries.clear()
            self._entries_generation = p.generation
            self.checked_seq = 0
        for entry in p.entries:
            self.entries[entry.seq] = (entry.epoch, entry.payload)
        super()._persist(p)

    def _committed(self, seq: int) -> None:
        self._world.on_commit(self, seq)
        super()._committed(seq)


class _SimTransport:
    """A node's ``transport``: frames go through the world's network (``_World.send``)
    and arrive as callbacks of the receiving incarnation's actor."""

    def __init__(self, world: _World, name: str, on_frame: FrameHandler) -> None:
        self._world = world
        self._name = name
        self._on_frame = on_frame

    async def listen(self, host: str, port: int) -> tuple[str, int]:
        del host, port
        return "sim", 0  # never called: the simulation does not bind

    def send(self, peer: str, frame: object) -> None:
        self._world.send(self._name, peer, frame)

    def backlog_bytes(self, peer: str) -> int:
        del peer
        return 0  # the simulated network takes every frame at once (and may lose it)

    def reset(self, peer: str) -> None:
        pass  # the simulated network has no connections to go stale

    async def close(self) -> None:
        pass

    def deliver(self, peer: str, frame: object) -> None:
        if self._world.reachable(peer, self._name):  # else cut while in flight
            self._on_frame(peer, frame)


class _Incarnation:
    """One life of a node's process, from (re)start to crash: a real ``Node`` on the
    simulated clocks, disk, network and entropy, in its own actor."""

    def __init__(self, world: _World, name: str, number: int, disk: SimDisk) -> None:
        self.world = world
        self.name = name
        self.actor = Actor(world.loop, f"{name}#{number}")
        # Set when this life ends (a crash): a client's request to it then fails at
        # once, as a TCP connection to a dead process is reset, instead of waiting out
        # the client's timeout.
        self.died = asyncio.Event()
        self.rng = random.Random(f"{world.seed}:{name}:{number}")
        self.client = world.server.connect(f"{name}#{number}")
        self.transport: _SimTransport | None = None
        clock_ms = world.clock.now_ms
        sc = world.scenario
        cfg = NodeConfig(
            node_id=name, host="sim", port=0, data_dir=Path("/sim") / name,
            etcd_endpoints=(), cluster=_CLUSTER, advertise_url=None,
            replicas=len(sc.nodes), min_isr=sc.min_isr, sync=True,
            lease_ttl_s=sc.lease_ttl_s, free_bytes_min=0, account_id=_ACCOUNT,
            region=_REGION, http_limits=HttpLimits())
        self.node = Node(
            cfg, _DelayedCoordinator(self.client, self.rng),
            functools.partial(Broker, account_id=_ACCOUNT, region=_REGION), self.on_fatal,
            clock_ms=clock_ms, wall_ms=clock_ms,
            entropy=lambda: SimEntropy(self.rng, clock_ms), disk=disk,
            transport=self._transport,
            store_factory=functools.partial(_ObservedStore, world=world),
            token_hex=lambda n: self.rng.getrandbits(8 * n).to_bytes(n, "big").hex())

    def _transport(self, on_frame: FrameHandler, address_of: AddressOf) -> _SimTransport:
        del address_of  # the world's network needs no addresses
        self.transport = _SimTransport(self.world, self.name, on_frame)
        return self.transport

    def start(self) -> None:
        self.actor.spawn(self._start())

    async def _start(self) -> None:
        while True:
            try:
                await self.node.start_loops()
                return
            except CoordinationError as exc:
                self.world.log(f"{self.name} cannot join the cluster ({exc}); restarts")
                await asyncio.sleep(_RESTART_S)

    def on_fatal(self, exc: BaseException) -> None:
        self.world.fail(f"{self.name}: fatal: {exc!r}", exc)

    def deliver(self, peer: str, frame: object) -> None:
        if self.transport is None:
            raise InternalError(f"{self.name}'s node made no transport")
        self.transport.deliver(peer, frame)


@dataclass
class _Node:
    name: str
    disk: SimDisk
    current: _Incarnation | None = None
    lives: int = 0
    cut_reasons: set[str] = field(default_factory=set)  # why it cannot reach etcd


class _World:
    def __init__(self, seed: int, scenario: ClusterScenario) -> None:
        self.seed = seed
        self.scenario = scenario
        self.rng = random.Random(seed)
        self.clock = ManualClock(_EPOCH_MS)
        self.loop = VirtualTimeLoop(self.clock)
        self.loop.set_exception_handler(self._loop_exception)
        self.server = LocalCoordinationServer(self.clock,
                                              min_lease_ttl_s=scenario.lease_ttl_s)
        self.layout = Layout(_CLUSTER)
        self.recorder = Recorder(clock_ns=lambda: self.clock.now_ms() * 1_000_000)
        self.sim = Actor(self.loop, "sim")  # clients, faults, observers: never faulted
        self.nodes = {n: _Node(n, SimDisk(n, random.Random(f"{seed}:{n}:disk"),
                                          self.clock.now_ms, self.fail))
                      for n in scenario.nodes}
        # The network: cut pairs; while lossy, drops, duplicates and reorders.
        self.cut: set[frozenset[str]] = set()
        self.lossy = False
        self._link_free_ms: dict[tuple[str, str], int] = {}
        self.schedule: list[str] = []
        self.trace: list[str] = []
        self._digest = hashlib.sha256()
        self.failure: str | None = None
        self.ending = False
        self._failure_cause: BaseException | None = None
        self._main: asyncio.Task[None] | None = None
        # The replica set each of the workload's queues was placed on (``_QUEUES``' keys).
        self.partitions: dict[str, str] = {}
        # Invariants: (partition, epoch) -> leader written in etcd; commits claimed;
        # seq -> (epoch, payload) committed, per partition.
        self.leaders: dict[tuple[str, int], str] = {}
        self.claims: set[tuple[str, int, str]] = set()
        self.committed: dict[str, dict[int, tuple[int, bytes]]] = {}
        self.healed = False
        self.ok_sends_after_heal = 0
        self.producing = True
        self.draining = False
        self.acked: dict[str, set[str]] = {p: set() for p in _QUEUES}
        self.deleted: dict[str, set[str]] = {p: set() for p in _QUEUES}

    # -- reporting -----------------------------------------------------------------

    def now(self) -> int:
        return self.clock.now_ms() - _EPOCH_MS

    def log(self, text: str) -> None:
        line = f"{self.now():>7} ms  {text}"
        self._digest.update(line.encode())
        self.trace.append(line)
        if len(self.trace) > _TRACE_LINES_MAX:
            del self.trace[:_TRACE_LINES_MAX // 4]

    def digest(self) -> str:
        return self._digest.hexdigest()[:16]

    def fail(self, what: str, cause: BaseException | None = None) -> None:
        if self.ending:
            return  # the run is over: what its tasks do as they unwind is no verdict
        if self.failure is None:
            self.failure = what
            self._failure_cause = cause
            self.log(f"FAILURE: {what}")
            if self._main is not None:
                self._main.cancel()

    def _loop_exception(self, loop: asyncio.AbstractEventLoop,
                        context: dict[str, Any]) -> None:
        message = str(context.get("message", ""))
        exc = context.get("exception")
        self.fail(f"unhandled in the loop: {message} {exc!r}",
                  exc if isinstance(exc, BaseException) else None)

    def report(self, what: str) -> SimulationFailure:
        trace = "\n".join(self.trace[-_REPORT_LINES:])
        return SimulationFailure(
            f"seed {self.seed}: {what}\nfaults: {self.schedule}\n"
            f"replay: python -m ferrymq._sim --cluster --seed {self.seed} "
            "--verbose\n"
            f"last events:\n{trace}")

    # -- the network ----------------------------------------------------------------

    def reachable(self, a: str, b: str) -> bool:
        return a == b or frozenset((a, b)) not in self.cut

    def send(self, src: str, dst: str, frame: object) -> None:
        node = self.nodes.get(dst)
        inc = node.current if node is not None else None
        if inc is None or not self.reachable(src, dst):
            return
        rng = self.rng
        copies = 1
        if self.lossy:
            if rng.random() < _LOSSY_DROP:
                return
            if rng.random() < _LOSSY_DUPLICATE:
                copies = 2
        now = self.now()
        for _ in range(copies):
            if self.lossy:
                at = now + rng.randint(*_LOSSY_NETWORK_MS)  # may overtake
            else:
                # One connection per pair: in order.
                at = max(now + rng.randint(*_NETWORK_MS), self._link_free_ms.get((src, dst), 0))
                self._link_free_ms[(src, dst)] = at
            inc.actor.call_later(at - now, inc.deliver, src, frame)

    # -- commits ---------------------------------------------------------------------

    def on_commit(self, store: _ObservedStore, seq: int) -> None:
        partition = store.partition
        self.claims.add((partition, store.replica.epoch, store.node))
        known = self.committed.setdefault(partition, {})
        for s in range(store.checked_seq + 1, seq + 1):
            entry = store.entries.get(s)
            if entry is None:
                continue  # before this incarnation's log (a restart, a snapshot)
            held = known.setdefault(s, entry)
            if held != entry:
                self.fail(f"{partition}: seq {s} committed as epoch {held[0]} and as "
                          f"epoch {entry[0]} (by {store.node}), with different entries")
        store.checked_seq = max(store.checked_seq, seq)

    async def _observe(self) -> None:
        """Every leader etcd names, per epoch: two for one epoch is a failure."""
        client = self.server.connect("observer")
        prefix = self.layout.partitions
        stream = client.watch_prefix(prefix, start_revision=1)
        async for event in stream:
            if event.kind is not EventKind.PUT:
                continue
            partition = self.layout.name_of(prefix, event.key)
            state = decode_state(event.value)
            if state.leader is None:
                continue
            held = self.leaders.setdefault((partition, state.epoch), state.leader)
            if held != state.leader:
                self.fail(f"{partition}: etcd named {held} and {state.leader} leaders of "
                          f"epoch {state.epoch}")

    # -- nodes ------------------------------------------------------------------------

    def boot(self, node: _Node) -> None:
        node.lives += 1
        inc = _Incarnation(self, node.name, node.lives, node.disk)
        node.current = inc
        if node.cut_reasons:
            self.server.partition(inc.client)
        inc.actor.context.run(inc.start)

    def crash(self, node: _Node) -> None:
        inc = node.current
        if inc is None:
            return
        node.current = None
        inc.actor.kill()
        inc.died.set()
        # The process is gone: its leases run out their TTL, its watches end.
        self.sim.spawn(inc.client.close(revoke_leases=False))

    def set_cut(self, node: _Node, reason: str, on: bool) -> None:
        before = bool(node.cut_reasons)
        (node.cut_reasons.add if on else node.cut_reasons.discard)(reason)
        inc = node.current
        if inc is None or before == bool(node.cut_reasons):
            return
        if node.cut_reasons:
            self.server.partition(inc.client)
        else:
            self.server.heal(inc.client)

    # -- faults ----------------------------------------------------------------------

    def plan_faults(self) -> list[tuple[int, str, str, int]]:
        sc = self.scenario
        rng = self.rng
        plan = []
        t = rng.randint(300, 900)
        while t < sc.fault_ms:
            kind = rng.choice(sc.faults)
            name = rng.choice(sc.nodes)
            length = rng.randint(*sc.fault_length_ms)
            plan.append((t, kind, name, length))
            self.schedule.append(f"{t}ms {kind} {name} for {length}ms")
            t += rng.randint(*sc.fault_gap_ms)
        return plan

    async def _fault(self, start_ms: int, kind: str, name: str, length_ms: int) -> None:
        await asyncio.sleep(start_ms / 1000)
        if self.healed:
            return
        node = self.nodes[name]
        pending = self.recorder.invoke(NEMESIS, kind, {"length_ms": length_ms}, name)
        self.log(f"fault: {kind} {name} for {length_ms} ms")
        if kind == "crash":
            self.crash(node)
            await asyncio.sleep(length_ms / 1000)
            if node.current is None:
                self.log(f"{name} restarts")
                self.boot(node)
        elif kind == "power":
            for other in self.nodes.values():
                self.crash(other)
            await asyncio.sleep(length_ms / 1000)
            for other in self.nodes.values():
                if other.current is None:
                    self.boot(other)
        elif kind == "pause":
            inc = node.current
            if inc is not None:
                inc.actor.pause()
                self.set_cut(node, "pause", True)  # no keep-alives either
                await asyncio.sleep(length_ms / 1000)
                self.set_cut(node, "pause", False)
                inc.actor.resume()
        elif kind == "isolate":
            pairs = {frozenset((name, other)) for other in self.nodes if other != name}
            self.cut |= pairs
            self.set_cut(node, "isolate", True)
            await asyncio.sleep(length_ms / 1000)
            self.cut -= pairs
            self.set_cut(node, "isolate", False)
        elif kind == "lossy":
            self.lossy = True
            await asyncio.sleep(length_ms / 1000)
            self.lossy = False
        else:
            raise InternalError(f"unknown fault {kind!r}")
        self.recorder.complete(pending, "ok")

    def heal(self) -> None:
        self.log("heal")
        self.healed = True
        self.lossy = False
        self.cut.clear()
        for node in self.nodes.values():
            for reason in list(node.cut_reasons):
                self.set_cut(node, reason, False)
            inc = node.current
            if inc is None:
                self.boot(node)
            elif inc.actor.paused:
                inc.actor.resume()

    # -- the run -----------------------------------------------------------------------

    async def main(self) -> None:
        sc = self.scenario
        self.sim.spawn(self._observe())
        for node in self.nodes.values():
            self.boot(node)
        clients = _Clients(self)
        await clients.create_queues()
        faults = [self.sim.spawn(self._fault(t, kind, name, length))
                  for t, kind, name, length in self.plan_faults()]
        workers = clients.start()
        await asyncio.sleep(sc.fault_ms / 1000)
        for task in faults:
            task.cancel()
        self.heal()
        healed_ms = self.now()
        await asyncio.sleep(sc.traffic_after_heal_ms / 1000)
        while self.ok_sends_after_heal == 0 and self.now() < healed_ms + sc.recovery_ms_max:
            await asyncio.sleep(0.1)
        self.producing = False
        self.draining = True
        drain = self.recorder.invoke(CONTROL, "drain", {"queue": "*"})
        deadline_ms = self.now() + sc.drain_ms
        while self.now() < deadline_ms and not clients.caught_up():
            await asyncio.sleep(0.2)
        caught_up = clients.caught_up()
        for partition, queue in _QUEUES.items():
            self.recorder.complete(
                self.recorder.invoke(CONTROL, "drain", {"queue": queue}),
                "ok" if caught_up else "info")
            del partition
        self.recorder.complete(drain, "ok" if caught_up else "info")
        clients.stop()
        for task in workers:
            task.cancel()
        # Quiescence: no client traffic; followers catch up on heartbeats. The
        # controller may still move a leader meanwhile (balancing), and the new leader's
        # first entry reaches its followers a moment later: the replicas must agree
        # within a few heartbeats more, not at one instant.
        await asyncio.sleep(2.0)
        mismatch = self.replica_mismatch()
        for _ in range(_CONVERGE_CHECKS):
            if mismatch is None:
                return
            await asyncio.sleep(0.1)
            mismatch = self.replica_mismatch()
        if mismatch is not None:
            self.fail(mismatch)

    def replica_mismatch(self) -> str | None:
        """Why the in-sync replicas of some set do not hold the same state at the same
        position (None: they all do)."""
        for partition in self.partitions.values():
            held: dict[str, tuple[str, list[Any]]] = {}
            kv = self.server._kv.get(self.layout.partition(partition))
            if kv is None:
                return f"{partition}: its state is gone from etcd"
            state = decode_state(kv.value)
            if state.leader is None:
                return f"{partition}: no leader after healing"
            for name in state.isr:
                inc = self.nodes[name].current
                path = inc.node.partition_path(partition) if inc is not None else None
                file = self.nodes[name].disk.files.get(str(path))
                if file is None:
                    return f"{partition}: in-sync replica {name} has no store"
                position = f"{file.meta.get('repl.last_epoch')}.{file.meta.get('repl.last_seq')}"
                held[name] = (position, list(file.store.load()))
            leader = held.get(state.leader)
            for name, (position, effects) in held.items():
                if leader is not None and (position, effects) != leader:
                    return (f"{partition}: in-sync replica {name} at {position} holds "
                            f"{len(effects)} effects, its leader {state.leader} at "
                            f"{leader[0]} {len(leader[1])} (or different ones)")
        return None

    def check_end(self) -> dict[str, Any]:
        for partition, epoch, node in sorted(self.claims):
            leader = self.leaders.get((partition, epoch))
            if leader != node:
                self.fail(f"{partition}: {node} committed in epoch {epoch}, whose elected "
                          f"leader is {leader}")
        events = self.recorder.events()
        # The digest covers what clients saw too: ids, handles, bodies, times.
        self._digest.update(orjson.dumps(events))
        report = check(events)
        violations = report.violations()
        if violations:
            self.fail("the history checker found: " + "; ".join(violations[:6]))
        if self.ok_sends_after_heal == 0:
            self.fail("no send was acknowledged after healing")
        acked = sum(q.acked for q in report.queues)
        return {"acked": acked, "faults": len(self.schedule),
                "deliveries": sum(q.deliveries for q in report.queues),
                "epochs": max((e for _, e in self.leaders), default=0),
                "digest": self.digest()}


class _Clients:
    """The seeded workload (``ferrymq._verify._workload``'s W1 and W2, as tasks of the
    simulation): per queue, producers and consumers calling the leader's node. ``which``
    is a key of ``_QUEUES``."""

    def __init__(self, world: _World) -> None:
        self.world = world
        self.router = world.server.connect("clients")
        self.rng = random.Random(f"{world.seed}:clients")
        self.tasks: list[asyncio.Task[Any]] = []
        self.empty_receives: dict[str, int] = {p: 0 for p in _QUEUES}
        self._stopped = False

    def url(self, which: str) -> str:
        return f"{_BASE_URL}/{_ACCOUNT}/{_QUEUES[which]}"

    async def leader_of(self, which: str) -> str | None:
        partition = self.world.partitions.get(which)
        if partition is None:
            return None
        kv = await self.router.get(self.world.layout.partition(partition))
        return decode_state(kv.value).leader if kv is not None else None

    async def _on_node(self, name: str | None, coro: Callable[[Node], Any]
                       ) -> tuple[str, Any]:
        """Run ``coro(node)`` in node ``name``'s process, across the client's network:
        ``(type, answer)``, type as the history records it (fail: surely not done;
        info: unknown)."""
        await asyncio.sleep(self.rng.randint(*_NETWORK_MS) / 1000)
        node = self.world.nodes.get(name) if name is not None else None
        inc = node.current if node is not None else None
        if inc is None:
            return "fail", {"error": "connection refused"}
        call = inc.actor.spawn(coro(inc.node))
        died = asyncio.ensure_future(inc.died.wait())
        try:
            await asyncio.wait((call, died), timeout=_REQUEST_TIMEOUT_S,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            died.cancel()
        if not call.done():
            return "info", {"error": "connection reset" if inc.died.is_set() else "timeout"}
        try:
            answer = call.result()
        except SqsError as exc:
            return ("fail" if exc.status < 500 else "info"), {"error": exc.shape}
        await asyncio.sleep(self.rng.randint(*_NETWORK_MS) / 1000)
        return "ok", answer

    def _ctx(self) -> CallContext:
        return CallContext(request_id="sim", base_url=_BASE_URL, account_id=_ACCOUNT,
                           region=_REGION)

    async def request(self, which: str, action: str, params: dict[str, Any]
                      ) -> tuple[str, dict[str, Any]]:
        """One request to the node etcd names the leader of the queue's replica set."""
        ctx = self._ctx()
        leader = await self.leader_of(which)
        return await self._on_node(leader, lambda node: node.call(action, params, ctx))

    async def create_queues(self) -> None:
        for which, queue in _QUEUES.items():
            await self._create_queue(which, queue)
        self.world.log("queues created")

    async def _create_queue(self, which: str, queue: str) -> None:
        """As a node's gateway creates a queue: one node places it (the catalog entry
        and the replica set, in one etcd transaction), the controller elects the set's
        leader, and the leader executes the CreateQueue."""
        names = self.world.scenario.nodes
        # All nodes as replicas: refused (and tried again) until the placing node sees
        # every node registered.
        params: dict[str, Any] = {"QueueName": queue,
                                  "tags": {"ferry:replicas": str(len(names))}}
        if queue.endswith(".fifo"):
            params["Attributes"] = {"FifoQueue": "true"}
        ctx = self._ctx()
        while which not in self.world.partitions:
            type_, partition = await self._on_node(
                self.rng.choice(names),
                lambda node: _first_partition(node._place(queue, params, ctx)))
            if type_ == "ok":
                self.world.partitions[which] = partition
                self.world.log(f"{queue} placed on {partition}")
            else:
                await asyncio.sleep(0.1)
        while True:
            type_, _ = await self.request(which, "CreateQueue", params)
            if type_ == "ok":
                return
            await asyncio.sleep(0.1)

    def start(self) -> list[asyncio.Task[Any]]:
        sc = self.world.scenario
        spawn = self.world.sim.spawn
        for which in _QUEUES:
            fifo = which == "fifo"
            for i in range(sc.producers):
                process = self.world.recorder.new_process()
                self.tasks.append(spawn(self._fifo_producer(process, f"g{i}") if fifo
                                        else self._producer(process)))
            for _ in range(sc.consumers):
                process = self.world.recorder.new_process()
                self.tasks.append(spawn(self._consumer(which, process)))
        return self.tasks

    def stop(self) -> None:
        self._stopped = True

    def caught_up(self) -> bool:
        w = self.world
        return all(not (w.acked[p] - w.deleted[p]) and self.empty_receives[p] >= 2
                   for p in _QUEUES)

    async def op(self, process: int, which: str, f: str, value: dict[str, Any],
                 action: str, params: dict[str, Any],
                 result: Callable[[dict[str, Any]], dict[str, Any]]
                 ) -> tuple[str, dict[str, Any]]:
        queue = _QUEUES[which]
        value = {"queue": queue, "fifo": queue.endswith(".fifo"), **value}
        recorder = self.world.recorder
        pending = recorder.invoke(process, f, value, None)
        type_, response = await self.request(which, action, params)
        recorder.complete(pending, type_, result(response) if type_ == "ok" else response)
        return type_, response

    async def _pace(self, type_: str) -> None:
        if type_ == "ok":
            await asyncio.sleep(self.rng.randint(*_SEND_EVERY_MS) / 1000)
        else:
            await asyncio.sleep(_BACKOFF_MS / 1000)

    def _sent(self, which: str, key: str) -> None:
        self.world.acked[which].add(key)
        if self.world.healed:
            self.world.ok_sends_after_heal += 1

    async def _producer(self, process: int) -> None:
        counter = 0
        while self.world.producing:
            key = f"{process}-{counter}"
            counter += 1
            body = make_body(key)
            type_, _ = await self.op(
                process, "std", "send", {"id": key, "body": body, "attempt": 0},
                "SendMessage", {"QueueUrl": self.url("std"), "MessageBody": body},
                _send_result)
            if type_ == "ok":
                self._sent("std", key)
            await self._pace(type_)

    async def _fifo_producer(self, process: int, group: str) -> None:
        seq = 0
        while self.world.producing:
            key = f"{group}:{seq}"
            body = make_body(key)
            attempt = 0
            while True:
                type_, _ = await self.op(
                    process, "fifo", "send", {"id": key, "body": body, "group": group,
                                              "dedup": key, "attempt": attempt},
                    "SendMessage", {"QueueUrl": self.url("fifo"), "MessageBody": body,
                                    "MessageGroupId": group,
                                    "MessageDeduplicationId": key}, _send_result)
                attempt += 1
                if type_ == "ok":
                    self._sent("fifo", key)
                    break
                if not self.world.producing and type_ == "fail":
                    return  # surely not sent, and no more sends wanted
                await self._pace(type_)
            seq += 1
            await self._pace("ok")

    async def _consumer(self, which: str, process: int) -> None:
        fifo = which == "fifo"
        attempt_id: str | None = None
        retries = 0
        while not self._stopped:
            if fifo and attempt_id is None:
                attempt_id = f"{process}-{self.rng.getrandbits(64):016x}"
            params: dict[str, Any] = {
                "QueueUrl": self.url(which), "MaxNumberOfMessages": _RECEIVE_MAX,
                "WaitTimeSeconds": _WAIT_S, "VisibilityTimeout": _VISIBILITY_S,
                "MessageSystemAttributeNames": ["MessageGroupId", "SequenceNumber",
                                                "ApproximateReceiveCount"]}
            if attempt_id is not None:
                params["ReceiveRequestAttemptId"] = attempt_id
            type_, response = await self.op(
                process, which, "receive",
                {"max": _RECEIVE_MAX, "wait_s": _WAIT_S, "vt_s": _VISIBILITY_S,
                 "attempt_id": attempt_id}, "ReceiveMessage", params, _receive_result)
            if type_ != "ok":
                retries += 1
                if type_ == "fail" or retries > _RECEIVE_RETRIES_MAX:
                    attempt_id, retries = None, 0
                await asyncio.sleep(_BACKOFF_MS / 1000)
                continue
            attempt_id, retries = None, 0
            messages = list(response.get("Messages", []))
            if self.world.draining:
                self.empty_receives[which] = 0 if messages else \
                    self.empty_receives[which] + 1
            delete, release = self._decide(messages, fifo)
            await self._batch(process, which, "delete", delete)
            await self._batch(process, which, "change_visibility", release)

    def _decide(self, messages: list[dict[str, Any]], fifo: bool
                ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        if self.world.draining:
            return messages, []
        return decide_received(messages, fifo, self.rng, _CRASH_FRACTION,
                               _RELEASE_FRACTION)

    async def _batch(self, process: int, which: str, f: str,
                     messages: list[dict[str, Any]]) -> None:
        if not messages:
            return
        entries = [{"id": str(m.get("Body", "")).rpartition("|")[0],
                    "handle": m["ReceiptHandle"]} for m in messages]
        wire: list[dict[str, Any]] = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                                      for i, m in enumerate(messages)]
        value: dict[str, Any] = {"entries": entries}
        if f == "change_visibility":
            value["vt_s"] = 0
            for entry in wire:
                entry["VisibilityTimeout"] = 0
        action = "DeleteMessageBatch" if f == "delete" else "ChangeMessageVisibilityBatch"

        def result(response: dict[str, Any]) -> dict[str, Any]:
            return batch_outcome(entries, response)

        type_, response = await self.op(process, which, f, value, action,
                                        {"QueueUrl": self.url(which), "Entries": wire},
                                        result)
        if f != "delete":
            return
        done = self.world.deleted[which]
        if type_ == "ok":
            for ok in response.get("Successful", []):
                done.add(entries[int(ok["Id"])]["id"])
            for bad in response.get("Failed", []):
                if not bad.get("SenderFault"):
                    done.add(entries[int(bad["Id"])]["id"])  # may have been deleted
        elif type_ == "info":
            done.update(e["id"] for e in entries)  # may have been deleted


def _send_result(response: dict[str, Any]) -> dict[str, Any]:
    return {"message_id": response.get("MessageId"), "md5": response.get("MD5OfMessageBody"),
            "sequence_number": response.get("SequenceNumber")}


def _receive_result(response: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{
        "body": m.get("Body"), "md5": m.get("MD5OfBody"), "message_id": m.get("MessageId"),
        "handle": m.get("ReceiptHandle"),
        "group": m.get("Attributes", {}).get("MessageGroupId"),
        "sequence_number": m.get("Attributes", {}).get("SequenceNumber"),
        "receive_count": m.get("Attributes", {}).get("ApproximateReceiveCount"),
    } for m in response.get("Messages", [])]}


class _TraceHandler(logging.Handler):
    """Warnings of the real parts (who leads, who stepped down) into the trace."""

    def __init__(self, world: _World) -> None:
        super().__init__(logging.WARNING)
        self._world = world

    def emit(self, record: logging.LogRecord) -> None:
        self._world.log(f"[{record.name.rpartition('.')[2]}] {record.getMessage()}")


def run_cluster_seed(seed: int, scenario: ClusterScenario | None = None, *,
                     verbose: bool = False) -> dict[str, Any]:
    """Run one seed; raises ``SimulationFailure``. Returns counts and the trace digest."""
    world = _World(seed, scenario or ClusterScenario())
    logger = logging.getLogger("ferrymq")
    handler = _TraceHandler(world)
    saved_propagate = logger.propagate
    logger.addHandler(handler)
    # The run's warnings belong to its trace, not to the test's log capture (thousands
    # of runs would fill it).
    logger.propagate = False
    try:
        main = world._main = world.loop.create_task(world.main(), context=world.sim.context)
        with contextlib.suppress(asyncio.CancelledError):
            world.loop.run_until_complete(main)
        if world.failure is None:
            counts = world.check_end()
    except Exception as exc:  # noqa: BLE001 - an invariant's InternalError, or a bug
        world.fail(f"{type(exc).__name__}: {exc}", exc)
    finally:
        world.ending = True
        try:
            world.loop.finish()
        finally:
            logger.removeHandler(handler)
            logger.propagate = saved_propagate
            world.loop.close()
    if world.failure is not None:
        raise world.report(world.failure) from world._failure_cause
    if verbose:
        print("\n".join(world.trace))
    return counts


async def _first_partition(placed: Coroutine[Any, Any, QueueEntry]) -> str:
    """The replica set of a placed queue (the simulation's queues have one partition)."""
    entry = await placed
    assert entry.partition is not None
    return entry.partition
