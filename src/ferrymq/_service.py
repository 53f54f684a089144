"""The I/O shell around the broker core: clock, randomness, durability, long polling
and housekeeping timers.

Every request runs ``Broker.execute`` synchronously on the event loop (so requests
are atomic with respect to each other), then awaits the store's group commit of the
effects it produced. Only then is the response released: nothing is acknowledged
before it is fsynced. Long polls wait on a per-queue notification, woken by effects
that make messages receivable, or by a timer at the next delay/visibility deadline;
nothing polls.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from ferrymq._api import CallContext
from ferrymq._core._broker import Broker, Outcome, RequestInfo
from ferrymq._core._errors import InternalError, SqsError
from ferrymq._core._records import Effect, MessageRemoved, MessageStored, VisibilityChanged
from ferrymq._storage import Store

__all__ = ["QueueService", "SystemEntropy", "wall_clock_ms"]

log = logging.getLogger("ferrymq.service")

# How often idle queues are swept for retention expiry. Expiry is also applied on
# every operation on a queue, so this only bounds how stale the counts of an
# untouched queue can be.
_HOUSEKEEPING_INTERVAL_MS = 1_000
# While a message move task runs, it advances this often: small enough that a
# task's rate limit is smooth, large enough that each step batches many messages.
_MOVE_TASK_INTERVAL_MS = 100


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
                 entropy: Any = None) -> None:
        self.broker = broker
        self.store = store
        self._clock_ms = clock_ms
        self._entropy = entropy or SystemEntropy()
        self._waiters = _Waiters()
        self._housekeeping: asyncio.Task[None] | None = None
        self._closing = False
        self.fatal: BaseException | None = None
        self.on_fatal: Any = None  # callable(exc) set by the CLI to stop the server

    # ---- lifecycle ------------------------------------------------------

    def restore(self) -> int:
        """Rebuild the core from the store. Returns the number of effects replayed."""
        count = 0
        for effect in self.store.load():
            self.broker.apply(effect)
            count += 1
        return count

    def start(self) -> None:
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep())

    async def close(self) -> None:
        self._closing = True
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            try:
                await self._housekeeping
            except asyncio.CancelledError:
                pass
        await self.store.close()

    # ---- requests -------------------------------------------------------

    async def call(self, action: str, params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        info = RequestInfo(base_url=ctx.base_url, sender_id=ctx.access_key_id or ctx.account_id)
        deadline_ms: int | None = None
        while True:
            now_ms = self._clock_ms()
            outcome = self.broker.execute(action, params, now_ms, self._entropy, info)
            seen_version = self._waiters.version(outcome.queue) if outcome.queue else 0
            await self._commit(outcome.effects, outcome.body_fetches)
            if not self._should_wait(action, outcome):
                return outcome.response
            if deadline_ms is None:
                deadline_ms = now_ms + outcome.wait_ms
            remaining_ms = deadline_ms - self._clock_ms()
            if remaining_ms <= 0 or outcome.queue is None:
                return outcome.response
            if self._waiters.version(outcome.queue) == seen_version:
                await self._park(outcome.queue, remaining_ms)

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
    ) -> None:
        if not effects and not body_fetches:
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
        try:
            bodies = await self.store.commit(
                effects, [(queue, message_id) for queue, message_id, _ in body_fetches]
            )
        except Exception as exc:
            if self._closing:
                # A request that outlived the shutdown: the store is closed on purpose,
                # so this is not a storage failure. The client is not acknowledged.
                raise SqsError("InternalFailure", "The server is shutting down.") from exc
            self._die(exc)
            raise SqsError("InternalFailure", "The request could not be stored.") from exc
        for (queue, message_id, message), body in zip(body_fetches, bodies, strict=True):
            if body is None:
                # The core delivered a message the store does not hold: a bug. The
                # message stays in flight and returns at its deadline; nothing is lost.
                raise InternalError(f"no stored body for {queue}/{message_id}")
            message["Body"] = body

    def _die(self, exc: BaseException) -> None:
        # The core has already applied effects the disk refused: serving on would
        # acknowledge state that is not durable. Stop the process instead.
        if self.fatal is None:
            self.fatal = exc
            log.critical("storage failure, shutting down: %r", exc)
            if self.on_fatal is not None:
                self.on_fatal(exc)

    async def _housekeep(self) -> None:
        while not self._closing:
            interval = (
                _MOVE_TASK_INTERVAL_MS if self.broker.has_running_tasks()
                else _HOUSEKEEPING_INTERVAL_MS
            )
            await asyncio.sleep(interval / 1000)
            try:
                effects = self.broker.tick(self._clock_ms(), self._entropy)
                await self._commit(effects)
            except SqsError:
                return
            except Exception:  # a bug: keep serving, but make it loud
                log.exception("housekeeping failed (bug)")
