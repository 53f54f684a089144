"""The queue catalog: which replica set holds each queue, kept in etcd and cached here.

Each queue has one key, ``queues/<name>`` (``_layout``), whose value is a
``QueueEntry``:

- ``creating``: a node placed the queue on a new replica set (the same transaction
  created ``partitions/<partition>``) and is waiting for that set's leader to create
  the queue. Not listed and not found until it is ``live``: a placement whose creator
  died before the queue existed is taken over by the next CreateQueue of that name.
- ``live``: the queue exists. ``record`` is its definition (attributes, tags,
  timestamps) as last committed on its replica set: the set's leader writes it after
  every committed change to the definition (CreateQueue, SetQueueAttributes, tags,
  permissions, purge), and again for all its queues when it starts leading, so a leader
  that died between its commit and this write is caught up by its successor.
- ``deleted``: a tombstone; ``deleted_ms`` (wall clock) keeps CreateQueue of the same
  name refused for the recreate delay, as SQS refuses it for 60 seconds.

The replica set's own log stays the truth the data plane runs on (the attributes a
receive needs are read on its hot path, from its core); the catalog is the cluster-wide
copy every node reads without asking anyone: GetQueueUrl, ListQueues, request routing,
and the checks of one queue against another (a dead-letter queue's type and
RedriveAllowPolicy, move tasks' destinations). docs/architecture.md says why the copy
is written after the commit rather than the other way round.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from ferrymq._core import RemoteQueue
from ferrymq._core._records import QueueRecord

__all__ = ["CREATING", "DELETED", "LIVE", "Catalog", "QueueEntry", "decode_entry",
           "encode_entry", "live_entry", "record_doc", "record_of", "tombstone"]

CREATING = "creating"
LIVE = "live"
DELETED = "deleted"
_STATUSES = (CREATING, LIVE, DELETED)


@dataclass(frozen=True, slots=True)
class QueueEntry:
    name: str
    status: str  # creating | live | deleted
    partition: str | None  # the first partition's replica set: it owns the definition
    record: QueueRecord | None = None
    deleted_ms: int | None = None
    # Every partition's replica set, in partition order (``partition`` first); empty for
    # a tombstone. A queue of one partition has just ``partition``.
    partitions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.partition is not None and not self.partitions:
            object.__setattr__(self, "partitions", (self.partition,))
        if self.partitions and self.partitions[0] != self.partition:
            raise ValueError(f"queue {self.name!r}: partitions {self.partitions} do not "
                             f"start with {self.partition!r}")


def record_doc(record: QueueRecord) -> dict[str, Any]:
    return {"attributes": dict(record.attributes), "tags": dict(record.tags),
            "created_ms": record.created_ms, "modified_ms": record.modified_ms,
            "last_purge_ms": record.last_purge_ms}


def record_of(name: str, doc: Mapping[str, Any]) -> QueueRecord:
    return QueueRecord(
        name=name,
        attributes=tuple(sorted((str(k), str(v)) for k, v in doc["attributes"].items())),
        tags=tuple(sorted((str(k), str(v)) for k, v in doc["tags"].items())),
        created_ms=int(doc["created_ms"]), modified_ms=int(doc["modified_ms"]),
        last_purge_ms=None if doc.get("last_purge_ms") is None
        else int(doc["last_purge_ms"]))


def encode_entry(entry: QueueEntry) -> bytes:
    doc: dict[str, Any] = {"status": entry.status, "partition": entry.partition}
    if len(entry.partitions) > 1:
        doc["partitions"] = list(entry.partitions)
    if entry.record is not None:
        doc["record"] = record_doc(entry.record)
    if entry.deleted_ms is not None:
        doc["deleted_ms"] = entry.deleted_ms
    return json.dumps(doc, sort_keys=True).encode()


def decode_entry(name: str, raw: bytes) -> QueueEntry:
    doc = json.loads(raw)
    status = str(doc["status"])
    if status not in _STATUSES:
        raise ValueError(f"queue {name!r}: unknown catalog status {status!r}")
    record = record_of(name, doc["record"]) if doc.get("record") is not None else None
    partition = doc.get("partition")
    partitions = tuple(str(p) for p in doc.get("partitions") or ())
    return QueueEntry(name, status, None if partition is None else str(partition), record,
                      None if doc.get("deleted_ms") is None else int(doc["deleted_ms"]),
                      partitions)


class Catalog:
    """This node's copy of ``queues/``, fed by a watch (``apply``), with each key's mod
    revision (the condition of the transactions that change it). It is also the
    ``QueueDirectory`` the replica sets' cores consult for queues they do not hold."""

    def __init__(self, region: str, account_id: str) -> None:
        self._region = region
        self._account_id = account_id
        self._entries: dict[str, tuple[QueueEntry, int]] = {}

    def reset(self, items: Iterable[tuple[QueueEntry, int]]) -> None:
        self._entries = {entry.name: (entry, revision) for entry, revision in items}

    def apply(self, entry: QueueEntry, revision: int) -> None:
        held = self._entries.get(entry.name)
        if held is None or held[1] <= revision:
            self._entries[entry.name] = (entry, revision)

    def forget(self, name: str, revision: int) -> None:
        held = self._entries.get(name)
        if held is not None and held[1] <= revision:
            del self._entries[name]

    def get(self, name: str) -> tuple[QueueEntry, int] | None:
        return self._entries.get(name)

    def live(self, name: str) -> QueueEntry | None:
        held = self._entries.get(name)
        return held[0] if held is not None and held[0].status == LIVE else None

    def live_names(self) -> list[str]:
        return sorted(name for name, (entry, _) in self._entries.items()
                      if entry.status == LIVE)

    def partitions(self) -> dict[str, str]:
        """Replica set -> queue, for every partition of every entry that has them."""
        return {partition: name for name, (entry, _) in self._entries.items()
                if entry.status != DELETED for partition in entry.partitions}

    def arn(self, name: str) -> str:
        return f"arn:aws:sqs:{self._region}:{self._account_id}:{name}"

    # ---- QueueDirectory -------------------------------------------------------------

    def lookup(self, name: str) -> RemoteQueue | None:
        entry = self.live(name)
        if entry is None or entry.record is None:
            return None
        return RemoteQueue(name=name, arn=self.arn(name),
                           attributes=dict(entry.record.attributes))

    def dead_letter_sources(self, dlq_name: str) -> list[str]:
        target = self.arn(dlq_name)
        found = []
        for name, (entry, _) in self._entries.items():
            if entry.status != LIVE or entry.record is None:
                continue
            policy = dict(entry.record.attributes).get("RedrivePolicy")
            if not policy:
                continue
            try:
                doc = json.loads(policy)
            except ValueError:
                continue
            if isinstance(doc, dict) and doc.get("deadLetterTargetArn") == target:
                found.append(name)
        return sorted(found)


def live_entry(name: str, partition: str, record: QueueRecord,
               partitions: tuple[str, ...] = ()) -> QueueEntry:
    return QueueEntry(name, LIVE, partition, record, partitions=partitions)


def tombstone(entry: QueueEntry, deleted_ms: int) -> QueueEntry:
    return replace(entry, status=DELETED, partition=None, record=None,
                   deleted_ms=deleted_ms, partitions=())
