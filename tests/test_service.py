"""The I/O shell's own pieces: its entropy source and its commit-before-ack and
long-poll behaviour over the real in-memory and SQLite stores (no server)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

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
