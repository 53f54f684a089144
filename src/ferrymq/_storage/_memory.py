"""An in-memory ``Store``: the same semantics as the SQLite store, no durability.

For tests and for the explicit ``--storage memory`` development mode. Its contents
live as long as the object, so "re-opening" means calling ``load`` on the same object.
Iteration order of every table matches the SQLite store (dicts keep first-insertion
position on update, like a rowid table upserted in place).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Iterator, Sequence
from typing import assert_never

from ferrymq._core._effects import (
    DedupRecorded,
    Effect,
    HighWaterMarks,
    MessageReceived,
    MessageRemoved,
    MessageStored,
    MoveTaskUpserted,
    QueueDeleted,
    QueuePurged,
    QueueUpserted,
    ReceiveAttemptRecorded,
    VisibilityChanged,
    dedup_horizon_ms,
)
from ferrymq._core._records import MessageRecord, MoveTaskRecord, QueueRecord
from ferrymq._storage._base import StorageError, StoreStats

__all__ = ["MemoryStore"]


class MemoryStore:
    """Effects applied to dicts. ``close`` only refuses further commits; ``reopen``
    undoes that so tests can treat it like a file that was closed and opened again."""

    def __init__(self) -> None:
        self._stats = StoreStats()
        self._closed = False
        self._queues: dict[str, QueueRecord] = {}
        self._deleted: dict[str, int] = {}
        self._tasks: dict[str, MoveTaskRecord] = {}
        self._messages: dict[tuple[str, str], MessageRecord] = {}
        self._message_ids: dict[str, set[str]] = {}  # per queue, for purge/delete
        self._dedup: dict[tuple[str, str], DedupRecorded] = {}
        self._dedup_keys: dict[str, set[str]] = {}
        # Per queue (expires_at_ms, key), possibly stale after an upsert; forgetting pops
        # from the front and skips entries that no longer match, so each record costs
        # O(log n) amortized instead of a scan of the whole queue.
        self._dedup_expiry: dict[str, list[tuple[int, str]]] = {}
        # Per queue, oldest first (the order the core forgets them in).
        self._attempts: dict[str, dict[str, ReceiveAttemptRecorded]] = {}
        # Per queue: [highest sequence number, dedup horizon].
        self._marks: dict[str, list[int]] = {}

    @property
    def stats(self) -> StoreStats:
        return self._stats

    def reopen(self) -> MemoryStore:
        self._closed = False
        return self

    def load(self) -> Iterator[Effect]:
        effects: list[Effect] = [QueueUpserted(q) for q in self._queues.values()]
        effects.extend(QueueDeleted(name, at_ms) for name, at_ms in self._deleted.items())
        effects.extend(MoveTaskUpserted(t) for t in self._tasks.values())
        effects.extend(HighWaterMarks(queue, sequence, horizon)
                       for queue, (sequence, horizon) in self._marks.items())
        effects.extend(MessageStored(m) for m in self._messages.values())
        effects.extend(self._dedup.values())
        for attempts in self._attempts.values():
            effects.extend(attempts.values())
        return iter(effects)

    async def commit(
        self, effects: Sequence[Effect], fetch_bodies: Sequence[tuple[str, str]] = ()
    ) -> list[str | None]:
        return self.commit_now(effects, fetch_bodies)

    def commit_now(
        self, effects: Sequence[Effect], fetch_bodies: Sequence[tuple[str, str]] = ()
    ) -> list[str | None]:
        """``commit`` at once, without awaiting: for a caller that decides by itself
        when a write becomes durable (the simulated disk of ``ferrymq._sim``)."""
        if self._closed:
            raise StorageError("the store is closed")
        for effect in effects:
            self._apply(effect)
        self._stats.commits += 1
        self._stats.transactions += 1
        self._stats.effects += len(effects)
        bodies: list[str | None] = []
        for key in fetch_bodies:
            record = self._messages.get(key)
            bodies.append(None if record is None else record.body)
        return bodies

    async def barrier(self) -> None:
        if self._closed:
            raise StorageError("the store is closed")

    def has_room(self) -> bool:
        return True  # memory is not the disk: a full disk never stops this store

    async def resume(self) -> None:
        if self._closed:
            raise StorageError("the store is closed")

    async def close(self) -> None:
        self._closed = True

    # ---- effect application ------------------------------------------------------

    def _apply(self, effect: Effect) -> None:
        match effect:
            case MessageStored(record=m, moved_from=moved_from):
                if m.sequence_number is not None:
                    self._raise_marks(m.queue, m.sequence_number, 0)
                if m.body is None:
                    source = (None if moved_from is None
                              else self._messages.get((moved_from, m.message_id)))
                    if source is None:
                        return  # nowhere to take the body from: no message is stored
                    m = dataclasses.replace(m, body=source.body)
                self._messages[(m.queue, m.message_id)] = m
                self._message_ids.setdefault(m.queue, set()).add(m.message_id)
            case MessageReceived():
                key = (effect.queue, effect.message_id)
                old = self._messages.get(key)
                if old is not None:
                    self._messages[key] = dataclasses.replace(
                        old,
                        receipt_token=effect.receipt_token,
                        visible_at_ms=effect.visible_at_ms,
                        receive_count=effect.receive_count,
                        first_receive_ms=effect.first_receive_ms,
                        received_ms=effect.received_ms,
                    )
            case VisibilityChanged():
                key = (effect.queue, effect.message_id)
                old = self._messages.get(key)
                if old is not None:
                    self._messages[key] = dataclasses.replace(
                        old, visible_at_ms=effect.visible_at_ms
                    )
            case MessageRemoved():
                if self._messages.pop((effect.queue, effect.message_id), None) is not None:
                    self._message_ids[effect.queue].discard(effect.message_id)
            case DedupRecorded():
                self._record_dedup(effect)
            case ReceiveAttemptRecorded():
                attempts = self._attempts.setdefault(effect.queue, {})
                for attempt_id in effect.forgotten:
                    attempts.pop(attempt_id, None)
                attempts.pop(effect.attempt_id, None)  # re-recorded: now the newest
                attempts[effect.attempt_id] = dataclasses.replace(effect, forgotten=())
            case QueuePurged():
                self._drop_queue_contents(effect.queue)
            case QueueUpserted(record=q):
                self._queues[q.name] = q
                self._deleted.pop(q.name, None)
            case QueueDeleted():
                self._queues.pop(effect.name, None)
                self._drop_queue_contents(effect.name)
                self._marks.pop(effect.name, None)
                self._deleted[effect.name] = effect.deleted_at_ms
            case MoveTaskUpserted(record=t):
                self._tasks[t.task_handle] = t
            case HighWaterMarks():
                self._raise_marks(effect.queue, effect.sequence_number, effect.dedup_horizon_ms)
                self._forget_dedup(effect.queue)
            case _:
                assert_never(effect)

    def _raise_marks(self, queue: str, sequence_number: int, horizon_ms: int) -> None:
        marks = self._marks.get(queue)
        if marks is None:
            self._marks[queue] = [sequence_number, horizon_ms]
            return
        if sequence_number > marks[0]:
            marks[0] = sequence_number
        if horizon_ms > marks[1]:
            marks[1] = horizon_ms

    def _record_dedup(self, entry: DedupRecorded) -> None:
        queue = entry.queue
        self._raise_marks(queue, entry.sequence_number, dedup_horizon_ms(entry))
        self._dedup[(queue, entry.key)] = entry
        self._dedup_keys.setdefault(queue, set()).add(entry.key)
        heapq.heappush(self._dedup_expiry.setdefault(queue, []),
                       (entry.expires_at_ms, entry.key))
        self._forget_dedup(queue)

    def _forget_dedup(self, queue: str) -> None:
        """Forget the queue's entries that expire at or before its dedup horizon."""
        heap = self._dedup_expiry.get(queue)
        marks = self._marks.get(queue)
        if heap is None or marks is None:
            return
        horizon_ms = marks[1]
        while heap and heap[0][0] <= horizon_ms:
            expires_at_ms, key = heapq.heappop(heap)
            current = self._dedup.get((queue, key))
            if current is not None and current.expires_at_ms == expires_at_ms:
                del self._dedup[(queue, key)]
                self._dedup_keys[queue].discard(key)

    def _drop_queue_contents(self, queue: str) -> None:
        for message_id in self._message_ids.pop(queue, ()):
            del self._messages[(queue, message_id)]
        for key in self._dedup_keys.pop(queue, ()):
            del self._dedup[(queue, key)]
        self._dedup_expiry.pop(queue, None)
        self._attempts.pop(queue, None)
