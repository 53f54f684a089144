"""The history format: the recorder under concurrent writers, loading, pairing, the
body codec and the nemesis's fault records."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import orjson
import pytest

from ferrymq._core._errors import InternalError
from ferrymq._verify import (
    NEMESIS,
    HistoryError,
    Recorder,
    body_key,
    fault,
    load_history,
    make_body,
    pair_ops,
    write_history,
)

THREADS = 8
OPS_PER_THREAD = 400


def test_concurrent_writers_leave_one_whole_line_per_event(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    recorder = Recorder(path)
    start = threading.Barrier(THREADS)

    def work() -> None:
        process = recorder.new_process()
        start.wait()
        for i in range(OPS_PER_THREAD):
            pending = recorder.invoke(process, "send", {"id": f"{process}-{i}", "pad": "x" * i})
            recorder.complete(pending, ("ok", "fail", "info")[i % 3], {"n": i})

    threads = [threading.Thread(target=work) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorder.close()
    events = load_history(path)
    assert len(events) == 2 * THREADS * OPS_PER_THREAD
    assert events == recorder.events()
    ops = pair_ops(events)
    assert len(ops) == THREADS * OPS_PER_THREAD
    assert all(op.t_end is not None and op.value["n"] == int(op.value["id"].split("-")[1])
               for op in ops)
    by_process: dict[int, list[int]] = {}
    for op in ops:
        by_process.setdefault(op.process, []).append(op.t_inv)
    assert sorted(by_process) == list(range(THREADS))
    assert all(times == sorted(times) for times in by_process.values())


def test_injected_clock_and_merged_values() -> None:
    ticks = itertools.count(100, 10)
    recorder = Recorder(clock_ns=lambda: next(ticks))
    pending = recorder.invoke(3, "receive", {"vt_s": 5}, node="http://n1")
    event = recorder.complete(pending, "ok", {"messages": []})
    assert event == {"process": 3, "type": "ok", "f": "receive",
                     "value": {"vt_s": 5, "messages": []}, "t_inv": 100, "t_end": 110,
                     "node": "http://n1"}
    assert recorder.events()[0]["value"] == {"vt_s": 5}  # the invoke keeps what was asked
    with pytest.raises(InternalError):
        recorder.complete(pending, "invoke")


def test_invoke_without_completion_is_indeterminate() -> None:
    recorder = Recorder()
    recorder.invoke(0, "send", {"id": "0-0"})
    (op,) = pair_ops(recorder.events())
    assert (op.type, op.t_end) == ("info", None)


def test_completion_without_invoke_stands_alone_and_a_mismatch_is_an_error() -> None:
    done = {"process": 1, "type": "ok", "f": "send", "value": {}, "t_inv": 5, "t_end": 9,
            "node": None}
    (op,) = pair_ops([done])
    assert (op.type, op.t_inv, op.t_end) == ("ok", 5, 9)
    invoke = {**done, "type": "invoke", "t_end": None}
    with pytest.raises(HistoryError):
        pair_ops([invoke, {**done, "f": "receive"}])
    with pytest.raises(HistoryError):
        pair_ops([invoke, invoke])


@pytest.mark.parametrize("bad", [
    {"type": "maybe"}, {"t_inv": "soon"}, {"t_end": 1}, {"process": True}, {"value": [1]},
])
def test_malformed_events_are_refused(bad: dict[str, object]) -> None:
    event = {"process": 0, "type": "ok", "f": "send", "value": {}, "t_inv": 5, "t_end": 9,
             "node": None, **bad}
    with pytest.raises(HistoryError):
        pair_ops([event])


def test_load_drops_a_cut_last_line_but_not_a_bad_middle_one(tmp_path: Path) -> None:
    recorder = Recorder()
    for i in range(3):
        recorder.complete(recorder.invoke(0, "send", {"id": f"0-{i}"}), "ok")
    path = write_history(tmp_path / "h.jsonl", recorder.events())
    whole = path.read_bytes()
    path.write_bytes(whole + whole.splitlines()[0][:25])  # the writer died mid-line
    assert load_history(path) == recorder.events()
    lines = whole.splitlines()
    path.write_bytes(b"\n".join([lines[0], b"{not json", *lines[1:]]) + b"\n")
    with pytest.raises(HistoryError, match=":2:"):
        load_history(path)


def test_body_codec_round_trips_and_detects_tampering() -> None:
    body = make_body("3-17")
    assert body.startswith("3-17|") and body_key(body) == "3-17"
    assert body_key(body[:-1] + ("0" if body[-1] != "0" else "1")) is None
    assert body_key("3-18" + body[4:]) is None
    assert body_key("no separator") is None and body_key(None) is None
    with pytest.raises(InternalError):
        make_body("a|b")


def test_fault_records_start_and_end_and_an_unknown_end() -> None:
    recorder = Recorder()
    with fault(recorder, "kill", "http://n1", signal=9):
        pass
    with pytest.raises(RuntimeError), fault(recorder, "pause", "http://n2"):
        raise RuntimeError("restart failed")
    ops = pair_ops(recorder.events())
    assert [(op.process, op.f, op.type, op.node) for op in ops] == [
        (NEMESIS, "kill", "ok", "http://n1"), (NEMESIS, "pause", "info", "http://n2")]
    assert ops[0].value == {"signal": 9}


def test_lines_are_compact_json(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    with Recorder(path) as recorder:
        recorder.complete(recorder.invoke(0, "send", {"body": "é|"}), "ok")
    first = path.read_bytes().splitlines()[0]
    assert orjson.loads(first)["value"] == {"body": "é|"}
    assert b"\n" not in first
