"""One partition's replica on a node: the I/O shell around ``Replica``, as a ``Store``.

The service talks to a ``ReplicatedStore`` exactly as it talks to an ``SqliteStore``
(``ferrymq._storage``): it executes a request in the core, then awaits ``commit`` of
the effects. Here that commit is a proposal to the partition's log:

- On the leader, ``commit`` encodes the effects (``ferrymq._core._effects``), proposes
  them as one log entry, writes them into the local SQLite store together with the
  log position (one transaction: one write path, no separate log file), and returns once
  the entry is *committed*: durable on every in-sync replica for a ``sync`` partition,
  on the leader for ``async``. A leader that is replaced before that answers
  ``WriteRefused`` (the client sees a retriable 503; the write may still survive).
- On a follower, entries from the leader are decoded, applied to the node's core and
  written into its store in the same way; then the replica acknowledges them.
- Entries are kept in memory (``RETAINED_BYTES_MAX``) for followers that fall behind;
  a follower beyond that window, or whose log diverged (it held entries of a leader that
  died before they committed), is sent a snapshot: a copy of the leader's SQLite
  database, installed in place of its own, after which its core is restored from it.
  The copy is made to a file and streamed from it in chunks, paced
  (``SNAPSHOT_BYTES_PER_S_MAX``) and never ahead of the transport
  (``SNAPSHOT_IN_FLIGHT_BYTES_MAX``); the follower writes the chunks to a file beside
  its store and, once the whole copy's CRC checks, renames it into place. Neither side
  holds more than a chunk in memory, so a store of any size can be rebuilt or moved.

The log position (``repl.*`` rows of ``ferry_meta``) is in the same transaction as the
effects, so after a crash the store and the position agree exactly.

What belongs here: executing ``Replica`` actions against the store, the service's core
and the transport; snapshots. Who leads, and the etcd side, is ``_node``'s business.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, assert_never

from ferrymq._core._effects import Effect, EffectDecodeError, decode_effects, encode_effects
from ferrymq._core._errors import InternalError
from ferrymq._replication._frames import (
    SnapshotBegin,
    SnapshotChunk,
    SnapshotDone,
    SnapshotEnd,
    crc32,
)
from ferrymq._replication._log import NO_POSITION, EpochHistory, Position
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
from ferrymq._storage import StorageError, StorageFullError, StoreStats, WriteRefused
from ferrymq._storage._sqlite import SqliteStore, image_meta, install_image

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from ferrymq._core._broker import Broker
    from ferrymq._service import QueueService

__all__ = ["COMMIT_WAIT_MS", "META_PREFIX", "SNAPSHOT_BYTES_PER_S_MAX",
           "SNAPSHOT_CHUNK_BYTES", "SNAPSHOT_IN_FLIGHT_BYTES_MAX", "InnerStore",
           "ReplicaDisk", "ReplicatedStore"]

log = logging.getLogger("ferrymq.cluster.partition")

META_PREFIX = "repl."
# Bytes of a snapshot per frame: large enough that a copy of a few hundred MiB is a few
# hundred frames, small enough to stay far under the frame limit (16 MiB).
SNAPSHOT_CHUNK_BYTES = 1024 * 1024
# Bytes of a snapshot handed to the transport and not yet written to the socket. The
# transport drops frames past its per-peer bound (64 MiB); a snapshot waits below this
# instead, so it never drops its own chunks and leaves the rest of the bound to the
# partition's appends. 8 MiB keeps a LAN's pipe full (ms of transfer).
SNAPSHOT_IN_FLIGHT_BYTES_MAX = 8 * 1024 * 1024
# The pace of a snapshot: about a 1 Gb/s link's worth. A copy moves while clients are
# served from the same event loop and disk; at this pace it costs the leader's loop a
# few per cent of a core (encoding and writing chunks), and a 1 GiB store moves in
# about ten seconds (docs/cluster.md).
SNAPSHOT_BYTES_PER_S_MAX = 100 * 1024 * 1024
# A snapshot whose chunks the transport has not taken for this long is given up (the
# follower is gone, or the network); it is offered again when the follower answers.
_SNAPSHOT_STALL_S = 10.0
# How often a snapshot held back by the transport's backlog looks again: a few chunks'
# worth of a LAN's transfer.
_SNAPSHOT_POLL_S = 0.005
# A follower's incoming copy that has had no frame for this long was given up by its
# leader (stalled, or deposed, or dead): its file is removed rather than left holding
# up to a store's worth of disk until the next snapshot. Twice the leader's stall bound,
# so a copy the leader still sends is never removed under it.
_SNAPSHOT_ABANDONED_MS = int(2 * _SNAPSHOT_STALL_S * 1000)
# After a snapshot to a follower fails (refused, stalled, unanswered), the next one to it
# waits this long, doubling per failure up to the max: each one copies the whole store,
# and a follower that keeps refusing (its disk has no room) would otherwise have the
# leader copy it at every heartbeat. Reset when one is installed.
_SNAPSHOT_RETRY_FIRST_S = 1.0
_SNAPSHOT_RETRY_MAX_S = 30.0
# A snapshot the follower has not confirmed within the larger of these is given up and
# offered again when the follower next answers: its frames may have been dropped (the
# follower was down, or restarted midway). It is counted from the last chunk: the
# follower then fsyncs the copy, installs it and restores its core, far faster than
# 10 MB/s.
_SNAPSHOT_ANSWER_MIN_S = 5.0
_SNAPSHOT_BYTES_PER_S = 10 * 1024 * 1024
# A write that has not committed within this long is answered 503 (uncertain). Far above
# any healthy commit (milliseconds), below SDKs' read timeouts (60 s by default), and
# long enough to ride out a failover of a follower (about the lease TTL plus the lag
# limit) without refusing writes that would have committed.
COMMIT_WAIT_MS = 10_000


@dataclass(slots=True)
class _Own:
    """A proposal of this leader's, waiting to commit."""

    effects: Sequence[Effect]
    fetch_bodies: Sequence[tuple[str, str]]
    done: asyncio.Future[list[str | None]]
    proposed_ms: int
    bodies: list[str | None] | None = None  # set once the local write is durable


# Where snapshots are staged beside a store: the leader's copies (one per attempt to send a
# follower one) and the follower's incoming one. Left behind by a crash, they are removed
# when the store is next opened.
_STAGED_OUT = ".snapshot-out."
_STAGED_IN = ".snapshot-in"


@dataclass(slots=True)
class _Incoming:
    sender: str
    begin: SnapshotBegin
    staged: Path
    last_frame_ms: int
    received_bytes: int = 0
    crc: int = 0


def _history_upto(history: EpochHistory, seq: int) -> list[tuple[int, int]]:
    return [(epoch, first) for epoch, first in history.starts() if first <= seq]


def _meta_of(rows: dict[str, str]) -> tuple[Position, int, EpochHistory, str, int]:
    """(last position, fence epoch, history, incarnation, generation) from meta rows."""
    if f"{META_PREFIX}last_seq" not in rows:
        return NO_POSITION, 0, EpochHistory(), rows.get(f"{META_PREFIX}incarnation", ""), 0
    last = Position(int(rows[f"{META_PREFIX}last_epoch"]), int(rows[f"{META_PREFIX}last_seq"]))
    history = EpochHistory(tuple(map(tuple, json.loads(rows[f"{META_PREFIX}history"]))))
    return (last, int(rows[f"{META_PREFIX}fence_epoch"]), history,
            rows[f"{META_PREFIX}incarnation"], int(rows[f"{META_PREFIX}generation"]))


class InnerStore(Protocol):
    """What a replica asks of the store under it (``SqliteStore``'s methods)."""

    def read_meta(self, prefix: str) -> dict[str, str]: ...
    def load(self) -> Iterator[Effect]: ...
    def has_room(self) -> bool: ...
    async def resume(self) -> None: ...
    async def close(self) -> None: ...
    async def image_to(self, dest: Path) -> int: ...
    async def commit(self, effects: Sequence[Effect],
                     fetch_bodies: Sequence[tuple[str, str]] = (), *,
                     meta: Mapping[str, str] | None = None) -> list[str | None]: ...
    async def commit_parts(
        self, parts: Sequence[tuple[Sequence[Effect], Sequence[tuple[str, str]]]], *,
        meta: Mapping[str, str] | None = None) -> list[list[str | None]]: ...
    def submit_parts(
        self, parts: Sequence[tuple[Sequence[Effect], Sequence[tuple[str, str]]]], *,
        meta: Mapping[str, str] | None = None,
    ) -> tuple[asyncio.Future[Any], Callable[[], list[list[str | None]]]]: ...


class ReplicaDisk(Protocol):
    """Where a replica's store lives: SQLite files (``SQLITE_DISK``, the default), or
    the simulated disk of ``ferrymq._sim``. ``open`` also removes snapshots a crash
    left staged beside the store (``path`` plus a suffix). A staged image is a copy of
    a store (``InnerStore.image_to``), or one being received: ``stage`` makes it empty
    (refusing with ``StorageFullError`` when it would leave less than ``free_bytes_min``
    free), ``append_image`` adds to it, ``read_image`` reads from it, ``image_meta``
    reads its ``ferry_meta`` rows, ``install_image`` replaces the closed store at
    ``path`` with it durably, ``discard_image`` removes it (if it is there)."""

    def open(self, path: Path, *, free_bytes_min: int,
             power_loss_seam: bool) -> InnerStore: ...
    def stage(self, staged: Path, size_bytes: int, free_bytes_min: int) -> None: ...
    def append_image(self, staged: Path, data: bytes) -> None: ...
    def read_image(self, staged: Path, offset: int, size: int) -> bytes: ...
    def image_meta(self, staged: Path) -> dict[str, str]: ...
    def install_image(self, path: Path, staged: Path) -> None: ...
    def discard_image(self, staged: Path) -> None: ...


class _SqliteDisk:
    def open(self, path: Path, *, free_bytes_min: int, power_loss_seam: bool) -> InnerStore:
        # SQLite makes the file, not its directory (one per node for its replica sets).
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f"{path.name}.snapshot-*"):
            stale.unlink(missing_ok=True)
        return SqliteStore(path, free_bytes_min=free_bytes_min,
                           power_loss_seam=power_loss_seam)

    def stage(self, staged: Path, size_bytes: int, free_bytes_min: int) -> None:
        staged.unlink(missing_ok=True)
        free = shutil.disk_usage(staged.parent).free
        if free - size_bytes < free_bytes_min:
            raise StorageFullError(f"a copy of {size_bytes} bytes would leave "
                                   f"{free - size_bytes} bytes free, under the "
                                   f"{free_bytes_min} kept free")
        staged.touch()

    def append_image(self, staged: Path, data: bytes) -> None:
        # Page-cache writes of a chunk, on the loop: sub-millisecond, and they must land
        # in order. install_image fsyncs the whole copy once.
        fd = os.open(staged, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)

    def read_image(self, staged: Path, offset: int, size: int) -> bytes:
        fd = os.open(staged, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return os.pread(fd, size, offset)
        finally:
            os.close(fd)

    def image_meta(self, staged: Path) -> dict[str, str]:
        return image_meta(staged)

    def install_image(self, path: Path, staged: Path) -> None:
        install_image(path, staged)

    def discard_image(self, staged: Path) -> None:
        staged.unlink(missing_ok=True)


SQLITE_DISK: ReplicaDisk = _SqliteDisk()


class ReplicatedStore:
    """See the module docstring. ``send(peer, frame)`` hands a frame to the transport,
    and ``backlog_bytes(peer)`` says how much it holds for ``peer`` not yet written;
    ``change_isr(action)`` asks the node to change the in-sync set in etcd (it answers
    with ``isr_changed``/``isr_change_failed``); ``clock_ms`` is a monotonic clock
    (lag and heartbeats); ``on_fatal`` stops the node when the disk fails."""

    def __init__(self, *, partition: str, node: str, path: Path, free_bytes_min: int,
                 send: Callable[[str, object], None],
                 change_isr: Callable[[ChangeIsr], None],
                 clock_ms: Callable[[], int],
                 on_fatal: Callable[[BaseException], None],
                 power_loss_seam: bool = False, disk: ReplicaDisk = SQLITE_DISK,
                 backlog_bytes: Callable[[str], int] = lambda peer: 0) -> None:
        self.partition = partition
        self._disk = disk
        self._power_loss_seam = power_loss_seam
        self.node = node
        self._path = path
        self._free_bytes_min = free_bytes_min
        self._send = send
        self._backlog_bytes = backlog_bytes
        self._change_isr = change_isr
        self._clock_ms = clock_ms
        self._on_fatal = on_fatal
        self._inner = disk.open(path, free_bytes_min=free_bytes_min,
                                power_loss_seam=power_loss_seam)
        last, fence, history, incarnation, generation = _meta_of(
            self._inner.read_meta(META_PREFIX))
        self.replica = Replica(partition, node, last=last, fence_epoch=fence,
                               history=history, incarnation=incarnation or uuid.uuid4().hex,
                               generation=generation)
        self._service: QueueService | None = None
        self._broker_factory: Callable[[], Broker] | None = None
        self._own: dict[int, _Own] = {}
        self._incoming: _Incoming | None = None
        self._installing = False
        self._deferred: list[Persist] = []
        # Writes collected in this turn of the loop, in order (see _persist).
        self._collected: list[tuple[Persist, list[Effect], Sequence[tuple[str, str]],
                                    _Own | None]] = []
        self._flush_scheduled = False
        self._snapshots_out: dict[str, Position] = {}
        # Requests that changed nothing, waiting for the log's end when they were
        # answered to commit (``barrier``): (that seq, since when, their future), in
        # call order. Bounded by the requests in flight, and each by COMMIT_WAIT_MS.
        self._barriers: list[tuple[int, int, asyncio.Future[None]]] = []
        # Per follower, how long the next snapshot to it waits (a back-off, see
        # _SNAPSHOT_RETRY_FIRST_S): absent once one was installed.
        self._snapshot_retry_s: dict[str, float] = {}
        self._snapshot_attempts = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = StoreStats()

    def attach(self, service: QueueService, broker_factory: Callable[[], Broker]) -> None:
        """The service whose core followers' entries are applied to."""
        self._service = service
        self._broker_factory = broker_factory

    # ---- the Store interface --------------------------------------------------------

    def load(self) -> Iterator[Effect]:
        return self._inner.load()

    def has_room(self) -> bool:
        return self._inner.has_room()

    async def resume(self) -> None:
        await self._inner.resume()

    def refusal(self) -> str | None:
        """Why this replica takes no write now, or None (the service's write gate)."""
        r = self.replica
        if self._installing or r.role is Role.REBUILDING:
            return "This node is being rebuilt from its replica set's leader; retry."
        if r.role is not Role.LEADER:
            return "This node does not lead the replica set; retry."
        if not r.writable:
            return ("Too few replicas are in sync for this replica set's durability; "
                    "retry.")
        return None

    async def commit(self, effects: Sequence[Effect],
                     fetch_bodies: Sequence[tuple[str, str]] = ()) -> list[str | None]:
        if self._closed:
            raise StorageError("the store is closed")
        payload = encode_effects(effects)
        try:
            seq, actions = self.replica.propose(payload, self._clock_ms(), send=False)
        except NotWritable as exc:
            # The service's gate let a write through that the replica refuses: the core
            # applied effects no log holds. A bug; stopping is the only safe answer.
            raise StorageError(f"bug: a write reached a replica that refuses it: {exc}") \
                from exc
        own = _Own(effects, fetch_bodies, asyncio.get_running_loop().create_future(),
                   proposed_ms=self._clock_ms())
        self._own[seq] = own
        self._run(actions)
        return await asyncio.shield(own.done)

    async def barrier(self) -> None:
        """``Store.barrier``: once every entry of this replica's log is committed. A new
        leader's log holds entries of earlier epochs that may never have committed;
        its epoch's first entry commits them, and nothing answered from them before
        that may promise them (a deduplicated send would be acknowledged, then lost
        with its entry at the next failover)."""
        if self._closed:
            raise StorageError("the store is closed")
        r = self.replica
        through_seq = r.appended.seq
        if r.role is not Role.LEADER:
            raise WriteRefused(f"{self.node} does not lead {self.partition}; retry.")
        if r.commit_seq >= through_seq:
            return
        done = asyncio.get_running_loop().create_future()
        self._barriers.append((through_seq, self._clock_ms(), done))
        await asyncio.shield(done)

    async def close(self) -> None:
        self._closed = True
        self._fail_own("the node is shutting down")
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: PERF203 - shutting down
                pass
        await self._inner.close()

    # ---- events from the node ------------------------------------------------------

    def run(self, actions: list[Action]) -> None:
        """Carry out actions the node got from the replica (lead, follow, ...)."""
        self._run(actions)

    def abandon_pending(self, reason: str) -> None:
        """Answer every write still waiting to commit with ``WriteRefused`` (uncertain:
        it may still commit). The node does this when it loses its etcd lease."""
        self._fail_own(reason)

    def tick(self) -> None:
        now_ms = self._clock_ms()
        if not self._installing:
            self._run(self.replica.tick(now_ms))
        incoming = self._incoming
        if incoming is not None and now_ms - incoming.last_frame_ms > _SNAPSHOT_ABANDONED_MS:
            log.warning("%s on %s: the snapshot from %s stopped at %d of %d bytes; "
                        "removing it", self.partition, self.node, incoming.sender,
                        incoming.received_bytes, incoming.begin.size_bytes)
            self._incoming = None
            self._disk.discard_image(incoming.staged)
        # Writes waiting longer than COMMIT_WAIT_MS (replicas cut off or stalled): the
        # client is told now, as uncertainly as a timeout would tell it, instead of when
        # the partition heals. The entry may still commit. Oldest first (seq order), so
        # only the expired ones are looked at.
        while self._own:
            seq, own = next(iter(self._own.items()))
            if now_ms - own.proposed_ms < COMMIT_WAIT_MS:
                break
            del self._own[seq]
            if not own.done.done():
                own.done.set_exception(WriteRefused(
                    f"The write was not confirmed by the in-sync replicas within "
                    f"{COMMIT_WAIT_MS // 1000} s; it may still be stored; retry."))
        while self._barriers and now_ms - self._barriers[0][1] >= COMMIT_WAIT_MS:
            _, _, done = self._barriers.pop(0)
            if not done.done():
                done.set_exception(WriteRefused(
                    f"The writes before this request were not confirmed by the in-sync "
                    f"replicas within {COMMIT_WAIT_MS // 1000} s; retry."))

    def on_frame(self, peer: str, frame: object) -> None:
        if self._closed:
            return
        if isinstance(frame, SnapshotBegin | SnapshotChunk | SnapshotEnd):
            self._on_snapshot_frame(peer, frame)
        elif isinstance(frame, SnapshotDone):
            self._on_snapshot_done(peer, frame)
        else:
            from ferrymq._replication._messages import Append, AppendReply, Fence
            if isinstance(frame, Append | AppendReply | Fence):
                if self._installing and isinstance(frame, Append):
                    return  # answered once the snapshot is installed
                self._run(self.replica.receive(frame, self._clock_ms()))

    # ---- actions --------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._settled)

    def _settled(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self._closed:
            # Every expected failure is handled where it happens: this is a bug, and a
            # replica that lost track of a write must not serve on.
            log.error("bug: a task of %s on %s failed", self.partition, self.node,
                      exc_info=exc)
            self._on_fatal(exc)

    def _run(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Send():
                    self._send(action.to, action.message)
                case Persist():
                    self._persist(action)
                case Committed():
                    self._committed(action.seq)
                case ChangeIsr():
                    self._change_isr(action)
                case SendSnapshot():
                    self._spawn(self._send_snapshot(action.to))
                case WaitForSnapshot():
                    log.warning("%s on %s waits for a snapshot: %s", self.partition,
                                self.node, action.reason)
                    self._fail_own(f"this node stopped leading: {action.reason}")
                case SteppedDown():
                    log.warning("%s on %s stepped down: %s", self.partition, self.node,
                                action.reason)
                    self._fail_own(f"this node stopped leading: {action.reason}")
                case _:
                    assert_never(action)

    def _fail_own(self, reason: str) -> None:
        own, self._own = self._own, {}
        for item in own.values():
            if not item.done.done():
                item.done.set_exception(WriteRefused(
                    f"The write may not have been stored ({reason}); retry."))
        barriers, self._barriers = self._barriers, []
        for _, _, done in barriers:
            if not done.done():
                done.set_exception(WriteRefused(
                    f"The writes before this request may not have been stored ({reason}); "
                    "retry."))

    def _committed(self, seq: int) -> None:
        if self._barriers:
            waiting = []
            for through_seq, since_ms, done in self._barriers:
                if through_seq > seq:
                    waiting.append((through_seq, since_ms, done))
                elif not done.done():
                    done.set_result(None)
            self._barriers = waiting
        for s in sorted(k for k in self._own if k <= seq):
            item = self._own.pop(s)
            if item.bodies is None:
                raise InternalError(f"{self.partition}: entry {s} committed before it was "
                                    "durable on its leader")
            if not item.done.done():
                item.done.set_result(item.bodies)

    def _meta(self, fence_epoch: int, through_seq: int) -> dict[str, str]:
        r = self.replica
        return {
            f"{META_PREFIX}last_epoch": str(r.history.epoch_at(through_seq)),
            f"{META_PREFIX}last_seq": str(through_seq),
            f"{META_PREFIX}fence_epoch": str(fence_epoch),
            f"{META_PREFIX}history": json.dumps(_history_upto(r.history, through_seq)),
            f"{META_PREFIX}incarnation": r.incarnation,
            f"{META_PREFIX}generation": str(r.generation),
        }

    def _persist(self, p: Persist) -> None:
        """Collect a write; every write collected in one turn of the event loop goes to
        disk in one transaction (``_flush``), and the leader's proposals of that turn
        go to the followers in one ``Append``: group commit across the replica set."""
        if self._installing:
            self._deferred.append(p)
            return
        effects: list[Effect] = []
        fetches: Sequence[tuple[str, str]] = ()
        own: _Own | None = None
        for entry in p.entries:
            mine = self._own.get(entry.seq)
            if mine is not None and self.replica.role is Role.LEADER:
                own = mine
                effects.extend(mine.effects)
                fetches = mine.fetch_bodies
            elif entry.payload:
                try:
                    decoded = decode_effects(entry.payload)
                except EffectDecodeError as exc:
                    raise InternalError(f"{self.partition}: entry {entry.seq} from the "
                                        f"leader does not decode: {exc}") from exc
                if self._service is None:
                    raise InternalError("a follower's entries arrived before its service")
                broker = self._service.broker
                for effect in decoded:
                    broker.apply(effect)
                effects.extend(decoded)
        self._collected.append((p, effects, fetches, own))
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed:
            return
        collected, self._collected = self._collected, []
        while collected:
            # One transaction per store generation (a snapshot replaces the store).
            generation = collected[0][0].generation
            group = []
            while collected and collected[0][0].generation == generation:
                group.append(collected.pop(0))
            if generation != self.replica.generation:
                # For a store a snapshot is replacing: void (``persisted`` would ignore
                # them), and that store may be closed already.
                continue
            last = group[-1][0]
            fence_epoch = max(p.fence_epoch for p, _, _, _ in group)
            meta = self._meta(fence_epoch, last.through_seq)
            # Handed to the store's writer now, in this turn of the loop (a task would
            # start it on the next one); the task only waits for it.
            try:
                written = self._inner.submit_parts(
                    [(effects, fetches) for _, effects, fetches, _ in group], meta=meta)
            except StorageError as exc:
                if not self._closed:
                    self._on_fatal(exc)
                return
            self._spawn(self._write(group, written, last.through_seq, fence_epoch,
                                    generation))
        if self.replica.role is Role.LEADER:
            self._run(self.replica.pump(self._clock_ms()))

    async def _write(self, group: list[tuple[Persist, list[Effect],
                                             Sequence[tuple[str, str]], _Own | None]],
                     written: tuple[asyncio.Future[Any], Callable[[], list[list[str | None]]]],
                     through_seq: int, fence_epoch: int, generation: int) -> None:
        done, read_bodies = written
        try:
            await asyncio.shield(done)
            bodies = read_bodies()
        except StorageError as exc:
            # A write to a store a snapshot replaced meanwhile may fail (it was closed
            # under it): what it held is in the snapshot, or was never acknowledged.
            # Found by the cluster simulation (seed 290).
            if not self._closed and generation == self.replica.generation:
                self._on_fatal(exc)
            return
        self.stats.commits += len(group)
        self.stats.effects += sum(len(effects) for _, effects, _, _ in group)
        for (_, _, _, own), own_bodies in zip(group, bodies, strict=True):
            if own is not None:
                own.bodies = own_bodies
        if not self._closed:
            self._run(self.replica.persisted(through_seq, fence_epoch, generation))

    # ---- snapshots: the leader's side ----------------------------------------------------

    async def _send_snapshot(self, peer: str) -> None:
        # A name of its own per attempt: an earlier attempt's task, still waiting for
        # its answer, removes its own copy, never this one.
        self._snapshot_attempts += 1
        staged = self._path.with_name(
            f"{self._path.name}{_STAGED_OUT}{peer}.{self._snapshot_attempts}")
        epoch = self.replica.epoch
        delay_s = self._snapshot_retry_s.get(peer, 0.0)
        if delay_s:
            await asyncio.sleep(delay_s)
            if self._closed or self.replica.role is not Role.LEADER \
                    or self.replica.epoch != epoch:
                return  # deposed meanwhile: the new epoch's leader rebuilds the follower
        try:
            size_bytes = await self._inner.image_to(staged)
            last, _, history, _, _ = _meta_of(await asyncio.to_thread(
                self._disk.image_meta, staged))
            self._snapshots_out[peer] = last
            log.warning("%s: sending %s a snapshot at %s (%d bytes)", self.partition, peer,
                        last, size_bytes)
            self._send(peer, SnapshotBegin(self.partition, epoch, last,
                                           tuple(history.starts()), size_bytes))
            crc = await self._stream(peer, staged, size_bytes, epoch, last)
            if crc is None:
                return
            self._send(peer, SnapshotEnd(self.partition, crc))
            self._disk.discard_image(staged)
            await asyncio.sleep(_SNAPSHOT_ANSWER_MIN_S + size_bytes / _SNAPSHOT_BYTES_PER_S)
            # No answer: offer it again when the follower next replies.
            if self._snapshots_out.get(peer) is last:
                del self._snapshots_out[peer]
                self._snapshot_failed(peer)
        except (StorageError, OSError) as exc:
            log.error("%s: no snapshot for %s: %s", self.partition, peer, exc)
            self._snapshots_out.pop(peer, None)
            self._snapshot_failed(peer)
        finally:
            self._disk.discard_image(staged)

    async def _stream(self, peer: str, staged: Path, size_bytes: int, epoch: int,
                      last: Position) -> int | None:
        """Send the copy's chunks, paced and behind the transport's backlog; their CRC,
        or None when the snapshot was given up (this replica no longer leads in
        ``epoch``, or the transport took nothing for ``_SNAPSHOT_STALL_S``)."""
        crc = 0
        offset = 0
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        while offset < size_bytes:
            waited_s = 0.0
            while self._backlog_bytes(peer) > SNAPSHOT_IN_FLIGHT_BYTES_MAX:
                if waited_s >= _SNAPSHOT_STALL_S:
                    log.warning("%s: the snapshot for %s stalled at %d of %d bytes",
                                self.partition, peer, offset, size_bytes)
                    self._snapshots_out.pop(peer, None)
                    self._snapshot_failed(peer)
                    return None
                await asyncio.sleep(_SNAPSHOT_POLL_S)
                waited_s += _SNAPSHOT_POLL_S
            if (self._closed or self.replica.role is not Role.LEADER
                    or self.replica.epoch != epoch or self._snapshots_out.get(peer) is not last):
                self._snapshots_out.pop(peer, None)
                return None  # deposed: the new epoch's leader rebuilds the follower
            chunk = await asyncio.to_thread(self._disk.read_image, staged, offset,
                                            SNAPSHOT_CHUNK_BYTES)
            if not chunk:
                raise StorageError(f"the copy {staged} ended at {offset} of {size_bytes} "
                                   "bytes")
            crc = crc32(chunk, crc)
            self._send(peer, SnapshotChunk(self.partition, offset, chunk))
            offset += len(chunk)
            # Paced: each chunk waits until the pace allows the bytes sent so far.
            ahead_s = offset / SNAPSHOT_BYTES_PER_S_MAX - (loop.time() - started_s)
            await asyncio.sleep(max(ahead_s, 0.0))
        return crc

    def _on_snapshot_done(self, peer: str, done: SnapshotDone) -> None:
        last = self._snapshots_out.pop(peer, None)
        if last is None:
            return
        if done.ok:
            self._snapshot_retry_s.pop(peer, None)
            self._run(self.replica.snapshot_sent(peer, last, done.incarnation,
                                                 self._clock_ms()))
        else:
            log.warning("%s: %s refused the snapshot: %s", self.partition, peer, done.reason)
            self._snapshot_failed(peer)

    def _snapshot_failed(self, peer: str) -> None:
        """The core offers ``peer`` a snapshot again when it next answers; the shell
        sends it after the back-off (``_SNAPSHOT_RETRY_FIRST_S``)."""
        previous_s = self._snapshot_retry_s.get(peer, 0.0)
        self._snapshot_retry_s[peer] = min(max(_SNAPSHOT_RETRY_FIRST_S, 2 * previous_s),
                                           _SNAPSHOT_RETRY_MAX_S)
        self.replica.snapshot_failed(peer)

    # ---- snapshots: the follower's side -----------------------------------------------

    def _on_snapshot_frame(self, peer: str,
                           frame: SnapshotBegin | SnapshotChunk | SnapshotEnd) -> None:
        if isinstance(frame, SnapshotBegin):
            if frame.epoch < self.replica.fence_epoch or self._installing:
                return  # a deposed leader's, or one is being installed
            staged = self._path.with_name(self._path.name + _STAGED_IN)
            self._incoming = None
            try:
                self._disk.stage(staged, frame.size_bytes, self._free_bytes_min)
            except (StorageError, OSError) as exc:
                log.error("%s on %s: refusing a snapshot of %d bytes: %s", self.partition,
                          self.node, frame.size_bytes, exc)
                self._send(peer, SnapshotDone(self.partition, False, "", str(exc)))
                return
            self._incoming = _Incoming(peer, frame, staged, self._clock_ms())
            return
        incoming = self._incoming
        if incoming is None or incoming.sender != peer:
            return
        incoming.last_frame_ms = self._clock_ms()
        if isinstance(frame, SnapshotChunk):
            if frame.offset < incoming.received_bytes:
                return  # a duplicate
            if (frame.offset > incoming.received_bytes
                    or incoming.received_bytes + len(frame.data) > incoming.begin.size_bytes):
                self._refuse_incoming("damaged in transit: a chunk is missing")
                return
            try:
                self._disk.append_image(incoming.staged, frame.data)
            except OSError as exc:
                self._refuse_incoming(f"cannot stage the copy: {exc}")
                return
            incoming.received_bytes += len(frame.data)
            incoming.crc = crc32(frame.data, incoming.crc)
            return
        self._incoming = None
        if incoming.received_bytes != incoming.begin.size_bytes:
            reason = (f"damaged in transit: {incoming.received_bytes} of "
                      f"{incoming.begin.size_bytes} bytes arrived")
        elif incoming.crc != frame.crc32:
            reason = "damaged in transit: the CRC does not match"
        else:
            # Installing from here on, before the task runs: a Begin arriving meanwhile
            # (a new leader's) must not empty the copy about to be installed.
            self._installing = True
            self._spawn(self._install(peer, incoming.begin, incoming.staged))
            return
        self._disk.discard_image(incoming.staged)
        self._send(peer, SnapshotDone(self.partition, False, "", reason))

    def _refuse_incoming(self, reason: str) -> None:
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            self._disk.discard_image(incoming.staged)
            self._send(incoming.sender, SnapshotDone(self.partition, False, "", reason))

    async def _install(self, leader: str, begin: SnapshotBegin, staged: Path) -> None:
        r = self.replica
        generation = r.begin_install()
        self._installing = True
        self._fail_own("replaced by a snapshot of the leader")
        try:
            await self._inner.close()
            await asyncio.to_thread(self._disk.install_image, self._path, staged)
            self._inner = self._disk.open(self._path, free_bytes_min=self._free_bytes_min,
                                          power_loss_seam=self._power_loss_seam)
            r.incarnation = uuid.uuid4().hex
            history = EpochHistory(begin.history)
            meta = {
                f"{META_PREFIX}last_epoch": str(begin.last.epoch),
                f"{META_PREFIX}last_seq": str(begin.last.seq),
                f"{META_PREFIX}fence_epoch": str(r.fence_epoch),
                f"{META_PREFIX}history": json.dumps(history.starts()),
                f"{META_PREFIX}incarnation": r.incarnation,
                f"{META_PREFIX}generation": str(generation),
            }
            await self._inner.commit([], meta=meta)
            if self._service is None or self._broker_factory is None:
                raise InternalError("a snapshot arrived before the service")
            from ferrymq._service import restore_into
            broker = self._broker_factory()
            await asyncio.to_thread(restore_into, broker, self._inner.load())
            self._service.replace_broker(broker)
        except (StorageError, OSError) as exc:
            self._on_fatal(exc)
            return
        finally:
            self._installing = False
        log.warning("%s on %s: installed a snapshot of %s at %s", self.partition, self.node,
                    leader, begin.last)
        self._run(r.installed(begin.last, history))
        if self._deferred:
            # Epoch promises made while installing were written for the replaced store;
            # the install recorded the newest, and this makes the replica know it.
            self._deferred = []
            self._persist(Persist((), r.fence_epoch, r.appended.seq, r.generation))
        self._send(leader, SnapshotDone(self.partition, True, r.incarnation, ""))
