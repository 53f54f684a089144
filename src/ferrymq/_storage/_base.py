"""The narrow interface every durable store implements, and its typed errors.

A store persists effect records (``ferrymq._core._effects``, which also says what each
means) and, at start-up, yields effects that rebuild the durable state in an empty
core. Everything an implementation must honour is stated on ``Store``;
``tests/storage/test_conformance.py`` checks it for every implementation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from ferrymq._core._effects import Effect

__all__ = [
    "StorageError",
    "StorageFullError",
    "Store",
    "StoreFormatError",
    "StoreInconsistentError",
    "StoreLockedError",
    "StoreStats",
    "WriteRefused",
]


class StorageError(Exception):
    """The store could not make effects durable, or refuses to because an earlier
    write failed. After it is raised by ``commit`` the store accepts no more commits:
    the in-memory state has diverged from disk and the process must not keep serving."""


class StorageFullError(StorageError):
    """A commit failed because the disk (or quota) is full. Nothing of the failed
    transaction reached the disk, so the durable state is exactly what was committed
    before it; ``resume`` makes the store writable again once there is room."""


class StoreFormatError(StorageError):
    """The file is not a Ferry store, or was written by a newer Ferry."""


class StoreInconsistentError(StoreFormatError):
    """The store's rows contradict each other (e.g. messages of a queue the store does
    not hold). The message says which rows; docs/operations.md says how to recover."""


class WriteRefused(Exception):
    """Not a storage failure: a replicated store does not take this write now (this node
    no longer leads, or too few replicas are in sync). The write is not acknowledged; it
    may still survive (the client retries, as after any 503). The shell keeps serving."""


class StoreLockedError(StorageError):
    """Another process has the store open: two writers would corrupt it."""


@dataclass(slots=True)
class StoreStats:
    """Counters for tests and metrics. ``commits`` counts ``commit`` calls made
    durable, ``transactions`` the disk transactions (fsyncs) that carried them, and
    ``effects`` the effect records written. ``transactions < commits`` is group commit
    at work."""

    commits: int = 0
    transactions: int = 0
    effects: int = 0


class Store(Protocol):
    """A durable home for effect records.

    A store holds exactly the durable state its effects define (``_effects.py``: the
    one statement of what each effect means, for the core and every store alike), and
    in these orders: messages, move tasks, queues and deletions in first-stored order
    (an upsert keeps its position), receive attempts oldest first (a re-recorded one
    becomes the newest). ``tests/storage/test_conformance.py`` checks every rule.

    Storage does not judge validity (the core does): effects naming a queue that does
    not exist are still applied to the message, dedup, attempt and mark tables.
    """

    @property
    def stats(self) -> StoreStats: ...

    def load(self) -> Iterator[Effect]:
        """Effects that, applied in order to an empty core, rebuild the durable state:
        ``QueueUpserted`` per live queue, ``QueueDeleted`` per remembered deletion,
        ``MoveTaskUpserted`` per task, ``HighWaterMarks`` per queue that has any,
        ``MessageStored`` per live message with its current state and body (per queue in
        first-stored order), ``DedupRecorded`` per entry, then ``ReceiveAttemptRecorded``
        per attempt (per queue oldest first, ``forgotten`` empty). Yielded one at a time,
        so a store larger than memory can be restored into a core that keeps only some
        bodies. Synchronous; called once at start-up before serving; consume it to the
        end."""
        ...

    async def commit(
        self, effects: Sequence[Effect], fetch_bodies: Sequence[tuple[str, str]] = ()
    ) -> list[str | None]:
        """Return once ``effects`` are durable. Calls are applied in call order, each
        call's effects in list order, and a call's effects are durable all or none.
        Raises ``StorageError`` if the write failed or an earlier one did, or the
        store is closed.

        ``fetch_bodies`` names messages as (queue, message id); the result holds their
        bodies in that order (None for a message that is not stored), read after this
        call's effects and every earlier call's, before any later call's: exactly the
        state the core had when it produced ``effects``. A call with fetches and no
        effects still takes its place in that order."""
        ...

    async def barrier(self) -> None:
        """Return once every commit called before this one is durable (in a replica
        set: committed). Raises as ``commit`` would. What a command that changed
        nothing waits for before it answers: its answer was computed from state that
        earlier commits made, and must not promise what a crash could still undo (a
        FIFO send answered from the deduplication record of a send not yet durable)."""
        ...

    def has_room(self) -> bool:
        """False when writes are expected to fail for lack of disk space (the free
        space fell under the store's low-water mark at its last transaction or
        ``resume``). The shell then refuses writes before the core applies them."""
        ...

    async def resume(self) -> None:
        """After a ``StorageFullError`` (or while ``has_room()`` is False), try to make
        the store writable again: wait until every commit already called has settled,
        then check that there is room and that a write succeeds. Returns once commits
        are accepted again; raises ``StorageFullError`` (or ``StorageError``) if not.
        A no-op on a healthy store."""
        ...

    async def close(self) -> None:
        """Make every commit already called durable, then release the file."""
        ...
