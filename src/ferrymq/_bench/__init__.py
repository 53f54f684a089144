"""``ferrymq bench``: Ferry and its peers, side by side, under the same load.

This module only holds the two hooks the CLI calls: the options and the entry point.
The orchestration is in ``_runner``, the servers in ``_servers``, the load generator
in ``_loadgen``, the output in ``_report`` and the pure helpers in ``_stats``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path

__all__ = ["add_arguments", "run"]


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the bench options to the ``ferrymq bench`` sub-parser."""
    from ferrymq._bench._runner import (
        DEFAULT_PEERS,
        DEFAULT_WORKLOADS,
        DRAIN_DEPTH_DEFAULT,
        PEERS,
        WORKLOADS,
    )

    parser.add_argument("--peers", type=_csv, default=list(DEFAULT_PEERS),
                        help="comma-separated servers to run, in order, of "
                        f"{','.join(PEERS)} (default: {','.join(DEFAULT_PEERS)}); "
                        "ferry-cluster is 3 nodes with 3 sync replicas and etcd, clients on "
                        "the leader; ferry-cluster-spread the same with clients spread over "
                        "every node; ferry-pN is N nodes and one queue of N partitions of 1 "
                        "replica, ferry-p1r3 / ferry-p3r3 3 nodes and 1 / 3 partitions of 3 "
                        "replicas, clients spread over the nodes")
    parser.add_argument("--baseline", default=None, metavar="REF",
                        help="also run Ferry as of git REF (a commit, tag or branch of this "
                        "checkout) as the server 'ferry-baseline', side by side with the "
                        "working tree's Ferry, so a change's effect is a ratio from one run")
    parser.add_argument("--workloads", type=_csv, default=list(DEFAULT_WORKLOADS),
                        help=f"comma-separated workloads of {','.join(WORKLOADS)} (default: "
                        "all but failover, which only the cluster peers run)")
    parser.add_argument("--quick", action="store_true",
                        help="short windows, 1 repeat, small prefill and deep queue: a smoke "
                        "run in about a minute per server, not numbers to publish")
    parser.add_argument("--duration", type=float, default=None,
                        help="measured window per run in seconds (default: 5; --quick: 1)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="warm-up before each window in seconds (default: 1; --quick: 0.3)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per workload; the median is reported (default: 3; "
                        "--quick: 1)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every peer's workloads this many times over, the peers "
                        "taking turns in each round (in reverse order every other round), and "
                        "pool each peer's runs; ratios of partitioned peers, and of ferry "
                        "to ferry-baseline, are then the median of each round's ratio, whose "
                        "two sides ran one turn apart (this VM's speed drifts over minutes). "
                        "Every workload is repeated, deep and failover too "
                        "(default: %(default)s)")
    parser.add_argument("--connections", type=int, default=64,
                        help="connections for throughput workloads (default: %(default)s)")
    parser.add_argument("--drain-depth", type=int, default=None,
                        help="messages to prefill for the drain workload (default: "
                        f"{DRAIN_DEPTH_DEFAULT}; --quick: 5000)")
    parser.add_argument("--prefill-budget", type=float, default=None,
                        help="seconds a prefill may take before the run uses whatever depth "
                        "it reached (default: 30; --quick: 5)")
    parser.add_argument("--deep-depth", type=int, default=None,
                        help="messages in the deep queue (default: 1000000; --quick: 20000)")
    parser.add_argument("--deep-budget", type=float, default=None,
                        help="seconds the deep fill may take (default: 600; --quick: 30)")
    parser.add_argument("--failover-rounds", type=int, default=None,
                        help="leader kills in the failover workload (default: 10; --quick: 3)")
    parser.add_argument("--failover-connections", type=int, default=8,
                        help="producers in the failover workload, and as many consumers "
                        "(default: %(default)s)")
    parser.add_argument("--cluster-pinning", choices=["shared", "leader-alone"],
                        default="shared",
                        help="cores of the cluster peers: shared = every node and etcd on "
                        "the single server's one core (same hardware); leader-alone = the "
                        "leader alone on that core, followers and etcd on the load "
                        "generator's (default: %(default)s)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="run py-spy on every server process during each run of the "
                        "throughput workloads; collapsed stacks and a per-process summary of "
                        "the heaviest functions go to DIR (needs py-spy)")
    parser.add_argument("--bench-dir", type=Path, default=Path(".bench"),
                        help="peer venvs, server data (real disk, not tmpfs) and logs "
                        "(default: %(default)s)")
    parser.add_argument("--results-dir", type=Path, default=None,
                        help="where <timestamp>.json and latest.json go "
                        "(default: <bench-dir>/results)")
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks.png"),
                        help="the PNG chart (default: %(default)s)")
    parser.add_argument("--log-level", default="warning",
                        choices=["debug", "info", "warning", "error"])


def run(args: argparse.Namespace) -> int:
    from ferrymq._bench._runner import (
        DRAIN_DEPTH_DEFAULT,
        PACED_WINDOW_MIN_S,
        PEERS,
        WORKLOADS,
        Settings,
        run_bench,
    )

    unknown = [p for p in args.peers if p not in PEERS]
    unknown += [w for w in args.workloads if w not in WORKLOADS]
    if unknown:
        print(f"ferrymq bench: unknown peer/workload: {', '.join(unknown)} (peers: "
              f"{', '.join(PEERS)}; workloads: {', '.join(WORKLOADS)})", file=sys.stderr)
        return 2
    quick = args.quick

    def pick(value: float | int | None, full: float | int, fast: float | int) -> float:
        return float(value if value is not None else (fast if quick else full))

    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    server_cpu, loadgen_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    duration_s = pick(args.duration, 5.0, 1.0)
    settings = Settings(
        duration_s=duration_s,
        paced_window_s=duration_s if quick else max(duration_s, PACED_WINDOW_MIN_S),
        warmup_s=pick(args.warmup, 1.0, 0.3),
        repeat=max(1, int(pick(args.repeat, 3, 1))),
        rounds=max(1, args.rounds),
        conns=max(1, args.connections),
        big_conns=max(1, args.connections // 4),
        paced_rate=50,
        drain_depth=int(pick(args.drain_depth, DRAIN_DEPTH_DEFAULT, 5_000)),
        prefill_budget_s=pick(args.prefill_budget, 30.0, 5.0),
        deep_depth=int(pick(args.deep_depth, 1_000_000, 20_000)),
        deep_budget_s=pick(args.deep_budget, 600.0, 30.0),
        server_cpu=server_cpu,
        loadgen_cpu=loadgen_cpu,
        failover_rounds=max(1, int(pick(args.failover_rounds, 10, 3))),
        failover_conns=max(1, args.failover_connections),
        cluster_pinning=args.cluster_pinning,
        profile_dir=str(args.profile.resolve()) if args.profile is not None else None,
    )
    bench_dir = args.bench_dir.resolve()
    peers = list(args.peers)
    baseline_src: Path | None = None
    if args.baseline is not None:
        from ferrymq._bench._servers import PeerUnavailable, baseline_checkout

        try:
            baseline_src = baseline_checkout(args.baseline, bench_dir)
        except PeerUnavailable as exc:
            print(f"ferrymq bench: {exc}", file=sys.stderr)
            return 2
        at = peers.index("ferry") + 1 if "ferry" in peers else len(peers)
        peers.insert(at, "ferry-baseline")
    command = "ferrymq bench " + shlex.join(sys.argv[2:] if sys.argv[1:2] == ["bench"]
                                            else sys.argv[1:])
    return run_bench(peers, args.workloads, settings, bench_dir=bench_dir,
                     results_dir=(args.results_dir or bench_dir / "results").resolve(),
                     chart_path=args.out, command=command, baseline_src=baseline_src)
