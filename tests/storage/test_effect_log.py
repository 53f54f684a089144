"""The effect log is the whole truth: a random workload through the real service, and
after every step the live broker's complete state equals (a) a fresh broker that applied
every effect the service committed, captured at the store seam and decoded through the
replication codec, and (b) a fresh broker restored from the store's ``load()``.

A twin service gets the same requests at the same times, and is restarted (its core
restored from its store) or failed over (its core replaced by one that replayed its
log) at random steps: every answer and its whole state must stay the same as the
uninterrupted one's. That catches state a node keeps but no effect carries even where
the state dump would not show it, since the twin's later answers change.

The workload covers sends and batches, receives with and without attempt ids, deletes
and visibility changes (single and batch), purges, queue creation, deletion and
attribute changes, redrives into dead-letter queues, move tasks and their pacing,
retention, housekeeping, clock jumps both ways, and failing requests (bad parameters,
unknown queues, stale and expired receipt handles). The state compared is
``Broker.dump_state``: every message's fields and state, dedup entries, attempt caches,
queue records, deletions, tasks and high-water marks. What it leaves out, and why, is
in ``MessageQueue.dump_state``; the one choice made here is an unbounded body budget,
so that every record holds its body in all three brokers (which bodies a bounded
budget keeps in memory is a cache, and differs by design between a node that received
the messages in order and one restored from disk).
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from _doubles import CountingEntropy, PassingStore
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from ferrymq._api import CallContext
from ferrymq._core._broker import Broker
from ferrymq._core._effects import Effect, decode_effects, encode_effects
from ferrymq._core._errors import SqsError
from ferrymq._service import QueueService, restore_into
from ferrymq._storage import Store, open_store

T0 = 1_700_000_000_000
CTX = CallContext(request_id="r", base_url="http://h:1")
ARN = "arn:aws:sqs:us-east-1:000000000000:"
# The queues the workload uses: two sources and their dead-letter queues.
SOURCES = {"src": "dlq", "f.fifo": "fdlq.fifo"}
QUEUES = ["src", "dlq", "f.fifo", "fdlq.fifo"]
# Clock jumps: within a visibility timeout (2 s by default here), past one, past
# retention (60 s queues), past the dedup and attempt windows, and back.
JUMPS_MS = [1, 999, 1_000, 3_000, 3_000, 31_000, 61_000, 301_000, -1_500, -45_000]


def url(name: str) -> str:
    return f"http://h:1/000000000000/{name}"


class RecordingStore(PassingStore):
    """The store seam: every committed effect goes through the replication codec into
    ``log``, then into the real store."""

    def __init__(self, inner: Store) -> None:
        super().__init__(inner)
        self.log: list[Effect] = []

    async def commit(self, effects: Sequence[Effect],
                     fetch_bodies: Sequence[tuple[str, str]] = ()) -> list[str | None]:
        bodies = await self.inner.commit(effects, fetch_bodies)
        self.log.extend(decode_effects(encode_effects(effects)))  # only once durable
        return bodies


# Requests that fail after the broker has resolved their queue (so after retention).
BAD_REQUESTS = st.sampled_from([
    ("SendMessage", {"MessageBody": ""}),
    ("SendMessage", {"MessageBody": "x", "DelaySeconds": 901}),
    ("SendMessageBatch", {"Entries": []}),
    ("ReceiveMessage", {"MaxNumberOfMessages": 11}),
    ("ReceiveMessage", {"ReceiveRequestAttemptId": "bad id"}),
    ("DeleteMessage", {"ReceiptHandle": "not-a-handle"}),
    ("ChangeMessageVisibility", {"ReceiptHandle": "bm90OmEtaGFuZGxl", "VisibilityTimeout": 1}),
    ("DeleteMessageBatch", {"Entries": [{"Id": "x", "ReceiptHandle": "a"}] * 11}),
    ("GetQueueAttributes", {"AttributeNames": ["NoSuchAttribute"]}),
])


def make_broker() -> Broker:
    return Broker(purge_interval_ms=60_000, recreate_delay_ms=60_000)


def first_difference(a: Any, b: Any, path: str = "state") -> str | None:
    """Where two dumps differ, as a path (the full diff of two dumps is unreadable)."""
    if type(a) is not type(b):
        return f"{path}: {a!r} != {b!r}"
    if isinstance(a, dict):
        for key in sorted(set(a) | set(b), key=repr):
            if key not in a or key not in b:
                return f"{path}[{key!r}] only in {'live' if key in a else 'other'}"
            found = first_difference(a[key], b[key], f"{path}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(a, list | tuple):
        for index, (x, y) in enumerate(zip(a, b, strict=False)):
            found = first_difference(x, y, f"{path}[{index}]")
            if found:
                return found
        if len(a) != len(b):
            return f"{path}: {len(a)} items != {len(b)}"
        return None
    return None if a == b else f"{path}: {a!r} != {b!r}"


class EffectLogMachine(RuleBasedStateMachine):
    store_kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self.now_ms = T0
        self.directory = tempfile.mkdtemp(prefix="ferry-effect-log-")
        self.inner = open_store(self.store_kind, Path(self.directory) / "store.db")
        self.store = RecordingStore(self.inner)
        self.service = QueueService(make_broker(), self.store, clock_ms=lambda: self.now_ms,
                                    entropy=CountingEntropy())
        self.twin_store = RecordingStore(
            open_store(self.store_kind, Path(self.directory) / "twin.db"))
        self.twin = QueueService(make_broker(), self.twin_store, clock_ms=lambda: self.now_ms,
                                 entropy=CountingEntropy())
        self.loop = asyncio.new_event_loop()
        self.handles: list[tuple[str, str]] = []  # (queue, receipt handle), maybe stale
        self.tasks: list[str] = []
        self.serial = 0
        self.failures = 0

    def teardown(self) -> None:
        self.loop.run_until_complete(self.service.close())
        self.loop.run_until_complete(self.twin.close())
        self.loop.close()
        shutil.rmtree(self.directory, ignore_errors=True)

    # ---- helpers ---------------------------------------------------------------

    def _answer(self, service: QueueService, action: str,
                params: dict[str, Any]) -> dict[str, Any] | tuple[str, str]:
        try:
            return self.loop.run_until_complete(service.call(action, params, CTX))
        except SqsError as exc:
            return exc.shape, exc.message

    def call(self, action: str, **params: Any) -> dict[str, Any] | None:
        """The service's answer (the twin's must be the same), or None when it answered
        with an SqsError."""
        answer = self._answer(self.service, action, params)
        twin_answer = self._answer(self.twin, action, params)
        assert twin_answer == answer, (action, params)
        if isinstance(answer, tuple):
            self.failures += 1
            return None
        return answer

    def housekeep(self) -> None:
        for service in (self.service, self.twin):
            self.loop.run_until_complete(service.housekeep_once())

    def redrive(self, dlq: str, max_receive_count: int) -> str:
        return json.dumps({"deadLetterTargetArn": ARN + dlq,
                           "maxReceiveCount": max_receive_count})

    def create(self, name: str, retention_s: int, redrive_count: int | None) -> None:
        attributes = {"MessageRetentionPeriod": str(retention_s), "VisibilityTimeout": "2"}
        if name.endswith(".fifo"):
            attributes["FifoQueue"] = "true"
        if redrive_count is not None and name in SOURCES:
            attributes["RedrivePolicy"] = self.redrive(SOURCES[name], redrive_count)
        self.call("CreateQueue", QueueName=name, Attributes=attributes)

    # ---- rules -------------------------------------------------------------------

    @initialize(retention_s=st.sampled_from([60, 345_600]))
    def queues(self, retention_s: int) -> None:
        for name in ("dlq", "fdlq.fifo"):
            self.create(name, 345_600, None)
        for name in SOURCES:
            self.create(name, retention_s, 1)

    def holds_messages(self, name: str) -> bool:
        messages = self.service.broker.queue_messages(name)
        return messages is not None and bool(messages.snapshot())

    @rule(name=st.sampled_from(QUEUES), retention_s=st.sampled_from([60, 345_600]),
          redrive_count=st.none() | st.sampled_from([1, 2]))
    def create_queue(self, name: str, retention_s: int, redrive_count: int | None) -> None:
        self.create(name, retention_s, redrive_count)

    @rule(name=st.sampled_from(QUEUES))
    def delete_queue(self, name: str) -> None:
        self.call("DeleteQueue", QueueUrl=url(name))

    @rule(name=st.sampled_from(QUEUES), attributes=st.sampled_from([
        {"VisibilityTimeout": "0"}, {"VisibilityTimeout": "30"},
        {"MessageRetentionPeriod": "60"}, {"MessageRetentionPeriod": "345600"},
        {"DelaySeconds": "2"}, {"DelaySeconds": "0"}, {"RedrivePolicy": ""},
        {"VisibilityTimeout": "-1"},  # refused
    ]))
    def set_attributes(self, name: str, attributes: dict[str, str]) -> None:
        self.call("SetQueueAttributes", QueueUrl=url(name), Attributes=attributes)

    @rule(name=st.sampled_from([*QUEUES, *SOURCES]),  # sources twice as often
          body=st.sampled_from(["a", "b", "ü\U0001f600"]),
          group=st.sampled_from(["g1", "g2"]), dedup=st.sampled_from(["d1", "d2", None]),
          delay_s=st.sampled_from([0, 0, 3]), count=st.integers(1, 5))
    def send(self, name: str, body: str, group: str, dedup: str | None, delay_s: int,
             count: int) -> None:
        for _ in range(count):
            params: dict[str, Any] = {"QueueUrl": url(name), "MessageBody": body}
            if name.endswith(".fifo"):
                self.serial += 1
                params.update(MessageGroupId=group,
                              MessageDeduplicationId=dedup or f"u{self.serial}")
            elif delay_s:
                params["DelaySeconds"] = delay_s
            self.call("SendMessage", **params)

    @rule(name=st.sampled_from(QUEUES), count=st.integers(1, 4), bad=st.booleans())
    def send_batch(self, name: str, count: int, bad: bool) -> None:
        entries = []
        for i in range(count):
            self.serial += 1
            entry: dict[str, Any] = {"Id": f"e{i}", "MessageBody": f"batch {self.serial}"}
            if name.endswith(".fifo"):
                entry.update(MessageGroupId=f"g{i % 2 + 1}",
                             MessageDeduplicationId=f"u{self.serial}")
            entries.append(entry)
        if bad:
            entries[0]["MessageBody"] = "\x01"  # a per-entry failure
        self.call("SendMessageBatch", QueueUrl=url(name), Entries=entries)

    # Receives are what most of the state machine's transitions start from: two rules
    # (one for the sources alone) make them about twice as frequent as other steps.
    RECEIVE_ARGS = {
        "max_n": st.integers(1, 10), "visibility_s": st.sampled_from([None, 0, 0, 2, 40]),
        "attempt": st.sampled_from([None, None, "a1", "a2"]),
    }

    @rule(name=st.sampled_from(QUEUES), **RECEIVE_ARGS)
    def receive(self, name: str, max_n: int, visibility_s: int | None,
                attempt: str | None) -> None:
        self._receive(name, max_n, visibility_s, attempt)

    @rule(name=st.sampled_from(sorted(SOURCES)), **RECEIVE_ARGS)
    def receive_from_a_source(self, name: str, max_n: int, visibility_s: int | None,
                              attempt: str | None) -> None:
        self._receive(name, max_n, visibility_s, attempt)

    @rule(name=st.sampled_from(sorted(SOURCES)), attempt=st.sampled_from([None, "a1"]))
    def receive_twice(self, name: str, attempt: str | None) -> None:
        """What it takes to receive a message again, or to redrive it: a receive that
        leaves it visible (visibility 0), then another."""
        self._receive(name, 10, 0, attempt)
        self._receive(name, 10, None, attempt)

    def _receive(self, name: str, max_n: int, visibility_s: int | None,
                 attempt: str | None) -> None:
        params: dict[str, Any] = {"QueueUrl": url(name), "MaxNumberOfMessages": max_n,
                                  "WaitTimeSeconds": 0}
        if visibility_s is not None:
            params["VisibilityTimeout"] = visibility_s
        if attempt is not None and name.endswith(".fifo"):
            params["ReceiveRequestAttemptId"] = attempt
        got = self.call("ReceiveMessage", **params)
        for message in (got or {}).get("Messages", ()):
            self.handles.append((name, message["ReceiptHandle"]))

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        name, handle = data.draw(st.sampled_from(self.handles))
        self.call("DeleteMessage", QueueUrl=url(name), ReceiptHandle=handle)

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), timeout_s=st.sampled_from([0, 10, 43_200]))
    def change_visibility(self, data: st.DataObject, timeout_s: int) -> None:
        name, handle = data.draw(st.sampled_from(self.handles))
        self.call("ChangeMessageVisibility", QueueUrl=url(name), ReceiptHandle=handle,
                  VisibilityTimeout=timeout_s)

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), delete=st.booleans())
    def on_a_batch_of_handles(self, data: st.DataObject, delete: bool) -> None:
        name = data.draw(st.sampled_from(sorted({q for q, _ in self.handles})))
        handles = [h for q, h in self.handles if q == name][-3:]
        entries: list[dict[str, Any]] = [
            {"Id": f"h{i}", "ReceiptHandle": h} for i, h in enumerate(handles)]
        if delete:
            self.call("DeleteMessageBatch", QueueUrl=url(name), Entries=entries)
        else:
            for entry in entries:
                entry["VisibilityTimeout"] = 7
            self.call("ChangeMessageVisibilityBatch", QueueUrl=url(name), Entries=entries)

    @rule(name=st.sampled_from(QUEUES))
    def purge(self, name: str) -> None:
        self.call("PurgeQueue", QueueUrl=url(name))

    @rule(name=st.sampled_from(QUEUES))
    def get_attributes(self, name: str) -> None:
        self.call("GetQueueAttributes", QueueUrl=url(name), AttributeNames=["All"])

    # Mostly when there is something to move: a task started on an empty queue is done
    # at its first step.
    @precondition(lambda self: self.holds_messages("dlq") or self.holds_messages("fdlq.fifo"))
    @rule(dlq=st.sampled_from(["dlq", "fdlq.fifo", "src"]),
          rate=st.sampled_from([None, 1, 3]), elsewhere=st.booleans(),
          steps=st.sampled_from([0, 1, 2, 3]), restart_at=st.sampled_from([None, 1, 2]),
          from_log=st.booleans())
    def start_move_task(self, dlq: str, rate: int | None, elsewhere: bool, steps: int,
                        restart_at: int | None, from_log: bool) -> None:
        """Start a task (back to each message's source, or to a named queue), and let
        it run for up to three housekeeping steps of a second, the twin restarting in
        between (its pace must survive that)."""
        params: dict[str, Any] = {"SourceArn": ARN + dlq}
        if rate is not None:
            params["MaxNumberOfMessagesPerSecond"] = rate
        if elsewhere:
            params["DestinationArn"] = ARN + ("f.fifo" if dlq.endswith(".fifo") else "src")
        got = self.call("StartMessageMoveTask", **params)
        if got is not None:
            self.tasks.append(got["TaskHandle"])
        for step in range(steps):
            if step == restart_at:
                self.restart_the_twin(from_log)
            self.clock(1_000, True)

    @precondition(lambda self: self.tasks)
    @rule(data=st.data())
    def cancel_move_task(self, data: st.DataObject) -> None:
        self.call("CancelMessageMoveTask", TaskHandle=data.draw(st.sampled_from(self.tasks)))

    @rule(jump_ms=st.sampled_from(JUMPS_MS), housekeeping=st.booleans())
    def clock(self, jump_ms: int, housekeeping: bool) -> None:
        """Time passes, and the housekeeping timer may run (retention of idle queues,
        the next step of move tasks): it does whenever a move task runs, as its 100 ms
        timer would."""
        self.now_ms += jump_ms
        if housekeeping or self.service.broker.has_running_tasks():
            self.housekeep()

    @rule(from_log=st.booleans())
    def restart_the_twin(self, from_log: bool) -> None:
        """The twin's core is rebuilt from what it wrote down: its store (a restart), or
        its effect log as replication would ship it (a follower taking over)."""
        broker = make_broker()
        if from_log:
            for effect in self.twin_store.log:
                broker.apply(effect)
        else:
            restore_into(broker, self.twin_store.load())
        self.twin.broker = broker

    @rule(name=st.sampled_from([*QUEUES, "missing"]), case=BAD_REQUESTS)
    def failing_request(self, name: str, case: tuple[str, dict[str, Any]]) -> None:
        action, params = case
        self.call(action, QueueUrl=url(name), **params)

    @rule(name=st.sampled_from(sorted(SOURCES)), case=BAD_REQUESTS)
    def idle_then_failing_request(self, name: str, case: tuple[str, dict[str, Any]]) -> None:
        """A queue nobody touched for longer than its retention (60 s in half of the
        runs), then a request on it that fails: the retention it runs into is due all
        the same, and must reach the store."""
        self.now_ms += 61_000
        self.failing_request(name, case)

    # ---- the property ----------------------------------------------------------------

    @invariant()
    def the_log_is_the_whole_truth(self) -> None:
        live = self.service.broker.dump_state(self.now_ms)
        replayed = make_broker()
        for effect in self.store.log:
            replayed.apply(effect)
        restored = make_broker()
        restore_into(restored, self.inner.load())
        for name, other in (("replayed", replayed), ("restored", restored),
                            ("the twin", self.twin.broker)):
            dumped = other.dump_state(self.now_ms)
            assert dumped == live, f"{name}: {first_difference(live, dumped)}"


class SqliteEffectLogMachine(EffectLogMachine):
    store_kind = "sqlite"


@pytest.mark.parametrize("machine", [EffectLogMachine, SqliteEffectLogMachine],
                         ids=["memory", "sqlite"])
def test_the_effect_log_is_the_whole_truth(machine: type[EffectLogMachine]) -> None:
    machine.TestCase.settings = settings(
        max_examples=100, stateful_step_count=50, deadline=None, derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    machine.TestCase().runTest()
