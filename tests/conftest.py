"""Suite-wide pytest configuration: markers shared by every test directory.

Fixtures that start servers live in tests/e2e/conftest.py so the fast unit suites
(core, storage, gateway) never pay for a subprocess.
"""

from __future__ import annotations

import pytest

__all__: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: waits in real time for many seconds; deselect with -m 'not slow'"
    )
    config.addinivalue_line("markers", "e2e: runs against a real ferrymq server subprocess")
