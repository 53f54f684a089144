"""The bench orchestrator: which workloads exist, and running them against each server.

What belongs here: the workload catalogue (each turned into load-generator phases),
the settings derived from the command line, queue set-up/tear-down between runs,
running the pinned load-generator subprocess, and picking the median run. Servers live
in ``_servers``; output in ``_report``; the load itself in ``_loadgen``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ferrymq._bench._report import add_ratios, render_workload, write_chart, write_results
from ferrymq._bench._servers import (
    PeerUnavailable,
    ServerHandle,
    control_call,
    pin_prefix,
    start_server,
)
from ferrymq._bench._stats import median

__all__ = ["PEERS", "WORKLOADS", "Settings", "run_bench", "summarise_runs"]

PEERS = ("ferry", "moto", "localstack")
WORKLOADS: dict[str, str] = {
    "send": "SendMessage, one 1 KiB message per request, {conns} connections",
    "batch": "SendMessageBatch of 10 x 1 KiB, {conns} connections",
    "drain": "ReceiveMessage of 10 + DeleteMessageBatch on a pre-filled queue "
             "(target depth {drain_depth:,}), {conns} connections, until empty or the window ends",
    "mixed": "steady state: 4 producers (SendMessage 1 KiB) and 4 consumers (ReceiveMessage "
             "10, 1 s long poll, + DeleteMessageBatch); msgs/s = messages consumed",
    "latency": "SendMessage at low load: 1 connection paced at {paced_rate} requests/s",
    "fifo": "FIFO queue, SendMessageBatch of 10 x 1 KiB over 100 message groups, "
            "{conns} connections",
    "body64k": "SendMessage with a 64 KiB body, {big_conns} connections",
    "body256k": "SendMessage with a 256 KiB body, {big_conns} connections",
    "deep": "Ferry only: batch sends and receive+delete on an empty/shallow queue vs a queue "
            "holding {deep_depth:,} messages of 1 KiB; server RSS before/after the fill",
}
# Workloads whose throughput is set by the pacing, not the server: no ratio on msgs/s.
PACED_WORKLOADS = frozenset({"latency"})


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


def _queue_name(workload: str, server: str) -> str:
    return f"bench-{workload}-{server}-{uuid.uuid4().hex[:8]}"


def _create_queue(handle: ServerHandle, name: str, fifo: bool = False) -> str:
    params: dict[str, Any] = {"QueueName": name + (".fifo" if fifo else "")}
    if fifo:
        params["Attributes"] = {"FifoQueue": "true"}
    status, body = control_call(handle.port, "CreateQueue", params)
    if status != 200 or "QueueUrl" not in body:
        raise RuntimeError(f"{handle.name}: CreateQueue failed: {status} {body}")
    return str(body["QueueUrl"])


def _delete_queue(handle: ServerHandle, url: str) -> None:
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
                        "rate_per_s": s.paced_rate}], s)]
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


def _run_loadgen(handle: ServerHandle, phases: list[dict[str, Any]], s: Settings,
                 timeout_s: float) -> list[dict[str, Any]]:
    spec = {"host": "127.0.0.1", "port": handle.port, "server_pid": handle.pid,
            "phases": phases}
    command = pin_prefix(s.loadgen_cpu) + [sys.executable, "-m", "ferrymq._bench._loadgen"]
    try:
        done = subprocess.run(command, input=json.dumps(spec).encode(), capture_output=True,
                              timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"load generator did not finish within {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        raise RuntimeError("load generator failed:\n"
                           + done.stderr.decode(errors="replace")[-2000:])
    results: list[dict[str, Any]] = json.loads(done.stdout)
    return results


def _phase_timeout_s(phases: list[dict[str, Any]]) -> float:
    total = 60.0  # start-up, connection set-up and a slow server's last responses
    for phase in phases:
        total += float(phase.get("budget_s", 0)) + 30.0
        total += float(phase.get("warmup_s", 0)) + float(phase.get("duration_s", 0))
    return total


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
        "server_cpu_pct": chosen["server_cpu_pct"],
        "rss_before_bytes": chosen["rss_before_bytes"],
        "rss_after_bytes": chosen["rss_after_bytes"],
        "errors": sum(int(r["errors"]) for r in runs),
        "error_samples": [e for r in runs for e in r.get("error_samples", [])][:5],
        "runs_msgs_per_s": throughputs,
        "messages": chosen["messages"],
        "elapsed_s": chosen["elapsed_s"],
    }


def _run_workload(handle: ServerHandle, workload: str, s: Settings,
                  entry: dict[str, Any]) -> None:
    runs: list[dict[str, Any]] = []
    prefilled: list[int] = []
    for _rep in range(s.repeat):
        url = _create_queue(handle, _queue_name(workload, handle.name),
                            fifo=(workload == "fifo"))
        try:
            phases = _phases(workload, url, s)
            results = _run_loadgen(handle, phases, s, _phase_timeout_s(phases))
        finally:
            _delete_queue(handle, url)
        for result in results:
            if result["kind"] == "prefill":
                prefilled.append(int(result["sent"]))
        runs.append(results[-1])
    row = summarise_runs(handle.name, runs)
    if prefilled:
        row["prefilled"] = prefilled
        entry["notes"].append(f"{handle.name}: queue depth actually prefilled per run: "
                              + ", ".join(f"{n:,}" for n in prefilled)
                              + f" (target {s.drain_depth:,}, budget {s.prefill_budget_s:.0f} s)")
    if workload in PACED_WORKLOADS:
        row["paced"] = True
    entry["rows"].append(row)


def _run_deep(handle: ServerHandle, s: Settings, entry: dict[str, Any]) -> None:
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
        "workloads": {w: {"description": WORKLOADS[w].format(**fmt), "rows": [], "notes": [],
                          "skipped": {}} for w in workloads},
    }
    if s.server_cpu is None:
        print("bench: fewer than 2 usable cores; server and load generator are not pinned "
              "apart, so they compete for CPU", flush=True)
    for server in servers:
        print(f"bench: starting {server} ...", flush=True)
        try:
            handle = start_server(server, bench_dir, s.server_cpu, baseline_src=baseline_src)
        except PeerUnavailable as exc:
            print(f"bench: skipping {server}: {exc}", flush=True)
            for w in workloads:
                results["workloads"][w]["skipped"][server] = str(exc).splitlines()[0]
            continue
        try:
            for workload in workloads:
                entry = results["workloads"][workload]
                if workload == "deep" and server != "ferry":
                    entry["skipped"][server] = ("filling a deep queue would take hours at "
                                                "this peer's rate; Ferry only")
                    continue
                print(f"bench: {server}: {workload} ...", flush=True)
                started = time.monotonic()
                try:
                    if workload == "deep":
                        _run_deep(handle, s, entry)
                    else:
                        _run_workload(handle, workload, s, entry)
                except (RuntimeError, OSError, ValueError, KeyError) as exc:
                    print(f"bench: {server}: {workload} failed: {exc}", flush=True)
                    entry["skipped"][server] = f"failed: {str(exc).splitlines()[0]}"
                    if handle.process.poll() is not None:
                        print(f"bench: {server} died:\n{handle.log_tail()}", flush=True)
                        break
                print(f"bench: {server}: {workload} done in "
                      f"{time.monotonic() - started:.0f} s", flush=True)
        finally:
            handle.stop()
    any_rows = False
    print()
    for name, entry in results["workloads"].items():
        add_ratios(entry["rows"])
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
