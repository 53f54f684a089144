"""``ferrymq node``: one cluster node, wiring the parts together.

A node serves the whole SQS API and hosts a replica of every replica set that etcd
lists it in. Each queue lives on its own replica set (``partitions/<id>``): a
``ReplicatedStore`` (its own SQLite file under ``<data-dir>/partitions/``), the core
``Broker`` holding that queue, and the ``QueueService`` executing its requests. Besides
those the node keeps:

- membership: its addresses under ``nodes/<id>`` on an etcd lease it keeps alive; when
  the lease is lost (etcd unreachable for its TTL) it registers again on a new one;
- a ``Controller`` (every node runs one; the one elected through etcd acts);
- watches of the replica sets' state and of the queue catalog (``_catalog``): a state
  makes its local replica lead, follow, or learn a new in-sync set; the catalog says
  which replica set holds which queue, so routing and GetQueueUrl/ListQueues cost no
  etcd round trip;
- placement: a CreateQueue for a name the catalog does not hold yet picks the
  replicas (the least loaded live nodes) and writes the catalog entry and the new
  replica set in one etcd transaction; the controller then elects its leader;
- the replication ``Transport`` (one connection per pair of nodes carries all of their
  replica sets), and a tick for heartbeats and lag;
- routing: a request for a queue whose replica set this node does not lead is
  forwarded, as received, to that set's leader (``Proxy``); one already forwarded is
  refused with a retriable 503 instead of forwarded again. ``GET /_ferry/status``
  answers the node's view as JSON (for ``ferrymq cluster status`` and tests);
- after a committed change to a queue's definition, its leader writes the definition
  into the catalog before answering, and deletes the replica set with the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, urlsplit

from ferrymq._api import CallContext
from ferrymq._cluster._calls import (
    CALL_PATH,
    WAIT_ACTION,
    CallDecodeError,
    PartitionCall,
    decode_answer,
    decode_call,
    encode_answer,
    encode_call,
)
from ferrymq._cluster._catalog import (
    CREATING,
    DELETED,
    LIVE,
    Catalog,
    QueueEntry,
    decode_entry,
    encode_entry,
    live_entry,
    tombstone,
)
from ferrymq._cluster._controller import FENCE_WAIT_S, Controller, ControllerSettings
from ferrymq._cluster._layout import (
    Layout,
    NodeInfo,
    decode_node,
    decode_state,
    encode_node,
    encode_state,
)
from ferrymq._cluster._partition import SQLITE_DISK, ReplicaDisk, ReplicatedStore
from ferrymq._cluster._partitioned import PartitionedQueues, partition_index
from ferrymq._cluster._proxy import FORWARDED_HEADER, Proxy, ProxyError
from ferrymq._cluster._transport import AddressOf, FrameHandler, Transport
from ferrymq._coordination import (
    CoordinationError,
    Coordinator,
    Delete,
    Event,
    EventKind,
    KeyValue,
    Lease,
    Put,
)
from ferrymq._core import Export
from ferrymq._core import _attributes as attrs
from ferrymq._core._broker import Broker, Replication, RequestInfo
from ferrymq._core._control import PARTITIONS_MAX
from ferrymq._core._effects import EffectDecodeError, MessageStored, decode_effects, encode_effects
from ferrymq._core._errors import SqsError, invalid_parameter
from ferrymq._core._records import Entropy, MessageRecord
from ferrymq._gateway import Gateway, Request, Response, close_server, start_gateway
from ferrymq._gateway._http import HttpLimits
from ferrymq._replication._election import PartitionState
from ferrymq._replication._messages import FenceReply
from ferrymq._replication._replica import ChangeIsr, Role
from ferrymq._service import QueueService, SystemEntropy, restore_into, wall_clock_ms

__all__ = ["STATUS_PATH", "FrameTransport", "Node", "NodeConfig", "run_node"]

log = logging.getLogger("ferrymq.cluster.node")

STATUS_PATH = "/_ferry/status"
# Where a replica set's leader sends copies of messages moving to a queue on another
# replica set (a dead-letter redrive, a move task): to that set's leader, which stores
# them and answers 200 once they are committed there.
IMPORT_PATH = "/_ferry/import"
# Copies out of one replica set in flight at once. More are left to their leases: they
# lapse and the messages are moved again (docs/architecture.md).
_EXPORTS_IN_FLIGHT_MAX = 8
PARTITIONS_DIR = "partitions"
# Replication heartbeats and lag checks run this often (the replica's HEARTBEAT_MS is
# 500 ms; ticking faster makes resends and in-sync changes prompt).
_TICK_S = 0.1
# check_leadership's wait before a replica named leader of an epoch it does not lead
# resigns: longer than an election takes once it has fenced (FENCE_WAIT_S for the
# answers, then one etcd transaction), so it resigns only when nobody is electing.
_RESIGN_GRACE_MS = int(FENCE_WAIT_S * 1000) * 4
# A request reaching a node while no leader is known (an election is under way, or the
# queue was just placed) waits this long for one before it is refused with a retriable
# 503: an election takes about the lease TTL plus a second, so most requests of a
# failover are served, not refused.
_LEADER_WAIT_S = 4.0
# On the answer to a partition call that the node asked does not lead that partition
# (it ran nothing): the caller asks again, at the leader etcd names by then.
_NOT_LEADER_HEADER = "x-ferry-not-leader"
# On every answer to a partition call: the requests in flight at that partition's
# leader, the load the caller balances sends by (``_partitioned``). A report older than
# _LOAD_STALE_S counts as unknown, so a partition once busy is tried again.
_LOAD_HEADER = "x-ferry-load"
_LOAD_STALE_S = 1.0
# A forward whose connection was refused is tried again after this long.
_CONNECT_RETRY_S = 0.1
# How often the node re-reads the replica sets' state even without watch events: a
# safety net for a watch that broke and is being re-established.
_STATE_POLL_S = 1.0
# Registering again after the node's lease was lost: retried this often.
_REREGISTER_S = 0.5
# A graceful stop answers requests in flight for at most this long.
_DRAIN_TIMEOUT_S = 10.0
# Frames for a replica set this node has not heard of yet (the controller fences a
# set's replicas right after it is placed, maybe before this node's watch saw it): kept
# until the set's state is read, at most this many per set (the replica protocol resends
# what is dropped).
_EARLY_FRAMES_MAX = 64
# A catalog write that lost a race (another writer changed the key) is retried this
# many times against the newer value before the request is refused as retriable.
_CATALOG_RETRIES_MAX = 5
# Actions whose committed change to a queue's definition the leader copies into the
# catalog before answering (DeleteQueue retires the entry instead).
_DEFINITION_ACTIONS = frozenset({
    "CreateQueue", "SetQueueAttributes", "TagQueue", "UntagQueue", "AddPermission",
    "RemovePermission",
})
# Replicas a queue may ask for at most (as the single node's core checks them).
_REPLICAS_MAX = 7
_TAG_REPLICAS = "ferry:replicas"
_TAG_MIN_ISR = "ferry:min-insync-replicas"
_TAG_DURABILITY = "ferry:durability"
_TAG_PARTITIONS = "ferry:partitions"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: str
    host: str
    port: int
    data_dir: Path
    etcd_endpoints: tuple[str, ...]  # host:port
    cluster: str
    advertise_url: str | None
    # Defaults for queues created without the ferry: tags (capped by the live nodes).
    replicas: int
    min_isr: int
    sync: bool
    lease_ttl_s: int
    free_bytes_min: int
    account_id: str
    region: str
    http_limits: HttpLimits
    # Where the replication transport listens (0: any free port), and the address other
    # nodes are told to reach it at (default: where it listens). Apart, they let a test
    # put a fault-injecting proxy between nodes.
    replication_port: int = 0
    replication_advertise: tuple[str, int] | None = None
    # Tests only: the store notes what is fsynced so a test can cut the power
    # (``ferrymq._storage._sqlite.simulate_power_loss``).
    power_loss_seam: bool = False
    # Same as the single node's: how long a deleted queue's name stays refused.
    recreate_delay_ms: int = 60_000
    # Partitions of a queue created without the ferry:partitions tag.
    partitions: int = 1


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class FrameTransport(Protocol):
    """What a node's replication frames travel by: the real ``Transport`` (sockets), or
    the simulated network of ``ferrymq._sim``."""

    async def listen(self, host: str, port: int) -> tuple[str, int]: ...
    def send(self, peer: str, frame: object) -> None: ...
    def backlog_bytes(self, peer: str) -> int: ...
    def reset(self, peer: str) -> None: ...
    async def close(self) -> None: ...


def _target_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


def _queue_of(action: str, params: dict[str, Any]) -> str | None:
    """The queue a request addresses, or None (the catalog, or no queue at all)."""
    if action == "CreateQueue":
        name = params.get("QueueName")
        return name if isinstance(name, str) and name else None
    if action in ("StartMessageMoveTask", "ListMessageMoveTasks"):
        arn = params.get("SourceArn")
        return attrs.queue_name_from_arn(arn) if isinstance(arn, str) else None
    if action == "CancelMessageMoveTask":
        try:
            arn = Broker.task_handle_source(params.get("TaskHandle"))
        except SqsError:
            return None  # the core answers the exact error
        return attrs.queue_name_from_arn(arn)
    url = params.get("QueueUrl")
    if not isinstance(url, str):
        return None
    # As the core resolves it: a full URL names the queue in its last path segment.
    path = urlsplit(url).path if "://" in url else url
    return path.rstrip("/").rsplit("/", 1)[-1] or None


def _replication_of(tags: Any, live: int, cfg: NodeConfig) -> Replication:
    """How a new queue is to be replicated: its ferry: tags, else the node's defaults,
    within the live nodes. Malformed tags are left to the core's checks (the same texts
    as the single node's); what only a cluster can refuse is refused here."""
    tags = tags if isinstance(tags, dict) else {}
    limit = min(_REPLICAS_MAX, live)

    def number(key: str, top: int) -> int | None:
        value = tags.get(key)
        if value is None:
            return None
        if not (isinstance(value, str) and value.isascii() and value.isdigit()
                and 1 <= int(value) <= top):
            raise invalid_parameter(
                f"Value {value} for tag {key} is invalid. Allowed: an integer from 1 to "
                f"{top}" + (f" (the cluster has {live} live nodes)." if top == live
                             else "."))
        return int(value)

    replicas = number(_TAG_REPLICAS, limit)
    if replicas is None:
        replicas = min(cfg.replicas, live)
    min_isr = number(_TAG_MIN_ISR, replicas)
    if min_isr is None:
        min_isr = min(cfg.min_isr, replicas) if replicas >= 3 else 1
    durability = tags.get(_TAG_DURABILITY)
    if durability is not None and durability not in ("sync", "async"):
        raise invalid_parameter(
            f"Value {durability} for tag {_TAG_DURABILITY} is invalid. Allowed: sync, "
            "async.")
    sync = cfg.sync if durability is None else durability == "sync"
    partitions = number(_TAG_PARTITIONS, PARTITIONS_MAX)
    if partitions is None:
        partitions = cfg.partitions
    return Replication(replicas=replicas, min_isr=min_isr, sync=sync, cluster=True,
                       partitions=partitions)


def _check_partitions_tag(tags: Any, entry: QueueEntry) -> None:
    """CreateQueue of an existing queue: a ferry:partitions tag must say what it has
    (its replica sets' cores cannot tell: each holds one partition)."""
    value = tags.get(_TAG_PARTITIONS) if isinstance(tags, dict) else None
    count = len(entry.partitions)
    if isinstance(value, str) and value.isascii() and value.isdigit() \
            and 1 <= int(value) <= PARTITIONS_MAX and int(value) != count:
        raise invalid_parameter(
            f"Value {value} for tag {_TAG_PARTITIONS} is not available: the queue has "
            f"{count} partition{'s' if count != 1 else ''}.")


class _Host:
    """This node's replica of one replica set: its store, core and service, and what
    etcd last said of the set."""

    def __init__(self, node: Node, partition: str, state: PartitionState) -> None:
        self.node = node
        self.partition = partition
        cfg = node.cfg
        path = node.partition_path(partition)
        self.store = node.store_factory(
            partition=partition, node=cfg.node_id, path=path,
            free_bytes_min=cfg.free_bytes_min, send=node.send,
            change_isr=self._on_change_isr, clock_ms=node.clock_ms,
            on_fatal=node.on_fatal, power_loss_seam=cfg.power_loss_seam, disk=node.disk,
            backlog_bytes=node.transport.backlog_bytes)
        replication = Replication(replicas=len(state.replicas), min_isr=state.min_isr,
                                  sync=state.sync, cluster=True)

        def make_broker() -> Broker:
            return node.make_broker(replication=replication, directory=node.catalog)

        broker = make_broker()
        restore_into(broker, self.store.load())
        self.service = QueueService(broker, self.store, clock_ms=node.wall_ms,
                                    entropy=node.new_entropy(), broker_factory=make_broker,
                                    write_gate=self._write_refusal)
        self.service.on_fatal = node.on_fatal
        self.service.on_exports = self._on_exports
        self.store.attach(self.service, make_broker)
        self.state: PartitionState | None = None
        self.revision = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._exports_in_flight = 0
        # The revision of the state this replica last resigned from, and since when
        # (node clock) etcd has named it leader of an epoch it does not lead
        # (check_leadership).
        self._resigned_at = -1
        self._not_leading_since_ms: int | None = None
        # Requests being run on this replica set as its leader, from any node: the load
        # a queue of several partitions balances its sends by.
        self.in_flight = 0
        self.closed = False

    def start(self) -> None:
        self.service.start()

    async def close(self) -> None:
        self.closed = True
        self.service.begin_shutdown()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.service.close()

    def leads(self) -> bool:
        return self.store.replica.role is Role.LEADER

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(self.node.start_guarded(coro, name))

    def _write_refusal(self) -> str | None:
        lease = self.node.lease
        state = self.state
        if state is not None and not state.sync and (lease is None or lease.lost):
            # Cut off from etcd for its lease's TTL: another node may lead by now, and an
            # async replica set would acknowledge writes its successor never sees. (A
            # sync one cannot: its in-sync followers promised the successor's epoch. So
            # it goes on serving while etcd itself is electing a leader, which can take
            # longer than a lease's TTL.)
            return "This node lost its membership in the cluster; retry."
        return self.store.refusal()

    def on_state(self, state: PartitionState, revision: int) -> None:
        if revision < self.revision:
            return  # an older state than one already acted on
        previous = self.state
        self.state, self.revision = state, revision
        r = self.store.replica
        now = self.node.clock_ms()
        me = self.node.cfg.node_id
        if previous is None and state.epoch > 0 and r.position().seq == 0:
            # The first word from etcd, and this store is empty while the replica set
            # has led an epoch: this node lost its disk (or joins late). Not electable
            # until it holds a copy of the leader's log.
            log.warning("%s starts %s with an empty store at epoch %d: it waits for a "
                        "copy from the leader before it may lead", me, self.partition,
                        state.epoch)
            r.needs_copy = True
        if state.leader == me:
            if r.role is Role.LEADER and r.epoch == state.epoch:
                if frozenset(state.isr) != r.isr:
                    self.store.run(r.isr_changed(state.isr, now))
            elif r.may_lead(state.epoch):
                log.warning("%s leads %s in epoch %d (in sync: %s)", me, self.partition,
                            state.epoch, ", ".join(state.isr))
                self.store.run(r.lead(state.epoch, replicas=state.replicas, isr=state.isr,
                                      min_isr=state.min_isr, sync=state.sync, now_ms=now))
                self._spawn(self.node.publish_all(self), "catalog catch-up")
            elif not (r.role is Role.LEADER and r.epoch > state.epoch):
                self._spawn(self._resign(state, revision), "resignation")
        elif state.leader is not None:
            self.store.run(r.follow(state.epoch, state.leader))

    def check_leadership(self, now_ms: int) -> None:
        """On every tick: etcd names this replica leader of an epoch it no longer leads
        (it stepped down when a replica promised a later epoch, and the controller that
        fenced that epoch was replaced before it elected anyone: its successor sees a
        live leader and elects nobody). Resign, as ``on_state`` does, so the controller
        elects a later epoch. Found by the cluster simulation; tested on its own in
        tests/cluster/test_node_leadership.py.

        Only once that has lasted ``_RESIGN_GRACE_MS``: right after a fence the
        controller that sent it is still electing, and a resignation written first
        makes its election's transaction fail, and a second election follow (seen
        with leader moves, 8 at a time: each such one held every other move back for
        LEADER_SETTLE_S)."""
        state, r = self.state, self.store.replica
        if state is None or state.leader != self.node.cfg.node_id or self.closed \
                or (r.role is Role.LEADER and r.epoch >= state.epoch):
            # Not named, or leading it (or a later epoch etcd's watch has not shown yet).
            self._not_leading_since_ms = None
            return
        if self._not_leading_since_ms is None:
            self._not_leading_since_ms = now_ms
        if now_ms - self._not_leading_since_ms < _RESIGN_GRACE_MS:
            return
        if self._resigned_at == self.revision:
            return
        self._resigned_at = self.revision
        self._spawn(self._resign(state, self.revision), "resignation")

    async def _resign(self, state: PartitionState, revision: int) -> None:
        """Named leader of an epoch this replica may not lead (it restarted since it
        promised it): clear the leader so the controller elects a later epoch."""
        log.warning("%s may not lead epoch %d of %s; resigning", self.node.cfg.node_id,
                    state.epoch, self.partition)
        key = self.node.layout.partition(self.partition)
        with contextlib.suppress(CoordinationError):
            await self.node.coordinator.transact(
                {key: revision}, [Put(key, encode_state(replace(state, leader=None)))])
            self.node.controller.poke()

    def _on_change_isr(self, action: ChangeIsr) -> None:
        self._spawn(self._change_isr(action), "in-sync change")

    async def _change_isr(self, action: ChangeIsr) -> None:
        r = self.store.replica
        key = self.node.layout.partition(self.partition)
        coord = self.node.coordinator
        try:
            kv = await coord.get(key)
            state = decode_state(kv.value) if kv is not None else None
            if (kv is None or state is None or state.epoch != action.epoch
                    or state.leader != self.node.cfg.node_id):
                self.store.run(r.isr_change_failed())
                return
            new = state.with_isr(action.isr)
            result = await coord.transact({key: kv.mod_revision},
                                          [Put(key, encode_state(new))])
        except CoordinationError as exc:
            log.info("changing the in-sync set of %s failed: %r", self.partition, exc)
            self.store.run(r.isr_change_failed())
            return
        if not result.succeeded:
            self.store.run(r.isr_change_failed())
            return
        log.warning("%s: in sync now %s", self.partition, ", ".join(new.isr))
        if r.role is Role.LEADER and r.epoch == action.epoch:
            self.node.on_state(self.partition, new, result.revision)

    # ---- moving messages to another replica set ---------------------------------------

    def _on_exports(self, exports: list[Export]) -> None:
        """Messages the core leased for a move to a queue this replica set does not
        hold: copy each batch to the destination's leader, then remove the originals.
        A copy that fails is left to its lease, which lapses; the next receive (or the
        move task's next step) moves the message again."""
        batches: dict[tuple[str, bool], list[Export]] = {}
        for export in exports:
            key = (export.destination, export.source_arn is not None)
            batches.setdefault(key, []).append(export)
        for (destination, redrive), batch in batches.items():
            if self._exports_in_flight >= _EXPORTS_IN_FLIGHT_MAX:
                log.info("%s: %d messages for %s wait for their leases to lapse",
                         self.partition, len(batch), destination)
                continue
            self._exports_in_flight += 1
            self._spawn(self._export(destination, redrive, batch), "a copy out")

    async def _export(self, destination: str, redrive: bool, batch: list[Export]) -> None:
        try:
            records = [e.record for e in batch]
            missing = [i for i, r in enumerate(records) if r.body is None]
            if missing:
                bodies = await self.service.read_bodies(
                    [(records[i].queue, records[i].message_id) for i in missing])
                for i, body in zip(missing, bodies, strict=True):
                    if body is None:
                        log.warning("%s: no stored body for %s/%s; not moved",
                                    self.partition, records[i].queue, records[i].message_id)
                        return
                    records[i] = replace(records[i], body=body)
            if not await self.node.import_into(destination, redrive, records):
                return

            def complete(broker: Broker, now_ms: int, entropy: Any) -> list[Any]:
                del entropy
                return [effect for e in batch for effect in
                        broker.complete_export(e.source_queue, e.message_id, e.token,
                                               now_ms)]

            await self.service.run_internal(complete)
        except (SqsError, CoordinationError, ProxyError) as exc:
            log.info("%s: moving %d messages to %s failed (%r); their leases lapse and "
                     "they are moved again", self.partition, len(batch), destination, exc)
        finally:
            self._exports_in_flight -= 1

    def status(self, queue: str | None) -> dict[str, Any]:
        r = self.store.replica
        state = self.state
        acked = r.follower_acked()
        return {
            "queue": queue, "partition": self.partition, "role": r.role.value,
            "leader": state.leader if state else None,
            "epoch": state.epoch if state else 0,
            "replicas": list(state.replicas) if state else [],
            "isr": list(state.isr) if state else [],
            "min_isr": state.min_isr if state else None,
            "sync": state.sync if state else None,
            "commit_seq": r.commit_seq, "position": [r.position().epoch, r.position().seq],
            "followers": acked,
            # Records behind the leader's durable log (not its commit point, which
            # stands still when nobody acknowledges).
            "lag": {n: max(0, r.position().seq - seq) for n, seq in acked.items()},
            "writable": r.writable,
        }


class Node:
    """See the module docstring. Implements ``ferrymq._api.Service`` for the gateway.

    The keyword arguments are seams for the simulation (``ferrymq._sim``), which runs
    nodes on virtual time; each defaults to what a real node uses: ``clock_ms`` is a
    monotonic clock (replication's heartbeats and lag), ``wall_ms`` the wall clock (the
    core's deadlines), ``entropy`` makes each core's randomness, ``disk`` holds the
    replica sets' stores, ``transport(on_frame, address_of)`` makes what frames travel
    by, ``store_factory`` makes a replica set's store (``ReplicatedStore``'s keywords),
    and ``token_hex`` names new replica sets."""

    def __init__(self, cfg: NodeConfig, coordinator: Coordinator,
                 make_broker: Callable[..., Broker], on_fatal: Callable[[BaseException], None],
                 *, clock_ms: Callable[[], int] = _monotonic_ms,
                 wall_ms: Callable[[], int] = wall_clock_ms,
                 entropy: Callable[[], Entropy] = SystemEntropy,
                 disk: ReplicaDisk = SQLITE_DISK,
                 transport: Callable[[FrameHandler, AddressOf], FrameTransport] | None = None,
                 store_factory: Callable[..., ReplicatedStore] = ReplicatedStore,
                 token_hex: Callable[[int], str] = secrets.token_hex) -> None:
        self.cfg = cfg
        self.clock_ms = clock_ms
        self.wall_ms = wall_ms
        self.new_entropy = entropy
        self.disk = disk
        self.store_factory = store_factory
        self._token_hex = token_hex
        self.coordinator = coordinator
        self.layout = Layout(cfg.cluster)
        self.make_broker = make_broker
        self.on_fatal = on_fatal
        self._loop = asyncio.get_running_loop()
        self._nodes: dict[str, NodeInfo] = {}
        self.catalog = Catalog(cfg.region, cfg.account_id)
        # Every replica set's state (routing needs those this node is no replica of).
        self._states: dict[str, tuple[PartitionState, int]] = {}
        self._hosts: dict[str, _Host] = {}
        self._early: dict[str, list[tuple[str, object]]] = {}
        # Set on any change of states, nodes or catalog: waits for a leader poll it.
        self._changed = asyncio.Event()
        # Per replica set, resolved (and replaced) whenever etcd names a different
        # leader: forwarded requests wait on it beside their answer.
        self._leader_changed: dict[str, asyncio.Future[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.lease: Lease | None = None
        self._url = ""
        self._replication: tuple[str, int] = ("", 0)
        self._entropy = entropy()
        self._closing = False
        self.transport: FrameTransport
        if transport is None:
            self.transport = Transport(node=cfg.node_id, cluster=cfg.cluster,
                                       on_frame=self._on_frame, address_of=self._address_of)
        else:
            self.transport = transport(self._on_frame, self._address_of)
        self.controller = Controller(
            coordinator, self.layout, cfg.node_id,
            ControllerSettings(lease_ttl_s=cfg.lease_ttl_s), send_fence=self.send)
        self.proxy = Proxy()
        self.partitioned = PartitionedQueues(self)
        # partition -> (load its leader last reported, when: loop time).
        self._loads: dict[str, tuple[int, float]] = {}
        self.gateway = Gateway(self, public_url=cfg.advertise_url,
                               account_id=cfg.account_id, region=cfg.region,
                               route=self._route,
                               pages={STATUS_PATH: self._status_page,
                                      CALL_PATH: self._call_page,
                                      IMPORT_PATH: self._import_page})

    def partition_path(self, partition: str) -> Path:
        return self.cfg.data_dir / PARTITIONS_DIR / f"{partition}.sqlite3"

    # ---- start and stop ---------------------------------------------------------

    async def start(self) -> asyncio.Server:
        server = await self.bind()
        await self.start_loops()
        return server

    async def bind(self) -> asyncio.Server:
        """Listen: the replication transport, then the gateway."""
        listening = await self.transport.listen(self.cfg.host, self.cfg.replication_port)
        self._replication = self.cfg.replication_advertise or listening
        server = await start_gateway(self, self.cfg.host, self.cfg.port,
                                     http_limits=self.cfg.http_limits, gateway=self.gateway)
        host, port = server.sockets[0].getsockname()[:2]
        self._url = self.cfg.advertise_url or f"http://{host}:{port}"
        return server

    async def start_loops(self) -> None:
        """Join the cluster (register on a lease) and start the node's loops. ``start``
        runs this after ``bind``; the simulation, which has no sockets, runs only this
        (its clients call ``call``)."""
        await self._register()
        loops = {"controller": self.controller.run(), "registration": self._keep_registered(),
                 "node watch": self._watch_nodes(), "state watch": self._watch_states(),
                 "catalog watch": self._watch_catalog(), "state poll": self._poll_states(),
                 "tick": self._tick()}
        for name, coro in loops.items():
            self._tasks.append(self.start_guarded(coro, name))

    async def stop(self, server: asyncio.Server) -> None:
        self._closing = True
        for host in self._hosts.values():
            host.service.begin_shutdown()
        await close_server(server, drain_timeout_s=_DRAIN_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Leaving on purpose: revoking the lease removes this node at once, so new
        # leaders are elected without waiting for the TTL.
        with contextlib.suppress(CoordinationError):
            await self.coordinator.close(revoke_leases=True)
        await self.close_hosts()
        await self.transport.close()
        await self.proxy.close()

    async def close_hosts(self) -> None:
        hosts, self._hosts = list(self._hosts.values()), {}
        for host in hosts:
            await host.close()

    async def _register(self) -> None:
        lease = await self.coordinator.grant_lease(self.cfg.lease_ttl_s)
        info = NodeInfo(self.cfg.node_id, self._url, self._replication, os.getpid())
        await self.coordinator.put(self.layout.node(self.cfg.node_id), encode_node(info),
                                   lease=lease)
        self.lease = lease
        self._nodes[self.cfg.node_id] = info

    async def _keep_registered(self) -> None:
        while True:
            lease = self.lease
            if lease is not None:
                lost = await lease.wait_lost()
                log.warning("%s lost its etcd lease (%s); registering again",
                            self.cfg.node_id, lost)
                for host in self._hosts.values():
                    if host.state is not None and not host.state.sync:
                        # Acknowledged on the leader's own fsync, they would be lost if
                        # a successor leads: answer them now, as uncertain.
                        host.store.abandon_pending("this node lost its membership in "
                                                   "the cluster")
            try:
                await self._register()
            except CoordinationError as exc:
                log.info("registering %s failed: %r", self.cfg.node_id, exc)
                self.lease = None
                await asyncio.sleep(_REREGISTER_S)

    async def guarded(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A background loop that ends with an unexpected error is a bug: say so and
        stop the node, rather than serve on with part of it dead."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("bug: %s of node %s failed", name, self.cfg.node_id)
            self.on_fatal(exc)

    def start_guarded(self, coro: Coroutine[Any, Any, None], name: str
                      ) -> asyncio.Task[None]:
        """``coro`` run by ``guarded`` in a task of its own."""
        task = self._loop.create_task(self.guarded(coro, name))
        # A task cancelled before its first step (the node closing right after it
        # was spawned) never starts ``coro``: close it, or its garbage collection
        # warns of a coroutine never awaited. Closing a finished one does nothing.
        task.add_done_callback(lambda _: coro.close())
        return task

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(self.start_guarded(coro, name))

    # ---- what etcd says ---------------------------------------------------------

    async def _watch(self, prefix: bytes, what: str,
                     on_snapshot: Callable[[dict[str, KeyValue]], None],
                     on_event: Callable[[str, Event], None]) -> None:
        """Follow ``prefix``: its whole content first (``on_snapshot``, name -> key),
        then every change after it (``on_event``), from scratch again whenever the
        watch breaks (etcd unreachable, compacted)."""
        while True:
            try:
                snap = await self.coordinator.get_prefix(prefix)
                on_snapshot({self.layout.name_of(prefix, kv.key): kv for kv in snap.items})
                self._changed.set()
                stream = self.coordinator.watch_prefix(prefix,
                                                       start_revision=snap.revision + 1)
                try:
                    async for event in stream:
                        on_event(self.layout.name_of(prefix, event.key), event)
                        self._changed.set()
                finally:
                    await stream.aclose()
            except CoordinationError as exc:
                log.info("watching %s: %r; again", what, exc)
                await asyncio.sleep(_REREGISTER_S)

    async def _watch_nodes(self) -> None:
        def snapshot(kvs: dict[str, KeyValue]) -> None:
            self._nodes = {name: decode_node(name, kv.value) for name, kv in kvs.items()}

        def changed(name: str, event: Event) -> None:
            old = self._nodes.get(name)
            if event.kind is EventKind.PUT:
                self._nodes[name] = new = decode_node(name, event.value)
                if old is not None and old.pid != new.pid:
                    # A new process (it restarted): frames must not go on down the old
                    # one's connection, whose loss only shows once a write fails.
                    self.transport.reset(name)
            else:
                self._nodes.pop(name, None)
            self.controller.poke()

        await self._watch(self.layout.nodes, "nodes", snapshot, changed)

    async def _watch_catalog(self) -> None:
        def snapshot(kvs: dict[str, KeyValue]) -> None:
            self.catalog.reset((decode_entry(name, kv.value), kv.mod_revision)
                               for name, kv in kvs.items())

        def changed(name: str, event: Event) -> None:
            if event.kind is EventKind.PUT:
                self.catalog.apply(decode_entry(name, event.value), event.revision)
            else:
                self.catalog.forget(name, event.revision)

        await self._watch(self.layout.queues, "the catalog", snapshot, changed)

    async def _watch_states(self) -> None:
        def snapshot(kvs: dict[str, KeyValue]) -> None:
            for name, kv in kvs.items():
                self.on_state(name, decode_state(kv.value), kv.mod_revision)
            for name in set(self._states) - set(kvs):
                self._on_removed(name)

        def changed(name: str, event: Event) -> None:
            if event.kind is EventKind.PUT:
                self.on_state(name, decode_state(event.value), event.revision)
            else:
                self._on_removed(name)
            self.controller.poke()

        await self._watch(self.layout.partitions, "the replica sets", snapshot, changed)

    async def _poll_states(self) -> None:
        """The safety net under the watch (module constants say why)."""
        prefix = self.layout.partitions
        while True:
            await asyncio.sleep(_STATE_POLL_S)
            try:
                snap = await self.coordinator.get_prefix(prefix)
            except CoordinationError:
                continue
            for kv in snap.items:
                name = self.layout.name_of(prefix, kv.key)
                held = self._states.get(name)
                if held is None or kv.mod_revision > held[1]:
                    self.on_state(name, decode_state(kv.value), kv.mod_revision)

    def _signal_leader_change(self, partition: str) -> None:
        fut = self._leader_changed.pop(partition, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def on_state(self, partition: str, state: PartitionState, revision: int) -> None:
        held = self._states.get(partition)
        if held is not None and revision < held[1]:
            return
        if held is None or held[0].leader != state.leader:
            self._signal_leader_change(partition)
        self._states[partition] = (state, revision)
        self._changed.set()
        if self._closing:
            return
        host = self._hosts.get(partition)
        if self.cfg.node_id in state.replicas:
            if host is None:
                host = _Host(self, partition, state)
                self._hosts[partition] = host
                host.start()
                for peer, frame in self._early.pop(partition, []):
                    host.store.on_frame(peer, frame)
            host.on_state(state, revision)
        elif host is not None:
            # No longer a replica of the set: the controller moved it to another node.
            del self._hosts[partition]
            self._spawn(self._retire_host(host, "moved to another node"),
                        "retiring a replica set")

    def _on_removed(self, partition: str) -> None:
        """The replica set's key is gone: its queue was deleted."""
        self._states.pop(partition, None)
        self._signal_leader_change(partition)
        self._changed.set()
        host = self._hosts.pop(partition, None)
        if host is not None:
            self._spawn(self._retire_host(host, "removed with its queue"),
                        "retiring a replica set")

    async def _retire_host(self, host: _Host, why: str) -> None:
        await host.close()
        path = self.partition_path(host.partition)
        for suffix in ("", "-wal", "-shm", ".lock"):
            with contextlib.suppress(FileNotFoundError):
                path.with_name(path.name + suffix).unlink()
        log.info("%s: replica set %s %s", self.cfg.node_id, host.partition, why)

    # ---- replication traffic ------------------------------------------------------

    async def _address_of(self, peer: str) -> tuple[str, int] | None:
        info = self._nodes.get(peer)
        if info is None:
            with contextlib.suppress(CoordinationError):
                kv = await self.coordinator.get(self.layout.node(peer))
                if kv is not None:
                    info = decode_node(peer, kv.value)
        return info.replication if info is not None else None

    def send(self, peer: str, frame: object) -> None:
        if peer == self.cfg.node_id:
            # To this node's own replica or controller: delivered on the next loop turn,
            # as if over the network (no re-entry into the replica mid-action).
            self._loop.call_soon(self._on_frame, peer, frame)
        else:
            self.transport.send(peer, frame)

    def _on_frame(self, peer: str, frame: object) -> None:
        if isinstance(frame, FenceReply):
            self.controller.on_fence_reply(frame)
            return
        partition = getattr(frame, "partition", None)
        if not isinstance(partition, str):
            log.warning("%s: a frame from %s names no replica set: %r", self.cfg.node_id,
                        peer, type(frame).__name__)
            return
        host = self._hosts.get(partition)
        if host is not None:
            host.store.on_frame(peer, frame)
        elif not self._closing and partition not in self._states:
            early = self._early.setdefault(partition, [])
            if len(early) < _EARLY_FRAMES_MAX:
                early.append((peer, frame))
            if len(early) == 1:
                self._spawn(self._read_state(partition), "reading a replica set")

    async def _read_state(self, partition: str) -> None:
        with contextlib.suppress(CoordinationError):
            kv = await self.coordinator.get(self.layout.partition(partition))
            if kv is not None:
                self.on_state(partition, decode_state(kv.value), kv.mod_revision)
        self._early.pop(partition, None)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK_S)
            for host in list(self._hosts.values()):
                host.store.tick()
                host.check_leadership(self.clock_ms())

    # ---- the catalog ----------------------------------------------------------------

    async def _entry(self, name: str) -> tuple[QueueEntry, int] | None:
        """The catalog's entry for ``name``: from the cache, or (on a miss, or while it
        is only being created) read from etcd, so a queue created through another node
        a moment ago is found."""
        held = self.catalog.get(name)
        if held is not None and held[0].status == LIVE and held[0].partition in self._states:
            return held
        # Not live here, or its replica set is gone already (deleted a moment ago, and
        # the catalog's event not watched yet): etcd says.
        try:
            kv = await self.coordinator.get(self.layout.queue(name))
        except CoordinationError as exc:
            if held is not None:
                return held
            raise SqsError("ServiceUnavailable", "The cluster's catalog cannot be read "
                                                 "now; retry.") from exc
        if kv is None:
            return None
        entry = decode_entry(name, kv.value)
        self.catalog.apply(entry, kv.mod_revision)
        return entry, kv.mod_revision

    async def _queue_entry(self, name: str) -> QueueEntry | None:
        """The catalog's entry for ``name`` unless it is a tombstone (``_entry``)."""
        held = await self._entry(name)
        return held[0] if held is not None and held[0].status != DELETED else None

    async def _place(self, name: str, params: dict[str, Any], ctx: CallContext
                     ) -> QueueEntry:
        """The replica sets of a new queue's partitions (or the ones already placed): see
        the module docstring. Raises the queue's CreateQueue error if the core would
        refuse it."""
        for _ in range(_CATALOG_RETRIES_MAX):
            held = await self._entry(name)
            if held is not None and held[0].status != DELETED and held[0].partition:
                _check_partitions_tag(params.get("tags"), held[0])
                return held[0]
            now_ms = self.wall_ms()
            if held is not None and held[0].deleted_ms is not None \
                    and now_ms - held[0].deleted_ms < self.cfg.recreate_delay_ms:
                raise SqsError(
                    "QueueDeletedRecently",
                    "You must wait 60 seconds after deleting a queue before you can create "
                    "another with the same name.")
            try:
                leaving = {self.layout.name_of(self.layout.decommission, kv.key)
                           for kv in (await self.coordinator.get_prefix(
                               self.layout.decommission)).items}
            except CoordinationError as exc:
                raise SqsError("ServiceUnavailable", "The queue could not be placed now; "
                                                     "retry.") from exc
            # Not on a node being decommissioned (its replicas are being moved away).
            alive = sorted(n for n in self._nodes if n not in leaving)
            replication = _replication_of(params.get("tags"), len(alive), self.cfg)
            # The core's own checks (names, attributes, tags, the dead-letter target) on
            # an empty core, so a queue that cannot be created is never placed.
            scratch = self.make_broker(replication=replication, directory=self.catalog)
            scratch.execute("CreateQueue", params, now_ms, self._entropy,
                            RequestInfo(ctx.base_url, ctx.account_id))
            load = {n: 0 for n in alive}
            for state, _ in self._states.values():
                for n in state.replicas:
                    if n in load:
                        load[n] += 2 if n == state.leader else 1
            states: dict[str, PartitionState] = {}
            for _partition in range(replication.partitions):
                # Least loaded first, counting the partitions placed just now: a queue's
                # partitions spread over the nodes, their first replicas (the likely
                # leaders) on different ones.
                replicas = tuple(sorted(alive, key=lambda n: (load[n], n))
                                 [:replication.replicas])
                for rank, n in enumerate(replicas):
                    load[n] += 2 if rank == 0 else 1
                states[f"{name}-{self._token_hex(4)}"] = PartitionState(
                    leader=None, epoch=0, replicas=replicas, isr=replicas,
                    min_isr=replication.min_isr, sync=replication.sync)
            partitions = tuple(states)
            key = self.layout.queue(name)
            entry = QueueEntry(name, CREATING, partitions[0], partitions=partitions)
            compare = {key: held[1] if held is not None else 0}
            compare.update({self.layout.partition(p): 0 for p in partitions})
            try:
                result = await self.coordinator.transact(
                    compare, [Put(key, encode_entry(entry)),
                              *(Put(self.layout.partition(p), encode_state(st))
                                for p, st in states.items())])
            except CoordinationError as exc:
                raise SqsError("ServiceUnavailable", "The queue could not be placed now; "
                                                     "retry.") from exc
            if result.succeeded:
                for p, st in states.items():
                    log.info("placed queue %s on %s (%s)", name, ", ".join(st.replicas), p)
                self.catalog.apply(entry, result.revision)
                for p, st in states.items():
                    self.on_state(p, st, result.revision)
                self.controller.poke()
                return entry
        raise SqsError("ServiceUnavailable", "The queue's placement kept changing; retry.")

    async def publish(self, host: _Host, name: str) -> None:
        """Copy ``name``'s committed definition on ``host`` into the catalog."""
        for _ in range(_CATALOG_RETRIES_MAX):
            record = host.service.broker.queue_record(name)
            if record is None:
                return
            key = self.layout.queue(name)
            kv = await self.coordinator.get(key)
            current = decode_entry(name, kv.value) if kv is not None else None
            if current is not None and host.partition in current.partitions[1:]:
                return  # the first partition's replica set publishes the definition
            if current is not None and current.partition not in (None, host.partition):
                log.warning("%s: queue %s is catalogued on %s, not %s: not publishing",
                            self.cfg.node_id, name, current.partition, host.partition)
                return
            entry = live_entry(name, host.partition, record,
                               current.partitions if current is not None
                               and current.partition == host.partition else ())
            if current == entry:
                return
            result = await self.coordinator.transact(
                {key: kv.mod_revision if kv is not None else 0},
                [Put(key, encode_entry(entry))])
            if result.succeeded:
                self.catalog.apply(entry, result.revision)
                return
        raise CoordinationError(f"the catalog entry of {name} kept changing")

    async def retire(self, host: _Host, name: str) -> None:
        """The queue is deleted on ``host``: tombstone its entry, remove its replica set."""
        for _ in range(_CATALOG_RETRIES_MAX):
            key = self.layout.queue(name)
            kv = await self.coordinator.get(key)
            current = decode_entry(name, kv.value) if kv is not None else None
            if current is None or current.partition != host.partition:
                return
            gone = tombstone(current, self.wall_ms())
            result = await self.coordinator.transact(
                {key: kv.mod_revision if kv is not None else 0},
                [Put(key, encode_entry(gone)),
                 *(Delete(self.layout.partition(p)) for p in current.partitions)])
            if result.succeeded:
                self.catalog.apply(gone, result.revision)
                return
        raise CoordinationError(f"the catalog entry of {name} kept changing")

    async def publish_all(self, host: _Host) -> None:
        """A new leader catches the catalog up with its replica set (a predecessor may
        have died between a commit and its catalog write)."""
        try:
            broker = host.service.broker
            for name in broker.queue_names():
                await self.publish(host, name)
            for queue in [q for p, q in self.catalog.partitions().items()
                          if p == host.partition]:
                held = self.catalog.get(queue)
                if held is not None and held[0].status == LIVE \
                        and not broker.queue_exists(queue):
                    await self.retire(host, queue)
        except CoordinationError as exc:
            log.info("%s: catching the catalog up for %s failed: %r", self.cfg.node_id,
                     host.partition, exc)

    # ---- requests -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        queues = self.catalog.partitions()
        return {
            "node": self.cfg.node_id, "cluster": self.cfg.cluster, "url": self._url,
            "pid": os.getpid(),
            "lease": self.lease is not None and not self.lease.lost,
            "controller": self.controller.leading,
            "partitions": {name: host.status(queues.get(name))
                           for name, host in sorted(self._hosts.items())},
        }

    async def _status_page(self, request: Request) -> Response:
        body = json.dumps(self.status(), sort_keys=True).encode()
        return Response(200, [("Content-Type", "application/json")], body)

    async def import_into(self, destination: str, redrive: bool,
                          records: list[MessageRecord]) -> bool:
        """Copy ``records`` into ``destination`` (wherever its replica sets lead); True
        once committed there. Into a queue of several partitions, each message goes to
        the partition of its FIFO group, or (standard) of its id, so a copy sent again
        lands where the first one did and is skipped there."""
        entry = await self._queue_entry(destination)
        if entry is None or not entry.partitions:
            log.info("%s: the destination %s is gone", self.cfg.node_id, destination)
            return False
        parts = entry.partitions
        by_partition: dict[str, list[MessageRecord]] = {}
        for record in records:
            key = record.group_id if record.group_id is not None else record.message_id
            index = partition_index(key, len(parts)) if len(parts) > 1 else 0
            by_partition.setdefault(parts[index], []).append(record)
        done = await asyncio.gather(*(
            self._import_part(partition, destination, redrive, batch)
            for partition, batch in by_partition.items()))
        return all(done)

    async def _import_part(self, partition: str, destination: str, redrive: bool,
                           records: list[MessageRecord]) -> bool:
        host = self._hosts.get(partition)
        if host is not None and host.leads():
            await self._import_local(host, destination, redrive, records)
            return True
        found = await self._leader_target(partition)
        if found is None:
            return False
        _, target = found
        body = encode_effects([MessageStored(r, None) for r in records])
        request = Request(
            method="POST", path=IMPORT_PATH,
            query=(f"queue={quote(destination, safe='')}&redrive={int(redrive)}"
                   f"&partition={quote(partition, safe='')}"),
            headers={"host": f"{target[0]}:{target[1]}", "content-length": str(len(body)),
                     "content-type": "application/octet-stream"},
            body=body, client="")
        response = await self.proxy.forward(target, request)
        if response.status != 200:
            log.info("%s: %s refused a copy into %s: %d %s", self.cfg.node_id, target,
                     destination, response.status, response.body[:200])
        return response.status == 200

    async def _import_local(self, host: _Host, destination: str, redrive: bool,
                            records: list[MessageRecord]) -> None:
        catalog = self.catalog

        def store(broker: Broker, now_ms: int, entropy: Any) -> list[Any]:
            return list(broker.import_messages(
                destination, [(r, catalog.arn(r.queue) if redrive else None)
                              for r in records], now_ms, entropy))

        await host.service.run_internal(store)

    async def _import_page(self, request: Request) -> Response:
        def answer(status: int, text: str) -> Response:
            return Response(status, [("Content-Type", "text/plain")], text.encode())

        if request.method != "POST":
            return answer(405, "POST only")
        query = parse_qs(request.query)
        destination = (query.get("queue") or [""])[0]
        redrive = (query.get("redrive") or ["0"])[0] == "1"
        try:
            effects = decode_effects(request.body)
        except EffectDecodeError as exc:
            return answer(400, f"not a batch of messages: {exc}")
        records = [e.record for e in effects if isinstance(e, MessageStored)]
        if len(records) != len(effects) or not destination:
            return answer(400, "not a batch of messages for one queue")
        entry = await self._queue_entry(destination)
        parts = entry.partitions if entry is not None else ()
        partition = (query.get("partition") or [parts[0] if parts else ""])[0]
        host = self._hosts.get(partition) if partition in parts else None
        if host is None or not host.leads():
            return answer(503, "this node does not lead the destination's replica set")
        try:
            await self._import_local(host, destination, redrive, records)
        except SqsError as exc:
            return answer(exc.status, f"{exc.shape}: {exc.message}")
        return answer(200, "stored")

    def _unavailable(self, why: str) -> SqsError:
        return SqsError("ServiceUnavailable", why)

    async def call(self, action: str, params: dict[str, Any], ctx: CallContext
                   ) -> dict[str, Any]:
        """A request ``_route`` left to this node: one whose replica set it leads, one
        of a queue of several partitions (served here, partition by partition), or one
        that needs no replica set (the catalog's actions, errors)."""
        if action == "ListQueues":
            return self._list_queues(params, ctx)
        if action == "GetQueueUrl":
            return await self._get_queue_url(params, ctx)
        name = _queue_of(action, params)
        entry = await self._queue_entry(name) if name is not None else None
        if entry is None or entry.partition is None:
            # No such queue, or no queue named at all: an empty core answers exactly as
            # the single node does (QueueDoesNotExist, a missing parameter, ...).
            scratch = self.make_broker(directory=self.catalog)
            return scratch.execute(action, params, self.wall_ms(), self._entropy,
                                   RequestInfo(ctx.base_url, ctx.account_id)).response
        if len(entry.partitions) > 1:
            return await self.partitioned.call(entry, action, params, ctx)
        host = self._hosts.get(entry.partition)
        if host is None or not host.leads():
            raise self._unavailable("This node does not lead the queue's replica set; "
                                    "retry.")
        assert name is not None
        return await self._call_local(host, name, action, params, ctx)

    async def _call_local(self, host: _Host, name: str, action: str, params: dict[str, Any],
                          ctx: CallContext) -> dict[str, Any]:
        """``action`` on the replica set ``host`` leads here, and its catalog write."""
        host.in_flight += 1
        try:
            return await self._run_local(host, name, action, params, ctx)
        finally:
            host.in_flight -= 1

    async def _run_local(self, host: _Host, name: str, action: str, params: dict[str, Any],
                         ctx: CallContext) -> dict[str, Any]:
        if action == "DeleteQueue" and not host.service.broker.queue_exists(name):
            # Deleted by an earlier try whose catalog write did not happen: finish it.
            held = self.catalog.get(name)
            if held is not None and held[0].status == LIVE:
                await self._catalog_write(self.retire(host, name))
                return {}
        result = await host.service.call(action, params, ctx)
        if action in _DEFINITION_ACTIONS:
            await self._catalog_write(self.publish(host, name))
        elif action == "DeleteQueue":
            await self._catalog_write(self.retire(host, name))
        return result

    # ---- partitions of one queue, called from the node that serves it ----------------

    async def call_partition(self, partition: str, action: str, params: dict[str, Any],
                             ctx: CallContext) -> dict[str, Any]:
        """``action`` on ``partition``'s leader, here or on another node (``POST
        /_ferry/call``); its SQS error raised as is."""
        deadline = self._loop.time() + _LEADER_WAIT_S
        while True:
            host = self._hosts.get(partition)
            if host is not None and host.leads():
                return await self._call_leader(host, action, params, ctx)
            found_leader = await self._leader_target(partition)
            if found_leader is None:
                host = self._hosts.get(partition)
                if host is not None and host.leads():
                    continue
                raise self._unavailable("No node leads a partition of the queue yet; "
                                        "retry.")
            _, target = found_leader
            body = encode_call(PartitionCall(partition, action, params, ctx.base_url,
                                             ctx.account_id, ctx.access_key_id,
                                             ctx.request_id))
            request = Request(
                method="POST", path=CALL_PATH, query="",
                headers={"host": f"{target[0]}:{target[1]}",
                         "content-length": str(len(body)),
                         "content-type": "application/json", FORWARDED_HEADER: "1"},
                body=body, client="")
            try:
                response = await self._forward_to_leader(partition, target, request)
            except ProxyError as exc:
                if exc.sent or self._loop.time() >= deadline:
                    raise self._unavailable("The leader of a partition of the queue did "
                                            "not answer; retry.") from exc
                await asyncio.sleep(_CONNECT_RETRY_S)
                continue
            if any(k.lower() == _NOT_LEADER_HEADER for k, _ in response.headers) \
                    and self._loop.time() < deadline:
                # Nothing was run there: safe to ask the leader etcd names next.
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), _CONNECT_RETRY_S)
                continue
            for key, value in response.headers:
                if key.lower() == _LOAD_HEADER and value.isdigit():
                    self._loads[partition] = (int(value), self._loop.time())
            try:
                return decode_answer(response.body)
            except CallDecodeError as exc:
                log.warning("%s: a partition call to %s got %d %r", self.cfg.node_id,
                            target, response.status, response.body[:200])
                raise self._unavailable("A partition of the queue gave no answer; "
                                        "retry.") from exc

    def leads_here(self, partition: str) -> bool:
        host = self._hosts.get(partition)
        return host is not None and host.leads()

    def load_of(self, partition: str) -> int | None:
        host = self._hosts.get(partition)
        if host is not None and host.leads():
            return host.in_flight
        reported = self._loads.get(partition)
        if reported is None or self._loop.time() - reported[1] > _LOAD_STALE_S:
            return None
        return reported[0]

    async def wait_partition(self, partition: str, queue: str, timeout_ms: int,
                             ctx: CallContext) -> bool:
        result = await self.call_partition(partition, WAIT_ACTION,
                                           {"QueueName": queue, "WaitMs": timeout_ms}, ctx)
        return bool(result.get("Found"))

    async def _call_leader(self, host: _Host, action: str, params: dict[str, Any],
                           ctx: CallContext) -> dict[str, Any]:
        """A partition call on the replica set ``host`` leads here."""
        if action == WAIT_ACTION:
            found = await host.service.wait_visible(str(params.get("QueueName")),
                                                    int(params.get("WaitMs", 0)))
            return {"Found": found}
        return await self._call_local(host, _queue_of(action, params) or "", action,
                                      params, ctx)

    async def _call_page(self, request: Request) -> Response:
        def answer(body: bytes, *extra: tuple[str, str]) -> Response:
            return Response(200, [("Content-Type", "application/json"), *extra], body)

        if request.method != "POST":
            return Response(405, [("Content-Type", "text/plain")], b"POST only")
        try:
            call = decode_call(request.body)
        except CallDecodeError as exc:
            return Response(400, [("Content-Type", "text/plain")], str(exc).encode())
        host = self._hosts.get(call.partition)
        if host is None or not host.leads():
            # Not run: the caller's view of the leader is ahead of or behind this node's
            # (a partition just placed, an election under way). It asks again.
            return answer(encode_answer(error=self._unavailable(
                "This node does not lead the partition's replica set; retry.")),
                (_NOT_LEADER_HEADER, "1"))
        ctx = CallContext(request_id=call.request_id, base_url=call.base_url,
                          account_id=call.account_id, region=self.cfg.region,
                          access_key_id=call.access_key_id, path_queue=None)
        try:
            body = encode_answer(await self._call_leader(host, call.action, call.params, ctx))
        except SqsError as exc:
            body = encode_answer(error=exc)
        return answer(body, (_LOAD_HEADER, str(host.in_flight)))

    async def _catalog_write(self, write: Coroutine[Any, Any, None]) -> None:
        try:
            await write
        except CoordinationError as exc:
            # Committed on the replica set, not yet in the catalog: a retry (the action
            # is idempotent) or the next leader's catch-up writes it.
            raise self._unavailable("The change is stored but the cluster's catalog could "
                                    "not be updated; retry.") from exc

    def _list_queues(self, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        scratch = self.make_broker()
        prefix = params.get("QueueNamePrefix", "")
        if not isinstance(prefix, str):
            raise invalid_parameter("Value for parameter QueueNamePrefix is invalid.")
        names = [n for n in self.catalog.live_names() if n.startswith(prefix)]
        return scratch.list_page(names, params, RequestInfo(ctx.base_url, ctx.account_id),
                                 "QueueUrls")

    async def _get_queue_url(self, params: dict[str, Any], ctx: CallContext
                             ) -> dict[str, Any]:
        name = params.get("QueueName")
        if isinstance(name, str) and name:
            # Read from etcd if this node's copy of the catalog has not seen it yet (a
            # queue created through another node a moment ago), then answered by an
            # empty core whose directory is the catalog: the single node's checks and
            # texts.
            await self._entry(name)
        scratch = self.make_broker(directory=self.catalog)
        return scratch.execute("GetQueueUrl", params, self.wall_ms(), self._entropy,
                               RequestInfo(ctx.base_url, ctx.account_id)).response

    async def _route(self, request: Request, action: str, params: dict[str, Any]
                     ) -> Response | None:
        if action in ("ListQueues", "GetQueueUrl"):
            return None
        name = _queue_of(action, params)
        if name is None:
            return None
        if action == "CreateQueue":
            ctx = CallContext(request_id="", base_url="", account_id=self.cfg.account_id,
                              region=self.cfg.region, access_key_id=None, path_queue=None)
            entry: QueueEntry | None = await self._place(name, params, ctx)
        else:
            entry = await self._queue_entry(name)
        if entry is None or entry.partition is None or len(entry.partitions) > 1:
            return None  # served by ``call``
        partition = entry.partition
        host = self._hosts.get(partition)
        if host is not None and host.leads():
            return None
        if FORWARDED_HEADER in request.headers:
            raise self._unavailable("This node does not lead the queue's replica set; "
                                    "retry.")
        return await self._forward(partition, request)

    async def _forward(self, partition: str, request: Request) -> Response | None:
        deadline = self._loop.time() + _LEADER_WAIT_S
        while True:
            found = await self._leader_target(partition)
            if found is None:
                host = self._hosts.get(partition)
                if host is not None and host.leads():
                    return None
                raise self._unavailable("No node leads the queue's replica set yet; "
                                        "retry.")
            _, target = found
            try:
                return await self._forward_to_leader(partition, target, request)
            except ProxyError as exc:
                if exc.sent or self._loop.time() >= deadline:
                    log.info("forwarding failed: %s", exc)
                    raise self._unavailable("The leader of the queue's replica set did "
                                            "not answer; retry.") from exc
            # Not even connected (the leader died and its lease has not lapsed yet):
            # nothing was sent, so waiting for the next leader and sending it there is
            # safe.
            await asyncio.sleep(_CONNECT_RETRY_S)
            host = self._hosts.get(partition)
            if host is not None and host.leads():
                return None

    async def _forward_to_leader(self, partition: str, target: tuple[str, int],
                                 request: Request) -> Response:
        """``request`` to ``partition``'s leader at ``target``, and its answer; raises
        ProxyError as the proxy does. If etcd names another leader before that one
        answers (it was cut off or paused: fencing keeps it from committing), the
        request is given up at once with a retriable 503, as uncertain as a timeout,
        so the client retries at the new leader instead of waiting out its own
        timeout. Never sent twice: it may have run."""
        changed = self._leader_changed.get(partition)
        if changed is None or changed.done():
            changed = self._leader_changed[partition] = self._loop.create_future()
        forwarding = self._loop.create_task(self.proxy.forward(target, request))
        replaced = asyncio.ensure_future(asyncio.shield(changed))
        try:
            await asyncio.wait((forwarding, replaced), return_when=asyncio.FIRST_COMPLETED)
        finally:
            replaced.cancel()
        if not forwarding.done():
            forwarding.cancel()
            with contextlib.suppress(asyncio.CancelledError, ProxyError):
                await forwarding
            raise self._unavailable("The replica set's leader changed while the request "
                                    "was in flight; retry.")
        return forwarding.result()

    async def _leader_target(self, partition: str) -> tuple[str, tuple[str, int]] | None:
        """The set's leader (another node) and its SQS address; None when this node
        leads or none is known within ``_LEADER_WAIT_S``."""
        deadline = self._loop.time() + _LEADER_WAIT_S
        while True:
            host = self._hosts.get(partition)
            if host is not None and host.leads():
                return None
            held = self._states.get(partition)
            leader = held[0].leader if held is not None else None
            if leader is not None and leader != self.cfg.node_id and leader in self._nodes:
                return leader, _target_of(self._nodes[leader].url)
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return None
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))


async def run_node(cfg: NodeConfig, make_broker: Callable[..., Broker]) -> int:
    from ferrymq._coordination import EtcdCoordinator

    stop = asyncio.Event()
    exit_code = 0

    def on_fatal(exc: BaseException) -> None:
        nonlocal exit_code
        log.critical("%s: fatal: %r", cfg.node_id, exc)
        exit_code = 1
        stop.set()

    coordinator = EtcdCoordinator(list(cfg.etcd_endpoints))
    node = Node(cfg, coordinator, make_broker, on_fatal)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = await node.start()
    except (OSError, CoordinationError) as exc:
        await node.close_hosts()
        await node.transport.close()
        with contextlib.suppress(CoordinationError):
            await coordinator.close()
        print(f"ferrymq node: cannot start: {exc}", file=sys.stderr, flush=True)
        return 1
    print(f"ferrymq node {cfg.node_id} listening on {node.status()['url']} (cluster "
          f"{cfg.cluster}, etcd {','.join(cfg.etcd_endpoints)})", file=sys.stderr, flush=True)
    await stop.wait()
    await node.stop(server)
    print(f"ferrymq node {cfg.node_id} stopped", file=sys.stderr, flush=True)
    return exit_code
