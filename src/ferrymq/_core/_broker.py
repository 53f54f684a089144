"""The broker core: every queue of one node, and every SQS action routed to them.

Queue-level actions (create, delete, attributes, tags, permissions, listing, move
tasks) live here; message-level actions are delegated to each queue's
``MessageQueue``. ``execute`` validates one request, changes state and returns the
effect records it applied; ``apply`` replays effect records (restart recovery, and
later replication followers). Pure: the caller passes ``now_ms`` and ``Entropy``.

A request applies all of its effects or none of them, except for retention: the
messages of a queue it touches that are past their retention period are removed first,
because they are due at that time whatever the request says, and the request's checks
see the queue without them. If the request then fails, the ``SqsError`` carries those
removals (``SqsError.effects``) and the caller commits them before it answers, exactly
as it commits a successful request's effects. Every other check runs before anything
is applied, so a failed request leaves nothing else behind.

Queues on other brokers (cluster mode, one broker per replica set): given a
``QueueDirectory``, a broker checks a RedrivePolicy, a move task's destination and the
dead-letter sources of a queue against queues it does not hold, too. A message that
must move to such a queue (a redrive into a remote dead-letter queue, a move task with a
remote destination) cannot be moved by one command: it is leased for export instead
(``MessageQueue.lease_for_export``) and an ``Export`` recorded, which the shell drains
(``drain_exports``), copies with ``import_messages`` on the destination's broker and
then completes with ``complete_export`` here. Without a directory none of this happens.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, assert_never
from urllib.parse import urlsplit

from ferrymq._core import _attributes as attrs
from ferrymq._core._effects import (
    DedupRecorded,
    Effect,
    HighWaterMarks,
    MessageReceived,
    MessageRemoved,
    MessageStored,
    MoveTaskUpserted,
    QueueDeleted,
    QueuePurged,
    QueueUpserted,
    ReceiveAttemptRecorded,
    VisibilityChanged,
)
from ferrymq._core._errors import InternalError, SqsError, invalid_parameter, missing_parameter
from ferrymq._core._messages import string_list
from ferrymq._core._queue import BodyBudget, MessageQueue
from ferrymq._core._records import (
    Entropy,
    Export,
    MessageRecord,
    MoveTaskRecord,
    QueueDirectory,
    QueueRecord,
    RemoteQueue,
)

__all__ = ["READ_ONLY_ACTIONS", "Broker", "Outcome", "Replication", "RequestInfo"]

# The actions ``execute(..., read_only=True)`` answers: they change nothing but lazily
# applied retention, which a read-only call skips.
READ_ONLY_ACTIONS = frozenset({
    "GetQueueUrl", "ListQueues", "GetQueueAttributes", "ListQueueTags",
    "ListDeadLetterSourceQueues", "ListMessageMoveTasks",
})

_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
_FIFO_NAME = re.compile(r"^[A-Za-z0-9_-]{1,75}\.fifo$")
_LABEL = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
# SQS returns at most this many URLs per ListQueues / ListDeadLetterSourceQueues page.
_LIST_PAGE_MAX = 1000
# A message move task may be asked to go at most this fast (SQS's documented cap).
_MOVE_RATE_MAX_PER_S = 500
# Without an explicit rate, SQS picks a "system optimized" rate; we use the cap.
_MOVE_RATE_DEFAULT_PER_S = _MOVE_RATE_MAX_PER_S
# A move task's rate is counted over at most this much time since it last moved: after
# a pause (a restart, a takeover, messages held back behind in-flight FIFO messages) it
# goes on at its rate instead of catching up on the whole pause at once. One second
# keeps a rate of 1 per second working with the shell's 100 ms steps.
_MOVE_CATCH_UP_MS_MAX = 1_000
# ListMessageMoveTasks returns at most this many tasks (SQS's limit).
_MOVE_TASKS_LISTED_MAX = 10
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


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What the core needs to know about the caller of one request."""

    base_url: str  # "http://host:port", for queue URLs in responses
    sender_id: str


@dataclass(slots=True)
class Outcome:
    response: dict[str, Any]
    effects: list[Effect]
    # ReceiveMessage only: how long the caller may keep retrying an empty receive
    # (long polling), and which queue to watch for arrivals meanwhile.
    wait_ms: int = 0
    queue: str | None = None
    # ReceiveMessage only: messages rendered with ``"Body": None`` because their body
    # is not in memory, as (queue, message id, the message's response dict). The shell
    # reads those bodies from the store in the same commit and fills them in.
    body_fetches: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)


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


# Reserved tags: CreateQueue may say how a queue is to be replicated.
_TAG_REPLICAS = "ferry:replicas"
_TAG_MIN_ISR = "ferry:min-insync-replicas"
_TAG_DURABILITY = "ferry:durability"
_FERRY_TAGS = (_TAG_REPLICAS, _TAG_MIN_ISR, _TAG_DURABILITY)
# Replicas a queue may ask for at most: more copies than this buy no safety a
# self-hosted cluster needs, and every one costs a follower's disk.
_REPLICAS_MAX = 7


@dataclass(slots=True)
class _Queue:
    record: QueueRecord
    messages: MessageQueue
    attributes: dict[str, str] = field(default_factory=dict)


class Broker:
    def __init__(
        self,
        *,
        account_id: str = "000000000000",
        region: str = "us-east-1",
        purge_interval_ms: int = 60_000,
        recreate_delay_ms: int = 60_000,
        body_memory_bytes_max: int | None = None,
        replication: Replication | None = None,
        directory: QueueDirectory | None = None,
    ) -> None:
        self.account_id = account_id
        # The other brokers' queues (module docstring); None: this broker is alone.
        self._directory = directory
        # The exports recorded since the shell last drained them, one per message
        # ((queue, message id) -> Export, in the order recorded): a message leased
        # again replaces its older export, whose token is stale, so this never holds
        # more than one export per message. The shell drains it after each commit.
        # Not state to replicate: after a failover the leases lapse and the next
        # receive or move task step exports those messages again.
        self._exports: dict[tuple[str, str], Export] = {}
        self.replication = replication or Replication()
        self.region = region
        self.purge_interval_ms = purge_interval_ms
        self.recreate_delay_ms = recreate_delay_ms
        self._queues: dict[str, _Queue] = {}
        # Shared by every queue: the bound is on the process, not per queue.
        self.body_budget = BodyBudget(body_memory_bytes_max)
        self._deleted_ms: dict[str, int] = {}
        self._tasks: dict[str, MoveTaskRecord] = {}
        # The retention removals the request being executed has applied so far: a
        # failing request hands them on in its SqsError (module docstring).
        self._housekeeping: list[Effect] = []
        self._handlers: dict[str, Callable[[dict[str, Any], int, Entropy, RequestInfo], Outcome]]
        self._handlers = {
            "CreateQueue": self._create_queue,
            "DeleteQueue": self._delete_queue,
            "GetQueueUrl": self._get_queue_url,
            "ListQueues": self._list_queues,
            "GetQueueAttributes": self._get_queue_attributes,
            "SetQueueAttributes": self._set_queue_attributes,
            "PurgeQueue": self._purge_queue,
            "SendMessage": self._send_message,
            "SendMessageBatch": self._send_message_batch,
            "ReceiveMessage": self._receive_message,
            "DeleteMessage": self._delete_message,
            "DeleteMessageBatch": self._delete_message_batch,
            "ChangeMessageVisibility": self._change_visibility,
            "ChangeMessageVisibilityBatch": self._change_visibility_batch,
            "TagQueue": self._tag_queue,
            "UntagQueue": self._untag_queue,
            "ListQueueTags": self._list_queue_tags,
            "AddPermission": self._add_permission,
            "RemovePermission": self._remove_permission,
            "ListDeadLetterSourceQueues": self._list_dead_letter_sources,
            "StartMessageMoveTask": self._start_move_task,
            "ListMessageMoveTasks": self._list_move_tasks,
            "CancelMessageMoveTask": self._cancel_move_task,
        }

    # ---- public ----------------------------------------------------------

    @property
    def actions(self) -> frozenset[str]:
        return frozenset(self._handlers)

    def execute(
        self, action: str, params: Mapping[str, Any], now_ms: int, entropy: Entropy,
        info: RequestInfo, *, read_only: bool = False,
    ) -> Outcome:
        """``read_only``: answer without any effect (the shell cannot store one now);
        only READ_ONLY_ACTIONS, and retention is left for a later call to apply."""
        handler = self._handlers.get(action)
        if handler is None:
            raise SqsError("InvalidAction", f"The action {action} is not valid for this endpoint.")
        if not isinstance(params, Mapping):
            raise invalid_parameter("The request parameters must be a map.")
        if read_only:
            if action not in READ_ONLY_ACTIONS:
                raise InternalError(f"{action} cannot be answered read-only")
            if action == "GetQueueAttributes":
                return self._get_queue_attributes(
                    dict(params), now_ms, entropy, info, expire=False
                )
        housekeeping = self._housekeeping
        housekeeping.clear()
        try:
            return handler(dict(params), now_ms, entropy, info)
        except SqsError as exc:
            if housekeeping:
                exc.effects = tuple(housekeeping)
            raise

    def queue_exists(self, name: str) -> bool:
        return name in self._queues

    def queue_messages(self, name: str) -> MessageQueue | None:
        entry = self._queues.get(name)
        return entry.messages if entry else None

    def queue_names(self) -> list[str]:
        return sorted(self._queues)

    def queue_record(self, name: str) -> QueueRecord | None:
        entry = self._queues.get(name)
        return entry.record if entry else None

    def list_page(
        self, names: list[str], params: Mapping[str, Any], info: RequestInfo, key: str
    ) -> dict[str, Any]:
        """One page of queue URLs for ``names`` (sorted), under ``key``, with the
        MaxResults / NextToken rules of ListQueues and ListDeadLetterSourceQueues: for a
        cluster node listing the catalog's queues, which no one broker holds."""
        return self._page(names, params, info, key)

    def drain_exports(self) -> list[Export]:
        """The exports recorded by every ``execute`` and ``tick`` since the last call,
        in the order recorded (module docstring)."""
        exports = list(self._exports.values())
        self._exports.clear()
        return exports

    def import_messages(
        self, queue: str, records: Sequence[tuple[MessageRecord, str | None]], now_ms: int,
        entropy: Entropy,
    ) -> list[Effect]:
        """Store copies exported by another broker in ``queue``, each with its source
        ARN (``Export.source_arn``), keeping their ids, as a same-broker move stores
        them. A message ``queue`` already holds is skipped: a copy retried after its
        lease lapsed. All or nothing: every record is checked before any is stored."""
        entry = self._queues.get(queue)
        if entry is None:
            raise SqsError("QueueDoesNotExist", "The specified queue does not exist.")
        for record, _ in records:
            if record.body is None:
                # The body travels with the copy: nothing here could fetch it.
                raise InternalError(
                    f"message {record.message_id} imported into {queue!r} without its body")
        messages = entry.messages
        effects: list[Effect] = messages.expire(now_ms)
        for record, source_arn in records:
            if messages.has_message(record.message_id):
                continue
            effects.extend(messages.accept_moved(record, now_ms, entropy, source_arn))
        return effects

    def complete_export(
        self, queue: str, message_id: str, token: str, now_ms: int
    ) -> list[Effect]:
        """Remove an exported message once its copy is committed at its destination,
        if it is still held under the export's ``token``; otherwise, or for a queue
        that is gone, nothing. ``now_ms``: for symmetry with the other commands; the
        removal does not depend on the time."""
        del now_ms
        entry = self._queues.get(queue)
        if entry is None:
            return []
        return entry.messages.complete_export(message_id, token)

    def tick(self, now_ms: int, entropy: Entropy) -> list[Effect]:
        """Housekeeping the caller runs periodically: retention for idle queues and
        progress of running message move tasks."""
        effects: list[Effect] = []
        for entry in list(self._queues.values()):
            effects.extend(entry.messages.expire(now_ms))
        for handle, task in list(self._tasks.items()):
            if task.status == "RUNNING":
                effects.extend(self._advance_task(handle, now_ms, entropy))
        return effects

    def has_running_tasks(self) -> bool:
        return any(t.status == "RUNNING" for t in self._tasks.values())

    def apply(self, effect: Effect) -> None:
        """Replay one effect record (restore, replication), as ``_effects.py`` defines it."""
        match effect:
            case MessageStored():
                self._queue_for_apply(effect.record.queue).apply(effect)
            case (MessageReceived() | MessageRemoved() | VisibilityChanged() | DedupRecorded()
                  | ReceiveAttemptRecorded() | QueuePurged() | HighWaterMarks()):
                self._queue_for_apply(effect.queue).apply(effect)
            case QueueUpserted():
                record = effect.record
                entry = self._queues.get(record.name)
                attributes = dict(record.attributes)
                settings = attrs.settings_from(attributes)
                if entry is None:
                    queue = MessageQueue(
                        record.name, self._arn(record.name), settings, self.body_budget
                    )
                    self._queues[record.name] = _Queue(record, queue, attributes)
                else:
                    entry.record = record
                    entry.attributes = attributes
                    entry.messages.settings = settings
                self._deleted_ms.pop(record.name, None)
            case QueueDeleted():
                gone = self._queues.pop(effect.name, None)
                if gone is not None:
                    gone.messages.release_bodies()
                self._deleted_ms[effect.name] = effect.deleted_at_ms
            case MoveTaskUpserted():
                self._tasks[effect.record.task_handle] = effect.record
            case _:
                assert_never(effect)

    def dump_state(self, now_ms: int) -> dict[str, Any]:
        """Everything this broker holds at ``now_ms``, as plain values: two brokers that
        hold the same state dump equal (``MessageQueue.dump_state`` says what is left
        out, and why). For tests and for checking a follower against its leader."""
        return {
            # In creation order: housekeeping visits queues in it.
            "queues": [
                (name, entry.record, sorted(entry.attributes.items()),
                 entry.messages.settings, entry.messages.dump_state(now_ms))
                for name, entry in self._queues.items()
            ],
            "deleted": sorted(self._deleted_ms.items()),
            # In start order: ListMessageMoveTasks breaks ties of started_ms with it.
            "tasks": list(self._tasks.values()),
        }

    # ---- helpers ---------------------------------------------------------

    def _queue_for_apply(self, name: str) -> MessageQueue:
        entry = self._queues.get(name)
        if entry is None:
            raise InternalError(f"effect for unknown queue {name!r}")
        return entry.messages

    def _arn(self, name: str) -> str:
        return f"arn:aws:sqs:{self.region}:{self.account_id}:{name}"

    def _remote(self, name: str) -> RemoteQueue | None:
        """The queue ``name`` if another broker holds it (never one this broker holds)."""
        if self._directory is None or name in self._queues:
            return None
        return self._directory.lookup(name)

    def _any_queue(self, name: str) -> RemoteQueue | None:
        """The queue ``name``, this broker's own or another's, as the checks of one
        queue against another see it."""
        entry = self._queues.get(name)
        if entry is not None:
            return RemoteQueue(name, self._arn(name), entry.attributes)
        return self._remote(name)

    def _record_exports(self, exports: list[Export]) -> None:
        for export in exports:
            key = (export.source_queue, export.message_id)
            self._exports.pop(key, None)  # re-recorded: now the newest
            self._exports[key] = export

    def _url(self, info: RequestInfo, name: str) -> str:
        return f"{info.base_url}/{self.account_id}/{name}"

    def _resolve(self, params: Mapping[str, Any]) -> _Queue:
        url = params.get("QueueUrl")
        if url is None:
            raise missing_parameter("QueueUrl")
        if not isinstance(url, str):
            raise invalid_parameter("Value for parameter QueueUrl is invalid.")
        # A full URL names the queue in its last path segment; a bare name is
        # accepted too, as several SDK helpers and peers' users rely on it.
        path = urlsplit(url).path if "://" in url else url
        name = path.rstrip("/").rsplit("/", 1)[-1]
        entry = self._queues.get(name)
        if entry is None:
            raise SqsError("QueueDoesNotExist", "The specified queue does not exist.")
        return entry

    def _housekeep(self, queue: MessageQueue, now_ms: int) -> list[Effect]:
        """Retention on ``queue`` before a request looks at it (module docstring)."""
        effects = queue.expire(now_ms)
        self._housekeeping.extend(effects)
        return effects

    def _upsert(self, record: QueueRecord) -> QueueUpserted:
        effect = QueueUpserted(record)
        self.apply(effect)
        return effect

    def _attribute_names(self, params: Mapping[str, Any], key: str) -> list[str]:
        """A list of names, bounded before any per-name work (see NAMES_PER_LIST_MAX)."""
        return string_list(params.get(key), key)

    # ---- queues ------------------------------------------------------------

    def _create_queue(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        name = params.get("QueueName")
        if name is None:
            raise missing_parameter("QueueName")
        if not isinstance(name, str):
            raise invalid_parameter("Value for parameter QueueName is invalid.")
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
            return Outcome({"QueueUrl": self._url(info, name)}, [])
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
        return Outcome({"QueueUrl": self._url(info, name)}, [self._upsert(record)])

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
                permission == "byQueue" and self._arn(name) not in allow_doc["sourceQueueArns"]
            ):
                raise invalid_parameter(
                    prefix + "Queue " + target_arn + " does not allow this queue to use it as a "
                    "dead-letter queue."
                )

    def _delete_queue(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        entry = self._resolve(params)
        effect = QueueDeleted(entry.record.name, now_ms)
        self.apply(effect)
        return Outcome({}, [effect])

    def _get_queue_url(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        name = params.get("QueueName")
        if name is None:
            raise missing_parameter("QueueName")
        if not isinstance(name, str):
            raise invalid_parameter("Value for parameter QueueName is invalid.")
        owner = params.get("QueueOwnerAWSAccountId")
        if name not in self._queues or (owner is not None and owner != self.account_id):
            raise SqsError("QueueDoesNotExist", "The specified queue does not exist.")
        return Outcome({"QueueUrl": self._url(info, name)}, [])

    def _page(
        self, names: list[str], params: Mapping[str, Any], info: RequestInfo, key: str
    ) -> dict[str, Any]:
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
            out[key] = [self._url(info, n) for n in page]
        # SQS only paginates when the caller asked for pages.
        if max_results is not None and len(names) > limit:
            out["NextToken"] = base64.urlsafe_b64encode(page[-1].encode()).decode()
        return out

    def _list_queues(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        prefix = params.get("QueueNamePrefix", "")
        if not isinstance(prefix, str):
            raise invalid_parameter("Value for parameter QueueNamePrefix is invalid.")
        names = [n for n in sorted(self._queues) if n.startswith(prefix)]
        return Outcome(self._page(names, params, info, "QueueUrls"), [])

    def _get_queue_attributes(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo,
        expire: bool = True,
    ) -> Outcome:
        entry = self._resolve(params)
        wanted = self._attribute_names(params, "AttributeNames")
        for name in wanted:
            if name != "All" and name not in attrs.ALL_NAMES:
                raise SqsError("InvalidAttributeName", f"Unknown Attribute {name}.")
        effects = self._housekeep(entry.messages, now_ms) if expire else []
        everything = "All" in wanted
        visible, not_visible, delayed = entry.messages.counts(now_ms)
        values: dict[str, str] = {
            "ApproximateNumberOfMessages": str(visible),
            "ApproximateNumberOfMessagesNotVisible": str(not_visible),
            "ApproximateNumberOfMessagesDelayed": str(delayed),
            "CreatedTimestamp": str(entry.record.created_ms // 1000),
            "LastModifiedTimestamp": str(entry.record.modified_ms // 1000),
            "QueueArn": self._arn(entry.record.name),
        }
        values.update((k, v) for k, v in entry.attributes.items() if v != "")
        selected = {
            k: v for k, v in values.items() if everything or k in wanted
        }
        response: dict[str, Any] = {"Attributes": selected} if selected else {}
        return Outcome(response, effects)

    def _set_queue_attributes(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        entry = self._resolve(params)
        given = params.get("Attributes")
        if given is None:
            raise missing_parameter("Attributes")
        fifo = entry.attributes.get("FifoQueue") == "true"
        requested = attrs.normalize(
            given, fifo=fifo, creating=False, current=entry.attributes
        )
        self._check_redrive(entry.record.name, fifo, requested, given)
        attributes = dict(entry.attributes)
        for key, value in requested.items():
            if value == "" and key in ("Policy", "RedrivePolicy", "RedriveAllowPolicy",
                                       "KmsMasterKeyId"):
                attributes.pop(key, None)
            else:
                attributes[key] = value
        if "KmsMasterKeyId" in requested and requested["KmsMasterKeyId"]:
            attributes["SqsManagedSseEnabled"] = "false"
        record = replace(
            entry.record, attributes=tuple(sorted(attributes.items())), modified_ms=now_ms
        )
        return Outcome({}, [self._upsert(record)])

    def _purge_queue(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        entry = self._resolve(params)
        last = entry.record.last_purge_ms
        if last is not None and now_ms - last < self.purge_interval_ms:
            raise SqsError(
                "PurgeQueueInProgress",
                f"Only one PurgeQueue operation on {entry.record.name} is allowed every 60 "
                "seconds.",
            )
        effects: list[Effect] = list(entry.messages.purge(now_ms))
        effects.append(self._upsert(replace(entry.record, last_purge_ms=now_ms)))
        return Outcome({}, effects)

    # ---- messages ----------------------------------------------------------

    def _message_queue(self, params: Mapping[str, Any], now_ms: int) -> tuple[MessageQueue,
                                                                              list[Effect]]:
        queue = self._resolve(params).messages
        return queue, self._housekeep(queue, now_ms)

    def _send(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo,
        batch: bool,
    ) -> Outcome:
        queue, effects = self._message_queue(params, now_ms)
        send = queue.send_message_batch if batch else queue.send_message
        response, more = send(params, now_ms, entropy, info.sender_id)
        return Outcome(response, effects + more, queue=queue.name)

    def _send_message(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        return self._send(params, now_ms, entropy, info, batch=False)

    def _send_message_batch(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        return self._send(params, now_ms, entropy, info, batch=True)

    def _receive_message(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        queue, effects = self._message_queue(params, now_ms)
        dlq_name = queue.settings.dead_letter_queue
        dlq_entry = self._queues.get(dlq_name) if dlq_name else None
        dlq = dlq_entry.messages if dlq_entry else None
        if dlq is not None:
            effects.extend(self._housekeep(dlq, now_ms))
        remote_dlq = None
        if dlq_name and dlq is None and self._remote(dlq_name) is not None:
            remote_dlq = dlq_name
        exports: list[Export] = []
        response, more, wait_ms = queue.receive_message(
            params, now_ms, entropy, dlq, remote_dead_letter_queue=remote_dlq,
            exports=exports)
        self._record_exports(exports)
        fetches = [
            (queue.name, message["MessageId"], message)
            for message in response.get("Messages", ())
            if message["Body"] is None
        ]
        return Outcome(response, effects + more, wait_ms=wait_ms, queue=queue.name,
                       body_fetches=fetches)

    def _on_handles(
        self, params: dict[str, Any], now_ms: int,
        method: Callable[[MessageQueue, dict[str, Any], int],
                         tuple[dict[str, Any], list[Effect]]],
    ) -> Outcome:
        """Delete or change visibility by receipt handle (single or batch)."""
        queue, effects = self._message_queue(params, now_ms)
        response, more = method(queue, params, now_ms)
        return Outcome(response, effects + more, queue=queue.name)

    def _delete_message(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        return self._on_handles(params, now_ms, MessageQueue.delete_message)

    def _delete_message_batch(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        return self._on_handles(params, now_ms, MessageQueue.delete_message_batch)

    def _change_visibility(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        return self._on_handles(params, now_ms, MessageQueue.change_message_visibility)

    def _change_visibility_batch(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        return self._on_handles(params, now_ms, MessageQueue.change_message_visibility_batch)

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
            limit = _REPLICAS_MAX if key == _TAG_REPLICAS else rep.replicas
            if not (value.isascii() and value.isdigit() and 1 <= int(value) <= limit):
                raise invalid_parameter(
                    f"Value {value} for tag {key} is invalid. Allowed: an integer from 1 "
                    f"to {limit}.")
            configured = rep.replicas if key == _TAG_REPLICAS else rep.min_isr
            if int(value) != configured:
                raise invalid_parameter(
                    f"Value {value} for tag {key} is not available: {where}.")

    def _tag_queue(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        entry = self._resolve(params)
        if "Tags" not in params:
            raise missing_parameter("Tags")
        new = self._validate_tags(params["Tags"], entry.record.name)
        for key in new:
            if key.startswith("ferry:"):
                raise invalid_parameter(
                    f"Tag {key} is reserved: ferry: tags are set by CreateQueue only.")
        if not new:
            raise invalid_parameter("The request must contain a non-empty list of tags.")
        tags = dict(entry.record.tags)
        tags.update(new)
        if len(tags) > _TAGS_MAX:
            raise invalid_parameter(f"Too many tags added for queue {entry.record.name}.")
        record = replace(entry.record, tags=tuple(sorted(tags.items())))
        return Outcome({}, [self._upsert(record)])

    def _untag_queue(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        entry = self._resolve(params)
        if "TagKeys" not in params:
            raise missing_parameter("TagKeys")
        keys = self._attribute_names(params, "TagKeys")
        if not keys:
            raise invalid_parameter("The request must contain a non-empty list of tag keys.")
        for key in keys:
            if key.startswith("ferry:"):
                raise invalid_parameter(
                    f"Tag {key} is reserved: ferry: tags are set by CreateQueue only.")
        gone = frozenset(keys)
        tags = {k: v for k, v in entry.record.tags if k not in gone}
        record = replace(entry.record, tags=tuple(sorted(tags.items())))
        return Outcome({}, [self._upsert(record)])

    def _list_queue_tags(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        entry = self._resolve(params)
        tags = dict(entry.record.tags)
        return Outcome({"Tags": tags} if tags else {}, [])

    def _add_permission(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        entry = self._resolve(params)
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
        accounts = self._attribute_names(params, "AWSAccountIds")
        actions = self._attribute_names(params, "Actions")
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
        policy = self._policy(entry)
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
                "Resource": self._arn(entry.record.name),
            }
        )
        return Outcome({}, [self._set_policy(entry, policy, now_ms)])

    def _remove_permission(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        entry = self._resolve(params)
        label = params.get("Label")
        if label is None:
            raise missing_parameter("Label")
        policy = self._policy(entry)
        statements = [s for s in policy["Statement"] if s.get("Sid") != label]
        if len(statements) == len(policy["Statement"]):
            # Recorded on AWS (after the queue's last statement was removed).
            raise invalid_parameter(
                f"Value {label} for parameter Label is invalid. Reason: can't find label."
            )
        policy["Statement"] = statements
        return Outcome({}, [self._set_policy(entry, policy if statements else None, now_ms)])

    def _policy(self, entry: _Queue) -> dict[str, Any]:
        text = entry.attributes.get("Policy")
        if text:
            doc = json.loads(text)  # stored, so within the policy bounds (check_policy)
            if isinstance(doc, dict) and isinstance(doc.get("Statement"), list):
                return doc
        return {
            "Version": _POLICY_VERSION,
            "Id": f"{self._arn(entry.record.name)}/SQSDefaultPolicy",
            "Statement": [],
        }

    def _set_policy(
        self, entry: _Queue, policy: dict[str, Any] | None, now_ms: int
    ) -> QueueUpserted:
        attributes = dict(entry.attributes)
        if policy is None:
            attributes.pop("Policy", None)
        else:
            text = json.dumps(policy, separators=(",", ":"))
            # The policy quotas hold for what AddPermission builds as for a Policy set
            # directly, so every stored Policy is within them.
            attrs.check_policy(text)
            attributes["Policy"] = text
        return self._upsert(
            replace(entry.record, attributes=tuple(sorted(attributes.items())),
                    modified_ms=now_ms)
        )

    # ---- dead-letter queues and move tasks ---------------------------------

    def _sources_of(self, dlq_name: str) -> list[str]:
        """The queues whose RedrivePolicy targets ``dlq_name``: this broker's own, and
        the directory's others (what it says of a queue held here is not asked)."""
        names = {
            name for name, entry in self._queues.items()
            if entry.messages.settings.dead_letter_queue == dlq_name
        }
        if self._directory is not None:
            names.update(name for name in self._directory.dead_letter_sources(dlq_name)
                         if name not in self._queues)
        return sorted(names)

    def _list_dead_letter_sources(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        entry = self._resolve(params)
        names = self._sources_of(entry.record.name)
        return Outcome(self._page(names, params, info, "queueUrls"), [])

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

    def _queue_by_arn(self, arn: Any, parameter: str) -> _Queue:
        if not isinstance(arn, str):
            raise missing_parameter(parameter)
        name = attrs.queue_name_from_arn(arn)
        entry = self._queues.get(name or "")
        if entry is None or self._arn(entry.record.name) != arn:
            raise SqsError(
                "ResourceNotFoundException",
                f"The resource that you specified for the {parameter} parameter doesn't exist.",
            )
        return entry

    def _start_move_task(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        if "SourceArn" not in params:
            raise missing_parameter("SourceArn")
        source = self._queue_by_arn(params["SourceArn"], "SourceArn")
        destination_arn = params.get("DestinationArn")
        if destination_arn is not None:
            self._check_destination(destination_arn)
        rate = params.get("MaxNumberOfMessagesPerSecond")
        if rate is not None and (
            isinstance(rate, bool) or not isinstance(rate, int)
            or not 1 <= rate <= _MOVE_RATE_MAX_PER_S
        ):
            raise invalid_parameter(
                f"Value {rate} for parameter MaxNumberOfMessagesPerSecond is invalid. Reason: "
                f"Must be between 1 and {_MOVE_RATE_MAX_PER_S}."
            )
        if not self._sources_of(source.record.name):
            raise invalid_parameter("Source queue must be configured as a Dead Letter Queue.")
        source_arn = self._arn(source.record.name)
        if any(t.source_arn == source_arn and t.status == "RUNNING"
               for t in self._tasks.values()):
            raise invalid_parameter(
                "There is already a task running. Only one active task is allowed for a source "
                "queue arn at a given time."
            )
        handle = base64.b64encode(
            json.dumps({"taskId": entropy.token(), "sourceArn": source_arn}).encode()
        ).decode()
        to_move = source.messages.approximate_number_of_messages(now_ms)
        record = MoveTaskRecord(
            task_handle=handle,
            source_arn=source_arn,
            destination_arn=destination_arn,
            max_per_second=rate,
            status="RUNNING",
            started_ms=now_ms,
            moved=0,
            to_move=to_move,
            progress_ms=now_ms,
        )
        effect = MoveTaskUpserted(record)
        self.apply(effect)
        return Outcome({"TaskHandle": handle}, [effect])

    def _advance_task(self, handle: str, now_ms: int, entropy: Entropy) -> list[Effect]:
        task = self._tasks[handle]
        source_name = attrs.queue_name_from_arn(task.source_arn) or ""
        source = self._queues.get(source_name)
        effects: list[Effect] = []

        def finish(status: str, reason: str | None = None) -> None:
            record = replace(task, status=status, failure_reason=reason,
                             moved=task.moved + moved, progress_ms=now_ms)
            effect = MoveTaskUpserted(record)
            self.apply(effect)
            effects.append(effect)

        moved = 0
        if source is None:
            finish("FAILED", "AWS.SimpleQueueService.NonExistentQueue")
            return effects
        rate = task.max_per_second or _MOVE_RATE_DEFAULT_PER_S
        # Counted from the record, never from memory of its own: whoever holds the task's
        # record (after a restart, a follower taking over) paces it alike.
        elapsed_ms = min(now_ms - task.progress_ms, _MOVE_CATCH_UP_MS_MAX)
        budget = elapsed_ms * rate // 1000
        if budget <= 0:
            return effects
        effects.extend(source.messages.expire(now_ms))
        for record in source.messages.take_visible(budget, now_ms):
            dest_arn = task.destination_arn or record.dead_letter_source_arn
            dest_name = (attrs.queue_name_from_arn(dest_arn) if dest_arn else None) or ""
            dest = self._queues.get(dest_name)
            if dest is None and self._remote(dest_name) is not None:
                # Counted as moved once exported (SQS's count is approximate too); a
                # copy that fails makes it visible here again when its lease lapses.
                export, leased = source.messages.lease_for_export(
                    record.message_id, dest_name, None, now_ms, entropy)
                self._record_exports([export])
                effects.extend(leased)
                moved += 1
                continue
            if dest is None:
                finish("FAILED", "AWS.SimpleQueueService.NonExistentQueue")
                return effects
            removed = source.messages.remove(record.message_id)  # frees its body's room
            effects.extend(dest.messages.accept_moved(record, now_ms, entropy, None))
            effects.extend(removed)
            moved += 1
        if source.messages.approximate_number_of_messages(now_ms) == 0 or (
            task.moved + moved >= task.to_move
        ):
            finish("COMPLETED")
        elif moved:
            effect = MoveTaskUpserted(replace(task, moved=task.moved + moved, progress_ms=now_ms))
            self.apply(effect)
            effects.append(effect)
        return effects

    def _list_move_tasks(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        if "SourceArn" not in params:
            raise missing_parameter("SourceArn")
        source = self._queue_by_arn(params["SourceArn"], "SourceArn")
        max_results = params.get("MaxResults", 1)
        if isinstance(max_results, bool) or not isinstance(max_results, int) or not (
            1 <= max_results <= _MOVE_TASKS_LISTED_MAX
        ):
            raise invalid_parameter(
                f"Value {max_results} for parameter MaxResults is invalid. Reason: You must "
                f"enter a number that's between 1 and {_MOVE_TASKS_LISTED_MAX}."
            )
        source_arn = self._arn(source.record.name)
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
            if task.status == "RUNNING":
                item["TaskHandle"] = task.task_handle
            if task.destination_arn:
                item["DestinationArn"] = task.destination_arn
            if task.max_per_second is not None:
                item["MaxNumberOfMessagesPerSecond"] = task.max_per_second
            if task.failure_reason:
                item["FailureReason"] = task.failure_reason
            results.append(item)
        return Outcome({"Results": results}, [])

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

    def _cancel_move_task(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
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
        effect = MoveTaskUpserted(replace(task, status="CANCELLED"))
        self.apply(effect)
        return Outcome({"ApproximateNumberOfMessagesMoved": task.moved}, [effect])
