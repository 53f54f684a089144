"""Test doubles shared by several test modules (``pythonpath`` in pyproject.toml puts
this folder on ``sys.path``)."""

from __future__ import annotations

__all__ = ["CountingEntropy"]


class CountingEntropy:
    """Deterministic ``Entropy``: UUID-shaped numbered ids and numbered tokens, so two
    runs (or two services fed the same requests) produce identical responses."""

    def __init__(self) -> None:
        self.n = 0

    def message_id(self) -> str:
        self.n += 1
        return f"00000000-0000-4000-8000-{self.n:012d}"

    def token(self) -> str:
        self.n += 1
        return f"token{self.n:020d}"
