"""What a Ferry cluster keeps in etcd, and how each value is encoded.

Every key lives under ``/ferry/<cluster>/``:

- ``nodes/<node>``: a live node's addresses, attached to the node's lease, so the key
  disappears when the node stops renewing it (membership).
- ``controller``: held by the elected controller (``ferrymq._coordination.Election``).
- ``partitions/<partition>``: the replica set ``{leader, epoch, replicas, isr, min_isr,
  sync}``, written only by a transaction conditioned on its mod revision: by the node
  that places a new queue (creating it), by the controller when it elects a leader, by
  the leader when it changes the in-sync set; deleted with its queue.
- ``decommission/<node>``: an operator asked that ``node`` be emptied
  (``ferrymq cluster decommission``): the controller moves every replica off it and no
  new queue is placed on it. Deleted when the node is started again.
- ``queues/<name>``: the catalog (``ferrymq._cluster._catalog``): which replica set holds
  the queue, and its definition (attributes, tags, timestamps) as last committed there;
  or a tombstone saying when it was deleted.

Values are JSON: small, read by people debugging a cluster with ``etcdctl``, and
changed rarely (on membership and leadership changes, never per request).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ferrymq._replication._election import PartitionState

__all__ = ["Layout", "NodeInfo", "decode_node", "decode_state", "encode_node", "encode_state"]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node: str
    url: str  # the node's SQS endpoint, e.g. http://127.0.0.1:9324
    replication: tuple[str, int]  # where its replication transport listens
    pid: int


class Layout:
    """The keys of one cluster."""

    def __init__(self, cluster: str) -> None:
        if not cluster or "/" in cluster:
            raise ValueError(f"invalid cluster name {cluster!r}")
        self.cluster = cluster
        self.root = f"/ferry/{cluster}/".encode()
        self.nodes = self.root + b"nodes/"
        self.controller = self.root + b"controller"
        self.partitions = self.root + b"partitions/"
        self.queues = self.root + b"queues/"
        self.decommission = self.root + b"decommission/"

    def node(self, name: str) -> bytes:
        return self.nodes + name.encode()

    def partition(self, name: str) -> bytes:
        return self.partitions + name.encode()

    def queue(self, name: str) -> bytes:
        return self.queues + name.encode()

    def decommissioned(self, node: str) -> bytes:
        return self.decommission + node.encode()

    def name_of(self, prefix: bytes, key: bytes) -> str:
        if not key.startswith(prefix):
            raise ValueError(f"{key!r} is not under {prefix!r}")
        return key[len(prefix):].decode()


def encode_node(info: NodeInfo) -> bytes:
    return json.dumps({"url": info.url, "replication": list(info.replication),
                       "pid": info.pid}, sort_keys=True).encode()


def decode_node(name: str, raw: bytes) -> NodeInfo:
    doc = json.loads(raw)
    host, port = doc["replication"]
    return NodeInfo(name, str(doc["url"]), (str(host), int(port)), int(doc["pid"]))


def encode_state(state: PartitionState) -> bytes:
    doc = {
        "leader": state.leader, "epoch": state.epoch, "replicas": list(state.replicas),
        "isr": list(state.isr), "min_isr": state.min_isr, "sync": state.sync,
    }
    if state.moving is not None:
        doc["moving"] = list(state.moving)
    return json.dumps(doc, sort_keys=True).encode()


def decode_state(raw: bytes) -> PartitionState:
    doc = json.loads(raw)
    leader = doc["leader"]
    return PartitionState(
        leader=None if leader is None else str(leader), epoch=int(doc["epoch"]),
        replicas=tuple(str(n) for n in doc["replicas"]),
        isr=tuple(str(n) for n in doc["isr"]), min_isr=int(doc["min_isr"]),
        sync=bool(doc["sync"]),
        moving=None if not doc.get("moving") else (str(doc["moving"][0]),
                                                    str(doc["moving"][1])))
