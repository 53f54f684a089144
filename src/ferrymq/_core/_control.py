"""The control plane of a broker: what queues exist and how each is defined, never
their messages.

What belongs here: queue definitions (``QueueRecord`` and its attributes, normalised,
and the ``QueueSettings`` decoded from them), the times recently deleted queues were
deleted at, message move task records, and every check and action that concerns only
those: CreateQueue / DeleteQueue validation and records, GetQueueUrl, ListQueues, the
attribute half of GetQueueAttributes and SetQueueAttributes, tags (the reserved
``ferry:`` tags included), permissions, the cross-queue checks of RedrivePolicy and
RedriveAllowPolicy, ListDeadLetterSourceQueues, and the validation and records of
StartMessageMoveTask / ListMessageMoveTasks / CancelMessageMoveTask. Messages are the
data plane's (``MessageQueue`` in ``_queue.py``, one per queue); ``Broker`` composes the
two and is the only caller here. Pure, like the rest of the core.

An action here *decides*: it validates the request against the definitions and returns
its response and the effects it would apply (``ControlResult``), none applied yet; the
caller applies them (``Broker.apply``, which also makes or drops the queue's
``MessageQueue``) only once every check has passed, so a refused request changes
nothing. ``apply`` is the control plane's half of ``Broker.apply``: the effects on
definitions and move tasks (``ControlEffect``), exactly as ``_effects.py`` defines them.

In a cluster each replica set's broker has its own control plane, holding the
definitions of the queues on that set: its log is the truth it runs on, and the
cluster's catalog in etcd (``_cluster/_catalog.py``) is the copy every node reads. The
definitions of queues on other replica sets come from that catalog, through a
``QueueDirectory``, for the checks of one queue against another.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, assert_never
from urllib.parse import urlsplit

from ferrymq._core import _attributes as attrs
from ferrymq._core._effects import Effect, MoveTaskUpserted, QueueDeleted, QueueUpserted
from ferrymq._core._errors import InternalError, SqsError, invalid_parameter, missing_parameter
from ferrymq._core._messages import string_list
from ferrymq._core._records import (
    Entropy,
    MoveTaskRecord,
    QueueDirectory,
    QueueRecord,
    RemoteQueue,
)
from ferrymq._core._settings import QueueSettings

__all__ = [
    "MOVE_CATCH_UP_MS_MAX",
    "MOVE_RATE_DEFAULT_PER_S",
    "MOVE_TASKS_LISTED_MAX",
    "MOVE_TASK_HANDLE_PARAM",
    "MOVE_TASK_HANDLES_LISTED_PARAM",
    "PARTITIONS_MAX",
    "ControlEffect",
    "ControlPlane",
    "ControlResult",
    "QueueDefinition",
    "Replication",
    "RequestInfo",
    "check_move_rate",
    "queue_name_of",
    "task_already_running",
]

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_FIFO_NAME = re.compile(r"^[A-Za-z0-9_-]{1,75}\.fifo$")
_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
# SQS returns at most this many URLs per ListQueues / ListDeadLetterSourceQueues page.
_LIST_PAGE_MAX = 1000
# A message move task may be asked to go at most this fast (SQS's documented cap).
_MOVE_RATE_MAX_PER_S = 500
# Without an explicit rate, SQS picks a "system optimized" rate; we use the cap.
MOVE_RATE_DEFAULT_PER_S = _MOVE_RATE_MAX_PER_S
# A move task's rate is counted over at most this much time since it last moved: after
# a pause (a restart, a takeover, messages held back behind in-flight FIFO messages) it
# goes on at its rate instead of catching up on the whole pause at once. One second
# keeps a rate of 1 per second working with the shell's 100 ms steps.
MOVE_CATCH_UP_MS_MAX = 1_000
# ListMessageMoveTasks returns at most this many tasks (SQS's limit).
MOVE_TASKS_LISTED_MAX = 10
# Parameters only a node's own partition calls carry (no SQS member has a colon, and the
# gateway passes on only the members of the action's input shape, so no client can set
# them). A queue of several partitions runs one move task per partition under one
# handle: the first partition makes it, the others are given it; and its listing
# matches the partitions' tasks by handle, which SQS lists only for a running task.
MOVE_TASK_HANDLE_PARAM = "ferry:TaskHandle"
MOVE_TASK_HANDLES_LISTED_PARAM = "ferry:ListTaskHandles"
# AddPermission accepts at most this many actions per statement (SQS's limit).
_PERMISSION_ACTIONS_MAX = 7
# A queue policy may name at most this many principals (SQS's policy quota), so one
# AddPermission cannot add more accounts than this.
_PERMISSION_ACCOUNTS_MAX = 50
# Task handles are base64 of {"taskId": ..., "sourceArn": ...} (AWS's format too): a
# few hundred characters. Anything longer is not a handle and is not decoded.
_TASK_HANDLE_CHARS_MAX = 1024
# The Version SQS writes into a policy that AddPermission creates (recorded on AWS).
_POLICY_VERSION = "2008-10-17"
_PERMISSION_ACTIONS = frozenset(
    {
        "*",
        "SendMessage",
        "ReceiveMessage",
        "DeleteMessage",
        "ChangeMessageVisibility",
        "GetQueueAttributes",
        "GetQueueUrl",
        "ListDeadLetterSourceQueues",
        "PurgeQueue",
        "ListQueueTags",
    }
)
_TAG_KEY_MAX = 128
_TAG_VALUE_MAX = 256
_TAGS_MAX = 50

# Reserved tags: CreateQueue may say how a queue is to be replicated.
_TAG_REPLICAS = "ferry:replicas"
_TAG_MIN_ISR = "ferry:min-insync-replicas"
_TAG_DURABILITY = "ferry:durability"
_TAG_PARTITIONS = "ferry:partitions"
_FERRY_TAGS = (_TAG_REPLICAS, _TAG_MIN_ISR, _TAG_DURABILITY, _TAG_PARTITIONS)
# Partitions a queue may ask for at most (docs/cluster.md): each is a replica set.
PARTITIONS_MAX = 256
# Replicas a queue may ask for at most: more copies than this buy no safety a
# self-hosted cluster needs, and every one costs a follower's disk.
_REPLICAS_MAX = 7

# The attributes SetQueueAttributes removes when given an empty value.
_REMOVABLE = ("Policy", "RedrivePolicy", "RedriveAllowPolicy", "KmsMasterKeyId")


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the core needs to know about the caller of one request."""

    base_url: str  # "http://host:port", for queue URLs in responses
    sender_id: str


@dataclass(frozen=True, slots=True)
class Replication:
    """How the node keeps its queues: ``replicas`` copies, writes acknowledged once
    ``min_isr`` in-sync copies (``sync``) or the leader (not ``sync``) has them. What the
    reserved ``ferry:`` tags of CreateQueue are checked against."""

    replicas: int = 1
    min_isr: int = 1
    sync: bool = True
    # A replica set of a cluster (one queue's), not ``ferrymq serve``: only the texts
    # of the ferry: tag checks differ.
    cluster: bool = False
    # Partitions of the queue, each a replica set of its own (a cluster's; serve has 1).
    partitions: int = 1


@dataclass(slots=True)
class QueueDefinition:
    """One queue as the control plane holds it: its record, the record's attributes as
    a map, and the settings the data plane runs on, decoded from them once."""

    record: QueueRecord
    attributes: dict[str, str]
    settings: QueueSettings


# The effects the control plane applies (the others are the data plane's).
ControlEffect = QueueUpserted | QueueDeleted | MoveTaskUpserted
# What an action here returns: its response and the effects to apply, none applied yet.
ControlResult = tuple[dict[str, Any], list[Effect]]


def check_move_rate(rate: object) -> None:
    """StartMessageMoveTask's MaxNumberOfMessagesPerSecond, if given."""
    if rate is not None and (
        isinstance(rate, bool) or not isinstance(rate, int)
        or not 1 <= rate <= _MOVE_RATE_MAX_PER_S
    ):
        raise invalid_parameter(
            f"Value {rate} for parameter MaxNumberOfMessagesPerSecond is invalid. Reason: "
            f"Must be between 1 and {_MOVE_RATE_MAX_PER_S}."
        )


def task_already_running() -> SqsError:
    return invalid_parameter(
        "There is already a task running. Only one active task is allowed for a source "
        "queue arn at a given time."
    )


def queue_name_of(params: Mapping[str, Any]) -> str:
    """The queue a request's QueueUrl names (whether or not it exists)."""
    url = params.get("QueueUrl")
    if url is None:
        raise missing_parameter("QueueUrl")
    if not isinstance(url, str):
        raise invalid_parameter("Value for parameter QueueUrl is invalid.")
    # A full URL names the queue in its last path segment; a bare name is
    # accepted too, as several SDK helpers and peers' users rely on it.
    path = urlsplit(url).path if "://" in url else url
    return path.rstrip("/").rsplit("/", 1)[-1]


def _names(params: Mapping[str, Any], key: str) -> list[str]:
    """A list of names, bounded before any per-name work (see NAMES_PER_LIST_MAX)."""
    return string_list(params.get(key), key)


def _no_queue() -> SqsError:
    return SqsError("QueueDoesNotExist", "The specified queue does not exist.")


def _queue_name_param(params: Mapping[str, Any]) -> str:
    """The QueueName of CreateQueue / GetQueueUrl, present and a string."""
    name = params.get("QueueName")
    if name is None:
        raise missing_parameter("QueueName")
    if not isinstance(name, str):
        raise invalid_parameter("Value for parameter QueueName is invalid.")
    return name


class ControlPlane:
    """Queue definitions, deletions and move tasks of one broker (module docstring)."""

    def __init__(
        self,
        *,
        account_id: str,
        region: str,
        purge_interval_ms: int,
        recreate_delay_ms: int,
        replication: Replication,
        directory: QueueDirectory | None,
    ) -> None:
        self.account_id = account_id
        self.region = region
        self.purge_interval_ms = purge_interval_ms
        self.recreate_delay_ms = recreate_delay_ms
        self.replication = replication
        # The other brokers' queues; None: this broker is alone.
        self._directory = directory
        # In creation order: dump_state lists queues in it.
        self._queues: dict[str, QueueDefinition] = {}
        self._deleted_ms: dict[str, int] = {}
        # In start order: ListMessageMoveTasks breaks ties of started_ms with it.
        self._tasks: dict[str, MoveTaskRecord] = {}

    # ---- state -------------------------------------------------------------

    def apply(self, effect: ControlEffect) -> None:
        """Replay one effect on definitions or move tasks, as ``_effects.py`` defines it."""
        match effect:
            case QueueUpserted():
                record = effect.record
                attributes = dict(record.attributes)
                settings = attrs.settings_from(attributes)
                definition = self._queues.get(record.name)
                if definition is None:
                    self._queues[record.name] = QueueDefinition(record, attributes, settings)
                else:
                    definition.record = record
                    definition.attributes = attributes
                    definition.settings = settings
                self._deleted_ms.pop(record.name, None)
            case QueueDeleted():
                self._queues.pop(effect.name, None)
                self._deleted_ms[effect.name] = effect.deleted_at_ms
            case MoveTaskUpserted():
                self._tasks[effect.record.task_handle] = effect.record
            case _:
                assert_never(effect)

    def definition(self, name: str) -> QueueDefinition | None:
        return self._queues.get(name)

    def definitions(self) -> list[QueueDefinition]:
        """Every queue's definition, in creation order."""
        return list(self._queues.values())

    def names(self) -> list[str]:
        return sorted(self._queues)

    def deleted(self) -> list[tuple[str, int]]:
        """The remembered deletions, (name, deleted_at_ms), sorted by name."""
        return sorted(self._deleted_ms.items())

    def tasks(self) -> list[MoveTaskRecord]:
        """Every move task's record, in start order."""
        return list(self._tasks.values())

    def task(self, handle: str) -> MoveTaskRecord:
        return self._tasks[handle]

    def running_tasks(self) -> list[str]:
        """The handles of the running move tasks, in start order."""
        return [handle for handle, task in self._tasks.items() if task.status == "RUNNING"]

    def has_running_tasks(self) -> bool:
        return any(t.status == "RUNNING" for t in self._tasks.values())

    def arn(self, name: str) -> str:
        return f"arn:aws:sqs:{self.region}:{self.account_id}:{name}"

    def url(self, info: RequestInfo, name: str) -> str:
        return f"{info.base_url}/{self.account_id}/{name}"

    def resolve(self, params: Mapping[str, Any]) -> QueueDefinition:
        """The definition of the queue the request's QueueUrl names, which must exist."""
        definition = self._queues.get(queue_name_of(params))
        if definition is None:
            raise _no_queue()
        return definition

    def remote(self, name: str) -> RemoteQueue | None:
        """The queue ``name`` if another broker holds it (never one this broker holds)."""
        if self._directory is None or name in self._queues:
            return None
        return self._directory.lookup(name)

    def _any_queue(self, name: str) -> RemoteQueue | None:
        """The queue ``name``, this broker's own or another's, as the checks of one
        queue against another see it."""
        definition = self._queues.get(name)
        if definition is not None:
            return RemoteQueue(name, self.arn(name), definition.attributes)
        return self.remote(name)

    def _upsert(self, record: QueueRecord) -> ControlResult:
        return {}, [QueueUpserted(record)]

    # ---- queues ------------------------------------------------------------

    def create_queue(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> ControlResult:
        name = _queue_name_param(params)
        given = params.get("Attributes") or {}
        if not isinstance(given, dict):
            raise invalid_parameter("Value for parameter Attributes is invalid.")
        wants_fifo = str(given.get("FifoQueue", "false")).lower() == "true"
        if wants_fifo:
            if not _FIFO_NAME.match(name):
                raise invalid_parameter(
                    "The name of a FIFO queue can only include alphanumeric characters, hyphens, "
                    "or underscores, must end with .fifo suffix and be 1 to 80 in length."
                )
        # A ".fifo" name without FifoQueue=true is a bad standard name: AWS answers
        # the standard-name text for it (boto/botocore#3058), not the FIFO one.
        elif not _QUEUE_NAME.match(name):
            raise invalid_parameter(
                "Can only include alphanumeric characters, hyphens, or underscores. "
                "1 to 80 in length"
            )
        tags = self._validate_tags(params.get("tags") or {}, name)
        self._check_ferry_tags(tags)
        requested = attrs.normalize(given, fifo=wants_fifo, creating=True)
        if wants_fifo and self.replication.partitions > 1 \
                and requested.get("DeduplicationScope") != "messageGroup":
            # As SQS's high-throughput FIFO mode: deduplication across the whole queue
            # would need every partition's ids in one place.
            raise invalid_parameter(
                f"Value {self.replication.partitions} for tag {_TAG_PARTITIONS} is invalid: "
                "a FIFO queue is partitioned only when its DeduplicationScope is "
                "messageGroup; with queue-wide deduplication it is kept in one partition.")
        self._check_redrive(name, wants_fifo, requested, given)
        existing = self._queues.get(name)
        if existing is not None:
            for key, value in requested.items():
                if existing.attributes.get(key, "") != value:
                    raise SqsError(
                        "QueueNameExists",
                        "A queue already exists with the same name and a different value for "
                        f"attribute {key}",
                    )
            return {"QueueUrl": self.url(info, name)}, []
        deleted_ms = self._deleted_ms.get(name)
        if deleted_ms is not None and now_ms - deleted_ms < self.recreate_delay_ms:
            raise SqsError(
                "QueueDeletedRecently",
                "You must wait 60 seconds after deleting a queue before you can create another "
                "with the same name.",
            )
        attributes = attrs.defaults_for(wants_fifo)
        attributes.update(requested)
        if "KmsMasterKeyId" in requested and "SqsManagedSseEnabled" not in requested:
            attributes["SqsManagedSseEnabled"] = "false"
        record = QueueRecord(
            name=name,
            attributes=tuple(sorted(attributes.items())),
            tags=tuple(sorted(tags.items())),
            created_ms=now_ms,
            modified_ms=now_ms,
        )
        return {"QueueUrl": self.url(info, name)}, [QueueUpserted(record)]

    def _check_redrive(
        self, name: str, fifo: bool, requested: Mapping[str, str], given: Mapping[str, Any]
    ) -> None:
        """The cross-queue checks of a RedrivePolicy that ``normalize`` accepted.
        ``given`` is what the client sent: SQS echoes the policy exactly as sent (a
        string ``"maxReceiveCount":"15"`` stays one), not in Ferry's normal form."""
        policy = requested.get("RedrivePolicy")
        if not policy:
            return
        doc = json.loads(policy)
        target_arn = doc["deadLetterTargetArn"]
        target = self._any_queue(attrs.queue_name_from_arn(target_arn) or "")
        # A string: normalize refuses any other RedrivePolicy value, and bounds its size.
        sent = given["RedrivePolicy"]
        prefix = f"Value {sent} for parameter RedrivePolicy is invalid. Reason: "
        if target is None or target_arn != target.arn:
            raise invalid_parameter(prefix + "Dead letter target does not exist.")
        if (target.attributes.get("FifoQueue") == "true") != fifo:
            raise invalid_parameter(
                prefix + "Dead-letter queue must be same type of queue as the source."
            )
        allow = target.attributes.get("RedriveAllowPolicy")
        if allow:
            allow_doc = json.loads(allow)
            permission = allow_doc["redrivePermission"]
            if permission == "denyAll" or (
                permission == "byQueue" and self.arn(name) not in allow_doc["sourceQueueArns"]
            ):
                raise invalid_parameter(
                    prefix + "Queue " + target_arn + " does not allow this queue to use it as a "
                    "dead-letter queue."
                )

    def delete_queue(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> ControlResult:
        definition = self.resolve(params)
        return {}, [QueueDeleted(definition.record.name, now_ms)]

    def get_queue_url(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> ControlResult:
        name = _queue_name_param(params)
        owner = params.get("QueueOwnerAWSAccountId")
        # A queue of another replica set's counts too (a cluster node answers
        # GetQueueUrl for the whole cluster on a core whose directory is the catalog).
        exists = name in self._queues or self.remote(name) is not None
        if not exists or (owner is not None and owner != self.account_id):
            raise _no_queue()
        return {"QueueUrl": self.url(info, name)}, []

    def page(
        self, names: list[str], params: Mapping[str, Any], info: RequestInfo, key: str
    ) -> dict[str, Any]:
        """One page of queue URLs for ``names`` (sorted), under ``key``, with the
        MaxResults / NextToken rules of ListQueues and ListDeadLetterSourceQueues."""
        max_results = params.get("MaxResults")
        token = params.get("NextToken")
        if max_results is not None and (
            isinstance(max_results, bool) or not isinstance(max_results, int)
            or not 1 <= max_results <= _LIST_PAGE_MAX
        ):
            raise invalid_parameter(
                f"Value {max_results} for parameter MaxResults is invalid. "
                f"Reason: MaxResults must be an integer between 1 and {_LIST_PAGE_MAX}."
            )
        start_after = ""
        if token is not None:
            try:
                start_after = base64.urlsafe_b64decode(str(token).encode()).decode()
            except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
                raise invalid_parameter("Invalid NextToken value.") from exc
        names = [n for n in names if n > start_after]
        limit = max_results if max_results is not None else _LIST_PAGE_MAX
        page = names[:limit]
        out: dict[str, Any] = {}
        if page or key == "queueUrls":
            out[key] = [self.url(info, n) for n in page]
        # SQS only paginates when the caller asked for pages.
        if max_results is not None and len(names) > limit:
            out["NextToken"] = base64.urlsafe_b64encode(page[-1].encode()).decode()
        return out

    def list_queues(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> ControlResult:
        prefix = params.get("QueueNamePrefix", "")
        if not isinstance(prefix, str):
            raise invalid_parameter("Value for parameter QueueNamePrefix is invalid.")
        names = [n for n in sorted(self._queues) if n.startswith(prefix)]
        return self.page(names, params, info, "QueueUrls"), []

    # ---- attributes --------------------------------------------------------

    def attributes_request(self, params: Mapping[str, Any]) -> tuple[QueueDefinition, list[str]]:
        """GetQueueAttributes' checks: the queue, then the attribute names asked for."""
        definition = self.resolve(params)
        wanted = _names(params, "AttributeNames")
        for name in wanted:
            if name != "All" and name not in attrs.ALL_NAMES:
                raise SqsError("InvalidAttributeName", f"Unknown Attribute {name}.")
        return definition, wanted

    def attributes_response(
        self, definition: QueueDefinition, wanted: list[str], counts: tuple[int, int, int]
    ) -> dict[str, Any]:
        """GetQueueAttributes' answer, given the data plane's message counts (visible,
        not visible, delayed)."""
        everything = "All" in wanted
        visible, not_visible, delayed = counts
        record = definition.record
        values: dict[str, str] = {
            "ApproximateNumberOfMessages": str(visible),
            "ApproximateNumberOfMessagesNotVisible": str(not_visible),
            "ApproximateNumberOfMessagesDelayed": str(delayed),
            "CreatedTimestamp": str(record.created_ms // 1000),
            "LastModifiedTimestamp": str(record.modified_ms // 1000),
            "QueueArn": self.arn(record.name),
        }
        values.update((k, v) for k, v in definition.attributes.items() if v != "")
        selected = {
            k: v for k, v in values.items() if everything or k in wanted
        }
        return {"Attributes": selected} if selected else {}

    def set_queue_attributes(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> ControlResult:
        definition = self.resolve(params)
        given = params.get("Attributes")
        if given is None:
            raise missing_parameter("Attributes")
        fifo = definition.attributes.get("FifoQueue") == "true"
        requested = attrs.normalize(
            given, fifo=fifo, creating=False, current=definition.attributes
        )
        self._check_redrive(definition.record.name, fifo, requested, given)
        attributes = dict(definition.attributes)
        for key, value in requested.items():
            if value == "" and key in _REMOVABLE:
                attributes.pop(key, None)
            else:
                attributes[key] = value
        if "KmsMasterKeyId" in requested and requested["KmsMasterKeyId"]:
            attributes["SqsManagedSseEnabled"] = "false"
        return self._upsert(replace(
            definition.record, attributes=tuple(sorted(attributes.items())), modified_ms=now_ms
        ))

    def purge_request(self, params: Mapping[str, Any], now_ms: int) -> QueueUpserted:
        """PurgeQueue's checks, and the record it leaves (not applied): the data plane
        drops the messages."""
        definition = self.resolve(params)
        record = definition.record
        last = record.last_purge_ms
        if last is not None and now_ms - last < self.purge_interval_ms:
            raise SqsError(
                "PurgeQueueInProgress",
                f"Only one PurgeQueue operation on {record.name} is allowed every 60 "
                "seconds.",
            )
        return QueueUpserted(replace(record, last_purge_ms=now_ms))

    # ---- tags and permissions ---------------------------------------------

    def _validate_tags(self, tags: Any, queue_name: str) -> dict[str, str]:
        if not isinstance(tags, dict):
            raise invalid_parameter("Value for parameter Tags is invalid.")
        if len(tags) > _TAGS_MAX:
            # No request can carry more tags than a queue may have: refused before any
            # per-tag work.
            raise invalid_parameter(f"Too many tags added for queue {queue_name}.")
        for key, value in tags.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise invalid_parameter("Tag keys and values must be strings.")
            if not 1 <= len(key) <= _TAG_KEY_MAX:
                raise invalid_parameter(
                    f"Tag key must be between 1 and {_TAG_KEY_MAX} characters long."
                )
            if len(value) > _TAG_VALUE_MAX:
                raise invalid_parameter(
                    f"Tag value must be at most {_TAG_VALUE_MAX} characters long."
                )
            if key.startswith("aws:"):
                raise invalid_parameter("Tag keys must not start with the reserved prefix aws:.")
        return dict(tags)

    def _check_ferry_tags(self, tags: Mapping[str, str]) -> None:
        """The reserved ``ferry:`` tags of CreateQueue: well formed, and what this core
        keeps its queues as. A cluster places a new queue on a replica set built as its
        tags say and runs this on a core of that set, so a mismatch means CreateQueue
        of an existing queue asking for other settings (or ``serve``, which keeps one
        copy); the message says what is kept."""
        rep = self.replication
        where = ("ferrymq serve keeps one copy of every queue" if not rep.cluster else
                 f"the queue's replica set has {rep.replicas} replicas, {rep.min_isr} of "
                 f"them in sync, {'sync' if rep.sync else 'async'} durability")
        for key, value in tags.items():
            if not key.startswith("ferry:"):
                continue
            if key not in _FERRY_TAGS:
                raise invalid_parameter(
                    f"Unknown reserved tag {key}: the ferry: tags are "
                    f"{', '.join(_FERRY_TAGS)}.")
            if key == _TAG_DURABILITY:
                if value not in ("sync", "async"):
                    raise invalid_parameter(
                        f"Value {value} for tag {key} is invalid. Allowed: sync, async.")
                wanted = "sync" if rep.sync else "async"
                if value != wanted:
                    raise invalid_parameter(
                        f"Value {value} for tag {key} is not available: {where}.")
                continue
            limit = {_TAG_REPLICAS: _REPLICAS_MAX, _TAG_PARTITIONS: PARTITIONS_MAX}.get(
                key, rep.replicas)
            if not (value.isascii() and value.isdigit() and 1 <= int(value) <= limit):
                raise invalid_parameter(
                    f"Value {value} for tag {key} is invalid. Allowed: an integer from 1 "
                    f"to {limit}.")
            if key == _TAG_PARTITIONS:
                # A cluster's node checks the count against the catalog (a replica set
                # holds one partition and does not know how many its queue has).
                if not rep.cluster and int(value) != 1:
                    raise invalid_parameter(
                        f"Value {value} for tag {key} is not available: ferrymq serve "
                        "keeps every queue in one partition.")
                continue
            configured = rep.replicas if key == _TAG_REPLICAS else rep.min_isr
            if int(value) != configured:
                raise invalid_parameter(
                    f"Value {value} for tag {key} is not available: {where}.")

    def tag_queue(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> ControlResult:
        definition = self.resolve(params)
        record = definition.record
        if "Tags" not in params:
            raise missing_parameter("Tags")
        new = self._validate_tags(params["Tags"], record.name)
        for key in new:
            if key.startswith("ferry:"):
                raise invalid_parameter(
                    f"Tag {key} is reserved: ferry: tags are set by CreateQueue only.")
        if not new:
            raise invalid_parameter("The request must contain a non-empty list of tags.")
        tags = dict(record.tags)
        tags.update(new)
        if len(tags) > _TAGS_MAX:
            raise invalid_parameter(f"Too many tags added for queue {record.name}.")
        return self._upsert(replace(record, tags=tuple(sorted(tags.items()))))

    def untag_queue(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> ControlResult:
        definition = self.resolve(params)
        if "TagKeys" not in params:
            raise missing_parameter("TagKeys")
        keys = _names(params, "TagKeys")
        if not keys:
            raise invalid_parameter("The request must contain a non-empty list of tag keys.")
        for key in keys:
            if key.startswith("ferry:"):
                raise invalid_parameter(
                    f"Tag {key} is reserved: ferry: tags are set by CreateQueue only.")
        gone = frozenset(keys)
        tags = {k: v for k, v in definition.record.tags if k not in gone}
        return self._upsert(replace(definition.record, tags=tuple(sorted(tags.items()))))

    def list_queue_tags(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> ControlResult:
        definition = self.resolve(params)
        tags = dict(definition.record.tags)
        return ({"Tags": tags} if tags else {}), []

    def add_permission(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> ControlResult:
        definition = self.resolve(params)
        for key in ("Label", "AWSAccountIds", "Actions"):
            if key not in params:
                raise missing_parameter(key)
        label = params["Label"]
        if not isinstance(label, str) or not _LABEL.match(label):
            raise invalid_parameter(
                f"Value {label} for parameter Label is invalid. Reason: Can only include "
                "alphanumeric characters, hyphens, or underscores. 1 to 80 in length."
            )
        accounts, actions = params["AWSAccountIds"], params["Actions"]
        # Counted before any per-item work: both lists have small SQS quotas.
        if isinstance(actions, list) and len(actions) > _PERMISSION_ACTIONS_MAX:
            raise SqsError(
                "OverLimit",
                f"{len(actions)} Actions were found, maximum allowed is "
                f"{_PERMISSION_ACTIONS_MAX}.",
            )
        if isinstance(accounts, list) and len(accounts) > _PERMISSION_ACCOUNTS_MAX:
            raise SqsError(
                "OverLimit",
                f"{len(accounts)} AWSAccountIds were found, maximum allowed is "
                f"{_PERMISSION_ACCOUNTS_MAX}.",
            )
        accounts = _names(params, "AWSAccountIds")
        actions = _names(params, "Actions")
        if not accounts:
            raise missing_parameter("AWSAccountIds")
        if not actions:
            raise missing_parameter("Actions")
        for action in actions:
            if action not in _PERMISSION_ACTIONS:
                raise invalid_parameter(
                    f"Value SQS:{action} for parameter ActionName is invalid. Reason: Please "
                    "refer to the appropriate WSDL for a list of valid actions."
                )
        policy = self._policy(definition)
        statements: list[dict[str, Any]] = policy["Statement"]
        if any(s.get("Sid") == label for s in statements):
            raise invalid_parameter(
                f"Value {label} for parameter Label is invalid. Reason: Already exists."
            )
        principals = [f"arn:aws:iam::{a}:root" for a in accounts]
        statements.append(
            {
                "Sid": label,
                "Effect": "Allow",
                "Principal": {"AWS": principals[0] if len(principals) == 1 else principals},
                "Action": (
                    f"SQS:{actions[0]}" if len(actions) == 1 else [f"SQS:{a}" for a in actions]
                ),
                "Resource": self.arn(definition.record.name),
            }
        )
        return self._set_policy(definition, policy, now_ms)

    def remove_permission(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> ControlResult:
        definition = self.resolve(params)
        label = params.get("Label")
        if label is None:
            raise missing_parameter("Label")
        policy = self._policy(definition)
        statements = [s for s in policy["Statement"] if s.get("Sid") != label]
        if len(statements) == len(policy["Statement"]):
            # Recorded on AWS (after the queue's last statement was removed).
            raise invalid_parameter(
                f"Value {label} for parameter Label is invalid. Reason: can't find label."
            )
        policy["Statement"] = statements
        return self._set_policy(definition, policy if statements else None, now_ms)

    def _policy(self, definition: QueueDefinition) -> dict[str, Any]:
        text = definition.attributes.get("Policy")
        if text:
            doc = json.loads(text)  # stored, so within the policy bounds (check_policy)
            if isinstance(doc, dict) and isinstance(doc.get("Statement"), list):
                return doc
        return {
            "Version": _POLICY_VERSION,
            "Id": f"{self.arn(definition.record.name)}/SQSDefaultPolicy",
            "Statement": [],
        }

    def _set_policy(
        self, definition: QueueDefinition, policy: dict[str, Any] | None, now_ms: int
    ) -> ControlResult:
        attributes = dict(definition.attributes)
        if policy is None:
            attributes.pop("Policy", None)
        else:
            text = json.dumps(policy, separators=(",", ":"))
            # The policy quotas hold for what AddPermission builds as for a Policy set
            # directly, so every stored Policy is within them.
            attrs.check_policy(text)
            attributes["Policy"] = text
        return self._upsert(
            replace(definition.record, attributes=tuple(sorted(attributes.items())),
                    modified_ms=now_ms)
        )

    # ---- dead-letter queues and move tasks ---------------------------------

    def _sources_of(self, dlq_name: str) -> list[str]:
        """The queues whose RedrivePolicy targets ``dlq_name``: this broker's own, and
        the directory's others (what it says of a queue held here is not asked)."""
        names = {
            name for name, definition in self._queues.items()
            if definition.settings.dead_letter_queue == dlq_name
        }
        if self._directory is not None:
            names.update(name for name in self._directory.dead_letter_sources(dlq_name)
                         if name not in self._queues)
        return sorted(names)

    def list_dead_letter_sources(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> ControlResult:
        definition = self.resolve(params)
        names = self._sources_of(definition.record.name)
        return self.page(names, params, info, "queueUrls"), []

    def _check_destination(self, arn: Any) -> None:
        """A move task's DestinationArn names a queue, this broker's or another's."""
        if not isinstance(arn, str):
            raise missing_parameter("DestinationArn")
        target = self._any_queue(attrs.queue_name_from_arn(arn) or "")
        if target is None or target.arn != arn:
            raise SqsError(
                "ResourceNotFoundException",
                "The resource that you specified for the DestinationArn parameter doesn't "
                "exist.",
            )

    def _queue_by_arn(self, arn: Any, parameter: str) -> QueueDefinition:
        if not isinstance(arn, str):
            raise missing_parameter(parameter)
        name = attrs.queue_name_from_arn(arn)
        definition = self._queues.get(name or "")
        if definition is None or self.arn(definition.record.name) != arn:
            raise SqsError(
                "ResourceNotFoundException",
                f"The resource that you specified for the {parameter} parameter doesn't exist.",
            )
        return definition

    def start_move_task(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy,
        messages_in: Callable[[str], int],
    ) -> ControlResult:
        """StartMessageMoveTask; ``messages_in(queue)``: how many messages the data
        plane holds in the source now, the task's ApproximateNumberOfMessagesToMove."""
        if "SourceArn" not in params:
            raise missing_parameter("SourceArn")
        source = self._queue_by_arn(params["SourceArn"], "SourceArn")
        destination_arn = params.get("DestinationArn")
        if destination_arn is not None:
            self._check_destination(destination_arn)
        rate = params.get("MaxNumberOfMessagesPerSecond")
        check_move_rate(rate)
        source_name = source.record.name
        if not self._sources_of(source_name):
            raise invalid_parameter("Source queue must be configured as a Dead Letter Queue.")
        source_arn = self.arn(source_name)
        if any(t.source_arn == source_arn and t.status == "RUNNING"
               for t in self._tasks.values()):
            raise task_already_running()
        handle = params.get(MOVE_TASK_HANDLE_PARAM)
        if handle is None:
            handle = base64.b64encode(
                json.dumps({"taskId": entropy.token(), "sourceArn": source_arn}).encode()
            ).decode()
        elif self.task_handle_source(handle) != source_arn or handle in self._tasks:
            raise InternalError(f"a partition's move task given the handle {handle!r} "
                                f"of another task or queue than {source_arn}")
        record = MoveTaskRecord(
            task_handle=handle,
            source_arn=source_arn,
            destination_arn=destination_arn,
            max_per_second=rate,
            status="RUNNING",
            started_ms=now_ms,
            moved=0,
            to_move=messages_in(source_name),
            progress_ms=now_ms,
        )
        return {"TaskHandle": handle}, [MoveTaskUpserted(record)]

    def list_move_tasks(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> ControlResult:
        if "SourceArn" not in params:
            raise missing_parameter("SourceArn")
        source = self._queue_by_arn(params["SourceArn"], "SourceArn")
        max_results = params.get("MaxResults", 1)
        if isinstance(max_results, bool) or not isinstance(max_results, int) or not (
            1 <= max_results <= MOVE_TASKS_LISTED_MAX
        ):
            raise invalid_parameter(
                f"Value {max_results} for parameter MaxResults is invalid. Reason: You must "
                f"enter a number that's between 1 and {MOVE_TASKS_LISTED_MAX}."
            )
        source_arn = self.arn(source.record.name)
        tasks = sorted(
            (t for t in self._tasks.values() if t.source_arn == source_arn),
            key=lambda t: t.started_ms,
            reverse=True,
        )[:max_results]
        results = []
        for task in tasks:
            item: dict[str, Any] = {
                "Status": task.status,
                "SourceArn": task.source_arn,
                "ApproximateNumberOfMessagesMoved": task.moved,
                "ApproximateNumberOfMessagesToMove": task.to_move,
                "StartedTimestamp": task.started_ms,
            }
            if task.status == "RUNNING" or params.get(MOVE_TASK_HANDLES_LISTED_PARAM) is True:
                item["TaskHandle"] = task.task_handle
            if task.destination_arn:
                item["DestinationArn"] = task.destination_arn
            if task.max_per_second is not None:
                item["MaxNumberOfMessagesPerSecond"] = task.max_per_second
            if task.failure_reason:
                item["FailureReason"] = task.failure_reason
            results.append(item)
        return {"Results": results}, []

    @staticmethod
    def task_handle_source(handle: object) -> str:
        """The source ARN a well-formed task handle carries."""
        invalid = invalid_parameter("Value for parameter TaskHandle is invalid.")
        if not isinstance(handle, str) or len(handle) > _TASK_HANDLE_CHARS_MAX:
            raise invalid
        try:
            text = base64.b64decode(handle, validate=True).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise invalid from exc
        doc = attrs.json_object(text)
        if doc is None:
            raise invalid
        task_id, source_arn = doc.get("taskId"), doc.get("sourceArn")
        if not isinstance(task_id, str) or not isinstance(source_arn, str):
            raise invalid
        return source_arn

    def cancel_move_task(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> ControlResult:
        handle = params.get("TaskHandle")
        if handle is None:
            raise missing_parameter("TaskHandle")
        # As recorded on AWS: a handle that does not decode is InvalidParameterValue; one
        # that does names its source queue, which must exist, and then its task.
        source_arn = self.task_handle_source(handle)
        self._queue_by_arn(source_arn, "SourceArn")
        task = self._tasks.get(handle)
        if task is None:
            raise SqsError("ResourceNotFoundException", "Task does not exist.")
        if task.status != "RUNNING":
            raise invalid_parameter("Only active tasks can be cancelled.")
        return ({"ApproximateNumberOfMessagesMoved": task.moved},
                [MoveTaskUpserted(replace(task, status="CANCELLED"))])
