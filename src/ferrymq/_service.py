"""The I/O shell around the broker core: clock, randomness, durability, long polling
and housekeeping timers.

Every request runs ``Broker.execute`` synchronously on the event loop (so requests
are atomic with respect to each other), then awaits the store's group commit of the
effects it produced. Only then is the response released: nothing is acknowledged
before it is fsynced. A request that fails may still have applied retention (the
``SqsError`` carries those effects): they are committed before the error is answered,
so the store always holds every effect the core applied. Long polls wait on a
per-queue notification, woken by effects that make messages receivable, or by a
timer at the next delay/visibility deadline; nothing polls.

A full disk does not stop the service. When the store reports that it is low on space,
writes are refused with 503 ``ServiceUnavailable`` before the core applies them, and
reads go on. When a commit fails because the disk filled up anyway, the core has
applied effects the disk refused: every request is refused while the core is rebuilt
from the store (the durable truth), and then the same read-only mode applies. A
background task asks the store to resume once a second and writes are accepted again
as soon as it does. Any other storage failure stops the process (``on_fatal``).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ferrymq._api import CallContext
from ferrymq._core import Export
from ferrymq._core._broker import READ_ONLY_ACTIONS, Broker, Outcome, RequestInfo
from ferrymq._core._effects import (
    DedupRecorded,
    Effect,
    MessageRemoved,
    MessageStored,
    MoveTaskUpserted,
    QueueDeleted,
    QueueUpserted,
    VisibilityChanged,
    effect_queue,
)
from ferrymq._core._errors import InternalError, SqsError
from ferrymq._storage import StorageFullError, Store, StoreInconsistentError, WriteRefused

__all__ = ["QueueService", "SystemEntropy", "repair_orphans", "restore_into", "wall_clock_ms"]

log = logging.getLogger("ferrymq.service")

# How often idle queues are swept for retention expiry. Expiry is also applied on
# every operation on a queue, so this only bounds how stale the counts of an
# untouched queue can be.
_HOUSEKEEPING_INTERVAL_MS = 1_000
# While a message move task runs, it advances this often: small enough that a
# task's rate limit is smooth, large enough that each step batches many messages.
_MOVE_TASK_INTERVAL_MS = 100
# While writes are refused for lack of disk space, how often the store is asked to
# resume: often enough that writes come back within a second of space returning, rare
# enough that a statvfs and (after a failed commit) a probe write cost nothing.
_RESUME_INTERVAL_MS = 1_000


def _unavailable() -> SqsError:
    return SqsError("ServiceUnavailable", "The request has failed due to a temporary "
                    "failure of the server: its disk is full.")


def wall_clock_ms() -> int:
    # Wall clock, not monotonic: deadlines are persisted and must mean the same
    # thing after a restart.
    return time.time_ns() // 1_000_000


# Random bytes fetched from the OS per refill of SystemEntropy's pool. One getrandom()
# call per id cost ~15 µs under load (each call releases the GIL to the storage writer
# thread and waits to get it back); 16 KiB serves ~1000 ids per call.
_ENTROPY_POOL_BYTES = 16 * 1024
_UUID_VARIANT = "89ab"
# rand_a of a UUIDv7 is used as a counter within one millisecond (RFC 9562 §6.2,
# method 1); past this many ids in one millisecond the timestamp is advanced by one.
_UUID7_COUNTER_MAX = 0xFFF


class SystemEntropy:
    """Randomness from the OS (a CSPRNG) for the core's ids and receipt nonces,
    drawn from a pool so the hot path makes no system call per id.

    Message ids are UUIDv7 (RFC 9562): a millisecond timestamp, a counter and 62
    random bits. SQS's ids are opaque UUID strings to every SDK; time-ordered ones
    keep the store's message-id index append-mostly, which measured ~12 % more
    batched sends per second (fewer random index pages rewritten per commit)."""

    def __init__(self) -> None:
        self._pool = b""
        self._offset = 0
        self._last_ms = 0
        self._counter = 0

    def _take(self, size: int) -> bytes:
        if self._offset + size > len(self._pool):
            self._pool = os.urandom(_ENTROPY_POOL_BYTES)
            self._offset = 0
        start = self._offset
        self._offset = start + size
        return self._pool[start : start + size]

    def message_id(self) -> str:
        now_ms = time.time_ns() // 1_000_000
        if now_ms > self._last_ms:
            self._last_ms = now_ms
            self._counter = self._take(1)[0]  # random start leaves room to count up
        else:
            self._counter += 1
            if self._counter > _UUID7_COUNTER_MAX:
                self._last_ms += 1
                self._counter = 0
        rand = self._take(8).hex()
        variant = _UUID_VARIANT[int(rand[0], 16) & 3]
        ts = f"{self._last_ms & 0xFFFFFFFFFFFF:012x}"
        return f"{ts[:8]}-{ts[8:]}-7{self._counter:03x}-{variant}{rand[1:4]}-{rand[4:16]}"

    def token(self) -> str:
        return base64.urlsafe_b64encode(self._take(18)).decode("ascii")


class _Waiters:
    """Long pollers parked per queue, oldest first. Each message that becomes
    receivable wakes one of them: waking every poller for one arrival made all but one
    re-run the receive and park again (most of the CPU of a 4-consumer steady state)."""

    def __init__(self) -> None:
        self._by_queue: dict[str, collections.deque[asyncio.Future[None]]] = {}
        # Bumped on every notify, parked pollers or not: a poller whose receive ran
        # before an arrival it then missed (it was awaiting a commit) sees the change
        # and retries instead of sleeping through it.
        self._versions: dict[str, int] = collections.defaultdict(int)

    def version(self, queue: str) -> int:
        return self._versions[queue]

    def park(self, queue: str) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._by_queue.setdefault(queue, collections.deque()).append(fut)
        return fut

    def unpark(self, queue: str, fut: asyncio.Future[None]) -> None:
        waiters = self._by_queue.get(queue)
        if waiters is None:
            return
        try:
            waiters.remove(fut)  # O(parked pollers of this queue), which is small
        except ValueError:
            pass  # already taken by notify
        if not waiters:
            del self._by_queue[queue]

    def wake_all(self) -> None:
        """Wake every parked poller (shutdown, state rebuilt): each re-checks and
        answers instead of waiting out its poll."""
        for waiters in self._by_queue.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)
        self._by_queue.clear()
        for queue in self._versions:
            self._versions[queue] += 1

    def notify(self, queue: str) -> None:
        """Wake the oldest parked poller of ``queue``, if any."""
        self._versions[queue] += 1
        waiters = self._by_queue.get(queue)
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        if waiters is not None and not waiters:
            del self._by_queue[queue]


class QueueService:
    """Implements ``ferrymq._api.Service`` over a ``Broker`` and a ``Store``."""

    def __init__(self, broker: Broker, store: Store, *, clock_ms: Any = wall_clock_ms,
                 entropy: Any = None,
                 broker_factory: Callable[[], Broker] | None = None,
                 write_gate: Callable[[], str | None] | None = None) -> None:
        self.broker = broker
        # Replication: says why this node may not write now (it does not lead, too few
        # replicas are in sync), or None. Checked before the core applies anything.
        self._write_gate = write_gate
        self.store = store
        self._clock_ms = clock_ms
        self._entropy = entropy or SystemEntropy()
        # Builds an empty broker configured like ``broker``: needed to rebuild the core
        # from the store after a commit failed for lack of space. Without one, such a
        # failure stops the process like any other storage failure.
        self._broker_factory = broker_factory
        self._waiters = _Waiters()
        self._housekeeping: asyncio.Task[None] | None = None
        self._closing = False
        # Shutting down: long polls answer at once instead of parking.
        self._draining = False
        # False while writes are refused (disk full); _rebuilding while the core is
        # being rebuilt from the store, when nothing at all can be answered.
        self._writable = True
        self._rebuilding = False
        self._recovery: asyncio.Task[None] | None = None
        self._commits_in_flight = 0
        self._commits_idle = asyncio.Event()
        self._commits_idle.set()
        self.fatal: BaseException | None = None
        self.on_fatal: Any = None  # callable(exc) set by the CLI to stop the server
        # Cluster mode: takes the messages the core leased for a move to a queue on
        # another replica set (``ferrymq._core.Export``), once their leases are durable.
        self.on_exports: Callable[[list[Export]], None] | None = None

    # ---- lifecycle ------------------------------------------------------

    def restore(self) -> int:
        """Rebuild the core from the store. Returns the number of effects replayed.
        Raises ``StoreInconsistentError`` (one line: which rows, which queue) when the
        store's rows cannot make a consistent state."""
        return restore_into(self.broker, self.store.load())

    def start(self) -> None:
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep())

    def begin_shutdown(self) -> None:
        """Answer every parked long poll now (empty, as at the end of its wait) and
        park no more, so a graceful stop answers its clients instead of dropping them."""
        self._draining = True
        self._waiters.wake_all()

    async def close(self) -> None:
        self._closing = True
        self.begin_shutdown()
        for task in (self._housekeeping, self._recovery):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        await self.store.close()

    def replace_broker(self, broker: Broker) -> None:
        """Replication: the store was replaced by a copy of the leader's, and ``broker``
        was restored from it. Parked polls look again at the new core."""
        self.broker = broker
        self._waiters.wake_all()

    @property
    def writable(self) -> bool:
        """False while writes are refused for lack of disk space."""
        return self._writable

    # ---- requests -------------------------------------------------------

    async def call(self, action: str, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        info = RequestInfo(base_url=ctx.base_url, sender_id=ctx.access_key_id or ctx.account_id)
        deadline_ms: int | None = None
        while True:
            now_ms = self._clock_ms()
            if not (self._writable and self.store.has_room()):
                return self._call_read_only(action, params, now_ms, info)
            refusal = self._write_gate() if self._write_gate is not None else None
            if refusal is not None:
                if action not in READ_ONLY_ACTIONS:
                    raise SqsError("ServiceUnavailable", refusal)
                return self.broker.execute(action, params, now_ms, self._entropy, info,
                                           read_only=True).response
            try:
                outcome = self.broker.execute(action, params, now_ms, self._entropy, info)
            except SqsError as exc:
                if exc.effects:
                    # Applied before the request failed (retention): stored before the
                    # error is answered, like any other effects.
                    await self._commit(exc.effects)
                raise
            seen_version = self._waiters.version(outcome.queue) if outcome.queue else 0
            # Taken before any await, so they are this request's own, and handed on
            # only once its effects (the exported messages' leases) are durable.
            exports = self.broker.drain_exports()
            # A write that changed nothing still waits for the writes before it when
            # its answer rests on them: a FIFO send deduplicated (the first send's id),
            # a delete of a message already gone, a receive retried with its attempt
            # id (the first receive's messages). Not a read, nor a receive that took
            # nothing: "no message" promises nothing (SQS's own receives may come back
            # empty while messages wait).
            barrier = action not in READ_ONLY_ACTIONS and not (
                action == "ReceiveMessage" and not outcome.response.get("Messages"))
            await self._commit(outcome.effects, outcome.body_fetches, barrier=barrier)
            if exports:
                self._hand_off(exports)
            if self._draining or not self._should_wait(action, outcome):
                return outcome.response
            if deadline_ms is None:
                deadline_ms = now_ms + outcome.wait_ms
            remaining_ms = deadline_ms - self._clock_ms()
            if remaining_ms <= 0 or outcome.queue is None:
                return outcome.response
            if self._waiters.version(outcome.queue) == seen_version:
                await self._park(outcome.queue, remaining_ms)

    async def wait_visible(self, queue: str, timeout_ms: int) -> bool:
        """True once ``queue`` has a receivable message, False after ``timeout_ms``
        without one (or if there is no such queue). Receives nothing: the long poll of
        a queue of several partitions waits on each partition with this."""
        deadline_ms = self._clock_ms() + timeout_ms
        while True:
            messages = self.broker.queue_messages(queue)
            if messages is None:
                return False
            seen_version = self._waiters.version(queue)
            if messages.approximate_number_of_messages(self._clock_ms()) > 0:
                # A wake-up this took may have been meant for a receive parked here:
                # pass it on (a spurious wake is a re-check; a lost one, a stall).
                self._waiters.notify(queue)
                return True
            remaining_ms = deadline_ms - self._clock_ms()
            if remaining_ms <= 0 or self._draining:
                return False
            if self._waiters.version(queue) == seen_version:
                await self._park(queue, remaining_ms)

    def _call_read_only(self, action: str, params: dict[str, Any], now_ms: int,
                        info: RequestInfo) -> dict[str, Any]:
        """Writes are refused: answer what needs no write, refuse the rest (503)."""
        if self._writable:
            # The store ran low on space: stop before the core applies anything.
            self._degrade("the disk is nearly full")
        if self._rebuilding or action not in READ_ONLY_ACTIONS:
            raise _unavailable()
        outcome = self.broker.execute(action, params, now_ms, self._entropy, info,
                                      read_only=True)
        if outcome.effects:
            raise InternalError(f"read-only {action} produced effects: {outcome.effects!r}")
        return outcome.response

    @staticmethod
    def _should_wait(action: str, outcome: Outcome) -> bool:
        return (
            action == "ReceiveMessage"
            and outcome.wait_ms > 0
            and not outcome.response.get("Messages")
        )

    async def _park(self, queue: str, remaining_ms: int) -> None:
        timeout_ms = remaining_ms
        messages = self.broker.queue_messages(queue)
        if messages is None:
            return
        next_ms = messages.next_visible_ms()
        if next_ms is not None:
            timeout_ms = min(timeout_ms, max(0, next_ms - self._clock_ms()) + 1)
        fut = self._waiters.park(queue)
        try:
            await asyncio.wait_for(fut, timeout_ms / 1000)
        except TimeoutError:
            pass
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                # Woken for a message this poller will never take (its client went
                # away): pass the wake-up on so the message is not left waiting.
                self._waiters.notify(queue)
            raise
        finally:
            self._waiters.unpark(queue, fut)

    async def _commit(
        self,
        effects: Sequence[Effect],
        body_fetches: Sequence[tuple[str, str, dict[str, Any]]] = (),
        *, barrier: bool = False,
    ) -> None:
        if not effects and not body_fetches and not barrier:
            return
        # Wake long pollers before the fsync completes: whatever they receive is
        # committed after these effects, so their own acknowledgement still
        # waits for this data to be durable.
        for effect in effects:
            if isinstance(effect, MessageStored):
                self._waiters.notify(effect.record.queue)
            elif isinstance(effect, VisibilityChanged):
                self._waiters.notify(effect.queue)
            elif isinstance(effect, MessageRemoved) and effect.queue.endswith(".fifo"):
                # Deleting a FIFO group's in-flight message unblocks the group's next
                # one (every FIFO queue name ends in .fifo).
                self._waiters.notify(effect.queue)
        self._commits_in_flight += 1
        self._commits_idle.clear()
        try:
            if effects or body_fetches:
                bodies = await self.store.commit(
                    effects, [(queue, message_id) for queue, message_id, _ in body_fetches]
                )
            else:
                await self.store.barrier()
                bodies = []
        except WriteRefused as exc:
            raise SqsError("ServiceUnavailable", str(exc)) from exc
        except StorageFullError as exc:
            if self._closing:
                raise SqsError("InternalFailure", "The server is shutting down.") from exc
            self._on_disk_full(exc)
            raise _unavailable() from exc
        except Exception as exc:
            if self._closing:
                # A request that outlived the shutdown: the store is closed on purpose,
                # so this is not a storage failure. The client is not acknowledged.
                raise SqsError("InternalFailure", "The server is shutting down.") from exc
            self._die(exc)
            raise SqsError("InternalFailure", "The request could not be stored.") from exc
        finally:
            self._commits_in_flight -= 1
            if self._commits_in_flight == 0:
                self._commits_idle.set()
        for (queue, message_id, message), body in zip(body_fetches, bodies, strict=True):
            if body is None:
                # The core delivered a message the store does not hold: a bug. The
                # message stays in flight and returns at its deadline; nothing is lost.
                raise InternalError(f"no stored body for {queue}/{message_id}")
            message["Body"] = body

    # ---- a full disk ------------------------------------------------------

    def _degrade(self, reason: str) -> None:
        """Refuse writes until the store has room; nothing diverged, so reads go on."""
        if not self._writable:
            return
        self._writable = False
        log.error("%s: refusing writes (503 ServiceUnavailable) until there is room; "
                  "reads go on", reason)
        self._recovery = asyncio.get_running_loop().create_task(self._recover(rebuild=False))

    def _on_disk_full(self, exc: StorageFullError) -> None:
        """A commit failed for lack of space: the core holds effects the disk refused."""
        if self._rebuilding:
            return
        if self._broker_factory is None:
            self._die(exc)
            return
        was_writable = self._writable
        self._writable = False
        self._rebuilding = True
        if was_writable:
            log.error("the disk is full (%s): refusing writes (503 ServiceUnavailable) "
                      "until there is room", exc)
        if self._recovery is not None:
            self._recovery.cancel()
        self._recovery = asyncio.get_running_loop().create_task(self._recover(rebuild=True))

    async def _recover(self, *, rebuild: bool) -> None:
        try:
            if rebuild:
                # Every commit the core issued before the failure must have settled
                # (the store fails them all) before the store is read back.
                await self._commits_idle.wait()
                broker = await asyncio.to_thread(self._rebuilt_broker)
                self.broker = broker
                self._rebuilding = False
                # Parked polls watched the old core's queues: let them look again.
                self._waiters.wake_all()
                log.warning("state rebuilt from the store after the failed write; "
                            "reads are answered again")
            while not self._closing:
                try:
                    await self.store.resume()
                except StorageFullError:
                    await asyncio.sleep(_RESUME_INTERVAL_MS / 1000)
                    continue
                self._writable = True
                log.warning("the disk has room again: accepting writes")
                return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._die(exc)

    def _rebuilt_broker(self) -> Broker:
        """Off the loop: a new core restored from the store. The old one is in use on
        the loop meanwhile, so the new one must share nothing with it."""
        assert self._broker_factory is not None
        broker = self._broker_factory()
        restore_into(broker, self.store.load())
        return broker

    def _die(self, exc: BaseException) -> None:
        # The core has already applied effects the disk refused: serving on would
        # acknowledge state that is not durable. Stop the process instead.
        if self.fatal is None:
            self.fatal = exc
            log.critical("storage failure, shutting down: %r", exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)

    async def housekeep_once(self) -> None:
        """One housekeeping step (what the timer runs): retention on every queue and the
        next step of running move tasks, committed like a request's effects. Raises
        ``SqsError`` when its effects could not be stored."""
        if not (self._writable and self.store.has_room()):
            return  # its effects could not be stored: wait for room
        if self._write_gate is not None and self._write_gate() is not None:
            return  # not the leader: the leader's housekeeping reaches us as effects
        effects = self.broker.tick(self._clock_ms(), self._entropy)
        exports = self.broker.drain_exports()
        await self._commit(effects)
        if exports:
            self._hand_off(exports)

    def _hand_off(self, exports: list[Export]) -> None:
        if self.on_exports is None:
            # Only a core with a directory of other replica sets' queues exports.
            raise InternalError(f"{len(exports)} messages to move to another replica set, "
                                "and nobody to move them")
        self.on_exports(exports)

    async def run_internal(self, command: Callable[[Broker, int, Any], list[Effect]]
                           ) -> None:
        """Run ``command(broker, now_ms, entropy)`` (a core method that is no SQS action:
        copying messages in from another replica set, completing a copy out) and commit
        its effects, under the same write gate as a request."""
        if not (self._writable and self.store.has_room()):
            raise _unavailable()
        refusal = self._write_gate() if self._write_gate is not None else None
        if refusal is not None:
            raise SqsError("ServiceUnavailable", refusal)
        await self._commit(command(self.broker, self._clock_ms(), self._entropy))

    async def read_bodies(self, wanted: Sequence[tuple[str, str]]) -> list[str | None]:
        """Bodies of messages that are not in memory, read from the store."""
        return list(await self.store.commit([], wanted))

    async def _housekeep(self) -> None:
        while not self._closing:
            interval = (
                _MOVE_TASK_INTERVAL_MS if self.broker.has_running_tasks()
                else _HOUSEKEEPING_INTERVAL_MS
            )
            await asyncio.sleep(interval / 1000)
            try:
                await self.housekeep_once()
            except SqsError:
                if self.fatal is not None:
                    return
                # Refused for lack of space: the recovery task takes it from here.
            except Exception:  # a bug: keep serving, but make it loud
                log.exception("housekeeping failed (bug)")


def restore_into(broker: Broker, effects: Iterable[Effect],
                 orphans: dict[str, list[int]] | None = None) -> int:
    """Apply a store's ``load()`` to an empty ``broker``; the number of effects applied.

    Rows of a queue the store does not hold (what two servers sharing one file leave
    behind) are counted rather than applied, so the error names every such queue at
    once; anything else the core refuses is reported with the record that broke it.
    With ``orphans`` given, those rows are counted into it (queue -> [messages,
    deduplication entries]) and skipped instead of raising. A missing queue's receive
    attempts and high-water marks are skipped without being counted: they mean nothing
    without its messages, and both ways of repairing deal with them (re-creating the
    queue keeps them, dropping its rows deletes them)."""
    count = 0
    collect = orphans is not None
    if orphans is None:
        orphans = {}
    for effect in effects:
        if not isinstance(effect, QueueUpserted | QueueDeleted | MoveTaskUpserted):
            queue = effect_queue(effect)
            if queue is not None and not broker.queue_exists(queue):
                if isinstance(effect, MessageStored | DedupRecorded):
                    orphans.setdefault(queue, [0, 0])[isinstance(effect, DedupRecorded)] += 1
                continue
        try:
            broker.apply(effect)
        except Exception as exc:
            raise StoreInconsistentError(
                f"the store cannot be restored: {_describe(effect)} was refused: {exc}"
            ) from exc
        count += 1
    if orphans and not collect:
        parts = [f"{messages} messages and {dedup} deduplication entries of queue {name!r}"
                 for name, (messages, dedup) in sorted(orphans.items())]
        raise StoreInconsistentError(
            f"the store is inconsistent: it holds {'; '.join(parts)}, but no such queue "
            "(was the data directory used by two servers at once?)")
    return count


async def repair_orphans(store: Store, mode: str) -> list[str]:
    """Mend rows of queues the store does not hold (``ferrymq repair``): ``"adopt"``
    re-creates each such queue with default attributes, so its messages are served
    again; ``"drop"`` deletes its rows. Returns one line per queue mended."""
    broker = Broker(purge_interval_ms=0, recreate_delay_ms=0)
    orphans: dict[str, list[int]] = {}
    restore_into(broker, store.load(), orphans)
    lines = []
    for name, (messages, dedup) in sorted(orphans.items()):
        what = f"{messages} messages and {dedup} deduplication entries"
        if mode == "adopt":
            attributes = {"FifoQueue": "true"} if name.endswith(".fifo") else {}
            try:
                outcome = broker.execute(
                    "CreateQueue", {"QueueName": name, "Attributes": attributes},
                    wall_clock_ms(), SystemEntropy(),
                    RequestInfo(base_url="http://localhost", sender_id="ferrymq-repair"))
            except SqsError as exc:
                raise StoreInconsistentError(
                    f"queue {name!r} cannot be re-created: {exc.message}") from exc
            await store.commit(outcome.effects)
            lines.append(f"queue {name!r} re-created with default attributes; its {what} "
                         "are kept")
        elif mode == "drop":
            await store.commit([QueueDeleted(name, wall_clock_ms())])
            lines.append(f"queue {name!r}: its {what} are deleted")
        else:
            raise ValueError(f"unknown repair mode {mode!r}")
    return lines


def _describe(effect: Effect) -> str:
    if isinstance(effect, MessageStored):
        return (f"message {effect.record.message_id} of queue {effect.record.queue!r}")
    name = type(effect).__name__
    queue = getattr(effect, "queue", None) or getattr(getattr(effect, "record", None),
                                                       "name", None)
    return f"{name} of queue {queue!r}" if queue else name
