"""Tests of ``ferrymq bench``: the pure pieces, and a quick real run against Ferry only."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ferrymq._bench._loadgen import _with_host, batch_failed, build_request
from ferrymq._bench._report import (
    FAILOVER_HEADERS,
    TABLE_HEADERS,
    add_ratios,
    failover_table_rows,
    render_workload,
    table_rows,
)
from ferrymq._bench._runner import (
    dry_runs,
    failover_row,
    pool_rounds,
    round_order,
    summarise_runs,
    target_notes,
)
from ferrymq._bench._stats import (
    CLOCK_TICKS_PER_S,
    cpu_ns_from_stat_line,
    first_ack_delays_ns,
    format_table,
    longest_gaps_ns,
    machine_busy_ns,
    main_thread_cpu_ns,
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
    assert main_thread_cpu_ns([2**22 + 12345]) == 0


def test_main_thread_cpu_leaves_out_other_threads() -> None:
    import threading

    own = os.getpid()

    def burn() -> None:
        deadline = time.thread_time() + 0.3
        while time.thread_time() < deadline:
            pass

    main_before, all_before = main_thread_cpu_ns([own]), session_cpu_ns([own])
    worker = threading.Thread(target=burn)
    worker.start()
    worker.join()
    main_spent = main_thread_cpu_ns([own]) - main_before
    all_spent = session_cpu_ns([own]) - all_before
    # The side thread's 0.3 s of CPU shows in the process's total, not in its main
    # thread's (ticks are 10 ms; the main thread only waited).
    assert all_spent >= 250_000_000
    assert main_spent <= 100_000_000
    assert session_pids(2**22 + 12345) == []  # beyond pid_max: no such process


def test_machine_busy_from_proc_stat() -> None:
    text = ("cpu  100 5 50 9000 40 3 2 7 0 0\n"
            "cpu0 50 2 25 4500 20 1 1 3 0 0\n")
    # user + nice + system + irq + softirq + steal; idle and iowait are not busy.
    assert machine_busy_ns(text) == (100 + 5 + 50 + 3 + 2 + 7) * 1_000_000_000 \
        // CLOCK_TICKS_PER_S
    assert machine_busy_ns(Path("/proc/stat").read_text()) > 0
    with pytest.raises(ValueError):
        machine_busy_ns("intr 1 2 3\n")


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


def _run(msgs: float) -> dict[str, object]:
    return {"msgs_per_s": msgs, "p50_ms": 1.0, "p99_ms": msgs / 100, "errors": 0,
            "server_cpu_us_per_msg": 10.0, "loadgen_cpu_pct": 5.0,
            "server_cpu_pct": 50.0, "rss_before_bytes": 1, "rss_after_bytes": 2,
            "messages": int(msgs), "elapsed_s": 1.0}


def _round_row(server: str, msgs: list[float], round_index: int | None = None
               ) -> dict[str, object]:
    runs = [_run(m) for m in msgs]
    row = summarise_runs(server, runs)
    row["_runs"] = runs
    if round_index is not None:
        row["_round"] = round_index
    row["prefilled"] = [300] * len(runs)
    return row


def test_rounds_pool_each_peers_runs_and_keep_each_rounds_median() -> None:
    failover = {"server": "c", "label": "c", "msgs_per_s": 1.0}  # no runs: kept as is
    rows = [_round_row("ferry-p1", [10.0, 11.0, 12.0]), _round_row("ferry-p2", [30.0, 31.0, 29.0]),
            failover,
            _round_row("ferry-p1", [20.0, 21.0, 22.0]), _round_row("ferry-p2", [35.0, 36.0, 34.0])]
    pooled = pool_rounds(rows)
    assert [r["label"] for r in pooled] == ["ferry-p1", "ferry-p2", "c"]
    p1, p2, kept = pooled
    assert kept is failover
    # The median of all six runs, and the latencies of that run.
    assert p1["msgs_per_s"] == 12.0 and p1["p99_ms"] == 0.12
    assert p1["runs_msgs_per_s"] == [10.0, 11.0, 12.0, 20.0, 21.0, 22.0]
    assert p1["rounds_msgs_per_s"] == [11.0, 21.0]
    assert p2["rounds_msgs_per_s"] == [30.0, 35.0]
    assert p1["prefilled"] == [300] * 6
    assert all("_runs" not in r and "_round" not in r for r in pooled)  # nothing raw
    assert p1["rounds"] == [0, 1]
    # One round: the row is left as it was, less its runs.
    (single,) = pool_rounds([_round_row("ferry", [5.0, 6.0, 7.0])])
    assert single["msgs_per_s"] == 6.0 and "rounds_msgs_per_s" not in single


def test_the_scaling_target_is_held_to_the_median_of_each_rounds_ratio() -> None:
    rows = pool_rounds([_round_row("ferry-p1", [10.0]), _round_row("ferry-p2", [17.0]),
                        _round_row("ferry-p1", [20.0]), _round_row("ferry-p2", [30.0]),
                        _round_row("ferry-p1", [10.0]), _round_row("ferry-p2", [15.0])])
    # Pooled, 17 against 10 would meet the target; round by round the ratios are
    # 1.7, 1.5 and 1.5.
    assert target_notes({"rows": rows}) == [
        "ferry-p2 vs ferry-p1: by round 1.70x, 1.50x, 1.50x, median 1.50x its msgs/s "
        "(target >= 1.6x: NOT met)"]
    # A round one side missed (its peer failed there) pairs nothing: rounds 0 and 2
    # (paired by position, 15 would meet 20: 0.75x). Of two, the lower median.
    gap = pool_rounds([_round_row("ferry-p1", [10.0], 0), _round_row("ferry-p2", [17.0], 0),
                       _round_row("ferry-p1", [20.0], 1),
                       _round_row("ferry-p1", [10.0], 2), _round_row("ferry-p2", [15.0], 2)])
    assert target_notes({"rows": gap}) == [
        "ferry-p2 vs ferry-p1: by round 1.70x, 1.50x, median 1.50x its msgs/s "
        "(target >= 1.6x: NOT met)"]
    one = pool_rounds([_round_row("ferry-p1", [10.0]), _round_row("ferry-p2", [17.0])])
    assert target_notes({"rows": one}) == [
        "ferry-p2 vs ferry-p1: 1.70x its msgs/s (target >= 1.6x: met)"]


def test_a_change_is_held_to_its_baseline_round_by_round_in_either_order() -> None:
    # Round 1 ran the peers in reverse (--rounds alternates the order): rows pair by
    # round, not by position.
    rows = pool_rounds([_round_row("ferry", [9.0], 0), _round_row("ferry-baseline", [10.0], 0),
                        _round_row("ferry-baseline", [20.0], 1), _round_row("ferry", [22.0], 1),
                        _round_row("ferry", [10.0], 2),
                        _round_row("ferry-baseline", [10.0], 2)])
    assert target_notes({"rows": rows}) == [
        "ferry vs ferry-baseline: by round 0.90x, 1.10x, 1.00x, median 1.00x its msgs/s"]
    peers = ["ferry", "ferry-baseline", "moto"]
    assert [round_order(peers, i) for i in range(3)] == [
        peers, ["moto", "ferry-baseline", "ferry"], peers]


def test_a_drain_that_ran_dry_is_told_from_one_that_filled_its_window() -> None:
    runs = [{"elapsed_s": 5.0}, {"elapsed_s": 3.8}, {"elapsed_s": 4.9}, {"elapsed_s": 0.2}]
    assert dry_runs(runs, 5.0) == [(1, 3.8), (3, 0.2)]
    assert dry_runs([{"elapsed_s": 5.0}], 5.0) == []


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


def test_with_host_renames_only_the_host_header() -> None:
    data = build_request("127.0.0.1", 9324, "SendMessage", b'{"Host: x":1}')
    moved = _with_host(data, "127.0.0.1", 9325)
    assert b"Host: 127.0.0.1:9325\r\n" in moved and b":9324" not in moved
    assert moved.endswith(b'\r\n\r\n{"Host: x":1}')  # the body is untouched
    assert len(moved) == len(data)


def test_collapsed_summary_self_and_total() -> None:
    from ferrymq._bench._profile import collapsed_summary

    raw = [
        "run (a/loop.py:10);handle (gw/http.py:5);decode (gw/json.py:7) 6\n",
        "run (a/loop.py:10);handle (gw/http.py:6) 3\n",
        # The same function at another line, recursing: one row, counted once per sample.
        "run (a/loop.py:10);run (a/loop.py:12);commit (st/sqlite.py:9) 1\n",
        "garbage line\n",
    ]
    text = collapsed_summary(raw)
    lines = text.splitlines()
    assert lines[0] == "10 samples"
    rows = {}
    for line in lines[2:]:
        match = re.fullmatch(r"\s*([\d.]+)\s+([\d.]+)  (.+)", line)
        if match:
            rows[match[3]] = [match[1], match[2]]
    assert rows["decode (json.py)"] == ["60.0", "60.0"]
    assert rows["handle (http.py)"] == ["30.0", "90.0"]
    assert rows["run (loop.py)"] == ["0.0", "100.0"]
    assert collapsed_summary([]) == "no samples\n"


# --- the cluster peers: failover and targets ---------------------------------------------

def test_first_ack_delays_count_only_requests_sent_after_the_mark() -> None:
    # (start, finish) pairs, deliberately unsorted.
    starts = [50, 10, 120, 95, 300]
    finishes = [400, 105, 130, 250, 310]
    # Mark 100: the request started at 10 finished at 105, after the mark, but was sent
    # before it (an answer the old leader wrote just before dying): not a recovery.
    # Of those sent at or after 100 (120->130, 300->310), the earliest finish is 130.
    assert first_ack_delays_ns(starts, finishes, [100]) == [30]
    # A request sent exactly at the mark counts; the earliest finish, not the earliest
    # start, decides (95 started first but finished at 250).
    assert first_ack_delays_ns(starts, finishes, [95]) == [35]
    assert first_ack_delays_ns(starts, finishes, [301]) == [None]  # nothing sent after
    assert first_ack_delays_ns([], [], [0]) == [None]
    with pytest.raises(ValueError):
        first_ack_delays_ns([1], [], [0])


def test_longest_gaps_inside_each_span() -> None:
    finishes = [40, 10, 20, 100, 110, 300]  # unsorted on purpose
    assert longest_gaps_ns(finishes, [(10, 110)]) == [60]  # 40 -> 100
    assert longest_gaps_ns(finishes, [(20, 45), (100, 1000)]) == [20, 190]
    assert longest_gaps_ns(finishes, [(101, 299), (300, 300)]) == [None, None]
    assert longest_gaps_ns(finishes, [(40, 300)]) == [190]  # both ends are inside


def test_failover_row_median_max_and_failed_rounds() -> None:
    rounds = [{"kill_ns": i, "first_ack_ms": d, "elected_ms": 2000.0 + i,
               "in_sync_ms": 4000.0 + i}
              for i, d in enumerate([2100.0, 2500.0, None, 2300.0])]
    load = {"sent": 1000, "msgs_per_s": 50.0, "errors": 7, "error_samples": ["503"]}
    row = failover_row("ferry-cluster", rounds, load, None)
    assert row["rounds"] == 4
    assert row["rounds_failed"] == 1  # the round with no acknowledged send after its kill
    assert row["first_ack_median_ms"] == 2300.0  # median of the three measured
    assert row["first_ack_max_ms"] == 2500.0
    assert row["elected_median_ms"] == 2001.0
    # A round that recovered but never got its old leader back in sync failed too, and
    # so did one broken off before its kill; neither counts as a kill nor hides the
    # recovery that was measured.
    stuck = {"kill_ns": 9, "first_ack_ms": 2200.0, "elected_ms": 2100.0}
    broken = failover_row("c", [rounds[0], stuck, {}], load, "round 3: no leader")
    assert (broken["rounds"], broken["rounds_failed"]) == (2, 2)
    assert broken["first_ack_max_ms"] == 2200.0 and broken["failure"] == "round 3: no leader"
    cells = failover_table_rows([row])
    assert len(cells[0]) == len(FAILOVER_HEADERS)
    assert cells[0][1:5] == ["4", "1", "2,300", "2,500"]
    text = render_workload("failover", {"description": "d", "rows": [], "failover": [row]})
    assert "kill → 1st ack median ms" in text and "2,300" in text


def test_target_notes_hold_each_cluster_row_against_ferry() -> None:
    rows = [_row("ferry", 20_000.0, 10.0), _row("ferry-cluster", 10_000.0, 20.0),
            _row("ferry-cluster-spread", 9_999.0, 20.5), _row("moto", 1.0, 900.0)]
    for row in rows:
        row["label"] = row["server"]
    notes = target_notes({"rows": rows})
    assert notes == [
        "ferry-cluster vs ferry: 50% of its msgs/s (target >= 50 %: met); "
        "p99 2.00x its p99 (each at its own saturation)",
        "ferry-cluster-spread vs ferry: 50% of its msgs/s (target >= 50 %: NOT met); "
        "p99 2.05x its p99 (each at its own saturation)",
    ]
    assert target_notes({"rows": rows[1:]}) == []  # no single node to compare with


def test_target_notes_hold_paced_rows_to_the_latency_target() -> None:
    rows = [_row("ferry", 1_000.0, 2.0), _row("ferry-cluster", 1_000.0, 3.9),
            _row("ferry-cluster-spread", 900.0, 4.1)]
    for row in rows:
        row["label"] = row["server"]
        row["paced"] = True
    assert target_notes({"rows": rows}) == [
        "ferry-cluster vs ferry at one offered load: p99 1.95x its p99 (target <= 2x: met)",
        "ferry-cluster-spread vs ferry at one offered load: p99 2.05x its p99 "
        "(target <= 2x: NOT met); it carried only 90% of the paced rate",
    ]


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


@pytest.mark.timeout(90)
def test_quick_bench_against_a_cluster_stops_every_process(tmp_path: Path) -> None:
    from ferrymq._cluster._local import load_state
    from ferrymq._coordination import ETCD_INSTALL_HINT, etcd_binary

    if etcd_binary() is None:
        pytest.skip(f"the cluster peer needs etcd: {ETCD_INSTALL_HINT}")
    bench_dir = tmp_path / "bench"
    results_dir = tmp_path / "results"
    done = subprocess.run(
        [sys.executable, "-m", "ferrymq", "bench", "--quick", "--peers", "ferry-cluster",
         "--workloads", "send,failover", "--duration", "0.5", "--warmup", "0.2",
         "--repeat", "1", "--failover-rounds", "1", "--failover-connections", "4",
         "--bench-dir", str(bench_dir), "--results-dir", str(results_dir),
         "--out", str(tmp_path / "chart.png")],
        capture_output=True, text=True, timeout=80, cwd=REPO_ROOT, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((results_dir / "latest.json").read_text())
    (row,) = results["workloads"]["send"]["rows"]
    assert row["server"] == "ferry-cluster"
    assert row["msgs_per_s"] > 0 and row["errors"] == 0, row["error_samples"]
    # Server CPU is the three nodes'; etcd is measured beside them.
    assert sorted(row["cpu_pct_by_process"]) == ["etcd1", "n1", "n2", "n3"]
    assert sorted(row["roles"].values()) == ["follower", "follower", "leader"]
    assert row["side_cpu_us_per_msg"] is not None
    assert sorted(row["main_thread_us_per_msg"]) == ["n1", "n2", "n3"]
    assert all(us > 0 for us in row["main_thread_us_per_msg"].values())
    (failover,) = results["workloads"]["failover"]["failover"]
    assert failover["rounds"] == 1 and failover["rounds_failed"] == 0, failover
    (only,) = failover["rounds_detail"]
    # Recovery cannot come before the lease of the killed leader lapses (2 s by default,
    # minus etcd's rounding), nor before etcd names the new leader.
    assert only["first_ack_ms"] >= 1000, only
    assert only["new_leader"] != only["killed"]
    assert "kill → 1st ack median ms" in done.stdout
    # Every process the cluster peer started is gone: each one's command line names its
    # data directory, inside the cluster's (the restarted node's too).
    # Two clusters: failover gets a fresh one (what send stored must not decide it).
    data_dirs = sorted((bench_dir / "data").iterdir())
    assert len(data_dirs) == 2
    for data_dir in data_dirs:
        state = load_state(data_dir)
        assert state is not None and len(state.records()) == 4
        assert _processes_naming(data_dir) == []
        assert not (data_dir / "nodes").exists()  # the stores are removed; logs stay


def _processes_naming(path: Path) -> list[str]:
    """Command lines of live processes that mention ``path``."""
    needle = os.fsencode(str(path))
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # ended meanwhile, or not ours to read
        if needle in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found
