"""The bench orchestrator: which workloads exist, and running them against each server.

What belongs here: the workload catalogue (each turned into load-generator phases),
the settings derived from the command line, queue set-up/tear-down between runs,
running the pinned load-generator subprocess, picking the median run, the failover
rounds against a cluster and the notes that hold a cluster against the single node's
targets. Servers live in ``_servers`` and ``_cluster``; output in ``_report``; the load
itself in ``_loadgen``.
"""

from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ferrymq._bench._cluster import (
    CLUSTER_PEERS,
    PARTITION_PEERS,
    ClusterHandle,
    start_cluster,
)
from ferrymq._bench._profile import Profiler, find_py_spy
from ferrymq._bench._report import add_ratios, render_workload, write_chart, write_results
from ferrymq._bench._servers import (
    PeerUnavailable,
    Server,
    control_call,
    pin_prefix,
    start_server,
)
from ferrymq._bench._stats import cpu_ns_from_stat_line, median, percentile

__all__ = ["DEFAULT_PEERS", "DEFAULT_WORKLOADS", "DRAIN_DEPTH_DEFAULT", "PACED_WINDOW_MIN_S",
           "PEERS", "WORKLOADS", "Settings", "dry_runs",
           "failover_row", "pool_rounds", "round_order", "run_bench", "summarise_runs",
           "target_notes"]

# What `ferrymq bench` runs without --peers: the published comparison with the SQS
# stand-ins. The cluster peers need etcd and take longer; they are asked for by name.
DEFAULT_PEERS = ("ferry", "moto", "localstack")
PEERS = (*DEFAULT_PEERS, *CLUSTER_PEERS)
WORKLOADS: dict[str, str] = {
    "send": "SendMessage, one 1 KiB message per request, {conns} connections",
    "batch": "SendMessageBatch of 10 x 1 KiB, {conns} connections",
    "drain": "ReceiveMessage of 10 + DeleteMessageBatch on a pre-filled queue "
             "(target depth {drain_depth:,}), {conns} connections, until empty or the window ends",
    "mixed": "steady state: 4 producers (SendMessage 1 KiB) and 4 consumers (ReceiveMessage "
             "10, 1 s long poll, + DeleteMessageBatch); msgs/s = messages consumed",
    "latency": "SendMessage at low load: 1 connection paced at {paced_rate} requests/s, "
               "{paced_window_s:.0f} s; latency from each request's scheduled time",
    "latency-load": "SendMessage at one offered load for every server: {loaded_conns} "
                    "connections each paced at {loaded_rate} requests/s "
                    "({loaded_total:,}/s), {paced_window_s:.0f} s; latency from each "
                    "request's scheduled time",
    "fifo": "FIFO queue, SendMessageBatch of 10 x 1 KiB over 100 message groups, "
            "{conns} connections",
    "body64k": "SendMessage with a 64 KiB body, {big_conns} connections",
    "body256k": "SendMessage with a 256 KiB body, {big_conns} connections",
    "deep": "Ferry only: batch sends and receive+delete on an empty/shallow queue vs a queue "
            "holding {deep_depth:,} messages of 1 KiB; server RSS before/after the fill",
    "longpoll": "partitioned peers only: one ReceiveMessage long poll (WaitTimeSeconds "
                "20) on a queue of {longpoll_partitions} partitions, through another "
                "node than the sender's where there is one; {longpoll_rounds} single "
                "sends at random moments, each timed from its acknowledgement to the "
                "poll's answer; then the nodes' CPU over {idle_window_s:.0f} s with the "
                "poll parked and no traffic, against {idle_window_s:.0f} s without it",
    "failover": "cluster only, on a fresh cluster: {failover_conns} producers (SendMessage "
                "1 KiB) and {failover_conns} consumers (ReceiveMessage 10, 1 s long poll, + "
                "DeleteMessageBatch) while the leader is killed with SIGKILL "
                "{failover_rounds} times (restarted and back in sync before the next); "
                "kill -> first acknowledged send",
}
# Without --workloads: all but the cluster-only ones.
DEFAULT_WORKLOADS = tuple(w for w in WORKLOADS if w not in ("failover", "longpoll"))
# longpoll (issue 8's fan-out measure): partitions of its queue, sends timed, and the
# idle windows. 4 partitions as the issue asks; 20 rounds of one send, each at a random
# 0.1-0.5 s after the poll is parked again.
LONGPOLL_PARTITIONS = 4
LONGPOLL_ROUNDS = 20
IDLE_WINDOW_S = 10.0
# Workloads whose throughput is set by the pacing, not the server: no ratio on msgs/s.
PACED_WORKLOADS = frozenset({"latency", "latency-load"})
# The paced workloads' window is at least this long: p99 of a window is its 1 % slowest
# requests, and at 50 requests/s a 5 s window has 250, so its p99 was the 3rd slowest
# request and moved 3x between runs; 20 s makes it the 10th of 1,000.
PACED_WINDOW_MIN_S = 20.0
# The drain's prefill: the drain has no warm-up, so its 5 s window runs dry above
# depth / 5 s. At 100,000 the two-partition peer (26k msgs/s here) ran dry 3.8 s in,
# and its rate took in the end of the drain, where one partition is empty before the
# other and every receive on its node goes to the other node: a tail the one-partition
# peer (17k msgs/s) never reached. 300,000 lasts a window at up to 60k msgs/s.
DRAIN_DEPTH_DEFAULT = 300_000
# A drain window shorter than this share of --duration ran dry (see dry_runs).
DRY_WINDOW_SHARE = 0.95
# latency-load: 8 connections x 125/s = 1,000 SendMessage/s, offered to both sides alike
# (open loop), so the latencies compare the two paths at one load instead of each at its
# own saturation (a closed loop there measures throughput again: Little's law). Few
# connections mean little group commit: on the 2-core VM of docs/benchmarks.md this is
# 40 % of a core for the single node and 140 % of the two cores for the cluster.
LOADED_CONNS = 8
LOADED_RATE_PER_CONN = 125
# The load generator's interpreter start-up before its warm-up begins: a profile spans it.
PROFILE_STARTUP_S = 0.5
# Steady load before each kill, so every round starts from a cluster serving normally.
FAILOVER_STEADY_S = 1.0
# After the last round the load generator computes and writes its report: seconds.
FAILOVER_REPORT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Settings:
    duration_s: float
    warmup_s: float
    repeat: int
    conns: int
    big_conns: int
    paced_rate: int
    drain_depth: int
    prefill_budget_s: float
    deep_depth: int
    deep_budget_s: float
    server_cpu: int | None
    loadgen_cpu: int | None
    failover_rounds: int = 10
    failover_conns: int = 8
    cluster_pinning: str = "shared"
    profile_dir: str | None = None
    # The paced workloads' window: --duration, but at least PACED_WINDOW_MIN_S (except
    # under --quick, whose numbers are a smoke test).
    paced_window_s: float = PACED_WINDOW_MIN_S
    # Rounds of every peer's workloads (--rounds); see pool_rounds.
    rounds: int = 1


def _queue_name(workload: str, server: str) -> str:
    return f"bench-{workload}-{server}-{uuid.uuid4().hex[:8]}"


def _create_queue(handle: Server, name: str, fifo: bool = False) -> str:
    params: dict[str, Any] = {"QueueName": name + (".fifo" if fifo else "")}
    if fifo:
        params["Attributes"] = {"FifoQueue": "true"}
    tags = handle.queue_tags if isinstance(handle, ClusterHandle) else None
    if tags:
        params["tags"] = dict(tags)
        if fifo:
            # A FIFO queue is partitioned only with deduplication per message group.
            params["Attributes"].update(DeduplicationScope="messageGroup",
                                        FifoThroughputLimit="perMessageGroupId")
    status, body = control_call(handle.port, "CreateQueue", params)
    if status != 200 or "QueueUrl" not in body:
        raise RuntimeError(f"{handle.name}: CreateQueue failed: {status} {body}")
    return str(body["QueueUrl"])


def _delete_queue(handle: Server, url: str) -> None:
    try:
        control_call(handle.port, "DeleteQueue", {"QueueUrl": url})
    except OSError as exc:
        print(f"bench: {handle.name}: DeleteQueue failed ({exc}); continuing", flush=True)


def _load(workers: list[dict[str, Any]], s: Settings, *, count: str = "sent",
          warmup: bool = True, duration_s: float | None = None) -> dict[str, Any]:
    return {"kind": "load", "workers": workers, "warmup_s": s.warmup_s if warmup else 0.0,
            "duration_s": duration_s if duration_s is not None else s.duration_s,
            "count": count}


def _phases(workload: str, url: str, s: Settings) -> list[dict[str, Any]]:
    """Load-generator phases for one run of ``workload`` on the queue at ``url``."""
    kib = 1024
    if workload == "send":
        return [_load([{"role": "send", "conns": s.conns, "queue_url": url}], s)]
    if workload == "batch":
        return [_load([{"role": "batch", "conns": s.conns, "queue_url": url}], s)]
    if workload == "fifo":
        return [_load([{"role": "batch", "conns": s.conns, "queue_url": url,
                        "fifo_groups": 100}], s)]
    if workload in ("body64k", "body256k"):
        size = 64 * kib if workload == "body64k" else 256 * kib
        return [_load([{"role": "send", "conns": s.big_conns, "queue_url": url,
                        "body_bytes": size}], s)]
    if workload == "latency":
        return [_load([{"role": "paced", "conns": 1, "queue_url": url,
                        "rate_per_s": s.paced_rate}], s, duration_s=s.paced_window_s)]
    if workload == "latency-load":
        return [_load([{"role": "paced", "conns": LOADED_CONNS, "queue_url": url,
                        "rate_per_s": LOADED_RATE_PER_CONN}], s,
                      duration_s=s.paced_window_s)]
    if workload == "mixed":
        return [_load([{"role": "send", "conns": 4, "queue_url": url},
                       {"role": "consume", "conns": 4, "queue_url": url, "wait_s": 1}],
                      s, count="consumed")]
    if workload == "drain":
        return [
            {"kind": "prefill", "queue_url": url, "count": s.drain_depth,
             "budget_s": s.prefill_budget_s, "conns": s.conns},
            _load([{"role": "consume", "conns": s.conns, "queue_url": url,
                    "stop_when_empty": True}], s, count="consumed", warmup=False),
        ]
    raise ValueError(f"unknown workload {workload!r}")


def _loadgen_spec(handle: Server, phases: list[dict[str, Any]], *,
                  measure_processes: bool = True) -> bytes:
    """The load generator's first stdin line. Without ``measure_processes`` it is told
    of no server process (their CPU means nothing across the kills of a failover)."""
    ports, spread = handle.endpoints()
    server, side = handle.processes() if measure_processes else ({}, {})
    spec = {"host": "127.0.0.1", "ports": ports, "spread": spread, "server_pids": server,
            "side_pids": side, "phases": phases}
    return json.dumps(spec).encode() + b"\n"


def _loadgen_command(s: Settings) -> list[str]:
    return pin_prefix(s.loadgen_cpu) + [sys.executable, "-m", "ferrymq._bench._loadgen"]


def _loadgen_results(returncode: int, stdout: bytes, stderr: bytes) -> list[dict[str, Any]]:
    if returncode != 0:
        raise RuntimeError("load generator failed:\n" + stderr.decode(errors="replace")[-2000:])
    results: list[dict[str, Any]] = json.loads(stdout)
    return results


def _run_loadgen(handle: Server, phases: list[dict[str, Any]], s: Settings,
                 timeout_s: float) -> list[dict[str, Any]]:
    try:
        done = subprocess.run(_loadgen_command(s), input=_loadgen_spec(handle, phases),
                              capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"load generator did not finish within {timeout_s:.0f} s") from exc
    return _loadgen_results(done.returncode, done.stdout, done.stderr)


def _phase_timeout_s(phases: list[dict[str, Any]]) -> float:
    total = 60.0  # start-up, connection set-up and a slow server's last responses
    for phase in phases:
        total += float(phase.get("budget_s", 0)) + 30.0
        total += float(phase.get("warmup_s", 0)) + float(phase.get("duration_s", 0))
    return total


def dry_runs(runs: list[dict[str, Any]], duration_s: float) -> list[tuple[int, float]]:
    """(index, seconds) of each drain run that emptied its queue before the window
    ended (its load generator then ends the window at the last delete)."""
    # The window's own end is measured to the last completion or the clock, which may
    # fall a little short of duration_s without the queue running dry.
    return [(i, float(r["elapsed_s"])) for i, r in enumerate(runs)
            if float(r["elapsed_s"]) < duration_s * DRY_WINDOW_SHARE]


def summarise_runs(server: str, runs: list[dict[str, Any]],
                   label: str | None = None) -> dict[str, Any]:
    """One table row from repeated runs: median throughput, the median run's latencies.

    The median run is the one whose throughput is the (lower) median, so its p50/p99,
    CPU per message and RSS come from one coherent measurement.
    """
    assert runs, "a row needs at least one run"
    throughputs = [r["msgs_per_s"] for r in runs]
    mid = median(throughputs)
    chosen = next(r for r in runs if r["msgs_per_s"] == mid)
    return {
        "server": server,
        "label": label or server,
        "msgs_per_s": mid,
        "p50_ms": chosen["p50_ms"],
        "p99_ms": chosen["p99_ms"],
        "cpu_us_per_msg": chosen["server_cpu_us_per_msg"],
        "loadgen_cpu_pct": chosen["loadgen_cpu_pct"],
        "other_cpu_pct": chosen.get("other_cpu_pct"),
        "server_cpu_pct": chosen["server_cpu_pct"],
        "rss_before_bytes": chosen["rss_before_bytes"],
        "rss_after_bytes": chosen["rss_after_bytes"],
        "cpu_pct_by_process": chosen.get("cpu_pct_by_process"),
        "main_thread_us_per_msg": chosen.get("main_thread_us_per_msg"),
        "side_cpu_pct": chosen.get("side_cpu_pct"),
        "side_cpu_us_per_msg": chosen.get("side_cpu_us_per_msg"),
        "errors": sum(int(r["errors"]) for r in runs),
        "error_samples": [e for r in runs for e in r.get("error_samples", [])][:5],
        "runs_msgs_per_s": throughputs,
        "messages": chosen["messages"],
        "elapsed_s": chosen["elapsed_s"],
    }


def _run_workload(handle: Server, workload: str, s: Settings, entry: dict[str, Any],
                  profiler: Profiler | None = None) -> None:
    runs: list[dict[str, Any]] = []
    prefilled: list[int] = []
    roles = None
    for rep in range(s.repeat):
        name = _queue_name(workload, handle.name)
        if isinstance(handle, ClusterHandle):
            handle.queue = name  # its replica set is the one measured
        url = _create_queue(handle, name, fifo=(workload == "fifo"))
        if isinstance(handle, ClusterHandle) and roles is None:
            # Known once the queue (and so its replica set) exists.
            roles = handle.roles()
        try:
            phases = _phases(workload, url, s)
            if profiler is not None:
                # The load generator's start-up (~0.3 s), warm-up and window; for drain
                # that is mostly its prefill.
                profiler.start(f"{handle.name}-{workload}-{rep + 1}", handle.processes()[0],
                               PROFILE_STARTUP_S + s.warmup_s + s.duration_s)
            try:
                results = _run_loadgen(handle, phases, s, _phase_timeout_s(phases))
            finally:
                if profiler is not None:
                    profiler.finish()
        finally:
            _delete_queue(handle, url)
        for result in results:
            if result["kind"] == "prefill":
                prefilled.append(int(result["sent"]))
        runs.append(results[-1])
    row = summarise_runs(handle.name, runs, _label(handle))
    # Only for pool_rounds, which takes it off before anything is written.
    row[_RUNS_KEY] = runs
    if prefilled:
        row["prefilled"] = prefilled
        entry["notes"].append(f"{handle.name}: queue depth actually prefilled per run: "
                              + ", ".join(f"{n:,}" for n in prefilled)
                              + f" (target {s.drain_depth:,}, budget {s.prefill_budget_s:.0f} s)")
        dry = dry_runs(runs, s.duration_s)
        if dry:
            entry["notes"].append(
                f"{handle.name}: the queue ran dry within the window in "
                + ", ".join(f"run {i + 1} (after {t:.1f} s)" for i, t in dry)
                + ": its rate includes the end of the drain; a deeper queue (--drain-depth, "
                "and --prefill-budget if the prefill fell short) measures the steady rate")
    if workload in PACED_WORKLOADS:
        row["paced"] = True
    if roles is not None:
        row["roles"] = roles
        entry["notes"].append(_process_note(row))
    entry["rows"].append(row)


def _label(handle: Server) -> str:
    """The row's name: a cluster whose leader has a core to itself says so."""
    if isinstance(handle, ClusterHandle) and handle.pinning != "shared":
        return f"{handle.name} ({handle.pinning})"
    return handle.name


def _process_note(row: dict[str, Any]) -> str:
    """Where a cluster's CPU went in the median run: each node (and its role, and its
    event loop's µs per message) and etcd."""
    by_process = row.get("cpu_pct_by_process") or {}
    roles = row.get("roles") or {}
    main = row.get("main_thread_us_per_msg") or {}
    parts = [f"{name}{' (' + str(roles[name]) + ')' if roles.get(name) else ''} "
             f"{pct:.0f}%" + (f" (event loop {main[name]:.1f} µs/msg)" if name in main else "")
             for name, pct in sorted(by_process.items())]
    side = row.get("side_cpu_us_per_msg")
    return (f"{row['label']}: CPU by process: {', '.join(parts)}; etcd "
            + (f"{side:.1f} µs/msg" if side is not None else "—")
            + " (not in CPU µs/msg, which sums the nodes)")


def target_notes(entry: dict[str, Any]) -> list[str]:
    """Each cluster row held against the issue's targets for the single node's row of
    the same workload: >= 50 % of its throughput on the throughput workloads, p99 <= 2x
    its p99 on the paced ones (one offered load for both). A closed loop at saturation
    gives each side its own load: the cluster at half the throughput waits twice as
    long in the same connections' queue (Little's law), so its p99 there is reported,
    not held to the latency target."""
    rows = entry.get("rows", [])
    notes = _scaling_notes(rows)
    ferry = next((r for r in rows if r.get("server") == "ferry" and not r.get("baseline")),
                 None)
    if ferry is None or not ferry.get("msgs_per_s"):
        return notes
    for row in rows:
        if row.get("server") not in CLUSTER_PEERS or row.get("server") in PARTITION_PEERS:
            continue
        kept = row["msgs_per_s"] / ferry["msgs_per_s"]
        times = (row["p99_ms"] / ferry["p99_ms"]
                 if row.get("p99_ms") is not None and ferry.get("p99_ms") else None)
        if row.get("paced"):
            text = f"{row['label']} vs ferry at one offered load: "
            text += ("p99 unknown" if times is None else
                     f"p99 {times:.2f}x its p99 (target <= 2x: "
                     f"{'met' if times <= 2.0 else 'NOT met'})")
            if kept < 0.98:
                text += f"; it carried only {kept:.0%} of the paced rate"
        else:
            text = (f"{row['label']} vs ferry: {kept:.0%} of its msgs/s (target >= 50 %: "
                    f"{'met' if kept >= 0.5 else 'NOT met'})")
            if times is not None:
                text += f"; p99 {times:.2f}x its p99 (each at its own saturation)"
        notes.append(text)
    return notes


# A row's raw runs and the round that made it, kept on it until pool_rounds has
# pooled them.
_RUNS_KEY = "_runs"
_ROUND_KEY = "_round"


def pool_rounds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per peer from the rows each round made (``--rounds``), in first-seen
    order: the median over all its runs, with ``rounds_msgs_per_s`` (each round's own
    median) and ``rounds`` (which rounds those were: a peer that failed in one has
    none from it) when there was more than one round. Rows without runs (deep,
    failover, longpoll) are kept as they are. Takes the runs off every row.

    Why rounds: this VM's speed drifts over minutes (one peer's drain ran at 12.9k and
    20.0k msgs/s three minutes apart), and the bench runs one peer's repeats after the
    other's, so a ratio of two peers also measures the drift between their turns.
    Rounds alternate the peers, and each round's ratio compares runs one turn apart."""
    pooled: list[dict[str, Any]] = []
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        runs = row.get(_RUNS_KEY)
        if runs is None:
            pooled.append(row)
            continue
        group = by_label.get(row["label"])
        if group is None:
            by_label[row["label"]] = [row]
            pooled.append(row)
        else:
            group.append(row)
    at = {id(row): i for i, row in enumerate(pooled)}
    for label, group in by_label.items():
        first = group[0]
        if len(group) > 1:
            merged = {**first, **summarise_runs(first["server"],
                                                [r for g in group for r in g[_RUNS_KEY]],
                                                label)}
            prefilled = [n for g in group for n in g.get("prefilled", [])]
            if prefilled:
                merged["prefilled"] = prefilled
            merged["rounds_msgs_per_s"] = [g["msgs_per_s"] for g in group]
            merged["rounds"] = [g.get(_ROUND_KEY, i) for i, g in enumerate(group)]
            pooled[at[id(first)]] = merged
    for row in pooled:
        row.pop(_RUNS_KEY, None)
        row.pop(_ROUND_KEY, None)
    return pooled


# Peers held side by side, round by round: (the one measured, the one it is measured
# against, the target ratio or None when the ratio is only reported). Issue 8's
# partition scaling, and a change against its --baseline.
_SCALING = (("ferry-p2", "ferry-p1", 1.6), ("ferry-p3r3", "ferry-p1r3", None),
            ("ferry", "ferry-baseline", None))


def _scaling_notes(rows: list[dict[str, Any]]) -> list[str]:
    """Paired peers side by side: msgs/s of more partitions on more nodes against one
    partition, and of this checkout against its baseline (throughput workloads only)."""
    by_server = {r.get("server"): r for r in rows if not r.get("paced")}
    notes = []
    for more, fewer, target in _SCALING:
        a, b = by_server.get(more), by_server.get(fewer)
        if a is None or b is None or not b.get("msgs_per_s"):
            continue
        times = a["msgs_per_s"] / b["msgs_per_s"]
        text = f"{more} vs {fewer}: {times:.2f}x its msgs/s"
        # Paired by round: a round one side missed has no ratio.
        of_b = dict(zip(b.get("rounds") or [], b.get("rounds_msgs_per_s") or [],
                        strict=True))
        by_round = [x / of_b[r] for r, x in zip(a.get("rounds") or [],
                                                a.get("rounds_msgs_per_s") or [], strict=True)
                    if of_b.get(r)]
        if len(by_round) > 1:
            # Each round's two sides ran one turn apart (about a minute at --repeat 1);
            # the pooled medians mix runs from the whole bench. The median of the
            # rounds' ratios is the one held to the target.
            times = median(by_round)
            text = (f"{more} vs {fewer}: by round " + ", ".join(f"{x:.2f}x" for x in by_round)
                    + f", median {times:.2f}x its msgs/s")
        if target is not None:
            text += f" (target >= {target}x: {'met' if times >= target else 'NOT met'})"
        notes.append(text)
    return notes


def _run_deep(handle: Server, s: Settings, entry: dict[str, Any]) -> None:
    """Empty vs deep queue, once (a 1M fill is too long to repeat)."""
    shallow = _create_queue(handle, _queue_name("deep-shallow", handle.name))
    deep = _create_queue(handle, _queue_name("deep-deep", handle.name))

    def batch(url: str) -> list[dict[str, Any]]:
        return [{"role": "batch", "conns": s.conns, "queue_url": url}]

    def consume(url: str) -> list[dict[str, Any]]:
        return [{"role": "consume", "conns": s.conns, "queue_url": url,
                 "stop_when_empty": True}]

    phases = [
        {"kind": "rss"},
        _load(batch(shallow), s),
        _load(consume(shallow), s, count="consumed", warmup=False),
        {"kind": "rss"},
        {"kind": "prefill", "queue_url": deep, "count": s.deep_depth,
         "budget_s": s.deep_budget_s, "conns": s.conns},
        {"kind": "rss"},
        _load(batch(deep), s),
        _load(consume(deep), s, count="consumed", warmup=False),
        {"kind": "rss"},
    ]
    try:
        results = _run_loadgen(handle, phases, s, _phase_timeout_s(phases))
    finally:
        _delete_queue(handle, shallow)
        _delete_queue(handle, deep)
    (rss_start, send_empty, recv_shallow, rss_before_fill, fill, rss_after_fill,
     send_deep, recv_deep, rss_end) = results
    depth = int(fill["sent"])
    rows = [
        summarise_runs("ferry", [send_empty], "ferry send, empty queue"),
        summarise_runs("ferry", [send_deep], f"ferry send, {depth:,} deep"),
        summarise_runs("ferry", [recv_shallow], "ferry receive+delete, shallow"),
        summarise_runs("ferry", [recv_deep], f"ferry receive+delete, {depth:,} deep"),
    ]
    for row in rows:
        row["baseline"] = True  # rows compare with each other, not with peers
    entry["rows"].extend(rows)
    grown = rss_after_fill["rss_bytes"] - rss_before_fill["rss_bytes"]
    per_million = grown / depth * 1_000_000 if depth else None
    send_change = (send_deep["msgs_per_s"] / send_empty["msgs_per_s"] - 1.0
                   if send_empty["msgs_per_s"] else None)
    recv_change = (recv_deep["msgs_per_s"] / recv_shallow["msgs_per_s"] - 1.0
                   if recv_shallow["msgs_per_s"] else None)
    entry["deep"] = {
        "depth": depth,
        "fill_elapsed_s": fill["elapsed_s"],
        "fill_errors": fill["errors"],
        "rss_start_bytes": rss_start["rss_bytes"],
        "rss_before_fill_bytes": rss_before_fill["rss_bytes"],
        "rss_after_fill_bytes": rss_after_fill["rss_bytes"],
        "rss_end_bytes": rss_end["rss_bytes"],
        "rss_growth_per_million_bytes": per_million,
        "send_change": send_change,
        "receive_change": recv_change,
    }
    mib = 2**20
    entry["notes"].append(
        f"filled {depth:,} messages in {fill['elapsed_s']:.0f} s "
        f"({fill['errors']} errors); server RSS {rss_before_fill['rss_bytes'] / mib:,.0f} MiB "
        f"before the fill, {rss_after_fill['rss_bytes'] / mib:,.0f} MiB after, "
        f"{rss_end['rss_bytes'] / mib:,.0f} MiB at the end"
        + (f"; ≈ {per_million / mib:,.0f} MiB per million messages" if per_million else ""))
    if send_change is not None and recv_change is not None:
        entry["notes"].append(
            f"deep vs empty/shallow: sends {send_change:+.0%}, receives {recv_change:+.0%} "
            "(target: neither slower by more than 20 %)")


def failover_row(server: str, rounds: list[dict[str, Any]], load: dict[str, Any],
                 failure: str | None) -> dict[str, Any]:
    """The failover table's row: kill -> first acknowledged send, median and maximum over
    the rounds. ``rounds`` holds every round begun; one failed when no send was
    acknowledged after its kill, or it never got back to a full in-sync set (or never
    reached its kill)."""
    measured = [r["first_ack_ms"] for r in rounds if r.get("first_ack_ms") is not None]
    elected = [r["elected_ms"] for r in rounds if r.get("elected_ms") is not None]
    in_sync = [r["in_sync_ms"] for r in rounds if r.get("in_sync_ms") is not None]
    gaps = [r["longest_gap_after_ms"] for r in rounds
            if r.get("longest_gap_after_ms") is not None]
    return {
        "server": server,
        "label": server,
        "rounds": sum(1 for r in rounds if "kill_ns" in r),
        "rounds_failed": sum(1 for r in rounds if r.get("first_ack_ms") is None
                             or r.get("in_sync_ms") is None),
        "first_ack_median_ms": median(measured) if measured else None,
        "first_ack_max_ms": max(measured) if measured else None,
        "elected_median_ms": median(elected) if elected else None,
        "in_sync_median_ms": median(in_sync) if in_sync else None,
        "gap_after_max_ms": max(gaps) if gaps else None,
        "sent": load.get("sent"),
        "msgs_per_s": load.get("msgs_per_s"),
        "errors": load.get("errors", 0),
        "error_samples": load.get("error_samples", []),
        "error_kinds": load.get("error_kinds", {}),
        "failure": failure,
        "rounds_detail": rounds,
    }


def _read_text(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def _run_longpoll(handle: ClusterHandle, entry: dict[str, Any]) -> None:
    """See WORKLOADS["longpoll"]. The poll and the sends are plain JSON-protocol calls
    from this process (a thread for the poll), not the load generator: one request at
    a time each, timed by one clock."""
    rng = random.Random(8)
    name = _queue_name("longpoll", handle.name)
    handle.queue = name
    params = {"QueueName": name, "tags": {"ferry:partitions": str(LONGPOLL_PARTITIONS),
                                          "ferry:replicas": "1"}}
    ports, _ = handle.endpoints()
    status, body = control_call(ports[0], "CreateQueue", params)
    if status != 200 or "QueueUrl" not in body:
        raise RuntimeError(f"{handle.name}: CreateQueue failed: {status} {body}")
    url = str(body["QueueUrl"])
    send_port, poll_port = ports[0], ports[-1]
    answers: list[tuple[int, int]] = []  # (monotonic ns answered, messages)
    parked = threading.Event()
    # Notified on every answer of the poll: the sender waits on it, not in a loop.
    answered_any = threading.Condition()
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            parked.set()
            got, doc = control_call(poll_port, "ReceiveMessage",
                                    {"QueueUrl": url, "WaitTimeSeconds": 20,
                                     "MaxNumberOfMessages": 10}, timeout_s=30)
            answered = time.monotonic_ns()
            messages = (doc.get("Messages") or []) if got == 200 else []
            with answered_any:
                answers.append((answered, len(messages)))
                answered_any.notify_all()
            if messages:
                control_call(poll_port, "DeleteMessageBatch", {"QueueUrl": url, "Entries": [
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)]})

    def cpu_ns() -> int:
        total = 0
        for pid in handle.processes()[0].values():
            line = _read_text(f"/proc/{pid}/stat")
            total += cpu_ns_from_stat_line(line) if line else 0
        return total

    # No poll, no traffic: the nodes' own idle cost.
    before = cpu_ns()
    time.sleep(IDLE_WINDOW_S)
    idle_ns = cpu_ns() - before
    poller = threading.Thread(target=poll, name="bench-longpoll", daemon=True)
    poller.start()
    delays_ms: list[float] = []
    try:
        parked.wait(5)
        time.sleep(0.5)
        # The poll parked on every partition, nothing sent: what waiting costs.
        before = cpu_ns()
        time.sleep(IDLE_WINDOW_S)
        parked_ns = cpu_ns() - before
        for _ in range(LONGPOLL_ROUNDS):
            parked.clear()
            time.sleep(rng.uniform(0.1, 0.5))
            seen = len(answers)
            status, _ = control_call(send_port, "SendMessage",
                                     {"QueueUrl": url, "MessageBody": "wake"})
            acked = time.monotonic_ns()
            if status != 200:
                raise RuntimeError(f"{handle.name}: SendMessage failed: {status}")
            def woken_at(seen: int = seen) -> int | None:
                return next((t for t, n in answers[seen:] if n), None)

            with answered_any:
                answered_any.wait_for(lambda: woken_at() is not None, 25)
                woken = woken_at()
            if woken is None:
                raise RuntimeError(f"{handle.name}: the long poll missed a message")
            delays_ms.append(max(0.0, (woken - acked) / 1e6))
            parked.wait(5)
    finally:
        stop.set()
        control_call(send_port, "SendMessage", {"QueueUrl": url, "MessageBody": "stop"})
        poller.join(30)
        _delete_queue(handle, url)
    ordered = sorted(delays_ms)
    result = {
        "server": handle.name, "rounds": len(ordered),
        "wake_ms_p50": percentile(ordered, 0.50), "wake_ms_p99": percentile(ordered, 0.99),
        "wake_ms_max": ordered[-1] if ordered else None,
        "idle_cpu_pct": 100 * idle_ns / (IDLE_WINDOW_S * 1e9),
        "parked_cpu_pct": 100 * parked_ns / (IDLE_WINDOW_S * 1e9),
        "empty_answers_while_parked": sum(1 for _, n in answers if not n),
    }
    entry.setdefault("longpoll", []).append(result)
    entry["notes"].append(
        f"{handle.name}: woken {result['wake_ms_p50']:.1f} ms (p50), "
        f"{result['wake_ms_p99']:.1f} ms (p99), {result['wake_ms_max']:.1f} ms (max) after "
        f"the send's acknowledgement, over {len(ordered)} sends; nodes' CPU "
        f"{result['parked_cpu_pct']:.2f} % with the poll parked against "
        f"{result['idle_cpu_pct']:.2f} % without")


def _run_failover(handle: ClusterHandle, s: Settings, entry: dict[str, Any]) -> None:
    """Steady sends while the leader is killed ``failover_rounds`` times; the load
    generator runs until told, then answers each kill time with its first ack after."""
    name = _queue_name("failover", handle.name)
    handle.queue = name
    url = _create_queue(handle, name)
    # Consumers keep the queue shallow: a killed leader rejoins through a snapshot of
    # the store, whose time grows with the store; a queue that only grew would make
    # each round wait longer for the cluster to be in sync again.
    phases = [{"kind": "load", "until_told": True, "warmup_s": 0.0, "count": "sent",
               "workers": [{"role": "send", "conns": s.failover_conns, "queue_url": url},
                           {"role": "consume", "conns": s.failover_conns, "queue_url": url,
                            "wait_s": 1}]}]
    spec = _loadgen_spec(handle, phases, measure_processes=False)
    proc = subprocess.Popen(_loadgen_command(s), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rounds: list[dict[str, Any]] = []
    failure: str | None = None
    try:
        if proc.stdin is None:
            raise RuntimeError("the load generator has no stdin")  # stdin=PIPE above
        proc.stdin.write(spec)
        proc.stdin.flush()
        for index in range(s.failover_rounds):
            record: dict[str, Any] = {}
            try:
                handle.wait_in_sync()
                time.sleep(FAILOVER_STEADY_S)
                handle.fail_over(record)
            except (RuntimeError, OSError) as exc:
                failure = f"round {index + 1}: {str(exc).splitlines()[0]}"
                print(f"bench: {handle.name}: failover {failure}", flush=True)
                rounds.append(record)
                break
            rounds.append(record)
            last = rounds[-1]
            print(f"bench: {handle.name}: failover {index + 1}/{s.failover_rounds}: "
                  f"killed {last['killed']}, {last['new_leader']} leads after "
                  f"{last['elected_ms']:.0f} ms, all in sync after {last['in_sync_ms']:.0f} ms",
                  flush=True)
        killed = [r for r in rounds if "kill_ns" in r]
        marks = json.dumps({"marks_ns": [r["kill_ns"] for r in killed]}).encode() + b"\n"
        try:
            out, err = proc.communicate(marks, timeout=FAILOVER_REPORT_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError("the failover load generator did not report") from exc
        (load,) = _loadgen_results(proc.returncode, out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _delete_queue(handle, url)
    for r, delay, gap in zip(killed, load.get("first_ack_ms", []),
                             load.get("longest_gap_after_ms", []), strict=False):
        r["first_ack_ms"] = delay
        r["longest_gap_after_ms"] = gap
    row = failover_row(handle.name, rounds, load, failure)
    row["label"] = _label(handle)
    entry.setdefault("failover", []).append(row)


def _machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {"cpu_model": model, "cpus": os.cpu_count(), "memory_mib": mem_kib // 1024,
            "kernel": platform.release(), "python": platform.python_version()}


def run_bench(servers: list[str], workloads: list[str], s: Settings, *, bench_dir: Path,
              results_dir: Path, chart_path: Path, command: str,
              baseline_src: Path | None = None) -> int:
    """Run everything, print the tables, write results and chart; 0 unless nothing ran.
    ``baseline_src``: the ``src`` folder of the Ferry that ``ferry-baseline`` runs."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    fmt = asdict(s)
    results: dict[str, Any] = {
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": command,
        "machine": _machine(),
        "settings": fmt,
        "workloads": {w: {"description": WORKLOADS[w].format(
                              **fmt, loaded_conns=LOADED_CONNS, loaded_rate=LOADED_RATE_PER_CONN,
                              loaded_total=LOADED_CONNS * LOADED_RATE_PER_CONN,
                              longpoll_partitions=LONGPOLL_PARTITIONS,
                              longpoll_rounds=LONGPOLL_ROUNDS, idle_window_s=IDLE_WINDOW_S),
                          "rows": [], "notes": [],
                          "skipped": {}} for w in workloads},
    }
    if s.server_cpu is None:
        print("bench: fewer than 2 usable cores; server and load generator are not pinned "
              "apart, so they compete for CPU", flush=True)
    profiler: Profiler | None = None
    if s.profile_dir is not None:
        py_spy = find_py_spy()
        if py_spy is None:
            print("bench: --profile needs py-spy (pip install py-spy); running unprofiled",
                  flush=True)
        else:
            profiler = Profiler(py_spy, Path(s.profile_dir), s.loadgen_cpu)
    for round_index in range(s.rounds):
        if s.rounds > 1:
            print(f"bench: round {round_index + 1} of {s.rounds}", flush=True)
        _run_round(round_order(servers, round_index), workloads, s, results, bench_dir,
                   baseline_src, profiler)
        for entry in results["workloads"].values():
            for row in entry["rows"]:
                row.setdefault(_ROUND_KEY, round_index)
    any_rows = False
    print()
    for name, entry in results["workloads"].items():
        entry["rows"] = pool_rounds(entry["rows"])
        add_ratios(entry["rows"])
        entry["notes"].extend(target_notes(entry))
        if name in PACED_WORKLOADS:
            for row in entry["rows"]:
                row["ferry_x"] = None  # both sides run at the pacing rate
        any_rows = any_rows or bool(entry["rows"])
        print(render_workload(name, entry))
        print()
    path = write_results(results, results_dir, stamp)
    print(f"bench: results written to {path} and {results_dir / 'latest.json'}")
    notice = write_chart(results, chart_path)
    print(f"bench: {notice}" if notice else f"bench: chart written to {chart_path}")
    return 0 if any_rows else 1


def round_order(servers: list[str], round_index: int) -> list[str]:
    """The peers' turns in round ``round_index``: every other round runs them in
    reverse, so no peer always goes first (into a cold page cache, or the VM's drift)
    and a pair's per-round ratios carry that bias in both directions."""
    return list(servers) if round_index % 2 == 0 else servers[::-1]


def _run_round(servers: list[str], workloads: list[str], s: Settings,
               results: dict[str, Any], bench_dir: Path, baseline_src: Path | None,
               profiler: Profiler | None) -> None:
    """Every peer in turn, started, through every workload, stopped."""
    for server in servers:
        print(f"bench: starting {server} ...", flush=True)
        handle: Server
        try:
            if server in CLUSTER_PEERS:
                handle = start_cluster(server, bench_dir, s.server_cpu,
                                       pinning=s.cluster_pinning, side_cpu=s.loadgen_cpu)
            else:
                handle = start_server(server, bench_dir, s.server_cpu,
                                      baseline_src=baseline_src)
        except PeerUnavailable as exc:
            print(f"bench: skipping {server}: {exc}", flush=True)
            for w in workloads:
                results["workloads"][w]["skipped"][server] = str(exc).splitlines()[0]
            continue
        try:
            ran = 0
            for workload in workloads:
                entry = results["workloads"][workload]
                if workload == "deep" and server != "ferry":
                    entry["skipped"][server] = ("filling a deep queue would take hours at "
                                                "this peer's rate; Ferry only")
                    continue
                if workload == "failover" and not isinstance(handle, ClusterHandle):
                    entry["skipped"][server] = "one server has no leader to fail over"
                    continue
                if workload == "longpoll" and server not in PARTITION_PEERS:
                    entry["skipped"][server] = "no partitions to poll across"
                    continue
                print(f"bench: {server}: {workload} ...", flush=True)
                started = time.monotonic()
                try:
                    if workload == "failover" and isinstance(handle, ClusterHandle) and ran:
                        # Killed leaders rejoin through snapshots of the store, whose
                        # time grows with it: what earlier workloads stored must not
                        # decide how long each round waits to be in sync again.
                        print(f"bench: {server}: a fresh cluster for failover", flush=True)
                        handle.stop()
                        handle = start_cluster(server, bench_dir, s.server_cpu,
                                               pinning=s.cluster_pinning,
                                               side_cpu=s.loadgen_cpu)
                    ran += 1
                    if workload == "deep":
                        _run_deep(handle, s, entry)
                    elif workload == "failover" and isinstance(handle, ClusterHandle):
                        _run_failover(handle, s, entry)
                    elif workload == "longpoll" and isinstance(handle, ClusterHandle):
                        _run_longpoll(handle, entry)
                    else:
                        _run_workload(handle, workload, s, entry, profiler)
                except (RuntimeError, OSError, ValueError, KeyError, PeerUnavailable) as exc:
                    print(f"bench: {server}: {workload} failed: {exc}", flush=True)
                    entry["skipped"][server] = f"failed: {str(exc).splitlines()[0]}"
                    if not handle.alive():
                        print(f"bench: {server} died:\n{handle.log_tail()}", flush=True)
                        break
                print(f"bench: {server}: {workload} done in "
                      f"{time.monotonic() - started:.0f} s", flush=True)
        finally:
            handle.stop()
