"""The control plane on its own (queue definitions, no messages), and the broker keeping
its two planes in step. The actions themselves are covered through ``Broker`` in
test_broker.py and end to end; this checks the split."""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from typing import Any

import pytest
from _doubles import CountingEntropy
from hypothesis import given, settings
from hypothesis import strategies as st

from ferrymq._core import _attributes as attrs
from ferrymq._core._broker import Broker
from ferrymq._core._control import (
    MOVE_TASK_HANDLE_PARAM,
    MOVE_TASK_HANDLES_LISTED_PARAM,
    ControlPlane,
    Replication,
    RequestInfo,
)
from ferrymq._core._effects import MoveTaskUpserted, QueueUpserted
from ferrymq._core._errors import InternalError, SqsError

INFO = RequestInfo(base_url="http://localhost:9324", sender_id="AKIDTEST")
ARN = "arn:aws:sqs:us-east-1:000000000000:"
NOW_MS = 1_700_000_000_000


def control_plane() -> ControlPlane:
    return ControlPlane(account_id="000000000000", region="us-east-1",
                        purge_interval_ms=60_000, recreate_delay_ms=60_000,
                        replication=Replication(), directory=None)


def url(name: str) -> str:
    return f"http://localhost:9324/000000000000/{name}"


def create(cp: ControlPlane, name: str, **attributes: str) -> None:
    _, effects = cp.create_queue({"QueueName": name, "Attributes": attributes}, NOW_MS,
                                 CountingEntropy(), INFO)
    for effect in effects:
        assert isinstance(effect, QueueUpserted)
        cp.apply(effect)


def test_an_action_decides_and_changes_nothing_until_its_effects_are_applied() -> None:
    cp = control_plane()
    response, effects = cp.create_queue(
        {"QueueName": "q", "Attributes": {"VisibilityTimeout": "7"}}, NOW_MS,
        CountingEntropy(), INFO)
    assert response == {"QueueUrl": url("q")}
    assert cp.definition("q") is None and cp.names() == []
    (effect,) = effects
    assert isinstance(effect, QueueUpserted)
    cp.apply(effect)
    definition = cp.definition("q")
    assert definition is not None and definition.record == effect.record
    # The settings the data plane will run on, decoded once from the definition.
    assert definition.settings.visibility_timeout_ms == 7_000
    _, effects = cp.set_queue_attributes(
        {"QueueUrl": url("q"), "Attributes": {"VisibilityTimeout": "9"}}, NOW_MS + 1,
        CountingEntropy(), INFO)
    assert cp.definition("q") is definition
    assert definition.settings.visibility_timeout_ms == 7_000  # not applied yet


def test_the_control_plane_alone_checks_redrives_and_finds_dead_letter_sources() -> None:
    cp = control_plane()
    create(cp, "dlq", RedriveAllowPolicy=json.dumps({"redrivePermission": "byQueue",
                                                    "sourceQueueArns": [ARN + "allowed"]}))
    redrive = json.dumps({"deadLetterTargetArn": ARN + "dlq", "maxReceiveCount": 3})
    create(cp, "allowed", RedrivePolicy=redrive)
    try:
        create(cp, "other", RedrivePolicy=redrive)
    except SqsError as exc:
        assert "does not allow this queue" in exc.message
    else:
        raise AssertionError("the RedriveAllowPolicy was not checked")
    response, effects = cp.list_dead_letter_sources({"QueueUrl": url("dlq")}, NOW_MS,
                                                    CountingEntropy(), INFO)
    assert response == {"queueUrls": [url("allowed")]} and effects == []


def test_a_move_task_counts_its_messages_through_the_data_plane() -> None:
    cp = control_plane()
    create(cp, "dlq")
    create(cp, "src", RedrivePolicy=json.dumps({"deadLetterTargetArn": ARN + "dlq",
                                                "maxReceiveCount": 1}))
    asked: list[str] = []

    def messages_in(name: str) -> int:
        asked.append(name)
        return 42

    response, effects = cp.start_move_task({"SourceArn": ARN + "dlq"}, NOW_MS,
                                           CountingEntropy(), messages_in)
    (effect,) = effects
    assert isinstance(effect, MoveTaskUpserted)
    assert asked == ["dlq"] and effect.record.to_move == 42
    assert response == {"TaskHandle": effect.record.task_handle}
    assert not cp.has_running_tasks()  # decided, not applied
    cp.apply(effect)
    assert cp.running_tasks() == [effect.record.task_handle]


def test_a_partition_s_move_task_takes_the_handle_it_is_given() -> None:
    cp = control_plane()
    create(cp, "dlq")
    create(cp, "src", RedrivePolicy=json.dumps({"deadLetterTargetArn": ARN + "dlq",
                                                "maxReceiveCount": 1}))
    handle = base64.b64encode(json.dumps({"taskId": "t", "sourceArn": ARN + "dlq"})
                              .encode()).decode()
    response, (effect,) = cp.start_move_task(
        {"SourceArn": ARN + "dlq", MOVE_TASK_HANDLE_PARAM: handle}, NOW_MS,
        CountingEntropy(), lambda name: 0)
    assert response == {"TaskHandle": handle} and isinstance(effect, MoveTaskUpserted)
    cp.apply(effect)
    cp.apply(MoveTaskUpserted(replace(effect.record, status="COMPLETED")))
    # Listed with its handle although it is done, when the caller asks (only a node's
    # own partition calls can).
    listed = {"SourceArn": ARN + "dlq"}
    assert "TaskHandle" not in cp.list_move_tasks(listed, NOW_MS, CountingEntropy(),
                                                  INFO)[0]["Results"][0]
    with_handles = {**listed, MOVE_TASK_HANDLES_LISTED_PARAM: True}
    assert cp.list_move_tasks(with_handles, NOW_MS, CountingEntropy(), INFO)[0][
        "Results"][0]["TaskHandle"] == handle
    # A handle of another task, or of another queue, is a bug of the caller's.
    other = base64.b64encode(json.dumps({"taskId": "t", "sourceArn": ARN + "src"})
                             .encode()).decode()
    for wrong in (handle, other):
        with pytest.raises(InternalError):
            cp.start_move_task({"SourceArn": ARN + "dlq", MOVE_TASK_HANDLE_PARAM: wrong},
                               NOW_MS, CountingEntropy(), lambda name: 0)


_NAMES = ("a", "b", "c")
_ACTIONS = st.one_of(
    st.tuples(st.just("CreateQueue"), st.sampled_from(_NAMES),
              st.sampled_from(["0", "5", "30"])),
    st.tuples(st.just("DeleteQueue"), st.sampled_from(_NAMES), st.just("")),
    st.tuples(st.just("SetQueueAttributes"), st.sampled_from(_NAMES),
              st.sampled_from(["1", "5", "60"])),
    st.tuples(st.just("TagQueue"), st.sampled_from(_NAMES), st.sampled_from(["x", "y"])),
    st.tuples(st.just("Tick"), st.just(""), st.just("")),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_ACTIONS, max_size=30))
def test_the_broker_keeps_both_planes_holding_the_same_queues(
    actions: list[tuple[str, str, str]],
) -> None:
    """What the control plane answers (ListQueues, each queue's record) and what the
    data plane holds (a MessageQueue per queue, with the definition's settings) never
    disagree, whatever mix of definition changes runs, executed or replayed."""
    broker = Broker(recreate_delay_ms=0)
    entropy = CountingEntropy()
    now_ms = NOW_MS
    effects = []
    for action, name, value in actions:
        now_ms += 1_000
        params: dict[str, Any]
        if action == "Tick":
            effects.extend(broker.tick(now_ms, entropy))
            continue
        if action == "CreateQueue":
            params = {"QueueName": name, "Attributes": {"VisibilityTimeout": value}}
        elif action == "DeleteQueue":
            params = {"QueueUrl": url(name)}
        elif action == "SetQueueAttributes":
            params = {"QueueUrl": url(name), "Attributes": {"VisibilityTimeout": value}}
        else:
            params = {"QueueUrl": url(name), "Tags": {value: "1"}}
        try:
            effects.extend(broker.execute(action, params, now_ms, entropy, INFO).effects)
        except SqsError as exc:
            effects.extend(exc.effects)
    replayed = Broker(recreate_delay_ms=0)
    for effect in effects:
        replayed.apply(effect)
    for b in (broker, replayed):
        listed = b.execute("ListQueues", {}, now_ms, entropy, INFO).response.get(
            "QueueUrls", [])
        assert listed == [url(n) for n in b.queue_names()]
        for name in _NAMES:
            record, messages = b.queue_record(name), b.queue_messages(name)
            assert (record is None) == (messages is None)
            if record is not None and messages is not None:
                assert messages.settings == attrs.settings_from(dict(record.attributes))
    assert replayed.dump_state(now_ms) == broker.dump_state(now_ms)
