"""The Coordinator seam: its protocol, the values that cross it, and its typed errors.

What belongs here: everything both implementations (``EtcdCoordinator`` on real etcd,
``LocalCoordinator`` in process) must agree on, and nothing that depends on either.
The semantics are etcd's v3 data model, stated once here so the in-process one can be
held to them by the contract suite (tests/coordination/test_contract.py):

- One store-wide *revision* counts every change. A write that changes nothing (deleting
  an absent key, a transaction whose writes are all such deletes) does not bump it.
- Every key has ``create_revision`` and ``mod_revision``; an absent key's mod revision
  is 0, which is what a compare-and-swap compares against to mean "create only".
- A lease has a TTL in whole seconds (raised to the implementation's minimum) and
  deletes its keys when it expires or is revoked, all in one revision.
- A watch yields every change under a prefix in revision order, from a start revision
  that may lie in the past, unless that history was compacted.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = [
    "Compacted",
    "CoordinationError",
    "Coordinator",
    "CoordinatorUnavailable",
    "Delete",
    "Event",
    "EventKind",
    "KeyValue",
    "Lease",
    "LeaseLost",
    "Op",
    "Put",
    "Snapshot",
    "TxnResult",
    "WatchStream",
    "check_ops",
    "prefix_range_end",
]


class CoordinationError(Exception):
    """Base of the errors the coordination layer raises."""


class CoordinatorUnavailable(CoordinationError):
    """No answer from a quorum within the deadline (etcd down, no leader, partition).

    For a write this means *outcome unknown*: the write may have been applied. Callers
    that must know re-read (a compare-and-swap retried against the value it read is
    safe: if the first attempt applied, the retry fails its compare)."""


class LeaseLost(CoordinationError):
    """The lease expired, was revoked, or could not be kept alive for its TTL; keys
    attached to it are (or will shortly be) gone. Holding a lease that is lost means
    holding nothing: stop acting on anything it protected."""


class Compacted(CoordinationError):
    """A watch asked for history older than the store keeps. ``compact_revision`` is
    the oldest revision still available: re-read the prefix (``get_prefix``) and watch
    again from the snapshot's revision + 1."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"history before revision {compact_revision} was compacted")
        self.compact_revision = compact_revision


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    # How many times the key was written since its creation (1 on create).
    version: int
    # The lease the key is attached to, 0 for none.
    lease_id: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The keys under a prefix, in key order, as of store revision ``revision``."""

    items: tuple[KeyValue, ...]
    revision: int


class EventKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class Event:
    """One change. ``revision`` is the store revision that made it (several events of
    one transaction share it); a DELETE has an empty value and ``create_revision`` 0."""

    kind: EventKind
    key: bytes
    value: bytes
    revision: int
    create_revision: int
    lease_id: int


@dataclass(frozen=True, slots=True)
class TxnResult:
    """``succeeded``: every compare held and the writes were applied at ``revision``.
    Otherwise nothing was written and ``revision`` is the store's current revision."""

    succeeded: bool
    revision: int


class Lease:
    """A granted lease: its id, the TTL the store granted (``ttl_s``, possibly raised to
    the minimum), and whether it is still held.

    The implementation that granted it keeps it alive in the background until it is
    revoked or lost. ``lost`` turns True, and ``wait_lost()`` returns the reason, as soon
    as the holder can no longer be sure the store still has it: on an explicit expiry
    answer, on a revoke, or when no keep-alive was acknowledged for a whole TTL counted
    from when that keep-alive was *sent* (so the holder always gives up no later than
    the store expires it).
    """

    __slots__ = ("_lost", "_reason", "id", "ttl_s")

    def __init__(self, lease_id: int, ttl_s: int) -> None:
        self.id = lease_id
        self.ttl_s = ttl_s
        self._lost = asyncio.Event()
        self._reason: LeaseLost | None = None

    @property
    def lost(self) -> bool:
        return self._lost.is_set()

    async def wait_lost(self) -> LeaseLost:
        await self._lost.wait()
        reason = self._reason
        return reason if reason is not None else LeaseLost(f"lease {self.id:x} lost")

    def check(self) -> None:
        """Raise ``LeaseLost`` if the lease is lost."""
        if self._reason is not None:
            raise self._reason

    def _mark_lost(self, why: str) -> None:
        if self._reason is None:
            self._reason = LeaseLost(f"lease {self.id:x}: {why}")
            self._lost.set()

    def __repr__(self) -> str:
        return f"Lease(id={self.id:#x}, ttl_s={self.ttl_s}, lost={self.lost})"


@dataclass(frozen=True, slots=True)
class Put:
    key: bytes
    value: bytes
    lease: Lease | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    key: bytes


Op = Put | Delete


@runtime_checkable
class WatchStream(Protocol):
    """An ordered stream of events: ``async for event in stream``; ``aclose()`` ends it.

    A broken connection is repaired inside the stream, resuming after
    ``last_revision``, so no event is missed or repeated. When it cannot be repaired
    within the implementation's bound the iteration raises ``CoordinatorUnavailable``;
    a new watch from ``last_revision + 1`` continues exactly where this one stopped.
    Iteration raises ``Compacted`` if the history it needs is gone."""

    @property
    def last_revision(self) -> int:
        """The revision of the last event yielded (start revision - 1 before any)."""
        ...

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def __anext__(self) -> Event: ...

    async def aclose(self) -> None: ...


class Coordinator(Protocol):
    """The one way Ferry reaches its consensus store. Keys and values are bytes.

    Every method raises ``CoordinatorUnavailable`` rather than wait past the
    implementation's deadline; a write with a lost lease raises ``LeaseLost``.
    """

    async def get(self, key: bytes) -> KeyValue | None:
        """The key's current value and revisions, or None if absent (linearizable)."""
        ...

    async def get_prefix(self, prefix: bytes) -> Snapshot:
        """Every key starting with ``prefix`` (all keys for ``b""``), in key order."""
        ...

    async def put(self, key: bytes, value: bytes, *, lease: Lease | None = None) -> int:
        """Write unconditionally; the store revision of the write."""
        ...

    async def delete(self, key: bytes) -> int:
        """Delete unconditionally; the store revision after it."""
        ...

    async def transact(self, compare: Mapping[bytes, int], ops: Sequence[Op]) -> TxnResult:
        """Apply ``ops`` atomically iff every key in ``compare`` has exactly that
        ``mod_revision`` (0 = the key is absent)."""
        ...

    async def grant_lease(self, ttl_s: int) -> Lease:
        """A new lease, kept alive in the background until revoked or lost."""
        ...

    async def revoke_lease(self, lease: Lease) -> None:
        """End the lease now; its keys are deleted in one revision."""
        ...

    def watch_prefix(self, prefix: bytes, *, start_revision: int) -> WatchStream:
        """Every change under ``prefix`` from ``start_revision`` (inclusive) on."""
        ...

    async def close(self, *, revoke_leases: bool = True) -> None:
        """Stop keep-alives and watches and disconnect. ``revoke_leases=False`` leaves
        this client's leases to expire by TTL, which is what a crash does."""
        ...


def prefix_range_end(prefix: bytes) -> bytes:
    """The exclusive end of the key range holding every key that starts with
    ``prefix`` (etcd's convention: ``b"\\0"`` means "to the end" for the empty prefix)."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def check_ops(ops: Sequence[Op]) -> None:
    """What both implementations refuse before sending a write: a key written twice
    in one transaction (etcd rejects it too) and a lease already known to be lost."""
    seen: set[bytes] = set()
    for op in ops:
        if op.key in seen:
            raise ValueError(f"key {op.key!r} is written twice in one transaction")
        seen.add(op.key)
        if isinstance(op, Put) and op.lease is not None:
            op.lease.check()
