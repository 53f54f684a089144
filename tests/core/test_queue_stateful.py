"""Model-based test: MessageQueue (with a dead-letter queue) against a deliberately
naive reference model made of lists and dicts, driven by hypothesis: sends (with
per-message delays on standard queues), receives with visibility timeouts, deletes,
visibility changes, the clock, purge, retention, FIFO groups and dedup, redrive, and
rebuilding from effects.

The FIFO rule the model encodes is the one recorded on SQS: a group is delivered from
its head, in order, up to its first message that is not visible (what comes after an
in-flight message is held back, what comes before it is not), and groups go in the
order their heads became visible (ties: sequence order). A FIFO receipt handle is good
only while its receive holds the message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from _doubles import CountingEntropy
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from ferrymq._core._effects import Effect, MessageStored
from ferrymq._core._errors import SqsError
from ferrymq._core._messages import decode_receipt_handle
from ferrymq._core._queue import DEDUP_WINDOW_MS, MessageQueue
from ferrymq._core._settings import QueueSettings

T0 = 1_700_000_000_000
RETENTION_MS = 60_000
MAX_RECEIVE_COUNT = 2


@dataclass
class ModelMessage:
    id: str
    group: str | None
    sent_ms: int
    visible_at_ms: int
    count: int = 0
    token: str | None = None


class ModelQueue:
    """Lists in delivery order; every question answered by a scan."""

    def __init__(self) -> None:
        self.messages: list[ModelMessage] = []
        self.dedup: dict[str, tuple[str, int]] = {}  # key -> (message id, expires_at_ms)

    def find(self, message_id: str) -> ModelMessage | None:
        return next((m for m in self.messages if m.id == message_id), None)

    def in_flight(self, m: ModelMessage, now: int) -> bool:
        return m.token is not None and m.visible_at_ms > now

    def counts(self, now: int) -> tuple[int, int, int]:
        visible = sum(m.visible_at_ms <= now for m in self.messages)
        inflight = sum(self.in_flight(m, now) for m in self.messages)
        return visible, inflight, len(self.messages) - visible - inflight

    def expire(self, now: int) -> None:
        self.messages = [m for m in self.messages if m.sent_ms + RETENTION_MS > now]
        self.dedup = {k: v for k, v in self.dedup.items() if v[1] > now}


def make_queue(name: str, fifo: bool, dlq: str | None) -> MessageQueue:
    return MessageQueue(
        name,
        f"arn:aws:sqs:us-east-1:123456789012:{name}",
        QueueSettings(
            fifo=fifo,
            visibility_timeout_ms=10_000,
            retention_ms=RETENTION_MS,
            dead_letter_queue=dlq,
            max_receive_count=MAX_RECEIVE_COUNT,
        ),
    )


class QueueMachine(RuleBasedStateMachine):
    fifo = False

    def __init__(self) -> None:
        super().__init__()
        suffix = ".fifo" if self.fifo else ""
        self.dlq = make_queue("dlq" + suffix, self.fifo, None)
        self.q = make_queue("main" + suffix, self.fifo, self.dlq.name)
        self.model = ModelQueue()
        self.dlq_model = ModelQueue()
        self.now = T0
        self.entropy = CountingEntropy()
        self.effects: list[Effect] = []
        self.handles: list[str] = []
        self.last_batch: list[str] = []  # handles of the latest receive of 2+ messages
        self.serial = 0  # for fresh deduplication ids

    # ---- helpers -------------------------------------------------------------

    def _holds(self, m: ModelMessage, token: str) -> bool:
        """Whether the receive that issued ``token`` still holds ``m`` (FIFO handles
        expire when superseded or when the visibility timeout lapses)."""
        return m.token == token and self.model.in_flight(m, self.now)

    def _expire(self) -> None:
        self.effects += self.q.expire(self.now)
        self.effects += self.dlq.expire(self.now)
        self.model.expire(self.now)
        self.dlq_model.expire(self.now)

    def _expected_receive(self, max_n: int, visibility_s: int) -> list[str]:
        """Apply a receive to the model; returns delivered ids in order."""
        now, model = self.now, self.model
        out: list[str] = []

        def take(m: ModelMessage) -> bool:
            if m.count >= MAX_RECEIVE_COUNT:
                model.messages.remove(m)
                self.dlq_model.messages.append(
                    ModelMessage(m.id, m.group, m.sent_ms, now, m.count)
                )
                return False
            m.count += 1
            m.token = "?"  # filled in from the real handle
            m.visible_at_ms = now + visibility_s * 1000
            out.append(m.id)
            return True

        if not self.fifo:
            for m in [m for m in model.messages if m.visible_at_ms <= now]:
                if len(out) == max_n:
                    break
                take(m)
            return out
        visited: set[str] = set()
        while len(out) < max_n:
            heads: dict[str, tuple[int, ModelMessage]] = {}
            for index, m in enumerate(model.messages):
                if m.group is not None and m.group not in heads:
                    heads[m.group] = (index, m)
            offers = sorted(
                (head.visible_at_ms, index, group)
                for group, (index, head) in heads.items()
                if group not in visited and head.visible_at_ms <= now
            )
            if not offers:
                break
            group = offers[0][2]
            for m in [m for m in model.messages if m.group == group]:
                if len(out) == max_n or m.visible_at_ms > now:
                    break  # held back behind a message that is not visible
                if take(m):
                    visited.add(group)
        return out

    # ---- rules ---------------------------------------------------------------

    @rule(body=st.sampled_from(["a", "b", "c"]), group=st.sampled_from(["g1", "g2", "g3"]),
          dedup=st.sampled_from(["d1", "d2", "d3", "d4", "d5"]),
          delay_s=st.sampled_from([0, 0, 1, 5]))
    def send(self, body: str, group: str, dedup: str, delay_s: int) -> None:
        self._send(body, group, dedup, delay_s)

    @rule(group=st.sampled_from(["g1", "g2", "g3"]), count=st.integers(2, 4))
    def send_several_to_one_group(self, group: str, count: int) -> None:
        """A run of distinct messages in one group (fresh deduplication ids): without
        it most FIFO groups hold a single message, since ``send`` draws from 5 ids."""
        for _ in range(count):
            self.serial += 1
            self._send("s", group, f"u{self.serial}", 0)

    def _send(self, body: str, group: str, dedup: str, delay_s: int) -> None:
        self._expire()
        params: dict[str, Any] = {"MessageBody": body, "MessageGroupId": group}
        if self.fifo:
            params["MessageDeduplicationId"] = dedup
            delay_s = 0  # FIFO queues refuse per-message delays
        elif delay_s:
            params["DelaySeconds"] = delay_s
        response, effects = self.q.send_message(params, self.now, self.entropy, "S")
        self.effects += effects
        if self.fifo and dedup in self.model.dedup:
            assert response["MessageId"] == self.model.dedup[dedup][0]
            assert effects == []
            return
        self.model.messages.append(
            ModelMessage(response["MessageId"], group if self.fifo else None, self.now,
                         self.now + delay_s * 1000)
        )
        if self.fifo:
            self.model.dedup[dedup] = (response["MessageId"], self.now + DEDUP_WINDOW_MS)

    @rule(max_n=st.integers(1, 10), visibility_s=st.sampled_from([0, 1, 5, 30]))
    def receive(self, max_n: int, visibility_s: int) -> None:
        self._expire()
        expected = self._expected_receive(max_n, visibility_s)
        response, effects, _ = self.q.receive_message(
            {"MaxNumberOfMessages": max_n, "VisibilityTimeout": visibility_s},
            self.now, self.entropy, self.dlq,
        )
        self.effects += effects
        got = response.get("Messages", [])
        assert [m["MessageId"] for m in got] == expected
        if self.fifo:
            # The rule itself, independent of the model's ordering of groups: what a
            # receive returns of a group is that group's first live messages, in order
            # (nothing earlier of the group is held back while a later one is returned).
            by_group: dict[str | None, list[str]] = {}
            for message in got:
                received = self.model.find(message["MessageId"])
                assert received is not None
                by_group.setdefault(received.group, []).append(received.id)
            for group, ids in by_group.items():
                members = [m.id for m in self.model.messages if m.group == group]
                assert members[: len(ids)] == ids, (group, ids, members)
        for message in got:
            model_message = self.model.find(message["MessageId"])
            assert model_message is not None
            model_message.token = decode_receipt_handle(message["ReceiptHandle"])[1]
            self.handles.append(message["ReceiptHandle"])
        if len(got) > 1:
            self.last_batch = [message["ReceiptHandle"] for message in got]

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        self._expire()
        handle = data.draw(st.sampled_from(self.handles))
        message_id, token = decode_receipt_handle(handle)
        m = self.model.find(message_id)
        expired = m is not None and self.fifo and not self._holds(m, token)
        try:
            _, effects = self.q.delete_message({"ReceiptHandle": handle}, self.now)
        except SqsError as exc:
            assert expired and "expired" in exc.message
            return
        assert not expired
        self.effects += effects
        if m is not None:
            self.model.messages.remove(m)

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), timeout_s=st.sampled_from([0, 2, 20]))
    def change_visibility(self, data: st.DataObject, timeout_s: int) -> None:
        self._change_visibility(data.draw(st.sampled_from(self.handles)), timeout_s)

    @precondition(lambda self: self.last_batch)
    @rule(first=st.booleans())
    def change_visibility_within_a_receive(self, first: bool) -> None:
        """The first message of the latest multi-message receive made visible, or its
        last one held longer, while the others stay in flight: the states in which a
        FIFO group's earlier messages are visible and later ones are not (rare when
        handles are drawn at random)."""
        if first:
            self._change_visibility(self.last_batch[0], 0)
        else:
            self._change_visibility(self.last_batch[-1], 20)

    def _change_visibility(self, handle: str, timeout_s: int) -> None:
        self._expire()
        message_id, token = decode_receipt_handle(handle)
        m = self.model.find(message_id)
        fails = m is None or m.token is None or (self.fifo and not self._holds(m, token))
        try:
            _, effects = self.q.change_message_visibility(
                {"ReceiptHandle": handle, "VisibilityTimeout": timeout_s}, self.now
            )
        except SqsError:
            assert fails
            return
        assert not fails and m is not None
        self.effects += effects
        m.visible_at_ms = self.now + timeout_s * 1000

    @rule(ms=st.sampled_from([1, 999, 1000, 5_000, 20_000]))
    def advance(self, ms: int) -> None:
        self.now += ms

    @rule()
    def purge(self) -> None:
        self.effects += self.q.purge(self.now)
        self.model = ModelQueue()

    @rule()
    def rebuild_from_effects(self) -> None:
        rebuilt = []
        for old in (self.q, self.dlq):
            fresh = MessageQueue(old.name, old.arn, old.settings)
            for effect in self.effects:
                name = effect.record.queue if isinstance(effect, MessageStored) else getattr(
                    effect, "queue", None)
                if name == old.name:
                    fresh.apply(effect)
            assert fresh.snapshot() == old.snapshot()
            assert fresh.counts(self.now) == old.counts(self.now)
            assert fresh.dedup_entries(self.now) == old.dedup_entries(self.now)
            rebuilt.append(fresh)
        # Carry on with the rebuilt queues: the model then checks they behave alike.
        self.q, self.dlq = rebuilt

    # ---- invariants ------------------------------------------------------------

    @invariant()
    def same_observable_state(self) -> None:
        for real, model in ((self.q, self.model), (self.dlq, self.dlq_model)):
            assert real.counts(self.now) == model.counts(self.now)
            snapshot = {r.message_id: (r.receive_count, r.visible_at_ms) for r in real.snapshot()}
            assert snapshot == {m.id: (m.count, m.visible_at_ms) for m in model.messages}
            pending = [m.visible_at_ms for m in model.messages if m.visible_at_ms > self.now]
            nxt = real.next_visible_ms()
            assert (nxt if nxt is not None and nxt > self.now else None) == (
                min(pending) if pending else None)


class FifoQueueMachine(QueueMachine):
    fifo = True


_SETTINGS = settings(
    max_examples=150, stateful_step_count=50, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("machine", [QueueMachine, FifoQueueMachine])
def test_queue_matches_model(machine: type[QueueMachine]) -> None:
    machine.TestCase.settings = _SETTINGS
    machine.TestCase().runTest()
