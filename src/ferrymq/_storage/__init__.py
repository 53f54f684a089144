"""Durable storage of effect records: the ``Store`` interface, its implementations
(SQLite for real use, memory for tests and dev mode) and the factory that picks one."""

from __future__ import annotations

from pathlib import Path

from ferrymq._storage._base import (
    StorageError,
    StorageFullError,
    Store,
    StoreFormatError,
    StoreInconsistentError,
    StoreLockedError,
    StoreStats,
    WriteRefused,
)
from ferrymq._storage._memory import MemoryStore
from ferrymq._storage._sqlite import FREE_BYTES_MIN_DEFAULT, SqliteStore

__all__ = [
    "FREE_BYTES_MIN_DEFAULT",
    "STORE_FILE_NAME",
    "MemoryStore",
    "SqliteStore",
    "StorageError",
    "StorageFullError",
    "Store",
    "StoreFormatError",
    "StoreInconsistentError",
    "StoreLockedError",
    "StoreStats",
    "WriteRefused",
    "open_store",
]

# The file name used when ``open_store`` is given a directory.
STORE_FILE_NAME = "ferrymq.sqlite3"


def open_store(kind: str, path: Path | None, *,
               free_bytes_min: int = FREE_BYTES_MIN_DEFAULT) -> Store:
    """Open a store. ``kind`` is ``"sqlite"`` (``path`` is the database file, or an
    existing directory to hold ``STORE_FILE_NAME``) or ``"memory"`` (``path`` ignored).
    ``free_bytes_min``: the sqlite store refuses writes when its filesystem has less
    free space. Raises ``StorageError`` (``StoreFormatError`` for a file that is not a
    Ferry store or is too new, ``StoreLockedError`` for a store another process has
    open) and ``ValueError`` for a bad ``kind``/missing path."""
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        if path is None:
            raise ValueError("the sqlite store needs a path")
        if path.is_dir():
            path = path / STORE_FILE_NAME
        return SqliteStore(path, free_bytes_min=free_bytes_min)
    raise ValueError(f"unknown storage kind {kind!r} (expected 'sqlite' or 'memory')")
