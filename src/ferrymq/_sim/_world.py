"""The simulated world: one seeded random source, a virtual clock with an event queue,
a network that delays, drops, duplicates, reorders and partitions, disks that lose what
was not fsynced when their node crashes, and a coordinator with etcd's contract for
what the protocol uses (revisions and compare-and-swap, node leases that expire).

Everything is driven from ``World.run``: no threads, no real time, no real I/O. Given
the same seed, a run makes the same choices in the same order, so a failing seed
replays exactly.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ferrymq._core._errors import InternalError

__all__ = ["Coordinator", "Disk", "Network", "World"]


class World:
    """The clock, the event queue and the random source every simulated part shares."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.now_ms = 0
        self._events: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()
        self.trace: list[str] = []  # the newest lines of what happened, for a failure
        # A digest of every line ever logged: two runs of a seed must agree on it.
        self._digest = hashlib.sha256()

    def at(self, delay_ms: int, callback: Callable[[], None]) -> None:
        if delay_ms < 0:
            raise InternalError(f"an event {delay_ms} ms in the past")
        heapq.heappush(self._events, (self.now_ms + delay_ms, next(self._order), callback))

    def log(self, text: str) -> None:
        line = f"{self.now_ms:>7} ms  {text}"
        self._digest.update(line.encode())
        self.trace.append(line)
        if len(self.trace) > 400:  # the tail is what explains a failure
            del self.trace[:100]

    def digest(self) -> str:
        return self._digest.hexdigest()[:16]

    def run(self, until_ms: int) -> None:
        """Run events in time order until ``until_ms`` (or no event is left)."""
        while self._events and self._events[0][0] <= until_ms:
            time_ms, _, callback = heapq.heappop(self._events)
            self.now_ms = time_ms
            callback()
        self.now_ms = max(self.now_ms, until_ms)


@dataclass
class Network:
    """Message delivery between named nodes. A message takes ``delay_ms`` (uniform in
    the range), may be dropped or duplicated, and, because each copy draws its own
    delay, may overtake others. ``cut`` blocks pairs in both directions; a message to
    or from a node that is down, or across a cut at delivery time, is lost."""

    world: World
    delay_ms: tuple[int, int] = (1, 20)
    drop_rate: float = 0.0
    duplicate_rate: float = 0.0
    cut: set[frozenset[str]] = field(default_factory=set)
    deliver: Callable[[str, str, Any], None] | None = None
    up: Callable[[str], bool] = lambda node: True

    def reachable(self, a: str, b: str) -> bool:
        return a == b or frozenset((a, b)) not in self.cut

    def send(self, src: str, dst: str, message: Any) -> None:
        rng = self.world.rng
        if not self.reachable(src, dst) or rng.random() < self.drop_rate:
            return
        copies = 2 if rng.random() < self.duplicate_rate else 1
        for _ in range(copies):
            delay = rng.randint(*self.delay_ms)
            self.world.at(delay, lambda: self._arrive(src, dst, message))

    def _arrive(self, src: str, dst: str, message: Any) -> None:
        if self.deliver is None or not self.reachable(src, dst):
            return
        if not (self.up(src) or src == "controller") or not self.up(dst):
            return
        self.deliver(src, dst, message)

    def isolate(self, node: str, others: list[str]) -> None:
        for other in others:
            if other != node:
                self.cut.add(frozenset((node, other)))

    def heal(self) -> None:
        self.cut.clear()


@dataclass
class Disk:
    """A node's disk: ``durable`` survives a crash; writes are durable only once their
    fsync completes (``fsync_ms`` later, in order). A crash forgets every write whose
    fsync had not completed: what ``kill -9`` plus power loss does."""

    world: World
    fsync_ms: tuple[int, int] = (1, 8)
    durable: dict[str, Any] = field(default_factory=dict)
    _pending: int = 0
    _epoch: int = 0  # bumped by a crash: completions of older writes are void
    _busy_until_ms: int = 0

    def write(self, apply: Callable[[dict[str, Any]], None],
              done: Callable[[], None]) -> None:
        """Apply ``apply`` to the durable state at fsync time, then call ``done``."""
        epoch = self._epoch
        start = max(self.world.now_ms, self._busy_until_ms)
        finish = start + self.world.rng.randint(*self.fsync_ms)
        self._busy_until_ms = finish  # one fsync at a time, in order
        self._pending += 1

        def complete() -> None:
            if epoch != self._epoch:
                return  # the node crashed before this write was durable
            self._pending -= 1
            apply(self.durable)
            done()

        self.world.at(finish - self.world.now_ms, complete)

    def crash(self) -> None:
        self._epoch += 1
        self._pending = 0
        self._busy_until_ms = self.world.now_ms


@dataclass
class Coordinator:
    """What the replication protocol asks of etcd: node leases that expire, and
    per-key values with a revision that a compare-and-swap checks. A node that cannot
    reach the coordinator (``reachable``) cannot renew its lease or write."""

    world: World
    lease_ttl_ms: int = 2_000
    revision: int = 0
    values: dict[str, tuple[Any, int]] = field(default_factory=dict)  # key -> (value, rev)
    leases: dict[str, int] = field(default_factory=dict)  # node -> expiry (ms)
    reachable: Callable[[str], bool] = lambda node: True
    watchers: list[Callable[[str, Any], None]] = field(default_factory=list)

    def renew(self, node: str) -> bool:
        if not self.reachable(node):
            return False
        self.leases[node] = self.world.now_ms + self.lease_ttl_ms
        return True

    def alive(self) -> set[str]:
        now = self.world.now_ms
        return {n for n, expiry in self.leases.items() if expiry > now}

    def get(self, key: str) -> tuple[Any, int]:
        return self.values.get(key, (None, 0))

    def cas(self, who: str, key: str, expected_revision: int, value: Any) -> bool:
        if not self.reachable(who):
            return False
        _, current = self.values.get(key, (None, 0))
        if current != expected_revision:
            return False
        self.revision += 1
        self.values[key] = (value, self.revision)
        for watcher in list(self.watchers):
            watcher(key, value)
        return True
