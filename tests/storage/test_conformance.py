"""The conformance suite every ``Store`` implementation must pass.

Each test writes effects, closes the store, re-opens it and checks what ``load()``
yields. The ``harness`` fixture runs every test against each implementation.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import sqlite3
import tempfile
from collections.abc import Awaitable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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
)
from ferrymq._core._records import AttributeValue, MessageRecord, MoveTaskRecord, QueueRecord
from ferrymq._storage import (
    MemoryStore,
    SqliteStore,
    StorageError,
    Store,
    StoreFormatError,
    open_store,
)

T = TypeVar("T")


class Harness:
    """Opens, closes and re-opens one store (one file, or one memory object)."""

    def __init__(self, kind: str, path: Path) -> None:
        self.kind = kind
        self.path = path
        self._memory: MemoryStore | None = None

    def open(self) -> Store:
        if self.kind == "memory":
            if self._memory is None:
                self._memory = MemoryStore()
            return self._memory.reopen()
        return open_store("sqlite", self.path)


@pytest.fixture(params=["memory", "sqlite"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Harness:
    return Harness(request.param, tmp_path / "store.db")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def write_and_reload(h: Harness, *calls: Sequence[Effect]) -> list[Effect]:
    """Commit each call in turn, close, re-open and load."""

    async def go() -> list[Effect]:
        store = h.open()
        for effects in calls:
            await store.commit(effects)
        await store.close()
        again = h.open()
        loaded = list(again.load())
        await again.close()
        return loaded

    return run(go())


def load_fresh(h: Harness) -> list[Effect]:
    async def go() -> list[Effect]:
        store = h.open()
        loaded = list(store.load())
        await store.close()
        return loaded

    return run(go())


def msg(queue: str, message_id: str, **changes: Any) -> MessageRecord:
    base = MessageRecord(
        queue=queue,
        message_id=message_id,
        body=f"body of {message_id}",
        attributes=(),
        md5_of_body="0" * 32,
        md5_of_attributes=None,
        sent_ms=1_000,
        visible_at_ms=1_000,
        receive_count=0,
        first_receive_ms=None,
        receipt_token=None,
        sender_id="AIDAEXAMPLE",
    )
    return dataclasses.replace(base, **changes)


def queue(name: str, **changes: Any) -> QueueRecord:
    base = QueueRecord(
        name=name,
        attributes=(("DelaySeconds", "0"), ("VisibilityTimeout", "30")),
        tags=(),
        created_ms=1_000,
        modified_ms=1_000,
    )
    return dataclasses.replace(base, **changes)


def task(handle: str, **changes: Any) -> MoveTaskRecord:
    base = MoveTaskRecord(
        task_handle=handle,
        source_arn="arn:aws:sqs:us-east-1:000000000000:dlq",
        destination_arn=None,
        max_per_second=None,
        status="RUNNING",
        started_ms=5_000,
        moved=0,
        to_move=10,
        progress_ms=5_000,
    )
    return dataclasses.replace(base, **changes)


def dedup(queue_name: str, key: str, expires_at_ms: int, seq: int = 1) -> DedupRecorded:
    return DedupRecorded(queue_name, key, f"id-{key}", seq, expires_at_ms)


def attempt(queue_name: str, attempt_id: str, expires_at_ms: int = 10**12,
            forgotten: tuple[str, ...] = ()) -> ReceiveAttemptRecorded:
    return ReceiveAttemptRecorded(
        queue_name, attempt_id, expires_at_ms,
        ((f"m-{attempt_id}", f"tok-{attempt_id}", expires_at_ms - 1), ("m2", "t2", 7)),
        forgotten)


def messages_of(effects: list[Effect], queue_name: str | None = None) -> list[MessageRecord]:
    return [
        e.record
        for e in effects
        if isinstance(e, MessageStored) and (queue_name is None or e.record.queue == queue_name)
    ]


def of_type(effects: list[Effect], kind: type[T]) -> list[T]:
    return [e for e in effects if isinstance(e, kind)]


# ---- basics --------------------------------------------------------------------------


def test_empty_store_loads_nothing(harness: Harness) -> None:
    assert write_and_reload(harness) == []


def test_load_order_is_queues_deletions_tasks_marks_messages_dedup_attempts(
    harness: Harness,
) -> None:
    loaded = write_and_reload(
        harness,
        [attempt("q", "a"), dedup("q", "k", 10_000_000), MessageStored(msg("q", "m1"))],
        [MoveTaskUpserted(task("t1")), QueueDeleted("gone", 7)],
        [QueueUpserted(queue("q"))],
    )
    assert [type(e) for e in loaded] == [
        QueueUpserted, QueueDeleted, MoveTaskUpserted, HighWaterMarks, MessageStored,
        DedupRecorded, ReceiveAttemptRecorded,
    ]


def test_state_survives_several_reopens(harness: Harness) -> None:
    write_and_reload(harness, [QueueUpserted(queue("q")), MessageStored(msg("q", "m1"))])
    loaded = write_and_reload(harness, [MessageStored(msg("q", "m2"))])
    assert [m.message_id for m in messages_of(loaded)] == ["m1", "m2"]
    assert of_type(loaded, QueueUpserted) == [QueueUpserted(queue("q"))]


# ---- queues, deletions, tasks ----------------------------------------------------------


def test_queue_upsert_keeps_latest_definition(harness: Harness) -> None:
    newer = queue(
        "q",
        attributes=(("DelaySeconds", "5"), ("VisibilityTimeout", "60")),
        tags=(("env", "prod"), ("team", "ünïcode ☃")),
        modified_ms=2_000,
        last_purge_ms=1_500,
    )
    loaded = write_and_reload(
        harness,
        [QueueUpserted(queue("q")), QueueUpserted(queue("other"))],
        [QueueUpserted(newer)],
    )
    assert of_type(loaded, QueueUpserted) == [QueueUpserted(newer), QueueUpserted(queue("other"))]


def test_queue_delete_cascades_and_is_remembered(harness: Harness) -> None:
    loaded = write_and_reload(
        harness,
        [
            QueueUpserted(queue("q")),
            QueueUpserted(queue("keep")),
            MessageStored(msg("q", "m1")),
            MessageStored(msg("keep", "k1")),
            dedup("q", "d1", 10_000_000),
            dedup("keep", "d2", 10_000_000),
        ],
        [QueueDeleted("q", 5_000)],
    )
    assert of_type(loaded, QueueUpserted) == [QueueUpserted(queue("keep"))]
    assert of_type(loaded, QueueDeleted) == [QueueDeleted("q", 5_000)]
    assert [m.message_id for m in messages_of(loaded)] == ["k1"]
    assert [d.key for d in of_type(loaded, DedupRecorded)] == ["d2"]


def test_only_latest_deletion_per_name_is_remembered(harness: Harness) -> None:
    loaded = write_and_reload(
        harness,
        [QueueUpserted(queue("q")), QueueDeleted("q", 5_000)],
        [QueueUpserted(queue("q")), QueueDeleted("q", 9_000), QueueDeleted("x", 1)],
    )
    assert of_type(loaded, QueueDeleted) == [QueueDeleted("q", 9_000), QueueDeleted("x", 1)]
    assert of_type(loaded, QueueUpserted) == []


def test_recreated_queue_forgets_its_deletion(harness: Harness) -> None:
    loaded = write_and_reload(
        harness,
        [QueueUpserted(queue("q")), MessageStored(msg("q", "old")), QueueDeleted("q", 5_000)],
        [QueueUpserted(queue("q", created_ms=70_000)), MessageStored(msg("q", "new"))],
    )
    assert of_type(loaded, QueueDeleted) == []
    assert of_type(loaded, QueueUpserted) == [QueueUpserted(queue("q", created_ms=70_000))]
    assert [m.message_id for m in messages_of(loaded)] == ["new"]


def test_move_tasks_upsert_by_handle(harness: Harness) -> None:
    done = task(
        "t1", status="FAILED", moved=4, failure_reason="dest gone ✗",
        destination_arn="arn:aws:sqs:us-east-1:000000000000:src", max_per_second=50,
        progress_ms=9_000,
    )
    loaded = write_and_reload(
        harness,
        [MoveTaskUpserted(task("t1")), MoveTaskUpserted(task("t2"))],
        [MoveTaskUpserted(done)],
    )
    assert of_type(loaded, MoveTaskUpserted) == [
        MoveTaskUpserted(done), MoveTaskUpserted(task("t2")),
    ]


# ---- messages -------------------------------------------------------------------------


def test_message_lifecycle_effects_give_current_state(harness: Harness) -> None:
    loaded = write_and_reload(
        harness,
        [MessageStored(msg("q", "m1")), MessageStored(msg("q", "m2"))],
        [MessageReceived("q", "m1", "tok-1", 31_000, 1, 1_000, 1_000)],
        [MessageReceived("q", "m1", "tok-2", 62_000, 2, 1_000, 32_000)],
        [VisibilityChanged("q", "m1", 40_000)],
        [MessageRemoved("q", "m2")],
    )
    assert messages_of(loaded) == [
        msg("q", "m1", receipt_token="tok-2", visible_at_ms=40_000, receive_count=2,
            first_receive_ms=1_000, received_ms=32_000)
    ]


def test_effects_on_missing_messages_change_nothing(harness: Harness) -> None:
    loaded = write_and_reload(
        harness,
        [MessageStored(msg("q", "m1"))],
        [
            MessageReceived("q", "nope", "t", 1, 1, 1, 1),
            VisibilityChanged("q", "nope", 5),
            MessageRemoved("q", "nope"),
            MessageRemoved("other", "m1"),  # same id, other queue
        ],
    )
    assert messages_of(loaded) == [msg("q", "m1")]


def test_message_order_is_first_stored_and_upsert_keeps_position(harness: Harness) -> None:
    loaded = write_and_reload(
        harness,
        [MessageStored(msg("q", f"m{i}")) for i in range(5)],
        [MessageStored(msg("q", "m1", body="replaced", visible_at_ms=99))],
        [MessageRemoved("q", "m3"), MessageStored(msg("q", "m3", body="again"))],
    )
    got = messages_of(loaded, "q")
    assert [m.message_id for m in got] == ["m0", "m1", "m2", "m4", "m3"]
    assert got[1] == msg("q", "m1", body="replaced", visible_at_ms=99)
    assert got[4].body == "again"


def test_messages_of_missing_queue_are_still_persisted(harness: Harness) -> None:
    # Storage persists; the core decides validity.
    loaded = write_and_reload(harness, [MessageStored(msg("ghost", "m1")), dedup("ghost", "k", 1)])
    assert messages_of(loaded) == [msg("ghost", "m1")]
    assert of_type(loaded, DedupRecorded) == [dedup("ghost", "k", 1)]


def test_all_message_fields_round_trip(harness: Harness) -> None:
    full = msg(
        "orders.fifo", "6f1c-…",
        body="line1\r\nline2\ttab \U0001F600 \u00e9 \u4e2d\u6587 \x7f end",
        attributes=(
            ("Bin", AttributeValue("Binary", binary_value=bytes(range(256)))),
            ("Empty.Bin", AttributeValue("Binary.custom", binary_value=b"")),
            ("Num", AttributeValue("Number.float", string_value="-1.5e3")),
            ("Str", AttributeValue("String", string_value="\r\n\U0001F680 ünï")),
            ("ÜName", AttributeValue("String", string_value="")),
        ),
        md5_of_body="a" * 32, md5_of_attributes="b" * 32, sent_ms=2**41,
        visible_at_ms=2**42, receive_count=7, first_receive_ms=2**41 + 5,
        receipt_token="tok_-AbC123456789012", sender_id="AIDA\U0001F600",
        group_id="g-1", dedup_id="d-1", sequence_number=18_446_744_073_709_551,
        trace_header="Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1",
        dead_letter_source_arn="arn:aws:sqs:us-east-1:000000000000:src.fifo",
        received_ms=2**41 + 9,
    )
    loaded = write_and_reload(harness, [MessageStored(full), MessageStored(msg("q", "plain"))])
    assert messages_of(loaded) == [full, msg("q", "plain")]


def test_large_body_round_trips(harness: Harness) -> None:
    body = "x\U0001F600" * 200_000  # ~1 MiB of UTF-8
    loaded = write_and_reload(harness, [MessageStored(msg("q", "big", body=body))])
    assert messages_of(loaded)[0].body == body


# ---- purge and dedup ----------------------------------------------------------------


def test_purge_removes_messages_and_dedup_of_that_queue_only(harness: Harness) -> None:
    loaded = write_and_reload(
        harness,
        [
            QueueUpserted(queue("q")),
            MessageStored(msg("q", "m1")),
            MessageStored(msg("other", "o1")),
            dedup("q", "k1", 10_000_000),
            dedup("other", "k2", 10_000_000),
        ],
        [QueuePurged("q", 9_000), MessageStored(msg("q", "after"))],
    )
    assert of_type(loaded, QueueUpserted) == [QueueUpserted(queue("q"))]
    assert [(m.queue, m.message_id) for m in messages_of(loaded)] == [
        ("other", "o1"), ("q", "after"),
    ]
    assert of_type(loaded, DedupRecorded) == [dedup("other", "k2", 10_000_000)]


def test_dedup_upsert_keeps_latest_entry(harness: Harness) -> None:
    loaded = write_and_reload(
        harness,
        [dedup("q", "k", 1_000_000, seq=1), dedup("q", "j", 1_000_000, seq=2)],
        [dedup("q", "k", 1_100_000, seq=3)],
    )
    assert of_type(loaded, DedupRecorded) == [
        dedup("q", "k", 1_100_000, seq=3), dedup("q", "j", 1_000_000, seq=2),
    ]


def test_dedup_entries_at_or_before_the_horizon_are_forgotten(harness: Harness) -> None:
    # Each entry raises its queue's horizon to the time it was recorded (expiry minus
    # the 5-minute window); every entry of the queue expiring at or before it goes.
    loaded = write_and_reload(
        harness,
        [
            dedup("q", "old", 1_000_000),
            dedup("q", "edge", 1_700_000),  # exactly at the horizon below: forgotten
            dedup("q", "recent", 1_900_000),
            dedup("other", "old", 1_000_000),  # other queue: untouched
        ],
        [dedup("q", "new", 2_000_000)],  # horizon 1_700_000
    )
    assert [(d.queue, d.key) for d in of_type(loaded, DedupRecorded)] == [
        ("q", "recent"), ("other", "old"), ("q", "new"),
    ]
    assert HighWaterMarks("q", 1, 1_700_000) in loaded


def test_the_dedup_horizon_never_goes_back(harness: Harness) -> None:
    # Recorded after a later one (the clock went back): the horizon stays where the
    # later one put it, so an entry that expires at or before it is dead on arrival,
    # and one after it is kept, whatever the order of recording.
    loaded = write_and_reload(
        harness,
        [dedup("q", "late", 2_000_000), dedup("q", "early", 1_000_000)],
        [dedup("q", "alive", 1_800_000), dedup("q", "dead", 1_700_000)],
    )
    assert [d.key for d in of_type(loaded, DedupRecorded)] == ["late", "alive"]
    assert of_type(loaded, HighWaterMarks) == [HighWaterMarks("q", 1, 1_700_000)]


def test_dedup_upsert_with_newer_expiry_is_not_forgotten_by_its_old_expiry(
    harness: Harness,
) -> None:
    loaded = write_and_reload(
        harness,
        [dedup("q", "k", 1_000_000), dedup("q", "k", 1_900_000)],
        [dedup("q", "z", 2_000_000)],
    )
    assert [(d.key, d.expires_at_ms) for d in of_type(loaded, DedupRecorded)] == [
        ("k", 1_900_000), ("z", 2_000_000),
    ]


# ---- high-water marks ----------------------------------------------------------------


def test_marks_outlive_the_messages_and_entries_they_came_from(harness: Harness) -> None:
    loaded = write_and_reload(
        harness,
        [QueueUpserted(queue("q.fifo")), QueueUpserted(queue("s"))],
        [MessageStored(msg("q.fifo", "m1", group_id="g", sequence_number=70)),
         dedup("q.fifo", "d1", 1_000_000, seq=70),
         MessageStored(msg("q.fifo", "m2", group_id="g", sequence_number=90))],
        [MessageRemoved("q.fifo", "m2"), MessageRemoved("q.fifo", "m1")],
        [dedup("q.fifo", "d2", 9_000_000, seq=80)],  # forgets d1; lower sequence number
        [MessageStored(msg("s", "plain"))],  # no sequence number: no marks for s
    )
    assert of_type(loaded, HighWaterMarks) == [HighWaterMarks("q.fifo", 90, 8_700_000)]
    assert [d.key for d in of_type(loaded, DedupRecorded)] == ["d2"]


def test_a_purge_keeps_the_marks_and_a_deletion_drops_them(harness: Harness) -> None:
    loaded = write_and_reload(
        harness,
        [dedup("a", "k", 1_000_000, seq=5), dedup("b", "k", 1_000_000, seq=6)],
        [QueuePurged("a", 2_000), QueueDeleted("b", 2_000)],
    )
    assert of_type(loaded, HighWaterMarks) == [HighWaterMarks("a", 5, 700_000)]
    assert of_type(loaded, DedupRecorded) == []


def test_high_water_marks_only_ever_rise(harness: Harness) -> None:
    loaded = write_and_reload(
        harness,
        [HighWaterMarks("q", 50, 3_000), dedup("q", "k", 1_000_000, seq=10)],
        [HighWaterMarks("q", 40, 1_000_000)],  # sequence lower, horizon higher: forgets k
        [HighWaterMarks("r", 7, 0)],
    )
    assert of_type(loaded, HighWaterMarks) == [
        HighWaterMarks("q", 50, 1_000_000), HighWaterMarks("r", 7, 0)]
    assert of_type(loaded, DedupRecorded) == []


# ---- receive attempts -----------------------------------------------------------------


def test_receive_attempts_are_kept_oldest_first_until_forgotten(harness: Harness) -> None:
    loaded = write_and_reload(
        harness,
        [attempt("q", "a1"), attempt("q", "a2"), attempt("other", "a1")],
        [attempt("q", "a3"), attempt("q", "a1", expires_at_ms=2 * 10**12)],  # a1 newest
        [attempt("q", "a4", forgotten=("a2", "nope"))],
    )
    # Per queue, oldest first; what each received comes back as recorded.
    assert [a.attempt_id for a in of_type(loaded, ReceiveAttemptRecorded)
            if a.queue == "other"] == ["a1"]
    per_queue = [a for a in of_type(loaded, ReceiveAttemptRecorded) if a.queue == "q"]
    assert [a.attempt_id for a in per_queue] == ["a3", "a1", "a4"]
    assert per_queue[1] == attempt("q", "a1", expires_at_ms=2 * 10**12)
    assert all(a.forgotten == () for a in per_queue)


def test_a_purge_or_deletion_drops_the_queues_attempts(harness: Harness) -> None:
    loaded = write_and_reload(
        harness,
        [attempt("a", "x"), attempt("b", "y"), attempt("c", "z")],
        [QueuePurged("a", 2_000), QueueDeleted("b", 2_000)],
    )
    assert [a.queue for a in of_type(loaded, ReceiveAttemptRecorded)] == ["c"]


# ---- commit semantics ----------------------------------------------------------------


def test_concurrent_commits_are_all_durable_in_call_order(harness: Harness) -> None:
    rng = random.Random(1234)
    calls = 300

    async def go() -> int:
        store = harness.open()
        before = store.stats.transactions

        async def one(i: int) -> None:
            # Tasks start in creation order, so the calls happen in index order.
            await asyncio.sleep(0)
            await store.commit([
                MessageStored(msg("q", f"m{i:04d}", receive_count=0)),
                MessageReceived("q", f"m{i:04d}", f"tok{i}", 50_000 + i, 1, 1_000 + i,
                                1_000 + i),
            ])

        tasks = []
        for i in range(calls):
            tasks.append(asyncio.create_task(one(i)))
            if rng.random() < 0.1:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        transactions = store.stats.transactions - before
        assert store.stats.commits == calls
        assert store.stats.effects == 2 * calls
        await store.close()
        return transactions

    transactions = run(go())
    if harness.kind == "sqlite":
        assert transactions < calls, "concurrent commits were not grouped"
    loaded = load_fresh(harness)
    got = messages_of(loaded)
    assert [m.message_id for m in got] == [f"m{i:04d}" for i in range(calls)]
    assert all(m.receipt_token == f"tok{int(m.message_id[1:])}" for m in got)


def test_later_call_applies_after_earlier_call(harness: Harness) -> None:
    # Two calls in flight at once; the second depends on the first having been applied.
    async def go() -> None:
        store = harness.open()
        first = asyncio.create_task(store.commit([MessageStored(msg("q", "m"))]))
        second = asyncio.create_task(
            store.commit([MessageReceived("q", "m", "tok", 9_000, 1, 1_000, 1_000)])
        )
        third = asyncio.create_task(store.commit([MessageRemoved("q", "gone")]))
        await asyncio.gather(first, second, third)
        await store.close()

    run(go())
    loaded = load_fresh(harness)
    assert messages_of(loaded)[0].receipt_token == "tok"


def test_close_flushes_commits_already_called(harness: Harness) -> None:
    async def go() -> list[asyncio.Task[None]]:
        store = harness.open()
        tasks = [
            asyncio.create_task(store.commit([MessageStored(msg("q", f"m{i}"))]))
            for i in range(50)
        ]
        await asyncio.sleep(0)  # let every task make its call
        await store.close()
        await asyncio.gather(*tasks)
        return tasks

    tasks = run(go())
    assert all(t.done() and t.exception() is None for t in tasks)
    assert len(messages_of(load_fresh(harness))) == 50


def test_commit_after_close_is_refused(harness: Harness) -> None:
    async def go() -> None:
        store = harness.open()
        await store.commit([MessageStored(msg("q", "m1"))])
        await store.close()
        with pytest.raises(StorageError):
            await store.commit([MessageStored(msg("q", "m2"))])
        await store.close()  # idempotent

    run(go())
    assert [m.message_id for m in messages_of(load_fresh(harness))] == ["m1"]


def test_empty_commit_is_fine(harness: Harness) -> None:
    assert write_and_reload(harness, [], [MessageStored(msg("q", "m"))], []) == [
        MessageStored(msg("q", "m"))
    ]


# ---- SQLite-only: failures and file checks --------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


def test_sqlite_write_failure_fails_waiters_and_refuses_more(db_path: Path) -> None:
    async def go() -> list[str]:
        store = SqliteStore(db_path)
        await store.commit([QueueUpserted(queue("q")), MessageStored(msg("q", "kept"))])
        # Simulate a full disk: the database may grow by ~400 KiB only.
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages + 100}")
        big = "y" * 100_000
        tasks = [
            asyncio.create_task(store.commit([MessageStored(msg("q", f"big{i}", body=big))]))
            for i in range(40)
        ]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        failures = [r for r in results if r is not None]
        assert failures, "the disk never filled up"
        for failure in failures:
            assert isinstance(failure, StorageError)
            assert isinstance(failure.__cause__, sqlite3.Error)
        # Every call after the first failing one failed too: none "succeeded" later.
        first_failed = next(i for i, r in enumerate(results) if r is not None)
        assert all(r is not None for r in results[first_failed:])
        with pytest.raises(StorageError) as refused:
            await store.commit([MessageStored(msg("q", "after"))])
        assert isinstance(refused.value.__cause__, sqlite3.Error)
        await store.close()
        return [f"big{i}" for i in range(first_failed)]

    acknowledged = run(go())
    # Re-opened: exactly what was acknowledged before the failure.
    store = SqliteStore(db_path)
    ids = [m.message_id for m in messages_of(list(store.load()))]
    run(store.close())
    assert ids == ["kept", *acknowledged]


def test_sqlite_full_handoff_keeps_call_order(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ferrymq._storage import _sqlite

    monkeypatch.setattr(_sqlite, "PENDING_COMMITS_MAX", 3)

    async def go() -> None:
        store = SqliteStore(db_path)
        tasks = []
        for i in range(60):
            tasks.append(asyncio.create_task(store.commit([
                MessageStored(msg("q", f"m{i:02d}")),
                MessageReceived("q", f"m{i:02d}", f"t{i}", 1, 1, 1, 1),
            ])))
            if i % 7 == 0:
                await asyncio.sleep(0)
        await asyncio.gather(*tasks)
        assert store.stats.transactions >= 60 // 3  # the bound held every group
        await store.close()

    run(go())
    store = SqliteStore(db_path)
    got = messages_of(list(store.load()))
    run(store.close())
    assert [m.message_id for m in got] == [f"m{i:02d}" for i in range(60)]
    assert all(m.receipt_token == f"t{int(m.message_id[1:])}" for m in got)


def test_sqlite_cancelled_caller_is_still_written(db_path: Path) -> None:
    async def go() -> None:
        store = SqliteStore(db_path)
        waiting = asyncio.create_task(store.commit([MessageStored(msg("q", "m1"))]))
        await asyncio.sleep(0)  # the call is made
        waiting.cancel()
        await store.commit([MessageStored(msg("q", "m2"))])
        assert waiting.cancelled()
        await store.close()

    run(go())
    store = SqliteStore(db_path)
    ids = [m.message_id for m in messages_of(list(store.load()))]
    run(store.close())
    assert ids == ["m1", "m2"]


def test_sqlite_lost_connection_is_a_storage_error(db_path: Path) -> None:
    async def go() -> None:
        store = SqliteStore(db_path)
        await store.commit([MessageStored(msg("q", "m1"))])
        store._conn.close()  # the writer is idle, waiting for work
        with pytest.raises(StorageError) as failed:
            await store.commit([MessageStored(msg("q", "m2"))])
        assert isinstance(failed.value.__cause__, sqlite3.Error)
        with pytest.raises(StorageError):
            await store.commit([MessageStored(msg("q", "m3"))])
        await store.close()

    run(go())


def test_sqlite_refuses_foreign_and_newer_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreFormatError):
        SqliteStore(garbage)

    foreign = tmp_path / "foreign.db"
    conn = sqlite3.connect(foreign)
    conn.execute("CREATE TABLE stuff (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreFormatError, match="not a Ferry store"):
        SqliteStore(foreign)

    newer = tmp_path / "newer.db"
    run(SqliteStore(newer).close())
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE ferry_meta SET value = '99' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreFormatError, match="version 99, newer"):
        SqliteStore(newer)


def test_sqlite_file_settings(db_path: Path) -> None:
    store = SqliteStore(db_path)
    try:
        assert store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        run(store.close())


def test_open_store_factory(tmp_path: Path) -> None:
    assert isinstance(open_store("memory", None), MemoryStore)
    store = open_store("sqlite", tmp_path)  # a directory: the default file inside it
    assert isinstance(store, SqliteStore)
    assert store.path.parent == tmp_path
    run(store.close())
    with pytest.raises(ValueError):
        open_store("sqlite", None)
    with pytest.raises(ValueError):
        open_store("redis", tmp_path)


# ---- bodies that are not in memory --------------------------------------------------


def test_move_without_body_takes_the_body_from_the_source_queue(harness: Harness) -> None:
    original = msg("src", "m1", body="payload \u00e9\U0001f600", receive_count=3)
    moved = dataclasses.replace(original, queue="dlq", body=None, receive_count=3,
                                dead_letter_source_arn="arn:src")
    loaded = write_and_reload(
        harness,
        [MessageStored(original), MessageStored(msg("src", "m2"))],
        [MessageStored(moved, moved_from="src"), MessageRemoved("src", "m1")],
    )
    assert messages_of(loaded, "dlq") == [dataclasses.replace(moved, body=original.body)]
    assert [m.message_id for m in messages_of(loaded, "src")] == ["m2"]


def test_move_in_the_same_transaction_as_the_send(harness: Harness) -> None:
    # Grouped into one SQLite transaction: the copy must see the row written before it.
    async def go() -> None:
        store = harness.open()
        moved = dataclasses.replace(msg("a", "m"), queue="b", body=None)
        await asyncio.gather(
            store.commit([MessageStored(msg("a", "m", body="first"))]),
            store.commit([MessageStored(moved, moved_from="a"), MessageRemoved("a", "m")]),
        )
        await store.close()

    run(go())
    assert [(m.queue, m.body) for m in messages_of(load_fresh(harness))] == [("b", "first")]


def test_move_without_body_from_a_missing_source_stores_nothing(harness: Harness) -> None:
    moved = dataclasses.replace(msg("dlq", "m1"), body=None)
    loaded = write_and_reload(harness, [MessageStored(moved, moved_from="src")])
    assert messages_of(loaded) == []


def test_fetched_bodies_reflect_exactly_the_calls_before(harness: Harness) -> None:
    # Calls in flight together (one SQLite group): each fetch sees the effects of the
    # calls before it and of its own call, never those of a later call.
    async def go() -> list[list[str | None]]:
        store = harness.open()
        results = await asyncio.gather(
            store.commit([MessageStored(msg("q", "a", body="A"))]),
            store.commit([], [("q", "a"), ("q", "b")]),
            store.commit([MessageStored(msg("q", "b", body="B"))], [("q", "b")]),
            store.commit([MessageRemoved("q", "a")]),
            store.commit([], [("q", "a"), ("q", "b"), ("other", "b")]),
            store.commit([QueuePurged("q", 2_000)]),
            store.commit([], [("q", "b")]),
        )
        await store.close()
        return list(results)

    results = run(go())
    assert results == [[], ["A", None], ["B"], [], [None, "B", None], [], [None]]


def test_fetch_reads_a_moved_body(harness: Harness) -> None:
    async def go() -> list[str | None]:
        store = harness.open()
        await store.commit([MessageStored(msg("src", "m", body="moved body"))])
        moved = dataclasses.replace(msg("dlq", "m"), body=None)
        bodies = await store.commit(
            [MessageStored(moved, moved_from="src"), MessageRemoved("src", "m")],
            [("dlq", "m"), ("src", "m")],
        )
        await store.close()
        return bodies

    assert run(go()) == ["moved body", None]


# ---- every rule at once, against a naive model -----------------------------------------


class ModelStore:
    """``_effects.py``'s rules written as plainly as possible: dicts, scans, no indexes.
    The stores' indexes, batching and SQL must come to the same contents."""

    def __init__(self) -> None:
        self.queues: dict[str, QueueRecord] = {}
        self.deleted: dict[str, int] = {}
        self.tasks: dict[str, MoveTaskRecord] = {}
        self.messages: dict[tuple[str, str], MessageRecord] = {}
        self.dedup: dict[tuple[str, str], DedupRecorded] = {}
        self.attempts: dict[tuple[str, str], ReceiveAttemptRecorded] = {}
        self.marks: dict[str, tuple[int, int]] = {}

    def _raise(self, queue: str, sequence: int, horizon_ms: int) -> None:
        old_sequence, old_horizon = self.marks.get(queue, (sequence, horizon_ms))
        self.marks[queue] = (max(old_sequence, sequence), max(old_horizon, horizon_ms))
        horizon_ms = self.marks[queue][1]
        self.dedup = {k: d for k, d in self.dedup.items()
                      if k[0] != queue or d.expires_at_ms > horizon_ms}

    def _drop(self, queue: str) -> None:
        self.messages = {k: m for k, m in self.messages.items() if k[0] != queue}
        self.dedup = {k: d for k, d in self.dedup.items() if k[0] != queue}
        self.attempts = {k: a for k, a in self.attempts.items() if k[0] != queue}

    def apply(self, effect: Effect) -> None:
        if isinstance(effect, MessageStored):
            m = effect.record
            if m.sequence_number is not None:
                self._raise(m.queue, m.sequence_number, 0)
            if m.body is None:
                source = self.messages.get((effect.moved_from or "", m.message_id))
                if source is None:
                    return
                m = dataclasses.replace(m, body=source.body)
            self.messages[(m.queue, m.message_id)] = m
        elif isinstance(effect, MessageReceived | VisibilityChanged):
            key = (effect.queue, effect.message_id)
            if key in self.messages:
                changes: dict[str, Any] = {"visible_at_ms": effect.visible_at_ms}
                if isinstance(effect, MessageReceived):
                    changes.update(receipt_token=effect.receipt_token,
                                   receive_count=effect.receive_count,
                                   first_receive_ms=effect.first_receive_ms,
                                   received_ms=effect.received_ms)
                self.messages[key] = dataclasses.replace(self.messages[key], **changes)
        elif isinstance(effect, MessageRemoved):
            self.messages.pop((effect.queue, effect.message_id), None)
        elif isinstance(effect, DedupRecorded):
            self.dedup[(effect.queue, effect.key)] = effect
            self._raise(effect.queue, effect.sequence_number, effect.expires_at_ms - 300_000)
        elif isinstance(effect, ReceiveAttemptRecorded):
            for attempt_id in (*effect.forgotten, effect.attempt_id):
                self.attempts.pop((effect.queue, attempt_id), None)
            self.attempts[(effect.queue, effect.attempt_id)] = dataclasses.replace(
                effect, forgotten=())
        elif isinstance(effect, QueuePurged):
            self._drop(effect.queue)
        elif isinstance(effect, QueueUpserted):
            self.queues[effect.record.name] = effect.record
            self.deleted.pop(effect.record.name, None)
        elif isinstance(effect, QueueDeleted):
            self.queues.pop(effect.name, None)
            self._drop(effect.name)
            self.marks.pop(effect.name, None)
            self.deleted[effect.name] = effect.deleted_at_ms
        elif isinstance(effect, MoveTaskUpserted):
            self.tasks[effect.record.task_handle] = effect.record
        elif isinstance(effect, HighWaterMarks):
            self._raise(effect.queue, effect.sequence_number, effect.dedup_horizon_ms)


def contents(loaded: list[Effect]) -> dict[str, Any]:
    """What a load says, with the orders the Store contract promises and no others."""
    attempts: dict[str, list[ReceiveAttemptRecorded]] = {}
    for a in of_type(loaded, ReceiveAttemptRecorded):
        attempts.setdefault(a.queue, []).append(a)
    return {
        "queues": [e.record for e in of_type(loaded, QueueUpserted)],
        "deleted": sorted((e.name, e.deleted_at_ms) for e in of_type(loaded, QueueDeleted)),
        "tasks": [e.record for e in of_type(loaded, MoveTaskUpserted)],
        "marks": sorted((e.queue, e.sequence_number, e.dedup_horizon_ms)
                        for e in of_type(loaded, HighWaterMarks)),
        "messages": messages_of(loaded),
        "dedup": sorted(((e.queue, e.key), e) for e in of_type(loaded, DedupRecorded)),
        "attempts": dict(sorted(attempts.items())),
    }


def model_contents(model: ModelStore) -> dict[str, Any]:
    attempts: dict[str, list[ReceiveAttemptRecorded]] = {}
    for (queue_name, _), a in model.attempts.items():
        attempts.setdefault(queue_name, []).append(a)
    return {
        "queues": list(model.queues.values()),
        "deleted": sorted(model.deleted.items()),
        "tasks": list(model.tasks.values()),
        "marks": sorted((q, s, h) for q, (s, h) in model.marks.items()),
        "messages": list(model.messages.values()),
        "dedup": sorted(model.dedup.items()),
        "attempts": dict(sorted(attempts.items())),
    }


_QUEUES = st.sampled_from(["a", "b"])
_IDS = st.sampled_from(["m1", "m2", "m3"])
_TIMES = st.integers(0, 2_000_000)
_SEQUENCES = st.integers(0, 50)
_DEDUP_TIMES = st.sampled_from([300_000, 500_000, 600_000, 800_000, 900_000, 1_100_000])
_EFFECTS: st.SearchStrategy[Effect] = st.one_of(
    st.builds(lambda q, i, body, seq, moved_from: MessageStored(
        msg(q, i, body=body, sequence_number=seq), None if body else moved_from),
        _QUEUES, _IDS, st.sampled_from(["x", "y", None]), st.none() | _SEQUENCES,
        st.none() | _QUEUES),
    st.builds(MessageReceived, _QUEUES, _IDS, st.sampled_from(["t1", "t2"]), _TIMES,
              st.integers(1, 3), _TIMES, _TIMES),
    st.builds(VisibilityChanged, _QUEUES, _IDS, _TIMES),
    st.builds(MessageRemoved, _QUEUES, _IDS),
    # Expiries and horizons from one small set, so that an entry often expires exactly
    # at a horizon (the rule's boundary).
    st.builds(DedupRecorded, _QUEUES, st.sampled_from(["k1", "k2", "k3"]), _IDS,
              _SEQUENCES, _DEDUP_TIMES),
    st.builds(lambda q, i, e, f: attempt(q, i, e, f), _QUEUES,
              st.sampled_from(["x1", "x2", "x3"]), _TIMES,
              st.lists(st.sampled_from(["x1", "x2", "x3"]), max_size=2).map(tuple)),
    st.builds(QueuePurged, _QUEUES, _TIMES),
    st.builds(lambda q, t: QueueUpserted(queue(q, created_ms=t)), _QUEUES, _TIMES),
    st.builds(QueueDeleted, _QUEUES, _TIMES),
    st.builds(lambda h, moved: MoveTaskUpserted(task(h, moved=moved)),
              st.sampled_from(["t1", "t2"]), st.integers(0, 9)),
    st.builds(HighWaterMarks, _QUEUES, _SEQUENCES, _DEDUP_TIMES),
)


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
@given(calls=st.lists(st.lists(_EFFECTS, max_size=6), max_size=8), together=st.booleans())
@settings(max_examples=80, deadline=None, derandomize=True)
def test_stores_hold_what_the_effect_rules_say(
    kind: str, calls: list[list[Effect]], together: bool
) -> None:
    """Random effects, committed one call at a time or all at once (one SQLite group
    transaction, so runs of statements and the deferred dedup writes span calls): what
    is loaded back is what the naive model of the rules holds."""
    model = ModelStore()
    for call in calls:
        for effect in call:
            model.apply(effect)
    with tempfile.TemporaryDirectory() as directory:
        h = Harness(kind, Path(directory) / "store.db")

        async def go() -> list[Effect]:
            store = h.open()
            if together:
                await asyncio.gather(*(store.commit(call) for call in calls))
            else:
                for call in calls:
                    await store.commit(call)
            await store.close()
            again = h.open()
            loaded = list(again.load())
            await again.close()
            return loaded

        assert contents(run(go())) == model_contents(model)
