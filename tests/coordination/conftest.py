"""Fixtures for the coordination tests: real etcd processes and the contract harnesses.

Every etcd here is a child process started by ``EtcdCluster`` on free loopback ports
and stopped by its PID when the fixture ends. The shared single member runs with a
500 ms election timeout, which makes etcd's minimum lease TTL 1 s (it is
``ceil(1.5 x election timeout)``), so lease tests wait ~1 s instead of ~2 s.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ferrymq._coordination import EtcdCluster

from ._harness import EtcdHarness, Harness, LocalHarness, new_cluster


@pytest.fixture(scope="session")
def shared_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    """One etcd member for the tests that do not hurt it (each uses its own keys)."""
    cluster = new_cluster(tmp_path_factory.mktemp("etcd-shared"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["local", "etcd"])
def harness(request: pytest.FixtureRequest) -> Harness:
    """An implementation sharing its store with other tests (use your own keys)."""
    if request.param == "local":
        return LocalHarness()
    return EtcdHarness(request.getfixturevalue("shared_etcd"), own_cluster=False)


@pytest.fixture(params=["local", "etcd"])
def faulty_harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    """An implementation whose store the test may crash, restart or stop."""
    if request.param == "local":
        yield LocalHarness()
        return
    cluster = new_cluster(tmp_path / "etcd")
    try:
        yield EtcdHarness(cluster, own_cluster=True)
    finally:
        cluster.stop()
