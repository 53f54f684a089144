"""Leader election on any ``Coordinator``: one key, held by whoever created it.

What belongs here: the election protocol itself, written once against the Coordinator
interface so that etcd and the in-process implementation share it (and the contract
suite tests it on both). A campaign is a create-only transaction of the key attached to
the campaigner's lease; the holder keeps it for as long as its lease lives; resigning
deletes it only if it is still the holder's own write. The revision at which the key
was created is the term's identity: it only grows, so it doubles as a fencing token
(an epoch) for whatever the holder does while it leads.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferrymq._coordination._types import (
    Coordinator,
    Delete,
    EventKind,
    KeyValue,
    Lease,
    Put,
)
from ferrymq._core._errors import InternalError

__all__ = ["Election", "Leadership"]


@dataclass(frozen=True, slots=True)
class Leadership:
    """Proof of having won: the key, the value written, the lease it hangs on, and the
    revision that created it (the term; strictly larger for every later winner)."""

    key: bytes
    value: bytes
    lease: Lease
    revision: int


class Election:
    """Campaign for, observe and resign one election key."""

    def __init__(self, coordinator: Coordinator, key: bytes) -> None:
        self._coordinator = coordinator
        self.key = key

    async def campaign(self, value: bytes, lease: Lease) -> Leadership | None:
        """Take the key if nobody holds it: the leadership, or None if someone does."""
        lease.check()
        result = await self._coordinator.transact({self.key: 0}, [Put(self.key, value, lease)])
        if not result.succeeded:
            return None
        return Leadership(self.key, value, lease, result.revision)

    async def holder(self) -> KeyValue | None:
        """The current holder's key (value, lease, ``create_revision`` = its term), or
        None when the seat is empty."""
        return await self._coordinator.get(self.key)

    async def resign(self, leadership: Leadership) -> bool:
        """Give the seat up if it is still ours; False if it was already lost."""
        result = await self._coordinator.transact(
            {self.key: leadership.revision}, [Delete(self.key)])
        return result.succeeded

    async def wait_vacant(self) -> int:
        """Return once the seat is empty (at once if it is): the revision at which it
        was seen empty, to campaign right after. Raises what the watch raises."""
        current = await self._coordinator.get_prefix(self.key)
        if not any(kv.key == self.key for kv in current.items):
            return current.revision
        stream = self._coordinator.watch_prefix(self.key, start_revision=current.revision + 1)
        try:
            async for event in stream:
                if event.key == self.key and event.kind is EventKind.DELETE:
                    return event.revision
        finally:
            await stream.aclose()
        # A stream ends only when closed, which nothing here does.
        raise InternalError("a watch stream ended by itself")
