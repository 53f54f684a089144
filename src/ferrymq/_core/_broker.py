"""The broker core: every queue of one node, and every SQS action routed to them.

A broker is two planes composed. The *control plane* (``ControlPlane``, ``_control.py``)
holds what queues exist and how each is defined: definitions, recent deletions, move
task records, and the actions and checks on those alone. The *data plane* is one
``MessageQueue`` (``_queue.py``) per queue: its messages and every action on them. This
module routes each action to one plane or to both in one command (PurgeQueue: the
record and the messages; GetQueueAttributes: the attributes and the counts; a receive:
its dead-letter queue from the definitions; a move task step: the task's record and
the messages it moves; CreateQueue / DeleteQueue: a definition, and a MessageQueue made
or dropped with it), and dispatches each effect to the plane that owns it. Message
actions go straight to the queue's ``MessageQueue``: the control plane is not on their
path.

``execute`` validates one request, changes state and returns the effect records it
applied; ``apply`` replays effect records (restart recovery, and later replication
followers). Pure: the caller passes ``now_ms`` and ``Entropy``.

A request applies all of its effects or none of them, except for retention: the
messages of a queue it touches that are past their retention period are removed first,
because they are due at that time whatever the request says, and the request's checks
see the queue without them. If the request then fails, the ``SqsError`` carries those
removals (``SqsError.effects``) and the caller commits them before it answers, exactly
as it commits a successful request's effects. Every other check runs before anything
is applied, so a failed request leaves nothing else behind: a control plane action
returns its effects unapplied and they are applied here once it returned.

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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, assert_never

from ferrymq._core import _attributes as attrs
from ferrymq._core._control import (
    MOVE_CATCH_UP_MS_MAX,
    MOVE_RATE_DEFAULT_PER_S,
    ControlPlane,
    ControlResult,
    Replication,
    RequestInfo,
    queue_name_of,
)
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
from ferrymq._core._errors import InternalError, SqsError, invalid_parameter
from ferrymq._core._queue import BodyBudget, MessageQueue
from ferrymq._core._records import (
    Entropy,
    Export,
    MessageRecord,
    QueueDirectory,
    QueueRecord,
)

__all__ = ["READ_ONLY_ACTIONS", "Broker", "Outcome", "Replication", "RequestInfo"]

# The actions ``execute(..., read_only=True)`` answers: they change nothing but lazily
# applied retention, which a read-only call skips.
READ_ONLY_ACTIONS = frozenset({
    "GetQueueUrl", "ListQueues", "GetQueueAttributes", "ListQueueTags",
    "ListDeadLetterSourceQueues", "ListMessageMoveTasks",
})

_Handler = Callable[[dict[str, Any], int, Entropy, RequestInfo], "Outcome"]
_ControlAction = Callable[[dict[str, Any], int, Entropy, RequestInfo], ControlResult]


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
        self._control = ControlPlane(
            account_id=account_id, region=region, purge_interval_ms=purge_interval_ms,
            recreate_delay_ms=recreate_delay_ms, replication=replication or Replication(),
            directory=directory,
        )
        # The data plane: one MessageQueue per queue the control plane defines, the
        # same names in the same (creation) order; ``apply`` keeps the two in step.
        self._queues: dict[str, MessageQueue] = {}
        # The exports recorded since the shell last drained them, one per message
        # ((queue, message id) -> Export, in the order recorded): a message leased
        # again replaces its older export, whose token is stale, so this never holds
        # more than one export per message. The shell drains it after each commit.
        # Not state to replicate: after a failover the leases lapse and the next
        # receive or move task step exports those messages again.
        self._exports: dict[tuple[str, str], Export] = {}
        # Shared by every queue: the bound is on the process, not per queue.
        self.body_budget = BodyBudget(body_memory_bytes_max)
        # The retention removals the request being executed has applied so far: a
        # failing request hands them on in its SqsError (module docstring).
        self._housekeeping: list[Effect] = []
        control = self._control
        self._handlers: dict[str, _Handler] = {
            "CreateQueue": self._decided(control.create_queue),
            "DeleteQueue": self._decided(control.delete_queue),
            "GetQueueUrl": self._decided(control.get_queue_url),
            "ListQueues": self._decided(control.list_queues),
            "GetQueueAttributes": self._get_queue_attributes,
            "SetQueueAttributes": self._decided(control.set_queue_attributes),
            "PurgeQueue": self._purge_queue,
            "SendMessage": self._send_message,
            "SendMessageBatch": self._send_message_batch,
            "ReceiveMessage": self._receive_message,
            "DeleteMessage": self._delete_message,
            "DeleteMessageBatch": self._delete_message_batch,
            "ChangeMessageVisibility": self._change_visibility,
            "ChangeMessageVisibilityBatch": self._change_visibility_batch,
            "TagQueue": self._decided(control.tag_queue),
            "UntagQueue": self._decided(control.untag_queue),
            "ListQueueTags": self._decided(control.list_queue_tags),
            "AddPermission": self._decided(control.add_permission),
            "RemovePermission": self._decided(control.remove_permission),
            "ListDeadLetterSourceQueues": self._decided(control.list_dead_letter_sources),
            "StartMessageMoveTask": self._start_move_task,
            "ListMessageMoveTasks": self._decided(control.list_move_tasks),
            "CancelMessageMoveTask": self._decided(control.cancel_move_task),
        }

    # ---- public ----------------------------------------------------------

    # The control plane's configuration, read where a broker is configured.
    @property
    def account_id(self) -> str:
        return self._control.account_id

    @property
    def region(self) -> str:
        return self._control.region

    @property
    def purge_interval_ms(self) -> int:
        return self._control.purge_interval_ms

    @property
    def recreate_delay_ms(self) -> int:
        return self._control.recreate_delay_ms

    @property
    def replication(self) -> Replication:
        return self._control.replication

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
        return self._queues.get(name)

    def queue_names(self) -> list[str]:
        return sorted(self._queues)

    def queue_record(self, name: str) -> QueueRecord | None:
        definition = self._control.definition(name)
        return definition.record if definition else None

    def list_page(
        self, names: list[str], params: Mapping[str, Any], info: RequestInfo, key: str
    ) -> dict[str, Any]:
        """One page of queue URLs for ``names`` (sorted), under ``key``, with the
        MaxResults / NextToken rules of ListQueues and ListDeadLetterSourceQueues: for a
        cluster node listing the catalog's queues, which no one broker holds."""
        return self._control.page(names, params, info, key)

    @staticmethod
    def task_handle_source(handle: object) -> str:
        """The source ARN a well-formed task handle carries."""
        return ControlPlane.task_handle_source(handle)

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
        messages = self._queues.get(queue)
        if messages is None:
            raise SqsError("QueueDoesNotExist", "The specified queue does not exist.")
        for record, _ in records:
            if record.body is None:
                # The body travels with the copy: nothing here could fetch it.
                raise InternalError(
                    f"message {record.message_id} imported into {queue!r} without its body")
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
        messages = self._queues.get(queue)
        if messages is None:
            return []
        return messages.complete_export(message_id, token)

    def tick(self, now_ms: int, entropy: Entropy) -> list[Effect]:
        """Housekeeping the caller runs periodically: retention for idle queues and
        progress of running message move tasks."""
        effects: list[Effect] = []
        for messages in list(self._queues.values()):
            effects.extend(messages.expire(now_ms))
        for handle in self._control.running_tasks():
            effects.extend(self._advance_task(handle, now_ms, entropy))
        return effects

    def has_running_tasks(self) -> bool:
        return self._control.has_running_tasks()

    def apply(self, effect: Effect) -> None:
        """Replay one effect record (restore, replication), as ``_effects.py`` defines it:
        the messages' to the data plane, the definitions' and move tasks' to the control
        plane, and a queue's creation and deletion to both."""
        match effect:
            case MessageStored():
                self._held(effect.record.queue).apply(effect)
            case (MessageReceived() | MessageRemoved() | VisibilityChanged() | DedupRecorded()
                  | ReceiveAttemptRecorded() | QueuePurged() | HighWaterMarks()):
                self._held(effect.queue).apply(effect)
            case QueueUpserted():
                name = effect.record.name
                self._control.apply(effect)
                definition = self._control.definition(name)
                if definition is None:
                    raise InternalError(f"queue {name!r} upserted but not defined")
                messages = self._queues.get(name)
                if messages is None:
                    self._queues[name] = MessageQueue(
                        name, self._control.arn(name), definition.settings, self.body_budget
                    )
                else:
                    messages.settings = definition.settings
            case QueueDeleted():
                self._control.apply(effect)
                gone = self._queues.pop(effect.name, None)
                if gone is not None:
                    gone.release_bodies()
            case MoveTaskUpserted():
                self._control.apply(effect)
            case _:
                assert_never(effect)

    def dump_state(self, now_ms: int) -> dict[str, Any]:
        """Everything this broker holds at ``now_ms``, as plain values: two brokers that
        hold the same state dump equal (``MessageQueue.dump_state`` says what is left
        out, and why). For tests and for checking a follower against its leader."""
        queues = []
        for definition in self._control.definitions():  # in creation order, as ticks go
            name = definition.record.name
            messages = self._held(name)
            queues.append((name, definition.record, sorted(definition.attributes.items()),
                           messages.settings, messages.dump_state(now_ms)))
        return {
            "queues": queues,
            "deleted": self._control.deleted(),
            # In start order: ListMessageMoveTasks breaks ties of started_ms with it.
            "tasks": self._control.tasks(),
        }

    # ---- helpers ---------------------------------------------------------

    def _held(self, name: str) -> MessageQueue:
        """The data plane of a queue that must exist: an effect's, or one the control
        plane defines (``apply`` keeps both planes' queues the same)."""
        messages = self._queues.get(name)
        if messages is None:
            raise InternalError(f"effect for unknown queue {name!r}")
        return messages

    def _decided(self, action: _ControlAction) -> _Handler:
        """A control plane action as a handler: its effects applied once it decided."""
        def handle(
            params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
        ) -> Outcome:
            response, effects = action(params, now_ms, entropy, info)
            for effect in effects:
                self.apply(effect)
            return Outcome(response, effects)
        return handle

    def _record_exports(self, exports: list[Export]) -> None:
        for export in exports:
            key = (export.source_queue, export.message_id)
            self._exports.pop(key, None)  # re-recorded: now the newest
            self._exports[key] = export

    def _housekeep(self, queue: MessageQueue, now_ms: int) -> list[Effect]:
        """Retention on ``queue`` before a request looks at it (module docstring)."""
        effects = queue.expire(now_ms)
        self._housekeeping.extend(effects)
        return effects

    # ---- actions on both planes --------------------------------------------

    def _get_queue_attributes(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo,
        expire: bool = True,
    ) -> Outcome:
        definition, wanted = self._control.attributes_request(params)
        messages = self._held(definition.record.name)
        effects = self._housekeep(messages, now_ms) if expire else []
        response = self._control.attributes_response(definition, wanted,
                                                     messages.counts(now_ms))
        return Outcome(response, effects)

    def _purge_queue(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        upsert = self._control.purge_request(params, now_ms)
        effects: list[Effect] = list(self._held(upsert.record.name).purge(now_ms))
        self.apply(upsert)
        effects.append(upsert)
        return Outcome({}, effects)

    def _start_move_task(
        self, params: dict[str, Any], now_ms: int, entropy: Entropy, info: RequestInfo
    ) -> Outcome:
        def messages_in(name: str) -> int:
            return self._held(name).approximate_number_of_messages(now_ms)

        response, effects = self._control.start_move_task(params, now_ms, entropy,
                                                          messages_in)
        for effect in effects:
            self.apply(effect)
        return Outcome(response, effects)

    def _advance_task(self, handle: str, now_ms: int, entropy: Entropy) -> list[Effect]:
        task = self._control.task(handle)
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
        rate = task.max_per_second or MOVE_RATE_DEFAULT_PER_S
        # Counted from the record, never from memory of its own: whoever holds the task's
        # record (after a restart, a follower taking over) paces it alike.
        elapsed_ms = min(now_ms - task.progress_ms, MOVE_CATCH_UP_MS_MAX)
        budget = elapsed_ms * rate // 1000
        if budget <= 0:
            return effects
        effects.extend(source.expire(now_ms))
        for record in source.take_visible(budget, now_ms):
            dest_arn = task.destination_arn or record.dead_letter_source_arn
            dest_name = (attrs.queue_name_from_arn(dest_arn) if dest_arn else None) or ""
            dest = self._queues.get(dest_name)
            if dest is None and self._control.remote(dest_name) is not None:
                # Counted as moved once exported (SQS's count is approximate too); a
                # copy that fails makes it visible here again when its lease lapses.
                export, leased = source.lease_for_export(
                    record.message_id, dest_name, None, now_ms, entropy)
                self._record_exports([export])
                effects.extend(leased)
                moved += 1
                continue
            if dest is None:
                finish("FAILED", "AWS.SimpleQueueService.NonExistentQueue")
                return effects
            removed = source.remove(record.message_id)  # frees its body's room
            effects.extend(dest.accept_moved(record, now_ms, entropy, None))
            effects.extend(removed)
            moved += 1
        if source.approximate_number_of_messages(now_ms) == 0 or (
            task.moved + moved >= task.to_move
        ):
            finish("COMPLETED")
        elif moved:
            effect = MoveTaskUpserted(replace(task, moved=task.moved + moved, progress_ms=now_ms))
            self.apply(effect)
            effects.append(effect)
        return effects

    # ---- messages: the data plane, straight to the queue's MessageQueue ----

    def _message_queue(self, params: Mapping[str, Any], now_ms: int) -> tuple[MessageQueue,
                                                                              list[Effect]]:
        queue = self._queues.get(queue_name_of(params))
        if queue is None:
            raise SqsError("QueueDoesNotExist", "The specified queue does not exist.")
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
        # The queue's settings are its definition's (the control plane keeps them in
        # step), so the dead-letter queue is read without asking the control plane.
        dlq_name = queue.settings.dead_letter_queue
        dlq = self._queues.get(dlq_name) if dlq_name else None
        if dlq is not None:
            effects.extend(self._housekeep(dlq, now_ms))
        remote_dlq = None
        if dlq_name and dlq is None and self._control.remote(dlq_name) is not None:
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
