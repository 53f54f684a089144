"""Tests of ``ferrymq bench``: the pure pieces, and a quick real run against Ferry only."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ferrymq._bench._loadgen import batch_failed, build_request
from ferrymq._bench._report import TABLE_HEADERS, add_ratios, render_workload, table_rows
from ferrymq._bench._runner import summarise_runs
from ferrymq._bench._stats import (
    CLOCK_TICKS_PER_S,
    cpu_ns_from_stat_line,
    format_table,
    median,
    parse_stat_line,
    percentile,
    ratio,
    rss_bytes_from_status,
    session_cpu_ns,
    session_pids,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


# --- percentiles, medians, ratios -------------------------------------------------

def test_percentile_nearest_rank() -> None:
    values = list(range(1, 101))  # 1..100
    assert percentile(values, 0.50) == 50
    assert percentile(values, 0.99) == 99
    assert percentile(values, 1.0) == 100
    assert percentile(values, 0.0) == 1
    assert percentile([7], 0.99) == 7
    # With 10 samples, p99 is the largest: nearest rank never interpolates past data.
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 1000], 0.99) == 1000
    assert percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 1000], 0.50) == 5


def test_percentile_empty_and_out_of_range() -> None:
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError):
        percentile([1, 2], 1.5)


def test_median_picks_a_measured_value() -> None:
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.0  # lower middle, a real run
    assert math.isnan(median([]))


def test_ratio() -> None:
    assert ratio(100.0, 10.0) == 10.0
    assert ratio(1.0, 0.0) is None
    assert ratio(math.nan, 1.0) is None
    assert ratio(-1.0, 2.0) is None


# --- /proc parsing ------------------------------------------------------------------

def test_parse_stat_line_with_awkward_command_name() -> None:
    # A command name with spaces and a ')' must not shift the fields.
    line = ("4242 (my (odd) name) S 1 4240 4240 0 -1 4194560 500 0 0 0 "
            "1234 567 0 0 20 0 3 0 100 0 0")
    pid, session, utime, stime = parse_stat_line(line)
    assert (pid, session, utime, stime) == (4242, 4240, 1234, 567)
    assert cpu_ns_from_stat_line(line) == (1234 + 567) * 1_000_000_000 // CLOCK_TICKS_PER_S


def test_parse_own_proc_stat() -> None:
    line = Path("/proc/self/stat").read_text()
    pid, session, utime, stime = parse_stat_line(line)
    # The session id is 0 when the session leader lives outside our pid namespace
    # (as in CI's container), so only its sign is ours to check.
    assert pid == os.getpid() and session >= 0 and utime >= 0 and stime >= 0
    own = os.getpid()
    # Burn some CPU; our own counter must move forward (ticks are ~10 ms).
    before = session_cpu_ns([own])
    deadline = os.times().elapsed + 0.2
    while os.times().elapsed < deadline:
        pass
    assert session_cpu_ns([own]) > before
    assert session_pids(own)[0] == own
    assert session_pids(2**22 + 12345) == []  # beyond pid_max: no such process


def test_rss_from_status() -> None:
    text = "Name:\tpython\nVmPeak:\t  2000 kB\nVmRSS:\t   1536 kB\nThreads:\t1\n"
    assert rss_bytes_from_status(text) == 1536 * 1024
    assert rss_bytes_from_status("Name:\tkthread\n") == 0


# --- tables and rows ----------------------------------------------------------------

def test_format_table_aligns_columns() -> None:
    text = format_table(["server", "msgs/s"], [["ferry", "12,345"], ["localstack", "9"]])
    lines = text.splitlines()
    assert lines[0] == "server      msgs/s"
    assert lines[1] == "----------  ------"
    assert lines[2] == "ferry       12,345"
    assert lines[3] == "localstack       9"


def _row(server: str, msgs: float, p99: float | None) -> dict[str, object]:
    return {"server": server, "msgs_per_s": msgs, "p50_ms": 1.0, "p99_ms": p99,
            "cpu_us_per_msg": 20.0, "errors": 0, "loadgen_cpu_pct": 40.0,
            "server_cpu_pct": 90.0, "rss_after_bytes": 50 * 2**20}


def test_ratios_and_table_rows() -> None:
    rows = [_row("ferry", 20_000.0, 5.0), _row("localstack", 1_000.0, 50.0),
            _row("moto", 0.0, None)]
    add_ratios(rows)
    assert rows[0]["ferry_x"] is None
    assert rows[1]["ferry_x"] == 20.0
    assert rows[1]["p99_peer_over_ferry"] == 10.0
    assert rows[2]["ferry_x"] is None  # zero throughput: no meaningful ratio
    cells = table_rows(rows)
    assert len(cells[0]) == len(TABLE_HEADERS)
    assert cells[1][0] == "localstack"
    assert cells[1][1] == "1,000"
    assert cells[1][-2] == "20.00×"
    assert cells[1][-1] == "10.00×"
    assert cells[0][-2] == "—"
    text = render_workload("send", {"description": "d", "rows": rows, "notes": ["n1"],
                                    "skipped": {"x": "why"}})
    assert text.startswith("== send: d")
    assert "note: n1" in text and "skipped x: why" in text


def test_errors_are_loud_in_the_table() -> None:
    row = _row("ferry", 10.0, 1.0)
    row["errors"] = 3
    add_ratios([row])
    assert "3 ERRORS" in table_rows([row])[0]


def test_summarise_runs_uses_the_median_run() -> None:
    def run(msgs: float, p99: float) -> dict[str, object]:
        return {"msgs_per_s": msgs, "p50_ms": 1.0, "p99_ms": p99, "errors": 1,
                "server_cpu_us_per_msg": 10.0, "loadgen_cpu_pct": 5.0,
                "server_cpu_pct": 50.0, "rss_before_bytes": 1, "rss_after_bytes": 2,
                "messages": int(msgs), "elapsed_s": 1.0}

    row = summarise_runs("ferry", [run(300.0, 3.0), run(100.0, 1.0), run(200.0, 2.0)])
    assert row["msgs_per_s"] == 200.0
    assert row["p99_ms"] == 2.0  # latencies come from the same (median) run
    assert row["errors"] == 3  # errors of every run count
    assert row["runs_msgs_per_s"] == [300.0, 100.0, 200.0]


def test_build_request_is_valid_http() -> None:
    data = build_request("127.0.0.1", 9324, "SendMessage", b'{"a":1}')
    head, body = data.split(b"\r\n\r\n", 1)
    assert body == b'{"a":1}'
    assert head.startswith(b"POST / HTTP/1.1\r\n")
    assert b"X-Amz-Target: AmazonSQS.SendMessage" in head
    assert b"Content-Length: 7" in head


def test_batch_failed_tells_empty_from_real_failures() -> None:
    assert not batch_failed(b'{"Successful":[{"Id":"0"}]}')
    assert not batch_failed(b'{"Successful": [{"Id": "0"}], "Failed": []}')  # moto/LocalStack
    assert batch_failed(b'{"Successful":[],"Failed":[{"Id":"0","SenderFault":true,'
                        b'"Code":"X"}]}')


# --- the real thing, quickly ---------------------------------------------------------

@pytest.mark.timeout(60)
def test_quick_bench_against_ferry_and_its_baseline(tmp_path: Path) -> None:
    chart = tmp_path / "chart.png"
    results_dir = tmp_path / "results"
    # --baseline HEAD: the committed Ferry runs beside the working tree's, as a peer.
    done = subprocess.run(
        [sys.executable, "-m", "ferrymq", "bench", "--quick", "--peers", "ferry",
         "--baseline", "HEAD",
         "--workloads", "send,batch", "--duration", "0.5", "--warmup", "0.2", "--repeat", "1",
         "--bench-dir", str(tmp_path / "bench"), "--results-dir", str(results_dir),
         "--out", str(chart)],
        capture_output=True, text=True, timeout=100, cwd=REPO_ROOT, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((results_dir / "latest.json").read_text())
    assert set(results["workloads"]) == {"send", "batch"}
    for name in ("send", "batch"):
        rows = results["workloads"][name]["rows"]
        assert [r["server"] for r in rows] == ["ferry", "ferry-baseline"]
        for row in rows:
            assert row["msgs_per_s"] > 0, row
            assert row["errors"] == 0, row["error_samples"]
            assert row["p99_ms"] >= row["p50_ms"] > 0
            assert row["cpu_us_per_msg"] is not None and row["cpu_us_per_msg"] >= 0
        assert rows[1]["ferry_x"] == pytest.approx(rows[0]["msgs_per_s"] / rows[1]["msgs_per_s"],
                                                   rel=1e-3)
        assert f"== {name}:" in done.stdout
    baseline = next((tmp_path / "bench" / "baseline").iterdir())
    assert (baseline / "src" / "ferrymq" / "__init__.py").is_file()
    # The timestamped file and latest.json hold the same results.
    stamped = [p for p in results_dir.glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1
    assert json.loads(stamped[0].read_text()) == results
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pytest.skip("matplotlib not installed: the chart part is not checked")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
