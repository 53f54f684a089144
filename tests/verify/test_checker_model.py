"""The checker against histories generated from a model of SQS: every generated
history is correct by construction and must pass (no false alarm), and one mutation
of it into a violation must be caught.

The model serves operations one at a time at increasing instants; each operation's
[t_inv, t_end] is drawn around its instant (receives may have been parked up to 2 s,
``info`` operations may have taken effect after the client gave up, or never), one
operation at a time per process. It follows the rules Ferry implements: leases of VT
from the instant served, FIFO groups delivered from their head up to the first message
not visible, FIFO receipt handles good only while their receive holds the message,
stale handles deleting on standard queues, ``ReceiveRequestAttemptId`` replays, and
sequential FIFO producers retrying one deduplication id until acked. A final drain
deletes everything, so a correct history has nothing lost or undeleted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ferrymq._verify import CheckConfig, Report, check, make_body

from ._builder import MS, History

VT_MS = 1_000
EPSILON_MS = 100
# Liveness is not a property of a random schedule: a model consumer may idle for long.
CONFIG = CheckConfig(liveness_slack_ms=1e12)
SPREAD_MS = 50          # how far an operation's invoke/completion lie from its instant
PARK_MS = 2_000         # how long a receive may have been parked before it was served
STEPS = 160
MUTATOR = 999           # process number of operations a mutation inserts


@dataclass
class _Msg:
    key: str
    stream: str
    seq: int
    visible_at: float = 0.0
    deleted: bool = False
    handle: str | None = None


@dataclass
class _Lost:
    """A FIFO receive whose answer was lost: what it delivered, for a replay."""

    attempt_id: str
    taken: list[tuple[str, str, float]]  # key, handle, visible_at when delivered


@dataclass
class Sim:
    rnd: random.Random
    fifo: bool
    streams: int
    consumers: int
    h: History = field(init=False)
    now: float = 0.0
    free: dict[int, float] = field(default_factory=dict)
    msgs: dict[str, _Msg] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    next_seq: dict[int, int] = field(default_factory=dict)
    pending: dict[int, bool] = field(default_factory=dict)  # FIFO: current seq applied?
    held: dict[int, list[tuple[str, str]]] = field(default_factory=dict)
    lost: dict[int, _Lost] = field(default_factory=dict)
    attempts: int = 0

    def __post_init__(self) -> None:
        self.h = History(self.fifo)

    # -- timing --

    def interval(self, p: int, served: bool, park_ms: float = SPREAD_MS,
                 info: bool = False) -> tuple[float, float]:
        lo = max(self.free.get(p, 0.0), self.now - park_ms)
        t0 = self.rnd.uniform(lo, self.now)
        if info:  # the client gave up some time after it asked: before or after the instant
            t1 = t0 + self.rnd.uniform(0, 3 * SPREAD_MS)
        else:
            t1 = (self.now if served else t0) + self.rnd.uniform(0, SPREAD_MS)
        self.free[p] = t1
        return t0, t1

    def outcome(self, ok: float = 0.8) -> tuple[str, bool]:
        """(type recorded, applied)."""
        roll = self.rnd.random()
        if roll < ok:
            return "ok", True
        if roll < ok + (1 - ok) / 3:
            return "info", True
        if roll < ok + 2 * (1 - ok) / 3:
            return "info", False
        return "fail", False

    # -- the queue --

    def visible(self, m: _Msg) -> bool:
        return not m.deleted and m.visible_at <= self.now

    def select(self, limit: int) -> list[_Msg]:
        if not self.fifo:
            ready = [m for m in self.msgs.values() if self.visible(m)]
            return self.rnd.sample(ready, min(limit, len(ready)))
        taken: list[_Msg] = []
        names = list(self.groups)
        self.rnd.shuffle(names)
        for name in names:
            for key in self.groups[name]:
                m = self.msgs[key]
                if not self.visible(m) or len(taken) >= limit:
                    break
                taken.append(m)
        return taken

    def lease(self, taken: list[_Msg]) -> list[tuple[str, str]]:
        pairs = []
        for m in taken:
            m.handle = self.h.handle(m.key)
            m.visible_at = self.now + VT_MS
            pairs.append((m.key, m.handle))
        return pairs

    def handle_valid(self, key: str, handle: str) -> bool:
        m = self.msgs[key]
        return not m.deleted and m.handle == handle and m.visible_at > self.now

    def remove(self, key: str) -> None:
        m = self.msgs[key]
        m.deleted = True
        if self.fifo:
            self.groups[m.stream].remove(key)

    # -- operations --

    def send(self, p: int) -> None:
        if self.fifo:
            seq = self.next_seq.get(p, 0)
            key = f"g{p}:{seq}"
        else:
            seq = self.next_seq.get(p, 0)
            self.next_seq[p] = seq + 1
            key = f"{p}-{seq}"
        type_, applied = self.outcome()
        t0, t1 = self.interval(p, applied, info=type_ == "info")
        if applied and key not in self.msgs:
            stream = key.rpartition(":" if self.fifo else "-")[0]
            self.msgs[key] = _Msg(key, stream, seq, visible_at=self.now)
            if self.fifo:
                self.groups.setdefault(stream, []).append(key)
        self.h.send(key, t0, t1, type_=type_, process=p)
        if self.fifo and type_ == "ok":
            self.next_seq[p] = seq + 1

    def receive(self, c: int, attempt_id: str | None = None) -> None:
        limit = self.rnd.randint(1, 10)
        if self.fifo and attempt_id is None:
            self.attempts += 1
            attempt_id = f"a{self.attempts}"
        type_, applied = self.outcome(0.85)
        t0, t1 = self.interval(c, applied, park_ms=PARK_MS, info=type_ == "info")
        pairs: list[tuple[str, str]] = []
        if applied:
            taken = self.select(limit)
            pairs = self.lease(taken)
            if type_ == "info" and self.fifo and attempt_id is not None:
                self.lost[c] = _Lost(attempt_id, [(k, h, self.msgs[k].visible_at)
                                                  for k, h in pairs])
        if type_ == "ok":
            self.held.setdefault(c, []).extend(pairs)
        self.h.receive(list(pairs) if type_ == "ok" else [], t0, t1, vt_s=VT_MS / 1000,
                       process=c, attempt_id=attempt_id, type_=type_)

    def replay(self, c: int) -> None:
        lost = self.lost.pop(c)
        changed = any(self.msgs[k].deleted or (self.msgs[k].handle == h
                                               and self.msgs[k].visible_at != v)
                      for k, h, v in lost.taken)
        if changed:  # Ferry refuses the retry: 4xx, nothing happens
            t0, t1 = self.interval(c, False)
            self.h.receive([], t0, t1, vt_s=VT_MS / 1000, process=c,
                           attempt_id=lost.attempt_id, type_="fail")
            return
        still = [(k, h) for k, h, _ in lost.taken if self.handle_valid(k, h)]
        if not still:
            self.receive(c, lost.attempt_id)
            return
        t0, t1 = self.interval(c, True)
        self.held.setdefault(c, []).extend(still)
        self.h.receive(list(still), t0, t1, vt_s=VT_MS / 1000, process=c,
                       attempt_id=lost.attempt_id)

    def touch(self, c: int, f: str) -> None:
        held = self.held.get(c, [])
        if not held:
            return
        count = self.rnd.randint(1, min(3, len(held)))
        pairs = [held.pop(self.rnd.randrange(len(held))) for _ in range(count)]
        type_, applied = self.outcome()
        t0, t1 = self.interval(c, applied, info=type_ == "info")
        entry_types = []
        for key, handle in pairs:
            m = self.msgs[key]
            if f == "delete":
                valid = self.handle_valid(key, handle) if self.fifo else True
                if valid and applied and not m.deleted:
                    self.remove(key)
            else:
                valid = self.handle_valid(key, handle)
                if valid and applied:
                    m.visible_at = self.now
            entry_types.append("ok" if valid else "fail")
        if f == "delete":
            self.h.delete(pairs, t0, t1, type_=type_, entry_types=entry_types, process=c)
        else:
            self.h.release(pairs, t0, t1, type_=type_, process=c)
            if type_ == "ok":
                # ok entries of a release report per entry too
                self.h.events[-1]["value"]["entries"] = [
                    {**e, "type": t}
                    for e, t in zip(self.h.events[-1]["value"]["entries"], entry_types,
                                    strict=True)]

    def step(self) -> None:
        self.now += self.rnd.choice((1, 5, 20, 80, 200, VT_MS // 2))
        processes = [p for p in range(self.streams + self.consumers)
                     if self.free.get(p, 0.0) <= self.now]
        if not processes:
            return
        p = self.rnd.choice(processes)
        if p < self.streams:
            self.send(p)
            return
        roll = self.rnd.random()
        if p in self.lost and roll < 0.3:
            self.replay(p)
        elif roll < 0.55:
            self.receive(p)
        elif roll < 0.85:
            self.touch(p, "delete")
        else:
            self.touch(p, "change_visibility")

    def drain(self) -> None:
        d = self.streams + self.consumers  # a fresh process
        start = self.now
        for _ in range(10_000):  # bounded: each turn deletes at least one message
            if all(m.deleted for m in self.msgs.values()):
                break
            self.now = max(self.now, max(self.free.values(), default=0.0)) + VT_MS + 10
            taken = self.select(10)
            t0, t1 = self.now, self.now + 1
            pairs = self.lease(taken)
            self.h.receive(list(pairs), t0, t1, vt_s=VT_MS / 1000, process=d)
            self.now += 2
            for key, _ in pairs:
                self.remove(key)
            if pairs:
                self.h.delete(pairs, self.now, self.now + 1, process=d)
            self.free[d] = self.now + 1
        else:
            raise AssertionError("the model's drain did not finish")
        self.h.drain(start, self.now + 2)


def generate(seed: int, fifo: bool) -> Sim:
    rnd = random.Random(seed)
    sim = Sim(rnd, fifo, streams=rnd.randint(1, 3), consumers=rnd.randint(1, 3))
    for _ in range(STEPS):
        sim.step()
    sim.drain()
    return sim


SETTINGS = settings(max_examples=120, deadline=None, derandomize=True)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), fifo=st.booleans())
def test_histories_of_a_correct_queue_pass(seed: int, fifo: bool) -> None:
    sim = generate(seed, fifo)
    report = check(sim.h.events, CONFIG)
    assert report.violations() == [], report.format()
    q = report.queues[0]
    assert q.unique_received == sum(1 for m in sim.msgs.values())


# --- mutations ----------------------------------------------------------------------


def receives(h: History) -> list[dict[str, Any]]:
    return [e for e in h.events if e["f"] == "receive" and e["type"] == "ok"
            and e["value"]["messages"]]


def insert_receive(h: History, key: str, t0_ns: int, t1_ns: int) -> None:
    h.events.append({"process": MUTATOR, "type": "invoke", "f": "receive", "t_inv": t0_ns,
                     "t_end": None, "node": "n1",
                     "value": {**h.base(), "vt_s": VT_MS / 1000, "attempt_id": None}})
    message = {"body": make_body(key), "md5": None, "message_id": f"mid-{key}",
               "handle": f"mutant-{t0_ns}-{key}"}
    h.events.append({"process": MUTATOR, "type": "ok", "f": "receive", "t_inv": t0_ns,
                     "t_end": t1_ns, "node": "n1",
                     "value": {**h.base(), "vt_s": VT_MS / 1000, "attempt_id": None,
                               "messages": [message]}})


def touches(h: History, key: str) -> list[tuple[str, str, int, int]]:
    """(f, type, t_inv, t_end) of every delete or visibility-change entry on ``key``."""
    completions = {(e["process"], e["t_inv"]): e for e in h.events if e["type"] != "invoke"}
    out = []
    for e in h.events:
        if e["type"] != "invoke" or e["f"] not in ("delete", "change_visibility"):
            continue
        done = completions.get((e["process"], e["t_inv"]))
        entries = done["value"]["entries"] if done else e["value"]["entries"]
        for entry in entries:
            if entry["id"] != key:
                continue
            if done is None:
                out.append((e["f"], "info", e["t_inv"], 2**63))
            else:
                type_ = entry.get("type", "info") if done["type"] == "ok" else done["type"]
                out.append((e["f"], type_, e["t_inv"], done["t_end"]))
    return out


def lost_keys(report: Report) -> list[str]:
    return report.queues[0].lost


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), fifo=st.booleans(), pick=st.integers(0, 10**6))
def test_a_dropped_delivery_is_lost(seed: int, fifo: bool, pick: int) -> None:
    h = generate(seed, fifo).h
    acked = sorted({e["value"]["id"] for e in h.events if e["f"] == "send" and e["type"] == "ok"})
    if not acked:
        return
    key = acked[pick % len(acked)]
    for e in receives(h):
        e["value"]["messages"] = [m for m in e["value"]["messages"]
                                  if m["body"] != make_body(key)]
    assert key in lost_keys(check(h.events, CONFIG))


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), fifo=st.booleans(), pick=st.integers(0, 10**6),
       corrupt=st.booleans())
def test_a_phantom_or_corrupted_body_is_caught(seed: int, fifo: bool, pick: int,
                                               corrupt: bool) -> None:
    h = generate(seed, fifo).h
    batch = receives(h)
    if not batch:
        return
    message = batch[pick % len(batch)]["value"]["messages"][0]
    if corrupt:
        body = message["body"]
        message["body"] = body[:-1] + ("a" if body[-1] != "a" else "b")
        assert check(h.events, CONFIG).queues[0].corrupted
    else:
        message["body"] = make_body("g77:0" if fifo else "77-0")
        message["md5"] = None
        assert check(h.events, CONFIG).queues[0].unexpected


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), fifo=st.booleans(), pick=st.integers(0, 10**6))
def test_a_second_delivery_inside_a_lease_is_caught(seed: int, fifo: bool, pick: int) -> None:
    h = generate(seed, fifo).h
    eps = EPSILON_MS * MS
    attempt_uses: dict[str, int] = {}
    for e in h.events:
        if e["f"] == "receive" and e["type"] == "invoke" and e["value"]["attempt_id"]:
            aid = e["value"]["attempt_id"]
            attempt_uses[aid] = attempt_uses.get(aid, 0) + 1
    candidates = []
    for e in receives(h):
        if attempt_uses.get(e["value"]["attempt_id"] or "", 1) != 1:
            continue  # a replayed lease began earlier than this receive says
        if e["t_end"] >= e["t_inv"] + VT_MS * MS - eps:
            continue  # served too late to prove anything at t_end
        for m in e["value"]["messages"]:
            key = m["body"].rpartition("|")[0]
            excused = any(t != "fail" and t_inv < e["t_end"]
                          and not (t == "ok" and t_end <= e["t_inv"])
                          for _f, t, t_inv, t_end in touches(h, key))
            if not excused:
                candidates.append((key, e["t_end"]))
    if not candidates:
        return
    key, at = candidates[pick % len(candidates)]
    before = check(h.events, CONFIG).queues[0].lease_violations
    insert_receive(h, key, at, at)
    assert check(h.events, CONFIG).queues[0].lease_violations == before + 1


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), pick=st.integers(0, 10**6))
def test_a_swapped_fifo_batch_is_caught(seed: int, pick: int) -> None:
    h = generate(seed, True).h
    candidates = []
    for e in receives(h):
        messages = e["value"]["messages"]
        for i in range(len(messages) - 1):
            if messages[i]["group"] == messages[i + 1]["group"]:
                candidates.append((messages, i))
    if not candidates:
        return
    messages, i = candidates[pick % len(candidates)]
    messages[i], messages[i + 1] = messages[i + 1], messages[i]
    report = check(h.events, CONFIG)
    assert report.queues[0].order_violations >= 1
    assert any("batch_order" in x for x in report.queues[0].order_examples)


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), pick=st.integers(0, 10**6))
def test_a_fifo_message_delivered_before_its_predecessor_was_deleted_is_caught(
        seed: int, pick: int) -> None:
    h = generate(seed, True).h
    acked = sorted({e["value"]["id"] for e in h.events if e["f"] == "send" and e["type"] == "ok"
                    and not e["value"]["id"].endswith(":0")})
    if not acked:
        return
    key = acked[pick % len(acked)]
    group, _, seq = key.rpartition(":")
    predecessor = f"{group}:{int(seq) - 1}"
    first_delete = min((t_inv for f, t, t_inv, _ in touches(h, predecessor)
                        if f == "delete" and t != "fail"), default=None)
    at = (first_delete - 2 if first_delete is not None
          else max(e["t_end"] or e["t_inv"] for e in h.events))
    insert_receive(h, key, at, at + 1)
    assert check(h.events, CONFIG).queues[0].order_violations >= 1


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), fifo=st.booleans(), pick=st.integers(0, 10**6))
def test_redelivery_after_an_ok_delete_is_counted_or_convicted(seed: int, fifo: bool,
                                                               pick: int) -> None:
    h = generate(seed, fifo).h
    deleted = sorted({(entry["id"], e["t_end"]) for e in h.events
                      if e["f"] == "delete" and e["type"] == "ok"
                      for entry in e["value"]["entries"] if entry.get("type") == "ok"})
    key, at = deleted[pick % len(deleted)]
    before = check(h.events, CONFIG).queues[0]
    insert_receive(h, key, at + 1, at + 2)
    after = check(h.events, CONFIG).queues[0]
    assert after.duplicates["after_delete"] == before.duplicates["after_delete"] + 1
    if fifo:
        assert after.fifo_duplicates >= 1
    else:
        # At-least-once: a deleted message may come back on a standard queue.
        assert check(h.events, CONFIG).violations() == []


@SETTINGS
@given(seed=st.integers(0, 2**32 - 1), fifo=st.booleans(), pick=st.integers(0, 10**6))
def test_a_message_never_deleted_ok_is_undeleted(seed: int, fifo: bool, pick: int) -> None:
    h = generate(seed, fifo).h
    candidates = sorted({entry["id"] for e in h.events
                         if e["f"] == "delete" and e["type"] == "ok"
                         for entry in e["value"]["entries"] if entry.get("type") == "ok"})
    acked = {e["value"]["id"] for e in h.events if e["f"] == "send" and e["type"] == "ok"}
    candidates = [k for k in candidates if k in acked
                  and not any(f == "delete" and t == "info" for f, t, _, _ in touches(h, k))]
    if not candidates:
        return
    key = candidates[pick % len(candidates)]
    for e in h.events:
        if e["f"] == "delete" and e["type"] == "ok":
            for entry in e["value"]["entries"]:
                if entry["id"] == key:
                    entry["type"] = "fail"
    report = check(h.events, CONFIG)
    if key in lost_keys(report):
        return
    assert key in report.queues[0].undeleted
