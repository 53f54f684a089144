"""``python -m ferrymq._verify check HISTORY`` as a real process: the report, the exit
code, JSON output and an unreadable file."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ferrymq._verify import write_history

from ._builder import History


def run_check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferrymq._verify", "check", *args],
                          capture_output=True, text=True, timeout=60)


def clean(tmp_path: Path) -> Path:
    h = History()
    h.send("0-0", 0, 1)
    h.deliver_and_delete("0-0", 10)
    return write_history(tmp_path / "clean.jsonl", h.events)


def test_clean_history_exits_0_with_the_report(tmp_path: Path) -> None:
    done = run_check(str(clean(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "queue q (standard)" in done.stdout and "violations: 0" in done.stdout


def test_violating_history_exits_1_and_names_the_violation(tmp_path: Path) -> None:
    h = History()
    h.send("0-0", 0, 1)
    path = write_history(tmp_path / "lost.jsonl", h.events)
    done = run_check(str(path))
    assert done.returncode == 1
    assert "acked messages never received" in done.stdout


def test_json_report_and_skew_option(tmp_path: Path) -> None:
    h = History()
    h.send("0-0", 0, 1)
    h.receive(["0-0"], 10, 11)
    h.deliver_and_delete("0-0", 4_700, process=2)   # inside the lease by 200 ms
    path = write_history(tmp_path / "lease.jsonl", h.events)
    strict = run_check(str(path), "--json")
    assert strict.returncode == 1
    assert json.loads(strict.stdout)["queues"][0]["lease_violations"] == 1
    assert run_check(str(path), "--skew-ms", "300").returncode == 0


def test_unreadable_history_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"process": 0}\n{"also": "bad"}\n')
    done = run_check(str(path))
    assert done.returncode == 2 and "missing" in done.stderr
    assert run_check(str(tmp_path / "absent.jsonl")).returncode == 2
