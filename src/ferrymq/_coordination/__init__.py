"""Cluster coordination: the one seam through which every consensus decision goes.

Ferry's cluster keeps its replica-set assignments, memberships and controller election
in etcd, and nothing else in Ferry talks to etcd: it talks to a ``Coordinator``.
``EtcdCoordinator`` is the real one; ``LocalCoordinator`` (clients of a
``LocalCoordinationServer``) has the same semantics in process, on a virtual clock,
for deterministic simulation. ``Election`` is leader election on either.
``EtcdCluster`` runs etcd processes on loopback for tests and ``ferrymq cluster up``.
See docs/coordination.md.

Importing this package does not import gRPC; making an ``EtcdCoordinator`` does.
"""

from ferrymq._coordination._election import Election, Leadership
from ferrymq._coordination._etcd import EtcdCoordinator
from ferrymq._coordination._etcd_process import (
    ETCD_INSTALL_HINT,
    EtcdCluster,
    EtcdMember,
    EtcdProcessError,
    etcd_binary,
    etcd_version,
)
from ferrymq._coordination._local import LocalCoordinationServer, LocalCoordinator, ManualClock
from ferrymq._coordination._types import (
    Compacted,
    CoordinationError,
    Coordinator,
    CoordinatorUnavailable,
    Delete,
    Event,
    EventKind,
    KeyValue,
    Lease,
    LeaseLost,
    Op,
    Put,
    Snapshot,
    TxnResult,
    WatchStream,
)

__all__ = [
    "ETCD_INSTALL_HINT",
    "Compacted",
    "CoordinationError",
    "Coordinator",
    "CoordinatorUnavailable",
    "Delete",
    "Election",
    "EtcdCluster",
    "EtcdCoordinator",
    "EtcdMember",
    "EtcdProcessError",
    "Event",
    "EventKind",
    "KeyValue",
    "Leadership",
    "Lease",
    "LeaseLost",
    "LocalCoordinationServer",
    "LocalCoordinator",
    "ManualClock",
    "Op",
    "Put",
    "Snapshot",
    "TxnResult",
    "WatchStream",
    "etcd_binary",
    "etcd_version",
]
