"""The pure core (no clock, I/O or randomness of its own). Its modules are private; what
other packages use without reaching into them is exported here."""

from ferrymq._core._queue import EXPORT_LEASE_MS
from ferrymq._core._records import Export, QueueDirectory, RemoteQueue

__all__ = ["EXPORT_LEASE_MS", "Export", "QueueDirectory", "RemoteQueue"]
