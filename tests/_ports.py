"""Free loopback ports for tests that start several servers (``pythonpath`` in
pyproject.toml puts this folder on ``sys.path``)."""

from __future__ import annotations

import random
import socket

__all__ = ["free_base_port"]

# Below Linux's ephemeral range (32768-60999), so the ports the kernel hands to other
# processes (etcd's, clients') cannot fall among them; above the well-known ones; never
# 9324, a user's default.
_PORT_RANGE = (20_000, 30_000)
# Tries before giving up: a 2-core CI machine has few ports in use, so one or two do.
_ATTEMPTS_MAX = 200


def free_base_port(count: int) -> int:
    """A base with ``count`` consecutive loopback ports free a moment ago (probed by
    binding each; the usual race with other programs is accepted)."""
    for _ in range(_ATTEMPTS_MAX):
        base = random.randrange(*_PORT_RANGE)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports in {_PORT_RANGE}")
