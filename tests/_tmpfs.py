"""A real, size-limited filesystem for disk-full tests: a tmpfs mounted for one test.

A full disk is one of the faults Ferry promises to survive, and a tmpfs with a size
limit gives a real ENOSPC from the kernel (no fake file layer). Mounting needs
CAP_SYS_ADMIN (root in CI's container); without it the tests that need one are
skipped, saying why.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

__all__ = ["fill", "free_bytes", "mounted_tmpfs"]

_FILL_CHUNK_BYTES = 64 * 1024


@contextmanager
def mounted_tmpfs(path: Path, size_bytes: int) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes},mode=0755", "tmpfs", str(path)],
        capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"a real ENOSPC needs a size-limited tmpfs, and mount refused: "
                    f"{done.stderr.strip() or done.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave_bytes: int = 0) -> Path:
    """Write a filler file into ``path`` until at most ``leave_bytes`` are free."""
    filler = path / f"filler-{len(list(path.glob('filler-*')))}"
    chunk = b"\0" * _FILL_CHUNK_BYTES
    with open(filler, "wb") as out:
        while free_bytes(path) > leave_bytes:
            want = min(len(chunk), free_bytes(path) - leave_bytes)
            try:
                out.write(chunk[:max(want, 1)])
                out.flush()
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler
