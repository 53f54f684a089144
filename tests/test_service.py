"""The I/O shell's own pieces: its entropy source and its commit-before-ack and
long-poll behaviour over the real in-memory and SQLite stores (no server)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from _doubles import CountingEntropy

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
