"""The contract suite's view of an implementation: clients, time and faults.

A ``Harness`` gives a test new clients of one implementation, lets time pass (real
sleeps for etcd, virtual time for the local store) and injects the faults the contract
covers: connections dropped, the whole store stopped. ``run`` executes a test body on
a fresh event loop with a hard time bound, so no test can hang.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from ferrymq._coordination import (
    ETCD_INSTALL_HINT,
    Coordinator,
    EtcdCluster,
    EtcdCoordinator,
    LocalCoordinationServer,
    ManualClock,
    etcd_binary,
)

__all__ = [
    "ELECTION_TIMEOUT_MS",
    "EtcdHarness",
    "Harness",
    "LocalHarness",
    "new_cluster",
    "require_etcd",
    "run",
]

# Raft timings of the test etcd: 50 ms heartbeats, 500 ms election timeout.
HEARTBEAT_MS = 50
ELECTION_TIMEOUT_MS = 500
# Deadlines of the test clients: short, so "etcd is down" fails within seconds.
REQUEST_TIMEOUT_MS = 2_000
WATCH_RECONNECT_MS = 3_000
# No test may take longer than this on the event loop, whatever it waits for.
TEST_BODY_TIMEOUT_S = 40.0


def require_etcd() -> str:
    binary = etcd_binary()
    if binary is None:
        pytest.skip(ETCD_INSTALL_HINT)
    return binary


def new_cluster(base: Path, size: int = 1) -> EtcdCluster:
    require_etcd()
    cluster = EtcdCluster(base, size, heartbeat_ms=HEARTBEAT_MS,
                          election_timeout_ms=ELECTION_TIMEOUT_MS)
    cluster.start()
    return cluster


class Harness:
    """What a contract test needs from an implementation, beyond the Coordinator:
    new clients, the passage of time, and the faults it injects."""

    name: str
    # The shortest lease the store grants.
    min_ttl_s: int
    # How long a call may take to give up when the store is gone, and a watch.
    unavailable_within_s: float
    watch_unavailable_within_s: float

    def __init__(self) -> None:
        self.clients: list[Coordinator] = []
        self.server_down = False

    async def client(self) -> Coordinator:
        raise NotImplementedError

    async def pass_time(self, ms: int) -> None:
        raise NotImplementedError

    async def eventually(self, check: Callable[[], Awaitable[bool]], within_ms: int,
                         what: str) -> int:
        """Let time pass until ``check()`` holds; the (virtual or real) ms it took."""
        step_ms = 50
        waited = 0
        while not await check():
            if waited >= within_ms:
                raise AssertionError(f"{self.name}: {what} not within {within_ms} ms")
            await self.pass_time(step_ms)
            waited += step_ms
        return waited

    async def compact(self, revision: int) -> None:
        raise NotImplementedError

    async def drop_connections(self) -> None:
        raise NotImplementedError

    async def stop_server(self) -> None:
        raise NotImplementedError

    async def close_all(self) -> None:
        for client in self.clients:
            await client.close(revoke_leases=not self.server_down)


class LocalHarness(Harness):
    name = "local"
    min_ttl_s = 1
    unavailable_within_s = 0.5
    watch_unavailable_within_s = 0.5

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(start_ms=1_000_000)
        self.server = LocalCoordinationServer(self.clock, min_lease_ttl_s=self.min_ttl_s)

    async def client(self) -> Coordinator:
        client = self.server.connect()
        self.clients.append(client)
        return client

    async def pass_time(self, ms: int) -> None:
        await self.clock.advance_settled(ms, step_ms=50)

    async def compact(self, revision: int) -> None:
        self.server.compact(revision)

    async def drop_connections(self) -> None:
        self.server.drop_connections()

    async def stop_server(self) -> None:
        self.server_down = True
        self.server.stop()


class EtcdHarness(Harness):
    name = "etcd"
    min_ttl_s = 1
    # The request deadline plus scheduling slack on a loaded 2-core machine.
    unavailable_within_s = REQUEST_TIMEOUT_MS / 1000 + 1.5
    watch_unavailable_within_s = WATCH_RECONNECT_MS / 1000 + 1.5

    def __init__(self, cluster: EtcdCluster, *, own_cluster: bool) -> None:
        super().__init__()
        self.cluster = cluster
        self.own_cluster = own_cluster

    async def client(self) -> Coordinator:
        client = await EtcdCoordinator.connect(
            self.cluster.endpoints, request_timeout_ms=REQUEST_TIMEOUT_MS,
            watch_reconnect_ms=WATCH_RECONNECT_MS)
        self.clients.append(client)
        return client

    async def pass_time(self, ms: int) -> None:
        await asyncio.sleep(ms / 1000)

    async def compact(self, revision: int) -> None:
        first = self.clients[0]
        if not isinstance(first, EtcdCoordinator):
            raise TypeError(first)
        await first.compact(revision)

    async def drop_connections(self) -> None:
        # A crash and a restart of the member: every stream to it breaks for real.
        if not self.own_cluster:
            raise RuntimeError("drop_connections needs a cluster of the test's own")
        name = self.cluster.members[0].name
        await asyncio.to_thread(self.cluster.stop_member, name, kill=True)
        await asyncio.to_thread(self.cluster.start_member, name)

    async def stop_server(self) -> None:
        if not self.own_cluster:
            raise RuntimeError("stop_server needs a cluster of the test's own")
        self.server_down = True
        for name in self.cluster.running():
            await asyncio.to_thread(self.cluster.stop_member, name, kill=True)


def run(harness: Harness, body: Callable[[Harness], Awaitable[Any]]) -> Any:
    """Run one test body on a fresh event loop, bounded in time, closing the clients."""

    async def main() -> Any:
        try:
            return await asyncio.wait_for(body(harness), TEST_BODY_TIMEOUT_S)
        finally:
            await harness.close_all()

    return asyncio.run(main())
