"""The ``ferrymq`` command line: ``ferrymq serve`` runs the embedded single node,
``ferrymq repair`` mends a store that cannot be restored, ``ferrymq bench`` compares
Ferry with its peers.

Every option is validated here, before anything starts: a bad value is one line on
stderr and exit code 2 (argparse's convention), a failure to start is one line and
exit code 1. Tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import gc
import logging
import math
import os
import re
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

from ferrymq import __version__
from ferrymq._core._control import PARTITIONS_MAX
from ferrymq._gateway._http import HttpLimits

_HTTP_DEFAULTS = HttpLimits()

__all__ = ["main"]

log = logging.getLogger("ferrymq")

# Cyclic-GC thresholds for the server process. Python's default (700, 10, 10) runs a
# young collection every 700 allocations and a full one that walks every live object;
# with a queue's messages all live, full collections caused 100+ ms pauses (p99) and
# cost ~15 % of CPU on batched sends. Almost nothing Ferry allocates forms cycles
# (reference counting frees it), so collect rarely. Measured with `ferrymq bench`:
# batch p99 176 -> 52 ms, CPU per message 45 -> 37.5 µs.
_GC_THRESHOLDS = (50_000, 20, 100)
# How long a graceful stop (SIGTERM, Ctrl-C) waits for requests in flight to be
# answered before dropping them: parked long polls are answered at once, so this only
# has to cover commits and slow clients reading their answers; shorter than the 10 s
# service managers (systemd, Kubernetes' default 30 s) give before SIGKILL.
_DRAIN_TIMEOUT_S = 5.0
_ACCOUNT_ID = re.compile(r"^[0-9]{12}$")
# AWS region names: lower-case words and digits joined by hyphens (us-east-1,
# eu-central-2, us-gov-west-1); they appear in every ARN Ferry hands out.
_REGION = re.compile(r"^[a-z]{2,}(-[a-z0-9]+)+$")
_MIB = 1024 * 1024


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (the usage is one ``--help`` away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return int(text)


def _clock_rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not 0 < rate < math.inf:  # NaN fails both
        raise argparse.ArgumentTypeError(f"{text!r} is not a number above 0")
    return rate


def _account_id(text: str) -> str:
    if not _ACCOUNT_ID.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a 12-digit AWS account id")
    return text


def _region(text: str) -> str:
    if not _REGION.match(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not an AWS region name (e.g. us-east-1)")
    return text


def _public_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/") \
            or parts.query or parts.fragment:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a base URL such as http://sqs.local:9324 (scheme and host, "
            "no path)")
    try:
        parts.port  # noqa: B018 - raises on a port out of range
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} has an invalid port") from exc
    return text.rstrip("/")


def _positive_int(text: str) -> int:
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return int(text)


def _partition_count(text: str) -> int:
    count = _positive_int(text)
    if count > PARTITIONS_MAX:
        raise argparse.ArgumentTypeError(f"{text!r} is more than {PARTITIONS_MAX}")
    return count


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _listen_fd(text: str) -> socket.socket:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a file descriptor number")
    fd = int(text)
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{fd} is not an open socket: "
                                         f"{exc.strerror or exc}") from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    if sock.type != socket.SOCK_STREAM or not listening:
        sock.detach()  # not ours to close
        raise argparse.ArgumentTypeError(f"socket {fd} is not a listening TCP socket")
    return sock


_NODE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _node_id(text: str) -> str:
    if not _NODE_ID.match(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a valid name (1 to 64 letters, digits, '-' or '_')")
    return text


def _etcd_endpoints(text: str) -> tuple[str, ...]:
    endpoints = []
    for item in text.split(","):
        parts = urlsplit(item.strip() if "://" in item else f"http://{item.strip()}")
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise argparse.ArgumentTypeError(
                f"{item!r} is not an etcd URL like http://127.0.0.1:2379")
        try:
            port = parts.port or 2379
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{item!r}: {exc}") from exc
        endpoints.append(f"{parts.hostname}:{port}")
    return tuple(endpoints)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host, _port(port)


def _non_negative_int(text: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 0 or more")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ferrymq", description="Ferry: a durable, "
                     "SQS-compatible message queue server.")
    parser.add_argument("--version", action="version", version=f"ferrymq {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    serve = commands.add_parser(
        "serve", help="run the embedded single-node server",
        description="Run Ferry as one process: gateway, metadata and broker together.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on "
                       "(default: %(default)s)")
    serve.add_argument("--port", type=_port, default=9324, help="port (default: %(default)s; "
                       "0 picks a free one)")
    serve.add_argument("--listen-fd", type=_listen_fd, default=None, metavar="FD",
                       help="serve on this inherited, already listening TCP socket instead of "
                       "--host/--port (socket activation, e.g. systemd's fd 3): the socket "
                       "outlives a restart, so clients connecting meanwhile wait in its "
                       "backlog instead of being refused")
    _add_data_dir(serve)
    serve.add_argument("--public-url", type=_public_url, default=None,
                       help="base URL for queue URLs, e.g. http://sqs.local:9324 (default: "
                       "taken from each request's Host header)")
    serve.add_argument("--storage", choices=["sqlite", "memory"], default="sqlite",
                       help="sqlite: durable, fsync before every acknowledgement (default); "
                       "memory: nothing survives a restart (tests and experiments only)")
    # Tests of real-time behaviour only (tests/e2e/test_messages.py): the service's clock
    # runs this many times as fast as the wall clock from the start, so a 60 s retention
    # (SQS's least) lapses in 6 s of a test. Not for users.
    serve.add_argument("--clock-rate", type=_clock_rate, default=1.0, help=argparse.SUPPRESS)
    _add_service_options(serve)
    node = commands.add_parser(
        "node", help="run one node of a replicated cluster (coordinated by etcd)",
        description="Run one Ferry cluster node: the whole SQS API on its port, with every "
        "queue replicated to a replica set of nodes and a new leader elected through etcd "
        "when one fails. Requests reaching a node that does not lead are forwarded to the "
        "leader. See docs/cluster.md.",
    )
    node.add_argument("--node-id", type=_node_id, required=True,
                      help="this node's name in the cluster (letters, digits, - and _)")
    node.add_argument("--host", default="127.0.0.1", help="address to listen on "
                      "(default: %(default)s)")
    node.add_argument("--port", type=_port, default=9324, help="port (default: %(default)s)")
    _add_data_dir(node)
    node.add_argument("--etcd", type=_etcd_endpoints, required=True, metavar="URL[,URL...]",
                      help="etcd client URLs, e.g. http://127.0.0.1:2379")
    node.add_argument("--cluster", type=_node_id, default="ferry",
                      help="cluster name: nodes of one cluster share it (default: "
                      "%(default)s)")
    node.add_argument("--advertise-url", type=_public_url, default=None,
                      help="this node's URL as other nodes and clients reach it (default: "
                      "http://HOST:PORT)")
    node.add_argument("--replicas", type=_positive_int, default=3,
                      help="replicas of a queue created without the ferry:replicas tag "
                      "(default: %(default)s, capped by the live nodes)")
    node.add_argument("--min-insync-replicas", type=_positive_int, default=2,
                      help="for a queue of 3 or more replicas created without the "
                      "ferry:min-insync-replicas tag: sync durability refuses writes while "
                      "fewer are in sync (default: %(default)s; 1 for fewer replicas)")
    node.add_argument("--partitions", type=_partition_count, default=1,
                      help="partitions of a standard queue created without the "
                      "ferry:partitions tag, each a replica set of its own (1 to "
                      f"{PARTITIONS_MAX}; default: %(default)s)")
    node.add_argument("--durability", choices=["sync", "async"], default="sync",
                      help="for a queue created without the ferry:durability tag: sync, a "
                      "write is acknowledged once every in-sync replica has fsynced it; "
                      "async, once the leader has (default: %(default)s)")
    node.add_argument("--lease-ttl-seconds", type=_positive_int, default=2,
                      help="etcd lease of the node's membership: a node that stops is "
                      "replaced about this long after (default: %(default)s; etcd's "
                      "minimum is 2)")
    node.add_argument("--replication-port", type=_port, default=0,
                      help="port of the node-to-node replication listener, on --host "
                      "(default: any free port; other nodes find it in etcd)")
    node.add_argument("--replication-advertise", type=_host_port, default=None,
                      metavar="HOST:PORT", help="the replication address other nodes are "
                      "told to use (default: where it listens), e.g. a proxy in front of it")
    # Tests of power loss only (tests/e2e/test_cluster_power.py): not for users.
    node.add_argument("--power-loss-seam", action="store_true", help=argparse.SUPPRESS)
    _add_service_options(node)
    repair = commands.add_parser(
        "repair", help="mend a store that cannot be restored",
        description="Mend a store whose rows contradict each other, as `ferrymq serve` "
        "reports at start-up. The server must be stopped. Back the data directory up first.",
    )
    _add_data_dir(repair)
    repair.add_argument("--orphans", choices=["adopt", "drop"], required=True,
                        help="messages of a queue the store does not hold: adopt re-creates "
                        "each such queue with default attributes and keeps its messages; "
                        "drop deletes them")
    bench = commands.add_parser(
        "bench", help="benchmark Ferry against peer servers, side by side",
        description="Start Ferry and peer SQS servers on loopback, drive each with the same "
        "workloads, and report throughput, latency and server CPU per message.",
    )
    from ferrymq._bench import add_arguments

    add_arguments(bench)
    from ferrymq._cluster._local import add_cluster_parser

    add_cluster_parser(commands)
    return parser


def _add_service_options(parser: argparse.ArgumentParser) -> None:
    """Options ``serve`` and ``node`` share: the SQS service they run."""
    parser.add_argument("--account-id", type=_account_id, default="000000000000",
                       help="12-digit account id in queue URLs and ARNs (default: %(default)s)")
    parser.add_argument("--region", type=_region, default="us-east-1", help="region in ARNs "
                       "(default: %(default)s)")
    parser.add_argument("--purge-interval-seconds", type=_non_negative_int, default=60,
                       help="minimum time between two PurgeQueue calls on a queue, as SQS "
                       "enforces (default: %(default)s; 0 disables the rule)")
    parser.add_argument("--recreate-delay-seconds", type=_non_negative_int, default=60,
                       help="time after DeleteQueue before the name can be reused, as SQS "
                       "enforces (default: %(default)s; 0 disables the rule)")
    parser.add_argument("--body-memory-mib", type=_non_negative_int, default=256,
                       help="message bodies held in memory, in MiB, across all queues; "
                       "bodies beyond it are read from the store when received, so memory "
                       "per stored message stays small (default: %(default)s; 0 keeps "
                       "every body on disk only)")
    parser.add_argument("--disk-free-min-mib", type=_non_negative_int, default=32,
                       help="free space, in MiB, kept on the data directory's filesystem: "
                       "below it writes are refused with 503 ServiceUnavailable (reads go "
                       "on) until space returns (default: %(default)s)")
    http = parser.add_argument_group(
        "connection limits", "Bounds that keep slow or idle clients from holding the server's "
        "connections; the defaults suit SDKs on any network.")
    http.add_argument("--connections-max", type=_positive_int,
                      default=_HTTP_DEFAULTS.connections_max,
                      help="open connections at most; above it idle ones are closed first, "
                      "then newcomers get 503 (default: %(default)s, lowered to fit the "
                      "file-descriptor limit)")
    http.add_argument("--head-timeout-seconds", type=_positive_seconds,
                      default=_HTTP_DEFAULTS.head_timeout_s,
                      help="time to send a request's line and headers once begun; then 408 "
                      "(default: %(default)s)")
    http.add_argument("--body-timeout-seconds", type=_positive_seconds,
                      default=_HTTP_DEFAULTS.body_timeout_s,
                      help="grace for a request body, after which it must arrive at 8 KiB/s "
                      "or more; then 408 (default: %(default)s)")
    http.add_argument("--idle-timeout-seconds", type=_positive_seconds,
                      default=_HTTP_DEFAULTS.idle_timeout_s,
                      help="a keep-alive connection with no request for this long is closed "
                      "(default: %(default)s)")
    parser.add_argument("--log-level", default="warning",
                       choices=["debug", "info", "warning", "error"],
                       help="least severe log messages written to stderr (default: "
                       "%(default)s)")


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path("ferrymq-data"),
                        help="directory for the durable store; it must be on a local "
                        "filesystem, not NFS (default: %(default)s)")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=getattr(args, "log_level", "warning").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        return _serve(args)
    if args.command == "node":
        return _node(args)
    if args.command == "repair":
        return _repair(args)
    if args.command == "bench":
        from ferrymq._bench import run

        return run(args)
    if args.command == "cluster":
        return int(args.func(args))
    return 2  # pragma: no cover - argparse rejects unknown commands


def _fail(message: str, code: int = 1) -> int:
    print(f"ferrymq: {message}", file=sys.stderr, flush=True)
    return code


def _usable_data_dir(data_dir: Path) -> str | None:
    """Why ``data_dir`` cannot hold a store, or None when it can."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot use --data-dir {data_dir}: {exc.strerror or exc}"
    if not os.access(data_dir, os.W_OK | os.X_OK):
        return f"cannot use --data-dir {data_dir}: not writable"
    return None


def _serve(args: argparse.Namespace) -> int:
    if args.storage == "sqlite":
        problem = _usable_data_dir(args.data_dir)
        if problem is not None:
            return _fail(problem, 2)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - optional on non-Linux platforms
        return asyncio.run(_run(args))
    return uvloop.run(_run(args))


def _node(args: argparse.Namespace) -> int:
    problem = _usable_data_dir(args.data_dir)
    if problem is not None:
        return _fail(problem, 2)
    from ferrymq._cluster._node import NodeConfig, run_node
    from ferrymq._core._broker import Broker

    # Each replica set's core is built with its queue's replication and the cluster's
    # catalog as the directory of the queues it does not hold.
    make_broker = functools.partial(
        Broker,
        account_id=args.account_id,
        region=args.region,
        purge_interval_ms=args.purge_interval_seconds * 1000,
        recreate_delay_ms=args.recreate_delay_seconds * 1000,
        body_memory_bytes_max=args.body_memory_mib * _MIB,
    )
    cfg = NodeConfig(
        node_id=args.node_id, host=args.host, port=args.port, data_dir=args.data_dir,
        etcd_endpoints=args.etcd, cluster=args.cluster, advertise_url=args.advertise_url,
        replicas=args.replicas, min_isr=min(args.min_insync_replicas, args.replicas),
        sync=args.durability == "sync", lease_ttl_s=args.lease_ttl_seconds,
        partitions=args.partitions,
        free_bytes_min=args.disk_free_min_mib * _MIB, account_id=args.account_id,
        region=args.region,
        http_limits=HttpLimits(connections_max=args.connections_max,
                               idle_timeout_s=args.idle_timeout_seconds,
                               head_timeout_s=args.head_timeout_seconds,
                               body_timeout_s=args.body_timeout_seconds),
        replication_port=args.replication_port,
        replication_advertise=args.replication_advertise,
        power_loss_seam=args.power_loss_seam,
        recreate_delay_ms=args.recreate_delay_seconds * 1000)
    from ferrymq._storage import StorageError

    # As serve's (_GC_THRESHOLDS says why): a node holds its queues' messages live too,
    # and with the default thresholds its full collections paused it for up to a
    # second under load, stalling every commit that waited on it.
    gc.set_threshold(*_GC_THRESHOLDS)
    try:
        try:
            import uvloop
        except ImportError:  # pragma: no cover - optional on non-Linux platforms
            return asyncio.run(run_node(cfg, make_broker))
        return uvloop.run(run_node(cfg, make_broker))
    except StorageError as exc:
        return _fail(f"cannot open the store in {args.data_dir}: {exc}")


def _repair_hint(data_dir: Path) -> str:
    return (f"stop every server on it, back it up, then run `ferrymq repair --data-dir "
            f"{data_dir} --orphans adopt` (keeps the messages) or `--orphans drop`; see "
            "docs/operations.md")


def _service_clock(rate: float) -> Callable[[], int]:
    """The wall clock in ms; for a test, one running ``rate`` times as fast from now."""
    from ferrymq._service import wall_clock_ms

    if rate == 1.0:
        return wall_clock_ms
    # _clock_rate checked it when the command line was parsed.
    assert 0 < rate < math.inf, f"clock rate {rate}"
    started_ms = wall_clock_ms()
    return lambda: started_ms + int((wall_clock_ms() - started_ms) * rate)


async def _run(args: argparse.Namespace) -> int:
    from ferrymq._core._broker import Broker
    from ferrymq._gateway import close_server, start_gateway
    from ferrymq._service import QueueService
    from ferrymq._storage import StorageError, StoreInconsistentError, open_store

    make_broker = functools.partial(
        Broker,
        account_id=args.account_id,
        region=args.region,
        purge_interval_ms=args.purge_interval_seconds * 1000,
        recreate_delay_ms=args.recreate_delay_seconds * 1000,
        body_memory_bytes_max=args.body_memory_mib * _MIB,
    )
    clock_ms = _service_clock(args.clock_rate)
    path: Path | None = args.data_dir / "ferrymq.sqlite3" if args.storage == "sqlite" else None
    try:
        store = open_store(args.storage, path, free_bytes_min=args.disk_free_min_mib * _MIB)
    except StorageError as exc:
        return _fail(f"cannot open the store: {exc}")
    service = QueueService(make_broker(), store, broker_factory=make_broker,
                           clock_ms=clock_ms)
    try:
        replayed = service.restore()
    except StoreInconsistentError as exc:
        await store.close()
        return _fail(f"{path}: {exc}; {_repair_hint(args.data_dir)}")
    except StorageError as exc:
        await store.close()
        return _fail(f"cannot restore from {path}: {exc}")
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
        limits = HttpLimits(connections_max=args.connections_max,
                            idle_timeout_s=args.idle_timeout_seconds,
                            head_timeout_s=args.head_timeout_seconds,
                            body_timeout_s=args.body_timeout_seconds)
        sock = args.listen_fd
        server = await start_gateway(service, None if sock else args.host,
                                     None if sock else args.port,
                                     public_url=args.public_url, account_id=args.account_id,
                                     region=args.region, http_limits=limits, sock=sock)
    except OSError as exc:
        await service.close()
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}")
    host, port = server.sockets[0].getsockname()[:2]
    data = path if path else "in memory, not durable"
    print(f"ferrymq listening on http://{host}:{port} (data: {data}; requests are not "
          "authenticated: any credentials are accepted)", file=sys.stderr, flush=True)
    await stop.wait()
    # Graceful: parked long polls answer empty now, requests in flight are answered and
    # their commits finish, then connections close (clients see answers, not resets).
    service.begin_shutdown()
    await close_server(server, drain_timeout_s=_DRAIN_TIMEOUT_S)
    await service.close()
    print("ferrymq stopped", file=sys.stderr, flush=True)
    return exit_code


def _repair(args: argparse.Namespace) -> int:
    problem = _usable_data_dir(args.data_dir)
    if problem is not None:
        return _fail(problem, 2)
    return asyncio.run(_run_repair(args))


async def _run_repair(args: argparse.Namespace) -> int:
    from ferrymq._service import repair_orphans
    from ferrymq._storage import StorageError, open_store

    path = args.data_dir / "ferrymq.sqlite3"
    if not path.exists():
        return _fail(f"no store at {path}", 2)
    try:
        store = open_store("sqlite", path, free_bytes_min=0)
    except StorageError as exc:
        return _fail(f"cannot open the store: {exc}")
    try:
        mended = await repair_orphans(store, args.orphans)
    except StorageError as exc:
        return _fail(f"cannot repair {path}: {exc}")
    finally:
        await store.close()
    if not mended:
        print(f"ferrymq: {path} has no orphaned rows; nothing to repair", file=sys.stderr)
    for line in mended:
        print(f"ferrymq: {line}", file=sys.stderr)
    return 0
