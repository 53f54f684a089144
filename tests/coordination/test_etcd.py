"""etcd-only behaviour: the process API (start, stop by PID, restart, leader) and a
3-member cluster losing its leader under a writer and a watcher; plus the promise that
a single node never loads the gRPC client."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferrymq._coordination import (
    CoordinatorUnavailable,
    EtcdCluster,
    EtcdCoordinator,
    EtcdProcessError,
    EventKind,
    etcd_version,
)

from ._harness import REQUEST_TIMEOUT_MS, new_cluster, require_etcd

# Liveness bound, not a performance figure: with a 500 ms election timeout a new leader
# is in office within a second or two here; a write path still dead after this is a hang.
FAILOVER_BOUND_S = 15.0


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_version_is_3_4_or_later() -> None:
    require_etcd()
    major, minor = (int(x) for x in etcd_version().split(".")[:2])
    assert (major, minor) >= (3, 4)


def test_minimum_lease_ttl_with_default_raft_timings(tmp_path: Path) -> None:
    """etcd raises a TTL to ceil(1.5 x election timeout): 2 s with its defaults."""
    require_etcd()

    async def grants(cluster: EtcdCluster) -> list[int]:
        c = await EtcdCoordinator.connect(cluster.endpoints)
        try:
            return [(await c.grant_lease(t)).ttl_s for t in (1, 2, 3)]
        finally:
            await c.close()

    with EtcdCluster(tmp_path, 1) as cluster:
        assert asyncio.run(grants(cluster)) == [2, 2, 3]


def test_a_binary_that_cannot_serve_is_a_clear_error(tmp_path: Path) -> None:
    cluster = EtcdCluster(tmp_path, 1, binary="/bin/false")
    with pytest.raises(EtcdProcessError, match="exited during start-up"):
        cluster.start()
    assert cluster.running() == []


def test_three_members_stop_restart_and_leave_no_process(tmp_path: Path) -> None:
    cluster = new_cluster(tmp_path, 3)
    try:
        pids = {m.name: cluster.pid(m.name) for m in cluster.members}
        assert all(pids.values()) and len(set(cluster.endpoints)) == 3
        leader = cluster.wait_leader()
        cluster.stop_member(leader, kill=True)
        old_pid = pids[leader]
        assert old_pid is not None and _gone(old_pid) and cluster.pid(leader) is None
        successor = cluster.wait_leader()
        assert successor != leader
        new_pid = cluster.start_member(leader)
        assert new_pid != old_pid and cluster.is_healthy(leader)
        assert sorted(cluster.running()) == sorted(pids)
    finally:
        cluster.stop()
    assert cluster.running() == []
    assert all(_gone(pid) for pid in pids.values() if pid is not None)


def test_leader_kill_under_a_writer_and_a_watcher(tmp_path: Path) -> None:
    """SIGKILL the Raft leader while one client writes and another watches, both on all
    three endpoints: writes resume on the survivors, and the watcher, wherever it was
    connected, receives every acknowledged write exactly once, in order."""
    cluster = new_cluster(tmp_path, 3)

    async def body() -> None:
        writer = await EtcdCoordinator.connect(cluster.endpoints,
                                               request_timeout_ms=REQUEST_TIMEOUT_MS)
        watcher = await EtcdCoordinator.connect(list(reversed(cluster.endpoints)),
                                                request_timeout_ms=REQUEST_TIMEOUT_MS)
        try:
            start = await writer.put(b"/f/start", b"")
            stream = watcher.watch_prefix(b"/f/k/", start_revision=start + 1)
            acked: dict[int, bytes] = {}
            failures = 0

            async def write(i: int) -> None:
                nonlocal failures
                key = b"/f/k/%03d" % i
                try:
                    acked[await writer.put(key, b"%d" % i)] = key
                except CoordinatorUnavailable:
                    failures += 1  # outcome unknown: the watch may or may not show it

            for i in range(20):
                await write(i)
            leader = await asyncio.to_thread(cluster.wait_leader)
            await asyncio.to_thread(cluster.stop_member, leader, kill=True)
            loop = asyncio.get_running_loop()
            killed_at = loop.time()
            before = len(acked)
            i = 20
            while len(acked) < before + 20:
                assert loop.time() - killed_at < FAILOVER_BOUND_S, "writes did not resume"
                await write(i)
                i += 1
            last = max(acked)
            seen: list[tuple[int, bytes]] = []
            async with asyncio.timeout(FAILOVER_BOUND_S):
                async for event in stream:
                    assert event.kind is EventKind.PUT
                    seen.append((event.revision, event.key))
                    if event.revision >= last:
                        break
            await stream.aclose()
            revisions = [r for r, _ in seen]
            assert revisions == sorted(set(revisions))  # in order, no repeats
            assert set(acked.items()) <= set(seen)  # nothing acknowledged is missed
            # Anything beyond the acknowledged writes is one whose answer was lost.
            assert len(seen) - len(acked) <= failures
        finally:
            await writer.close()
            await watcher.close()

    try:
        asyncio.run(asyncio.wait_for(body(), 3 * FAILOVER_BOUND_S))
    finally:
        cluster.stop()


def test_a_single_node_never_imports_grpc() -> None:
    """`ferrymq serve`'s modules and the coordination package load without gRPC."""
    code = ("import sys, ferrymq._cli, ferrymq._service, ferrymq._coordination; "
            "print(sorted(m for m in ('grpc', 'aetcd', 'google.protobuf') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, timeout=60)
    assert done.stdout.strip() == "[]"
