"""How long a node's death takes to fail over when it leads many partitions: a
measurement for docs/scaling.md, not a test (pytest does not collect it).

    .venv/bin/python tests/e2e/measure_failover_partitions.py --partitions 60 --rounds 3

Starts a local cluster of 3 nodes (``ferrymq cluster up``), creates one queue of
``--partitions`` partitions of 3 replicas (so each node leads about a third), then per
round: SIGKILLs the node leading the most partitions, and reports from the kill how long
until etcd names a live leader for every partition it led, and until a SendMessage to
the queue through another node is acknowledged; then restarts it, and reports how long
until every replica is in sync again and until the leaderships are even again (no node
leading more than one more than another). Prints one JSON line per round and a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[2]
# As pytest's rootdir conftest arranges it: the source, the repository (for the tests
# package) and tests/ itself (for its shared helpers).
for _path in (_ROOT / "src", _ROOT, _ROOT / "tests"):
    sys.path.insert(0, str(_path))

from tests.e2e._cluster import local_cluster  # noqa: E402
from tests.e2e._harness import make_client  # noqa: E402

_WAIT_S = 120.0
# Evening out 1,000 partitions' leaders at 2 a second takes minutes: the bound is wider.
_EVEN_WAIT_S = 600.0


def _led(cluster: Any, queue: str) -> dict[str, str | None]:
    sets = cluster.replica_sets() or {}
    return {name: ps.leader for name, (_, ps) in sets.items()
            if name == queue or name.startswith(queue + "/")}


def _shares(led: dict[str, str | None], nodes: list[str]) -> dict[str, int]:
    shares = {n: 0 for n in nodes}
    for leader in led.values():
        if leader in shares:
            shares[leader] += 1
    return shares


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--partitions", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, \
            local_cluster(Path(tmp) / "cluster", lease_ttl_s=2) as cluster:
        client = make_client(cluster.urls()[0], "json",
                             retries={"mode": "standard", "max_attempts": 10})
        queue = "many"
        started = time.monotonic()
        url = client.create_queue(QueueName=queue, tags={
            "ferry:partitions": str(args.partitions)})["QueueUrl"]
        cluster.in_sync(_WAIT_S)
        print(f"placed and in sync: {time.monotonic() - started:.1f} s", flush=True)
        for _ in range(args.rounds):
            led = _led(cluster, queue)
            counts: dict[str, int] = {}
            for leader in led.values():
                if leader is not None:
                    counts[leader] = counts.get(leader, 0) + 1
            victim = max(counts, key=lambda n: (counts[n], n))
            theirs = [p for p, leader in led.items() if leader == victim]
            others = [u for n, u in zip(cluster.node_ids(), cluster.urls(), strict=True)
                      if n != victim]
            sender = make_client(others[0], "json", retries={"mode": "standard",
                                                             "max_attempts": 1})
            kill_at = time.monotonic()
            os.kill(cluster.pid(victim), signal.SIGKILL)
            first_ack_s = None
            all_led_s = None
            while time.monotonic() - kill_at < _WAIT_S:
                now_led = _led(cluster, queue)
                if all_led_s is None and all(
                        now_led.get(p) not in (None, victim) for p in theirs):
                    all_led_s = time.monotonic() - kill_at
                if first_ack_s is None:
                    try:
                        sender.send_message(QueueUrl=url, MessageBody="after the kill")
                        first_ack_s = time.monotonic() - kill_at
                    except Exception:  # noqa: BLE001 - refused until a leader serves
                        pass
                if all_led_s is not None and first_ack_s is not None:
                    break
                time.sleep(0.02)
            cluster.start(victim)
            rejoin_at = time.monotonic()
            cluster.in_sync(_WAIT_S)
            in_sync_s = time.monotonic() - rejoin_at
            # The controller then evens the leaderships out again (LEADER_SETTLE_S after
            # the last election, then a move every LEADER_MOVE_INTERVAL_S).
            evened_s = None
            while time.monotonic() - rejoin_at < _EVEN_WAIT_S:
                shares = _shares(_led(cluster, queue), cluster.node_ids())
                if sum(shares.values()) == args.partitions \
                        and max(shares.values()) - min(shares.values()) <= 1:
                    evened_s = time.monotonic() - rejoin_at
                    break
                time.sleep(0.2)
            result = {"victim": victim, "partitions_it_led": len(theirs),
                      "all_led_again_s": all_led_s and round(all_led_s, 2),
                      "first_ack_s": first_ack_s and round(first_ack_s, 2),
                      "in_sync_after_restart_s": round(in_sync_s, 2),
                      "leaders_even_after_restart_s": evened_s and round(evened_s, 2),
                      "shares": _shares(_led(cluster, queue), cluster.node_ids())}
            results.append(result)
            print(json.dumps(result), flush=True)
    led_times = [r["all_led_again_s"] for r in results if r["all_led_again_s"]]
    print(json.dumps({"partitions": args.partitions, "rounds": len(results),
                      "all_led_again_s_median": statistics.median(led_times)
                      if led_times else None,
                      "all_led_again_s_max": max(led_times) if led_times else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
