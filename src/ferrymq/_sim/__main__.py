"""``python -m ferrymq._sim [--cluster] --seed N [--verbose]``: replay one simulation
seed, or ``--seeds A:B`` to run a range and report the first failure. ``--cluster``
runs the service-level simulation (``_cluster``), else the protocol-level one."""

from __future__ import annotations

import argparse
import sys

from ferrymq._sim._cluster import ClusterScenario, run_cluster_seed
from ferrymq._sim._replication import SimulationFailure, run_seed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferrymq._sim")
    parser.add_argument("--seed", type=int, default=None, help="run this seed")
    parser.add_argument("--seeds", default=None, help="run seeds A:B (B excluded)")
    parser.add_argument("--cluster", action="store_true",
                        help="the service-level simulation (real cluster nodes on "
                             "virtual time)")
    parser.add_argument("--verbose", action="store_true", help="print the whole trace")
    args = parser.parse_args(argv)
    if args.seed is not None:
        seeds = range(args.seed, args.seed + 1)
    elif args.seeds:
        first, _, last = args.seeds.partition(":")
        seeds = range(int(first), int(last))
    else:
        parser.error("give --seed N or --seeds A:B")
    scenario = ClusterScenario()
    for seed in seeds:
        try:
            if args.cluster:
                counts = run_cluster_seed(seed, scenario, verbose=args.verbose)
            else:
                counts = run_seed(seed, verbose=args.verbose)
        except SimulationFailure as exc:
            print(exc, file=sys.stderr)
            return 1
        print(f"seed {seed}: ok {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
