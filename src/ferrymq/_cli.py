"""The ``ferrymq`` command line: ``ferrymq serve`` runs the embedded single node."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

from ferrymq import __version__

__all__ = ["main"]

log = logging.getLogger("ferrymq")

# Cyclic-GC thresholds for the server process. Python's default (700, 10, 10) runs a
# young collection every 700 allocations and a full one that walks every live object;
# with a queue's messages all live, full collections caused 100+ ms pauses (p99) and
# cost ~15 % of CPU on batched sends. Almost nothing Ferry allocates forms cycles
# (reference counting frees it), so collect rarely. Measured with `ferrymq bench`:
# batch p99 176 -> 52 ms, CPU per message 45 -> 37.5 µs.
_GC_THRESHOLDS = (50_000, 20, 100)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferrymq", description="Ferry: a durable, "
                                     "SQS-compatible message queue server.")
    parser.add_argument("--version", action="version", version=f"ferrymq {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run the embedded single-node server",
        description="Run Ferry as one process: gateway, metadata and broker together.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on "
                       "(default: %(default)s)")
    serve.add_argument("--port", type=int, default=9324, help="port (default: %(default)s; "
                       "0 picks a free one)")
    serve.add_argument("--data-dir", type=Path, default=Path("ferrymq-data"),
                       help="directory for the durable store (default: %(default)s)")
    serve.add_argument("--public-url", default=None,
                       help="base URL for queue URLs, e.g. http://sqs.local:9324 (default: "
                       "taken from each request's Host header)")
    serve.add_argument("--account-id", default="000000000000",
                       help="12-digit account id in queue URLs and ARNs (default: %(default)s)")
    serve.add_argument("--region", default="us-east-1", help="region in ARNs "
                       "(default: %(default)s)")
    serve.add_argument("--purge-interval-seconds", type=int, default=60,
                       help="minimum time between two PurgeQueue calls on a queue, as SQS "
                       "enforces (default: %(default)s; 0 disables the rule)")
    serve.add_argument("--recreate-delay-seconds", type=int, default=60,
                       help="time after DeleteQueue before the name can be reused, as SQS "
                       "enforces (default: %(default)s; 0 disables the rule)")
    serve.add_argument("--storage", choices=["sqlite", "memory"], default="sqlite",
                       help="sqlite: durable, fsync before every acknowledgement (default); "
                       "memory: nothing survives a restart (tests and experiments only)")
    serve.add_argument("--body-memory-mib", type=_non_negative_int, default=256,
                       help="message bodies held in memory, in MiB, across all queues; "
                       "bodies beyond it are read from the store when received, so memory "
                       "per stored message stays small (default: %(default)s; 0 keeps "
                       "every body on disk only)")
    serve.add_argument("--log-level", default="warning",
                       choices=["debug", "info", "warning", "error"])
    bench = commands.add_parser(
        "bench", help="benchmark Ferry against peer servers, side by side",
        description="Start Ferry and peer SQS servers on loopback, drive each with the same "
        "workloads, and report throughput, latency and server CPU per message.",
    )
    from ferrymq._bench import add_arguments

    add_arguments(bench)
    return parser


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return _serve(args)
    if args.command == "bench":
        from ferrymq._bench import run

        return run(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


def _serve(args: argparse.Namespace) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional on non-Linux platforms
        return asyncio.run(_run(args))
    return uvloop.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from ferrymq._core._broker import Broker
    from ferrymq._gateway import close_server, start_gateway
    from ferrymq._service import QueueService
    from ferrymq._storage import StorageError, open_store

    broker = Broker(
        account_id=args.account_id,
        region=args.region,
        purge_interval_ms=max(0, args.purge_interval_seconds) * 1000,
        recreate_delay_ms=max(0, args.recreate_delay_seconds) * 1000,
        body_memory_bytes_max=args.body_memory_mib * 1024 * 1024,
    )
    path: Path | None = None
    if args.storage == "sqlite":
        args.data_dir.mkdir(parents=True, exist_ok=True)
        path = args.data_dir / "ferrymq.sqlite3"
    try:
        store = open_store(args.storage, path)
    except StorageError as exc:
        print(f"ferrymq: cannot open the store at {path}: {exc}", file=sys.stderr)
        return 1
    service = QueueService(broker, store)
    replayed = service.restore()
    log.info("restored %d records from %s", replayed, path)
    # Everything restored lives until deleted; freezing keeps the collector from
    # walking it again and again (objects are still freed by reference counting).
    gc.collect()
    gc.freeze()
    gc.set_threshold(*_GC_THRESHOLDS)

    stop = asyncio.Event()
    exit_code = 0

    def on_fatal(exc: BaseException) -> None:
        nonlocal exit_code
        exit_code = 1
        stop.set()

    service.on_fatal = on_fatal
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service.start()
    try:
        server = await start_gateway(service, args.host, args.port, public_url=args.public_url,
                                     account_id=args.account_id, region=args.region)
    except OSError as exc:
        print(f"ferrymq: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        await service.close()
        return 1
    host, port = server.sockets[0].getsockname()[:2]
    print(f"ferrymq listening on http://{host}:{port} (data: "
          f"{path if path else 'in memory, not durable'})", file=sys.stderr, flush=True)
    await stop.wait()
    await close_server(server)
    await service.close()
    print("ferrymq stopped", file=sys.stderr, flush=True)
    return exit_code
