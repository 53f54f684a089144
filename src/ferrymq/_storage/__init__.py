"""Durable storage of effect records: the ``Store`` interface, its implementations
(SQLite for real use, memory for tests and dev mode) and the factory that picks one."""

from __future__ import annotations

from pathlib import Path

from ferrymq._storage._base import (
    DEDUP_PRUNE_MARGIN_MS,
    StorageError,
    Store,
    StoreFormatError,
    StoreStats,
)
from ferrymq._storage._memory import MemoryStore
from ferrymq._storage._sqlite import SqliteStore

__all__ = [
    "DEDUP_PRUNE_MARGIN_MS",
    "STORE_FILE_NAME",
    "MemoryStore",
    "SqliteStore",
    "StorageError",
    "Store",
    "StoreFormatError",
    "StoreStats",
    "open_store",
]

# The file name used when ``open_store`` is given a directory.
STORE_FILE_NAME = "ferrymq.sqlite3"


def open_store(kind: str, path: Path | None) -> Store:
    """Open a store. ``kind`` is ``"sqlite"`` (``path`` is the database file, or an
    existing directory to hold ``STORE_FILE_NAME``) or ``"memory"`` (``path`` ignored).
    Raises ``StorageError`` (``StoreFormatError`` for a file that is not a Ferry store
    or is too new) and ``ValueError`` for a bad ``kind``/missing path."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        if path is None:
            raise ValueError("the sqlite store needs a path")
        if path.is_dir():
            path = path / STORE_FILE_NAME
        return SqliteStore(path)
    raise ValueError(f"unknown storage kind {kind!r} (expected 'sqlite' or 'memory')")
