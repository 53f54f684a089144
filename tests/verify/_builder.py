"""A small builder of synthetic histories for the checker's tests.

What belongs here: writing events in the recorder's format at chosen times (given in
milliseconds, stored in nanoseconds), so that a test reads as a timeline. Nothing here
judges a history.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ferrymq._verify import CONTROL, NEMESIS, make_body

__all__ = ["MS", "History"]

MS = 1_000_000


def _md5(body: str) -> str:
    return hashlib.md5(body.encode("utf-8")).hexdigest()


class History:
    """Events for one queue (``q`` or ``q.fifo``); every op is an invoke and, unless
    its type is None, a completion."""

    def __init__(self, fifo: bool = False, queue: str | None = None) -> None:
        self.fifo = fifo
        self.queue = queue or ("q.fifo" if fifo else "q")
        self.events: list[dict[str, Any]] = []
        self._handles = 0

    def op(self, process: int, f: str, type_: str | None, value: dict[str, Any],
           t0_ms: float, t1_ms: float, result: dict[str, Any] | None = None,
           node: str | None = "n1") -> None:
        t_inv = round(t0_ms * MS)
        self.events.append({"process": process, "type": "invoke", "f": f, "value": value,
                            "t_inv": t_inv, "t_end": None, "node": node})
        if type_ is not None:
            self.events.append({"process": process, "type": type_, "f": f,
                                "value": {**value, **(result or {})}, "t_inv": t_inv,
                                "t_end": round(t1_ms * MS), "node": node})

    def base(self) -> dict[str, Any]:
        return {"queue": self.queue, "fifo": self.fifo}

    def send(self, key: str, t0: float, t1: float, type_: str | None = "ok",
             process: int = 0, md5: str | None = None) -> None:
        body = make_body(key)
        result = {"message_id": f"mid-{key}", "md5": md5 or _md5(body)} if type_ == "ok" else {}
        self.op(process, "send", type_, {**self.base(), "id": key, "body": body}, t0, t1, result)

    def handle(self, key: str) -> str:
        self._handles += 1
        return f"h{self._handles}-{key}"

    def receive(self, keys: list[str | tuple[str, str]], t0: float, t1: float,
                vt_s: float = 5, process: int = 1, attempt_id: str | None = None,
                type_: str | None = "ok", bodies: dict[str, str] | None = None,
                md5s: dict[str, str] | None = None,
                groups: dict[str, str] | None = None) -> list[str]:
        """Deliver ``keys`` (a key, or (key, handle) to reuse a handle); returns the
        handles in order."""
        messages = []
        handles = []
        for item in keys:
            key, handle = item if isinstance(item, tuple) else (item, self.handle(item))
            body = (bodies or {}).get(key, make_body(key))
            message = {"body": body, "md5": (md5s or {}).get(key, _md5(body)),
                       "message_id": f"mid-{key}", "handle": handle}
            if self.fifo:
                message["group"] = (groups or {}).get(key, key.rpartition(":")[0])
            messages.append(message)
            handles.append(handle)
        value = {**self.base(), "max": 10, "wait_s": 2, "vt_s": vt_s, "attempt_id": attempt_id}
        result = {"messages": messages} if type_ == "ok" else {}
        self.op(process, "receive", type_, value, t0, t1, result)
        return handles

    def _entries(self, f: str, pairs: list[tuple[str, str]], t0: float, t1: float,
                 type_: str | None, entry_types: list[str] | None, process: int,
                 extra: dict[str, Any]) -> None:
        entries = [{"id": key, "handle": handle} for key, handle in pairs]
        result: dict[str, Any] = {}
        if type_ == "ok":
            types = entry_types or ["ok"] * len(pairs)
            result = {"entries": [{**e, "type": t} for e, t in zip(entries, types, strict=True)]}
        self.op(process, f, type_, {**self.base(), "entries": entries, **extra}, t0, t1, result)

    def delete(self, pairs: list[tuple[str, str]], t0: float, t1: float,
               type_: str | None = "ok", entry_types: list[str] | None = None,
               process: int = 1) -> None:
        self._entries("delete", pairs, t0, t1, type_, entry_types, process, {})

    def release(self, pairs: list[tuple[str, str]], t0: float, t1: float,
                type_: str | None = "ok", process: int = 1) -> None:
        self._entries("change_visibility", pairs, t0, t1, type_, None, process, {"vt_s": 0})

    def deliver_and_delete(self, key: str, t0: float, process: int = 1) -> str:
        """Receive ``key`` at [t0, t0+1] and delete it at [t0+2, t0+3]."""
        (handle,) = self.receive([key], t0, t0 + 1, process=process)
        self.delete([(key, handle)], t0 + 2, t0 + 3, process=process)
        return handle

    def fault(self, name: str, t0: float, t1: float | None, node: str = "n1") -> None:
        self.op(NEMESIS, name, None if t1 is None else "ok", {}, t0, t1 or t0, node=node)

    def drain(self, t0: float, t1: float, caught_up: bool = True) -> None:
        self.op(CONTROL, "drain", "ok" if caught_up else "info", {"queue": self.queue}, t0, t1,
                node=None)
