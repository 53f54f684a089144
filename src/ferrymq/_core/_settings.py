"""A queue's attributes decoded into the typed settings the message state machine
reads on every operation (so the hot path never parses attribute strings)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["QueueSettings"]


@dataclass(frozen=True, slots=True)
class QueueSettings:
    fifo: bool
    visibility_timeout_ms: int = 30_000
    delay_ms: int = 0
    retention_ms: int = 345_600_000
    message_size_bytes_max: int = 1_048_576
    receive_wait_ms: int = 0
    content_based_dedup: bool = False
    dedup_scope_group: bool = False  # DeduplicationScope == "messageGroup"
    # Redrive: name of the dead-letter queue (same account) and its threshold.
    dead_letter_queue: str | None = None
    max_receive_count: int = 10
