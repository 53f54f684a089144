"""The message state machine of one queue (standard or FIFO), sans I/O.

What belongs here: everything that depends on a queue's messages — send, receive,
visibility, delete, delay, retention, FIFO groups and deduplication, redrive into a
dead-letter queue, and leasing a message for export to a queue another broker holds
(``Export``). Time arrives as ``now_ms`` and randomness through ``Entropy``.

Every command computes effect records, applies them with ``apply`` and returns them;
``apply`` alone rebuilds the same state (restore, replication followers): the
ReceiveRequestAttemptId cache, the latest receive of each message, the dedup horizon and
the sequence high-water mark included (``_effects.py`` says how each is carried). What
is not carried by effects is derived from them and from the time a command runs at:
which messages are visible, in flight or delayed (``_advance`` sorts them into indexes
lazily; if the clock goes back, the indexes are rewound to the earlier time, so a
message's state is always a function of its ``visible_at_ms`` and the command's time,
never of times only this node saw). ``dump_state`` renders the whole of it, for tests
that compare two nodes.

Bodies are held in memory only while a ``BodyBudget`` shared by all queues has room;
beyond it an entry keeps its metadata and ``body=None``, and a receive renders such a
message with ``"Body": None`` for the I/O shell to fill from the store. Which bodies
stay in memory is decided when a message arrives (first come, first kept): the
oldest messages are the next to be received, so they are the ones worth keeping.

"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, assert_never

from ._effects import (
    DEDUP_WINDOW_MS,
    DedupRecorded,
    Effect,
    HighWaterMarks,
    MessageEffect,
    MessageReceived,
    MessageRemoved,
    MessageStored,
    QueuePurged,
    ReceiveAttemptRecorded,
    VisibilityChanged,
    dedup_horizon_ms,
)
from ._errors import ERRORS, InternalError, SqsError, invalid_parameter, missing_parameter
from ._messages import (
    AttributeFilter,
    attribute_filter,
    content_dedup_id,
    decode_receipt_handle,
    encode_receipt_handle,
    int_param,
    md5_of_attributes,
    md5_of_body,
    message_size_bytes,
    parse_message_attributes,
    parse_system_attributes,
    reject_list_values,
    select_system_attribute_names,
    validate_body,
    validate_fifo_id,
)
from ._records import AttributeValue, Entropy, Export, MessageRecord
from ._settings import QueueSettings

__all__ = [
    "BATCH_ENTRIES_MAX",
    "BATCH_PAYLOAD_BYTES_MAX",
    "BodyBudget",
    "DEDUP_WINDOW_MS",
    "EXPORT_LEASE_MS",
    "INFLIGHT_MESSAGES_MAX",
    "MessageQueue",
    "check_send_batch",
]

VISIBILITY_TIMEOUT_S_MAX = 43_200  # 12 hours, SQS's ceiling for any visibility timeout
DELAY_S_MAX = 900
WAIT_TIME_S_MAX = 20
RECEIVE_MESSAGES_MAX = 10
BATCH_ENTRIES_MAX = 10
BATCH_PAYLOAD_BYTES_MAX = 1_048_576
ATTEMPT_WINDOW_MS = 300_000  # ReceiveRequestAttemptId retry window, 5 minutes
# SQS's in-flight ceiling per queue (standard: OverLimit; FIFO: empty receives).
INFLIGHT_MESSAGES_MAX = 120_000
# Bound on remembered ReceiveRequestAttemptIds per queue: 5 minutes of FIFO receives at
# SQS's 300 TPS is 90,000; a client inventing a fresh id per call cannot grow memory
# beyond.
ATTEMPTS_MAX = 100_000
# How long a message leased for export to another broker's queue stays invisible: long
# enough for the copy to reach that replica set's leader and be committed there (one
# round trip and a group commit, well under a second when healthy, seconds through a
# leader election), short enough that a copy that failed is retried soon, by the next
# receive or move task step after the lease lapses.
EXPORT_LEASE_MS = 30_000
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
        self.received_ms = record.received_ms
        self.removed = False
        self.group: _Group | None = None

    def snapshot(self) -> MessageRecord:
        return replace(
            self.record,
            visible_at_ms=self.visible_at_ms,
            receive_count=self.receive_count,
            first_receive_ms=self.first_receive_ms,
            receipt_token=self.receipt_token,
            received_ms=self.received_ms,
        )


class _GroupEntry(_Entry):
    """A FIFO message: also a link in its group's list, kept in sequence order.

    A doubly linked list rather than a deque, so that deleting any message of a group
    is O(1) and a receive walks only live messages: with lazily deleted deque slots,
    messages deleted behind a head that keeps being received were walked over again
    on every receive. Only FIFO entries pay for the two links."""

    __slots__ = ("prev", "next")
    # Set by _Group.link (no __init__ of its own: one call less per FIFO message sent).
    prev: _GroupEntry | None
    next: _GroupEntry | None


class _Group:
    """A FIFO message group: its live messages, linked in sequence order.

    SQS delivers a group from its head, in order, up to the first message that is not
    visible (in flight, or delayed): what comes after an in-flight message is held
    back, what comes before it is not. So a group can deliver exactly when its head is
    visible, and it is offered to receivers in ``MessageQueue._groups_ready`` under
    its head's (visible_at_ms, order): the group whose head became visible first goes
    first, which is the order recorded on SQS (a group whose head turned visible again
    after a visibility timeout queues behind groups that were waiting meanwhile)."""

    __slots__ = ("name", "first", "last", "key")

    def __init__(self, name: str) -> None:
        self.name = name
        self.first: _GroupEntry | None = None
        self.last: _GroupEntry | None = None
        # The (visible_at_ms, order) this group is offered under in _groups_ready, or
        # None when no offer is pending; heap items with another key are stale.
        self.key: tuple[int, int] | None = None

    def link(self, entry: _GroupEntry) -> None:
        """Add ``entry`` at its place in sequence order (normally the tail)."""
        last = self.last
        if last is None:
            entry.prev = entry.next = None
            self.first = self.last = entry
            return
        if last.order <= entry.order:
            last.next = entry
            entry.prev = last
            entry.next = None
            self.last = entry
            return
        # Out-of-order restore (rare): walk back from the tail to the entry's place.
        node: _GroupEntry | None = last
        while node is not None and node.order > entry.order:
            node = node.prev
        if node is None:
            first = self.first
            if first is None:
                raise InternalError(f"group {self.name!r} has a last message but no first")
            entry.prev = None
            entry.next = first
            first.prev = entry
            self.first = entry
            return
        after = node.next
        if after is None:
            raise InternalError(f"group {self.name!r}: a message before the last has no next")
        entry.prev = node
        entry.next = after
        node.next = entry
        after.prev = entry

    def unlink(self, entry: _GroupEntry) -> None:
        prev, nxt = entry.prev, entry.next
        if prev is None:
            self.first = nxt
        else:
            prev.next = nxt
        if nxt is None:
            self.last = prev
        else:
            nxt.prev = prev
        entry.prev = entry.next = None




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


def _wrong_queue_type(batch: bool, parameter: str, value: object) -> SqsError:
    """A parameter the queue's type does not take. A batch entry's text names neither
    the parameter nor its value and has no final period: what AWS put in a
    SendMessageBatch Failed entry (aws/aws-sdk-js#3187)."""
    reason = "The request include parameter that is not valid for this queue type"
    if batch:
        return invalid_parameter(reason)
    return invalid_parameter(
        f"Value {value} for parameter {parameter} is invalid. Reason: {reason}."
    )


def check_send_batch(params: dict[str, Any], *, fifo: bool,
                     content_based_dedup: bool) -> list[dict[str, Any]]:
    """The checks that fail a SendMessageBatch as a whole, in SQS's order; its entries.
    What a queue of several partitions checks before it splits a FIFO batch by message
    group (``ferrymq._cluster._partitioned``): in parts, a batch would pass them. The
    core runs the same checks, but sizes the entries it plans from their plans."""
    entries = _send_batch_entries(params, fifo=fifo, content_based_dedup=content_based_dedup)
    _check_batch_bytes(sum(_unplanned_bytes(entry) for entry in entries))
    return entries


def _send_batch_entries(params: dict[str, Any], *, fifo: bool,
                        content_based_dedup: bool) -> list[dict[str, Any]]:
    entries = MessageQueue._batch_entries(params, "SendMessageBatchRequestEntry")
    for entry in entries:
        # List values fail the whole request, not the entry (as AWS answered).
        reject_list_values(entry.get("MessageAttributes"), "SendMessageBatch")
        reject_list_values(entry.get("MessageSystemAttributes"), "SendMessageBatch")
    if fifo:
        _require_fifo_ids(entries, content_based_dedup)
    return entries


def _unplanned_bytes(entry: dict[str, Any]) -> int:
    """An entry's bytes for the batch-size rule, which counts failing entries too: its
    body (when it is a string) and its attributes if they parse."""
    body = entry.get("MessageBody")
    if not isinstance(body, str):
        return 0
    try:
        attributes = parse_message_attributes(entry.get("MessageAttributes"),
                                              "SendMessageBatch")
    except SqsError:
        attributes = ()
    return message_size_bytes(body, attributes)


def _check_batch_bytes(total_bytes: int) -> None:
    if total_bytes > BATCH_PAYLOAD_BYTES_MAX:
        raise SqsError(
            "BatchRequestTooLong",
            f"Batch requests cannot be longer than {BATCH_PAYLOAD_BYTES_MAX} bytes. "
            f"You have sent {total_bytes} bytes.",
        )


def _require_fifo_ids(entries: list[dict[str, Any]], content_based: bool) -> None:
    """Recorded on SQS: a FIFO batch with an entry that lacks its MessageGroupId, or
    its MessageDeduplicationId without content-based deduplication, fails as a
    whole (400 InvalidParameterValue), before any entry is sent. Malformed ids and
    DelaySeconds stay per-entry failures, as the other entry checks do."""
    for entry in entries:
        if entry.get("MessageGroupId") is None:
            raise invalid_parameter("The request must contain the parameter MessageGroupId.")
        if entry.get("MessageDeduplicationId") is None and not content_based:
            raise invalid_parameter(
                "The queue should either have ContentBasedDeduplication enabled or "
                "MessageDeduplicationId provided explicitly"
            )


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
        # The time the indexes below sort messages for: a cache of the latest command's
        # time, rewound when the clock goes back (``_advance``), never state of its own.
        self._now_high_ms = 0
        # High-water marks (``_effects.py``): derived from effects, durable in stores.
        self._last_sequence = 0
        self._dedup_horizon_ms = 0
        # Heaps with lazy deletion; each is bounded by live messages plus stale
        # entries that are discarded when they surface.
        self._pending: list[tuple[int, int, _Entry]] = []  # (visible_at_ms, gen, entry)
        self._ready: list[tuple[int, int, _Entry]] = []  # standard: (order, gen, entry)
        self._by_sent: list[tuple[int, int, _Entry]] = []  # retention: (sent_ms, gen0, entry)
        # FIFO only.
        self._groups: dict[str, _Group] = {}
        # Groups whose head is visible, as (head visible_at_ms, head order, tiebreak,
        # group); items whose key is no longer the group's are stale (see _Group).
        self._groups_ready: list[tuple[int, int, int, _Group]] = []
        self._dedup: dict[str, DedupRecorded] = {}
        # (expires_at_ms, key); items of keys recorded again since are skipped when
        # they surface. Bounded by the entries recorded within one dedup window.
        self._dedup_expiry: list[tuple[int, str]] = []
        # ReceiveRequestAttemptId -> its receive, oldest first (bounded: ATTEMPTS_MAX).
        self._attempts: dict[str, ReceiveAttemptRecorded] = {}

    # ---- effects -----------------------------------------------------------

    def apply(self, effect: MessageEffect) -> None:
        """Apply one effect of this queue, exactly as ``_effects.py`` defines it."""
        match effect:
            case MessageStored():
                if effect.record.queue != self.name:
                    raise InternalError(f"{effect!r} applied to queue {self.name!r}")
                self._apply_stored(effect.record)
                return
            case _ if effect.queue != self.name:
                raise InternalError(f"{effect!r} applied to queue {self.name!r}")
            case MessageReceived():
                self._apply_received(effect)
            case VisibilityChanged():
                entry = self._messages.get(effect.message_id)
                if entry is not None:
                    self._place(entry, effect.visible_at_ms)
            case MessageRemoved():
                entry = self._messages.get(effect.message_id)
                if entry is not None:
                    self._drop(entry)
            case DedupRecorded():
                self._apply_dedup(effect)
            case ReceiveAttemptRecorded():
                attempts = self._attempts
                for attempt_id in effect.forgotten:
                    attempts.pop(attempt_id, None)
                attempts.pop(effect.attempt_id, None)  # re-recorded: now the newest
                # Held without what it forgot: the cache holds attempts, as stores do.
                attempts[effect.attempt_id] = ReceiveAttemptRecorded(
                    effect.queue, effect.attempt_id, effect.expires_at_ms, effect.received)
            case QueuePurged():
                self._apply_purged()
            case HighWaterMarks():
                if effect.sequence_number > self._last_sequence:
                    self._last_sequence = effect.sequence_number
                if effect.dedup_horizon_ms > self._dedup_horizon_ms:
                    self._dedup_horizon_ms = effect.dedup_horizon_ms
                    self._forget_dedup()
            case _:
                assert_never(effect)

    def _apply_dedup(self, effect: DedupRecorded) -> None:
        horizon_ms = dedup_horizon_ms(effect)
        if horizon_ms > self._dedup_horizon_ms:
            self._dedup_horizon_ms = horizon_ms
        if effect.expires_at_ms > self._dedup_horizon_ms:
            self._dedup[effect.key] = effect
            heapq.heappush(self._dedup_expiry, (effect.expires_at_ms, effect.key))
        else:
            self._dedup.pop(effect.key, None)  # upserted and at once forgotten
        self._forget_dedup()
        if effect.sequence_number > self._last_sequence:
            self._last_sequence = effect.sequence_number

    def _forget_dedup(self) -> None:
        """Forget every dedup entry that expires at or before the dedup horizon."""
        horizon_ms = self._dedup_horizon_ms
        expiry = self._dedup_expiry
        while expiry and expiry[0][0] <= horizon_ms:
            expires_at_ms, key = heapq.heappop(expiry)
            current = self._dedup.get(key)
            if current is not None and current.expires_at_ms == expires_at_ms:
                del self._dedup[key]

    def _apply_stored(self, record: MessageRecord) -> None:
        old = self._messages.get(record.message_id)
        if old is not None:
            self._drop(old)
        if self._fifo:
            if record.sequence_number is None or record.group_id is None:
                raise InternalError(f"FIFO message without a sequence number or group: {record}")
            order = record.sequence_number
        else:
            self._order += 1
            order = self._order
        if record.sequence_number is not None and record.sequence_number > self._last_sequence:
            self._last_sequence = record.sequence_number
        body_bytes = 0
        if record.body is not None:
            body_bytes = self._budget.admit(record.body)
            if not body_bytes:
                record = record.without_body()  # the store holds it
        entry: _Entry
        if self._fifo:
            assert record.group_id is not None
            group = self._groups.get(record.group_id)
            if group is None:
                group = self._groups[record.group_id] = _Group(record.group_id)
            grouped = _GroupEntry(record, order, body_bytes)
            grouped.group = group
            group.link(grouped)
            entry = grouped
        else:
            entry = _Entry(record, order, body_bytes)
        self._messages[record.message_id] = entry
        self._counts[_DELAYED] += 1  # _place moves it to its real state
        self._gen += 1
        heapq.heappush(self._by_sent, (record.sent_ms, self._gen, entry))
        self._place(entry, record.visible_at_ms)

    def _apply_received(self, effect: MessageReceived) -> None:
        entry = self._messages.get(effect.message_id)
        if entry is None:
            return
        entry.receipt_token = effect.receipt_token
        entry.receive_count = effect.receive_count
        entry.first_receive_ms = effect.first_receive_ms
        entry.received_ms = effect.received_ms
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
        """Offer a FIFO group to receivers if it can deliver now (its head is visible),
        under its head's (visible_at_ms, order); a no-op if already offered so."""
        head = group.first
        if head is None or head.state != _READY:
            return  # a pending offer goes stale; the head's next change re-offers it
        visible_at_ms, order = head.visible_at_ms, head.order
        key = group.key
        if key is not None and key[0] == visible_at_ms and key[1] == order:
            return
        group.key = (visible_at_ms, order)
        self._gen += 1
        ready = self._groups_ready
        heapq.heappush(ready, (visible_at_ms, order, self._gen, group))
        if len(ready) > 2 * len(self._groups) + _SLACK:
            self._groups_ready = [item for item in ready if self._offer_is_live(item)]
            heapq.heapify(self._groups_ready)

    def _offer_is_live(self, item: tuple[int, int, int, _Group]) -> bool:
        group = item[3]
        key = group.key
        return (
            key is not None and key[0] == item[0] and key[1] == item[1]
            and self._groups.get(group.name) is group
        )

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
            if not isinstance(entry, _GroupEntry):
                raise InternalError(f"message {entry.record.message_id} has a group but no links")
            group.unlink(entry)
            if group.first is None:
                if self._groups.get(group.name) is group:
                    del self._groups[group.name]
            else:
                self._queue_group(group)  # the next message may now be the head

    def _advance(self, now_ms: int) -> None:
        """Sort messages into the indexes for time ``now_ms``: promote every message
        whose visibility time has come; if the clock went back, first rewind."""
        high_ms = self._now_high_ms
        if now_ms > high_ms:
            self._now_high_ms = now_ms
        elif now_ms < high_ms:
            self._rewind(now_ms)
        pending = self._pending
        while pending and pending[0][0] <= now_ms:
            _, gen, entry = heapq.heappop(pending)
            if entry.removed or entry.gen != gen:
                continue
            self._make_ready(entry)

    def _rewind(self, now_ms: int) -> None:
        """The clock went back: messages made visible after ``now_ms`` are not visible
        yet. Indexing them again keeps every message's state a function of its own
        deadline and the time a command runs at, which a follower or a restarted node
        computes alike, instead of the latest time this node happened to see. O(messages),
        paid only when the clock goes back."""
        self._now_high_ms = now_ms
        for entry in list(self._messages.values()):
            if entry.state == _READY and entry.visible_at_ms > now_ms:
                group = entry.group
                if group is not None and group.first is entry:
                    group.key = None  # its offer is stale; re-made when it is visible again
                self._place(entry, entry.visible_at_ms)

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

    def dump_state(self, now_ms: int) -> dict[str, Any]:
        """Everything this queue holds at ``now_ms``, as plain values, for comparing two
        nodes (tests; later, a follower against its leader). Sorting into the indexes
        for ``now_ms`` first is what any command at ``now_ms`` would do.

        Left out, each because it is not state: the absolute arrival counter of a
        standard queue (it counts messages long gone; the rank among live messages is
        the delivery order it encodes), generation counters and the heaps' stale items
        (lazy deletion), and which bodies are in memory (the body budget's cache: a
        record without its body says the store has it).
        """
        self._advance(now_ms)
        entries = sorted(self._messages.values(), key=lambda e: e.order)
        state_names = ("visible", "delayed", "in flight")
        messages = {
            entry.record.message_id: {
                "order": entry.order if self._fifo else rank,
                "state": state_names[entry.state],
                "record": entry.snapshot(),
            }
            for rank, entry in enumerate(entries)
        }
        groups = {}
        for name, group in sorted(self._groups.items()):
            members = []
            node = group.first
            while node is not None:
                members.append(node.record.message_id)
                node = node.next
            groups[name] = members
        return {
            "messages": dict(sorted(messages.items())),
            "counts": tuple(self._counts),
            "next visible": self.next_visible_ms(),
            # What receives would take, in order: checks the indexes, not just the data.
            "delivery order": [
                r.message_id for r in self.take_visible(len(self._messages), now_ms)],
            "groups": groups,
            "dedup": sorted(self._dedup.items()),
            "dedup horizon": self._dedup_horizon_ms,
            "last sequence": self._last_sequence,
            # Oldest first: which attempt is forgotten next depends on the order.
            "attempts": list(self._attempts.items()),
        }

    # ---- maintenance commands ----------------------------------------------

    def purge(self, now_ms: int) -> list[Effect]:
        effect = QueuePurged(self.name, now_ms)
        self.apply(effect)
        return [effect]

    def expire(self, now_ms: int) -> list[Effect]:
        """Retention: drop messages sent at least retention_ms ago (in flight too).
        Dedup entries and receive attempts are forgotten by the effects that record new
        ones (``_effects.py``), not here: this runs at times no effect records."""
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
        return effects

    def remove(self, message_id: str) -> list[Effect]:
        if message_id not in self._messages:
            return []
        effect = MessageRemoved(self.name, message_id)
        self.apply(effect)
        return [effect]

    def has_message(self, message_id: str) -> bool:
        return message_id in self._messages

    def lease_for_export(
        self, message_id: str, destination: str, source_arn: str | None, now_ms: int,
        entropy: Entropy,
    ) -> tuple[Export, list[Effect]]:
        """Lease message ``message_id`` for a copy to ``destination``, a queue another
        broker holds (``Export`` says what the caller does next). It must be held and
        visible: a move task leases what ``take_visible`` just returned."""
        self._advance(now_ms)
        entry = self._messages.get(message_id)
        if entry is None or entry.state != _READY:
            raise InternalError(f"message {message_id} of {self.name!r} is not visible")
        return self._lease(entry, destination, source_arn, now_ms, entropy)

    def _lease(
        self, entry: _Entry, destination: str, source_arn: str | None, now_ms: int,
        entropy: Entropy,
    ) -> tuple[Export, list[Effect]]:
        """A receive nobody is handed: the message is in flight under a fresh token
        until ``now_ms + EXPORT_LEASE_MS``, so no receive or move task takes it while
        it is copied (in a FIFO queue it holds back its group, which keeps the group's
        order across the move), and a copy that failed is retried once the lease lapses.
        Its receive count stays what it was: the copy keeps it. A message never received
        is given ``now_ms`` as first receive time (an effect cannot carry none); the
        export's record still says it was never received."""
        record = entry.snapshot()
        token = entropy.token()
        effect = MessageReceived(
            self.name,
            record.message_id,
            token,
            now_ms + EXPORT_LEASE_MS,
            entry.receive_count,
            now_ms if entry.first_receive_ms is None else entry.first_receive_ms,
            now_ms,
        )
        self._apply_received(effect)
        export = Export(self.name, record.message_id, token, destination, source_arn, record)
        return export, [effect]

    def complete_export(self, message_id: str, token: str) -> list[Effect]:
        """Remove a message whose copy the other broker committed, if it is still held
        under the export's lease token. Received again since the lease lapsed (by a
        consumer, or leased for another export), it is no longer this export's to
        remove: a second completion, or one after a new receive, does nothing."""
        entry = self._messages.get(message_id)
        if entry is None or entry.receipt_token != token:
            return []
        return self.remove(message_id)

    def take_visible(self, limit: int, now_ms: int) -> list[MessageRecord]:
        """Up to ``limit`` of the oldest visible messages, left in place."""
        self._advance(now_ms)
        taken: list[MessageRecord] = []
        if self._fifo:
            kept_offers: list[tuple[int, int, int, _Group]] = []
            while len(taken) < limit and self._groups_ready:
                item = heapq.heappop(self._groups_ready)
                if not self._offer_is_live(item):
                    continue
                kept_offers.append(item)  # left in place, like the messages
                grouped = item[3].first
                while grouped is not None and grouped.state == _READY and len(taken) < limit:
                    taken.append(grouped.snapshot())
                    grouped = grouped.next
            for item in kept_offers:
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
            received_ms=None,
            group_id=group_id,
            sequence_number=sequence_number,
            dead_letter_source_arn=source_arn,
        )
        if source_arn is None:
            moved = replace(moved, receive_count=0, first_receive_ms=None)
        effect = MessageStored(moved, moved_from)
        self.apply(effect)
        return [effect]

    def _next_sequence(self, now_ms: int) -> int:
        return max(self._last_sequence + 1, now_ms * _SEQUENCE_PER_MS)

    # ---- send --------------------------------------------------------------

    def _plan_send(self, params: dict[str, Any], batch: bool) -> _SendPlan:
        settings = self.settings
        action = "SendMessageBatch" if batch else "SendMessage"
        body = validate_body(params.get("MessageBody"))
        attributes = parse_message_attributes(params.get("MessageAttributes"), action)
        trace_header = parse_system_attributes(params.get("MessageSystemAttributes"), action)
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
                raise _wrong_queue_type(batch, "DelaySeconds", delay_s)
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
                raise _wrong_queue_type(batch, "MessageDeduplicationId", dedup_raw)
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
        stored = MessageStored(record)
        self.apply(stored)
        effects.append(stored)
        if sequence_number is not None:
            dedup = DedupRecorded(
                self.name, self._dedup_key(plan), message_id, sequence_number,
                now_ms + DEDUP_WINDOW_MS,
            )
            self.apply(dedup)
            effects.append(dedup)
            response["SequenceNumber"] = str(sequence_number)
        response["MessageId"] = message_id
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
        entries = _send_batch_entries(params, fifo=self._fifo,
                                      content_based_dedup=self.settings.content_based_dedup)
        # Plan every entry first (planning is pure), so each message is validated and
        # measured once; the batch-size rule counts failing entries' bytes too.
        plans: list[_SendPlan | SqsError] = []
        total_bytes = 0
        for entry in entries:
            try:
                plan = self._plan_send(entry, batch=True)
            except SqsError as exc:
                plans.append(exc)
                total_bytes += _unplanned_bytes(entry)
                continue
            plans.append(plan)
            total_bytes += plan.size_bytes
        _check_batch_bytes(total_bytes)
        successful: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        effects: list[Effect] = []
        for entry, planned in zip(entries, plans, strict=True):
            if isinstance(planned, SqsError):
                failed.append(_failed_entry(entry["Id"], planned))
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
        if isinstance(entries, list) and len(entries) > BATCH_ENTRIES_MAX:
            # Counted before anything is done per entry.
            raise SqsError(
                "TooManyEntriesInBatchRequest",
                f"Maximum number of entries per request are {BATCH_ENTRIES_MAX}. "
                f"You have sent {len(entries)}.",
            )
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise invalid_parameter(
                "Value for parameter Entries is invalid. Reason: must be a list."
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

    def _handle_target(
        self, handle: object, batch: bool, parameter: str = "ReceiptHandle"
    ) -> tuple[_Entry | None, str]:
        """The live message a receipt handle names (None if gone).

        On a FIFO queue a handle is good only while its receive holds the message: one
        superseded by a newer receive, or whose visibility timeout has lapsed (the
        message is visible again, or was made so with visibility 0), has expired, as
        recorded on SQS for DeleteMessage. The batch actions report it per entry as
        ``ReceiptHandleIsInvalid`` "The receipt handle has expired" (what SQS returned
        to a DeleteMessageBatch user, smaskalik/sqsmover#54).
        """
        message_id, token = decode_receipt_handle(handle, parameter)
        entry = self._messages.get(message_id)
        if (
            entry is not None and self._fifo
            and (entry.receipt_token != token or entry.state != _INFLIGHT)
        ):
            if batch:
                raise SqsError("ReceiptHandleIsInvalid", "The receipt handle has expired")
            raise invalid_parameter(
                f"Value {handle} for parameter ReceiptHandle is invalid. Reason: The receipt "
                "handle has expired."
            )
        return entry, token

    def _delete_one(self, params: dict[str, Any], batch: bool) -> list[Effect]:
        # AWS names a DeleteMessage's missing handle MessageHandle (recorded over both
        # protocols); what it says for a batch entry is not recorded.
        parameter = "ReceiptHandle" if batch else "MessageHandle"
        entry, _ = self._handle_target(params.get("ReceiptHandle"), batch, parameter)
        if entry is None:
            return []  # deleting a deleted message is not an error in SQS
        return self.remove(entry.record.message_id)

    def delete_message(
        self, params: dict[str, Any], now_ms: int
    ) -> tuple[dict[str, Any], list[Effect]]:
        self._advance(now_ms)
        return {}, self._delete_one(params, batch=False)

    def delete_message_batch(
        self, params: dict[str, Any], now_ms: int
    ) -> tuple[dict[str, Any], list[Effect]]:
        self._advance(now_ms)
        return self._run_batch(
            params, "DeleteMessageBatchRequestEntry",
            lambda entry: self._delete_one(entry, batch=True),
        )

    def _change_visibility_one(
        self, params: dict[str, Any], now_ms: int, batch: bool
    ) -> list[Effect]:
        if params.get("VisibilityTimeout") is None:
            raise missing_parameter("VisibilityTimeout")
        timeout_s = int_param(
            params, "VisibilityTimeout", None, 0, VISIBILITY_TIMEOUT_S_MAX,
            f"Must be between 0 and {VISIBILITY_TIMEOUT_S_MAX}, if provided.",
        )
        assert timeout_s is not None
        handle = params.get("ReceiptHandle")
        entry, _ = self._handle_target(handle, batch)
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
                f"[{VISIBILITY_TIMEOUT_S_MAX} seconds]."
            )
        message_id = entry.record.message_id
        effect = VisibilityChanged(self.name, message_id, visible_at_ms)
        self.apply(effect)
        return [effect]

    def change_message_visibility(
        self, params: dict[str, Any], now_ms: int
    ) -> tuple[dict[str, Any], list[Effect]]:
        self._advance(now_ms)
        return {}, self._change_visibility_one(params, now_ms, batch=False)

    def change_message_visibility_batch(
        self, params: dict[str, Any], now_ms: int
    ) -> tuple[dict[str, Any], list[Effect]]:
        self._advance(now_ms)
        return self._run_batch(
            params,
            "ChangeMessageVisibilityBatchRequestEntry",
            lambda entry: self._change_visibility_one(entry, now_ms, batch=True),
        )

    # ---- receive -----------------------------------------------------------

    def receive_message(
        self,
        params: dict[str, Any],
        now_ms: int,
        entropy: Entropy,
        dead_letter_queue: MessageQueue | None,
        *,
        remote_dead_letter_queue: str | None = None,
        exports: list[Export] | None = None,
    ) -> tuple[dict[str, Any], list[Effect], int]:
        """One receive attempt; the third value is the long-poll wait in ms (the
        caller retries until messages arrive or that time has passed).

        ``remote_dead_letter_queue`` (with ``dead_letter_queue`` None): the dead-letter
        queue is held by another broker; a message due for redrive is leased for export
        (``lease_for_export``) instead, and its ``Export`` appended to ``exports``."""
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
        attributes_wanted = attribute_filter(params.get("MessageAttributeNames"))
        attempt_id: str | None = None
        if self._fifo and params.get("ReceiveRequestAttemptId") is not None:
            attempt_id = validate_fifo_id(
                params["ReceiveRequestAttemptId"], "ReceiveRequestAttemptId"
            )
        self._advance(now_ms)

        def render(entry: _Entry, token: str) -> dict[str, Any]:
            return self._render(entry, token, system_names, attributes_wanted)

        if attempt_id is not None:
            attempt = self._attempts.get(attempt_id)
            if attempt is not None and attempt.expires_at_ms > now_ms:
                # SQS replays a receive only while none of its messages was modified:
                # once one was deleted or had its visibility changed, the retry is
                # refused (the documented rule, and the text AWS answered). A message
                # is known by its id: one deleted, expired or moved to another queue is
                # gone from this one.
                messages = self._messages
                for message_id, token, visible_at_ms in attempt.received:
                    held = messages.get(message_id)
                    if held is None or (
                        held.receipt_token == token and held.visible_at_ms != visible_at_ms
                    ):
                        raise invalid_parameter(
                            f"Value {attempt_id} for parameter ReceiveRequestAttemptId is "
                            "invalid. Reason: The receiveRequestAttemptId is not valid anymore "
                            "since the receive call is not retryable."
                        )
                still = [
                    (held, token)
                    for message_id, token, _ in attempt.received
                    if (held := messages[message_id]).receipt_token == token
                    and held.state == _INFLIGHT
                ]
                if still:
                    return {"Messages": [render(e, t) for e, t in still]}, [], wait_ms

        if dead_letter_queue is self or settings.dead_letter_queue is None:
            dead_letter_queue = None
        if dead_letter_queue is not None or settings.dead_letter_queue is None:
            remote_dead_letter_queue = None
        if remote_dead_letter_queue is not None and exports is None:
            raise InternalError("a remote dead-letter queue needs a list to export into")
        export_sink: list[Export] = [] if exports is None else exports
        inflight_room = self.inflight_messages_max - self._counts[_INFLIGHT]
        if inflight_room <= 0:
            if not self._fifo:
                # The text of AWS's answer (a raw Query response from 2014; nothing newer
                # is recorded), line break included.
                raise SqsError(
                    "OverLimit",
                    "Too many messages have been received without being deleted.\n"
                    "Please delete your received messages or let them timeout before "
                    "receiving more.",
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
            if (
                remote_dead_letter_queue is not None
                and entry.receive_count >= settings.max_receive_count
            ):
                export, leased = self._lease(
                    entry, remote_dead_letter_queue, self.arn, now_ms, entropy)
                export_sink.append(export)
                effects.extend(leased)
                return False
            token = entropy.token()
            effect = MessageReceived(
                self.name,
                entry.record.message_id,
                token,
                now_ms + visibility_ms,
                entry.receive_count + 1,
                now_ms if entry.first_receive_ms is None else entry.first_receive_ms,
                now_ms,
            )
            self._apply_received(effect)
            effects.append(effect)
            delivered.append((entry, token))
            return True

        if self._fifo:
            self._receive_fifo(limit, deliver)
        else:
            self._receive_standard(limit, deliver)

        if attempt_id is not None and delivered:
            effects.append(self._remember_attempt(attempt_id, now_ms, delivered))
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
        """Deliver groups in offer order, each from its head up to its first message
        that is not visible. Work: O(messages walked + offers popped), never the depth
        of the queue or of a group."""
        count = 0
        # Groups that delivered in this receive; with visibility 0 they are visible
        # again at once but must wait for the next receive.
        visited: set[_Group] = set()
        skipped: list[_Group] = []
        # Re-read self._groups_ready on every turn: offers may compact (replace) it.
        while count < limit and self._groups_ready:
            item = heapq.heappop(self._groups_ready)
            if not self._offer_is_live(item):
                continue  # superseded by a newer offer, or the group is gone
            group = item[3]
            group.key = None  # this offer is taken; _queue_group may make a new one
            if group in visited:
                skipped.append(group)
                continue
            head = group.first
            if head is None or head.state != _READY:
                continue  # its head went in flight or was delayed since it was offered
            if head.visible_at_ms != item[0] or head.order != item[1]:
                raise InternalError(
                    f"group {group.name!r} offered at {item[:2]} but its head is at "
                    f"{(head.visible_at_ms, head.order)}"
                )
            entry: _GroupEntry | None = head
            delivered_last: _GroupEntry | None = None
            while entry is not None and entry.state == _READY and count < limit:
                # The real FIFO invariant: a message is returned only if every earlier
                # live message of its group is returned before it in this receive.
                if entry.prev is not delivered_last:
                    raise InternalError(
                        f"message {entry.record.message_id} of group {group.name!r} would "
                        "be returned while an earlier message of the group is not"
                    )
                nxt = entry.next  # read first: a redrive unlinks the entry
                if deliver(entry):
                    count += 1
                    visited.add(group)
                    delivered_last = entry
                elif not entry.removed:
                    break  # leased for export: in flight, it holds back the rest of its group
                entry = nxt
            # Offer it again if its head is visible once more (visibility 0, or every
            # message walked was redriven); a visited group waits for the next receive.
            self._queue_group(group)
        for group in skipped:
            self._queue_group(group)

    def _remember_attempt(
        self, attempt_id: str, now_ms: int, delivered: list[tuple[_Entry, str]]
    ) -> ReceiveAttemptRecorded:
        """Record this receive under ``attempt_id``, forgetting the attempts whose window
        has passed and, if the cache is still full, the oldest: from the front, since a
        dict keeps insertion order, which is expiry order while the clock goes forward.
        Amortised O(1): each attempt is walked over once, when it is forgotten."""
        attempts = self._attempts
        excess = len(attempts) + (attempt_id not in attempts) - ATTEMPTS_MAX
        forgotten: list[str] = []
        for old_id, old in attempts.items():
            if old_id == attempt_id:
                continue  # replaced by this one
            if old.expires_at_ms > now_ms and len(forgotten) >= excess:
                break
            forgotten.append(old_id)
        effect = ReceiveAttemptRecorded(
            self.name, attempt_id, now_ms + ATTEMPT_WINDOW_MS,
            tuple((entry.record.message_id, token, entry.visible_at_ms)
                  for entry, token in delivered),
            tuple(forgotten),
        )
        self.apply(effect)
        return effect

    def _render(
        self, entry: _Entry, token: str, system_names: frozenset[str],
        attributes_wanted: AttributeFilter | None,
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
        selected = () if attributes_wanted is None else attributes_wanted.select(record.attributes)
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
