"""The power-loss seam (``SqliteStore(power_loss_seam=True)`` and
``simulate_power_loss``) that the cluster's power-loss test relies on: it must drop what
was written but not fsynced, and keep every commit the store acknowledged."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from ferrymq._core._effects import QueueUpserted
from ferrymq._core._records import QueueRecord
from ferrymq._storage._sqlite import SqliteStore, simulate_power_loss


def _queue(name: str) -> QueueUpserted:
    return QueueUpserted(QueueRecord(name, (), (), 1, 1, None))


def _names(path: Path) -> list[str]:
    store = SqliteStore(path, power_loss_seam=True)
    try:
        return [e.record.name for e in store.load() if isinstance(e, QueueUpserted)]
    finally:
        asyncio.run(store.close())


# Run in a child that is then killed: commits three queues through the store, writes a
# fourth straight into the WAL without an fsync (synchronous=OFF: what a transaction cut
# off before its fsync leaves in the page cache), says so and waits to be killed.
_CHILD = """
import asyncio, sqlite3, sys, time
from pathlib import Path
from ferrymq._core._effects import QueueUpserted
from ferrymq._core._records import QueueRecord
from ferrymq._storage._sqlite import SqliteStore

async def main(path):
    store = SqliteStore(path, power_loss_seam=True)
    for name in ("a", "b", "c"):
        await store.commit([QueueUpserted(QueueRecord(name, (), (), 1, 1, None))])
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA synchronous = OFF")
    raw.execute("INSERT INTO queues VALUES ('unsynced', '[]', '[]', 1, 1, NULL)")
    print("ready", flush=True)
    time.sleep(60)

asyncio.run(main(Path(sys.argv[1])))
"""


def test_acknowledged_commits_survive_and_unsynced_writes_do_not(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
    finally:
        child.kill()  # SIGKILL: nothing is flushed or closed
        child.wait()
        if child.stdout is not None:
            child.stdout.close()
    # (Opening the file now would see the unsynced row, and closing it would checkpoint
    # it: a power cut leaves no such chance.)
    assert simulate_power_loss(path) > 0
    assert _names(path) == ["a", "b", "c"]


def test_without_unsynced_bytes_nothing_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite3"

    async def write() -> None:
        store = SqliteStore(path, power_loss_seam=True)
        await store.commit([_queue("a")])
        await store.close()

    asyncio.run(write())
    assert simulate_power_loss(path) == 0
    assert _names(path) == ["a"]
