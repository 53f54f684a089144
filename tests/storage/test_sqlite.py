"""SQLite-store specifics: durability under kill -9 and the attribute blob encoding."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrymq._core._effects import DedupRecorded, MessageStored
from ferrymq._core._records import AttributeValue, MessageRecord
from ferrymq._storage import SqliteStore, StorageError
from ferrymq._storage._sqlite import WRITER_YIELDS_MAX, decode_attributes, encode_attributes

HERE = Path(__file__).parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))
from crash_writer import REMOVE_LAG, commit_effects  # noqa: E402

# ---- kill -9 ------------------------------------------------------------------------


def _run_and_kill(db_path: Path, seed: int) -> list[int]:
    """Start the writer, SIGKILL it at a seeded moment, return the acknowledged ids."""
    rng = random.Random(seed)
    acks_before_kill = rng.randint(1, 400)
    extra_delay_s = rng.random() * 0.02
    concurrency = rng.choice([1, 4, 16])
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "crash_writer.py"), str(db_path), str(concurrency)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    lines: list[bytes] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 15
        while len(lines) < acks_before_kill and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        time.sleep(extra_delay_s)
    finally:
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    lines.extend(rest.splitlines(keepends=True))
    # A line cut short by the kill was never a complete acknowledgement.
    acked = [int(line.split()[1]) for line in lines if line.endswith(b"\n")]
    assert len(acked) >= min(acks_before_kill, 1), err.decode()
    return acked


@pytest.mark.parametrize("seed", [11, 22, 33, 44, 55, 66, 77, 88])
def test_every_acknowledged_commit_survives_kill_9(tmp_path: Path, seed: int) -> None:
    db_path = tmp_path / "crash.db"
    acked = _run_and_kill(db_path, seed)

    store = SqliteStore(db_path)
    loaded = list(store.load())
    messages = {e.record.message_id: e.record for e in loaded if isinstance(e, MessageStored)}
    dedup_keys = {e.key for e in loaded if isinstance(e, DedupRecorded)}
    present = sorted(int(k[1:]) for k in dedup_keys)
    assert present == list(range(len(present))), "durable commits are not a prefix"
    last = len(present) - 1
    assert max(acked) <= last, "an acknowledged commit was lost"

    # Exactly the state of commits 0..last: nothing of a later commit, and every part
    # of each earlier one (stores, receive, dedup, and its removal of an older message).
    expected: dict[str, str | None] = {}
    for i in range(last + 1):
        expected[f"c{i}-a"] = f"t{i}"
        expected[f"c{i}-b"] = None
        if i >= REMOVE_LAG:
            del expected[f"c{i - REMOVE_LAG}-b"]
    assert {k: m.receipt_token for k, m in messages.items()} == expected
    assert list(messages) == [k for i in range(last + 1) for k in (f"c{i}-a", f"c{i}-b")
                              if k in expected]

    # The store is usable after the crash.
    async def more() -> None:
        await store.commit(commit_effects(last + 1))
        await store.close()

    asyncio.run(more())
    reopened = SqliteStore(db_path)
    keys = {e.key for e in list(reopened.load()) if isinstance(e, DedupRecorded)}
    asyncio.run(reopened.close())
    assert f"k{last + 1}" in keys


# ---- attribute blob -------------------------------------------------------------------

_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_value = st.one_of(
    st.builds(AttributeValue, _text, string_value=_text),
    st.builds(AttributeValue, _text, binary_value=st.binary(max_size=64)),
    st.builds(AttributeValue, _text, string_value=_text, binary_value=st.binary(max_size=8)),
    st.builds(AttributeValue, _text),
)
_attributes = st.lists(st.tuples(_text, _value), max_size=6).map(tuple)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_attributes)
def test_attribute_blob_round_trips(attributes: tuple[tuple[str, AttributeValue], ...]) -> None:
    blob = encode_attributes(attributes)
    assert (blob is None) == (not attributes)
    assert decode_attributes(blob) == attributes


def test_attribute_blob_is_compact() -> None:
    attributes = (("a", AttributeValue("String", string_value="x")),)
    blob = encode_attributes(attributes)
    assert blob is not None and len(blob) == 2 + 1 + 2 + 6 + 1 + 4 + 1


@settings(max_examples=25, deadline=None, derandomize=True)
@given(body=_text, attributes=_attributes)
def test_message_round_trips_through_the_file(
    tmp_path_factory: pytest.TempPathFactory,
    body: str,
    attributes: tuple[tuple[str, AttributeValue], ...],
) -> None:
    db_path = tmp_path_factory.mktemp("rt") / "s.db"
    record = MessageRecord(
        queue="q", message_id="m", body=body, attributes=attributes, md5_of_body="x",
        md5_of_attributes=None, sent_ms=1, visible_at_ms=1, receive_count=0,
        first_receive_ms=None, receipt_token=None, sender_id="s",
    )

    async def go() -> None:
        store = SqliteStore(db_path)
        await store.commit([MessageStored(record)])
        await store.close()

    asyncio.run(go())
    store = SqliteStore(db_path)
    assert list(store.load()) == [MessageStored(record)]
    asyncio.run(store.close())


# ---- one process per store ---------------------------------------------------------


def test_a_second_store_on_the_same_file_is_refused(tmp_path: Path) -> None:
    from ferrymq._storage import StoreLockedError

    db_path = tmp_path / "s.db"
    first = SqliteStore(db_path)
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):
        SqliteStore(db_path)
    asyncio.run(first.close())
    asyncio.run(SqliteStore(db_path).close())  # released by close


def test_the_lock_goes_with_a_killed_process(tmp_path: Path) -> None:
    db_path = tmp_path / "s.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from ferrymq._storage import SqliteStore; SqliteStore(Path(sys.argv[1])); "
         "print('open', flush=True); time.sleep(60)", str(db_path)],
        stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO / "src")))
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"open\n"
        from ferrymq._storage import StoreLockedError

        with pytest.raises(StoreLockedError, match=f"pid {holder.pid}"):
            SqliteStore(db_path)
    finally:
        holder.kill()
        holder.communicate(timeout=10)
    assert holder.returncode == -signal.SIGKILL
    store = SqliteStore(db_path)  # a crashed holder leaves no stale lock
    asyncio.run(store.close())


# ---- a full disk ---------------------------------------------------------------------


def _message(i: int, body_bytes: int) -> MessageStored:
    return MessageStored(MessageRecord(
        queue="q", message_id=f"m{i:06d}", body="x" * body_bytes, attributes=(),
        md5_of_body="0" * 32, md5_of_attributes=None, sent_ms=i, visible_at_ms=i,
        receive_count=0, first_receive_ms=None, receipt_token=None, sender_id="s",
        group_id=None, dedup_id=None, sequence_number=None, trace_header=None,
        dead_letter_source_arn=None))


def test_a_full_disk_refuses_the_commit_whole_and_resume_recovers(tmp_path: Path) -> None:
    from _tmpfs import fill, free_bytes, mounted_tmpfs

    from ferrymq._storage import StorageFullError

    async def scenario(mount: Path) -> None:
        store = SqliteStore(mount / "s.db", free_bytes_min=1024 * 1024)
        await store.commit([_message(0, 1000)])
        assert store.has_room()
        filler = fill(mount, leave_bytes=200 * 1024)
        # 300 KiB in one transaction cannot fit in 200 KiB: SQLite rolls it back.
        with pytest.raises(StorageFullError):
            await store.commit([_message(i, 30_000) for i in range(1, 11)])
        assert not store.has_room()
        with pytest.raises(StorageFullError):  # refused until resumed
            await store.commit([_message(99, 10)])
        with pytest.raises(StorageFullError, match="fewer than"):
            await store.resume()  # still no room
        ids = [e.record.message_id for e in store.load() if isinstance(e, MessageStored)]
        assert ids == ["m000000"], "nothing of the refused transaction is durable"
        filler.unlink()
        assert free_bytes(mount) > 1024 * 1024
        await store.resume()
        assert store.has_room()
        await store.commit([_message(2, 1000)])
        ids = [e.record.message_id for e in store.load() if isinstance(e, MessageStored)]
        assert ids == ["m000000", "m000002"]
        # Low space is seen before the disk is full: has_room turns False at a commit
        # that leaves less than free_bytes_min.
        fill(mount, leave_bytes=512 * 1024)
        await store.commit([_message(3, 100)])
        assert not store.has_room()
        await store.close()

    with mounted_tmpfs(tmp_path / "disk", 16 * 1024 * 1024) as mount:
        asyncio.run(scenario(mount))


def test_the_wal_stays_small(tmp_path: Path) -> None:
    # The WAL is the headroom a nearly full disk must hold: checkpoints keep it near
    # 4 MiB, and after one the file is cut back instead of staying at its high-water mark.
    wal = tmp_path / "s.db-wal"
    sizes: list[int] = []

    async def scenario() -> None:
        store = SqliteStore(tmp_path / "s.db")
        for batch in range(60):
            await store.commit([_message(batch * 10 + i, 20_000) for i in range(10)])
            sizes.append(wal.stat().st_size)
        await store.close()

    asyncio.run(scenario())
    assert sum(sizes) > 0 and max(sizes) <= 5 * 1024 * 1024, max(sizes)


# ---- schema version 1, as Ferry 0.1 wrote it --------------------------------------------

# Frozen here on purpose: this is what files written by version 1 hold, whatever the
# module says today.
_V1_SCHEMA = """
CREATE TABLE ferry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE queues (
    name TEXT PRIMARY KEY, attributes BLOB NOT NULL, tags BLOB NOT NULL,
    created_ms INTEGER NOT NULL, modified_ms INTEGER NOT NULL, last_purge_ms INTEGER
);
CREATE TABLE deleted_queues (name TEXT PRIMARY KEY, deleted_at_ms INTEGER NOT NULL);
CREATE TABLE move_tasks (
    task_handle TEXT PRIMARY KEY, source_arn TEXT NOT NULL, destination_arn TEXT,
    max_per_second INTEGER, status TEXT NOT NULL, started_ms INTEGER NOT NULL,
    moved INTEGER NOT NULL, to_move INTEGER NOT NULL, failure_reason TEXT
);
CREATE TABLE messages (
    queue TEXT NOT NULL, message_id TEXT NOT NULL, body TEXT NOT NULL, attributes BLOB,
    md5_of_body TEXT NOT NULL, md5_of_attributes TEXT, sent_ms INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL, receive_count INTEGER NOT NULL,
    first_receive_ms INTEGER, receipt_token TEXT, sender_id TEXT NOT NULL, group_id TEXT,
    dedup_id TEXT, sequence_number INTEGER, trace_header TEXT,
    dead_letter_source_arn TEXT, UNIQUE (queue, message_id)
);
CREATE TABLE dedup (
    queue TEXT NOT NULL, key TEXT NOT NULL, message_id TEXT NOT NULL,
    sequence_number INTEGER NOT NULL, expires_at_ms INTEGER NOT NULL, UNIQUE (queue, key)
);
CREATE INDEX dedup_expiry ON dedup (queue, expires_at_ms);
INSERT INTO ferry_meta (key, value) VALUES ('format', 'ferrymq-store'), ('schema_version', '1');
INSERT INTO queues VALUES ('q.fifo', '[["FifoQueue","true"]]', '[["team","a"]]', 1000, 2000, NULL);
INSERT INTO deleted_queues VALUES ('gone', 3000);
INSERT INTO move_tasks VALUES ('task', 'arn:aws:sqs:us-east-1:000000000000:dlq', NULL, 5,
    'RUNNING', 4000, 1, 9, NULL);
INSERT INTO messages VALUES
    ('q.fifo', 'once', 'b1', NULL, 'md5', NULL, 10, 50000, 1, 20000, 'tok1', 's', 'g', 'd1',
     100, NULL, NULL),
    ('q.fifo', 'twice', 'b2', NULL, 'md5', NULL, 11, 60000, 2, 21000, 'tok2', 's', 'g', 'd2',
     200, NULL, NULL),
    ('q.fifo', 'never', 'b3', NULL, 'md5', NULL, 12, 12, 0, NULL, NULL, 's', 'g', 'd3', 300,
     NULL, NULL);
-- An entry dead under the horizon rule (its expiry is before the newest entry's record
-- time), and one of a message deleted since, with the highest sequence number.
INSERT INTO dedup VALUES ('q.fifo', 'd1', 'once', 100, 1000000),
    ('q.fifo', 'd2', 'twice', 200, 1800000), ('q.fifo', 'd4', 'deleted', 400, 1700000);
"""


def test_a_version_1_store_is_migrated_in_place(tmp_path: Path) -> None:
    from ferrymq._core._effects import (
        HighWaterMarks,
        MoveTaskUpserted,
        QueueDeleted,
        QueueUpserted,
    )
    from ferrymq._core._records import MoveTaskRecord, QueueRecord

    old = tmp_path / "v1.db"
    conn = sqlite3.connect(old)
    conn.executescript(_V1_SCHEMA)
    conn.close()
    store = SqliteStore(old)
    loaded = list(store.load())
    asyncio.run(store.close())

    assert loaded[:4] == [
        QueueUpserted(QueueRecord("q.fifo", (("FifoQueue", "true"),), (("team", "a"),),
                                  1000, 2000)),
        QueueDeleted("gone", 3000),
        # Its pace counts from its start (the broker allows at most a second of it).
        MoveTaskUpserted(MoveTaskRecord("task", "arn:aws:sqs:us-east-1:000000000000:dlq",
                                        None, 5, "RUNNING", 4000, 1, 9, 4000)),
        # The highest sequence number and record time its rows show.
        HighWaterMarks("q.fifo", 400, 1_500_000),
    ]
    messages = {e.record.message_id: e.record for e in loaded if isinstance(e, MessageStored)}
    # Received once: last received at its first receive. More often: not known.
    assert {k: m.received_ms for k, m in messages.items()} == {
        "once": 20000, "twice": None, "never": None}
    assert [m.body for m in messages.values()] == ["b1", "b2", "b3"]
    assert sorted(e.key for e in loaded if isinstance(e, DedupRecorded)) == ["d2", "d4"]

    # The migrated file is exactly a new file of this version, rows aside.
    fresh = tmp_path / "v2.db"
    asyncio.run(SqliteStore(fresh).close())

    def schema(path: Path) -> list[tuple[str, str]]:
        db = sqlite3.connect(path)
        try:
            rows = db.execute("SELECT name, sql FROM sqlite_master ORDER BY name").fetchall()
            version = db.execute(
                "SELECT value FROM ferry_meta WHERE key = 'schema_version'").fetchone()
        finally:
            db.close()
        # The text as written, but for its layout (the frozen copy above is laid out
        # differently).
        return [*((name, "".join((sql or "").split())) for name, sql in rows),
                ("schema_version", version[0])]

    assert schema(old) == schema(fresh)
    assert ("schema_version", "2") in schema(old)


def test_a_failed_migration_leaves_the_file_at_version_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ferrymq._storage import _sqlite

    old = tmp_path / "v1.db"
    conn = sqlite3.connect(old)
    conn.executescript(_V1_SCHEMA)
    conn.close()
    broken = _sqlite._MIGRATE_1_TO_2.replace(
        "UPDATE ferry_meta", "INSERT INTO no_such_table VALUES (1); UPDATE ferry_meta")
    monkeypatch.setitem(_sqlite._MIGRATIONS, 1, broken)
    with pytest.raises(StorageError):
        SqliteStore(old)
    conn = sqlite3.connect(old)
    try:
        assert conn.execute("SELECT value FROM ferry_meta WHERE key = 'schema_version'"
                            ).fetchone() == ("1",)
        columns = [row[1] for row in conn.execute("PRAGMA table_info(messages)")]
        assert "received_ms" not in columns  # nothing of it stayed
    finally:
        conn.close()
    monkeypatch.undo()
    store = SqliteStore(old)  # and a working migration still goes through
    asyncio.run(store.close())


def test_commit_parts_reads_each_part_between_the_others_in_one_transaction(
        tmp_path: Path) -> None:
    from ferrymq._core._effects import MessageRemoved, MessageStored, QueueUpserted
    from ferrymq._core._records import MessageRecord, QueueRecord

    def message(body: str) -> MessageStored:
        return MessageStored(MessageRecord(
            queue="q", message_id="m1", body=body, attributes=(), md5_of_body="x",
            md5_of_attributes=None, sent_ms=1, visible_at_ms=1, receive_count=0,
            first_receive_ms=None, receipt_token=None, sender_id="s", group_id=None,
            dedup_id=None, sequence_number=None, trace_header=None,
            dead_letter_source_arn=None, received_ms=None))

    async def run() -> list[list[str | None]]:
        store = SqliteStore(tmp_path / "s.sqlite3")
        try:
            before = store.stats.transactions
            bodies = await store.commit_parts([
                ([QueueUpserted(QueueRecord("q", (), (), 1, 1, None)), message("one")], ()),
                ([], [("q", "m1")]),  # sees the first part only
                ([MessageRemoved("q", "m1")], [("q", "m1")]),  # sees the removal
            ], meta={"repl.test": "1"})
            assert store.stats.transactions == before + 1
            assert store.read_meta("repl.") == {"repl.test": "1"}
            return bodies
        finally:
            await store.close()

    assert asyncio.run(run()) == [[], ["one"], [None]]


class _Handing:
    """What ``SqliteStore._let_the_loop_add`` reads of a store: the handoff, which the
    loop grows by one at each of the first ``grows`` yields."""

    def __init__(self, grows: int) -> None:
        self._handoff: list[object] = [object()]
        self.grows = grows
        self.yields = 0

    def _yield_core(self) -> None:
        self.yields += 1
        if self.yields <= self.grows:
            self._handoff.append(object())


@pytest.mark.parametrize(("grows", "yields"), [
    (0, 1),  # nothing more came: one yield, then the transaction
    (2, 3),  # two more came, one after the other: a yield after each, and one that saw none
    (100, WRITER_YIELDS_MAX),  # a loop that never stops handing in waits a bounded time
])
def test_the_writer_yields_while_the_loop_hands_in_more(grows: int, yields: int) -> None:
    handing = _Handing(grows)
    SqliteStore._let_the_loop_add(cast(Any, handing))
    assert handing.yields == yields


# ---- copies of the store (a replica's snapshot) -------------------------------------------


def _ids(store: SqliteStore) -> list[str]:
    return [e.record.message_id for e in store.load() if isinstance(e, MessageStored)]


def test_a_copy_holds_the_commits_before_it_and_none_after(tmp_path: Path) -> None:
    from ferrymq._storage._sqlite import image_meta, install_image

    copy = tmp_path / "copy.db"

    async def scenario() -> int:
        store = SqliteStore(tmp_path / "s.db")
        try:
            for i in range(20):
                await store.commit([_message(i, 20_000)], meta={"repl.seq": str(i)})
            # All called at once: the copy is pinned between the commits called before
            # it and those called after, which go on while it is written.
            results = await asyncio.gather(
                store.commit([_message(100, 10)], meta={"repl.seq": "100"}),
                store.image_to(copy),
                *(store.commit([_message(200 + i, 10)], meta={"repl.seq": str(200 + i)})
                  for i in range(5)))
            assert _ids(store)[-5:] == [f"m{200 + i:06d}" for i in range(5)]
            return cast(int, results[1])
        finally:
            await store.close()

    size = asyncio.run(scenario())
    assert size == copy.stat().st_size > 20 * 20_000
    assert image_meta(copy)["repl.seq"] == "100"
    # Installed in place of another store, it is that store from then on.
    target = tmp_path / "other" / "s.db"
    target.parent.mkdir()
    asyncio.run(SqliteStore(target).close())
    install_image(target, copy)
    assert not copy.exists()
    installed = SqliteStore(target)
    try:
        assert _ids(installed) == [f"m{i:06d}" for i in range(20)] + ["m000100"]
        assert installed.read_meta("repl.") == {"repl.seq": "100"}
    finally:
        asyncio.run(installed.close())


def test_a_cancelled_copy_leaves_no_reader_holding_the_wal(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "s.db")
        try:
            await store.commit([_message(0, 1000)])
            task = asyncio.ensure_future(store.image_to(tmp_path / "copy.db"))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await store.commit([_message(1, 1000)])  # the writer has pinned and moved on
        finally:
            await store.close()
        # No read transaction is left open: a checkpoint passes the whole WAL.
        conn = sqlite3.connect(tmp_path / "s.db")
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            conn.close()
        assert busy == 0

    asyncio.run(scenario())


def test_a_file_that_is_not_a_store_is_neither_read_nor_installed(tmp_path: Path) -> None:
    from ferrymq._storage import StoreFormatError
    from ferrymq._storage._sqlite import image_meta, install_image

    junk = tmp_path / "junk"
    junk.write_bytes(b"not a database" * 100)
    with pytest.raises(StoreFormatError):
        image_meta(junk)
    target = tmp_path / "s.db"
    asyncio.run(SqliteStore(target).close())
    with pytest.raises(StoreFormatError):
        install_image(target, junk)
    assert junk.exists()  # nothing replaced
    asyncio.run(SqliteStore(target).close())


def test_a_barrier_returns_once_the_commits_before_it_are_durable(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "s.db")
        try:
            await store.barrier()  # nothing before it
            commits = [asyncio.ensure_future(store.commit([_message(i, 10_000)]))
                       for i in range(20)]
            await asyncio.sleep(0)
            await store.barrier()
            assert all(c.done() for c in commits)
            assert len(_ids(store)) == 20
        finally:
            await store.close()
        with pytest.raises(StorageError):
            await store.barrier()

    asyncio.run(scenario())
