"""``PartitionedQueues`` against a caller standing in for the partitions' leaders (the
interface the node implements; the end-to-end behaviour is in
tests/e2e/test_cluster_partitioned.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from ferrymq._api import CallContext
from ferrymq._cluster._catalog import QueueEntry
from ferrymq._cluster._partitioned import PartitionedQueues, unwrap_handle, wrap_handle
from ferrymq._core._control import MOVE_TASK_HANDLE_PARAM, MOVE_TASK_HANDLES_LISTED_PARAM
from ferrymq._core._errors import SqsError, invalid_parameter

CTX = CallContext(request_id="t", base_url="http://x", account_id="000000000000",
                  region="us-east-1", access_key_id=None, path_queue=None)
ENTRY = QueueEntry("q", "live", "p0", partitions=("p0", "p1", "p2"))


class Standin:
    """What every stand-in for the leaders answers alike: nothing led here, no load
    known, no long poll ever woken."""

    async def wait_partition(self, partition: str, queue: str, timeout_ms: int,
                             ctx: CallContext) -> bool:
        return False

    def leads_here(self, partition: str) -> bool:
        return False

    def load_of(self, partition: str) -> int | None:
        return None


class Leaders(Standin):
    """Each partition answers a receive with its messages, or raises its error."""

    def __init__(self, answers: dict[str, list[str] | SqsError]) -> None:
        self.answers = answers

    async def call_partition(self, partition: str, action: str, params: dict[str, Any],
                             ctx: CallContext) -> dict[str, Any]:
        answer = self.answers[partition]
        if isinstance(answer, SqsError):
            raise answer
        taken, self.answers[partition] = (answer[:params["MaxNumberOfMessages"]],
                                          answer[params["MaxNumberOfMessages"]:])
        return {"Messages": [{"Body": b, "ReceiptHandle": f"h-{b}"} for b in taken]} \
            if taken else {}


def receive(leaders: Leaders, **params: Any) -> dict[str, Any]:
    queues = PartitionedQueues(leaders)
    return asyncio.run(queues.call(ENTRY, "ReceiveMessage",
                                   {"QueueUrl": "q", "MaxNumberOfMessages": 10, **params},
                                   CTX))


def test_a_receive_merges_the_partitions_and_names_each_message_s_partition() -> None:
    got = receive(Leaders({"p0": ["a"], "p1": ["b", "c"], "p2": []}))
    bodies = {m["Body"]: m["ReceiptHandle"] for m in got["Messages"]}
    assert sorted(bodies) == ["a", "b", "c"]
    assert {b: unwrap_handle(h, 3) for b, h in bodies.items()} == {
        "a": (0, "h-a"), "b": (1, "h-b"), "c": (1, "h-c")}
    assert unwrap_handle(wrap_handle(2, "x"), 2) == (0, "P2.x")  # no partition 2 of 2


def test_a_partition_between_leaders_does_not_fail_the_receive() -> None:
    down = SqsError("ServiceUnavailable", "No node leads a partition of the queue yet")
    got = receive(Leaders({"p0": down, "p1": ["b"], "p2": down}))
    assert [m["Body"] for m in got["Messages"]] == ["b"]
    # Nothing anywhere, one partition down: an empty answer, as a receive that found none.
    assert receive(Leaders({"p0": down, "p1": [], "p2": []})) == {}
    # Every partition down: the client is told to retry.
    with pytest.raises(SqsError) as exc:
        receive(Leaders({"p0": down, "p1": down, "p2": down}))
    assert exc.value.shape == "ServiceUnavailable"


def test_a_bad_receive_fails_as_the_single_node_would() -> None:
    with pytest.raises(SqsError) as exc:
        receive(Leaders({"p0": [], "p1": [], "p2": []}), MaxNumberOfMessages=11)
    assert (exc.value.code, exc.value.message) == (
        "InvalidParameterValue",
        "Value 11 for parameter MaxNumberOfMessages is invalid. Reason: Must be between 1 "
        "and 10, if provided.")
    refused = invalid_parameter("bad")
    with pytest.raises(SqsError) as exc:
        receive(Leaders({"p0": refused, "p1": refused, "p2": refused}))
    assert exc.value.message == "bad"


class MoveTasks(Standin):
    """Each partition keeps its part of each move task (by handle), as its core would;
    a partition in ``down`` is between leaders."""

    def __init__(self, down: set[str], unanswered: frozenset[str] = frozenset()) -> None:
        self.down = down
        # Start a task and then fail the call with a 503 (a leader deposed after its
        # commit, before its answer).
        self.unanswered = unanswered
        self.tasks: dict[str, dict[str, dict[str, Any]]] = {"p0": {}, "p1": {}, "p2": {}}

    async def call_partition(self, partition: str, action: str, params: dict[str, Any],
                             ctx: CallContext) -> dict[str, Any]:
        if partition in self.down:
            raise SqsError("ServiceUnavailable", "No node leads a partition of the queue")
        tasks = self.tasks[partition]
        if action == "StartMessageMoveTask":
            handle = params.get(MOVE_TASK_HANDLE_PARAM) or base64.b64encode(json.dumps(
                {"taskId": str(len(tasks)), "sourceArn": params["SourceArn"]}).encode()
            ).decode()
            tasks[handle] = {"Status": "RUNNING", "TaskHandle": handle,
                             "ApproximateNumberOfMessagesMoved": 0,
                             "ApproximateNumberOfMessagesToMove": 5, "StartedTimestamp": 1,
                             "MaxNumberOfMessagesPerSecond":
                                 params["MaxNumberOfMessagesPerSecond"]}
            if partition in self.unanswered:
                raise SqsError("ServiceUnavailable", "the leader stepped down")
            return {"TaskHandle": handle}
        if action == "CancelMessageMoveTask":
            task = tasks.get(params["TaskHandle"], {"Status": None})
            if task["Status"] != "RUNNING":
                raise invalid_parameter("Only active tasks can be cancelled.")
            task["Status"] = "CANCELLED"
            return {"ApproximateNumberOfMessagesMoved": task[
                "ApproximateNumberOfMessagesMoved"]}
        assert action == "ListMessageMoveTasks" and params[MOVE_TASK_HANDLES_LISTED_PARAM]
        return {"Results": list(tasks.values())}


def move(partitions: MoveTasks, action: str, **params: Any) -> dict[str, Any]:
    return asyncio.run(PartitionedQueues(partitions).call(ENTRY, action, params, CTX))


def test_a_move_task_is_one_task_over_the_partitions() -> None:
    tasks = MoveTasks(down=set())
    handle = move(tasks, "StartMessageMoveTask", SourceArn="arn",
                  MaxNumberOfMessagesPerSecond=7)["TaskHandle"]
    # One handle everywhere, the rate shared out (3 + 2 + 2).
    assert [t[handle]["MaxNumberOfMessagesPerSecond"] for t in tasks.tasks.values()] == [
        3, 2, 2]
    tasks.tasks["p0"][handle].update(Status="COMPLETED", ApproximateNumberOfMessagesMoved=5)
    tasks.tasks["p1"][handle]["ApproximateNumberOfMessagesMoved"] = 2
    [listed] = move(tasks, "ListMessageMoveTasks", SourceArn="arn")["Results"]
    assert listed == {"Status": "RUNNING", "TaskHandle": handle, "StartedTimestamp": 1,
                      "ApproximateNumberOfMessagesMoved": 7,
                      "ApproximateNumberOfMessagesToMove": 15,
                      "MaxNumberOfMessagesPerSecond": 7}
    # The first partition's part finished: cancelling still counts what it moved.
    assert move(tasks, "CancelMessageMoveTask", TaskHandle=handle) == {
        "ApproximateNumberOfMessagesMoved": 7}
    [listed] = move(tasks, "ListMessageMoveTasks", SourceArn="arn")["Results"]
    assert listed["Status"] == "CANCELLED" and "TaskHandle" not in listed
    with pytest.raises(SqsError) as exc:
        move(tasks, "CancelMessageMoveTask", TaskHandle=handle)
    assert exc.value.message == "Only active tasks can be cancelled."


def test_a_move_task_a_partition_cannot_start_is_not_left_half_started() -> None:
    tasks = MoveTasks(down={"p2"})
    with pytest.raises(SqsError) as exc:
        move(tasks, "StartMessageMoveTask", SourceArn="arn", MaxNumberOfMessagesPerSecond=2)
    assert exc.value.shape == "ServiceUnavailable"
    assert [t["Status"] for p in ("p0", "p1") for t in tasks.tasks[p].values()] == [
        "CANCELLED", "CANCELLED"]
    # Below one per second per partition, each partition still moves one per second.
    [part] = tasks.tasks["p1"].values()
    assert part["MaxNumberOfMessagesPerSecond"] == 1


def test_a_move_task_part_that_started_but_answered_503_is_cancelled_too() -> None:
    tasks = MoveTasks(down={"p2"}, unanswered=frozenset({"p1"}))
    with pytest.raises(SqsError) as exc:
        move(tasks, "StartMessageMoveTask", SourceArn="arn",
             MaxNumberOfMessagesPerSecond=3)
    assert exc.value.shape == "ServiceUnavailable"
    assert [t["Status"] for p in ("p0", "p1") for t in tasks.tasks[p].values()] == [
        "CANCELLED", "CANCELLED"]
    # Nothing of the failed start is left running: the retry starts a task.
    tasks.down, tasks.unanswered = set(), frozenset()
    handle = move(tasks, "StartMessageMoveTask", SourceArn="arn",
                  MaxNumberOfMessagesPerSecond=3)["TaskHandle"]
    assert [tasks.tasks[p][handle]["Status"] for p in ("p0", "p1", "p2")] == [
        "RUNNING"] * 3


class Deletes(Standin):
    """Each partition fails the entries whose handle starts with "bad", quoting it as a
    core does, and deletes the rest."""

    async def call_partition(self, partition: str, action: str, params: dict[str, Any],
                             ctx: CallContext) -> dict[str, Any]:
        assert action == "DeleteMessageBatch"
        ok, failed = [], []
        for entry in params["Entries"]:
            if entry["ReceiptHandle"].startswith("bad"):
                failed.append({"Id": entry["Id"], "Code": "ReceiptHandleIsInvalid",
                               "SenderFault": True,
                               "Message": f'The input receipt handle "{entry["ReceiptHandle"]}"'
                                          " is not a valid receipt handle."})
            else:
                ok.append({"Id": entry["Id"]})
        return {"Successful": ok, "Failed": failed}


@pytest.mark.parametrize("handles", [("P1.ok", "P1.bad"), ("P0.ok", "P2.bad")])
def test_a_failed_batch_entry_quotes_the_client_s_handle(handles: tuple[str, str]) -> None:
    entries = [{"Id": "a", "ReceiptHandle": handles[0]},
               {"Id": "b", "ReceiptHandle": handles[1]}]
    got = asyncio.run(PartitionedQueues(Deletes()).call(
        ENTRY, "DeleteMessageBatch", {"QueueUrl": "q", "Entries": entries}, CTX))
    assert got["Successful"] == [{"Id": "a"}]
    [failed] = got["Failed"]
    assert failed["Message"] == (f'The input receipt handle "{handles[1]}" is not a valid '
                                 "receipt handle.")


class Recorded(Standin):
    """Records each call's partition and entries, and deletes every entry."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    async def call_partition(self, partition: str, action: str, params: dict[str, Any],
                             ctx: CallContext) -> dict[str, Any]:
        self.calls.append((partition, [e["ReceiptHandle"] for e in params["Entries"]]))
        return {"Successful": [{"Id": e["Id"]} for e in params["Entries"]], "Failed": []}


@pytest.mark.parametrize(("handles", "calls"), [
    # One partition's handles: one call, with that partition's own handles.
    (["P1.a", "P1.b.c"], [("p1", ["a", "b.c"])]),
    # P1. is not a prefix of P12.: two partitions, two calls.
    (["P1.a", "P12.b"], [("p1", ["a"]), ("p12", ["b"])]),
    (["P12.a", "P1.b"], [("p1", ["b"]), ("p12", ["a"])]),
    # A handle that names no partition goes to the first as sent.
    (["P1.a", "P1."], [("p0", ["P1."]), ("p1", ["a"])]),
    (["P13.a", "P13.b"], [("p0", ["P13.a", "P13.b"])]),
    (["x", "P0.y"], [("p0", ["x", "y"])]),
])
def test_a_delete_batch_goes_to_the_partitions_its_handles_name(
        handles: list[str], calls: list[tuple[str, list[str]]]) -> None:
    entry = QueueEntry("q", "live", "p0", partitions=tuple(f"p{i}" for i in range(13)))
    caller = Recorded()
    entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
    got = asyncio.run(PartitionedQueues(caller).call(
        entry, "DeleteMessageBatch", {"QueueUrl": "q", "Entries": entries}, CTX))
    assert sorted(caller.calls) == calls
    assert got["Successful"] == [{"Id": str(i)} for i in range(len(handles))]
    # The client's entries are left as they were (a retry sends them again).
    assert [e["ReceiptHandle"] for e in entries] == handles


class Sends(Standin):
    """Partition p1 is led here, busy with ``local_load`` requests; the others report
    none. Records where each send went."""

    def __init__(self, local_load: int) -> None:
        self.local_load = local_load
        self.sent_to: list[str] = []

    async def call_partition(self, partition: str, action: str, params: dict[str, Any],
                             ctx: CallContext) -> dict[str, Any]:
        self.sent_to.append(partition)
        return {"MessageId": "m"}

    def leads_here(self, partition: str) -> bool:
        return partition == "p1"

    def load_of(self, partition: str) -> int | None:
        return self.local_load if partition == "p1" else 0


def sends(caller: Sends, count: int) -> list[str]:
    queues = PartitionedQueues(caller)

    async def run() -> None:
        for _ in range(count):
            await queues.call(ENTRY, "SendMessage", {"QueueUrl": "q", "MessageBody": "x"},
                              CTX)

    asyncio.run(run())
    return caller.sent_to


def test_a_send_always_weighs_the_partition_led_here() -> None:
    # Idle here: every send stays on this node, whichever the other candidate is.
    assert set(sends(Sends(local_load=0), 30)) == {"p1"}
    # Busy here: the sends go to the others, each of them in turn.
    assert sorted(set(sends(Sends(local_load=100), 30))) == ["p0", "p2"]


@pytest.mark.parametrize(("handle", "unwrapped"), [
    ("P0.abc", (0, "abc")), ("P2.a.b", (2, "a.b")), ("P3.x", (0, "P3.x")),
    ("P1.", (0, "P1.")), ("P.x", (0, "P.x")), ("P1234.x", (0, "P1234.x")),
    ("Q1.x", (0, "Q1.x")), ("P\u0663.x", (0, "P\u0663.x")), (None, (0, None)),
])
def test_a_handle_names_its_partition_or_goes_to_the_first_as_sent(
        handle: object, unwrapped: tuple[int, object]) -> None:
    assert unwrap_handle(handle, 3) == unwrapped


class Attempts(Standin):
    """FIFO partitions that each answer an attempt id they delivered to with the same
    messages again, as a core does; ``here`` is the partition the caller's node leads."""

    def __init__(self, here: str, queues: dict[str, list[str]],
                 delivered: dict[tuple[str, str], list[str]]) -> None:
        self.here, self.queues, self.delivered = here, queues, delivered

    async def call_partition(self, partition: str, action: str, params: dict[str, Any],
                             ctx: CallContext) -> dict[str, Any]:
        key = (partition, params["ReceiveRequestAttemptId"])
        if key not in self.delivered:
            wanted = params["MaxNumberOfMessages"]
            taken, self.queues[partition] = (self.queues[partition][:wanted],
                                             self.queues[partition][wanted:])
            if taken:
                self.delivered[key] = taken
        got = self.delivered.get(key, [])
        return {"Messages": [{"Body": b, "ReceiptHandle": f"h-{b}"} for b in got]}

    def leads_here(self, partition: str) -> bool:
        return partition == self.here


def test_a_retried_fifo_attempt_gets_the_same_messages_through_another_node() -> None:
    entry = QueueEntry("q.fifo", "live", "p0", partitions=("p0", "p1", "p2"))
    queues = {"p0": ["a1", "a2"], "p1": ["b1", "b2"], "p2": ["c1", "c2"]}
    delivered: dict[tuple[str, str], list[str]] = {}
    params = {"QueueUrl": "q.fifo", "MaxNumberOfMessages": 2,
              "ReceiveRequestAttemptId": "try-1"}

    def receive_through(here: str) -> list[str]:
        queues_here = PartitionedQueues(Attempts(here, queues, delivered))
        got = asyncio.run(queues_here.call(entry, "ReceiveMessage", dict(params), CTX))
        return [m["Body"] for m in got["Messages"]]

    first = receive_through("p0")
    assert receive_through("p2") == receive_through("p1") == first


def test_a_cancel_a_partition_cannot_take_now_is_answered_with_its_503() -> None:
    tasks = MoveTasks(down=set())
    handle = move(tasks, "StartMessageMoveTask", SourceArn="arn",
                  MaxNumberOfMessagesPerSecond=3)["TaskHandle"]
    tasks.tasks["p0"][handle]["Status"] = "COMPLETED"
    tasks.tasks["p2"][handle]["Status"] = "COMPLETED"
    tasks.down = {"p1"}  # its part still runs; it cannot be reached: not "no active task"
    with pytest.raises(SqsError) as exc:
        move(tasks, "CancelMessageMoveTask", TaskHandle=handle)
    assert exc.value.shape == "ServiceUnavailable"
    tasks.down = set()  # the retry cancels what is left
    move(tasks, "CancelMessageMoveTask", TaskHandle=handle)
    assert tasks.tasks["p1"][handle]["Status"] == "CANCELLED"
