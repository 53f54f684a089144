"""Jepsen-style verification: record what clients did to Ferry, then check it.

What belongs here: the history format and its recorder (``_history``), the pure
checker (``_checker``), and the workloads that drive any list of SQS endpoints while
a test injects faults (``_workload``, which needs boto3 and is therefore imported from
its module, not from here, so that re-checking a history needs only Ferry's runtime
dependencies). ``python -m ferrymq._verify check HISTORY`` re-checks a history file.
"""

from __future__ import annotations

from ferrymq._verify._checker import (
    DUPLICATE_CLASSES,
    CheckConfig,
    FaultReport,
    QueueReport,
    Report,
    check,
    check_ops,
)
from ferrymq._verify._history import (
    CONTROL,
    NEMESIS,
    HistoryError,
    Op,
    Pending,
    Recorder,
    body_key,
    fault,
    load_history,
    make_body,
    pair_ops,
    write_history,
)

__all__ = [
    "CONTROL",
    "DUPLICATE_CLASSES",
    "NEMESIS",
    "CheckConfig",
    "FaultReport",
    "HistoryError",
    "Op",
    "Pending",
    "QueueReport",
    "Recorder",
    "Report",
    "body_key",
    "check",
    "check_ops",
    "fault",
    "load_history",
    "make_body",
    "pair_ops",
    "write_history",
]
