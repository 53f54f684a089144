"""``ferrymq node``: one cluster node, wiring the parts together.

A node is the single-node server (gateway, service, core, SQLite) whose store is a
``ReplicatedStore``, plus:

- membership: its addresses under ``nodes/<id>`` on an etcd lease it keeps alive; when
  the lease is lost (etcd unreachable for its TTL) it registers again on a new one;
- a ``Controller`` (every node runs one; the one elected through etcd acts);
- a watch of the replica sets' state in etcd, which makes its replica lead, follow, or
  learn a new in-sync set; and the in-sync set changes its replica asks for, written by
  transactions conditioned on the state's revision;
- the replication ``Transport``, and a tick for heartbeats and lag;
- routing: a request that reaches a node which does not lead the replica set is
  forwarded, as received, to the leader (``Proxy``); one already forwarded is refused
  with a retriable 503 instead of forwarded again. ``GET /_ferry/status`` answers the
  node's view as JSON (for ``ferrymq cluster status`` and tests).

This first step runs one replica set, ``p0``, holding every queue (docs/architecture.md,
"Cluster mode"): per-queue replica sets and metadata in etcd come with partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ferrymq._cluster._controller import Controller, ControllerSettings
from ferrymq._cluster._layout import (
    Layout,
    NodeInfo,
    decode_node,
    decode_state,
    encode_node,
    encode_state,
)
from ferrymq._cluster._partition import ReplicatedStore
from ferrymq._cluster._proxy import FORWARDED_HEADER, Proxy, ProxyError
from ferrymq._cluster._transport import Transport
from ferrymq._coordination import (
    CoordinationError,
    Coordinator,
    EventKind,
    Lease,
    Put,
)
from ferrymq._core._broker import Broker
from ferrymq._core._errors import SqsError
from ferrymq._gateway import Gateway, Request, Response, close_server, start_gateway
from ferrymq._gateway._http import HttpLimits
from ferrymq._replication._election import PartitionState
from ferrymq._replication._messages import FenceReply
from ferrymq._replication._replica import ChangeIsr, Role
from ferrymq._service import QueueService, restore_into

__all__ = ["PARTITION", "STATUS_PATH", "NodeConfig", "run_node"]

log = logging.getLogger("ferrymq.cluster.node")

PARTITION = "p0"
STATUS_PATH = "/_ferry/status"
# Replication heartbeats and lag checks run this often (the replica's HEARTBEAT_MS is
# 500 ms; ticking faster makes resends and in-sync changes prompt).
_TICK_S = 0.1
# A request reaching a node while no leader is known (an election is under way) waits
# this long for one before it is refused with a retriable 503: an election takes about
# the lease TTL plus a second, so most requests of a failover are served, not refused.
_LEADER_WAIT_S = 4.0
# A forward whose connection was refused is tried again after this long.
_CONNECT_RETRY_S = 0.1
# How often the node re-reads the replica set's state even without watch events: a
# safety net for a watch that broke and is being re-established.
_STATE_POLL_S = 1.0
# Registering again after the node's lease was lost: retried this often.
_REREGISTER_S = 0.5
# A graceful stop answers requests in flight for at most this long.
_DRAIN_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: str
    host: str
    port: int
    data_dir: Path
    etcd_endpoints: tuple[str, ...]  # host:port
    cluster: str
    advertise_url: str | None
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


def _monotonic_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _target_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 80


class Node:
    """See the module docstring."""

    def __init__(self, cfg: NodeConfig, coordinator: Coordinator,
                 make_broker: Callable[[], Broker], on_fatal: Callable[[BaseException], None]
                 ) -> None:
        self.cfg = cfg
        self._coord = coordinator
        self._layout = Layout(cfg.cluster)
        self._make_broker = make_broker
        self._on_fatal = on_fatal
        self._loop = asyncio.get_running_loop()
        self._nodes: dict[str, NodeInfo] = {}
        self._state: PartitionState | None = None
        self._state_revision = 0
        self._state_changed = asyncio.Event()
        # Resolved (and replaced) whenever etcd's state names a different leader:
        # forwarded requests wait on it beside their answer.
        self._leader_changed: asyncio.Future[None] = self._loop.create_future()
        self._tasks: list[asyncio.Task[None]] = []
        self._lease: Lease | None = None
        self._url = ""
        self._replication: tuple[str, int] = ("", 0)
        self.transport = Transport(node=cfg.node_id, cluster=cfg.cluster,
                                   on_frame=self._on_frame, address_of=self._address_of)
        self.store = ReplicatedStore(
            partition=PARTITION, node=cfg.node_id,
            path=cfg.data_dir / "ferrymq.sqlite3", free_bytes_min=cfg.free_bytes_min,
            send=self._send, change_isr=self._on_change_isr, clock_ms=_monotonic_ms,
            on_fatal=on_fatal, power_loss_seam=cfg.power_loss_seam)
        broker = make_broker()
        restore_into(broker, self.store.load())
        self.service = QueueService(broker, self.store, broker_factory=make_broker,
                                    write_gate=self._write_refusal)
        self.store.attach(self.service, make_broker)
        self.controller = Controller(
            coordinator, self._layout, cfg.node_id,
            ControllerSettings(partitions=(PARTITION,), replication_factor=cfg.replicas,
                               min_isr=cfg.min_isr, sync=cfg.sync,
                               lease_ttl_s=cfg.lease_ttl_s),
            send_fence=self._send)
        self.proxy = Proxy()
        self.gateway = Gateway(self.service, public_url=cfg.advertise_url,
                               account_id=cfg.account_id, region=cfg.region,
                               route=self._route)

    # ---- start and stop ---------------------------------------------------------

    async def start(self) -> asyncio.Server:
        listening = await self.transport.listen(self.cfg.host, self.cfg.replication_port)
        self._replication = self.cfg.replication_advertise or listening
        server = await start_gateway(self.service, self.cfg.host, self.cfg.port,
                                     http_limits=self.cfg.http_limits, gateway=self.gateway)
        host, port = server.sockets[0].getsockname()[:2]
        self._url = self.cfg.advertise_url or f"http://{host}:{port}"
        await self._register()
        self.service.start()
        loops = {"controller": self.controller.run(), "registration": self._keep_registered(),
                 "node watch": self._watch_nodes(), "state watch": self._watch_state(),
                 "state poll": self._poll_state(), "tick": self._tick()}
        for name, coro in loops.items():
            self._tasks.append(self._loop.create_task(self._guarded(coro, name)))
        return server

    async def stop(self, server: asyncio.Server) -> None:
        self.service.begin_shutdown()
        await close_server(server, drain_timeout_s=_DRAIN_TIMEOUT_S)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        # Leaving on purpose: revoking the lease removes this node at once, so a new
        # leader is elected without waiting for the TTL.
        with contextlib.suppress(CoordinationError):
            await self._coord.close(revoke_leases=True)
        await self.service.close()
        await self.transport.close()
        await self.proxy.close()

    async def _register(self) -> None:
        lease = await self._coord.grant_lease(self.cfg.lease_ttl_s)
        info = NodeInfo(self.cfg.node_id, self._url, self._replication, os.getpid())
        await self._coord.put(self._layout.node(self.cfg.node_id), encode_node(info),
                              lease=lease)
        self._lease = lease
        self._nodes[self.cfg.node_id] = info

    async def _keep_registered(self) -> None:
        while True:
            lease = self._lease
            if lease is not None:
                lost = await lease.wait_lost()
                log.warning("%s lost its etcd lease (%s); registering again",
                            self.cfg.node_id, lost)
                if self._async():
                    # Acknowledged on the leader's own fsync, they would be lost if a
                    # successor leads: answer them now, as uncertain.
                    self.store.abandon_pending("this node lost its membership in the "
                                               "cluster")
            try:
                await self._register()
            except CoordinationError as exc:
                log.info("registering %s failed: %r", self.cfg.node_id, exc)
                self._lease = None
                await asyncio.sleep(_REREGISTER_S)

    # ---- what etcd says ---------------------------------------------------------

    async def _watch_nodes(self) -> None:
        prefix = self._layout.nodes
        while True:
            try:
                snap = await self._coord.get_prefix(prefix)
                self._nodes = {
                    self._layout.name_of(prefix, kv.key):
                        decode_node(self._layout.name_of(prefix, kv.key), kv.value)
                    for kv in snap.items}
                self._state_changed.set()
                stream = self._coord.watch_prefix(prefix, start_revision=snap.revision + 1)
                try:
                    async for event in stream:
                        name = self._layout.name_of(prefix, event.key)
                        if event.kind is EventKind.PUT:
                            self._nodes[name] = decode_node(name, event.value)
                        else:
                            self._nodes.pop(name, None)
                        self.controller.poke()
                        self._state_changed.set()
                finally:
                    await stream.aclose()
            except CoordinationError as exc:
                log.info("watching nodes: %r; again", exc)
                await asyncio.sleep(_REREGISTER_S)

    async def _watch_state(self) -> None:
        key = self._layout.partition(PARTITION)
        while True:
            try:
                snap = await self._coord.get_prefix(self._layout.partitions)
                for kv in snap.items:
                    if kv.key == key:
                        self._on_state(decode_state(kv.value), kv.mod_revision)
                stream = self._coord.watch_prefix(self._layout.partitions,
                                                  start_revision=snap.revision + 1)
                try:
                    async for event in stream:
                        if event.key == key and event.kind is EventKind.PUT:
                            self._on_state(decode_state(event.value), event.revision)
                        self.controller.poke()
                finally:
                    await stream.aclose()
            except CoordinationError as exc:
                log.info("watching the replica set: %r; again", exc)
                await asyncio.sleep(_REREGISTER_S)

    async def _poll_state(self) -> None:
        """The safety net under the watch (module constants say why)."""
        key = self._layout.partition(PARTITION)
        while True:
            await asyncio.sleep(_STATE_POLL_S)
            try:
                kv = await self._coord.get(key)
            except CoordinationError:
                continue
            if kv is not None and kv.mod_revision > self._state_revision:
                self._on_state(decode_state(kv.value), kv.mod_revision)

    async def _guarded(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """A background loop that ends with an unexpected error is a bug: say so and
        stop the node, rather than serve on with part of it dead."""
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("bug: %s of node %s failed", name, self.cfg.node_id)
            self._on_fatal(exc)

    def _on_state(self, state: PartitionState, revision: int) -> None:
        if revision < self._state_revision:
            return  # an older state than one already acted on
        previous_state = self._state
        previous = previous_state.leader if previous_state is not None else None
        self._state = state
        self._state_revision = revision
        self._state_changed.set()
        if state.leader != previous:
            self._leader_changed.set_result(None)
            self._leader_changed = self._loop.create_future()
        r = self.store.replica
        now = _monotonic_ms()
        me = self.cfg.node_id
        if previous_state is None and state.epoch > 0 and r.position().seq == 0:
            # The first word from etcd, and this store is empty while the replica set
            # has led an epoch: this node lost its disk. Not electable until copied.
            log.warning("%s starts with an empty store in a replica set at epoch %d: it "
                        "waits for a copy from the leader before it may lead", me,
                        state.epoch)
            r.needs_copy = True
        if state.leader == me:
            if r.role is Role.LEADER and r.epoch == state.epoch:
                if frozenset(state.isr) != r.isr:
                    self.store.run(r.isr_changed(state.isr, now))
            elif r.may_lead(state.epoch):
                log.warning("%s leads %s in epoch %d (in sync: %s)", me, PARTITION,
                            state.epoch, ", ".join(state.isr))
                self.store.run(r.lead(state.epoch, replicas=state.replicas, isr=state.isr,
                                      min_isr=state.min_isr, sync=state.sync, now_ms=now))
            elif not (r.role is Role.LEADER and r.epoch > state.epoch):
                self._tasks.append(self._loop.create_task(
                    self._guarded(self._resign(state, revision), "resignation")))
        elif state.leader is not None:
            self.store.run(r.follow(state.epoch, state.leader))

    async def _resign(self, state: PartitionState, revision: int) -> None:
        """Named leader of an epoch this replica may not lead (it restarted since it
        promised it): clear the leader so the controller elects a later epoch."""
        log.warning("%s may not lead epoch %d of %s; resigning", self.cfg.node_id,
                    state.epoch, PARTITION)
        key = self._layout.partition(PARTITION)
        with contextlib.suppress(CoordinationError):
            await self._coord.transact({key: revision},
                                       [Put(key, encode_state(replace(state, leader=None)))])
            self.controller.poke()

    def _on_change_isr(self, action: ChangeIsr) -> None:
        self._tasks.append(self._loop.create_task(
            self._guarded(self._change_isr(action), "in-sync change")))
        self._tasks = [t for t in self._tasks if not t.done()]

    async def _change_isr(self, action: ChangeIsr) -> None:
        r = self.store.replica
        key = self._layout.partition(PARTITION)
        try:
            kv = await self._coord.get(key)
            state = decode_state(kv.value) if kv is not None else None
            if (kv is None or state is None or state.epoch != action.epoch
                    or state.leader != self.cfg.node_id):
                self.store.run(r.isr_change_failed())
                return
            new = state.with_isr(action.isr)
            result = await self._coord.transact({key: kv.mod_revision},
                                                [Put(key, encode_state(new))])
        except CoordinationError as exc:
            log.info("changing the in-sync set failed: %r", exc)
            self.store.run(r.isr_change_failed())
            return
        if not result.succeeded:
            self.store.run(r.isr_change_failed())
            return
        log.warning("%s: in sync now %s", PARTITION, ", ".join(new.isr))
        if r.role is Role.LEADER and r.epoch == action.epoch:
            self._state, self._state_revision = new, result.revision
            self.store.run(r.isr_changed(new.isr, _monotonic_ms()))

    # ---- replication traffic ------------------------------------------------------

    async def _address_of(self, peer: str) -> tuple[str, int] | None:
        info = self._nodes.get(peer)
        if info is None:
            with contextlib.suppress(CoordinationError):
                kv = await self._coord.get(self._layout.node(peer))
                if kv is not None:
                    info = decode_node(peer, kv.value)
        return info.replication if info is not None else None

    def _send(self, peer: str, frame: object) -> None:
        if peer == self.cfg.node_id:
            # To this node's own replica or controller: delivered on the next loop turn,
            # as if over the network (no re-entry into the replica mid-action).
            self._loop.call_soon(self._on_frame, peer, frame)
        else:
            self.transport.send(peer, frame)

    def _on_frame(self, peer: str, frame: object) -> None:
        if isinstance(frame, FenceReply):
            self.controller.on_fence_reply(frame)
        else:
            self.store.on_frame(peer, frame)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(_TICK_S)
            self.store.tick()

    # ---- requests -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        r = self.store.replica
        state = self._state
        acked = r.follower_acked()
        return {
            "node": self.cfg.node_id, "cluster": self.cfg.cluster, "url": self._url,
            "pid": os.getpid(), "role": r.role.value, "partition": PARTITION,
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
            "lease": self._lease is not None and not self._lease.lost,
            "controller": self.controller.leading,
            "writable": r.writable,
        }

    def _async(self) -> bool:
        state = self._state
        return not (state.sync if state is not None else self.cfg.sync)

    def _write_refusal(self) -> str | None:
        lease = self._lease
        if self._async() and (lease is None or lease.lost):
            # Cut off from etcd for its lease's TTL: another node may lead by now, and an
            # async replica set would acknowledge writes its successor never sees. (A
            # sync one cannot: its in-sync followers promised the successor's epoch. So
            # it goes on serving while etcd itself is electing a leader, which can take
            # longer than a lease's TTL.)
            return "This node lost its membership in the cluster; retry."
        return self.store.refusal()

    def _leads(self) -> bool:
        return self.store.replica.role is Role.LEADER

    def _unavailable(self, request: Request, why: str) -> Response:
        return self.gateway.refuse(request, SqsError("ServiceUnavailable", why))

    async def _route(self, request: Request) -> Response | None:
        if request.path == STATUS_PATH:
            body = json.dumps(self.status(), sort_keys=True).encode()
            return Response(200, [("Content-Type", "application/json")], body)
        if self._leads():
            return None
        if FORWARDED_HEADER in request.headers:
            return self._unavailable(request, "This node does not lead the replica set; "
                                              "retry.")
        deadline = self._loop.time() + _LEADER_WAIT_S
        while True:
            found = await self._leader_target()
            if found is None:
                if self._leads():
                    return None
                return self._unavailable(request, "No node leads the replica set yet; "
                                                  "retry.")
            leader, target = found
            forwarding = self._loop.create_task(self.proxy.forward(target, request))
            replaced = asyncio.ensure_future(asyncio.shield(self._leader_changed))
            try:
                await asyncio.wait((forwarding, replaced),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                replaced.cancel()
            if not forwarding.done():
                # etcd names another leader while the old one has not answered (it was
                # cut off or paused: fencing keeps it from committing). Answer now, as
                # uncertain as a timeout, so the client retries at the new leader
                # instead of waiting out its own timeout.
                forwarding.cancel()
                with contextlib.suppress(asyncio.CancelledError, ProxyError):
                    await forwarding
                state = self._state
                if state is None or state.leader != leader:
                    return self._unavailable(request, "The replica set's leader changed "
                                                      "while the request was in flight; "
                                                      "retry.")
                continue  # a change that kept the leader (the in-sync set): wait again
            try:
                return forwarding.result()
            except ProxyError as exc:
                if exc.sent or self._loop.time() >= deadline:
                    log.info("forwarding failed: %s", exc)
                    return self._unavailable(request, "The leader of the replica set did "
                                                      "not answer; retry.")
            # Not even connected (the leader died and its lease has not lapsed yet):
            # nothing was sent, so waiting for the next leader and sending it there is
            # safe.
            await asyncio.sleep(_CONNECT_RETRY_S)
            if self._leads():
                return None

    async def _leader_target(self) -> tuple[str, tuple[str, int]] | None:
        """The leader (another node) and its SQS address; None when this node leads
        or none is known within ``_LEADER_WAIT_S``."""
        deadline = self._loop.time() + _LEADER_WAIT_S
        while True:
            if self._leads():
                return None
            state = self._state
            leader = state.leader if state is not None else None
            if leader is not None and leader != self.cfg.node_id and leader in self._nodes:
                return leader, _target_of(self._nodes[leader].url)
            remaining = deadline - self._loop.time()
            if remaining <= 0:
                return None
            self._state_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._state_changed.wait(), min(remaining, 0.2))


async def run_node(cfg: NodeConfig, make_broker: Callable[[], Broker]) -> int:
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
    node.service.on_fatal = on_fatal
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        server = await node.start()
    except (OSError, CoordinationError) as exc:
        await node.service.close()
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
