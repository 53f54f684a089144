"""The message state machine of one queue (standard or FIFO), sans I/O.

What belongs here: everything that depends on a queue's messages — send, receive,
visibility, delete, delay, retention, FIFO groups and deduplication, redrive into a
dead-letter queue. Time arrives as ``now_ms`` and randomness through ``Entropy``.

Every command computes effect records, applies them with ``apply`` and returns them;
``apply`` alone rebuilds the same state (restore, replication followers). The only
state that is not carried by effects is derived or deliberately volatile:

* which not-yet-visible messages have been promoted to visible (lazy, recomputed
  from ``visible_at_ms`` on the next command),
* the ReceiveRequestAttemptId cache (in memory only, like a retry window: after a
  restart a retried receive simply receives afresh),
* the time of the latest receive of each message, used only for the 12-hour cap of
  ChangeMessageVisibility (``MessageReceived`` does not carry it; after a restore the
  cap is exact for messages received once and is not enforced otherwise).

Bodies are held in memory only while a ``BodyBudget`` shared by all queues has room;
beyond it an entry keeps its metadata and ``body=None``, and a receive renders such a
message with ``"Body": None`` for the I/O shell to fill from the store. Which bodies
stay in memory is decided when a message arrives (first come, first kept): the
oldest messages are the next to be received, so they are the ones worth keeping.

``now_ms`` is assumed not to go backwards between commands on one queue.
"""

from __future__ import annotations

import heapq
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ._errors import ERRORS, SqsError, invalid_parameter, missing_parameter
from ._messages import (
    content_dedup_id,
    decode_receipt_handle,
    encode_receipt_handle,
    int_param,
    md5_of_attributes,
    md5_of_body,
    message_size_bytes,
    parse_message_attributes,
    parse_system_attributes,
    select_message_attributes,
    select_system_attribute_names,
    validate_body,
    validate_fifo_id,
)
from ._records import (
    AttributeValue,
    DedupRecorded,
    Effect,
    Entropy,
    MessageReceived,
    MessageRecord,
    MessageRemoved,
    MessageStored,
    QueuePurged,
    VisibilityChanged,
)
from ._settings import QueueSettings

__all__ = [
    "BATCH_ENTRIES_MAX",
    "BATCH_PAYLOAD_BYTES_MAX",
    "BodyBudget",
    "DEDUP_WINDOW_MS",
    "INFLIGHT_MESSAGES_MAX",
    "MessageQueue",
]

VISIBILITY_TIMEOUT_S_MAX = 43_200  # 12 hours, SQS's ceiling for any visibility timeout
DELAY_S_MAX = 900
WAIT_TIME_S_MAX = 20
RECEIVE_MESSAGES_MAX = 10
BATCH_ENTRIES_MAX = 10
BATCH_PAYLOAD_BYTES_MAX = 1_048_576
DEDUP_WINDOW_MS = 300_000  # FIFO deduplication interval, 5 minutes
ATTEMPT_WINDOW_MS = 300_000  # ReceiveRequestAttemptId retry window, 5 minutes
# SQS's in-flight ceiling per queue (standard: OverLimit; FIFO: empty receives).
INFLIGHT_MESSAGES_MAX = 120_000
# Bound on remembered ReceiveRequestAttemptIds: 5 minutes of FIFO receives at SQS's
# 300 TPS is 90,000; a client inventing a fresh id per call cannot grow memory beyond.
ATTEMPTS_MAX = 100_000
# Sequence numbers start at now_ms * this, so they keep increasing across restarts
# without a persisted counter: 10^6 sends per ms of headroom, 19 decimal digits, and
# below 2^63 until the year 2262, so every store (SQLite INTEGER) holds it exactly.
_SEQUENCE_PER_MS = 1_000_000

_READY, _DELAYED, _INFLIGHT = 0, 1, 2
# Lazily deleted heap entries are compacted once stale ones outnumber live ones by
# this much, so a heap never holds more than about twice its live messages.
_SLACK = 64

_BATCH_ID = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_BATCH_ID_CHARS_MAX = 80


class BodyBudget:
    """How many bytes of message bodies the queues sharing it may hold in memory.

    Counted with ``sys.getsizeof`` (the real size of the ``str``, header included), so
    the bound holds for non-ASCII bodies too. ``bytes_max=None``: no bound."""

    __slots__ = ("bytes_max", "bytes_used")

    def __init__(self, bytes_max: int | None = None) -> None:
        assert bytes_max is None or bytes_max >= 0, bytes_max
        self.bytes_max = bytes_max
        self.bytes_used = 0

    def admit(self, body: str) -> int:
        """Reserve room for ``body``: its size, or 0 if it does not fit."""
        size = sys.getsizeof(body)
        if self.bytes_max is not None and self.bytes_used + size > self.bytes_max:
            return 0
        self.bytes_used += size
        return size

    def release(self, size: int) -> None:
        self.bytes_used -= size
        assert self.bytes_used >= 0, "released more body bytes than were admitted"


class _Entry:
    """One live message: its immutable content plus mutable receive state."""

    __slots__ = (
        "record",
        "body_bytes",
        "order",
        "gen",
        "state",
        "visible_at_ms",
        "receive_count",
        "first_receive_ms",
        "receipt_token",
        "received_ms",
        "removed",
        "group",
    )

    def __init__(self, record: MessageRecord, order: int, body_bytes: int) -> None:
        self.record = record
        self.body_bytes = body_bytes  # held in the body budget; 0 when body is None
        self.order = order  # delivery order: FIFO sequence number, else arrival counter
        self.gen = 0  # bumped on every re-indexing; heap entries with an old gen are stale
        self.state = _DELAYED
        self.visible_at_ms = record.visible_at_ms
        self.receive_count = record.receive_count
        self.first_receive_ms = record.first_receive_ms
        self.receipt_token = record.receipt_token
        self.received_ms: int | None = None
        self.removed = False
        self.group: _Group | None = None

    def snapshot(self) -> MessageRecord:
        return replace(
            self.record,
            visible_at_ms=self.visible_at_ms,
            receive_count=self.receive_count,
            first_receive_ms=self.first_receive_ms,
            receipt_token=self.receipt_token,
        )


class _Group:
    """A FIFO message group: its messages in sequence order and how many are in flight."""

    __slots__ = ("name", "entries", "inflight", "queued")

    def __init__(self, name: str) -> None:
        self.name = name
        # Removed entries stay until they reach the head (lazy deletion keeps
        # deletes O(1)); bounded by the group's messages.
        self.entries: deque[_Entry] = deque()
        self.inflight = 0
        self.queued = False  # has an entry in MessageQueue._groups_ready

    def head(self) -> _Entry | None:
        entries = self.entries
        while entries and entries[0].removed:
            entries.popleft()
        return entries[0] if entries else None


@dataclass(slots=True)
class _Attempt:
    expires_at_ms: int
    received: list[tuple[_Entry, str]]


@dataclass(frozen=True, slots=True)
class _SendPlan:
    """A validated send, before any state is touched."""

    body: str
    attributes: tuple[tuple[str, AttributeValue], ...]
    trace_header: str | None
    delay_ms: int
    group_id: str | None
    dedup_id: str | None
    size_bytes: int


class _EntryFailure(Exception):
    """Carries a per-entry SqsError out of a batch entry without aborting the batch."""


def _failed_entry(entry_id: str, exc: SqsError) -> dict[str, Any]:
    code = ERRORS[exc.shape][0]
    return {"Id": entry_id, "SenderFault": exc.sender_fault, "Code": code, "Message": exc.message}


class MessageQueue:
    """All messages of one queue and the commands on them. See the module docstring."""

    inflight_messages_max = INFLIGHT_MESSAGES_MAX  # an instance may lower it (tests)

    def __init__(
        self, name: str, arn: str, settings: QueueSettings, budget: BodyBudget | None = None
    ) -> None:
        self.name = name
        self.arn = arn
        self.settings = settings
        self._budget = BodyBudget() if budget is None else budget
        self._fifo = settings.fifo  # the queue type never changes
        self._messages: dict[str, _Entry] = {}
        self._counts = [0, 0, 0]  # per state: ready, delayed, in flight
        self._gen = 0
        self._order = 0
        self._now_high_ms = 0  # latest now_ms seen: states are exact up to this time
        self._last_sequence = 0
        # Heaps with lazy deletion; each is bounded by live messages plus stale
        # entries that are discarded when they surface.
        self._pending: list[tuple[int, int, _Entry]] = []  # (visible_at_ms, gen, entry)
        self._ready: list[tuple[int, int, _Entry]] = []  # standard: (order, gen, entry)
        self._by_sent: list[tuple[int, int, _Entry]] = []  # retention: (sent_ms, gen0, entry)
        # FIFO only.
        self._groups: dict[str, _Group] = {}
        self._groups_ready: list[tuple[int, int, _Group]] = []  # (head order, tiebreak, group)
        self._dedup: dict[str, DedupRecorded] = {}
        self._dedup_expiry: list[tuple[int, str]] = []  # (expires_at_ms, key)
        self._attempts: dict[str, _Attempt] = {}

    # ---- effects -----------------------------------------------------------

    def apply(self, effect: Effect) -> None:
        if isinstance(effect, MessageStored):
            assert effect.record.queue == self.name, effect
            self._apply_stored(effect.record)
        elif isinstance(effect, MessageReceived):
            assert effect.queue == self.name, effect
            self._apply_received(effect, None)
        elif isinstance(effect, VisibilityChanged):
            assert effect.queue == self.name, effect
            entry = self._messages.get(effect.message_id)
            if entry is not None:
                self._place(entry, effect.visible_at_ms)
        elif isinstance(effect, MessageRemoved):
            assert effect.queue == self.name, effect
            entry = self._messages.get(effect.message_id)
            if entry is not None:
                self._drop(entry)
        elif isinstance(effect, DedupRecorded):
            assert effect.queue == self.name, effect
            self._dedup[effect.key] = effect
            heapq.heappush(self._dedup_expiry, (effect.expires_at_ms, effect.key))
            self._last_sequence = max(self._last_sequence, effect.sequence_number)
        elif isinstance(effect, QueuePurged):
            assert effect.queue == self.name, effect
            self._apply_purged()
        else:
            raise AssertionError(f"effect {effect!r} does not belong to a message queue")

    def _apply_stored(self, record: MessageRecord) -> None:
        old = self._messages.get(record.message_id)
        if old is not None:
            self._drop(old)
        if self._fifo:
            assert record.sequence_number is not None and record.group_id is not None, record
            order = record.sequence_number
        else:
            self._order += 1
            order = self._order
        if record.sequence_number is not None:
            self._last_sequence = max(self._last_sequence, record.sequence_number)
        body_bytes = 0
        if record.body is not None:
            body_bytes = self._budget.admit(record.body)
            if not body_bytes:
                record = record.without_body()  # the store holds it
        entry = _Entry(record, order, body_bytes)
        self._messages[record.message_id] = entry
        self._counts[_DELAYED] += 1  # _place moves it to its real state
        if self._fifo:
            assert record.group_id is not None
            group = self._groups.get(record.group_id)
            if group is None:
                group = self._groups[record.group_id] = _Group(record.group_id)
            entry.group = group
            if group.entries and group.entries[-1].order > order:
                # Out-of-order restore: keep the group sorted (rare, O(group)).
                group.entries = deque(sorted([*group.entries, entry], key=lambda e: e.order))
            else:
                group.entries.append(entry)
        self._gen += 1
        heapq.heappush(self._by_sent, (record.sent_ms, self._gen, entry))
        self._place(entry, record.visible_at_ms)

    def _apply_received(self, effect: MessageReceived, received_ms: int | None) -> None:
        entry = self._messages.get(effect.message_id)
        if entry is None:
            return
        entry.receipt_token = effect.receipt_token
        entry.receive_count = effect.receive_count
        entry.first_receive_ms = effect.first_receive_ms
        if received_ms is None and effect.receive_count == 1:
            received_ms = effect.first_receive_ms  # exact: the first receive is the latest
        entry.received_ms = received_ms
        self._place(entry, effect.visible_at_ms)

    def _apply_purged(self) -> None:
        self.release_bodies()
        for entry in self._messages.values():
            entry.removed = True
        self._messages.clear()
        self._counts = [0, 0, 0]
        self._pending.clear()
        self._ready.clear()
        self._by_sent.clear()
        self._groups.clear()
        self._groups_ready.clear()
        self._dedup.clear()
        self._dedup_expiry.clear()
        self._attempts.clear()

    def release_bodies(self) -> None:
        """Give every body this queue holds back to the budget (purge, queue deletion)."""
        for entry in self._messages.values():
            self._release_body(entry)

    def _release_body(self, entry: _Entry) -> None:
        if entry.body_bytes:
            self._budget.release(entry.body_bytes)
            entry.body_bytes = 0

    # ---- indexes -----------------------------------------------------------

    def _set_state(self, entry: _Entry, state: int) -> None:
        self._counts[entry.state] -= 1
        self._counts[state] += 1
        group = entry.group
        if group is not None:
            group.inflight += (state == _INFLIGHT) - (entry.state == _INFLIGHT)
            assert group.inflight >= 0
        entry.state = state

    def _place(self, entry: _Entry, visible_at_ms: int) -> None:
        """Index ``entry`` as visible from ``visible_at_ms`` on."""
        entry.visible_at_ms = visible_at_ms
        self._gen += 1
        entry.gen = self._gen
        if visible_at_ms <= self._now_high_ms:
            self._make_ready(entry)
            return
        self._set_state(entry, _DELAYED if entry.receipt_token is None else _INFLIGHT)
        pending = self._pending
        heapq.heappush(pending, (visible_at_ms, entry.gen, entry))
        if len(pending) > 2 * (self._counts[_DELAYED] + self._counts[_INFLIGHT]) + _SLACK:
            self._pending = [i for i in pending if not i[2].removed and i[2].gen == i[1]]
            heapq.heapify(self._pending)

    def _make_ready(self, entry: _Entry) -> None:
        self._set_state(entry, _READY)
        if entry.group is None:
            ready = self._ready
            heapq.heappush(ready, (entry.order, entry.gen, entry))
            if len(ready) > 2 * self._counts[_READY] + _SLACK:
                self._ready = [
                    i for i in ready
                    if not i[2].removed and i[2].gen == i[1] and i[2].state == _READY
                ]
                heapq.heapify(self._ready)
        else:
            self._queue_group(entry.group)

    def _queue_group(self, group: _Group) -> None:
        """Offer a FIFO group to receivers if it can deliver now."""
        if group.queued or group.inflight:
            return
        head = group.head()
        if head is None or head.state != _READY:
            return
        group.queued = True
        self._gen += 1
        heapq.heappush(self._groups_ready, (head.order, self._gen, group))

    def _drop(self, entry: _Entry) -> None:
        assert not entry.removed
        self._set_state(entry, _READY)  # leaves the in-flight count of its group
        self._counts[_READY] -= 1
        entry.removed = True
        self._release_body(entry)
        del self._messages[entry.record.message_id]
        if len(self._by_sent) > 2 * len(self._messages) + _SLACK:
            # Deleted messages would otherwise stay referenced (bodies included)
            # until their retention time; rebuilding is amortised O(1) per delete.
            self._by_sent = [i for i in self._by_sent if not i[2].removed]
            heapq.heapify(self._by_sent)
        group = entry.group
        if group is not None:
            if group.head() is None:
                if self._groups.get(group.name) is group:
                    del self._groups[group.name]
            else:
                self._queue_group(group)

    def _advance(self, now_ms: int) -> None:
        """Promote every message whose visibility time has come."""
        if now_ms > self._now_high_ms:
            self._now_high_ms = now_ms
        pending = self._pending
        now_ms = self._now_high_ms
        while pending and pending[0][0] <= now_ms:
            _, gen, entry = heapq.heappop(pending)
            if entry.removed or entry.gen != gen:
                continue
            self._make_ready(entry)

    # ---- public queries ----------------------------------------------------

    def counts(self, now_ms: int) -> tuple[int, int, int]:
        """(visible, in flight, delayed) — ApproximateNumberOfMessages{,NotVisible,Delayed}."""
        self._advance(now_ms)
        return self._counts[_READY], self._counts[_INFLIGHT], self._counts[_DELAYED]

    def approximate_number_of_messages(self, now_ms: int) -> int:
        return self.counts(now_ms)[0]

    def next_visible_ms(self) -> int | None:
        pending = self._pending
        while pending:
            _, gen, entry = pending[0]
            if entry.removed or entry.gen != gen:
                heapq.heappop(pending)
                continue
            return pending[0][0]
        return None

    def snapshot(self) -> list[MessageRecord]:
        """Every message's durable state, sorted by message id (tests, debugging)."""
        return sorted(
            (entry.snapshot() for entry in self._messages.values()),
            key=lambda record: record.message_id,
        )

    def dedup_entries(self, now_ms: int) -> list[DedupRecorded]:
        """Live FIFO deduplication entries, sorted by key."""
        return sorted(
            (d for d in self._dedup.values() if d.expires_at_ms > now_ms), key=lambda d: d.key
        )

    # ---- maintenance commands ----------------------------------------------

    def purge(self, now_ms: int) -> list[Effect]:
        effects: list[Effect] = [QueuePurged(self.name, now_ms)]
        self.apply(effects[0])
        return effects

    def expire(self, now_ms: int) -> list[Effect]:
        """Retention: drop messages sent at least retention_ms ago (in flight too)."""
        effects: list[Effect] = []
        cutoff_ms = now_ms - self.settings.retention_ms
        # Re-read self._by_sent on every turn: removals may compact (replace) it.
        while self._by_sent and self._by_sent[0][0] <= cutoff_ms:
            _, _, entry = heapq.heappop(self._by_sent)
            if entry.removed:
                continue
            effect = MessageRemoved(self.name, entry.record.message_id)
            self.apply(effect)
            effects.append(effect)
        expiry = self._dedup_expiry
        while expiry and expiry[0][0] <= now_ms:
            expires_at_ms, key = heapq.heappop(expiry)
            current = self._dedup.get(key)
            if current is not None and current.expires_at_ms == expires_at_ms:
                del self._dedup[key]
        attempts = self._attempts
        while attempts:
            oldest = next(iter(attempts))  # insertion order is expiry order
            if attempts[oldest].expires_at_ms > now_ms:
                break
            del attempts[oldest]
        return effects

    def remove(self, message_id: str) -> list[Effect]:
        if message_id not in self._messages:
            return []
        effects: list[Effect] = [MessageRemoved(self.name, message_id)]
        self.apply(effects[0])
        return effects

    def take_visible(self, limit: int, now_ms: int) -> list[MessageRecord]:
        """Up to ``limit`` of the oldest visible messages, left in place."""
        self._advance(now_ms)
        taken: list[MessageRecord] = []
        if self._fifo:
            popped: list[tuple[int, int, _Group]] = []
            while len(taken) < limit and self._groups_ready:
                item = heapq.heappop(self._groups_ready)
                popped.append(item)
                group = item[2]
                if group.inflight or self._groups.get(group.name) is not group:
                    continue
                for entry in group.entries:
                    if entry.removed:
                        continue
                    if entry.state != _READY or len(taken) >= limit:
                        break
                    taken.append(entry.snapshot())
            for item in popped:
                heapq.heappush(self._groups_ready, item)
            return taken
        kept: list[tuple[int, int, _Entry]] = []
        while len(taken) < limit and self._ready:
            ready_item = heapq.heappop(self._ready)
            entry = ready_item[2]
            if entry.removed or entry.gen != ready_item[1] or entry.state != _READY:
                continue
            kept.append(ready_item)
            taken.append(entry.snapshot())
        for ready_item in kept:
            heapq.heappush(self._ready, ready_item)
        return taken

    def accept_moved(
        self, record: MessageRecord, now_ms: int, entropy: Entropy, source_arn: str | None
    ) -> list[Effect]:
        """Store a message moved here from another queue (redrive or move task).

        It keeps its id, body, attributes and SentTimestamp, and is visible at once.
        The caller removes it from ``record.queue`` in the same commit, after this
        effect (a body that is not in memory is copied from there by the store).
        With ``source_arn`` (redrive into a dead-letter queue) it also keeps its
        receive count and records DeadLetterQueueSourceArn. Without it (a move task
        taking messages out of a DLQ) its receive history starts afresh: keeping the
        count would send it straight back to the DLQ on its next receive.
        ``entropy`` is accepted for symmetry with sends: a moved message needs no new
        id or token.
        """
        del entropy
        self._advance(now_ms)
        sequence_number: int | None = None
        group_id = record.group_id
        if self._fifo:
            sequence_number = self._next_sequence(now_ms)
            if group_id is None:
                group_id = record.message_id  # only a broker bug moves standard -> FIFO
        moved_from = record.queue if record.body is None else None
        moved = replace(
            record,
            queue=self.name,
            visible_at_ms=now_ms,
            receipt_token=None,
            group_id=group_id,
            sequence_number=sequence_number,
            dead_letter_source_arn=source_arn,
        )
        if source_arn is None:
            moved = replace(moved, receive_count=0, first_receive_ms=None)
        effects: list[Effect] = [MessageStored(moved, moved_from)]
        self.apply(effects[0])
        return effects

    def _next_sequence(self, now_ms: int) -> int:
        return max(self._last_sequence + 1, now_ms * _SEQUENCE_PER_MS)

    # ---- send --------------------------------------------------------------

    def _plan_send(self, params: dict[str, Any], batch: bool) -> _SendPlan:
        settings = self.settings
        body = validate_body(params.get("MessageBody"))
        attributes = parse_message_attributes(params.get("MessageAttributes"))
        trace_header = parse_system_attributes(params.get("MessageSystemAttributes"))
        size_bytes = message_size_bytes(body, attributes)
        if size_bytes > settings.message_size_bytes_max:
            verb = "cannot be validated" if batch else "are invalid"
            raise invalid_parameter(
                f"One or more parameters {verb}. Reason: Message must be shorter than "
                f"{settings.message_size_bytes_max} bytes."
            )
        group_raw = params.get("MessageGroupId")
        dedup_raw = params.get("MessageDeduplicationId")
        delay_ms = settings.delay_ms
        if self._fifo:
            delay_s = int_param(params, "DelaySeconds", 0, -(2**63), 2**63, "")
            if delay_s:
                raise invalid_parameter(
                    f"Value {delay_s} for parameter DelaySeconds is invalid. Reason: The "
                    "request include parameter that is not valid for this queue type."
                )
            if group_raw is None:
                raise missing_parameter("MessageGroupId")
            group_id: str | None = validate_fifo_id(group_raw, "MessageGroupId")
            if dedup_raw is not None:
                dedup_id: str | None = validate_fifo_id(dedup_raw, "MessageDeduplicationId")
            elif settings.content_based_dedup:
                dedup_id = content_dedup_id(body)
            else:
                raise invalid_parameter(
                    "The queue should either have ContentBasedDeduplication enabled or "
                    "MessageDeduplicationId provided explicitly"
                )
        else:
            delay_s = int_param(
                params, "DelaySeconds", None, 0, DELAY_S_MAX,
                f"DelaySeconds must be >= 0 and <= {DELAY_S_MAX}.",
            )
            if delay_s is not None:
                delay_ms = delay_s * 1000
            if dedup_raw is not None:
                raise invalid_parameter(
                    f"Value {dedup_raw} for parameter MessageDeduplicationId is invalid. "
                    "Reason: The request include parameter that is not valid for this queue type."
                )
            group_id = None if group_raw is None else validate_fifo_id(group_raw, "MessageGroupId")
            dedup_id = None
        return _SendPlan(body, attributes, trace_header, delay_ms, group_id, dedup_id, size_bytes)

    def _dedup_key(self, plan: _SendPlan) -> str:
        assert plan.group_id is not None and plan.dedup_id is not None
        if self.settings.dedup_scope_group:
            # Length-prefixed so that no (group, id) pair can collide with another.
            return f"{len(plan.group_id)}:{plan.group_id}:{plan.dedup_id}"
        return plan.dedup_id

    def _execute_send(
        self, plan: _SendPlan, now_ms: int, entropy: Entropy, sender_id: str
    ) -> tuple[dict[str, Any], list[Effect]]:
        md5_body = md5_of_body(plan.body)
        md5_attrs = md5_of_attributes(plan.attributes) if plan.attributes else None
        response: dict[str, Any] = {"MD5OfMessageBody": md5_body}
        if md5_attrs is not None:
            response["MD5OfMessageAttributes"] = md5_attrs
        if plan.trace_header is not None:
            response["MD5OfMessageSystemAttributes"] = md5_of_attributes(
                [("AWSTraceHeader", AttributeValue("String", string_value=plan.trace_header))]
            )
        effects: list[Effect] = []
        sequence_number: int | None = None
        if self._fifo:
            key = self._dedup_key(plan)
            seen = self._dedup.get(key)
            if seen is not None and seen.expires_at_ms > now_ms:
                response["MessageId"] = seen.message_id
                response["SequenceNumber"] = str(seen.sequence_number)
                return response, effects
            sequence_number = self._next_sequence(now_ms)
        message_id = entropy.message_id()
        record = MessageRecord(
            queue=self.name,
            message_id=message_id,
            body=plan.body,
            attributes=plan.attributes,
            md5_of_body=md5_body,
            md5_of_attributes=md5_attrs,
            sent_ms=now_ms,
            visible_at_ms=now_ms + plan.delay_ms,
            receive_count=0,
            first_receive_ms=None,
            receipt_token=None,
            sender_id=sender_id,
            group_id=plan.group_id,
            dedup_id=plan.dedup_id,
            sequence_number=sequence_number,
            trace_header=plan.trace_header,
        )
        effects.append(MessageStored(record))
        if sequence_number is not None:
            effects.append(
                DedupRecorded(
                    self.name, self._dedup_key(plan), message_id, sequence_number,
                    now_ms + DEDUP_WINDOW_MS,
                )
            )
            response["SequenceNumber"] = str(sequence_number)
        response["MessageId"] = message_id
        for effect in effects:
            self.apply(effect)
        return response, effects

    def send_message(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, sender_id: str
    ) -> tuple[dict[str, Any], list[Effect]]:
        self._advance(now_ms)
        plan = self._plan_send(params, batch=False)
        return self._execute_send(plan, now_ms, entropy, sender_id)

    def send_message_batch(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, sender_id: str
    ) -> tuple[dict[str, Any], list[Effect]]:
        self._advance(now_ms)
        entries = self._batch_entries(params, "SendMessageBatchRequestEntry")
        # Plan every entry first (planning is pure), so each message is validated and
        # measured once; the batch-size rule counts failing entries' bytes too.
        plans: list[_SendPlan | SqsError] = []
        total_bytes = 0
        for entry in entries:
            try:
                plan = self._plan_send(entry, batch=True)
            except SqsError as exc:
                plans.append(exc)
                body = entry.get("MessageBody")
                if isinstance(body, str):
                    try:
                        attributes = parse_message_attributes(entry.get("MessageAttributes"))
                    except SqsError:
                        attributes = ()
                    total_bytes += message_size_bytes(body, attributes)
                continue
            plans.append(plan)
            total_bytes += plan.size_bytes
        if total_bytes > BATCH_PAYLOAD_BYTES_MAX:
            raise SqsError(
                "BatchRequestTooLong",
                f"Batch requests cannot be longer than {BATCH_PAYLOAD_BYTES_MAX} bytes. "
                f"You have sent {total_bytes} bytes.",
            )
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        effects: list[Effect] = []
        for entry, planned in zip(entries, plans, strict=True):
            if isinstance(planned, SqsError):
                error = planned
                missing = error.shape == "MissingRequiredParameterException"
                if missing and "MessageGroupId" in error.message:
                    # Recorded SQS behaviour: in a batch this one is InvalidParameterValue.
                    error = invalid_parameter(error.message)
                failed.append(_failed_entry(entry["Id"], error))
                continue
            response, entry_effects = self._execute_send(planned, now_ms, entropy, sender_id)
            successful.append({"Id": entry["Id"], **response})
            effects.extend(entry_effects)
        return self._batch_response(successful, failed), effects

    # ---- batches -----------------------------------------------------------

    @staticmethod
    def _batch_entries(params: dict[str, Any], entry_name: str) -> list[dict[str, Any]]:
        entries = params.get("Entries")
        if entries is None or entries == []:
            raise SqsError(
                "EmptyBatchRequest", f"There should be at least one {entry_name} in the request."
            )
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise invalid_parameter(
                "Value for parameter Entries is invalid. Reason: must be a list."
            )
        if len(entries) > BATCH_ENTRIES_MAX:
            raise SqsError(
                "TooManyEntriesInBatchRequest",
                f"Maximum number of entries per request are {BATCH_ENTRIES_MAX}. "
                f"You have sent {len(entries)}.",
            )
        seen: set[str] = set()
        for entry in entries:
            entry_id = entry.get("Id")
            if (
                not isinstance(entry_id, str)
                or not 1 <= len(entry_id) <= _BATCH_ID_CHARS_MAX
                or not _BATCH_ID.issuperset(entry_id)
            ):
                raise SqsError(
                    "InvalidBatchEntryId",
                    "A batch entry id can only contain alphanumeric characters, hyphens and "
                    "underscores. It can be at most 80 letters long.",
                )
        for entry in entries:
            if entry["Id"] in seen:
                raise SqsError("BatchEntryIdsNotDistinct", f"Id {entry['Id']} repeated.")
            seen.add(entry["Id"])
        return entries

    @staticmethod
    def _batch_response(
        successful: list[dict[str, Any]], failed: list[dict[str, Any]]
    ) -> dict[str, Any]:
        response: dict[str, Any] = {"Successful": successful}
        if failed:
            response["Failed"] = failed
        return response

    def _run_batch(
        self,
        params: dict[str, Any],
        entry_name: str,
        action: Callable[[dict[str, Any]], list[Effect]],
    ) -> tuple[dict[str, Any], list[Effect]]:
        entries = self._batch_entries(params, entry_name)
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        effects: list[Effect] = []
        for entry in entries:
            try:
                effects.extend(action(entry))
            except SqsError as exc:
                failed.append(_failed_entry(entry["Id"], exc))
                continue
            successful.append({"Id": entry["Id"]})
        return self._batch_response(successful, failed), effects

    # ---- delete and visibility ---------------------------------------------

    def _handle_target(self, handle: object) -> tuple[_Entry | None, str]:
        """The live message a receipt handle names (None if gone); FIFO handles
        superseded by a newer receive are rejected."""
        message_id, token = decode_receipt_handle(handle)
        entry = self._messages.get(message_id)
        if entry is not None and self._fifo and entry.receipt_token != token:
            raise invalid_parameter(
                f"Value {handle} for parameter ReceiptHandle is invalid. Reason: The receipt "
                "handle has expired."
            )
        return entry, token

    def _delete_one(self, params: dict[str, Any]) -> list[Effect]:
        entry, _ = self._handle_target(params.get("ReceiptHandle"))
        if entry is None:
            return []  # deleting a deleted message is not an error in SQS
        return self.remove(entry.record.message_id)

    def delete_message(
        self, params: dict[str, Any], now_ms: int
    ) -> tuple[dict[str, Any], list[Effect]]:
        self._advance(now_ms)
        return {}, self._delete_one(params)

    def delete_message_batch(
        self, params: dict[str, Any], now_ms: int
    ) -> tuple[dict[str, Any], list[Effect]]:
        self._advance(now_ms)
        return self._run_batch(params, "DeleteMessageBatchRequestEntry", self._delete_one)

    def _change_visibility_one(self, params: dict[str, Any], now_ms: int) -> list[Effect]:
        if params.get("VisibilityTimeout") is None:
            raise missing_parameter("VisibilityTimeout")
        timeout_s = int_param(
            params, "VisibilityTimeout", None, 0, VISIBILITY_TIMEOUT_S_MAX,
            f"Must be between 0 and {VISIBILITY_TIMEOUT_S_MAX}, if provided.",
        )
        assert timeout_s is not None
        handle = params.get("ReceiptHandle")
        entry, _ = self._handle_target(handle)
        if entry is None or entry.receipt_token is None:
            raise invalid_parameter(
                f"Value {handle} for parameter ReceiptHandle is invalid. Reason: Message does "
                "not exist or is not available for visibility timeout change."
            )
        visible_at_ms = now_ms + timeout_s * 1000
        received_ms = entry.received_ms
        cap_ms = VISIBILITY_TIMEOUT_S_MAX * 1000
        if received_ms is not None and visible_at_ms > received_ms + cap_ms:
            raise invalid_parameter(
                f"Value {timeout_s} for parameter VisibilityTimeout is invalid. Reason: Total "
                f"VisibilityTimeout for the message is beyond the limit "
                f"[{VISIBILITY_TIMEOUT_S_MAX} seconds]"
            )
        message_id = entry.record.message_id
        effects: list[Effect] = [VisibilityChanged(self.name, message_id, visible_at_ms)]
        self.apply(effects[0])
        return effects

    def change_message_visibility(
        self, params: dict[str, Any], now_ms: int
    ) -> tuple[dict[str, Any], list[Effect]]:
        self._advance(now_ms)
        return {}, self._change_visibility_one(params, now_ms)

    def change_message_visibility_batch(
        self, params: dict[str, Any], now_ms: int
    ) -> tuple[dict[str, Any], list[Effect]]:
        self._advance(now_ms)
        return self._run_batch(
            params,
            "ChangeMessageVisibilityBatchRequestEntry",
            lambda entry: self._change_visibility_one(entry, now_ms),
        )

    # ---- receive -----------------------------------------------------------

    def receive_message(
        self,
        params: dict[str, Any],
        now_ms: int,
        entropy: Entropy,
        dead_letter_queue: MessageQueue | None,
    ) -> tuple[dict[str, Any], list[Effect], int]:
        """One receive attempt; the third value is the long-poll wait in ms (the
        caller retries until messages arrive or that time has passed)."""
        settings = self.settings
        max_messages = int_param(
            params, "MaxNumberOfMessages", 1, 1, RECEIVE_MESSAGES_MAX,
            f"Must be between 1 and {RECEIVE_MESSAGES_MAX}, if provided.",
        )
        assert max_messages is not None
        timeout_s = int_param(
            params, "VisibilityTimeout", None, 0, VISIBILITY_TIMEOUT_S_MAX,
            f"Must be >= 0 and <= {VISIBILITY_TIMEOUT_S_MAX}, if provided.",
        )
        visibility_ms = settings.visibility_timeout_ms if timeout_s is None else timeout_s * 1000
        wait_s = int_param(
            params, "WaitTimeSeconds", None, 0, WAIT_TIME_S_MAX,
            f"Must be >= 0 and <= {WAIT_TIME_S_MAX}, if provided.",
        )
        wait_ms = settings.receive_wait_ms if wait_s is None else wait_s * 1000
        system_names = select_system_attribute_names(
            params.get("AttributeNames"), params.get("MessageSystemAttributeNames")
        )
        attribute_names = params.get("MessageAttributeNames")
        select_message_attributes((), attribute_names)  # validates the filter's type
        attempt_id: str | None = None
        if self._fifo and params.get("ReceiveRequestAttemptId") is not None:
            attempt_id = validate_fifo_id(
                params["ReceiveRequestAttemptId"], "ReceiveRequestAttemptId"
            )
        self._advance(now_ms)

        def render(entry: _Entry, token: str) -> dict[str, Any]:
            return self._render(entry, token, system_names, attribute_names)

        if attempt_id is not None:
            attempt = self._attempts.get(attempt_id)
            if attempt is not None and attempt.expires_at_ms > now_ms:
                still = [
                    (entry, token)
                    for entry, token in attempt.received
                    if not entry.removed and entry.receipt_token == token
                    and entry.state == _INFLIGHT
                ]
                if still:
                    return {"Messages": [render(e, t) for e, t in still]}, [], wait_ms

        if dead_letter_queue is self or settings.dead_letter_queue is None:
            dead_letter_queue = None
        inflight_room = self.inflight_messages_max - self._counts[_INFLIGHT]
        if inflight_room <= 0:
            if not self._fifo:
                raise SqsError(
                    "OverLimit",
                    "You have reached the maximum number of inflight messages "
                    f"({self.inflight_messages_max}) for this queue.",
                )
            return {}, [], wait_ms
        limit = min(max_messages, inflight_room)
        effects: list[Effect] = []
        delivered: list[tuple[_Entry, str]] = []

        def deliver(entry: _Entry) -> bool:
            """Receive ``entry`` or redrive it; True if it was delivered."""
            if dead_letter_queue is not None and entry.receive_count >= settings.max_receive_count:
                record = entry.snapshot()
                # Removed here first so its body's room in the budget is free for the
                # copy; the effects keep the order the store needs (copy, then remove).
                removed = self.remove(record.message_id)
                effects.extend(dead_letter_queue.accept_moved(record, now_ms, entropy, self.arn))
                effects.extend(removed)
                return False
            token = entropy.token()
            effect = MessageReceived(
                self.name,
                entry.record.message_id,
                token,
                now_ms + visibility_ms,
                entry.receive_count + 1,
                now_ms if entry.first_receive_ms is None else entry.first_receive_ms,
            )
            self._apply_received(effect, now_ms)
            effects.append(effect)
            delivered.append((entry, token))
            return True

        if self._fifo:
            self._receive_fifo(limit, deliver)
        else:
            self._receive_standard(limit, deliver)

        if attempt_id is not None and delivered:
            self._remember_attempt(attempt_id, now_ms, delivered)
        response: dict[str, Any] = {}
        if delivered:
            response["Messages"] = [render(e, t) for e, t in delivered]
        return response, effects, wait_ms

    def _receive_standard(self, limit: int, deliver: Callable[[_Entry], bool]) -> None:
        count = 0
        # Messages received with visibility 0 are ready again at once; hold them
        # back so that one receive never returns a message twice.
        delivered: set[_Entry] = set()
        again: list[tuple[int, int, _Entry]] = []
        # Re-read self._ready on every turn: deliveries may compact (replace) it.
        while count < limit and self._ready:
            item = heapq.heappop(self._ready)
            entry = item[2]
            if entry.removed or entry.gen != item[1] or entry.state != _READY:
                continue
            if entry in delivered:
                again.append(item)
                continue
            if deliver(entry):
                count += 1
                delivered.add(entry)
        for item in again:
            heapq.heappush(self._ready, item)

    def _receive_fifo(self, limit: int, deliver: Callable[[_Entry], bool]) -> None:
        count = 0
        # Groups that delivered in this receive; with visibility 0 they are ready
        # again at once but must wait for the next receive.
        visited: set[_Group] = set()
        skipped: list[_Group] = []
        groups_ready = self._groups_ready
        while count < limit and groups_ready:
            key, _, group = heapq.heappop(groups_ready)
            group.queued = False
            if self._groups.get(group.name) is not group:
                continue  # emptied and forgotten
            if group in visited:
                skipped.append(group)
                continue
            head = group.head()
            if group.inflight or head is None or head.state != _READY:
                continue
            if head.order != key:
                self._queue_group(group)  # stale key: re-offer at its real position
                continue
            assert group.inflight == 0  # never two receives holding one group
            batch: list[_Entry] = []
            for entry in group.entries:
                if entry.removed:
                    continue
                if entry.state != _READY or len(batch) >= limit - count:
                    break
                batch.append(entry)
            for entry in batch:
                if deliver(entry):
                    count += 1
                    visited.add(group)
            # Re-offer the group if nothing of it is in flight now (all redriven:
            # continue with its next messages in this same receive).
            self._queue_group(group)
        for group in skipped:
            self._queue_group(group)

    def _remember_attempt(
        self, attempt_id: str, now_ms: int, delivered: list[tuple[_Entry, str]]
    ) -> None:
        attempts = self._attempts
        attempts.pop(attempt_id, None)
        while len(attempts) >= ATTEMPTS_MAX:
            del attempts[next(iter(attempts))]  # dicts keep insertion order: oldest first
        attempts[attempt_id] = _Attempt(now_ms + ATTEMPT_WINDOW_MS, list(delivered))

    def _render(
        self, entry: _Entry, token: str, system_names: frozenset[str], attribute_names: object
    ) -> dict[str, Any]:
        record = entry.record
        message: dict[str, Any] = {
            "MessageId": record.message_id,
            "ReceiptHandle": encode_receipt_handle(record.message_id, token),
            "MD5OfBody": record.md5_of_body,
            "Body": record.body,
        }
        if system_names:
            values: dict[str, str | int | None] = {
                "SenderId": record.sender_id,
                "SentTimestamp": record.sent_ms,
                "ApproximateReceiveCount": entry.receive_count,
                "ApproximateFirstReceiveTimestamp": entry.first_receive_ms,
                "SequenceNumber": record.sequence_number,
                "MessageGroupId": record.group_id,
                "MessageDeduplicationId": record.dedup_id,
                "AWSTraceHeader": record.trace_header,
                "DeadLetterQueueSourceArn": record.dead_letter_source_arn,
            }
            attributes = {
                name: str(values[name]) for name in sorted(system_names)
                if values[name] is not None
            }
            if attributes:
                message["Attributes"] = attributes
        selected = select_message_attributes(record.attributes, attribute_names)
        if selected:
            message["MD5OfMessageAttributes"] = (
                record.md5_of_attributes
                if len(selected) == len(record.attributes) and record.md5_of_attributes
                else md5_of_attributes(selected)
            )
            message["MessageAttributes"] = {
                name: (
                    {"DataType": value.data_type, "BinaryValue": value.binary_value}
                    if value.binary_value is not None
                    else {"DataType": value.data_type, "StringValue": value.string_value}
                )
                for name, value in selected
            }
        return message
