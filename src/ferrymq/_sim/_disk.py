"""A simulated disk for the real ``ReplicatedStore``: its files are in-memory stores
(``MemoryStore``, the conformance-tested twin of the SQLite store) plus the
``ferry_meta`` rows, and what a crash keeps of them is exactly what was fsynced.

What belongs here: ``SimDisk`` (one node's disk: the durable contents of each file,
which outlive the node's incarnations) and ``SimDiskStore`` (a store opened on one of
its files, with the SQLite store's ``InnerStore`` methods). A commit is durable once
its fsync completes, a seeded number of virtual milliseconds later; commits issued
while an fsync is in flight share the next one (group commit), in call order. The
fsync's completion is a callback of the node that issued it, so when the node is
killed (``Actor.kill``) every write it had not fsynced is simply never applied: power
loss. Every durable write is checked: the promised epoch never goes backwards.
"""

from __future__ import annotations

import asyncio
import pickle
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ferrymq._core._effects import Effect
from ferrymq._core._errors import InternalError
from ferrymq._storage import MemoryStore, StorageError, StoreStats

__all__ = ["SimDisk", "SimDiskStore"]

_FENCE_KEY = "repl.fence_epoch"
# What one fsync takes, in virtual ms (uniform): an SSD's flush is 0.1-10 ms.
FSYNC_MS = (1, 8)


@dataclass
class _File:
    store: MemoryStore = field(default_factory=MemoryStore)
    meta: dict[str, str] = field(default_factory=dict)


@dataclass
class _Write:
    parts: Sequence[tuple[Sequence[Effect], Sequence[tuple[str, str]]]]
    meta: Mapping[str, str] | None
    # The parts' bodies, or the image for an image request (a pickle of the effects
    # that rebuild the store and its meta rows).
    done: asyncio.Future[Any]
    image: bool = False


class SimDisk:
    """One node's disk. ``fail`` is told of a durable write that breaks a rule."""

    def __init__(self, node: str, rng: random.Random, clock_ms: Callable[[], int],
                 fail: Callable[[str], None]) -> None:
        self.node = node
        self._rng = rng
        self._clock_ms = clock_ms
        self._fail = fail
        self.files: dict[str, _File] = {}
        self.fence_epochs: dict[str, int] = {}  # the highest ever made durable, per file
        # Staged snapshots (``ReplicaDisk``'s images), by path: kept across a crash like
        # files, as a real disk keeps them until the store's next opening removes them.
        self.images: dict[str, bytearray] = {}

    # -- ReplicaDisk ---------------------------------------------------------------------

    def open(self, path: Path, *, free_bytes_min: int,
             power_loss_seam: bool) -> SimDiskStore:
        del free_bytes_min, power_loss_seam
        for stale in [k for k in self.images if k.startswith(f"{path}.snapshot-")]:
            del self.images[stale]
        return SimDiskStore(self, str(path))

    def stage(self, staged: Path, size_bytes: int, free_bytes_min: int) -> None:
        del size_bytes, free_bytes_min  # a full disk is the single node's tests' business
        self.images[str(staged)] = bytearray()

    def append_image(self, staged: Path, data: bytes) -> None:
        self.images[str(staged)] += data

    def read_image(self, staged: Path, offset: int, size: int) -> bytes:
        return bytes(self.images[str(staged)][offset:offset + size])

    def image_meta(self, staged: Path) -> dict[str, str]:
        _, meta = pickle.loads(self.images[str(staged)])  # noqa: S301 - our own image
        return dict(meta)

    def install_image(self, path: Path, staged: Path) -> None:
        image = self.images.pop(str(staged))
        effects, meta = pickle.loads(image)  # noqa: S301 - our own image, in process
        file = _File()
        file.store.commit_now(effects)
        file.meta = dict(meta)
        self._check_fence(str(path), file.meta)
        self.files[str(path)] = file

    def discard_image(self, staged: Path) -> None:
        self.images.pop(str(staged), None)

    # -- for the simulation ----------------------------------------------------------

    def file(self, path: str) -> _File:
        return self.files.setdefault(path, _File())

    def fsync_ms(self) -> int:
        return self._rng.randint(*FSYNC_MS)

    def now_ms(self) -> int:
        return self._clock_ms()

    def _check_fence(self, path: str, meta: Mapping[str, str]) -> None:
        fence = int(meta.get(_FENCE_KEY, 0))
        held = self.fence_epochs.get(path, 0)
        if fence < held:
            self._fail(f"{self.node}'s promised epoch went back from {held} to {fence} "
                       f"in {path}")
        self.fence_epochs[path] = max(held, fence)


class SimDiskStore:
    """A store on one file of a ``SimDisk`` (see the module docstring)."""

    def __init__(self, disk: SimDisk, path: str) -> None:
        self._disk = disk
        self._path = path
        self._file = disk.file(path)
        self._queued: list[_Write] = []
        self._syncing = False
        self._closed = False
        self.stats = StoreStats()

    def read_meta(self, prefix: str) -> dict[str, str]:
        return {k: v for k, v in self._file.meta.items() if k.startswith(prefix)}

    def load(self) -> Iterator[Effect]:
        return self._file.store.load()

    def has_room(self) -> bool:
        return True  # a full disk is the single node's tests' business

    async def resume(self) -> None:
        pass

    async def close(self) -> None:
        self._closed = True

    async def image_to(self, dest: Path) -> int:
        image = await self._enqueue((), None, image=True)
        if not isinstance(image, bytes):
            raise InternalError(f"an image came back as {type(image).__name__}")
        self._disk.images[str(dest)] = bytearray(image)
        return len(image)

    async def commit(self, effects: Sequence[Effect],
                     fetch_bodies: Sequence[tuple[str, str]] = (), *,
                     meta: Mapping[str, str] | None = None) -> list[str | None]:
        return (await self.commit_parts([(effects, fetch_bodies)], meta=meta))[0]

    async def commit_parts(
        self, parts: Sequence[tuple[Sequence[Effect], Sequence[tuple[str, str]]]], *,
        meta: Mapping[str, str] | None = None) -> list[list[str | None]]:
        bodies: list[list[str | None]] = await self._enqueue(parts, meta)
        return bodies

    def submit_parts(
        self, parts: Sequence[tuple[Sequence[Effect], Sequence[tuple[str, str]]]], *,
        meta: Mapping[str, str] | None = None,
    ) -> tuple[asyncio.Future[Any], Callable[[], list[list[str | None]]]]:
        """As ``SqliteStore.submit_parts``: queued now, durable when the future is."""
        write = self._submit(parts, meta)
        return write.done, write.done.result

    def _submit(self, parts: Sequence[tuple[Sequence[Effect], Sequence[tuple[str, str]]]],
                meta: Mapping[str, str] | None, *, image: bool = False) -> _Write:
        if self._closed:
            raise StorageError("the store is closed")
        loop = asyncio.get_running_loop()
        write = _Write(parts, meta, loop.create_future(), image)
        self._queued.append(write)
        if not self._syncing:
            self._sync()
        return write

    async def _enqueue(self, parts: Sequence[tuple[Sequence[Effect],
                                                   Sequence[tuple[str, str]]]],
                       meta: Mapping[str, str] | None, *, image: bool = False) -> Any:
        write = self._submit(parts, meta, image=image)
        # Shielded like the SQLite store's: a cancelled caller's write still lands.
        return await asyncio.shield(write.done)

    def _sync(self) -> None:
        batch, self._queued = self._queued, []
        self._syncing = True
        # Scheduled from the node's own task, so it runs only if the node lives on.
        asyncio.get_running_loop().call_later(self._disk.fsync_ms() / 1000,
                                              self._synced, batch)

    def _synced(self, batch: list[_Write]) -> None:
        self._syncing = False
        if self._disk.files.get(self._path) is not self._file:
            # A snapshot was installed over this file meanwhile: these writes were for
            # the store it replaced, which is closed.
            for write in batch:
                if not write.done.done():
                    write.done.set_exception(StorageError("the store was replaced"))
        else:
            for write in batch:
                self._apply(write)
        if self._queued:
            self._sync()

    def _apply(self, write: _Write) -> None:
        store = self._file.store
        if write.image:
            write.done.set_result(pickle.dumps((list(store.load()), dict(self._file.meta))))
            return
        results: list[list[str | None]] = []
        for effects, fetches in write.parts:
            results.append(store.commit_now(effects, fetches))
            self.stats.commits += 1
            self.stats.effects += len(effects)
        if write.meta:
            merged = {**self._file.meta, **write.meta}
            self._disk._check_fence(self._path, merged)
            self._file.meta = merged
        self.stats.transactions += 1
        if not write.done.done():
            write.done.set_result(results)
