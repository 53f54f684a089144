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
  died before they committed), is sent a snapshot: an image of the leader's SQLite
  database, installed in place of its own, after which its core is restored from it.

The log position (``repl.*`` rows of ``ferry_meta``) is in the same transaction as the
effects, so after a crash the store and the position agree exactly.

What belongs here: executing ``Replica`` actions against the store, the service's core
and the transport; snapshots. Who leads, and the etcd side, is ``_node``'s business.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
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
from ferrymq._storage import StorageError, StoreStats, WriteRefused
from ferrymq._storage._sqlite import SqliteStore, install_image

if TYPE_CHECKING:
    from collections.abc import Iterator, Mapping

    from ferrymq._core._broker import Broker
    from ferrymq._service import QueueService

__all__ = ["COMMIT_WAIT_MS", "META_PREFIX", "SNAPSHOT_CHUNK_BYTES", "InnerStore",
           "ReplicaDisk", "ReplicatedStore"]

log = logging.getLogger("ferrymq.cluster.partition")

META_PREFIX = "repl."
# Bytes of a snapshot per frame: large enough that a copy of a few hundred MiB is a few
# hundred frames, small enough to stay far under the frame limit (16 MiB).
SNAPSHOT_CHUNK_BYTES = 1024 * 1024
# The largest snapshot a follower accepts. A snapshot is held in memory whole on both
# sides (SQLite's serialize), and it travels through the transport's per-peer queue
# (64 MiB), so a store larger than this cannot be rebuilt this way yet
# (docs/architecture.md says so).
SNAPSHOT_BYTES_MAX = 60 * 1024 * 1024
# A snapshot the follower has not confirmed within the larger of these is given up and
# offered again when the follower next answers: its frames may have been dropped (the
# follower was down, or restarted midway). 10 MB/s is far below loopback or a LAN's
# throughput for the copy, its install and the restore of the core.
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


@dataclass(slots=True)
class _Incoming:
    sender: str
    begin: SnapshotBegin
    data: bytearray = field(default_factory=bytearray)


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


def _image_meta(image: bytes) -> dict[str, str]:
    conn = sqlite3.connect(":memory:")
    try:
        # Bytes 18-19 of the header say "WAL mode"; a database in memory has no WAL
        # file, so SQLite refuses to read one marked so. Reading it as a rollback-journal
        # database changes nothing else.
        conn.deserialize(image[:18] + b"\x01\x01" + image[20:])
        rows = conn.execute("SELECT key, value FROM ferry_meta").fetchall()
    finally:
        conn.close()
    return {str(k): str(v) for k, v in rows if str(k).startswith(META_PREFIX)}


class InnerStore(Protocol):
    """What a replica asks of the store under it (``SqliteStore``'s methods)."""

    def read_meta(self, prefix: str) -> dict[str, str]: ...
    def load(self) -> Iterator[Effect]: ...
    def has_room(self) -> bool: ...
    async def resume(self) -> None: ...
    async def close(self) -> None: ...
    async def image(self) -> bytes: ...
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
    the simulated disk of ``ferrymq._sim``. ``install_image`` replaces the closed store
    at ``path`` with an ``image()`` of another replica's, durably."""

    def open(self, path: Path, *, free_bytes_min: int,
             power_loss_seam: bool) -> InnerStore: ...
    def install_image(self, path: Path, image: bytes) -> None: ...
    def image_meta(self, image: bytes) -> dict[str, str]: ...


class _SqliteDisk:
    def open(self, path: Path, *, free_bytes_min: int, power_loss_seam: bool) -> InnerStore:
        # SQLite makes the file, not its directory (one per node for its replica sets).
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteStore(path, free_bytes_min=free_bytes_min,
                           power_loss_seam=power_loss_seam)

    def install_image(self, path: Path, image: bytes) -> None:
        install_image(path, image)

    def image_meta(self, image: bytes) -> dict[str, str]:
        return _image_meta(image)


SQLITE_DISK: ReplicaDisk = _SqliteDisk()


class ReplicatedStore:
    """See the module docstring. ``send(peer, frame)`` hands a frame to the transport;
    ``change_isr(action)`` asks the node to change the in-sync set in etcd (it answers
    with ``isr_changed``/``isr_change_failed``); ``clock_ms`` is a monotonic clock
    (lag and heartbeats); ``on_fatal`` stops the node when the disk fails."""

    def __init__(self, *, partition: str, node: str, path: Path, free_bytes_min: int,
                 send: Callable[[str, object], None],
                 change_isr: Callable[[ChangeIsr], None],
                 clock_ms: Callable[[], int],
                 on_fatal: Callable[[BaseException], None],
                 power_loss_seam: bool = False, disk: ReplicaDisk = SQLITE_DISK) -> None:
        self.partition = partition
        self._disk = disk
        self._power_loss_seam = power_loss_seam
        self.node = node
        self._path = path
        self._free_bytes_min = free_bytes_min
        self._send = send
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

    def _committed(self, seq: int) -> None:
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
        try:
            image = await self._inner.image()
            last, _, history, _, _ = _meta_of(self._disk.image_meta(image))
            if len(image) > SNAPSHOT_BYTES_MAX:
                raise StorageError(f"the store is {len(image)} bytes, more than a snapshot "
                                   f"may be ({SNAPSHOT_BYTES_MAX})")
            self._snapshots_out[peer] = last
            log.warning("%s: sending %s a snapshot at %s (%d bytes)", self.partition, peer,
                        last, len(image))
            self._send(peer, SnapshotBegin(self.partition, self.replica.epoch, last,
                                           tuple(history.starts()), len(image)))
            for start in range(0, len(image), SNAPSHOT_CHUNK_BYTES):
                self._send(peer, SnapshotChunk(self.partition,
                                               image[start:start + SNAPSHOT_CHUNK_BYTES]))
                await asyncio.sleep(0)  # let the transport write between chunks
            self._send(peer, SnapshotEnd(self.partition, crc32(image)))
            await asyncio.sleep(max(_SNAPSHOT_ANSWER_MIN_S,
                                    len(image) / _SNAPSHOT_BYTES_PER_S))
            # No answer: offer it again when the follower next replies.
            if self._snapshots_out.pop(peer, None) is not None:
                self.replica.snapshot_failed(peer)
        except (StorageError, sqlite3.Error) as exc:
            log.error("%s: no snapshot for %s: %s", self.partition, peer, exc)
            self._snapshots_out.pop(peer, None)
            self.replica.snapshot_failed(peer)

    def _on_snapshot_done(self, peer: str, done: SnapshotDone) -> None:
        last = self._snapshots_out.pop(peer, None)
        if last is None:
            return
        if done.ok:
            self._run(self.replica.snapshot_sent(peer, last, done.incarnation,
                                                 self._clock_ms()))
        else:
            log.warning("%s: %s refused the snapshot: %s", self.partition, peer, done.reason)
            self.replica.snapshot_failed(peer)

    # ---- snapshots: the follower's side -----------------------------------------------

    def _on_snapshot_frame(self, peer: str,
                           frame: SnapshotBegin | SnapshotChunk | SnapshotEnd) -> None:
        if isinstance(frame, SnapshotBegin):
            if frame.epoch < self.replica.fence_epoch or self._installing:
                return  # a deposed leader's, or one is being installed
            if frame.size_bytes > SNAPSHOT_BYTES_MAX:
                self._send(peer, SnapshotDone(self.partition, False, "",
                                              f"larger than {SNAPSHOT_BYTES_MAX} bytes"))
                return
            self._incoming = _Incoming(peer, frame)
            return
        incoming = self._incoming
        if incoming is None or incoming.sender != peer:
            return
        if isinstance(frame, SnapshotChunk):
            incoming.data += frame.data
            if len(incoming.data) > incoming.begin.size_bytes:
                self._incoming = None
            return
        self._incoming = None
        image = bytes(incoming.data)
        if len(image) != incoming.begin.size_bytes or crc32(image) != frame.crc32:
            self._send(peer, SnapshotDone(self.partition, False, "", "damaged in transit"))
            return
        self._spawn(self._install(peer, incoming.begin, image))

    async def _install(self, leader: str, begin: SnapshotBegin, image: bytes) -> None:
        r = self.replica
        generation = r.begin_install()
        self._installing = True
        self._fail_own("replaced by a snapshot of the leader")
        try:
            await self._inner.close()
            await asyncio.to_thread(self._disk.install_image, self._path, image)
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
