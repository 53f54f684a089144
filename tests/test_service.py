"""The I/O shell's own pieces: its entropy source and its commit-before-ack and
long-poll behaviour over the real in-memory and SQLite stores (no server)."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from _doubles import CountingEntropy, HeldStore

from ferrymq._api import CallContext
from ferrymq._core._broker import Broker
from ferrymq._core._errors import SqsError
from ferrymq._service import QueueService, SystemEntropy
from ferrymq._storage import open_store

CTX = CallContext(request_id="r", base_url="http://h:1")
URL = "http://h:1/000000000000/q"


def test_message_ids_are_unique_time_ordered_uuid7() -> None:
    entropy = SystemEntropy()
    ids = [entropy.message_id() for _ in range(20_000)]  # spans many pool refills
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    for text in ids[:: 997]:
        parsed = uuid.UUID(text)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == text


def test_tokens_are_unique_and_url_safe() -> None:
    entropy = SystemEntropy()
    tokens = {entropy.token() for _ in range(5_000)}
    assert len(tokens) == 5_000
    assert all(len(t) == 24 and t.replace("-", "").replace("_", "").isalnum() for t in tokens)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_acknowledged_state_is_in_the_store(kind: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        store = open_store(kind, tmp_path / "s.db")
        service = QueueService(Broker(), store)
        service.start()
        await service.call("CreateQueue", {"QueueName": "q"}, CTX)
        sent = await asyncio.gather(
            *[service.call("SendMessage", {"QueueUrl": URL, "MessageBody": f"m{i}"}, CTX)
              for i in range(50)]
        )
        await service.close()
        if kind == "memory":
            return  # nothing survives by design; the sqlite case checks the reload
        reloaded = QueueService(Broker(), open_store(kind, tmp_path / "s.db"))
        reloaded.restore()
        queue = reloaded.broker.queue_messages("q")
        assert queue is not None
        assert {r.message_id for r in queue.snapshot()} == {s["MessageId"] for s in sent}
        await reloaded.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_a_failing_request_stores_the_retention_it_ran_into(kind: str, tmp_path: Path) -> None:
    from ferrymq._core._effects import MessageStored
    from ferrymq._service import restore_into

    now = [1_700_000_000_000]

    async def scenario() -> None:
        service = QueueService(Broker(), open_store(kind, tmp_path / "s.db"),
                               clock_ms=lambda: now[0], entropy=CountingEntropy())
        await service.call("CreateQueue", {"QueueName": "q", "Attributes": {
            "MessageRetentionPeriod": "60"}}, CTX)
        await service.call("SendMessage", {"QueueUrl": URL, "MessageBody": "old"}, CTX)
        now[0] += 61_000
        with pytest.raises(SqsError) as exc:
            await service.call("SendMessage", {"QueueUrl": URL, "MessageBody": ""}, CTX)
        assert exc.value.shape == "MissingRequiredParameterException"
        # The core removed the expired message before refusing the send; the store
        # did too before the error was answered, so a restart finds what memory holds.
        loaded = list(service.store.load())
        assert not any(isinstance(e, MessageStored) for e in loaded)
        restored = Broker()
        restore_into(restored, loaded)
        assert restored.dump_state(now[0]) == service.broker.dump_state(now[0])
        await service.close()

    asyncio.run(scenario())


def test_long_poll_wakes_on_send_and_times_out_without() -> None:
    async def scenario() -> None:
        service = QueueService(Broker(), open_store("memory", None))
        service.start()
        await service.call("CreateQueue", {"QueueName": "q"}, CTX)
        loop = asyncio.get_running_loop()
        started = loop.time()
        empty = await service.call(
            "ReceiveMessage", {"QueueUrl": URL, "WaitTimeSeconds": 1}, CTX)
        assert empty == {} and loop.time() - started >= 0.9
        poll = asyncio.create_task(service.call(
            "ReceiveMessage", {"QueueUrl": URL, "WaitTimeSeconds": 10}, CTX))
        await asyncio.sleep(0.2)
        assert not poll.done()
        started = loop.time()
        await service.call("SendMessage", {"QueueUrl": URL, "MessageBody": "wake"}, CTX)
        got = await asyncio.wait_for(poll, 2)
        assert [m["Body"] for m in got["Messages"]] == ["wake"]
        assert loop.time() - started < 1
        # A delayed message wakes a poller at its delay, without any send.
        await service.call(
            "SendMessage", {"QueueUrl": URL, "MessageBody": "later", "DelaySeconds": 1}, CTX)
        started = loop.time()
        got = await service.call("ReceiveMessage", {"QueueUrl": URL, "WaitTimeSeconds": 5}, CTX)
        assert [m["Body"] for m in got["Messages"]] == ["later"]
        assert 0.9 <= loop.time() - started < 3
        await service.close()

    asyncio.run(scenario())


def test_an_answer_that_rests_on_earlier_writes_waits_for_them() -> None:
    async def scenario() -> None:
        store = HeldStore()
        service = QueueService(Broker(), store)  # type: ignore[arg-type]
        service.start()
        fifo = "http://h:1/000000000000/q.fifo"
        await service.call("CreateQueue", {"QueueName": "q"}, CTX)
        await service.call("CreateQueue", {"QueueName": "q.fifo", "Attributes": {
            "FifoQueue": "true"}}, CTX)
        send = {"QueueUrl": fifo, "MessageBody": "b", "MessageGroupId": "g",
                "MessageDeduplicationId": "d"}
        store.released.clear()  # the first send's fsync is slow
        first = asyncio.create_task(service.call("SendMessage", send, CTX))
        await asyncio.sleep(0.05)
        retry = asyncio.create_task(service.call("SendMessage", send, CTX))
        # An empty receive (of another queue) promises nothing: it answers at once.
        assert await asyncio.wait_for(
            service.call("ReceiveMessage", {"QueueUrl": URL}, CTX), 1) == {}
        await asyncio.sleep(0.05)
        assert not first.done() and not retry.done()  # the retry's answer is the send's
        store.released.set()
        answers = await asyncio.wait_for(asyncio.gather(first, retry), 1)
        assert answers[0]["MessageId"] == answers[1]["MessageId"]

        # A receive retried with its attempt id is answered with the first receive's
        # messages, so it waits for that receive's commit too.
        receive = {"QueueUrl": fifo, "ReceiveRequestAttemptId": "a"}
        store.released.clear()
        first = asyncio.create_task(service.call("ReceiveMessage", receive, CTX))
        await asyncio.sleep(0.05)
        retry = asyncio.create_task(service.call("ReceiveMessage", receive, CTX))
        await asyncio.sleep(0.05)
        assert not first.done() and not retry.done()
        store.released.set()
        answers = await asyncio.wait_for(asyncio.gather(first, retry), 1)
        assert answers[0]["Messages"] == answers[1]["Messages"] != []
        await service.close()

    asyncio.run(scenario())


def test_a_request_after_shutdown_is_refused_without_a_fatal_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        service = QueueService(Broker(), open_store("sqlite", tmp_path / "s.db"))
        fatal: list[BaseException] = []
        service.on_fatal = fatal.append
        service.start()
        await service.call("CreateQueue", {"QueueName": "q"}, CTX)
        await service.close()
        with pytest.raises(SqsError) as exc:
            await service.call("SendMessage", {"QueueUrl": URL, "MessageBody": "late"}, CTX)
        assert exc.value.shape == "InternalFailure"
        assert fatal == [] and service.fatal is None

    asyncio.run(scenario())


def test_one_arrival_wakes_one_poller() -> None:
    async def scenario() -> None:
        service = QueueService(Broker(), open_store("memory", None))
        service.start()
        await service.call("CreateQueue", {"QueueName": "q"}, CTX)
        receive = {"QueueUrl": URL, "WaitTimeSeconds": 10}
        executed = 0
        execute = service.broker.execute

        def counting_execute(action: str, *args: object, **kwargs: object) -> object:
            nonlocal executed
            executed += action == "ReceiveMessage"
            return execute(action, *args, **kwargs)  # type: ignore[arg-type]

        service.broker.execute = counting_execute  # type: ignore[method-assign,assignment]
        pollers = [asyncio.create_task(service.call("ReceiveMessage", receive, CTX))
                   for _ in range(3)]
        await asyncio.sleep(0.1)
        assert executed == 3 and not any(p.done() for p in pollers)
        await service.call("SendMessage", {"QueueUrl": URL, "MessageBody": "one"}, CTX)
        await asyncio.sleep(0.2)
        done = [p for p in pollers if p.done()]
        assert len(done) == 1 and [m["Body"] for m in done[0].result()["Messages"]] == ["one"]
        assert executed == 4  # only the woken poller ran the receive again
        for body in ("two", "three"):
            await service.call("SendMessage", {"QueueUrl": URL, "MessageBody": body}, CTX)
        results = await asyncio.wait_for(asyncio.gather(*pollers), 2)
        assert sorted(m["Body"] for r in results for m in r["Messages"]) == ["one", "three", "two"]
        await service.close()

    asyncio.run(scenario())


def test_fifo_delete_wakes_a_poller_for_the_groups_next_message() -> None:
    async def scenario() -> None:
        service = QueueService(Broker(), open_store("memory", None))
        service.start()
        fifo_url = "http://h:1/000000000000/q.fifo"
        await service.call("CreateQueue", {"QueueName": "q.fifo", "Attributes": {
            "FifoQueue": "true", "ContentBasedDeduplication": "true"}}, CTX)
        for body in ("first", "second"):
            await service.call("SendMessage", {"QueueUrl": fifo_url, "MessageBody": body,
                                               "MessageGroupId": "g"}, CTX)
        got = await service.call("ReceiveMessage", {"QueueUrl": fifo_url}, CTX)
        (first,) = got["Messages"]
        # The group is blocked while "first" is in flight, so this poller parks...
        poller = asyncio.create_task(service.call(
            "ReceiveMessage", {"QueueUrl": fifo_url, "WaitTimeSeconds": 10}, CTX))
        await asyncio.sleep(0.2)
        assert not poller.done()
        # ...and the delete that unblocks the group wakes it at once.
        loop = asyncio.get_running_loop()
        started = loop.time()
        await service.call("DeleteMessage", {"QueueUrl": fifo_url,
                                             "ReceiptHandle": first["ReceiptHandle"]}, CTX)
        result = await asyncio.wait_for(poller, 2)
        assert [m["Body"] for m in result["Messages"]] == ["second"]
        assert loop.time() - started < 1
        await service.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bodies_beyond_the_budget_are_read_from_the_store(
    kind: str, seed: int, tmp_path: Path
) -> None:
    # Differential: one service keeps every body in memory, the other may hold ~3 bodies
    # and must fetch the rest from its store (and restarts halfway, restoring under the
    # budget). Every response must be the same, redrives to a DLQ included.
    import random

    rng = random.Random(seed)
    now = [1_700_000_000_000]
    budget_bytes = 3 * 2_100

    def service(store_kind: str, path: Path, body_bytes_max: int | None) -> QueueService:
        broker = Broker(purge_interval_ms=0, body_memory_bytes_max=body_bytes_max)
        return QueueService(broker, open_store(store_kind, path), clock_ms=lambda: now[0],
                            entropy=entropy_of[body_bytes_max])

    entropy_of = {None: CountingEntropy(), budget_bytes: CountingEntropy()}
    path = tmp_path / "s.db"

    async def scenario() -> None:
        reference = service("memory", path, None)
        tested = service(kind, path, budget_bytes)
        handles: list[str] = []
        fetched = 0

        def on_disk() -> set[str]:
            ids: set[str] = set()
            for name in ("q", "dlq"):
                messages = tested.broker.queue_messages(name)
                if messages is not None:
                    ids.update(r.message_id for r in messages.snapshot() if r.body is None)
            return ids

        async def both(action: str, params: dict[str, Any]) -> dict[str, Any]:
            nonlocal fetched
            not_in_memory = on_disk()
            expected = await reference.call(action, params, CTX)
            got = await tested.call(action, params, CTX)
            assert got == expected, (action, params)
            fetched += sum(1 for m in got.get("Messages", ()) if m["MessageId"] in not_in_memory)
            return got

        dlq = (await both("CreateQueue", {"QueueName": "dlq"}))["QueueUrl"]
        await both("CreateQueue", {"QueueName": "q", "Attributes": {"RedrivePolicy": json.dumps(
            {"deadLetterTargetArn": "arn:aws:sqs:us-east-1:000000000000:dlq",
             "maxReceiveCount": 2})}})
        for step in range(400):
            if step == 200 and kind == "sqlite":
                await tested.close()
                tested = service(kind, path, budget_bytes)
                tested.restore()
                used = tested.broker.body_budget.bytes_used
                assert 0 < used <= budget_bytes
            roll = rng.random()
            now[0] += rng.choice((0, 1, 10, 1_000))
            if roll < 0.35:
                body = rng.choice(("x", "\u00e9t\u00e9", "\U0001f600")) * rng.randrange(1, 1500)
                await both("SendMessage", {"QueueUrl": URL, "MessageBody": body})
            elif roll < 0.45:
                await both("SendMessageBatch", {"QueueUrl": URL, "Entries": [
                    {"Id": str(i), "MessageBody": "b" * rng.randrange(1, 2500)}
                    for i in range(rng.randrange(1, 11))]})
            elif roll < 0.8:
                queue_url = dlq if rng.random() < 0.2 else URL
                got = await both("ReceiveMessage", {
                    "QueueUrl": queue_url, "MaxNumberOfMessages": rng.randrange(1, 11),
                    "VisibilityTimeout": rng.choice((0, 0, 5)), "AttributeNames": ["All"]})
                if queue_url == URL:
                    handles.extend(m["ReceiptHandle"] for m in got.get("Messages", ()))
            elif roll < 0.97 and handles:
                handle = handles.pop(rng.randrange(len(handles)))
                await both("DeleteMessage", {"QueueUrl": URL, "ReceiptHandle": handle})
            elif roll >= 0.99:
                await both("PurgeQueue", {"QueueUrl": URL})
            assert tested.broker.body_budget.bytes_used <= budget_bytes
        assert fetched > 10, "the budget never pushed a body out of memory"
        # Every body held is given back: by deletes, by a purge, by a queue deletion.
        received = await both("ReceiveMessage", {"QueueUrl": URL, "MaxNumberOfMessages": 10})
        for message in received.get("Messages", ()):
            await both("DeleteMessage", {"QueueUrl": URL,
                                         "ReceiptHandle": message["ReceiptHandle"]})
        await both("PurgeQueue", {"QueueUrl": URL})
        await both("DeleteQueue", {"QueueUrl": dlq})
        assert tested.broker.body_budget.bytes_used == 0
        await reference.close()
        await tested.close()

    asyncio.run(scenario())


# ---- a full disk ------------------------------------------------------------------


def _counts(attributes: dict[str, Any]) -> int:
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


async def _until_writable(service: QueueService) -> None:
    for _ in range(200):
        if service.writable:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the service did not resume writes")


@pytest.fixture
def fast_resume(monkeypatch: pytest.MonkeyPatch) -> None:
    import ferrymq._service

    monkeypatch.setattr(ferrymq._service, "_RESUME_INTERVAL_MS", 10)


def test_a_commit_refused_by_a_full_disk_rebuilds_from_the_store_and_resumes(
    fast_resume: None, caplog: pytest.LogCaptureFixture
) -> None:
    from _doubles import FillableStore

    async def scenario() -> None:
        store = FillableStore()
        service = QueueService(Broker(), store, broker_factory=Broker)
        fatal: list[BaseException] = []
        service.on_fatal = fatal.append
        service.start()
        await service.call("CreateQueue", {"QueueName": "q"}, CTX)
        await service.call("SendMessage", {"QueueUrl": URL, "MessageBody": "kept"}, CTX)
        attrs = {"QueueUrl": URL, "AttributeNames": ["ApproximateNumberOfMessages"]}
        # The disk fills between the last check and this commit: the core applies the
        # send, the store refuses it.
        store.full = True
        with pytest.raises(SqsError) as refused:
            await service.call("SendMessage", {"QueueUrl": URL, "MessageBody": "lost"}, CTX)
        assert (refused.value.shape, refused.value.status) == ("ServiceUnavailable", 503)
        for action, params in (("SendMessage", {"QueueUrl": URL, "MessageBody": "x"}),
                               ("ReceiveMessage", {"QueueUrl": URL}),
                               ("CreateQueue", {"QueueName": "other"})):
            with pytest.raises(SqsError) as exc:
                await service.call(action, params, CTX)
            assert exc.value.shape == "ServiceUnavailable", action
        # Reads are answered from the rebuilt core, which holds only what is durable.
        for _ in range(100):
            try:
                got = await service.call("GetQueueAttributes", attrs, CTX)
                break
            except SqsError:
                await asyncio.sleep(0.01)  # still rebuilding
        assert _counts(got) == 1
        assert (await service.call("ListQueues", {}, CTX))["QueueUrls"] == [URL]
        assert not service.writable and store.resumes >= 1
        store.full = False
        await _until_writable(service)
        await service.call("SendMessage", {"QueueUrl": URL, "MessageBody": "after"}, CTX)
        got = await service.call("ReceiveMessage", {"QueueUrl": URL, "MaxNumberOfMessages": 10},
                                 CTX)
        assert sorted(m["Body"] for m in got["Messages"]) == ["after", "kept"]
        assert fatal == []
        await service.close()

    with caplog.at_level("WARNING", logger="ferrymq"):
        asyncio.run(scenario())
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "disk is full" in errors[0].getMessage()


def test_low_space_refuses_writes_before_the_core_applies_them(fast_resume: None) -> None:
    from _doubles import FillableStore

    async def scenario() -> None:
        store = FillableStore()
        service = QueueService(Broker(), store, broker_factory=Broker)
        service.start()
        await service.call("CreateQueue", {"QueueName": "q"}, CTX)
        broker = service.broker
        store.room = False
        with pytest.raises(SqsError) as exc:
            await service.call("SendMessage", {"QueueUrl": URL, "MessageBody": "no"}, CTX)
        assert exc.value.shape == "ServiceUnavailable"
        got = await service.call("GetQueueAttributes", {"QueueUrl": URL,
                                                        "AttributeNames": ["All"]}, CTX)
        assert _counts(got) == 0
        assert service.broker is broker, "nothing diverged, so nothing was rebuilt"
        store.room = True
        await _until_writable(service)
        await service.call("SendMessage", {"QueueUrl": URL, "MessageBody": "yes"}, CTX)
        await service.close()

    asyncio.run(scenario())


def test_without_a_broker_factory_a_full_disk_is_fatal() -> None:
    from _doubles import FillableStore

    async def scenario() -> None:
        store = FillableStore()
        service = QueueService(Broker(), store)
        fatal: list[BaseException] = []
        service.on_fatal = fatal.append
        await service.call("CreateQueue", {"QueueName": "q"}, CTX)
        store.full = True
        with pytest.raises(SqsError):
            await service.call("SendMessage", {"QueueUrl": URL, "MessageBody": "x"}, CTX)
        assert len(fatal) == 1
        await service.close()

    asyncio.run(scenario())


def test_shutdown_answers_parked_long_polls_at_once() -> None:
    async def scenario() -> None:
        service = QueueService(Broker(), open_store("memory", None))
        service.start()
        await service.call("CreateQueue", {"QueueName": "q"}, CTX)
        polls = [asyncio.create_task(service.call(
            "ReceiveMessage", {"QueueUrl": URL, "WaitTimeSeconds": 20}, CTX))
            for _ in range(3)]
        await asyncio.sleep(0.1)
        assert not any(p.done() for p in polls)
        service.begin_shutdown()
        assert await asyncio.wait_for(asyncio.gather(*polls), 1) == [{}, {}, {}]
        # A poll that starts during the drain does not park either.
        assert await asyncio.wait_for(service.call(
            "ReceiveMessage", {"QueueUrl": URL, "WaitTimeSeconds": 20}, CTX), 1) == {}
        await service.close()

    asyncio.run(scenario())


def test_restore_names_every_orphaned_queue_in_one_line(tmp_path: Path) -> None:
    from ferrymq._core._effects import DedupRecorded
    from ferrymq._service import repair_orphans, restore_into
    from ferrymq._storage import StoreInconsistentError

    async def scenario() -> None:
        store = open_store("sqlite", tmp_path / "s.db")
        donor = QueueService(Broker(), store)
        for name in ("shared", "gone.fifo", "kept"):
            attributes = {"FifoQueue": "true"} if name.endswith(".fifo") else {}
            await donor.call("CreateQueue", {"QueueName": name, "Attributes": attributes}, CTX)
        for i in range(3):
            await donor.call("SendMessage", {"QueueUrl": "http://h:1/000000000000/shared",
                                             "MessageBody": f"s{i}"}, CTX)
        await donor.call("SendMessage", {"QueueUrl": "http://h:1/000000000000/gone.fifo",
                                         "MessageBody": "f", "MessageGroupId": "g",
                                         "MessageDeduplicationId": "d"}, CTX)
        # What a second server sharing the file leaves behind: the queue rows gone,
        # their messages and dedup entries still there.
        await store.close()
        conn = sqlite3.connect(tmp_path / "s.db")
        conn.execute("DELETE FROM queues WHERE name IN ('shared', 'gone.fifo')")
        conn.commit()
        conn.close()
        store = open_store("sqlite", tmp_path / "s.db")
        with pytest.raises(StoreInconsistentError) as exc:
            restore_into(Broker(), store.load())
        message = str(exc.value)
        assert "\n" not in message
        assert "3 messages and 0 deduplication entries of queue 'shared'" in message
        assert "1 messages and 1 deduplication entries of queue 'gone.fifo'" in message
        assert "'kept'" not in message
        lines = await repair_orphans(store, "adopt")
        assert len(lines) == 2
        broker = Broker()
        restore_into(broker, store.load())
        shared = broker.queue_messages("shared")
        assert shared is not None and len(shared.snapshot()) == 3
        fifo = broker.queue_messages("gone.fifo")
        assert fifo is not None and len(fifo.snapshot()) == 1
        assert any(isinstance(e, DedupRecorded) for e in store.load())
        await store.close()

    asyncio.run(scenario())
