"""The checker: a recorded history in, a report out. Pure: no clock, no I/O.

What belongs here: the properties a fault test asserts, each as an exact rule over the
history's operations, and the report. The workloads that produce histories are in
``_workload``; the format is in ``_history``.

Notation, per queue. A message is a logical key (``"3-17"``, ``"g2:5"``) carried in its
body. ``A`` = keys with an ``ok`` send, ``I`` = keys with no ``ok`` send and at least one
``info`` send, ``D(m)`` = the deliveries of ``m``, ``Del`` = keys with an ``ok`` delete.

Time. Every operation happened at one instant somewhere in [``t_inv``, ``t_end``]
(``info``: somewhere after ``t_inv``, possibly after ``t_end``, possibly never). So
"X before Y" is only ever claimed when it holds for every such instant:

* X *surely* precedes Y when ``t_end(X) <= t_inv(Y)``;
* X *may* precede Y when ``t_inv(X) < t_end(Y)``.

A violation is reported only when it follows whatever the instants were. Where a rule
needs "X happened before Y" to *excuse* something it uses "may precede"; where it needs
it to *convict*, "surely precedes". In particular, a delete "before" a receive means a
delete invoked before the receive *completed* (``t_inv(delete) < t_end(receive)``), not
before it was invoked: a long poll parked since before the delete is legitimately
woken by it, and the receive's ``t_inv`` would convict that.

Deliveries. A delivery is one (message, receipt handle) pair. FIFO receive retries
that reuse a ``ReceiveRequestAttemptId`` may return the same handle again: that is
the same delivery, and its ``t_inv`` is the earliest ``t_inv`` of any receive with that
attempt id (the attempt that chose it may have been one whose answer was lost).
A delivery's lease starts when the server served it, at or after its ``t_inv``, and
lasts at least ``VT`` (the receive's ``VisibilityTimeout``), minus ε: ε is
``epsilon_ms`` (100 ms: clock reading and millisecond rounding) plus ``skew_ms`` (the
clock skew between nodes that a cluster may add).

P1, no acked loss. ``lost = A − received`` (split per producer stream into *prefix*,
below the lowest received counter of that stream, *postfix*, above the highest, and
*middle*; a stream with nothing received is all postfix). ``undeleted = (A ∩ received)
− Del``, less the messages that had an ``info`` delete (it may have taken effect, at any
time after it was invoked, so nothing is left to drain; reported as *maybe deleted*).
Both must be empty after the drain.

P2, no phantoms. ``unexpected = received − (A ∪ I)`` (a failed send that shows up is
one), plus bodies that are not ours at all. A delivery whose body hash does not match
is *corrupted* (and not a delivery of anything); so is one whose ``MD5OfBody`` does
not match its body, or whose FIFO ``MessageGroupId`` is not the body's group; so is an
``ok`` send whose ``MD5OfMessageBody`` does not match. ``recovered = received ∩ I``
(indeterminate sends that did happen) is reported, not a violation.

P3, duplicates: ``Σ(|D(m)| − 1)``, each redelivery ``d`` (deliveries in ``t_inv``
order) classified by the first rule that applies:

1. ``after_delete``: an ``ok`` delete of ``m`` surely precedes ``d``. Counted on a
   standard queue, unless rule 2 applies too (a deleted message that came back still
   holds its new lease); on a FIFO queue a violation if ``t_inv(d)`` is within
   ``fifo_dedup_window_ms`` (5 min) of that delete's end, and rule 1 wins.
2. ``lease``: ``d`` is inside an earlier delivery's lease (P5): a violation.
3. ``after_release``: a visibility change of ``m`` may precede ``d``.
4. ``delete_race``: an ``ok`` delete of ``m`` may precede ``d`` (but not surely).
5. ``after_failed_delete``: a ``fail`` or ``info`` delete of ``m`` may precede ``d``.
6. ``after_expiry``: anything else (an earlier lease may have run out).

A FIFO key that arrives under two SQS message ids was enqueued twice (deduplication
failed): a violation.

P5, exclusive lease. Deliveries ``d1 != d2`` of ``m`` conflict if

* ``d1`` surely precedes ``d2`` and ``t_end(d2) < t_inv(d1) + VT1 − ε`` (``d2`` was
  served while ``d1``'s lease surely held), or they overlap and each is inside the
  other's window by that rule (whichever was first, the second was inside its lease);
* and the lease was not ended by then: no visibility change of ``m``, ``ok`` or
  ``info``, that may precede ``d2`` (an ``ok`` one that surely preceded ``d1`` does
  not count; an ``info`` one always may, having possibly taken effect at any time
  after it was invoked). On a standard queue a delete (``ok`` or ``info``) of ``m``
  excuses in the same way (a deleted message may come back: at-least-once). On a
  FIFO queue a delete excuses nothing: if it took effect before ``d2``, ``d2``
  delivered a deleted message; if not, ``d2`` broke the lease.

P4, FIFO order, for each delivery of ``(g, k)`` by receive ``r``, over every known
``(g, j)``, ``j < k`` (known: acked or ever received):

* ``batch_order``: ``(g, j)`` is in the same batch after ``(g, k)``, or the group's
  messages in a batch are not strictly ascending;
* otherwise, unless ``(g, j)`` is earlier in the same batch, some delete of ``(g, j)``
  (``ok`` or ``info``) must have been invoked before ``t_end(r)``, and no delivery of
  ``(g, j)`` may be invoked at or after ``t_end(r)`` (``(g, j)`` still existed after
  ``r`` was served, so it was not deleted when ``(g, k)`` was delivered; this convicts
  an ``info`` delete that did not happen). The example says why: ``in_flight`` (``(g,
  j)`` was surely leased to another receive at the time: two in-flight messages of one
  group, out of order), ``not_deleted`` or ``redelivered_later``.

"Consecutive" is in sequence order among live messages, not batch positions: ``(g, 3),
(g, 5)`` in one batch is fine if ``(g, 4)`` was deleted before. Two in-flight messages
of one group are legal the other way round (SQS redelivers a released head while a
later message of its batch is still in flight), and are then no violation. Assumes
no redrive policy and no retention expiry.

P6, liveness. Faults are the nemesis's operations (``[t_inv, t_end]``; never ended:
to the end of the history). Fault-free windows of at least ``R`` (default: the
bound below) are judged: every acked message whose send completed at ``s`` with
``[s, s + 2·VT + 5 s]`` inside such a window (``VT`` the queue's largest receive
visibility timeout) must have a delivery completed by ``s + 2·VT + 5 s``. Each
recorded drain must end ``ok`` (caught up).

P7, availability, per fault: from its start (and from its end) to the completion of
the first ``ok`` send, and of the first ``ok`` receive, invoked after it. Reported,
never a violation. ``longest_ok_gap`` measures a whole stretch the same way: the
longest time in it without the completion of an ``ok`` operation invoked in it.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ferrymq._bench._stats import percentile
from ferrymq._verify._history import CONTROL, NEMESIS, Op, body_key, pair_ops

__all__ = [
    "DUPLICATE_CLASSES",
    "CheckConfig",
    "FaultReport",
    "QueueReport",
    "Report",
    "check",
    "check_ops",
    "longest_ok_gap",
]

_NS_PER_MS = 1_000_000
DUPLICATE_CLASSES = ("after_delete", "lease", "after_release", "delete_race",
                     "after_failed_delete", "after_expiry")
_MESSAGE_FS = ("send", "receive", "delete", "change_visibility")
_FOREVER = 2**63


@dataclass(frozen=True)
class CheckConfig:
    """The checker's tolerances; the defaults are the team's rules."""

    epsilon_ms: float = 100.0
    skew_ms: float = 0.0
    fifo_dedup_window_ms: float = 300_000.0
    liveness_slack_ms: float = 5_000.0
    # R: None means the delivery bound itself (2·VT + slack), the shortest window in
    # which a message can be judged at all.
    liveness_window_min_ms: float | None = None
    # Examples kept per finding: enough to start debugging, not a second history.
    examples_max: int = 5


@dataclass
class QueueReport:
    """Everything found about one queue."""

    queue: str
    fifo: bool
    attempted: int = 0
    acked: int = 0
    failed: int = 0
    indeterminate: int = 0
    unique_received: int = 0
    deliveries: int = 0
    lost: list[str] = field(default_factory=list)
    lost_split: dict[str, int] = field(
        default_factory=lambda: {"prefix": 0, "middle": 0, "postfix": 0})
    undeleted: list[str] = field(default_factory=list)
    maybe_deleted: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    corrupted: list[str] = field(default_factory=list)
    recovered: list[str] = field(default_factory=list)
    duplicates: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(DUPLICATE_CLASSES, 0))
    fifo_duplicates: int = 0
    fifo_duplicate_examples: list[str] = field(default_factory=list)
    lease_violations: int = 0
    lease_examples: list[str] = field(default_factory=list)
    order_violations: int = 0
    order_examples: list[str] = field(default_factory=list)
    liveness_bound_ms: float | None = None
    liveness_judged: int = 0
    liveness_late: int = 0
    liveness_examples: list[str] = field(default_factory=list)
    drain: str = "not recorded"
    delivery_latency_ms: dict[str, float] = field(default_factory=dict)

    def violations(self) -> list[str]:
        q = self.queue
        out: list[str] = []

        def add(count: int, what: str, examples: Iterable[str]) -> None:
            if count:
                shown = ", ".join(list(examples)[:5])
                out.append(f"{q}: {count} {what}" + (f"; e.g. {shown}" if shown else ""))

        split = self.lost_split
        add(len(self.lost), f"acked messages never received (prefix {split['prefix']}, "
            f"middle {split['middle']}, postfix {split['postfix']})", self.lost)
        add(len(self.undeleted), "acked messages received but never deleted", self.undeleted)
        add(len(self.unexpected), "unexpected messages (never sent, or sent and failed)",
            self.unexpected)
        add(len(self.corrupted), "corrupted bodies or checksums", self.corrupted)
        add(self.fifo_duplicates, "FIFO duplicates (redelivered after an ok delete, or "
            "enqueued twice)", self.fifo_duplicate_examples)
        add(self.lease_violations, "deliveries inside another delivery's lease",
            self.lease_examples)
        add(self.order_violations, "FIFO order violations", self.order_examples)
        add(self.liveness_late, f"acked messages not delivered within "
            f"{self.liveness_bound_ms} ms in a fault-free window", self.liveness_examples)
        if self.drain == "not caught up":
            out.append(f"{q}: the drain did not catch up")
        return out


@dataclass
class FaultReport:
    """P7 for one fault: milliseconds to the first ok send and receive after it."""

    name: str
    node: str | None
    start_ms: float
    end_ms: float | None
    send_ms: float | None = None
    receive_ms: float | None = None
    send_after_end_ms: float | None = None
    receive_after_end_ms: float | None = None


@dataclass
class Report:
    """The checker's answer; ``violations()`` is what a test asserts empty."""

    queues: list[QueueReport]
    faults: list[FaultReport]
    ops: dict[str, dict[str, int]]
    latency_ms: dict[str, dict[str, float]]
    config: CheckConfig

    def violations(self) -> list[str]:
        return [v for queue in self.queues for v in queue.violations()]

    def queue(self, name: str) -> QueueReport:
        for report in self.queues:
            if report.queue == name:
                return report
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["violations"] = self.violations()
        return data

    def format(self) -> str:
        """The report as text, examples capped, for a person."""
        lines: list[str] = []
        cap = self.config.examples_max

        def some(keys: list[str]) -> str:
            return "" if not keys else " e.g. " + ", ".join(keys[:cap])

        for q in self.queues:
            lines.append(f"queue {q.queue} ({'FIFO' if q.fifo else 'standard'})")
            lines.append(f"  sends: {q.attempted} attempted, {q.acked} acked, {q.failed} failed, "
                         f"{q.indeterminate} indeterminate")
            lines.append(f"  received: {q.unique_received} unique in {q.deliveries} deliveries")
            lines.append(f"  lost: {len(q.lost)} {q.lost_split}{some(q.lost)}")
            lines.append(f"  undeleted: {len(q.undeleted)}{some(q.undeleted)} (and "
                         f"{len(q.maybe_deleted)} whose only deletes were indeterminate)")
            lines.append(f"  unexpected: {len(q.unexpected)}{some(q.unexpected)}")
            lines.append(f"  corrupted: {len(q.corrupted)}{some(q.corrupted)}")
            lines.append(f"  recovered (indeterminate sends received): {len(q.recovered)}")
            lines.append(f"  duplicates: {sum(q.duplicates.values())} {q.duplicates}")
            if q.fifo:
                lines.append(f"  FIFO duplicates: {q.fifo_duplicates}"
                             f"{some(q.fifo_duplicate_examples)}")
                lines.append(f"  FIFO order violations: {q.order_violations}"
                             f"{some(q.order_examples)}")
            lines.append(f"  lease violations: {q.lease_violations}{some(q.lease_examples)}")
            lines.append(f"  liveness: {q.liveness_judged} judged against "
                         f"{q.liveness_bound_ms} ms, {q.liveness_late} late"
                         f"{some(q.liveness_examples)}")
            lines.append(f"  drain: {q.drain}")
            lines.append(f"  delivery latency ms: {q.delivery_latency_ms}")
        for fault in self.faults:
            lines.append(
                f"fault {fault.name} on {fault.node} at {fault.start_ms:.0f}..{fault.end_ms} ms: "
                f"first ok send {fault.send_ms} ms, receive {fault.receive_ms} ms after it "
                f"began; {fault.send_after_end_ms} / {fault.receive_after_end_ms} ms after "
                "it ended")
        for f, stats in sorted(self.latency_ms.items()):
            lines.append(f"latency {f}: {stats}")
        for f, counts in sorted(self.ops.items()):
            lines.append(f"ops {f}: {counts}")
        found = self.violations()
        lines.append(f"violations: {len(found)}")
        lines.extend(f"  {v}" for v in found)
        return "\n".join(lines)


# --- the model of one queue built from the history ---------------------------------


@dataclass
class _Delivery:
    key: str
    handle: str
    t_inv: int
    t_end: int
    vt_ns: int | None
    op_index: int
    message_id: str | None


@dataclass(frozen=True)
class _Touch:
    """One delete or visibility-change entry on a message."""

    kind: str  # "delete" or "change_visibility"
    type: str
    t_inv: int
    t_end: int  # _FOREVER if it never completed
    handle: str | None


@dataclass
class _Message:
    key: str
    stream: str
    n: int | None
    sends: list[Op] = field(default_factory=list)
    deliveries: list[_Delivery] = field(default_factory=list)
    touches: list[_Touch] = field(default_factory=list)
    message_ids: set[str] = field(default_factory=set)

    @property
    def acked(self) -> bool:
        return any(s.type == "ok" for s in self.sends)

    @property
    def indeterminate(self) -> bool:
        return not self.acked and any(s.type == "info" for s in self.sends)


class _Clock:
    """Renders history times as milliseconds since the history's first event."""

    def __init__(self, origin_ns: int) -> None:
        self.origin_ns = origin_ns

    def ms(self, t_ns: int | None) -> float | None:
        if t_ns is None or t_ns >= _FOREVER:
            return None
        return round((t_ns - self.origin_ns) / _NS_PER_MS, 1)


def _split_key(key: str, fifo: bool) -> tuple[str, int | None]:
    stream, sep, number = key.rpartition(":" if fifo else "-")
    if sep and number.isdigit():
        return stream, int(number)
    return key, None


def _is_fifo(value: dict[str, Any]) -> bool:
    flag = value.get("fifo")
    if isinstance(flag, bool):
        return flag
    return str(value.get("queue", "")).endswith(".fifo")


def _end(op: Op) -> int:
    return _FOREVER if op.t_end is None else op.t_end


class _QueueCheck:
    def __init__(self, name: str, fifo: bool, ops: list[Op], controls: list[Op],
                 windows: list[tuple[int, int]], config: CheckConfig, clock: _Clock) -> None:
        self.name = name
        self.fifo = fifo
        self.ops = ops
        self.controls = controls
        self.windows = windows
        self.config = config
        self.clock = clock
        self.eps_ns = int((config.epsilon_ms + config.skew_ms) * _NS_PER_MS)
        self.messages: dict[str, _Message] = {}
        self.report = QueueReport(name, fifo)
        # Per ok receive: its op and its batch as (key, handle) in response order.
        self.batches: list[tuple[Op, list[tuple[str, str]]]] = []

    def message(self, key: str) -> _Message:
        msg = self.messages.get(key)
        if msg is None:
            stream, n = _split_key(key, self.fifo)
            msg = self.messages[key] = _Message(key, stream, n)
        return msg

    def example(self, examples: list[str], text: str) -> None:
        if len(examples) < self.config.examples_max:
            examples.append(text)

    # -- building --

    def build(self) -> None:
        rep = self.report
        attempt_start: dict[str, int] = {}
        for op in self.ops:
            if op.f == "receive":
                attempt = op.value.get("attempt_id")
                if isinstance(attempt, str):
                    attempt_start[attempt] = min(attempt_start.get(attempt, op.t_inv), op.t_inv)
        deliveries: dict[tuple[str, str], _Delivery] = {}
        for op in self.ops:
            if op.f == "send":
                key = op.value.get("id")
                if not isinstance(key, str):
                    continue
                msg = self.message(key)
                msg.sends.append(op)
                body = op.value.get("body")
                md5 = op.value.get("md5")
                if op.type == "ok" and isinstance(body, str) and md5 is not None \
                        and md5 != hashlib.md5(body.encode("utf-8")).hexdigest():
                    rep.corrupted.append(f"{key}: MD5OfMessageBody of the send is {md5}")
            elif op.f == "receive" and op.type == "ok":
                self._add_receive(op, attempt_start, deliveries)
        by_handle = {d.handle: d.key for d in deliveries.values()}
        for op in self.ops:
            if op.f in ("delete", "change_visibility"):
                self._add_touches(op, by_handle)
        for msg in self.messages.values():
            msg.deliveries.sort(key=lambda d: (d.t_inv, d.t_end))

    def _add_receive(self, op: Op, attempt_start: dict[str, int],
                     deliveries: dict[tuple[str, str], _Delivery]) -> None:
        rep = self.report
        attempt = op.value.get("attempt_id")
        t_inv = attempt_start.get(attempt, op.t_inv) if isinstance(attempt, str) else op.t_inv
        vt_s = op.value.get("vt_s")
        vt_ns = int(vt_s * 1e9) if isinstance(vt_s, int | float) and vt_s > 0 else None
        batch: list[tuple[str, str]] = []
        for item in op.value.get("messages") or []:
            body = item.get("body")
            handle = str(item.get("handle"))
            key = body_key(body)
            if key is None:
                rep.corrupted.append(f"op {op.index}: body {str(body)[:60]!r} is not one we "
                                     "sent (format or hash)")
                continue
            md5 = item.get("md5")
            if isinstance(body, str) and md5 is not None \
                    and md5 != hashlib.md5(body.encode("utf-8")).hexdigest():
                rep.corrupted.append(f"{key}: MD5OfBody {md5} in op {op.index}")
            msg = self.message(key)
            group = item.get("group")
            if self.fifo and group is not None and group != msg.stream:
                rep.corrupted.append(f"{key}: MessageGroupId {group!r} in op {op.index}")
            if item.get("message_id") is not None:
                msg.message_ids.add(str(item["message_id"]))
            end = _end(op)
            found = deliveries.get((key, handle))
            if found is None:
                found = deliveries[(key, handle)] = _Delivery(
                    key, handle, t_inv, end, vt_ns, op.index, item.get("message_id"))
                msg.deliveries.append(found)
            else:
                found.t_inv = min(found.t_inv, t_inv)
                found.t_end = min(found.t_end, end)
            batch.append((key, handle))
        self.batches.append((op, batch))

    def _add_touches(self, op: Op, by_handle: dict[str, str]) -> None:
        for entry in op.value.get("entries") or []:
            handle = entry.get("handle")
            key = by_handle.get(handle) if isinstance(handle, str) else None
            if key is None and isinstance(entry.get("id"), str):
                key = entry["id"]
            if key is None:
                continue
            if op.type == "ok":
                # A batch answered 200 reports each entry; one it does not mention is
                # of unknown outcome.
                type_ = entry.get("type", "info")
            else:
                type_ = op.type
            self.message(key).touches.append(
                _Touch(op.f, str(type_), op.t_inv, _end(op),
                       handle if isinstance(handle, str) else None))

    # -- properties --

    def run(self) -> QueueReport:
        self.build()
        self.check_sets()
        for msg in self.messages.values():
            self.check_duplicates(msg)
        if self.fifo:
            self.check_order()
        self.check_liveness()
        return self.report

    def check_sets(self) -> None:
        rep = self.report
        streams: dict[str, list[_Message]] = {}
        for key in sorted(self.messages, key=self._sort_key):
            msg = self.messages[key]
            received = bool(msg.deliveries)
            if msg.sends:
                rep.attempted += 1
                if msg.acked:
                    rep.acked += 1
                elif msg.indeterminate:
                    rep.indeterminate += 1
                else:
                    rep.failed += 1
            if received:
                rep.unique_received += 1
                rep.deliveries += len(msg.deliveries)
                if msg.acked:
                    deletes = {t.type for t in msg.touches if t.kind == "delete"}
                    if "ok" not in deletes:
                        if "info" in deletes:
                            rep.maybe_deleted.append(key)
                        else:
                            rep.undeleted.append(key)
                elif msg.indeterminate:
                    rep.recovered.append(key)
                else:
                    rep.unexpected.append(key)
            if msg.acked or received:
                streams.setdefault(msg.stream, []).append(msg)
            if self.fifo and len(msg.message_ids) > 1:
                rep.fifo_duplicates += 1
                self.example(rep.fifo_duplicate_examples,
                             f"{key} enqueued as {len(msg.message_ids)} messages")
        for members in streams.values():
            seen = [m.n for m in members if m.deliveries and m.n is not None]
            low, high = (min(seen), max(seen)) if seen else (None, None)
            for msg in members:
                if msg.deliveries or not msg.acked:
                    continue
                rep.lost.append(msg.key)
                if low is None or high is None or msg.n is None or msg.n > high:
                    rep.lost_split["postfix"] += 1
                elif msg.n < low:
                    rep.lost_split["prefix"] += 1
                else:
                    rep.lost_split["middle"] += 1

    def _sort_key(self, key: str) -> tuple[str, int, str]:
        stream, n = _split_key(key, self.fifo)
        return (stream, -1 if n is None else n, key)

    def _lease_ended(self, msg: _Message, holder: _Delivery, before_ns: int) -> bool:
        """Whether something may have ended ``holder``'s lease before ``before_ns``."""
        for touch in msg.touches:
            if touch.type == "fail" or touch.t_inv >= before_ns:
                continue
            if touch.type == "ok" and touch.t_end <= holder.t_inv:
                continue  # done before the lease began (an info one may land any time later)
            if touch.kind == "change_visibility" or not self.fifo:
                return True
        return False

    def _inside(self, first: _Delivery, second: _Delivery) -> bool:
        """``second`` was served while ``first``'s lease surely held, if ``first`` was
        served first."""
        return first.vt_ns is not None and second.t_end < first.t_inv + first.vt_ns - self.eps_ns

    def _conflict(self, msg: _Message, a: _Delivery, b: _Delivery) -> bool:
        if a.t_end <= b.t_inv:
            return self._inside(a, b) and not self._lease_ended(msg, a, b.t_end)
        if b.t_end <= a.t_inv:
            return self._inside(b, a) and not self._lease_ended(msg, b, a.t_end)
        return (self._inside(a, b) and self._inside(b, a)
                and not self._lease_ended(msg, a, b.t_end)
                and not self._lease_ended(msg, b, a.t_end))

    def check_duplicates(self, msg: _Message) -> None:
        rep = self.report
        c = self.clock
        window_ns = int(self.config.fifo_dedup_window_ms * _NS_PER_MS)
        deletes_ok = [t for t in msg.touches if t.kind == "delete" and t.type == "ok"]
        for i, d in enumerate(msg.deliveries):
            if i == 0:
                continue
            surely_deleted = [t for t in deletes_ok if t.t_end <= d.t_inv]
            rival = next((e for e in msg.deliveries[:i] if self._conflict(msg, e, d)), None)
            if surely_deleted and (self.fifo or rival is None):
                rep.duplicates["after_delete"] += 1
                latest = max(t.t_end for t in surely_deleted)
                if self.fifo and d.t_inv - latest < window_ns:
                    rep.fifo_duplicates += 1
                    self.example(rep.fifo_duplicate_examples,
                                 f"{msg.key} delivered at {c.ms(d.t_inv)} ms after an ok "
                                 f"delete ended at {c.ms(latest)} ms")
                continue
            if rival is not None:
                rep.duplicates["lease"] += 1
                rep.lease_violations += 1
                self.example(
                    rep.lease_examples,
                    f"{msg.key} delivered [{c.ms(rival.t_inv)}, {c.ms(rival.t_end)}] ms "
                    f"(VT {None if rival.vt_ns is None else rival.vt_ns // _NS_PER_MS} ms) "
                    f"and again [{c.ms(d.t_inv)}, {c.ms(d.t_end)}] ms")
                continue
            may_precede = [t for t in msg.touches if t.t_inv < d.t_end]
            if any(t.kind == "change_visibility" and t.type != "fail" for t in may_precede):
                rep.duplicates["after_release"] += 1
            elif any(t.kind == "delete" and t.type == "ok" for t in may_precede):
                rep.duplicates["delete_race"] += 1
            elif any(t.kind == "delete" for t in may_precede):
                rep.duplicates["after_failed_delete"] += 1
            else:
                rep.duplicates["after_expiry"] += 1

    def check_order(self) -> None:
        rep = self.report
        c = self.clock
        groups: dict[str, list[_Message]] = {}
        for msg in self.messages.values():
            if msg.n is not None and (msg.acked or msg.deliveries):
                groups.setdefault(msg.stream, []).append(msg)
        index: dict[str, tuple[list[int], list[_Message], list[int], list[int]]] = {}
        for group, members in groups.items():
            members.sort(key=lambda m: m.n if m.n is not None else -1)
            seqs = [m.n for m in members if m.n is not None]
            deleted_at: list[int] = []   # prefix max of each message's first delete invoke
            last_seen: list[int] = []    # prefix max of each message's last delivery invoke
            for m in members:
                first_delete = min((t.t_inv for t in m.touches
                                    if t.kind == "delete" and t.type != "fail"),
                                   default=_FOREVER)
                latest = max((d.t_inv for d in m.deliveries), default=-_FOREVER)
                deleted_at.append(max(first_delete, deleted_at[-1] if deleted_at else -_FOREVER))
                last_seen.append(max(latest, last_seen[-1] if last_seen else -_FOREVER))
            index[group] = (seqs, members, deleted_at, last_seen)
        convicted: set[tuple[str, str]] = set()
        for op, batch in self.batches:
            end = _end(op)
            runs: dict[str, list[tuple[int, str, str]]] = {}
            for key, handle in batch:
                msg = self.messages[key]
                if msg.n is not None:
                    runs.setdefault(msg.stream, []).append((msg.n, key, handle))
            for group, run in runs.items():
                seqs, members, deleted_at, last_seen = index[group]
                earlier: set[int] = set()
                previous: int | None = None
                for n, key, handle in run:
                    reason: str | None = None
                    witness: _Message | None = None
                    if previous is not None and n <= previous:
                        reason = "batch_order"
                        witness = self.messages.get(next(k for m, k, _ in run if m == previous))
                    else:
                        low = min(earlier | {n})
                        cut = bisect.bisect_left(seqs, low)
                        suspects: list[_Message] = []
                        if cut and (deleted_at[cut - 1] >= end or last_seen[cut - 1] >= end):
                            suspects = members[:cut]
                        stop = bisect.bisect_left(seqs, n)
                        suspects += [m for m in members[cut:stop] if m.n not in earlier]
                        for m in suspects:
                            why = self._order_reason(m, key, handle, end)
                            if why is not None:
                                reason, witness = why, m
                                break
                    earlier.add(n)
                    previous = n if previous is None else max(previous, n)
                    if reason is None or (key, handle) in convicted:
                        continue
                    convicted.add((key, handle))
                    rep.order_violations += 1
                    self.example(
                        rep.order_examples,
                        f"{key} delivered by op {op.index} (ended {c.ms(end)} ms) before "
                        f"{witness.key if witness else '?'}: {reason}")

    def _order_reason(self, earlier: _Message, key: str, handle: str,
                      end: int) -> str | None:
        """Why ``earlier`` (a lower sequence number of the group) makes the delivery of
        ``key`` by a receive that ended at ``end`` out of order, or None if it does not."""
        deleted = any(t.kind == "delete" and t.type != "fail" and t.t_inv < end
                      for t in earlier.touches)
        later = any(d.t_inv >= end for d in earlier.deliveries)
        if deleted and not later:
            return None
        target = self.messages[key]
        mine = next((d for d in target.deliveries if d.handle == handle), None)
        if mine is not None:
            for other in earlier.deliveries:
                if other.t_end <= mine.t_inv and self._inside(other, mine) \
                        and not self._lease_ended(earlier, other, mine.t_end) \
                        and not any(t.kind == "delete" and t.type != "fail"
                                    and t.t_inv < mine.t_end for t in earlier.touches):
                    return "in_flight"
        return "not_deleted" if not deleted else "redelivered_later"

    def check_liveness(self) -> None:
        rep = self.report
        c = self.clock
        latencies: list[float] = []
        vts = [int(op.value["vt_s"] * 1e9) for op in self.ops if op.f == "receive"
               and isinstance(op.value.get("vt_s"), int | float)]
        for drain in self.controls:
            if drain.value.get("queue") == self.name:
                rep.drain = "caught up" if drain.type == "ok" else "not caught up"
        if not vts:
            return
        bound_ns = 2 * max(vts) + int(self.config.liveness_slack_ms * _NS_PER_MS)
        rep.liveness_bound_ms = bound_ns / _NS_PER_MS
        window_min = self.config.liveness_window_min_ms
        window_min_ns = bound_ns if window_min is None else int(window_min * _NS_PER_MS)
        windows = [(a, b) for a, b in self.windows if b - a >= window_min_ns]
        for key in sorted(self.messages, key=self._sort_key):
            msg = self.messages[key]
            acks = [s.t_end for s in msg.sends if s.type == "ok" and s.t_end is not None]
            if not acks:
                continue
            sent = min(acks)
            first = min((d.t_end for d in msg.deliveries), default=None)
            if first is not None:
                latencies.append(max(0, first - sent) / _NS_PER_MS)
            if not any(a <= sent and sent + bound_ns <= b for a, b in windows):
                continue
            rep.liveness_judged += 1
            if first is None or first > sent + bound_ns:
                rep.liveness_late += 1
                self.example(rep.liveness_examples,
                             f"{key} acked at {c.ms(sent)} ms, first delivered at "
                             f"{c.ms(first)} ms")
        latencies.sort()
        if latencies:
            rep.delivery_latency_ms = _stats(latencies)


def _stats(sorted_ms: list[float]) -> dict[str, float]:
    return {"count": len(sorted_ms), "p50": round(percentile(sorted_ms, 0.5), 2),
            "p99": round(percentile(sorted_ms, 0.99), 2), "max": round(sorted_ms[-1], 2)}


def _merge(intervals: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def check(events: Iterable[dict[str, Any]], config: CheckConfig | None = None) -> Report:
    """Check a history given as events (``load_history``'s or ``Recorder.events()``)."""
    return check_ops(pair_ops(events), config)


def check_ops(ops: list[Op], config: CheckConfig | None = None) -> Report:
    """Check a history given as paired operations."""
    config = config or CheckConfig()
    if not ops:
        return Report([], [], {}, {}, config)
    origin = min(op.t_inv for op in ops)
    horizon = max(max(op.t_inv, op.t_end or op.t_inv) for op in ops)
    clock = _Clock(origin)
    faults_raw = [op for op in ops if op.process == NEMESIS]
    controls = [op for op in ops if op.process == CONTROL and op.f == "drain"]
    fault_spans = _merge([(op.t_inv, horizon if op.t_end is None else op.t_end)
                          for op in faults_raw])
    windows: list[tuple[int, int]] = []
    cursor = origin
    for start, end in fault_spans:
        if start > cursor:
            windows.append((cursor, start))
        cursor = max(cursor, end)
    if horizon > cursor:
        windows.append((cursor, horizon))

    by_queue: dict[str, list[Op]] = {}
    fifo_of: dict[str, bool] = {}
    counts: dict[str, Counter[str]] = {}
    latency: dict[str, list[float]] = {}
    for op in ops:
        if op.process in (NEMESIS, CONTROL):
            continue
        counts.setdefault(op.f, Counter())[op.type] += 1
        if op.type == "ok" and op.t_end is not None:
            latency.setdefault(op.f, []).append((op.t_end - op.t_inv) / _NS_PER_MS)
        if op.f in _MESSAGE_FS:
            name = str(op.value.get("queue", "?"))
            by_queue.setdefault(name, []).append(op)
            fifo_of[name] = fifo_of.get(name, False) or _is_fifo(op.value)

    queues = [_QueueCheck(name, fifo_of[name], queue_ops, controls, windows, config,
                          clock).run()
              for name, queue_ops in sorted(by_queue.items())]

    faults: list[FaultReport] = []
    sends = sorted((op for op in ops if op.f == "send" and op.type == "ok"),
                   key=lambda op: op.t_inv)
    receives = sorted((op for op in ops if op.f == "receive" and op.type == "ok"),
                      key=lambda op: op.t_inv)

    def first_ok(sorted_ops: list[Op], after: int | None) -> float | None:
        if after is None:
            return None
        starts = [op.t_inv for op in sorted_ops]
        i = bisect.bisect_left(starts, after)
        done = [op.t_end for op in sorted_ops[i:] if op.t_end is not None]
        return None if not done else round((min(done) - after) / _NS_PER_MS, 1)

    for op in faults_raw:
        start_ms = clock.ms(op.t_inv)
        faults.append(FaultReport(
            name=op.f, node=op.node,
            start_ms=0.0 if start_ms is None else start_ms, end_ms=clock.ms(op.t_end),
            send_ms=first_ok(sends, op.t_inv), receive_ms=first_ok(receives, op.t_inv),
            send_after_end_ms=first_ok(sends, op.t_end),
            receive_after_end_ms=first_ok(receives, op.t_end)))
    latency_ms = {f: _stats(sorted(values)) for f, values in latency.items()}
    return Report(queues, faults, {f: dict(c) for f, c in counts.items()}, latency_ms, config)


def longest_ok_gap(ops: Iterable[Op], f: str, start_ns: int, end_ns: int) -> tuple[int, int]:
    """P7 over a stretch: the longest part ``(from_ns, to_ns)`` of ``[start_ns, end_ns]``
    in which no ``ok`` ``f`` operation invoked at or after ``start_ns`` completed.

    Completions, as in P7, are the clients' view of "it worked by then"; only
    operations invoked within the stretch count, so an answer to a request sent before
    a fault does not hide an outage that began with it. With no such completion the
    whole stretch is the gap. Reported by fault tests, never a violation."""
    if end_ns < start_ns:
        raise ValueError(f"the stretch ends ({end_ns}) before it starts ({start_ns})")
    points = sorted(op.t_end for op in ops
                    if op.f == f and op.type == "ok" and op.t_end is not None
                    and op.t_inv >= start_ns and op.t_end <= end_ns)
    best = (start_ns, start_ns)
    previous = start_ns
    for point in [*points, end_ns]:
        if point - previous > best[1] - best[0]:
            best = (previous, point)
        previous = point
    return best
