"""A queue of several partitions, served at the action level by the node a client
talks to: which partition each action goes to, and how their answers merge.

Each partition is a replica set of its own (``ferry:partitions``), whose core holds the
whole queue definition and its share of the messages. The first partition owns the
definition in the catalog; the others hold the same definition, applied to each in turn.

- Sends to a standard queue: one partition per request (a batch stays together), the
  less busy of two candidates: one this node leads (if any, in turn), the other any
  other in turn; balanced by load, not only by turn. A
  partition's load is the requests in flight at its leader, from every node (known
  here for a partition this node leads, and reported with every answer by the others:
  ``PartitionCaller.load_of``). A partition on another node costs a hop, so it counts
  ``REMOTE_FACTOR`` times its load plus ``REMOTE_SLACK``: with clients spread over the
  nodes (equal loads) each node serves its own partitions and sends almost nothing
  across, and with every client on one node the others get a share as soon as its own
  partitions queue up.
- Sends to a FIFO queue (partitioned only with deduplication per message group): the
  partition of the message group, by CRC-32 of its id, so one group's messages are in
  one partition, in order, and deduplicated there. A batch spanning groups is checked
  whole first (``check_send_batch``: the errors that fail it as a whole), then split.
- Receives: the partitions are swept in rotation (starting at one this node leads,
  if any) with no wait until the request is filled (for FIFO, each partition keeps
  its groups' order and its own attempt ids; a receive with an attempt id starts at
  the partition its id hashes to, so a retry sweeps in the first try's order). A long
  poll that found nothing then waits on every partition at once for a receivable
  message, without receiving
  (``WAIT_ACTION``, event-driven on each leader: no polling), and sweeps again when
  one has some.
- Receipt handles name their partition (``P<index>.<handle>``; a handle of the core is
  URL-safe base64, which has no dot), so deletes and visibility changes go straight to
  it; a batch is split by partition and the answers merged.
- Counts are summed over the partitions; the definition is read from the first.
- A definition change goes to the first partition first (its checks and errors are the
  single node's), then to the others. CreateQueue and DeleteQueue go to the others
  first and to the first last: its catalog write makes the queue live, or retires it.
- A message move task out of a partitioned dead-letter queue is one task per
  partition under one handle (the first partition makes it and checks the request;
  the others are given it: ``MOVE_TASK_HANDLE_PARAM``), each at its share of the rate.
  Its listing is the first partition's, with each part's counts summed in (matched by
  handle: ``MOVE_TASK_HANDLES_LISTED_PARAM``).

What belongs here: that routing and merging. Calling a partition's leader, here or on
another node, is the ``PartitionCaller``'s (the node's).
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Sequence
from typing import Any, Protocol

from ferrymq._api import CallContext
from ferrymq._cluster._catalog import QueueEntry
from ferrymq._core._broker import Broker
from ferrymq._core._control import (
    MOVE_TASK_HANDLE_PARAM,
    MOVE_TASK_HANDLES_LISTED_PARAM,
    MOVE_TASKS_LISTED_MAX,
    check_move_rate,
    task_already_running,
)
from ferrymq._core._errors import SqsError, invalid_parameter
from ferrymq._core._messages import int_param
from ferrymq._core._queue import (
    RECEIVE_MESSAGES_MAX,
    WAIT_TIME_S_MAX,
    MessageQueue,
    check_send_batch,
)

__all__ = ["PartitionCaller", "PartitionedQueues", "partition_index", "unwrap_handle",
           "wrap_handle"]

_COUNTS = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
           "ApproximateNumberOfMessagesDelayed")
# A handle of a partitioned queue: "P", the partition's index (PARTITIONS_MAX is 256),
# ".", the partition's own handle.
_HANDLE_INDEX_DIGITS_MAX = 3
# Changes of the definition: checked by the first partition, then applied to the rest.
_DEFINITION_ACTIONS = frozenset({"SetQueueAttributes", "TagQueue", "UntagQueue",
                                 "AddPermission", "RemovePermission", "PurgeQueue"})
# See the module docstring. A call to another node costs about as much CPU again as the
# call itself (encoded, sent, decoded on both sides) and a round trip: a remote
# partition is worth it once the local one is twice as busy and 8 requests more. At 1.5
# and 2, 8-11 % of the sends of ferry-p2 (clients spread over both nodes) crossed to the
# other node, and the run spent 6 % more CPU per message; at 2 and 8, under 1 %. With
# every client on one node, about a third of its sends still go to the other.
REMOTE_FACTOR = 2.0
REMOTE_SLACK = 8.0
# A long poll whose waits on the partitions failed (a leader being replaced) sweeps
# again after this long instead of at once.
_WAIT_RETRY_S = 0.1
_SEND_ACTIONS = frozenset({"SendMessage", "SendMessageBatch"})
# Which partitions this node leads is looked up again after this long: a leadership
# moves seconds after a failure (the lease), so a second's delay in steering sends to a
# new one costs little against a scan of up to 256 partitions per request.
_HERE_TTL_S = 1.0
# Queues whose answer is kept (a bound on the cache, cleared whole when full).
_HERE_CACHED_MAX = 1024
_BATCH_ENTRY = {"DeleteMessageBatch": "DeleteMessageBatchRequestEntry",
                "ChangeMessageVisibilityBatch": "ChangeMessageVisibilityBatchRequestEntry"}


class PartitionCaller(Protocol):
    async def call_partition(self, partition: str, action: str, params: dict[str, Any],
                             ctx: CallContext) -> dict[str, Any]:
        """Run ``action`` on the partition's leader; its SQS error raised as is."""
        ...

    async def wait_partition(self, partition: str, queue: str, timeout_ms: int,
                             ctx: CallContext) -> bool:
        """True once the partition's ``queue`` has a receivable message, False after
        ``timeout_ms`` without one."""
        ...

    def leads_here(self, partition: str) -> bool:
        """Whether this node leads ``partition`` (a call to it needs no hop)."""
        ...

    def load_of(self, partition: str) -> int | None:
        """Requests in flight at ``partition``'s leader, from every node: live for one
        led here, the last one reported (if recent) for the others; None if unknown."""
        ...


def wrap_handle(index: int, handle: str) -> str:
    return f"P{index}.{handle}"


def unwrap_handle(handle: object, count: int) -> tuple[int, object]:
    """(partition index, the partition's own handle). A handle that names no partition
    of this queue goes to the first as it is, which answers it as the single node
    does (missing, or ReceiptHandleIsInvalid with the client's own text)."""
    # By hand, not by a regular expression: every delete and visibility change of a
    # partitioned queue unwraps its handle (a regex was 2.5 % of a draining node).
    if isinstance(handle, str) and handle.startswith("P"):
        dot = handle.find(".", 2, 2 + _HANDLE_INDEX_DIGITS_MAX)
        digits = handle[1:dot]
        if dot > 1 and digits.isascii() and digits.isdigit() and dot + 1 < len(handle):
            index = int(digits)
            if index < count:
                return index, handle[dot + 1:]
    return 0, handle


def partition_index(key: str, count: int) -> int:
    """The partition of a FIFO message group (or of a message copied in by id, which a
    copy sent again must find in the same partition): CRC-32 of the key, modulo
    ``count``, the same on every node."""
    return zlib.crc32(key.encode()) % count


def _group_partition(params: dict[str, Any], count: int) -> int:
    """The partition of a FIFO message's group; without one, the first (whose core
    answers the missing parameter as the single node does)."""
    group = params.get("MessageGroupId")
    if group is None:
        return 0
    return partition_index(str(group), count)


def _requoted(message: str, inner: object, original: object) -> str:
    """An error text that quotes the partition's handle quotes the client's instead."""
    if isinstance(inner, str) and inner != original and f'"{inner}"' in message:
        return message.replace(f'"{inner}"', f'"{original}"')
    return message


def _merged_task(head: dict[str, Any], others: list[dict[str, Any]]) -> dict[str, Any]:
    """One task as the client sees it, from its parts on the first partition (``head``)
    and the others: running while any part runs; else failed, cancelled or completed as
    the worst part ended. Counts and rates summed; started when the first part was."""
    tasks = [head, *others]
    statuses = {t["Status"] for t in tasks}
    status = next((s for s in ("RUNNING", "FAILED", "CANCELLED", "COMPLETED")
                   if s in statuses), head["Status"])
    merged = {k: v for k, v in head.items() if k not in ("TaskHandle", "FailureReason")}
    merged["Status"] = status
    for key in ("ApproximateNumberOfMessagesMoved", "ApproximateNumberOfMessagesToMove",
                "MaxNumberOfMessagesPerSecond"):
        if key in head:
            merged[key] = sum(int(t.get(key, 0)) for t in tasks)
    if status == "RUNNING":
        merged["TaskHandle"] = head["TaskHandle"]
    reasons = [t["FailureReason"] for t in tasks if t.get("FailureReason")]
    if status == "FAILED" and reasons:
        merged["FailureReason"] = reasons[0]
    return merged


def _attribute(entry: QueueEntry, name: str, default: str) -> str:
    """One attribute of the definition, without a dict of them all (per receive)."""
    pairs = entry.record.attributes if entry.record is not None else ()
    return next((value for key, value in pairs if key == name), default)


def _attributes_of(entry: QueueEntry) -> dict[str, str]:
    return dict(entry.record.attributes) if entry.record is not None else {}


class PartitionedQueues:
    """See the module docstring. One per node; ``caller`` reaches the partitions."""

    def __init__(self, caller: PartitionCaller) -> None:
        self._caller = caller
        self._turn = 0
        # This node's calls in flight per partition: the load a send is balanced by.
        self._in_flight: dict[str, int] = {}
        # A queue's partitions -> (until when, the indexes of those led here).
        self._led_here: dict[tuple[str, ...], tuple[float, list[int]]] = {}

    async def call(self, entry: QueueEntry, action: str, params: dict[str, Any],
                   ctx: CallContext) -> dict[str, Any]:
        parts = entry.partitions
        # A FIFO queue's name ends in .fifo, and only a FIFO queue's may (the core's
        # CreateQueue checks): no need to read its attributes on every request.
        fifo = entry.name.endswith(".fifo")
        if fifo and action == "SendMessage":
            return await self._one(parts[_group_partition(params, len(parts))], action,
                                   params, ctx)
        if fifo and action == "SendMessageBatch":
            return await self._fifo_batch(parts, _attributes_of(entry), params, ctx)
        if action in _SEND_ACTIONS:
            return await self._one(self._pick(parts), action, params, ctx)
        if fifo and action == "SetQueueAttributes":
            wanted = params.get("Attributes")
            if isinstance(wanted, dict) and wanted.get("DeduplicationScope") == "queue":
                raise invalid_parameter(
                    "Value queue for parameter DeduplicationScope is invalid. Reason: the "
                    f"queue has {len(parts)} partitions, and a FIFO queue is partitioned "
                    "only when its DeduplicationScope is messageGroup.")
        if action == "ReceiveMessage":
            return await self._receive(entry, params, ctx)
        if action in ("DeleteMessage", "ChangeMessageVisibility"):
            index, inner = unwrap_handle(params.get("ReceiptHandle"), len(parts))
            try:
                return await self._one(parts[index], action,
                                       {**params, "ReceiptHandle": inner}, ctx)
            except SqsError as exc:
                text = _requoted(exc.message, inner, params.get("ReceiptHandle"))
                if text == exc.message:
                    raise
                raise SqsError(exc.shape, text) from None
        if action in _BATCH_ENTRY:
            return await self._batch(parts, action, params, ctx)
        if action == "GetQueueAttributes":
            return await self._attributes(parts, params, ctx)
        if action in _DEFINITION_ACTIONS:
            result = await self._one(parts[0], action, params, ctx)
            await self._all(parts[1:], action, params, ctx)
            return result
        if action in ("CreateQueue", "DeleteQueue"):
            await self._all(parts[1:], action, params, ctx)
            return await self._one(parts[0], action, params, ctx)
        if action == "StartMessageMoveTask":
            return await self._start_move(parts, params, ctx)
        if action == "ListMessageMoveTasks":
            return await self._list_moves(parts, params, ctx)
        if action == "CancelMessageMoveTask":
            return await self._cancel_move(parts, params, ctx)
        return await self._one(parts[0], action, params, ctx)

    # ---- routing -------------------------------------------------------------------

    def _busy(self, partition: str) -> float:
        reported = self._caller.load_of(partition) or 0
        if self._caller.leads_here(partition):
            return float(reported)  # counts this node's calls already
        # What it reported plus this node's calls to it since (roughly: the report may
        # already count some of them).
        load = max(reported, self._in_flight.get(partition, 0))
        return REMOTE_FACTOR * load + REMOTE_SLACK

    def _pick(self, parts: Sequence[str]) -> str:
        self._turn += 1
        here = self._here(parts)
        if here and len(parts) > 2:
            # One candidate led here, the other any of the rest in turn: with clients
            # spread over the nodes, two consecutive partitions would both be remote
            # for (N - 2) / N of the sends to N partitions.
            local = here[self._turn % len(here)]
            offset = 1 + (self._turn // len(here)) % (len(parts) - 1)
            first, second = parts[local], parts[(local + offset) % len(parts)]
        else:
            first = parts[self._turn % len(parts)]
            second = parts[(self._turn + 1) % len(parts)]
        return second if self._busy(second) < self._busy(first) else first

    def _here(self, parts: Sequence[str]) -> list[int]:
        """The indexes of the partitions this node leads; computed at most once per
        ``_HERE_TTL_S`` per queue (an O(partitions) scan, per request otherwise). A
        stale answer only steers the choice of candidates: each one's load is
        ``_busy``'s, live."""
        now = asyncio.get_running_loop().time()
        key = tuple(parts)
        held = self._led_here.get(key)
        if held is not None and now < held[0]:
            return held[1]
        if len(self._led_here) >= _HERE_CACHED_MAX:
            self._led_here.clear()
        here = [i for i, p in enumerate(parts) if self._caller.leads_here(p)]
        self._led_here[key] = (now + _HERE_TTL_S, here)
        return here

    async def _one(self, partition: str, action: str, params: dict[str, Any],
                   ctx: CallContext) -> dict[str, Any]:
        self._in_flight[partition] = self._in_flight.get(partition, 0) + 1
        try:
            return await self._caller.call_partition(partition, action, params, ctx)
        finally:
            self._in_flight[partition] -= 1

    async def _all(self, parts: Sequence[str], action: str, params: dict[str, Any],
                   ctx: CallContext) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self._one(p, action, params, ctx)
                                           for p in parts)))

    async def _settled(self, action: str, calls: Sequence[tuple[str, dict[str, Any]]],
                       ctx: CallContext) -> list[dict[str, Any] | BaseException]:
        """``action`` on each (partition, params) at once; each answer or its error."""
        return list(await asyncio.gather(*(self._one(p, action, q, ctx) for p, q in calls),
                                         return_exceptions=True))

    # ---- message move tasks ----------------------------------------------------------

    async def _start_move(self, parts: Sequence[str], params: dict[str, Any],
                          ctx: CallContext) -> dict[str, Any]:
        """One task per partition under the first partition's handle, each moving its
        partition's messages at its share of the rate."""
        rate = params.get("MaxNumberOfMessagesPerSecond")
        check_move_rate(rate)  # the core's check, on the rate the client gave
        source_arn = params.get("SourceArn")
        if isinstance(source_arn, str):
            # The first partition refuses a second task of its own; a task still running
            # on another partition (the first's part of it done) refuses one as well.
            listed = await self._settled("ListMessageMoveTasks",
                                         [(p, {"SourceArn": source_arn}) for p in parts[1:]],
                                         ctx)
            if any(isinstance(r, dict) and any(t.get("Status") == "RUNNING"
                                               for t in r.get("Results", []))
                   for r in listed):
                raise task_already_running()

        def shared(index: int) -> dict[str, Any]:
            if rate is None:
                return dict(params)  # each partition at the default rate
            share = rate // len(parts) + (1 if index < rate % len(parts) else 0)
            # Below one message per second per partition a partition would never move;
            # so a task over N partitions goes at least N per second.
            return {**params, "MaxNumberOfMessagesPerSecond": max(1, share)}

        first = await self._one(parts[0], "StartMessageMoveTask", shared(0), ctx)
        handle = first["TaskHandle"]
        started = await self._settled(
            "StartMessageMoveTask",
            [(p, {**shared(i), MOVE_TASK_HANDLE_PARAM: handle})
             for i, p in enumerate(parts) if i > 0], ctx)
        failed = [r for r in started if isinstance(r, BaseException)]
        if failed:
            # Not a task the client can see whole: the started parts are cancelled (a
            # retry starts a new one), and the client gets the first failure. A part
            # that answered a 5xx may have started all the same (its leader committed
            # it and was deposed before answering): it is cancelled too, or its running
            # part, under a handle the client never saw, would refuse every retry as
            # "already running" until it finished. A part that never started answers
            # the cancel with an error, which changes nothing.
            ran = [parts[0]] + [p for p, r in zip(parts[1:], started, strict=True)
                                if not isinstance(r, BaseException)
                                or not isinstance(r, SqsError) or r.status >= 500]
            await self._settled("CancelMessageMoveTask",
                                [(p, {"TaskHandle": handle}) for p in ran], ctx)
            raise failed[0]
        return first

    async def _task_lists(self, parts: Sequence[str], source_arn: object,
                          ctx: CallContext) -> list[dict[str, dict[str, Any]]]:
        """Each partition's tasks of ``source_arn``, by handle."""
        answers = await self._all(parts, "ListMessageMoveTasks",
                                  {"SourceArn": source_arn,
                                   "MaxResults": MOVE_TASKS_LISTED_MAX,
                                   MOVE_TASK_HANDLES_LISTED_PARAM: True}, ctx)
        return [{t["TaskHandle"]: t for t in a.get("Results", [])} for a in answers]

    async def _list_moves(self, parts: Sequence[str], params: dict[str, Any],
                          ctx: CallContext) -> dict[str, Any]:
        # Every task starts on the first partition: its (checked) listing names the
        # tasks, newest first, and the other partitions' parts are matched by handle.
        head = await self._one(parts[0], "ListMessageMoveTasks",
                               {**params, MOVE_TASK_HANDLES_LISTED_PARAM: True}, ctx)
        rest = await self._task_lists(parts[1:], params.get("SourceArn"), ctx)
        return {"Results": [_merged_task(task, [r[task["TaskHandle"]] for r in rest
                                                if task["TaskHandle"] in r])
                            for task in head.get("Results", [])]}

    async def _cancel_move(self, parts: Sequence[str], params: dict[str, Any],
                           ctx: CallContext) -> dict[str, Any]:
        answers = await self._settled("CancelMessageMoveTask",
                                      [(p, params) for p in parts], ctx)
        for answer in answers:
            if isinstance(answer, BaseException) and (
                    not isinstance(answer, SqsError) or answer.status >= 500):
                raise answer  # a partition unavailable: a retry cancels the rest
        cancelled = [a for a in answers if isinstance(a, dict)]
        if not cancelled:
            first = answers[0]
            assert isinstance(first, BaseException)
            raise first  # the first partition's error: it has every task
        # The parts that had already finished moved messages of this task too.
        handle = params["TaskHandle"]
        finished = [p for p, a in zip(parts, answers, strict=True) if not isinstance(a, dict)]
        moved = sum(int(a.get("ApproximateNumberOfMessagesMoved", 0)) for a in cancelled)
        if finished:
            source_arn = Broker.task_handle_source(handle)
            for tasks in await self._task_lists(finished, source_arn, ctx):
                if handle in tasks:
                    moved += int(tasks[handle].get("ApproximateNumberOfMessagesMoved", 0))
        return {"ApproximateNumberOfMessagesMoved": moved}

    # ---- receive -------------------------------------------------------------------

    async def _receive(self, entry: QueueEntry, params: dict[str, Any], ctx: CallContext
                       ) -> dict[str, Any]:
        parts = entry.partitions
        # Checked here as the core checks them (the same texts): the partitions are
        # asked with other values.
        wanted = int_param(params, "MaxNumberOfMessages", 1, 1, RECEIVE_MESSAGES_MAX,
                           f"Must be between 1 and {RECEIVE_MESSAGES_MAX}, if provided.")
        wait_s = int_param(params, "WaitTimeSeconds", None, 0, WAIT_TIME_S_MAX,
                           f"Must be >= 0 and <= {WAIT_TIME_S_MAX}, if provided.")
        assert wanted is not None
        if wait_s is None:
            wait_s = int(_attribute(entry, "ReceiveMessageWaitTimeSeconds", "0"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while True:
            messages = await self._sweep(parts, params, wanted, ctx,
                                         fifo=entry.name.endswith(".fifo"))
            remaining_ms = int((deadline - loop.time()) * 1000)
            if messages or remaining_ms <= 0:
                return {"Messages": messages} if messages else {}
            await self._wait_any(entry, remaining_ms, ctx)

    async def _sweep(self, parts: Sequence[str], params: dict[str, Any], wanted: int,
                     ctx: CallContext, *, fifo: bool = False) -> list[dict[str, Any]]:
        self._turn += 1
        attempt = params.get("ReceiveRequestAttemptId")
        if fifo and isinstance(attempt, str):
            # A retried attempt (through any node) asks the partitions in the order the
            # first try did: each that delivered to it answers the same again, and the
            # sweep stops where the first one stopped.
            start = partition_index(attempt, len(parts))
        else:
            here = self._here(parts)
            start = here[self._turn % len(here)] if here else self._turn % len(parts)
        found: list[dict[str, Any]] = []
        unavailable: list[SqsError] = []
        for step in range(len(parts)):
            index = (start + step) % len(parts)
            asked = {**params, "WaitTimeSeconds": 0,
                     "MaxNumberOfMessages": wanted - len(found)}
            try:
                result = await self._one(parts[index], "ReceiveMessage", asked, ctx)
            except SqsError as exc:
                if exc.status < 500:
                    raise  # the request itself: every partition would say the same
                # A partition between leaders (a failover, a move): the others still
                # serve; the receive fails only if none could answer. Raising would
                # also strand what earlier partitions of this sweep handed out (in
                # flight until their visibility timeout).
                unavailable.append(exc)
                continue
            for message in result.get("Messages") or ():
                # The answer is this call's own (built for it, or decoded from the
                # wire): its messages are changed in place.
                message["ReceiptHandle"] = wrap_handle(index, message["ReceiptHandle"])
                found.append(message)
            if len(found) >= wanted:
                break
        if not found and len(unavailable) == len(parts):
            raise unavailable[0]
        return found

    async def _wait_any(self, entry: QueueEntry, timeout_ms: int, ctx: CallContext) -> None:
        waits = [asyncio.ensure_future(self._caller.wait_partition(
            p, entry.name, timeout_ms, ctx)) for p in entry.partitions]
        try:
            pending = set(waits)
            while pending:
                done, pending = await asyncio.wait(pending,
                                                   return_when=asyncio.FIRST_COMPLETED)
                if any(t.exception() is None and t.result() for t in done):
                    return
            # Every wait ended without a message: timed out, or failed (a partition
            # between leaders). A pause before the next sweep keeps a failing one from
            # being asked in a tight loop.
            if any(t.exception() is not None for t in waits):
                await asyncio.sleep(_WAIT_RETRY_S)
        finally:
            for task in waits:
                task.cancel()

    # ---- merges --------------------------------------------------------------------

    async def _batch(self, parts: Sequence[str], action: str, params: dict[str, Any],
                     ctx: CallContext) -> dict[str, Any]:
        raw = params.get("Entries")
        if isinstance(raw, list) and raw and all(isinstance(e, dict) for e in raw):
            one = _of_one_partition(raw, len(parts))
            if one is not None:
                # The common case (the handles of one receive): one call, whose core
                # checks the batch whole (empty, too many, ids) as the single node does,
                # and answers in the request's order.
                index, items = one
                result = await self._one(parts[index], action, {**params, "Entries": items},
                                         ctx)
                if not result.get("Failed"):
                    return result
                return _merged(raw, [result], _handles_of(raw, items))
        # The core's own checks of the whole batch first: split per partition, a batch
        # would pass them in parts.
        entries = MessageQueue._batch_entries(params, _BATCH_ENTRY[action])
        split = _split_by_handle(entries, len(parts))
        results = await asyncio.gather(*(
            self._one(parts[index], action, {**params, "Entries": items}, ctx)
            for index, items in sorted(split.items())))
        return _merged(entries, results,
                       _handles_of(entries, [i for items in split.values() for i in items]))

    async def _fifo_batch(self, parts: Sequence[str], attributes: dict[str, str],
                          params: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
        entries = check_send_batch(
            params, fifo=True,
            content_based_dedup=attributes.get("ContentBasedDeduplication") == "true")
        by_partition: dict[int, list[dict[str, Any]]] = {}
        for item in entries:
            by_partition.setdefault(_group_partition(item, len(parts)), []).append(item)
        if len(by_partition) == 1:
            (index,) = by_partition
            return await self._one(parts[index], "SendMessageBatch", params, ctx)
        results = await asyncio.gather(*(
            self._one(parts[index], "SendMessageBatch", {**params, "Entries": items}, ctx)
            for index, items in sorted(by_partition.items())))
        return _merged(entries, results)

    async def _attributes(self, parts: Sequence[str], params: dict[str, Any],
                          ctx: CallContext) -> dict[str, Any]:
        # The first partition checks the request; the rest are asked only if it passed.
        first = await self._one(parts[0], "GetQueueAttributes", params, ctx)
        attributes = dict(first.get("Attributes") or {})
        counted = [name for name in _COUNTS if name in attributes]
        if not counted or len(parts) == 1:
            return first
        rest = await self._all(parts[1:], "GetQueueAttributes",
                               {**params, "AttributeNames": counted}, ctx)
        for result in rest:
            theirs = result.get("Attributes") or {}
            for name in counted:
                attributes[name] = str(int(attributes[name]) + int(theirs.get(name, "0")))
        return {**first, "Attributes": attributes}


def _split_by_handle(entries: Sequence[dict[str, Any]], count: int
                     ) -> dict[int, list[dict[str, Any]]]:
    """A batch's entries by the partition their handles name, each with its partition's
    own handle."""
    split: dict[int, list[dict[str, Any]]] = {}
    for item in entries:
        index, inner = unwrap_handle(item.get("ReceiptHandle"), count)
        split.setdefault(index, []).append({**item, "ReceiptHandle": inner})
    return split


def _of_one_partition(entries: Sequence[dict[str, Any]], count: int
                      ) -> tuple[int, list[dict[str, Any]]] | None:
    """``_split_by_handle``'s answer when every handle names the partition the first
    one names, else None; without unwrapping each (the batch of one receive's
    handles, every delete batch of a drain)."""
    index, _ = unwrap_handle(entries[0].get("ReceiptHandle"), count)
    # "P<index>.": no other index's handle starts with it. A first handle that names no
    # partition (index 0) does not start with it either, unless it is a bare "P0.".
    prefix = wrap_handle(index, "")
    cut = len(prefix)
    items = []
    for item in entries:
        handle = item.get("ReceiptHandle")
        if not (isinstance(handle, str) and handle.startswith(prefix) and len(handle) > cut):
            return None
        items.append({**item, "ReceiptHandle": handle[cut:]})
    return index, items


def _handles_of(entries: Sequence[dict[str, Any]], unwrapped: Sequence[dict[str, Any]]
                ) -> dict[str, tuple[object, object]]:
    """Entry id -> (the partition's handle, the client's): ``_merged``'s ``handles``."""
    inner = {item.get("Id"): item.get("ReceiptHandle") for item in unwrapped}
    return {item["Id"]: (inner.get(item.get("Id")), item.get("ReceiptHandle"))
            for item in entries if isinstance(item.get("Id"), str)}


def _merged(entries: Sequence[dict[str, Any]], results: Sequence[dict[str, Any]],
            handles: dict[str, tuple[object, object]] | None = None) -> dict[str, Any]:
    """One batch answer from the partitions' answers to its parts, in the order of the
    request's entries. ``handles``: entry id -> (the partition's handle, the client's),
    so a failure that quotes the one quotes the other."""
    successful: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for result in results:
        successful.extend(result.get("Successful") or ())
        for item in result.get("Failed") or ():
            inner, original = (handles or {}).get(item.get("Id"), (None, None))
            message = item.get("Message")
            if isinstance(message, str):
                item = {**item, "Message": _requoted(message, inner, original)}
            failed.append(item)
    order = {item["Id"]: n for n, item in enumerate(entries)}
    successful.sort(key=lambda item: order.get(item.get("Id"), 0))
    failed.sort(key=lambda item: order.get(item.get("Id"), 0))
    return MessageQueue._batch_response(successful, failed)
