"""The history of a fault-test run: its event format, the recorder, loading and pairing.

What belongs here: the JSON-lines event format, ``Recorder`` (which worker threads
append to and which writes the file as it goes), ``load_history``, ``pair_ops`` (events
to operations), and the message body codec the workloads write and the checker
verifies. Nothing here talks to a server or judges a history.

The format, one JSON object per line and per event::

    {"process": 3, "type": "invoke", "f": "send", "value": {...},
     "t_inv": 81234567890123, "t_end": null, "node": "http://127.0.0.1:9324"}

* ``process``: who did it. Workload threads are 0, 1, 2, ...; ``NEMESIS`` (-1) is the
  fault injector, whose operations are the faults (``t_inv`` the start, ``t_end`` the
  end); ``CONTROL`` (-2) marks phases (``f == "drain"``: ``ok`` if the drain caught up).
  A process runs one operation at a time, and keeps its number after an ``info``
  (unlike Jepsen, where a process that saw an indeterminate result is retired): the
  checker never assumes an ``info`` operation has finished, it only uses ``t_inv``.
* ``type``: ``invoke`` when the request is about to be sent, then exactly one of
  ``ok`` (the server answered success), ``fail`` (it certainly did not happen: a clean
  4xx, or a connection that was never opened) or ``info`` (indeterminate: a timeout, a
  reset connection, a 5xx; it may have happened, or may still happen).
* ``f``: ``send``, ``receive``, ``delete``, ``change_visibility``; the nemesis's own
  names (``kill``, ``pause``, ...); ``drain``.
* ``value``: what was asked (on the invoke) and, on the completion, the same object
  with what came back merged in, so a completion line stands on its own.
* ``t_inv`` / ``t_end``: ``time.monotonic_ns()`` just before the request and just
  after its outcome; ``t_end`` is null on invokes. CLOCK_MONOTONIC is one clock for
  every process of a host, so several client processes can share a history.
* ``node``: the endpoint the request went to.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from ferrymq._core._errors import InternalError

__all__ = [
    "COMPLETIONS",
    "CONTROL",
    "EVENTS_MAX",
    "NEMESIS",
    "HistoryError",
    "Op",
    "Pending",
    "Recorder",
    "body_key",
    "fault",
    "load_history",
    "make_body",
    "pair_ops",
    "write_history",
]

NEMESIS = -1
CONTROL = -2
COMPLETIONS = ("ok", "fail", "info")
_TYPES = ("invoke", *COMPLETIONS)
# Events a recorder keeps in memory. A 30-second fault test records tens of thousands;
# a million means a worker loop ran away, and the checker holds the whole history in
# memory anyway, so stopping the run is better than exhausting the machine.
EVENTS_MAX = 1_000_000
# Hex digits of SHA-256 in a body: 64 bits, so a corrupted body passing by chance is
# out of the question at test sizes, and bodies stay short.
BODY_HASH_CHARS = 16


class HistoryError(ValueError):
    """A history file or event that does not follow the format above."""


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:BODY_HASH_CHARS]


def make_body(key: str) -> str:
    """The body a workload sends for logical message ``key``: ``key|sha256-prefix``."""
    if "|" in key:
        raise InternalError(f"message key {key!r} contains the separator")
    return f"{key}|{_digest(key)}"


def body_key(body: object) -> str | None:
    """The logical key of a body ``make_body`` made, or None if it is not one of
    those, or was altered on the way (its hash does not match)."""
    if not isinstance(body, str):
        return None
    key, sep, digest = body.rpartition("|")
    if not sep or not key or digest != _digest(key):
        return None
    return key


@dataclass(frozen=True, slots=True)
class Pending:
    """An invoked operation waiting for its outcome."""

    process: int
    f: str
    value: dict[str, Any]
    t_inv: int
    node: str | None


@dataclass(frozen=True, slots=True)
class Op:
    """One operation: its invoke paired with its completion.

    ``type`` is ``ok``, ``fail`` or ``info``; an invoke that never completed (the
    recording process died) is ``info`` with ``t_end`` None. ``value`` is the
    completion's value when there is one, else the invoke's. ``index`` is the
    position of the invoke in the history.
    """

    index: int
    process: int
    f: str
    type: str
    value: dict[str, Any]
    t_inv: int
    t_end: int | None
    node: str | None


class Recorder:
    """Thread-safe: workload threads call ``invoke``/``complete`` concurrently; each
    event is appended in memory and, with a ``path``, written and flushed as one line
    at once, so a run that dies still leaves every event up to then on disk."""

    def __init__(self, path: str | Path | None = None, *,
                 clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self.path = None if path is None else Path(path)
        self._clock_ns = clock_ns
        self._lock = threading.Lock()
        self._events: list[dict[str, Any]] = []
        self._next_process = 0
        self._file: IO[bytes] | None = None
        if self.path is not None:
            self._file = self.path.open("wb")

    def now_ns(self) -> int:
        return self._clock_ns()

    def new_process(self) -> int:
        """A process number no one else has."""
        with self._lock:
            process = self._next_process
            self._next_process += 1
            return process

    def invoke(self, process: int, f: str, value: dict[str, Any],
               node: str | None = None) -> Pending:
        pending = Pending(process, f, dict(value), self._clock_ns(), node)
        self._append({"process": process, "type": "invoke", "f": f, "value": pending.value,
                      "t_inv": pending.t_inv, "t_end": None, "node": node})
        return pending

    def complete(self, pending: Pending, type_: str,
                 result: dict[str, Any] | None = None) -> dict[str, Any]:
        """Record the outcome of ``pending``; ``result`` is merged into its value."""
        if type_ not in COMPLETIONS:
            raise InternalError(f"completion type {type_!r} is not one of {COMPLETIONS}")
        t_end = self._clock_ns()
        value = dict(pending.value)
        if result:
            value.update(result)
        event = {"process": pending.process, "type": type_, "f": pending.f, "value": value,
                 "t_inv": pending.t_inv, "t_end": t_end, "node": pending.node}
        self._append(event)
        return event

    def _append(self, event: dict[str, Any]) -> None:
        line = orjson.dumps(event) + b"\n"
        with self._lock:
            if len(self._events) >= EVENTS_MAX:
                raise InternalError(f"history holds {EVENTS_MAX} events: a runaway loop")
            self._events.append(event)
            if self._file is not None:
                self._file.write(line)
                self._file.flush()

    def events(self) -> list[dict[str, Any]]:
        """A snapshot of the events so far, in the order they were recorded."""
        with self._lock:
            return list(self._events)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _validate(event: object, where: str) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise HistoryError(f"{where}: an event must be a JSON object")
    for key in ("process", "type", "f", "value", "t_inv", "t_end", "node"):
        if key not in event:
            raise HistoryError(f"{where}: missing {key!r}")
    process, type_, f = event["process"], event["type"], event["f"]
    t_inv, t_end = event["t_inv"], event["t_end"]
    if not isinstance(process, int) or isinstance(process, bool):
        raise HistoryError(f"{where}: process must be an integer")
    if type_ not in _TYPES:
        raise HistoryError(f"{where}: type must be one of {_TYPES}, not {type_!r}")
    if not isinstance(f, str) or not f:
        raise HistoryError(f"{where}: f must be a non-empty string")
    if not isinstance(t_inv, int) or isinstance(t_inv, bool):
        raise HistoryError(f"{where}: t_inv must be an integer (ns)")
    if type_ == "invoke":
        if t_end is not None:
            raise HistoryError(f"{where}: an invoke has t_end null")
    elif not isinstance(t_end, int) or isinstance(t_end, bool) or t_end < t_inv:
        raise HistoryError(f"{where}: a completion needs an integer t_end >= t_inv")
    if event["value"] is not None and not isinstance(event["value"], dict):
        raise HistoryError(f"{where}: value must be an object or null")
    if event["node"] is not None and not isinstance(event["node"], str):
        raise HistoryError(f"{where}: node must be a string or null")
    return event


def load_history(path: str | Path) -> list[dict[str, Any]]:
    """The events of a history file. A last line cut short (the writer died in the
    middle of it) is dropped; any other bad line is a ``HistoryError``."""
    lines = Path(path).read_bytes().split(b"\n")
    events: list[dict[str, Any]] = []
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for number, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            if number == last and not raw.endswith(b"}"):
                break
            raise HistoryError(f"{path}:{number + 1}: not JSON ({exc})") from exc
        events.append(_validate(event, f"{path}:{number + 1}"))
    return events


def pair_ops(events: Iterable[dict[str, Any]]) -> list[Op]:
    """Pair each invoke with its completion (same process and ``t_inv``).

    Ops come back in invoke order. An invoke left without completion becomes an
    ``info`` op with ``t_end`` None; a completion whose invoke is missing (a history
    cut at the front) stands alone.
    """
    ops: list[Op] = []
    open_by_key: dict[tuple[int, int], int] = {}
    for number, event in enumerate(events):
        _validate(event, f"event {number}")
        key = (event["process"], event["t_inv"])
        value = event["value"] if isinstance(event["value"], dict) else {}
        if event["type"] == "invoke":
            if key in open_by_key:
                raise HistoryError(f"event {number}: process {key[0]} invoked twice at "
                                   f"t_inv {key[1]}")
            open_by_key[key] = len(ops)
            ops.append(Op(len(ops), event["process"], event["f"], "info", value,
                          event["t_inv"], None, event["node"]))
            continue
        slot = open_by_key.pop(key, None)
        if slot is None:
            ops.append(Op(len(ops), event["process"], event["f"], event["type"], value,
                          event["t_inv"], event["t_end"], event["node"]))
            continue
        invoked = ops[slot]
        if invoked.f != event["f"]:
            raise HistoryError(f"event {number}: completion f {event['f']!r} does not match "
                               "its invoke")
        ops[slot] = Op(slot, invoked.process, invoked.f, event["type"], value,
                       invoked.t_inv, event["t_end"], invoked.node)
    return ops


def write_history(path: str | Path, events: Iterable[dict[str, Any]]) -> Path:
    """Write ``events`` as a history file (a synthetic history, or a re-written one)."""
    target = Path(path)
    with target.open("wb") as out:
        for event in events:
            out.write(orjson.dumps(event) + b"\n")
    return target


@contextmanager
def fault(recorder: Recorder, name: str, node: str | None = None,
          **details: Any) -> Iterator[None]:
    """Record the block as one fault of the nemesis: invoked when the block starts,
    ``ok`` when it ends (the fault is over: a killed node has restarted, a partition
    has healed), ``info`` if the block raised (the fault's end is unknown)."""
    pending = recorder.invoke(NEMESIS, name, dict(details), node)
    try:
        yield
    except BaseException:
        recorder.complete(pending, "info")
        raise
    recorder.complete(pending, "ok")
