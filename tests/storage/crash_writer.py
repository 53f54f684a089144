"""Helper process for the crash test in test_sqlite.py: commits effects forever and
reports each commit id on stdout only after ``commit()`` returned for it.

Usage: crash_writer.py DB_PATH CONCURRENCY

Commit ``i`` (ids are taken in call order) stores messages ``c{i}-a`` and ``c{i}-b`` in
queue ``q{i % 3}``, marks ``c{i}-a`` received with token ``t{i}``, records dedup key
``k{i}``, and removes ``c{i-5}-b``. So after any crash the durable state must be
exactly that of commits ``0..P`` for some ``P``; the test checks it.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
from pathlib import Path

from ferrymq._core._effects import (
    DedupRecorded,
    Effect,
    MessageReceived,
    MessageRemoved,
    MessageStored,
)
from ferrymq._core._records import MessageRecord
from ferrymq._storage import open_store

__all__ = ["REMOVE_LAG", "commit_effects"]

REMOVE_LAG = 5
# Never outlive a test that forgot us: the crash test kills us within seconds.
_RUN_SECONDS_MAX = 30.0


def _message(queue: str, message_id: str) -> MessageRecord:
    return MessageRecord(
        queue=queue, message_id=message_id, body=f"body {message_id} \U0001F600\r\n",
        attributes=(), md5_of_body="0" * 32, md5_of_attributes=None, sent_ms=1,
        visible_at_ms=1, receive_count=0, first_receive_ms=None, receipt_token=None,
        sender_id="crash",
    )


def commit_effects(i: int) -> list[Effect]:
    queue = f"q{i % 3}"
    effects: list[Effect] = [
        MessageStored(_message(queue, f"c{i}-a")),
        MessageStored(_message(queue, f"c{i}-b")),
        MessageReceived(queue, f"c{i}-a", f"t{i}", 2, 1, 2, 2),
        DedupRecorded(queue, f"k{i}", f"c{i}-a", i, 10**12),
    ]
    if i >= REMOVE_LAG:
        j = i - REMOVE_LAG
        effects.append(MessageRemoved(f"q{j % 3}", f"c{j}-b"))
    return effects


async def main(db_path: Path, concurrency: int) -> None:
    store = open_store("sqlite", db_path)
    ids = itertools.count()
    deadline = time.monotonic() + _RUN_SECONDS_MAX

    async def worker() -> None:
        while time.monotonic() < deadline:
            i = next(ids)  # taken right before the call: ids are in call order
            await store.commit(commit_effects(i))
            sys.stdout.write(f"ACK {i}\n")
            sys.stdout.flush()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await store.close()


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
