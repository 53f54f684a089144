"""The SQLite ``Store``: WAL mode, ``synchronous=FULL``, one writer thread, group commit.

Durability: every ``commit`` call is acknowledged only after the transaction holding
it has been committed with ``synchronous=FULL``, i.e. the WAL was fsynced.

Group commit: callers hand their effects to one writer thread through a bounded
handoff. Whenever the writer is free it takes *everything* pending and writes it in one
transaction with one fsync, then resolves each caller's future on the caller's loop
(``call_soon_threadsafe``). The event loop never touches the disk in ``commit``.
Ordering: effects reach the handoff in call order (synchronously, inside ``commit``,
or through an in-order waiting line when the handoff is full), and the writer applies
them in that order.

Failure: if a transaction fails, every caller in it and every caller still waiting gets
a ``StorageError`` raised from the SQLite error, and the store refuses further commits.
A full disk (``SQLITE_FULL``: a write returned ENOSPC, so SQLite rolled the transaction
back and nothing of it is durable) raises ``StorageFullError`` instead, and ``resume``
reopens the writer once there is room again. Any other failure (an fsync error, EIO) is
final for this process: after a failed fsync the kernel may have dropped the dirty
pages, so only a restart that reads what is really on disk is safe.

Free space: after every transaction the writer reads the free space of the store's
filesystem; under ``free_bytes_min`` ``has_room()`` turns False, so the shell refuses
writes before the core applies them and a full disk is usually never hit at all.

Exclusive use: the store holds an ``flock`` on ``<file>.lock`` for its whole life, so a
second server on the same file refuses to start (``StoreLockedError``).

Schema: version 2. A new file is created at version 1 and migrated, by the same steps
that migrate an existing version-1 file in place, so there is one version 2 whichever
way a file got there. Version 2 added what the effect log needed to be the whole truth
(``_effects.py``): each message's latest receive time, each move task's progress time,
the FIFO receive-attempt cache, and each queue's high-water marks.

On-disk encodings:

- message bodies: TEXT (UTF-8).
- message attributes: a BLOB, NULL when there are none; per attribute in record order:
  ``u16 len + name``, ``u16 len + data type`` (UTF-8), a flags byte (bit 0: string value
  present, bit 1: binary value present), then each present value as ``u32 len + bytes``
  (string first, UTF-8). Integers are big-endian.
- queue attributes and tags: JSON arrays of ``[name, value]`` pairs (keeps order).
- a receive attempt's messages: a JSON array of ``[message id, token, visible_at_ms]``.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import fcntl
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, assert_never

import orjson

from ferrymq._core._effects import (
    DEDUP_WINDOW_MS,
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
    dedup_horizon_ms,
)
from ferrymq._core._records import AttributeValue, MessageRecord, MoveTaskRecord, QueueRecord
from ferrymq._storage._base import (
    StorageError,
    StorageFullError,
    StoreFormatError,
    StoreLockedError,
    StoreStats,
)

__all__ = [
    "FREE_BYTES_MIN_DEFAULT",
    "PENDING_COMMITS_MAX",
    "SCHEMA_VERSION",
    "SqliteStore",
    "decode_attributes",
    "encode_attributes",
    "image_meta",
    "install_image",
    "simulate_power_loss",
]

SCHEMA_VERSION = 2
_FORMAT_NAME = "ferrymq-store"

# Commit calls the handoff holds for the writer. It bounds one transaction: a group
# bigger than this would make every caller in it wait for one long write and grow the
# WAL in one step. Callers beyond it wait in line (in call order) on their loop; their
# number is bounded by the server's request concurrency, not by this module.
PENDING_COMMITS_MAX = 4096

# How many times the writer gives its core away before a transaction, while commits
# keep arriving (SqliteStore._let_the_loop_add). Bounded so that a loop that never runs
# dry (or another process on the core) delays a commit by a few scheduler slices at most.
# Measured against one yield and against none (docs/scaling.md, "Letting the loop add
# to a transaction"): up to 5 took 11 % less CPU per drained message than one on the
# two-node peer (medians of 4 rounds), and the whole change 16 % less than none.
WRITER_YIELDS_MAX = 5

# WAL pages (4 KiB each) after which a commit also checkpoints into the main file.
# 1000 pages = ~4 MiB. The WAL's size is disk space Ferry needs beyond its data, so it
# is what a nearly full disk must still hold: at 4000 pages the WAL grew to 16.5 MiB and
# a server on a full disk could not recover until far more than the missing space was
# freed. Measured with `ferrymq bench` (docs/benchmarks.md): no loss of throughput
# against 4000 pages within the run's noise.
_WAL_AUTOCHECKPOINT_PAGES = 1000
# After a checkpoint resets the WAL, its file is truncated to this size, so one large
# transaction (a group of 1 MiB batches) does not leave a large file behind for good.
_JOURNAL_SIZE_LIMIT_BYTES = 4 * 1024 * 1024
# Under this much free space on the store's filesystem, writes are refused (503) before
# they reach the disk: one WAL cycle (~4 MiB) plus a checkpoint's growth of the main
# file plus the largest group of requests (a few 1 MiB batches) fits well inside it,
# so the server stops short of ENOSPC instead of running into it. Configurable with
# `ferrymq serve --disk-free-min-mib`.
FREE_BYTES_MIN_DEFAULT = 32 * 1024 * 1024
# How long a connection waits for a lock held by another connection (load() runs
# beside the writer only in tests; a foreign process holding the file is an error).
_BUSY_TIMEOUT_MS = 5_000

# Version 1, as Ferry 0.1 created it; a new file starts here and is migrated.
_SCHEMA_V1 = """
CREATE TABLE ferry_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE queues (
    name TEXT PRIMARY KEY,
    attributes BLOB NOT NULL,
    tags BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    modified_ms INTEGER NOT NULL,
    last_purge_ms INTEGER
);
CREATE TABLE deleted_queues (name TEXT PRIMARY KEY, deleted_at_ms INTEGER NOT NULL);
CREATE TABLE move_tasks (
    task_handle TEXT PRIMARY KEY,
    source_arn TEXT NOT NULL,
    destination_arn TEXT,
    max_per_second INTEGER,
    status TEXT NOT NULL,
    started_ms INTEGER NOT NULL,
    moved INTEGER NOT NULL,
    to_move INTEGER NOT NULL,
    failure_reason TEXT
);
-- The rowid is the insertion order: a new row gets max(rowid)+1 and an upsert in
-- place keeps its rowid, so ORDER BY rowid is first-stored order.
CREATE TABLE messages (
    queue TEXT NOT NULL,
    message_id TEXT NOT NULL,
    body TEXT NOT NULL,
    attributes BLOB,
    md5_of_body TEXT NOT NULL,
    md5_of_attributes TEXT,
    sent_ms INTEGER NOT NULL,
    visible_at_ms INTEGER NOT NULL,
    receive_count INTEGER NOT NULL,
    first_receive_ms INTEGER,
    receipt_token TEXT,
    sender_id TEXT NOT NULL,
    group_id TEXT,
    dedup_id TEXT,
    sequence_number INTEGER,
    trace_header TEXT,
    dead_letter_source_arn TEXT,
    UNIQUE (queue, message_id)
);
CREATE TABLE dedup (
    queue TEXT NOT NULL,
    key TEXT NOT NULL,
    message_id TEXT NOT NULL,
    sequence_number INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    UNIQUE (queue, key)
);
CREATE INDEX dedup_expiry ON dedup (queue, expires_at_ms);
"""

# Version 1 -> 2, in one transaction with the version bump. The new columns of rows
# written by version 1 are filled with what version 1 knew: a message received exactly
# once was last received at its first receive (received more often: unknown, so its
# visibility cap is not enforced); a move task's pace counts from its start (at most a
# second of catching up, see the broker); the marks are the highest sequence number and
# dedup horizon its rows show. Dedup entries dead under the horizon rule are forgotten.
_MIGRATE_1_TO_2 = """
ALTER TABLE messages ADD COLUMN received_ms INTEGER;
UPDATE messages SET received_ms = first_receive_ms
    WHERE receipt_token IS NOT NULL AND receive_count = 1;
ALTER TABLE move_tasks ADD COLUMN progress_ms INTEGER NOT NULL DEFAULT 0;
UPDATE move_tasks SET progress_ms = started_ms;
-- The rowid is the order: oldest first, a re-recorded attempt is deleted and inserted.
CREATE TABLE receive_attempts (
    queue TEXT NOT NULL,
    attempt_id TEXT NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    received BLOB NOT NULL,
    UNIQUE (queue, attempt_id)
);
CREATE TABLE queue_marks (
    queue TEXT PRIMARY KEY,
    last_sequence INTEGER NOT NULL,
    dedup_horizon_ms INTEGER NOT NULL
);
INSERT INTO queue_marks (queue, last_sequence, dedup_horizon_ms)
    SELECT queue, max(sequence), max(horizon) FROM (
        SELECT queue, sequence_number AS sequence, 0 AS horizon FROM messages
            WHERE sequence_number IS NOT NULL
        UNION ALL
        SELECT queue, sequence_number, expires_at_ms - {dedup_window_ms} FROM dedup
    ) GROUP BY queue;
DELETE FROM dedup WHERE expires_at_ms <=
    (SELECT dedup_horizon_ms FROM queue_marks WHERE queue_marks.queue = dedup.queue);
UPDATE ferry_meta SET value = '2' WHERE key = 'schema_version';
"""
# The migration steps from each version to the next.
_MIGRATIONS = {1: _MIGRATE_1_TO_2}

_MESSAGE_COLUMNS = (
    "queue, message_id, body, attributes, md5_of_body, md5_of_attributes, sent_ms, "
    "visible_at_ms, receive_count, first_receive_ms, receipt_token, sender_id, group_id, "
    "dedup_id, sequence_number, trace_header, dead_letter_source_arn, received_ms"
)
_MESSAGE_UPDATES = ", ".join(
    f"{c} = excluded.{c}" for c in _MESSAGE_COLUMNS.split(", ")[2:]
)
_SQL_MESSAGE_STORE = (
    f"INSERT INTO messages ({_MESSAGE_COLUMNS}) VALUES ({', '.join('?' * 18)}) "
    f"ON CONFLICT (queue, message_id) DO UPDATE SET {_MESSAGE_UPDATES}"
)
# A move of a message whose body is not in memory: the body comes from the copy in the
# source queue, which the same transaction deletes right after.
_SQL_MESSAGE_MOVE = (
    f"INSERT INTO messages ({_MESSAGE_COLUMNS}) SELECT ?, ?, body, "
    f"{', '.join('?' * 15)} FROM messages WHERE queue = ? AND message_id = ? "
    f"ON CONFLICT (queue, message_id) DO UPDATE SET {_MESSAGE_UPDATES}"
)
_SQL_BODY = "SELECT body FROM messages WHERE queue = ? AND message_id = ?"
_SQL_META_UPSERT = (
    "INSERT INTO ferry_meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_SQL_MESSAGE_RECEIVED = (
    "UPDATE messages SET receipt_token = ?, visible_at_ms = ?, receive_count = ?, "
    "first_receive_ms = ?, received_ms = ? WHERE queue = ? AND message_id = ?"
)
_SQL_VISIBILITY = "UPDATE messages SET visible_at_ms = ? WHERE queue = ? AND message_id = ?"
_SQL_MESSAGE_REMOVE = "DELETE FROM messages WHERE queue = ? AND message_id = ?"
_SQL_DEDUP_UPSERT = (
    "INSERT INTO dedup (queue, key, message_id, sequence_number, expires_at_ms) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (queue, key) DO UPDATE SET "
    "message_id = excluded.message_id, sequence_number = excluded.sequence_number, "
    "expires_at_ms = excluded.expires_at_ms"
)
_SQL_MARKS_RAISE = (
    "INSERT INTO queue_marks (queue, last_sequence, dedup_horizon_ms) VALUES (?, ?, ?) "
    "ON CONFLICT (queue) DO UPDATE SET "
    "last_sequence = max(last_sequence, excluded.last_sequence), "
    "dedup_horizon_ms = max(dedup_horizon_ms, excluded.dedup_horizon_ms)"
)
_SQL_DEDUP_FORGET = (
    "DELETE FROM dedup WHERE queue = ?1 AND expires_at_ms <= "
    "(SELECT dedup_horizon_ms FROM queue_marks WHERE queue = ?1)"
)
_SQL_ATTEMPT_FORGET = "DELETE FROM receive_attempts WHERE queue = ? AND attempt_id = ?"
_SQL_ATTEMPT_RECORD = (
    "INSERT INTO receive_attempts (queue, attempt_id, expires_at_ms, received) "
    "VALUES (?, ?, ?, ?)"
)
_SQL_QUEUE_MESSAGES_DELETE = "DELETE FROM messages WHERE queue = ?"
_SQL_QUEUE_DEDUP_DELETE = "DELETE FROM dedup WHERE queue = ?"
_SQL_QUEUE_ATTEMPTS_DELETE = "DELETE FROM receive_attempts WHERE queue = ?"
_SQL_QUEUE_MARKS_DELETE = "DELETE FROM queue_marks WHERE queue = ?"
_SQL_QUEUE_UPSERT = (
    "INSERT INTO queues (name, attributes, tags, created_ms, modified_ms, last_purge_ms) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET "
    "attributes = excluded.attributes, tags = excluded.tags, "
    "created_ms = excluded.created_ms, modified_ms = excluded.modified_ms, "
    "last_purge_ms = excluded.last_purge_ms"
)
_SQL_DELETION_FORGET = "DELETE FROM deleted_queues WHERE name = ?"
_SQL_QUEUE_DELETE = "DELETE FROM queues WHERE name = ?"
_SQL_DELETION_REMEMBER = (
    "INSERT INTO deleted_queues (name, deleted_at_ms) VALUES (?, ?) "
    "ON CONFLICT (name) DO UPDATE SET deleted_at_ms = excluded.deleted_at_ms"
)
_SQL_TASK_UPSERT = (
    "INSERT INTO move_tasks (task_handle, source_arn, destination_arn, max_per_second, "
    "status, started_ms, moved, to_move, failure_reason, progress_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (task_handle) DO UPDATE SET source_arn = excluded.source_arn, "
    "destination_arn = excluded.destination_arn, max_per_second = excluded.max_per_second, "
    "status = excluded.status, started_ms = excluded.started_ms, moved = excluded.moved, "
    "to_move = excluded.to_move, failure_reason = excluded.failure_reason, "
    "progress_ms = excluded.progress_ms"
)

# ---- attribute encoding ------------------------------------------------------------

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_FLAG_STRING = 1
_FLAG_BINARY = 2


def encode_attributes(attributes: tuple[tuple[str, AttributeValue], ...]) -> bytes | None:
    """The compact blob described in the module docstring; None for no attributes."""
    if not attributes:
        return None
    out = bytearray()
    for name, value in attributes:
        name_bytes = name.encode()
        type_bytes = value.data_type.encode()
        flags = (_FLAG_STRING if value.string_value is not None else 0) | (
            _FLAG_BINARY if value.binary_value is not None else 0
        )
        out += _U16.pack(len(name_bytes)) + name_bytes
        out += _U16.pack(len(type_bytes)) + type_bytes
        out.append(flags)
        if value.string_value is not None:
            string_bytes = value.string_value.encode()
            out += _U32.pack(len(string_bytes)) + string_bytes
        if value.binary_value is not None:
            out += _U32.pack(len(value.binary_value)) + value.binary_value
    return bytes(out)


def decode_attributes(blob: bytes | None) -> tuple[tuple[str, AttributeValue], ...]:
    if blob is None:
        return ()
    view = memoryview(blob)
    pos = 0
    result: list[tuple[str, AttributeValue]] = []

    def take(length_struct: struct.Struct) -> bytes:
        nonlocal pos
        (length,) = length_struct.unpack_from(view, pos)
        pos += length_struct.size
        chunk = bytes(view[pos : pos + length])
        assert len(chunk) == length, "truncated attribute blob"
        pos += length
        return chunk

    while pos < len(view):
        name = take(_U16).decode()
        data_type = take(_U16).decode()
        flags = view[pos]
        pos += 1
        string_value = take(_U32).decode() if flags & _FLAG_STRING else None
        binary_value = take(_U32) if flags & _FLAG_BINARY else None
        result.append((name, AttributeValue(data_type, string_value, binary_value)))
    return tuple(result)


def _pairs_json(pairs: tuple[tuple[str, str], ...]) -> bytes:
    return orjson.dumps(pairs)


def _pairs_from_json(blob: bytes) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in orjson.loads(blob))


# ---- effect -> SQL -----------------------------------------------------------------


def _message_params(m: MessageRecord) -> tuple[Any, ...]:
    return (
        m.queue, m.message_id, m.body, encode_attributes(m.attributes), m.md5_of_body,
        m.md5_of_attributes, m.sent_ms, m.visible_at_ms, m.receive_count,
        m.first_receive_ms, m.receipt_token, m.sender_id, m.group_id, m.dedup_id,
        m.sequence_number, m.trace_header, m.dead_letter_source_arn, m.received_ms,
    )


def _move_params(e: MessageStored) -> tuple[Any, ...]:
    params = _message_params(e.record)
    return (*params[:2], *params[3:], e.moved_from, e.record.message_id)


def _write_effects(cur: sqlite3.Cursor, effects: Iterable[Effect]) -> int:
    """Write ``effects`` in order, as ``_effects.py`` defines them; the number written.

    Consecutive effects that use the same statement share one ``executemany``. Dedup
    entries and high-water marks wait until something could see their order (a purge
    or deletion of a queue, or the end): their tables are touched by nothing else, and
    the horizon rule gives the same entries whatever order they are written in, so a
    FIFO batch writes its entries, marks and forgetting in three statements, not three
    per message.
    """
    count = 0
    sql: str | None = None
    rows: list[tuple[Any, ...]] = []
    dedup_rows: list[tuple[Any, ...]] = []
    marks: dict[str, list[int]] = {}  # queue -> [sequence, horizon] to raise the marks to

    def add(statement: str, row: tuple[Any, ...]) -> None:
        nonlocal sql
        if statement is not sql:
            if rows:
                cur.executemany(sql, rows)  # type: ignore[arg-type]  # set with rows
                rows.clear()
            sql = statement
        rows.append(row)

    def mark(queue: str, sequence_number: int, horizon_ms: int) -> None:
        raised = marks.get(queue)
        if raised is None:
            marks[queue] = [sequence_number, horizon_ms]
            return
        if sequence_number > raised[0]:
            raised[0] = sequence_number
        if horizon_ms > raised[1]:
            raised[1] = horizon_ms

    def flush() -> None:
        nonlocal sql
        if rows:
            cur.executemany(sql, rows)  # type: ignore[arg-type]  # set with rows
            rows.clear()
        sql = None
        if dedup_rows:
            cur.executemany(_SQL_DEDUP_UPSERT, dedup_rows)
            dedup_rows.clear()
        if marks:
            cur.executemany(_SQL_MARKS_RAISE, [(q, m[0], m[1]) for q, m in marks.items()])
            cur.executemany(_SQL_DEDUP_FORGET, [(q,) for q, m in marks.items() if m[1]])
            marks.clear()

    for effect in effects:
        count += 1
        match effect:
            case MessageStored():
                record = effect.record
                if record.body is None:
                    add(_SQL_MESSAGE_MOVE, _move_params(effect))
                else:
                    add(_SQL_MESSAGE_STORE, _message_params(record))
                if record.sequence_number is not None:
                    mark(record.queue, record.sequence_number, 0)
            case MessageReceived():
                add(_SQL_MESSAGE_RECEIVED, (
                    effect.receipt_token, effect.visible_at_ms, effect.receive_count,
                    effect.first_receive_ms, effect.received_ms, effect.queue,
                    effect.message_id))
            case MessageRemoved():
                add(_SQL_MESSAGE_REMOVE, (effect.queue, effect.message_id))
            case VisibilityChanged():
                add(_SQL_VISIBILITY, (effect.visible_at_ms, effect.queue, effect.message_id))
            case DedupRecorded():
                dedup_rows.append((effect.queue, effect.key, effect.message_id,
                                   effect.sequence_number, effect.expires_at_ms))
                mark(effect.queue, effect.sequence_number, dedup_horizon_ms(effect))
            case ReceiveAttemptRecorded():
                for attempt_id in (*effect.forgotten, effect.attempt_id):
                    add(_SQL_ATTEMPT_FORGET, (effect.queue, attempt_id))
                add(_SQL_ATTEMPT_RECORD, (effect.queue, effect.attempt_id,
                                          effect.expires_at_ms, orjson.dumps(effect.received)))
            case QueuePurged():
                flush()
                for statement in (_SQL_QUEUE_MESSAGES_DELETE, _SQL_QUEUE_DEDUP_DELETE,
                                  _SQL_QUEUE_ATTEMPTS_DELETE):
                    cur.execute(statement, (effect.queue,))
            case QueueUpserted():
                q = effect.record
                add(_SQL_QUEUE_UPSERT, (q.name, _pairs_json(q.attributes), _pairs_json(q.tags),
                                        q.created_ms, q.modified_ms, q.last_purge_ms))
                add(_SQL_DELETION_FORGET, (q.name,))
            case QueueDeleted():
                flush()
                name = effect.name
                for statement in (_SQL_QUEUE_DELETE, _SQL_QUEUE_MESSAGES_DELETE,
                                  _SQL_QUEUE_DEDUP_DELETE, _SQL_QUEUE_ATTEMPTS_DELETE,
                                  _SQL_QUEUE_MARKS_DELETE):
                    cur.execute(statement, (name,))
                cur.execute(_SQL_DELETION_REMEMBER, (name, effect.deleted_at_ms))
            case MoveTaskUpserted():
                t = effect.record
                add(_SQL_TASK_UPSERT, (
                    t.task_handle, t.source_arn, t.destination_arn, t.max_per_second,
                    t.status, t.started_ms, t.moved, t.to_move, t.failure_reason,
                    t.progress_ms))
            case HighWaterMarks():
                mark(effect.queue, effect.sequence_number, effect.dedup_horizon_ms)
            case _:
                assert_never(effect)
    flush()
    return count


# ---- opening -----------------------------------------------------------------------


def _connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves so a group is exactly one
    # transaction. check_same_thread=False: the write connection is created here and
    # then handed to (and used only by) the writer thread.
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, cached_statements=64
    )
    conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
    return conn


def _migrations_from(version: int) -> str:
    """The SQL that takes a store from ``version`` to SCHEMA_VERSION."""
    steps = []
    while version < SCHEMA_VERSION:
        steps.append(_MIGRATIONS[version].format(dedup_window_ms=DEDUP_WINDOW_MS))
        version += 1
    return "".join(steps)


def _check_or_create_schema(conn: sqlite3.Connection, path: Path) -> None:
    tables = {
        row[0]
        for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    if not tables:
        # One script, one transaction: a crash leaves either no schema or all of it.
        conn.executescript(
            f"BEGIN IMMEDIATE;{_SCHEMA_V1}"
            f"INSERT INTO ferry_meta (key, value) VALUES ('format', '{_FORMAT_NAME}'), "
            f"('schema_version', '1');{_migrations_from(1)}COMMIT;"
        )
        _fsync_directory(path.parent)
        return
    if "ferry_meta" not in tables:
        raise StoreFormatError(f"{path} is an SQLite database but not a Ferry store")
    meta = dict(conn.execute("SELECT key, value FROM ferry_meta").fetchall())
    if meta.get("format") != _FORMAT_NAME or "schema_version" not in meta:
        raise StoreFormatError(f"{path} is not a Ferry store")
    version = int(meta["schema_version"])
    if version > SCHEMA_VERSION:
        raise StoreFormatError(
            f"{path} has store schema version {version}, newer than this Ferry "
            f"supports ({SCHEMA_VERSION}); upgrade Ferry to open it"
        )
    if version < 1:
        raise StoreFormatError(f"{path} has store schema version {version}, which never existed")
    if version < SCHEMA_VERSION:
        # In place, in one transaction: a crash leaves the old version or the new one.
        try:
            conn.executescript(f"BEGIN IMMEDIATE;{_migrations_from(version)}COMMIT;")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


def _free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem of ``directory``."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _is_disk_full(exc: BaseException) -> bool:
    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorname", None) == "SQLITE_FULL"
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _lock_file(path: Path) -> int:
    """Take the exclusive lock that marks ``path`` as in use; return its descriptor.

    ``flock`` is released by the kernel when the process dies, however it dies, so a
    crashed server never leaves a stale lock behind. The holder's pid is written into
    the file only to make the refusal message useful."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        raise StoreLockedError(
            f"{path} is in use by another Ferry process (pid {holder}); two servers on "
            f"one data directory would corrupt it") from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def _unlock_file(fd: int) -> None:
    os.close(fd)  # closing the last descriptor releases the flock


def _fsync_directory(directory: Path) -> None:
    """A newly created file survives power loss only once its directory entry does."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---- the store ---------------------------------------------------------------------


@dataclass(slots=True)
class _Pending:
    effects: Sequence[Effect]
    future: asyncio.Future[list[str | None]]
    loop: asyncio.AbstractEventLoop = field(repr=False)
    fetch_bodies: Sequence[tuple[str, str]] = ()
    bodies: list[str | None] = field(default_factory=list)  # filled by the writer
    # ``ferry_meta`` rows written in the same transaction (replication's position).
    meta: Mapping[str, str] | None = None
    # A call made of several (effects, fetches) parts, written in one transaction in
    # order, each part's reads seeing exactly the parts up to it (``commit_parts``).
    parts: list[_Pending] | None = None
    # A copy of the whole database, pinned right after this call's transaction: a
    # connection of its own holding a read transaction there (``image_to``), or why
    # none could be opened.
    wants_image: bool = False
    image_reader: sqlite3.Connection | None = None
    image_failure: str = ""


class SqliteStore:
    """See the module docstring. Use from one event loop; ``load`` from any thread."""

    def __init__(self, path: Path, *, free_bytes_min: int = FREE_BYTES_MIN_DEFAULT,
                 power_loss_seam: bool = False) -> None:
        self._path = path
        # Tests of power loss (``simulate_power_loss``): no checkpoints, so the database
        # file never changes and the WAL only grows, and after every fsync the WAL's
        # length is noted beside it: what a power cut would leave is then exactly the
        # database file plus that much of the WAL.
        self._seam_fd: int | None = None
        self._stats = StoreStats()
        self._free_bytes_min = free_bytes_min
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = _lock_file(path)
        except StoreLockedError:
            raise
        except OSError as exc:
            raise StorageError(f"cannot open store {path}: {exc}") from exc
        if power_loss_seam:
            self._seam_fd = os.open(_seam_path(path), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                                    0o644)
        try:
            conn = self._open_writer_connection(create=True)
        except BaseException:
            _unlock_file(self._lock_fd)
            raise
        if self._seam_fd is not None:
            self._note_synced()  # what is on disk at start-up is all durable
        self._conn = conn  # owned by the writer thread from here on
        # Written by the writer thread after each transaction, read on the loop (a
        # plain bool: assignment is atomic). Starts True: a server on a nearly full
        # disk still starts, and learns at its first write or resume.
        self._room = True
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        # Guarded by _lock: the handoff, and the writer's stop/failure state.
        self._handoff: collections.deque[_Pending] = collections.deque()
        self._stopping = False
        self._failure: StorageError | None = None
        # Loop side only: callers who found the handoff full, in call order.
        self._waiting: collections.deque[_Pending] = collections.deque()
        self._closed = False
        self._last: asyncio.Future[list[str | None]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer = threading.Thread(
            target=self._run_writer, name=f"ferrymq-store-writer:{path.name}", daemon=True
        )
        self._writer.start()

    def _open_writer_connection(self, *, create: bool) -> sqlite3.Connection:
        path = self._path
        try:
            conn = _connect(path)
        except (OSError, sqlite3.Error) as exc:
            raise StorageError(f"cannot open store {path}: {exc}") from exc
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StorageError(f"cannot put {path} in WAL mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA wal_autocheckpoint = "
                         f"{0 if self._seam_fd is not None else _WAL_AUTOCHECKPOINT_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT_BYTES}")
            if create:
                _check_or_create_schema(conn, path)
        except sqlite3.Error as exc:
            conn.close()
            if getattr(exc, "sqlite_errorname", None) in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise StoreFormatError(f"{path} is not a Ferry store: {exc}") from exc
            if _is_disk_full(exc):
                raise StorageFullError(f"cannot open store {path}: {exc}") from exc
            raise StorageError(f"cannot open store {path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def stats(self) -> StoreStats:
        return self._stats

    def has_room(self) -> bool:
        return self._room

    @property
    def path(self) -> Path:
        return self._path

    # ---- start-up ----------------------------------------------------------------

    def load(self) -> Iterator[Effect]:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read store {self._path}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            conn.execute("BEGIN")  # one consistent snapshot across all tables
            yield from self._read_all(conn)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read store {self._path}: {exc}") from exc
        except (AssertionError, struct.error, UnicodeDecodeError, ValueError,
                TypeError) as exc:
            # Rows that do not decode: the file was damaged or written by someone else.
            raise StoreFormatError(f"store {self._path} holds undecodable data") from exc
        finally:
            conn.close()

    @staticmethod
    def _read_all(conn: sqlite3.Connection) -> Iterator[Effect]:
        for name, attrs, tags, created_ms, modified_ms, last_purge_ms in conn.execute(
            "SELECT name, attributes, tags, created_ms, modified_ms, last_purge_ms "
            "FROM queues ORDER BY rowid"
        ):
            yield QueueUpserted(QueueRecord(
                name, _pairs_from_json(attrs), _pairs_from_json(tags), created_ms,
                modified_ms, last_purge_ms,
            ))
        for name, deleted_at_ms in conn.execute(
            "SELECT name, deleted_at_ms FROM deleted_queues ORDER BY rowid"
        ):
            yield QueueDeleted(name, deleted_at_ms)
        for row in conn.execute(
            "SELECT task_handle, source_arn, destination_arn, max_per_second, status, "
            "started_ms, moved, to_move, progress_ms, failure_reason FROM move_tasks "
            "ORDER BY rowid"
        ):
            yield MoveTaskUpserted(MoveTaskRecord(*row))
        for row in conn.execute(
            "SELECT queue, last_sequence, dedup_horizon_ms FROM queue_marks ORDER BY rowid"
        ):
            yield HighWaterMarks(*row)
        for row in conn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages ORDER BY rowid"):
            (queue, message_id, body, attrs, md5_body, md5_attrs, sent_ms, visible_at_ms,
             receive_count, first_receive_ms, receipt_token, sender_id, group_id, dedup_id,
             sequence_number, trace_header, dlq_source_arn, received_ms) = row
            yield MessageStored(MessageRecord(
                queue=queue, message_id=message_id, body=body,
                attributes=decode_attributes(attrs), md5_of_body=md5_body,
                md5_of_attributes=md5_attrs, sent_ms=sent_ms, visible_at_ms=visible_at_ms,
                receive_count=receive_count, first_receive_ms=first_receive_ms,
                receipt_token=receipt_token, sender_id=sender_id, group_id=group_id,
                dedup_id=dedup_id, sequence_number=sequence_number,
                trace_header=trace_header, dead_letter_source_arn=dlq_source_arn,
                received_ms=received_ms,
            ))
        for row in conn.execute(
            "SELECT queue, key, message_id, sequence_number, expires_at_ms FROM dedup "
            "ORDER BY rowid"
        ):
            yield DedupRecorded(*row)
        for queue, attempt_id, expires_at_ms, received in conn.execute(
            "SELECT queue, attempt_id, expires_at_ms, received FROM receive_attempts "
            "ORDER BY rowid"
        ):
            yield ReceiveAttemptRecorded(queue, attempt_id, expires_at_ms, tuple(
                (str(message_id), str(token), int(visible_at_ms))
                for message_id, token, visible_at_ms in orjson.loads(received)))

    # ---- commit (event loop side) ------------------------------------------------

    def read_meta(self, prefix: str) -> dict[str, str]:
        """The ``ferry_meta`` rows whose key starts with ``prefix`` (at start-up, before
        any commit: what the last transaction wrote)."""
        rows = _meta_rows(str(self._path), uri=False, error=StorageError,
                          what=f"cannot read store {self._path}")
        return {k: v for k, v in rows.items() if k.startswith(prefix)}

    async def image_to(self, dest: Path) -> int:
        """Write a copy of the whole database to the new file ``dest`` and return its
        size: the store as it is after every commit called before this one and before
        any called after it (a consistent snapshot, for a replica that must be rebuilt).

        The writer pins that point (a read transaction opened right after the commits
        before it, on a connection of its own, so it sees exactly what was fsynced);
        SQLite's online backup then copies from that read transaction on a worker
        thread. The writer goes on committing meanwhile, and memory stays flat whatever
        the store's size. ``dest`` is a scratch copy (not fsynced): whoever installs it
        makes it durable."""
        item = await self._enqueue((), (), None, wants_image=True)
        try:
            await asyncio.shield(item.future)
        except asyncio.CancelledError:
            # The reader would hold its read transaction for ever, and no checkpoint
            # could pass it: close it once the writer has opened it.
            item.future.add_done_callback(lambda _: _close_reader(item))
            raise
        reader, item.image_reader = item.image_reader, None
        if reader is None:
            raise StorageError(f"no copy of store {self._path}: {item.image_failure}")
        return await asyncio.to_thread(_copy_pinned, reader, dest)

    async def commit(
        self, effects: Sequence[Effect], fetch_bodies: Sequence[tuple[str, str]] = (),
        *, meta: Mapping[str, str] | None = None,
    ) -> list[str | None]:
        """``Store.commit``; ``meta`` rows are upserted into ``ferry_meta`` in the same
        transaction (replication keeps its log position there)."""
        item = await self._enqueue(effects, fetch_bodies, meta)
        # Shielded: a cancelled caller's effects are still written (the core has
        # applied them), so its future must stay resolvable by the writer.
        return await asyncio.shield(item.future)

    async def commit_parts(
        self, parts: Sequence[tuple[Sequence[Effect], Sequence[tuple[str, str]]]],
        *, meta: Mapping[str, str] | None = None,
    ) -> list[list[str | None]]:
        """Like ``commit`` called once per part, in order, except that all parts (and
        ``meta``) are durable together or not at all: one replicated log entry made of
        several requests. Returns each part's bodies."""
        done, bodies = self.submit_parts(parts, meta=meta)
        await asyncio.shield(done)
        return bodies()

    def submit_parts(
        self, parts: Sequence[tuple[Sequence[Effect], Sequence[tuple[str, str]]]], *,
        meta: Mapping[str, str] | None = None,
    ) -> tuple[asyncio.Future[Any], Callable[[], list[list[str | None]]]]:
        """``commit_parts`` handed to the writer now, without waiting for the caller's
        next turn of the loop: a future that resolves once it is durable (or fails),
        and the parts' bodies, to read after it resolved. Replication submits this way
        (a turn of the loop is milliseconds under load, on every hop of a commit)."""
        loop = asyncio.get_running_loop()
        subs = [_Pending(effects, loop.create_future(), loop, fetches)
                for effects, fetches in parts]
        item = self._enqueue_now((), (), meta, parts=subs)
        return item.future, lambda: [sub.bodies for sub in subs]

    async def _enqueue(self, effects: Sequence[Effect], fetch_bodies: Sequence[tuple[str, str]],
                       meta: Mapping[str, str] | None, *, wants_image: bool = False,
                       parts: list[_Pending] | None = None) -> _Pending:
        return self._enqueue_now(effects, fetch_bodies, meta, wants_image=wants_image,
                                 parts=parts)

    def _enqueue_now(self, effects: Sequence[Effect],
                     fetch_bodies: Sequence[tuple[str, str]],
                     meta: Mapping[str, str] | None, *, wants_image: bool = False,
                     parts: list[_Pending] | None = None) -> _Pending:
        # Everything up to the handoff happens synchronously, so calls enter the
        # handoff (or the waiting line) in call order.
        if self._closed:
            raise StorageError("the store is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # The waiting line and settling assume one loop at a time; switching is
            # fine once everything committed from the previous loop is settled.
            assert self._last is None or self._last.done(), "store used from two loops"
            self._loop = loop
        item = _Pending(effects, loop.create_future(), loop, fetch_bodies, meta=meta,
                        wants_image=wants_image, parts=parts)
        if self._waiting:
            # Settling the line fails it if the store broke meanwhile.
            self._waiting.append(item)
        else:
            with self._lock:
                if self._failure is not None:
                    raise _refusal(self._failure)
                if len(self._handoff) < PENDING_COMMITS_MAX:
                    self._handoff.append(item)
                    self._wakeup.notify()
                else:
                    self._waiting.append(item)
        self._last = item.future
        return item

    async def _last_settled(self) -> None:
        """Wait until every call enqueued so far is settled (committed or failed)."""
        if self._closed:
            raise StorageError("the store is closed")
        last = self._last
        if last is not None and not last.done():
            # Calls are settled in order: once the last is, every earlier one is.
            await asyncio.wait([last])

    async def barrier(self) -> None:
        await self._last_settled()
        with self._lock:
            failure = self._failure
        if failure is not None:
            raise _refusal(failure)

    async def resume(self) -> None:
        await self._last_settled()  # then none is left in the writer
        free = await asyncio.to_thread(_free_bytes, self._path.parent)
        if free < self._free_bytes_min:
            self._room = False
            raise StorageFullError(
                f"{free} bytes free on the filesystem of {self._path}, fewer than the "
                f"{self._free_bytes_min} Ferry keeps in reserve")
        with self._lock:
            failure = self._failure
        if failure is not None:
            if not isinstance(failure, StorageFullError):
                raise _refusal(failure)  # only a full disk is recoverable in-process
            await asyncio.to_thread(self._restart_writer)
        self._room = True

    def _restart_writer(self) -> None:
        """Off the loop: open a new writer connection, prove that a write succeeds and
        give the WAL's space back, then start a writer thread on it."""
        self._writer.join()  # it returned after the failure; nothing else runs
        conn = self._open_writer_connection(create=False)
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO ferry_meta (key, value) VALUES ('resumed_ms', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(time.time_ns() // 1_000_000),))
            conn.execute("COMMIT")
            # Best effort: a full WAL is space the disk needs back.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the original error is the one worth reporting
            conn.close()
            if _is_disk_full(exc):
                raise StorageFullError(f"writing to store {self._path} failed: {exc}") from exc
            raise StorageError(f"writing to store {self._path} failed: {exc}") from exc
        self._conn = conn
        with self._lock:
            self._failure = None
        self._writer = threading.Thread(
            target=self._run_writer, name=f"ferrymq-store-writer:{self._path.name}",
            daemon=True)
        self._writer.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        last = self._last
        if last is not None:
            # Calls are written in order, so once the last one is settled all are.
            await asyncio.wait([last])
        with self._lock:
            self._stopping = True
            self._wakeup.notify()
        await asyncio.to_thread(self._writer.join)
        if self._seam_fd is not None:
            os.close(self._seam_fd)
        _unlock_file(self._lock_fd)

    def _settle(self, batch: list[_Pending], failure: StorageError | None) -> None:
        """On the loop: resolve a written batch, then refill the handoff from the
        waiting line (or fail the line if the store is now broken)."""
        for item in batch:
            if not item.future.done():
                if failure is None:
                    item.future.set_result(item.bodies)
                else:
                    item.future.set_exception(_refusal(failure))
        if failure is not None:
            while self._waiting:
                item = self._waiting.popleft()
                if not item.future.done():
                    item.future.set_exception(_refusal(failure))
            return
        with self._lock:
            moved = False
            while self._waiting and len(self._handoff) < PENDING_COMMITS_MAX:
                self._handoff.append(self._waiting.popleft())
                moved = True
            if moved:
                self._wakeup.notify()

    # ---- the writer thread -------------------------------------------------------

    def _run_writer(self) -> None:
        try:
            while True:
                with self._lock:
                    while not self._handoff and not self._stopping:
                        self._wakeup.wait()
                    if not self._handoff:
                        return  # stopping, and close() made sure nothing is left
                self._let_the_loop_add()
                with self._lock:
                    batch = []
                    while self._handoff:
                        item = self._handoff.popleft()
                        batch.append(item)
                        if item.wants_image:
                            break  # the image is of the state right after it
                failure = self._write(batch)
                if failure is not None:
                    with self._lock:
                        self._failure = failure
                        batch.extend(self._handoff)
                        self._handoff.clear()
                self._resolve(batch, failure)
                if failure is not None:
                    return
        finally:
            self._conn.close()

    @staticmethod
    def _yield_core() -> None:
        os.sched_yield()  # releases the GIL too (CPython wraps it so)

    def _let_the_loop_add(self) -> None:
        """Before taking a group: give this thread's core to whatever else is ready to
        run, again while the handoff keeps growing (at most WRITER_YIELDS_MAX times).

        A transaction has a fixed cost whatever its size (its fdatasync, the pages every
        transaction writes, the thread hand-offs; ~0.3 ms of CPU on the VM of
        docs/scaling.md). Where the loop and this thread share a core (one core per
        node, as the bench pins them), a writer woken by the first commit would start
        at once, with that commit alone, while the loop had more requests in hand; the
        yield lets the loop finish them and hand their commits in first. A loop with
        nothing to run, or on another core, lets the yield return at once: the wait
        costs a system call when there is nothing to wait for.
        """
        seen = -1
        for _ in range(WRITER_YIELDS_MAX):
            handed = len(self._handoff)  # len() of a deque: safe without the lock
            if handed == seen:
                return
            seen = handed
            self._yield_core()

    def _write(self, batch: list[_Pending]) -> StorageError | None:
        effect_count = 0
        try:
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                # Runs of one effect kind span calls (executemany), but a call that
                # reads bodies is a boundary: its reads see exactly the effects of the
                # calls up to and including it.
                flat = [sub for item in batch for sub in (item.parts or (item,))]
                start = 0
                for end, item in enumerate(flat, 1):
                    if item.fetch_bodies or end == len(flat):
                        effect_count += _write_effects(cur, _effects_in_order(flat[start:end]))
                        start = end
                        item.bodies = [_read_body(cur, key) for key in item.fetch_bodies]
                meta: dict[str, str] = {}
                for item in batch:
                    if item.meta:
                        meta.update(item.meta)  # a later call's position wins
                if meta:
                    cur.executemany(_SQL_META_UPSERT, meta.items())
                cur.execute("COMMIT")
                if self._seam_fd is not None:
                    self._note_synced()
                if batch[-1].wants_image:
                    self._pin_reader(batch[-1])
            except BaseException:
                if self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass  # the original error is the one worth reporting
                raise
        except Exception as exc:  # any failure leaves memory and disk diverged
            message = f"writing to store {self._path} failed: {exc}"
            if _is_disk_full(exc):
                self._room = False
                failure: StorageError = StorageFullError(message)
            else:
                failure = StorageError(message)
            failure.__cause__ = exc
            return failure
        try:
            self._room = _free_bytes(self._path.parent) >= self._free_bytes_min
        except OSError:
            self._room = True  # cannot tell: let the next write find out
        self._stats.transactions += 1
        self._stats.commits += len(batch)
        self._stats.effects += effect_count
        return None

    def _pin_reader(self, item: _Pending) -> None:
        """Open ``item``'s image reader, its read transaction begun here, between two
        of the writer's transactions (see ``image_to``). A failure to open it fails
        only the copy, not the store."""
        try:
            reader = sqlite3.connect(self._path, isolation_level=None,
                                     check_same_thread=False)
        except sqlite3.Error as exc:
            item.image_failure = str(exc)
            return
        try:
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM ferry_meta").fetchone()  # starts the read
        except sqlite3.Error as exc:
            reader.close()
            item.image_failure = str(exc)
            return
        item.image_reader = reader

    def _note_synced(self) -> None:
        """The power-loss seam: the WAL's length now, every byte of it fsynced."""
        assert self._seam_fd is not None
        wal = self._path.with_name(self._path.name + "-wal")
        size = wal.stat().st_size if wal.exists() else 0
        os.pwrite(self._seam_fd, f"{size:020d}".encode("ascii"), 0)

    def _resolve(self, batch: list[_Pending], failure: StorageError | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[_Pending]] = {}
        for item in batch:
            by_loop.setdefault(item.loop, []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(self._settle, items, failure)
            except RuntimeError:
                pass  # that loop is closed; nobody is left to tell


def _seam_path(path: Path) -> Path:
    return path.with_name(path.name + ".synced")


def simulate_power_loss(path: Path) -> int:
    """After the process that held the store at ``path`` (opened with
    ``power_loss_seam``) was killed: drop what a power cut would have, i.e. every byte
    of the WAL written after its last fsync, and the shared-memory index (memory, not
    disk). Returns the bytes dropped. For tests."""
    synced = int(_seam_path(path).read_text() or 0)
    wal = path.with_name(path.name + "-wal")
    dropped = 0
    if wal.exists():
        size = wal.stat().st_size
        if size > synced:
            dropped = size - synced
            os.truncate(wal, synced)
    shm = path.with_name(path.name + "-shm")
    if shm.exists():
        shm.unlink()
    return dropped


def _close_reader(item: _Pending) -> None:
    if item.image_reader is not None:
        item.image_reader.close()
        item.image_reader = None


def _copy_pinned(reader: sqlite3.Connection, dest: Path) -> int:
    """On a worker thread: back up the database ``reader``'s read transaction sees
    into ``dest``, then close ``reader`` (ending the transaction). Returns the size."""
    try:
        dest.unlink(missing_ok=True)
        target = sqlite3.connect(dest, isolation_level=None)
        try:
            # A scratch copy, streamed and then deleted: durability is the installer's.
            target.execute("PRAGMA synchronous = OFF")
            reader.backup(target)
        finally:
            target.close()
        return dest.stat().st_size
    except (sqlite3.Error, OSError) as exc:
        raise StorageError(f"copying the store to {dest} failed: {exc}") from exc
    finally:
        reader.close()


def image_meta(image: Path) -> dict[str, str]:
    """The ``ferry_meta`` rows of a copy made by ``SqliteStore.image_to`` (or received
    whole from another node's), read without changing it."""
    # immutable: no locks, no WAL or shared-memory files beside it (a copy has none).
    return _meta_rows(f"{image.resolve().as_uri()}?immutable=1", uri=True,
                      error=StoreFormatError, what=f"{image} is not a store")


def _meta_rows(target: str, *, uri: bool, error: type[StorageError],
               what: str) -> dict[str, str]:
    """Every ``ferry_meta`` row of the database ``target`` (a path, or a URI), read on a
    connection of its own; SQLite's errors become ``error("what: ...")``."""
    try:
        conn = sqlite3.connect(target, isolation_level=None, uri=uri)
    except sqlite3.Error as exc:
        raise error(f"{what}: {exc}") from exc
    try:
        rows = conn.execute("SELECT key, value FROM ferry_meta").fetchall()
    except sqlite3.Error as exc:
        raise error(f"{what}: {exc}") from exc
    finally:
        conn.close()
    return {str(k): str(v) for k, v in rows}


def install_image(path: Path, image: Path) -> None:
    """Replace the (closed) store at ``path`` with the copy ``image`` (made by
    ``SqliteStore.image_to``, and received whole), durably: the copy is fsynced, then
    renamed over the store. The old file's WAL and shared-memory files are removed
    first, or SQLite would replay the old WAL into the new file. A crash midway leaves
    the old store, or no store (then the replica starts empty and is sent a snapshot
    again), never a mix."""
    try:
        with image.open("rb") as f:
            header = f.read(16)
            if header != b"SQLite format 3\x00":
                raise StoreFormatError("a store image must be an SQLite database")
            os.fsync(f.fileno())
    except OSError as exc:
        raise StorageError(f"cannot install {image}: {exc}") from exc
    for suffix in ("-wal", "-shm"):
        stale = path.with_name(path.name + suffix)
        if stale.exists():
            stale.unlink()
    os.replace(image, path)
    _fsync_directory(path.parent)


def _refusal(failure: StorageError) -> StorageError:
    """A fresh exception per caller (a shared instance would collect every caller's
    traceback), of the same kind, chained to the SQLite error that broke the store."""
    refusal = type(failure)(str(failure))
    refusal.__cause__ = failure.__cause__
    return refusal


def _effects_in_order(batch: Iterable[_Pending]) -> Iterator[Effect]:
    for item in batch:
        yield from item.effects


def _read_body(cur: sqlite3.Cursor, key: tuple[str, str]) -> str | None:
    row = cur.execute(_SQL_BODY, key).fetchone()
    return None if row is None else str(row[0])

