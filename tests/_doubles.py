"""Test doubles shared by several test modules (``pythonpath`` in pyproject.toml puts
this folder on ``sys.path``)."""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CountingEntropy", "FillableStore", "HeldStore", "PassingStore"]


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


class PassingStore:
    """A store in front of ``inner`` that passes every call on: a double derived from
    it changes only what it is for."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    @property
    def stats(self) -> Any:
        return self.inner.stats

    def load(self) -> Any:
        return self.inner.load()

    async def commit(self, effects: Any, fetch_bodies: Any = ()) -> Any:
        return await self.inner.commit(effects, fetch_bodies)

    async def barrier(self) -> None:
        await self.inner.barrier()

    def has_room(self) -> bool:
        return self.inner.has_room()

    async def resume(self) -> None:
        await self.inner.resume()

    async def close(self) -> None:
        await self.inner.close()


class FillableStore(PassingStore):
    """A ``MemoryStore`` whose disk can be made "full": while ``full``, ``commit``
    applies nothing and raises ``StorageFullError`` (as SQLite's SQLITE_FULL rollback
    does), ``has_room`` answers ``room`` and ``resume`` fails. The real disk-full path
    is covered end to end on a size-limited tmpfs (tests/e2e/test_disk_full.py); this
    double makes the service's reaction to each step deterministic."""

    def __init__(self) -> None:
        from ferrymq._storage import MemoryStore

        super().__init__(MemoryStore())
        self.full = False
        self.room = True
        self.resumes = 0

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


class HeldStore(PassingStore):
    """A ``MemoryStore`` whose commits can be held (clear ``released``): a held commit,
    and a barrier behind it, return only once ``released`` is set again, as behind a
    slow fsync."""

    def __init__(self) -> None:
        from ferrymq._storage import MemoryStore

        super().__init__(MemoryStore())
        self.released = asyncio.Event()
        self.released.set()
        self._last: asyncio.Future[Any] | None = None

    async def commit(self, effects: Any, fetch_bodies: Any = ()) -> Any:
        async def held() -> Any:
            await self.released.wait()
            return await self.inner.commit(effects, fetch_bodies)

        # Commits are settled in order, as a real store's are: each waits for the one
        # before it.
        self._last = asyncio.ensure_future(held())
        return await self._last

    async def barrier(self) -> None:
        if self._last is not None:
            await asyncio.wait([self._last])
