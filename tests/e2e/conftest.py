"""Fixtures for end-to-end tests: shared server subprocesses and SDK clients.

One ``server`` (SQS's 60-s purge/re-create rules on) and one ``dev_server`` (both rules
off) run for the whole session; every test gets fresh queue names instead of a fresh
server, which keeps the suite fast.

A module that overrides the ``bodies`` fixture with ``params=BODY_MODES`` runs its
``sqs`` tests twice: against ``server`` (every body in memory) and against
``disk_bodies_server`` (``--body-memory-mib 0``: every body is read from the store).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ._harness import PROTOCOLS, ServerProcess, make_client, stop_leftovers

__all__: list[str] = []

DEV_FLAGS = ("--purge-interval-seconds", "0", "--recreate-delay-seconds", "0")
BODY_MODES = ("memory", "disk")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _no_server_left_running() -> Iterator[None]:
    # Set up before any server fixture, so torn down after all of them: a server still
    # running then was left by a test that failed before stopping it. Stopped here, and
    # reported, since a leak is a bug of that test.
    yield
    left = stop_leftovers()
    assert not left, f"servers left running by the tests, now killed: {left}"


@pytest.fixture(scope="session", autouse=True)
def _isolated_aws_env() -> Iterator[None]:
    # A developer's ~/.aws config (profile, region, endpoint) must not leak into tests.
    saved = {k: os.environ.get(k) for k in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE",
                                            "AWS_PROFILE", "AWS_DATA_PATH", "AWS_ENDPOINT_URL")}
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    for key in ("AWS_PROFILE", "AWS_DATA_PATH", "AWS_ENDPOINT_URL"):
        os.environ.pop(key, None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("server-data"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("dev-server-data"), DEV_FLAGS)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def disk_bodies_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("disk-bodies-data"),
                         ("--body-memory-mib", "0"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def bodies() -> str:
    """Where the server under ``sqs`` keeps bodies; see the module docstring."""
    return "memory"


@pytest.fixture(scope="session")
def client_cache() -> dict[tuple[str, str], Any]:
    # Building a client parses the service model (~0.1 s); hundreds of tests share them.
    return {}


def require_running(proc: ServerProcess) -> None:
    # A crashed server would otherwise show up as hundreds of "connection refused".
    if not proc.is_running():
        pytest.fail(f"ferrymq server died earlier in the session; last output:\n"
                    f"{proc.output()[-4000:]}", pytrace=False)


def cached_client(cache: dict[tuple[str, str], Any], url: str, protocol: str) -> Any:
    key = (url, protocol)
    if key not in cache:
        cache[key] = make_client(url, protocol)
    return cache[key]


@pytest.fixture(params=PROTOCOLS, ids=list(PROTOCOLS))
def protocol(request: pytest.FixtureRequest) -> str:
    value: str = request.param
    return value


@pytest.fixture
def sqs_server(request: pytest.FixtureRequest, bodies: str) -> ServerProcess:
    """The server ``sqs`` talks to."""
    server: ServerProcess = request.getfixturevalue(
        "server" if bodies == "memory" else "disk_bodies_server"
    )
    return server


@pytest.fixture
def sqs(sqs_server: ServerProcess, protocol: str,
        client_cache: dict[tuple[str, str], Any]) -> Any:
    server = sqs_server
    require_running(server)
    client = cached_client(client_cache, server.url, protocol)
    assert client.meta.service_model.protocol == protocol
    return client


@pytest.fixture
def dev_sqs(
    dev_server: ServerProcess, protocol: str, client_cache: dict[tuple[str, str], Any]
) -> Any:
    require_running(dev_server)
    client = cached_client(client_cache, dev_server.url, protocol)
    assert client.meta.service_model.protocol == protocol
    return client


@pytest.fixture
def queue_url(sqs: Any, queue_name: str) -> str:
    """A fresh standard queue on the server ``sqs`` talks to."""
    url: str = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    return url


_NAME_COUNTER = itertools.count()
_RUN_ID = uuid.uuid4().hex[:8]


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    """A queue name unique across tests, protocols and reruns (max 80 chars incl. .fifo)."""
    base = "".join(c if c.isalnum() else "-" for c in request.node.name)[:40].strip("-")
    return f"t{_RUN_ID}-{next(_NAME_COUNTER)}-{base}"
