"""Measure the etcd facts docs/coordination.md states, on loopback: not a test.

    .venv/bin/python tests/coordination/measure.py [--quick] [--clients]

Prints, for a 1-member etcd with etcd's default Raft timings:
  - sequential puts/s, compare-and-swap transactions/s and watch event latency (from
    just before a put is sent to the watcher holding the event) of each client that
    works here (``--clients``): the shipped ``EtcdCoordinator`` (gRPC + aetcd's
    messages), aetcd's own client, and etcd3gw (JSON gateway over HTTP);
  - the minimum lease TTL for two Raft timings;
and for a 3-member cluster:
  - how long writes stop when the Raft leader is SIGKILLed (a writer retrying on
    CoordinatorUnavailable; the gap between the last write before and the first after);
  - how long until a second campaigner holds an election key after the holder process
    is SIGKILLed, for a few TTLs.

``--clients`` needs etcd3gw, which Ferry does not depend on: ``.venv/bin/pip install
etcd3gw`` first (and uninstall it after). Every etcd and helper process it starts is
stopped by PID. Traffic is loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ferrymq._coordination import (
    CoordinatorUnavailable,
    Election,
    EtcdCluster,
    EtcdCoordinator,
    Put,
    etcd_version,
)

# How many operations each throughput and latency figure is taken over.
OPS = 1000
QUICK_OPS = 200


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(name: str, puts: float, cas: float, lat_ms: list[float]) -> None:
    print(f"  {name:22s} puts/s {puts:6.0f}   CAS/s {cas:6.0f}   watch latency "
          f"p50 {statistics.median(lat_ms):5.2f} ms  p99 {pct(lat_ms, 0.99):5.2f} ms",
          flush=True)


async def bench_coordinator(endpoint: str, n: int) -> tuple[float, float, list[float]]:
    c = await EtcdCoordinator.connect([endpoint])
    w = await EtcdCoordinator.connect([endpoint])
    try:
        t = time.perf_counter()
        for i in range(n):
            await c.put(b"/m/c/put/%d" % i, b"v")
        puts = n / (time.perf_counter() - t)
        key = b"/m/c/cas"
        revision = 0
        t = time.perf_counter()
        for i in range(n):
            res = await c.transact({key: revision}, [Put(key, b"%d" % i)])
            if not res.succeeded:
                raise RuntimeError("CAS lost with a single writer")
            revision = res.revision
        cas = n / (time.perf_counter() - t)
        snap = await c.get_prefix(b"/m/c/w/")
        stream = w.watch_prefix(b"/m/c/w/", start_revision=snap.revision + 1)
        received: dict[bytes, float] = {}

        async def reader() -> None:
            async for event in stream:
                received[event.key] = time.perf_counter()
                if len(received) == n:
                    return

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.2)
        sent: dict[bytes, float] = {}
        for i in range(n):
            k = b"/m/c/w/%d" % i
            sent[k] = time.perf_counter()
            await c.put(k, b"v")
        await asyncio.wait_for(task, 30)
        await stream.aclose()
        return puts, cas, [(received[k] - sent[k]) * 1000 for k in sent]
    finally:
        await c.close()
        await w.close()


async def bench_aetcd(endpoint: str, n: int) -> tuple[float, float, list[float]]:
    import aetcd  # type: ignore[import-untyped]

    host, port = endpoint.rsplit(":", 1)
    async with aetcd.Client(host=host, port=int(port), timeout=5) as c, \
            aetcd.Client(host=host, port=int(port), timeout=5) as w:
        t = time.perf_counter()
        for i in range(n):
            await c.put(b"/m/a/put/%d" % i, b"v")
        puts = n / (time.perf_counter() - t)
        # aetcd's transaction() returns no revision, so a CAS loop must re-read.
        key = b"/m/a/cas"
        await c.put(key, b"0")
        t = time.perf_counter()
        for i in range(n):
            kv = await c.get(key)
            ok, _ = await c.transaction(
                compare=[c.transactions.mod(key) == kv.mod_revision],
                success=[c.transactions.put(key, b"%d" % i)], failure=[])
            if not ok:
                raise RuntimeError("CAS lost with a single writer")
        cas = n / (time.perf_counter() - t)
        watch = await w.watch_prefix(b"/m/a/w/")
        received: dict[bytes, float] = {}

        async def reader() -> None:
            async for event in watch:
                received[event.kv.key] = time.perf_counter()
                if len(received) == n:
                    return

        task = asyncio.create_task(reader())
        sent: dict[bytes, float] = {}
        for i in range(n):
            k = b"/m/a/w/%d" % i
            sent[k] = time.perf_counter()
            await c.put(k, b"v")
        await asyncio.wait_for(task, 30)
        await watch.cancel()
        return puts, cas, [(received[k] - sent[k]) * 1000 for k in sent]


def bench_etcd3gw(endpoint: str, n: int) -> tuple[float, float, list[float]]:
    import etcd3gw  # type: ignore[import-not-found,unused-ignore]

    host, port = endpoint.rsplit(":", 1)
    c = etcd3gw.client(host=host, port=int(port), timeout=5)

    def b64(raw: str) -> str:
        return base64.b64encode(raw.encode()).decode()

    t = time.perf_counter()
    for i in range(n):
        c.put(f"/m/g/put/{i}", "v")
    puts = n / (time.perf_counter() - t)
    revision = 0
    t = time.perf_counter()
    for i in range(n):
        res = c.transaction({
            "compare": [{"key": b64("/m/g/cas"), "result": "EQUAL", "target": "MOD",
                         "mod_revision": revision}],
            "success": [{"request_put": {"key": b64("/m/g/cas"), "value": b64(str(i))}}],
            "failure": []})
        if not res.get("succeeded"):
            raise RuntimeError("CAS lost with a single writer")
        revision = int(res["header"]["revision"])
    cas = n / (time.perf_counter() - t)
    events, cancel = c.watch_prefix("/m/g/w/")
    received: dict[str, float] = {}

    def reader() -> None:
        for event in events:
            received[event["kv"]["key"].decode()] = time.perf_counter()
            if len(received) == n:
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(0.5)
    sent: dict[str, float] = {}
    for i in range(n):
        k = f"/m/g/w/{i}"
        sent[k] = time.perf_counter()
        c.put(k, "v")
    thread.join(30)
    cancel()
    return puts, cas, [(received[k] - sent[k]) * 1000 for k in sent if k in received]


async def min_ttl(endpoint: str) -> int:
    c = await EtcdCoordinator.connect([endpoint])
    try:
        lease = await c.grant_lease(1)
        await c.revoke_lease(lease)
        return lease.ttl_s
    finally:
        await c.close()


async def leader_kill_gaps(cluster: EtcdCluster, rounds: int,
                           request_timeout_ms: int) -> list[float]:
    """SIGKILL the leader while a writer writes: ms from the kill until the first write
    *sent after it* is acknowledged (a write sent before may have been applied by the
    old leader just before it died, which says nothing about the failover)."""
    c = await EtcdCoordinator.connect(cluster.endpoints, request_timeout_ms=request_timeout_ms)
    gaps: list[float] = []
    try:
        for r in range(rounds):
            leader = await asyncio.to_thread(cluster.wait_leader)
            pid = cluster.pid(leader)
            assert pid is not None
            stop = asyncio.Event()
            acked: list[tuple[float, float]] = []

            async def writer(stop: asyncio.Event, acked: list[tuple[float, float]]) -> int:
                failures = 0
                i = 0
                while not stop.is_set():
                    sent = time.perf_counter()
                    try:
                        await c.put(b"/m/k/%d" % (i % 100), b"v")
                        acked.append((sent, time.perf_counter()))
                    except CoordinatorUnavailable:
                        failures += 1
                    i += 1
                return failures

            task = asyncio.create_task(writer(stop, acked))
            await asyncio.sleep(0.5)
            killed_at = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
            elected = asyncio.create_task(asyncio.to_thread(cluster.wait_leader))
            while not any(sent > killed_at for sent, _ in acked) and \
                    time.perf_counter() - killed_at < 30:
                await asyncio.sleep(0.01)
            stop.set()
            failures = await task
            first = min(done for sent, done in acked if sent > killed_at)
            gaps.append((first - killed_at) * 1000)
            successor = await elected
            print(f"    round {r}: killed leader {leader} (successor {successor}); first "
                  f"write sent after the kill acknowledged {gaps[-1]:.0f} ms later "
                  f"({failures} writes failed with CoordinatorUnavailable meanwhile)",
                  flush=True)
            await asyncio.to_thread(cluster.stop_member, leader)  # reap it
            await asyncio.to_thread(cluster.start_member, leader)
    finally:
        await c.close()
    return gaps


_HOLDER = r"""
import asyncio, sys
from ferrymq._coordination import EtcdCoordinator, Election
async def main():
    c = await EtcdCoordinator.connect(sys.argv[1].split(","))
    lease = await c.grant_lease(int(sys.argv[2]))
    won = await Election(c, b"/m/election").campaign(b"holder", lease)
    print("won" if won else "lost", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def takeover_ms(cluster: EtcdCluster, ttl_s: int) -> float:
    """SIGKILL a process holding the election key; ms until another campaigner wins."""
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, ",".join(cluster.endpoints),
                               str(ttl_s)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "won":
            raise RuntimeError("the holder process did not win")
        c = await EtcdCoordinator.connect(cluster.endpoints)
        try:
            lease = await c.grant_lease(ttl_s)
            election = Election(c, b"/m/election")
            await asyncio.sleep(ttl_s)  # the holder has kept its lease alive a while
            killed_at = time.perf_counter()
            os.kill(holder.pid, signal.SIGKILL)
            await election.wait_vacant()
            won = await election.campaign(b"successor", lease)
            elapsed = (time.perf_counter() - killed_at) * 1000
            if won is None:
                raise RuntimeError("the successor did not win")
            await election.resign(won)
            return elapsed
        finally:
            await c.close()
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
        holder.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations and rounds")
    parser.add_argument("--clients", action="store_true", help="also compare client libraries")
    args = parser.parse_args()
    n = QUICK_OPS if args.quick else OPS
    rounds = 2 if args.quick else 5
    base = Path(tempfile.mkdtemp(prefix="ferrymq-measure-"))
    print(f"etcd {etcd_version()}, {os.cpu_count()} cores, data in {base}", flush=True)
    with EtcdCluster(base / "one", 1) as one:
        endpoint = one.members[0].endpoint
        print(f"1 member, default Raft timings, {n} sequential operations each:")
        line("EtcdCoordinator", *asyncio.run(bench_coordinator(endpoint, n)))
        if args.clients:
            line("aetcd.Client", *asyncio.run(bench_aetcd(endpoint, n)))
            line("etcd3gw (sync HTTP)", *bench_etcd3gw(endpoint, n))
        print(f"  minimum lease TTL (heartbeat 100 ms, election 1000 ms): "
              f"{asyncio.run(min_ttl(endpoint))} s")
    with EtcdCluster(base / "fast", 1, heartbeat_ms=50, election_timeout_ms=500) as fast:
        print(f"  minimum lease TTL (heartbeat 50 ms, election 500 ms): "
              f"{asyncio.run(min_ttl(fast.members[0].endpoint))} s")
    with EtcdCluster(base / "three", 3) as three:
        print("3 members, default Raft timings:")
        line("EtcdCoordinator", *asyncio.run(bench_coordinator(
            three.member(three.wait_leader()).endpoint, n)))
        for timeout_ms in (1_000, 2_000, 5_000):
            print(f"  leader SIGKILL -> writes resume, request deadline {timeout_ms} ms:")
            gaps = asyncio.run(leader_kill_gaps(three, rounds, timeout_ms))
            print(f"  leader kill -> writes resume: median {statistics.median(gaps):.0f} ms, "
                  f"max {max(gaps):.0f} ms over {len(gaps)} kills", flush=True)
        for ttl_s in (2, 3, 5) if not args.quick else (2,):
            times = [asyncio.run(takeover_ms(three, ttl_s)) for _ in range(2 if args.quick else 3)]
            print(f"  election holder SIGKILL -> successor holds the key, TTL {ttl_s} s: "
                  + ", ".join(f"{t:.0f}" for t in times) + " ms", flush=True)


if __name__ == "__main__":
    main()
