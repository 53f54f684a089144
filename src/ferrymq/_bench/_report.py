"""Bench output: the per-workload text tables, the JSON results file and the PNG chart.

What belongs here: turning result rows (plain dicts) into text, files and a chart.
No servers, no load; everything here runs after the measurements.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ferrymq._bench._stats import format_table, ratio

__all__ = [
    "FAILOVER_HEADERS",
    "TABLE_HEADERS",
    "add_ratios",
    "failover_table_rows",
    "markdown_report",
    "render_workload",
    "table_rows",
    "write_chart",
    "write_results",
]

TABLE_HEADERS = ("server", "msgs/s", "p50 ms", "p99 ms", "CPU µs/msg", "server CPU", "RSS MiB",
                 "errors", "loadgen CPU", "other CPU", "Ferry × (msgs/s)", "p99 peer/Ferry")
FAILOVER_HEADERS = ("server", "kills", "failed", "kill → 1st ack median ms",
                    "kill → 1st ack max ms", "new leader median ms", "all in sync median s",
                    "longest gap after max ms", "sends acked", "refused/failed requests")


def _num(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f}%"


def _times(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Set each peer row's ratios against the Ferry row of the same workload, in place.

    ``ferry_x`` is Ferry's throughput over the peer's (>1: Ferry is faster);
    ``p99_peer_over_ferry`` is the peer's p99 over Ferry's (>1: Ferry's tail is lower).
    """
    ferry = next((r for r in rows if r.get("server") == "ferry" and not r.get("baseline")), None)
    for row in rows:
        row["ferry_x"] = None
        row["p99_peer_over_ferry"] = None
        if ferry is None or row is ferry or row.get("server") == "ferry":
            continue
        row["ferry_x"] = ratio(ferry["msgs_per_s"], row["msgs_per_s"])
        if ferry.get("p99_ms") is not None and row.get("p99_ms") is not None:
            row["p99_peer_over_ferry"] = ratio(row["p99_ms"], ferry["p99_ms"])


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for row in rows:
        rss = row.get("rss_after_bytes")
        errors = row.get("errors", 0)
        out.append([
            row.get("label") or row["server"],
            _num(row.get("msgs_per_s"), 0),
            _num(row.get("p50_ms"), 2),
            _num(row.get("p99_ms"), 2),
            _num(row.get("cpu_us_per_msg"), 1),
            _pct(row.get("server_cpu_pct")),
            _num(rss / 2**20 if rss else None, 0),
            f"{errors} ERRORS" if errors else "0",
            _pct(row.get("loadgen_cpu_pct")),
            _pct(row.get("other_cpu_pct")),
            _times(row.get("ferry_x")),
            _times(row.get("p99_peer_over_ferry")),
        ])
    return out


def failover_table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    out = []
    for row in rows:
        in_sync = row.get("in_sync_median_ms")
        out.append([
            row.get("label") or row["server"],
            str(row.get("rounds", 0)),
            str(row.get("rounds_failed", 0)),
            _num(row.get("first_ack_median_ms"), 0),
            _num(row.get("first_ack_max_ms"), 0),
            _num(row.get("elected_median_ms"), 0),
            _num(in_sync / 1000 if in_sync is not None else None, 1),
            _num(row.get("gap_after_max_ms"), 0),
            _num(row.get("sent"), 0),
            # Expected during a failover (refused connections, retriable 503s): a count,
            # not the loud ERRORS of a throughput table.
            str(row.get("errors", 0)),
        ])
    return out


def render_workload(name: str, entry: dict[str, Any]) -> str:
    """The text block for one workload: title, description, table, notes, skips."""
    lines = [f"== {name}: {entry.get('description', '')}"]
    rows = entry.get("rows", [])
    if rows:
        lines.append(format_table(TABLE_HEADERS, table_rows(rows)))
    if entry.get("failover"):
        lines.append(format_table(FAILOVER_HEADERS, failover_table_rows(entry["failover"])))
    for note in entry.get("notes", []):
        lines.append(f"   note: {note}")
    for server, reason in entry.get("skipped", {}).items():
        lines.append(f"   skipped {server}: {reason}")
    return "\n".join(lines)


def write_results(results: dict[str, Any], results_dir: Path, stamp: str) -> Path:
    """Write ``<stamp>.json``, ``latest.json`` and ``latest.md``; return the first path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results, indent=2, sort_keys=False)
    path = results_dir / f"{stamp}.json"
    path.write_text(text)
    (results_dir / "latest.json").write_text(text)
    (results_dir / "latest.md").write_text(markdown_report(results))
    return path


def write_chart(results: dict[str, Any], out: Path) -> str | None:
    """Grouped bars of msgs/s per workload per server (log scale); a notice if impossible."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'); chart skipped"
    # Paced and Ferry-only (baseline) rows say nothing about throughput side by side.
    workloads = [name for name, entry in results["workloads"].items()
                 if any(not r.get("baseline") and not r.get("paced")
                        for r in entry.get("rows", []))]
    servers: list[str] = []
    for name in workloads:
        for row in results["workloads"][name]["rows"]:
            if row["server"] not in servers:
                servers.append(row["server"])
    if not workloads or not servers:
        return "no results to chart"
    width = 0.8 / len(servers)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(workloads) + 2), 4.5))
    for index, server in enumerate(servers):
        values = []
        for name in workloads:
            row = next((r for r in results["workloads"][name]["rows"]
                        if r["server"] == server), None)
            values.append(row["msgs_per_s"] if row and row["msgs_per_s"] > 0 else math.nan)
        xs = [i + (index - (len(servers) - 1) / 2) * width for i in range(len(workloads))]
        ax.bar(xs, values, width, label=server)
    ax.set_yscale("log")
    ax.set_xticks(range(len(workloads)))
    ax.set_xticklabels(workloads, rotation=20)
    ax.set_ylabel("messages / s (log scale)")
    ax.set_title("ferrymq bench: throughput per workload (median of runs)")
    ax.legend()
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return None


def markdown_report(results: dict[str, Any]) -> str:
    """The numbers as Markdown, ready to paste into docs/benchmarks.md."""
    machine = results.get("machine", {})
    lines = [
        f"Command: `{results.get('command', '')}` — started {results.get('started_at', '')}",
        "",
        f"Machine: {machine.get('cpus')} CPUs ({machine.get('cpu_model')}), "
        f"{machine.get('memory_mib')} MiB RAM, Linux {machine.get('kernel')}, "
        f"Python {machine.get('python')}; server pinned to CPU "
        f"{results.get('settings', {}).get('server_cpu')}, load generator to CPU "
        f"{results.get('settings', {}).get('loadgen_cpu')}.",
        "",
    ]
    for name, entry in results["workloads"].items():
        lines.append(f"### {name}")
        lines.append("")
        lines.append(entry.get("description", ""))
        lines.append("")
        rows = entry.get("rows", [])
        if rows:
            lines.append("| " + " | ".join(TABLE_HEADERS) + " |")
            lines.append("|" + "---|" * len(TABLE_HEADERS))
            for cells in table_rows(rows):
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        if entry.get("failover"):
            lines.append("| " + " | ".join(FAILOVER_HEADERS) + " |")
            lines.append("|" + "---|" * len(FAILOVER_HEADERS))
            for cells in failover_table_rows(entry["failover"]):
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
        for note in entry.get("notes", []):
            lines.append(f"- {note}")
        for server, reason in entry.get("skipped", {}).items():
            lines.append(f"- skipped {server}: {reason}")
        lines.append("")
    return "\n".join(lines)
