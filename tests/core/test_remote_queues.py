"""Queues on other brokers (cluster mode, one broker per replica set), in the pure core:
checks against a queue another broker holds, redrive into a remote dead-letter queue
and move tasks to a remote destination (lease for export, ``drain_exports``,
``import_messages`` on the destination's broker, ``complete_export`` at the source).

Two real brokers share a clock and an entropy; the directory each consults is built
from both brokers' own state, as the cluster's catalog is; ``Cluster.ship`` does what
the shell does with the exports (copy, then complete). Every scenario ends by replaying
each broker's effects on a fresh broker: the same state, exports or not.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from _doubles import CountingEntropy
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from ferrymq._core import EXPORT_LEASE_MS, Export, RemoteQueue
from ferrymq._core._broker import Broker, RequestInfo
from ferrymq._core._effects import Effect, MessageReceived, MessageRemoved, MessageStored
from ferrymq._core._errors import InternalError, SqsError
from ferrymq._core._records import MessageRecord

T0 = 1_700_000_000_000
ARN = "arn:aws:sqs:us-east-1:000000000000:"
INFO = RequestInfo(base_url="http://localhost:9324", sender_id="AKIDTEST")


def url(name: str) -> str:
    return f"http://localhost:9324/000000000000/{name}"


def redrive(target: str, count: int = 1) -> str:
    return json.dumps({"deadLetterTargetArn": ARN + target, "maxReceiveCount": count})


class Directory:
    """The catalog, built from the brokers' own state (each broker's queues included:
    a broker must treat its own state as the truth for those)."""

    def __init__(self) -> None:
        self.brokers: list[Broker] = []
        # Queue names to claim as sources of every DLQ, to show what a stale catalog
        # says about a queue a broker holds is not believed.
        self.stale_sources: list[str] = []

    def lookup(self, name: str) -> RemoteQueue | None:
        for broker in self.brokers:
            record = broker.queue_record(name)
            if record is not None:
                return RemoteQueue(name, ARN + name, dict(record.attributes))
        return None

    def dead_letter_sources(self, dlq_name: str) -> list[str]:
        found = set(self.stale_sources)
        for broker in self.brokers:
            for name in broker.queue_names():
                record = broker.queue_record(name)
                assert record is not None
                policy = dict(record.attributes).get("RedrivePolicy")
                if policy and json.loads(policy)["deadLetterTargetArn"] == ARN + dlq_name:
                    found.add(name)
        return sorted(found)


class Node:
    """One broker and the log of every effect it returned."""

    def __init__(self, cluster: Cluster, directory: Directory | None) -> None:
        self.cluster = cluster
        self.broker = Broker(directory=directory)
        self.log: list[Effect] = []

    def __call__(self, action: str, **params: Any) -> dict[str, Any]:
        c = self.cluster
        outcome = self.broker.execute(action, params, c.now_ms, c.entropy, INFO)
        self.log.extend(outcome.effects)
        return outcome.response

    def tick(self) -> list[Effect]:
        effects = self.broker.tick(self.cluster.now_ms, self.cluster.entropy)
        self.log.extend(effects)
        return effects

    def import_messages(self, queue: str,
                        records: list[tuple[MessageRecord, str | None]]) -> list[Effect]:
        c = self.cluster
        effects = self.broker.import_messages(queue, records, c.now_ms, c.entropy)
        self.log.extend(effects)
        return effects

    def complete(self, export: Export) -> list[Effect]:
        effects = self.broker.complete_export(
            export.source_queue, export.message_id, export.token, self.cluster.now_ms)
        self.log.extend(effects)
        return effects

    def ids(self, queue: str) -> list[str]:
        messages = self.broker.queue_messages(queue)
        assert messages is not None
        return [r.message_id for r in messages.snapshot()]

    def counts(self, queue: str) -> tuple[int, int, int]:
        messages = self.broker.queue_messages(queue)
        assert messages is not None
        return messages.counts(self.cluster.now_ms)

    def replay_matches(self) -> None:
        fresh = Broker()
        for effect in self.log:
            fresh.apply(effect)
        now_ms = self.cluster.now_ms
        assert fresh.dump_state(now_ms) == self.broker.dump_state(now_ms)


class Cluster:
    def __init__(self, *, directory: bool = True) -> None:
        self.now_ms = T0
        self.entropy = CountingEntropy()
        self.directory = Directory()
        self.a = Node(self, self.directory if directory else None)
        self.b = Node(self, self.directory if directory else None)
        self.directory.brokers = [self.a.broker, self.b.broker]

    def holder(self, queue: str) -> Node:
        (node,) = [n for n in (self.a, self.b) if n.broker.queue_exists(queue)]
        return node

    def ship(self, node: Node) -> list[Export]:
        """What the shell does: copy each export to its destination's broker, then
        complete it at the source."""
        exports = node.broker.drain_exports()
        for export in exports:
            self.holder(export.destination).import_messages(
                export.destination, [(export.record, export.source_arn)])
            node.complete(export)
        return exports

    def replay_matches(self) -> None:
        self.a.replay_matches()
        self.b.replay_matches()


def receive_all(node: Node, queue: str, **params: Any) -> list[dict[str, Any]]:
    got = node("ReceiveMessage", QueueUrl=url(queue), MaxNumberOfMessages=10,
               AttributeNames=["All"], MessageAttributeNames=["All"], **params)
    return list(got.get("Messages", []))


# ---- redrive into a remote dead-letter queue -----------------------------------------


def redrive_scenario(c: Cluster, src: Node, dlq: Node) -> tuple[str, Export | None]:
    """src/src (maxReceiveCount 1) -> dlq/dlq: send one message, receive it once, let
    its visibility lapse and receive again (the redriving receive)."""
    dlq("CreateQueue", QueueName="dlq")
    src("CreateQueue", QueueName="src",
        Attributes={"RedrivePolicy": redrive("dlq"), "VisibilityTimeout": "5"})
    message_id = src("SendMessage", QueueUrl=url("src"), MessageBody="hello",
                     MessageAttributes={"k": {"DataType": "String", "StringValue": "v"}}
                     )["MessageId"]
    c.now_ms += 1_000
    (first,) = receive_all(src, "src")
    assert first["Attributes"]["ApproximateReceiveCount"] == "1"
    c.now_ms += 5_000
    assert receive_all(src, "src") == []  # redriven (here or exported), not delivered
    exports = src.broker.drain_exports()
    return message_id, exports[0] if exports else None


def test_redrive_to_a_remote_dlq_copies_keeping_the_message_then_removes_it() -> None:
    c = Cluster()
    message_id, export = redrive_scenario(c, c.a, c.b)
    assert export is not None
    # Not delivered, not removed: leased for export, invisibly, with its count as it was.
    assert c.a.ids("src") == [message_id]
    assert c.a.counts("src") == (0, 1, 0)
    (held,) = c.a.broker.queue_messages("src").snapshot()  # type: ignore[union-attr]
    assert held.receive_count == 1 and held.receipt_token == export.token
    assert held.visible_at_ms == c.now_ms + EXPORT_LEASE_MS
    assert (export.source_queue, export.message_id, export.destination, export.source_arn) == (
        "src", message_id, "dlq", ARN + "src")
    assert export.record.body == "hello" and export.record.receive_count == 1
    assert c.a.broker.drain_exports() == []  # drained once
    # Nothing moved to the DLQ yet: the copy is the shell's to make.
    assert c.b.ids("dlq") == []

    stored = c.b.import_messages("dlq", [(export.record, export.source_arn)])
    assert [type(e) for e in stored] == [MessageStored]
    assert isinstance(stored[0], MessageStored) and stored[0].moved_from is None
    (got,) = receive_all(c.b, "dlq")
    assert got["MessageId"] == message_id and got["Body"] == "hello"
    assert got["MessageAttributes"] == {"k": {"DataType": "String", "StringValue": "v"}}
    attributes = got["Attributes"]
    assert attributes["SentTimestamp"] == str(T0)
    assert attributes["ApproximateReceiveCount"] == "2"  # the one it had, plus this one
    assert attributes["ApproximateFirstReceiveTimestamp"] == str(T0 + 1_000)
    assert attributes["DeadLetterQueueSourceArn"] == ARN + "src"

    removed = c.a.complete(export)
    assert removed == [MessageRemoved("src", message_id)]
    assert c.a.ids("src") == []
    # Idempotent both ways: a second completion, a retried copy.
    assert c.a.complete(export) == []
    assert c.b.import_messages("dlq", [(export.record, export.source_arn)]) == []
    assert c.b.ids("dlq") == [message_id]
    c.replay_matches()


def test_a_remote_redrive_stores_what_a_same_broker_redrive_stores() -> None:
    here = Cluster(directory=False)
    message_id, nothing = redrive_scenario(here, here.a, here.a)
    assert nothing is None
    there = Cluster()
    same_id, export = redrive_scenario(there, there.a, there.b)
    assert export is not None and same_id == message_id
    there.b.import_messages("dlq", [(export.record, export.source_arn)])
    (local,) = here.a.broker.queue_messages("dlq").snapshot()  # type: ignore[union-attr]
    (remote,) = there.b.broker.queue_messages("dlq").snapshot()  # type: ignore[union-attr]
    assert remote == local


def test_a_lapsed_export_lease_exports_again_and_the_old_token_does_nothing() -> None:
    c = Cluster()
    message_id, export = redrive_scenario(c, c.a, c.b)
    assert export is not None
    # While the lease runs, nothing takes the message: no receive, no second export.
    c.now_ms += EXPORT_LEASE_MS - 1
    assert receive_all(c.a, "src") == []
    assert c.a.broker.drain_exports() == []
    # The copy failed (never imported); the lease lapses; the next receive exports it
    # again, under a new token, still without delivering it.
    c.now_ms += 1
    assert receive_all(c.a, "src") == []
    (again,) = c.a.broker.drain_exports()
    assert again.message_id == message_id and again.token != export.token
    assert again.record.receive_count == 1
    assert c.a.complete(export) == []  # the old lease's completion: nothing
    assert c.a.ids("src") == [message_id]
    c.b.import_messages("dlq", [(again.record, again.source_arn)])
    assert c.a.complete(again) == [MessageRemoved("src", message_id)]
    assert c.b.ids("dlq") == [message_id]
    c.replay_matches()


def test_exports_recorded_twice_before_a_drain_keep_only_the_newest() -> None:
    c = Cluster()
    dlq, src = c.b, c.a
    dlq("CreateQueue", QueueName="dlq")
    src("CreateQueue", QueueName="src",
        Attributes={"RedrivePolicy": redrive("dlq"), "VisibilityTimeout": "0"})
    message_id = src("SendMessage", QueueUrl=url("src"), MessageBody="x")["MessageId"]
    receive_all(src, "src")
    assert receive_all(src, "src") == []
    c.now_ms += EXPORT_LEASE_MS
    assert receive_all(src, "src") == []
    (export,) = src.broker.drain_exports()  # the first export's token is stale
    held = src.broker.queue_messages("src").snapshot()  # type: ignore[union-attr]
    assert export.message_id == message_id and held[0].receipt_token == export.token


def test_fifo_group_stays_blocked_while_its_head_is_exported_and_keeps_its_order() -> None:
    c = Cluster()
    src, dlq = c.a, c.b
    dlq("CreateQueue", QueueName="dlq.fifo", Attributes={"FifoQueue": "true"})
    src("CreateQueue", QueueName="src.fifo", Attributes={
        "FifoQueue": "true", "RedrivePolicy": redrive("dlq.fifo"), "VisibilityTimeout": "5"})
    ids = [src("SendMessage", QueueUrl=url("src.fifo"), MessageBody=f"m{i}", MessageGroupId="g",
               MessageDeduplicationId=f"d{i}")["MessageId"] for i in range(3)]
    other = src("SendMessage", QueueUrl=url("src.fifo"), MessageBody="o", MessageGroupId="h",
                MessageDeduplicationId="o")["MessageId"]
    got = receive_all(src, "src.fifo", VisibilityTimeout=5)
    assert [m["MessageId"] for m in got] == [*ids, other]
    c.now_ms += 5_000
    # Every message of g is due for redrive; the head is exported and holds back the
    # rest of g, as a message in flight does; group h is redriven too, separately.
    assert receive_all(src, "src.fifo") == []
    exports = src.broker.drain_exports()
    assert [e.message_id for e in exports] == [ids[0], other]
    assert receive_all(src, "src.fifo") == []
    assert src.broker.drain_exports() == []
    for _ in range(3):
        for export in exports:
            dlq.import_messages(export.destination, [(export.record, export.source_arn)])
            src.complete(export)
        # The next head of g is visible now, and is exported in its turn.
        assert receive_all(src, "src.fifo") == []
        exports = src.broker.drain_exports()
    assert exports == [] and src.ids("src.fifo") == []
    moved = receive_all(dlq, "dlq.fifo")
    in_g = [m["MessageId"] for m in moved if m["Attributes"]["MessageGroupId"] == "g"]
    assert in_g == ids
    c.replay_matches()


def test_a_remote_dlq_the_directory_does_not_know_is_not_redriven_into() -> None:
    # As for a local DLQ that was deleted: the message is delivered as if no policy.
    c = Cluster()
    c.b("CreateQueue", QueueName="dlq")
    c.a("CreateQueue", QueueName="src",
        Attributes={"RedrivePolicy": redrive("dlq"), "VisibilityTimeout": "0"})
    c.b("DeleteQueue", QueueUrl=url("dlq"))
    c.a("SendMessage", QueueUrl=url("src"), MessageBody="x")
    for count in ("1", "2"):
        (got,) = receive_all(c.a, "src")
        assert got["Attributes"]["ApproximateReceiveCount"] == count
    assert c.a.broker.drain_exports() == []


# ---- move tasks to a remote destination ----------------------------------------------


def move_task_setup(c: Cluster, n: int) -> list[str]:
    """a holds dlq (with n messages sent to it); b holds src (whose RedrivePolicy names
    dlq, so dlq is a dead-letter queue) and dest."""
    c.a("CreateQueue", QueueName="dlq")
    c.b("CreateQueue", QueueName="src", Attributes={"RedrivePolicy": redrive("dlq")})
    c.b("CreateQueue", QueueName="dest")
    return [c.a("SendMessage", QueueUrl=url("dlq"), MessageBody=f"m{i}")["MessageId"]
            for i in range(n)]


def task(node: Node, source: str) -> dict[str, Any]:
    (result,) = node("ListMessageMoveTasks", SourceArn=ARN + source)["Results"]
    return dict(result)


def test_a_move_task_to_a_remote_destination_exports_at_its_rate() -> None:
    c = Cluster()
    ids = move_task_setup(c, 5)
    c.a("StartMessageMoveTask", SourceArn=ARN + "dlq", DestinationArn=ARN + "dest",
        MaxNumberOfMessagesPerSecond=2)
    c.now_ms += 1_000
    effects = c.a.tick()
    assert [type(e).__name__ for e in effects] == [
        "MessageReceived", "MessageReceived", "MoveTaskUpserted"]
    assert task(c.a, "dlq")["ApproximateNumberOfMessagesMoved"] == 2  # the rate holds
    exports = c.a.broker.drain_exports()
    assert [(e.message_id, e.destination, e.source_arn) for e in exports] == [
        (ids[0], "dest", None), (ids[1], "dest", None)]
    assert c.a.counts("dlq") == (3, 2, 0)  # leased, not removed
    # A step while those copies are under way does not export them again.
    c.now_ms += 1_000
    c.a.tick()
    later = c.a.broker.drain_exports()
    assert [e.message_id for e in later] == ids[2:4]
    for export in exports + later:
        c.b.import_messages("dest", [(export.record, export.source_arn)])
        c.a.complete(export)
    assert task(c.a, "dlq")["Status"] == "RUNNING"
    c.now_ms += 1_000
    c.a.tick()
    assert [e.message_id for e in c.ship(c.a)] == ids[4:]
    result = task(c.a, "dlq")
    assert result["Status"] == "COMPLETED"
    assert result["ApproximateNumberOfMessagesMoved"] == 5
    assert c.a.ids("dlq") == []
    got = receive_all(c.b, "dest")
    assert sorted(m["MessageId"] for m in got) == sorted(ids)
    # A move task's copy starts its receive history afresh.
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in got} == {"1"}
    assert all("DeadLetterQueueSourceArn" not in m["Attributes"] for m in got)
    c.replay_matches()


def test_messages_go_back_to_their_remote_source_across_brokers() -> None:
    # Round trip: b's src redrives into a's dlq (exported), then a move task without a
    # destination sends them back to src via DeadLetterQueueSourceArn (exported again).
    c = Cluster()
    c.a("CreateQueue", QueueName="dlq")
    c.b("CreateQueue", QueueName="src",
        Attributes={"RedrivePolicy": redrive("dlq"), "VisibilityTimeout": "0"})
    ids = [c.b("SendMessage", QueueUrl=url("src"), MessageBody=f"m{i}")["MessageId"]
           for i in range(3)]
    receive_all(c.b, "src")
    assert receive_all(c.b, "src") == []
    assert len(c.ship(c.b)) == 3
    assert sorted(c.a.ids("dlq")) == sorted(ids) and c.b.ids("src") == []
    c.a("StartMessageMoveTask", SourceArn=ARN + "dlq")
    c.now_ms += 1_000
    c.a.tick()
    exports = c.ship(c.a)
    assert {(e.destination, e.source_arn) for e in exports} == {("src", None)}
    assert task(c.a, "dlq")["Status"] == "COMPLETED"
    assert c.a.ids("dlq") == []
    back = receive_all(c.b, "src")
    assert sorted(m["MessageId"] for m in back) == sorted(ids)
    assert {m["Attributes"]["ApproximateReceiveCount"] for m in back} == {"1"}
    c.replay_matches()


def test_a_move_task_fails_when_its_remote_destination_is_gone() -> None:
    c = Cluster()
    ids = move_task_setup(c, 2)
    c.a("StartMessageMoveTask", SourceArn=ARN + "dlq", DestinationArn=ARN + "dest")
    c.b("DeleteQueue", QueueUrl=url("dest"))
    c.now_ms += 1_000
    c.a.tick()
    result = task(c.a, "dlq")
    assert result["Status"] == "FAILED"
    assert result["FailureReason"] == "AWS.SimpleQueueService.NonExistentQueue"
    assert c.a.broker.drain_exports() == []
    assert sorted(c.a.ids("dlq")) == sorted(ids) and c.a.counts("dlq") == (2, 0, 0)
    c.replay_matches()


def test_start_move_task_checks_remote_sources_and_destinations() -> None:
    c = Cluster()
    c.a("CreateQueue", QueueName="dlq")
    c.b("CreateQueue", QueueName="dest")
    with pytest.raises(SqsError) as exc:
        c.a("StartMessageMoveTask", SourceArn=ARN + "dlq")
    assert (exc.value.code, exc.value.message) == (
        "InvalidParameterValue", "Source queue must be configured as a Dead Letter Queue.")
    c.b("CreateQueue", QueueName="src", Attributes={"RedrivePolicy": redrive("dlq")})
    for missing in (ARN + "nowhere", "arn:aws:sqs:eu-west-1:000000000000:dest"):
        with pytest.raises(SqsError) as exc:
            c.a("StartMessageMoveTask", SourceArn=ARN + "dlq", DestinationArn=missing)
        assert (exc.value.shape, exc.value.message) == (
            "ResourceNotFoundException",
            "The resource that you specified for the DestinationArn parameter doesn't exist.")
    assert "TaskHandle" in c.a("StartMessageMoveTask", SourceArn=ARN + "dlq",
                               DestinationArn=ARN + "dest")
    # The source is always this broker's: b cannot start a.dlq's task.
    with pytest.raises(SqsError) as exc:
        c.b("StartMessageMoveTask", SourceArn=ARN + "dlq")
    assert exc.value.shape == "ResourceNotFoundException"


# ---- checks against a remote queue ---------------------------------------------------


@pytest.mark.parametrize("action", ["CreateQueue", "SetQueueAttributes"])
def test_redrive_policy_checks_against_a_remote_dlq(action: str) -> None:
    c = Cluster()
    c.b("CreateQueue", QueueName="dlq")
    c.b("CreateQueue", QueueName="dlq.fifo", Attributes={"FifoQueue": "true"})
    c.b("CreateQueue", QueueName="deny", Attributes={
        "RedriveAllowPolicy": json.dumps({"redrivePermission": "denyAll"})})
    c.b("CreateQueue", QueueName="only", Attributes={"RedriveAllowPolicy": json.dumps(
        {"redrivePermission": "byQueue", "sourceQueueArns": [ARN + "other"]})})
    c.b("CreateQueue", QueueName="mine", Attributes={"RedriveAllowPolicy": json.dumps(
        {"redrivePermission": "byQueue", "sourceQueueArns": [ARN + "src"]})})
    c.a("CreateQueue", QueueName="src")
    cases = [
        (redrive("missing"), "Dead letter target does not exist."),
        ('{"deadLetterTargetArn": "arn:aws:sqs:eu-west-1:000000000000:dlq", '
         '"maxReceiveCount": 1}', "Dead letter target does not exist."),
        (redrive("dlq.fifo"), "Dead-letter queue must be same type of queue as the source."),
        (redrive("deny"), f"Queue {ARN}deny does not allow this queue to use it as a "
         "dead-letter queue."),
        (redrive("only"), f"Queue {ARN}only does not allow this queue to use it as a "
         "dead-letter queue."),
    ]

    def set_policy(policy: str) -> None:
        if action == "CreateQueue":
            c.a("CreateQueue", QueueName="src", Attributes={"RedrivePolicy": policy})
        else:
            c.a("SetQueueAttributes", QueueUrl=url("src"), Attributes={"RedrivePolicy": policy})

    for policy, reason in cases:
        with pytest.raises(SqsError) as exc:
            set_policy(policy)
        assert (exc.value.code, exc.value.message) == (
            "InvalidParameterValue",
            f"Value {policy} for parameter RedrivePolicy is invalid. Reason: {reason}")
    if action == "SetQueueAttributes":
        for target in ("dlq", "mine"):
            set_policy(redrive(target))
    else:
        c.a("CreateQueue", QueueName="src2", Attributes={"RedrivePolicy": redrive("dlq")})
    # The other way round: a FIFO source on a and a standard DLQ on b.
    with pytest.raises(SqsError) as exc:
        c.a("CreateQueue", QueueName="f.fifo",
            Attributes={"FifoQueue": "true", "RedrivePolicy": redrive("dlq")})
    assert exc.value.message.endswith(
        "Dead-letter queue must be same type of queue as the source.")


def test_without_a_directory_remote_queues_do_not_exist() -> None:
    c = Cluster(directory=False)
    c.b("CreateQueue", QueueName="dlq")
    with pytest.raises(SqsError) as exc:
        c.a("CreateQueue", QueueName="src", Attributes={"RedrivePolicy": redrive("dlq")})
    assert exc.value.message.endswith("Dead letter target does not exist.")


def test_list_dead_letter_sources_includes_remote_sources_and_pages() -> None:
    c = Cluster()
    c.a("CreateQueue", QueueName="dlq")
    c.a("CreateQueue", QueueName="other-dlq")
    c.a("CreateQueue", QueueName="s1", Attributes={"RedrivePolicy": redrive("dlq")})
    c.a("CreateQueue", QueueName="plain")
    for name in ("s3", "s2"):
        c.b("CreateQueue", QueueName=name, Attributes={"RedrivePolicy": redrive("dlq")})
    c.b("CreateQueue", QueueName="s4", Attributes={"RedrivePolicy": redrive("other-dlq")})
    # The catalog is stale about a queue a holds: a's own state decides.
    c.directory.stale_sources = ["plain"]
    assert c.a("ListDeadLetterSourceQueues", QueueUrl=url("dlq")) == {
        "queueUrls": [url("s1"), url("s2"), url("s3")]}
    first = c.a("ListDeadLetterSourceQueues", QueueUrl=url("dlq"), MaxResults=2)
    assert first["queueUrls"] == [url("s1"), url("s2")]
    rest = c.a("ListDeadLetterSourceQueues", QueueUrl=url("dlq"), MaxResults=2,
               NextToken=first["NextToken"])
    assert rest == {"queueUrls": [url("s3")]}
    assert c.a("ListDeadLetterSourceQueues", QueueUrl=url("other-dlq")) == {
        "queueUrls": [url("s4")]}


# ---- import and complete -------------------------------------------------------------


def a_record(c: Cluster, n: int = 1) -> list[MessageRecord]:
    c.a("CreateQueue", QueueName="src")
    for i in range(n):
        c.a("SendMessage", QueueUrl=url("src"), MessageBody=f"m{i}")
    messages = c.a.broker.queue_messages("src")
    assert messages is not None
    return messages.snapshot()


def test_import_into_an_unknown_queue() -> None:
    c = Cluster()
    (record,) = a_record(c)
    with pytest.raises(SqsError) as exc:
        c.b.import_messages("nowhere", [(record, None)])
    assert (exc.value.code, exc.value.message) == (
        "AWS.SimpleQueueService.NonExistentQueue", "The specified queue does not exist.")


def test_import_is_all_or_nothing_and_skips_repeated_ids() -> None:
    c = Cluster()
    good, other = a_record(c, 2)
    c.b("CreateQueue", QueueName="dlq")
    with pytest.raises(InternalError):
        c.b.import_messages("dlq", [(good, None), (other.without_body(), None)])
    assert c.b.ids("dlq") == []
    effects = c.b.import_messages("dlq", [(good, None), (good, None), (other, ARN + "src")])
    assert [e.record.message_id for e in effects  # type: ignore[union-attr]
            ] == [good.message_id, other.message_id]
    assert sorted(c.b.ids("dlq")) == sorted([good.message_id, other.message_id])
    c.replay_matches()


def test_complete_export_of_an_unknown_queue_or_message_does_nothing() -> None:
    c = Cluster()
    (record,) = a_record(c)
    assert c.a.broker.complete_export("nowhere", record.message_id, "t", c.now_ms) == []
    assert c.a.broker.complete_export("src", "no-such-id", "t", c.now_ms) == []
    # Never leased: no token matches it.
    assert c.a.broker.complete_export("src", record.message_id, "t", c.now_ms) == []
    assert c.a.ids("src") == [record.message_id]


def test_a_consumer_receive_after_a_lapsed_lease_wins_over_the_old_completion() -> None:
    c = Cluster()
    ids = move_task_setup(c, 1)
    c.a("StartMessageMoveTask", SourceArn=ARN + "dlq", DestinationArn=ARN + "dest")
    c.now_ms += 1_000
    c.a.tick()
    (export,) = c.a.broker.drain_exports()
    c.now_ms += EXPORT_LEASE_MS
    (got,) = receive_all(c.a, "dlq")  # a consumer of the DLQ takes it meanwhile
    assert got["MessageId"] == ids[0] and got["Attributes"]["ApproximateReceiveCount"] == "1"
    assert c.a.complete(export) == []
    assert c.a.ids("dlq") == ids
    c.replay_matches()


def test_queue_record_accessor() -> None:
    c = Cluster()
    assert c.a.broker.queue_record("q") is None
    c.a("CreateQueue", QueueName="q", Attributes={"VisibilityTimeout": "7"})
    record = c.a.broker.queue_record("q")
    assert record is not None and dict(record.attributes)["VisibilityTimeout"] == "7"
    assert c.a.broker.queue_names() == ["q"]


# ---- no message lost or duplicated, whatever the shell does --------------------------


class ExportMachine(RuleBasedStateMachine):
    """Random receives after clock steps (each followed by a drain, as the shell does),
    copies (repeated, or lost), completions (only of what was copied: the shell
    completes after the copy is committed); at any time every message is held
    somewhere (never lost) and, once the shell has shipped everything, in exactly one
    queue. FIFO groups keep their order in the dead-letter queue."""

    fifo = False
    MESSAGES = 6

    def __init__(self) -> None:
        super().__init__()
        c = self.c = Cluster()
        suffix = ".fifo" if self.fifo else ""
        self.src, self.dlq = "src" + suffix, "dlq" + suffix
        fifo = {"FifoQueue": "true"} if self.fifo else {}
        c.b("CreateQueue", QueueName=self.dlq, Attributes=fifo)
        c.a("CreateQueue", QueueName=self.src, Attributes={
            **fifo, "RedrivePolicy": redrive(self.dlq), "VisibilityTimeout": "1"})
        self.sent: list[tuple[str, str]] = []  # (message id, group), in send order
        for i in range(self.MESSAGES):
            group = f"g{i % 2}"
            extra = {"MessageGroupId": group, "MessageDeduplicationId": f"d{i}"} if self.fifo \
                else {}
            message_id = c.a("SendMessage", QueueUrl=url(self.src), MessageBody=f"m{i}",
                             **extra)["MessageId"]
            self.sent.append((message_id, group))
        self.drained: list[Export] = []
        self.copied: list[Export] = []

    @rule(n=st.integers(1, 10),
          ms=st.sampled_from([0, 1, 500, 1_000, EXPORT_LEASE_MS - 1, EXPORT_LEASE_MS]))
    def receive(self, n: int, ms: int) -> None:
        self.c.now_ms += ms
        self.c.a("ReceiveMessage", QueueUrl=url(self.src), MaxNumberOfMessages=n)
        # As the shell does after each commit.
        self.drained.extend(self.c.a.broker.drain_exports())

    @rule(i=st.integers(0, 100))
    def copy(self, i: int) -> None:
        if self.drained:
            export = self.drained.pop(i % len(self.drained))
            self.c.b.import_messages(self.dlq, [(export.record, export.source_arn)])
            self.copied.append(export)

    @rule(i=st.integers(0, 100))
    def copy_again(self, i: int) -> None:
        if self.copied:
            export = self.copied[i % len(self.copied)]
            self.c.b.import_messages(self.dlq, [(export.record, export.source_arn)])

    @rule(i=st.integers(0, 100))
    def lose(self, i: int) -> None:
        if self.drained:
            self.drained.pop(i % len(self.drained))

    @rule(i=st.integers(0, 100))
    def complete(self, i: int) -> None:
        if self.copied:
            self.c.a.complete(self.copied.pop(i % len(self.copied)))

    def where(self) -> Counter[str]:
        return Counter(self.c.a.ids(self.src) + self.c.b.ids(self.dlq))

    @invariant()
    def never_lost(self) -> None:
        held = self.where()
        assert all(held[message_id] >= 1 for message_id, _ in self.sent)

    @invariant()
    def replays(self) -> None:
        self.c.replay_matches()

    def teardown(self) -> None:
        c = self.c
        # The shell ships what it has, then everything until the source is empty.
        for export in self.copied:
            c.a.complete(export)
        for _ in range(3 * self.MESSAGES + 3):
            c.now_ms += EXPORT_LEASE_MS
            c.a("ReceiveMessage", QueueUrl=url(self.src), MaxNumberOfMessages=10)
            c.ship(c.a)
            if not c.a.ids(self.src):
                break
        assert c.a.ids(self.src) == []
        held = self.where()
        assert sorted(held.elements()) == sorted(message_id for message_id, _ in self.sent)
        if self.fifo:
            dlq = c.b.broker.queue_messages(self.dlq)
            assert dlq is not None
            by_sequence = sorted(dlq.snapshot(), key=lambda r: r.sequence_number or 0)
            for group in ("g0", "g1"):
                assert [r.message_id for r in by_sequence if r.group_id == group] == [
                    m for m, g in self.sent if g == group]


class FifoExportMachine(ExportMachine):
    fifo = True


_MACHINE_SETTINGS = settings(
    max_examples=60, stateful_step_count=40, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.mark.parametrize("machine", [ExportMachine, FifoExportMachine])
def test_exports_never_lose_or_duplicate_a_message(machine: type[ExportMachine]) -> None:
    machine.TestCase.settings = _MACHINE_SETTINGS
    machine.TestCase().runTest()


def test_leases_are_received_effects_with_the_count_unchanged() -> None:
    c = Cluster()
    message_id, export = redrive_scenario(c, c.a, c.b)
    assert export is not None
    lease = [e for e in c.a.log if isinstance(e, MessageReceived)][-1]
    assert (lease.message_id, lease.receipt_token, lease.receive_count) == (
        message_id, export.token, 1)
    assert lease.first_receive_ms == T0 + 1_000
    assert lease.visible_at_ms == c.now_ms + EXPORT_LEASE_MS
