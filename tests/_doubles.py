"""Test doubles shared by several test modules (``pythonpath`` in pyproject.toml puts
this folder on ``sys.path``)."""

from __future__ import annotations

from typing import Any

__all__ = ["CountingEntropy", "FillableStore"]


class CountingEntropy:
    """Deterministic ``Entropy``: UUID-shaped numbered ids and numbered tokens, so two
    runs (or two services fed the same requests) produce identical responses."""

    def __init__(self) -> None:
        self.n = 0

    def message_id(self) -> str:
        self.n += 1
        return f"00000000-0000-4000-8000-{self.n:012d}"

    def token(self) -> str:
        self.n += 1
        return f"token{self.n:020d}"


class FillableStore:
    """A ``MemoryStore`` whose disk can be made "full": while ``full``, ``commit``
    applies nothing and raises ``StorageFullError`` (as SQLite's SQLITE_FULL rollback
    does), ``has_room`` answers ``room`` and ``resume`` fails. The real disk-full path
    is covered end to end on a size-limited tmpfs (tests/e2e/test_disk_full.py); this
    double makes the service's reaction to each step deterministic."""

    def __init__(self) -> None:
        from ferrymq._storage import MemoryStore

        self.inner = MemoryStore()
        self.full = False
        self.room = True
        self.resumes = 0

    @property
    def stats(self) -> Any:
        return self.inner.stats

    def load(self) -> Any:
        return self.inner.load()

    async def commit(self, effects: Any, fetch_bodies: Any = ()) -> Any:
        from ferrymq._storage import StorageFullError

        if self.full:
            raise StorageFullError("database or disk is full")
        return await self.inner.commit(effects, fetch_bodies)

    async def barrier(self) -> None:
        from ferrymq._storage import StorageFullError

        if self.full:
            raise StorageFullError("database or disk is full")
        await self.inner.barrier()

    def has_room(self) -> bool:
        return self.room

    async def resume(self) -> None:
        from ferrymq._storage import StorageFullError

        self.resumes += 1
        if self.full or not self.room:
            raise StorageFullError("still full")

    async def close(self) -> None:
        await self.inner.close()
