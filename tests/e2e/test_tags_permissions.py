"""End-to-end: queue tags and queue permissions (the Policy attribute), both protocols."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ._harness import error_of


def test_tag_untag_list(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    assert sqs.list_queue_tags(QueueUrl=url).get("Tags", {}) == {}
    sqs.tag_queue(QueueUrl=url, Tags={"team": "core", "Env": "dev", "empty": ""})
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "core", "Env": "dev",
                                                         "empty": ""}
    # Re-tagging overwrites; keys are case-sensitive.
    sqs.tag_queue(QueueUrl=url, Tags={"team": "edge", "env": "prod"})
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {
        "team": "edge", "Env": "dev", "env": "prod", "empty": ""}
    # Unknown keys are ignored.
    sqs.untag_queue(QueueUrl=url, TagKeys=["Env", "empty", "never-set"])
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"team": "edge", "env": "prod"}


def test_create_queue_with_tags(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name, tags={"a": "1", "b": "2"})["QueueUrl"]
    assert sqs.list_queue_tags(QueueUrl=url)["Tags"] == {"a": "1", "b": "2"}


def test_tags_on_unknown_queue(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"] + "-gone"
    calls: list[Callable[[], Any]] = [
        lambda: sqs.tag_queue(QueueUrl=url, Tags={"a": "b"}),
        lambda: sqs.untag_queue(QueueUrl=url, TagKeys=["a"]),
        lambda: sqs.list_queue_tags(QueueUrl=url),
    ]
    for call in calls:
        with pytest.raises(ClientError) as ei:
            call()
        assert isinstance(ei.value, sqs.exceptions.QueueDoesNotExist)


def test_invalid_tags(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    for tags in ({"aws:reserved": "x"}, {"k" * 129: "v"}, {"k": "v" * 257}):
        with pytest.raises(ClientError) as ei:
            sqs.tag_queue(QueueUrl=url, Tags=tags)
        assert error_of(ei.value)[0] == "InvalidParameterValue"
    assert sqs.list_queue_tags(QueueUrl=url).get("Tags", {}) == {}


def policy_of(sqs: Any, url: str) -> dict[str, Any] | None:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"]).get("Attributes", {})
    return json.loads(attrs["Policy"]) if "Policy" in attrs else None


def test_add_and_remove_permission(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url,
                                   AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    assert policy_of(sqs, url) is None
    sqs.add_permission(QueueUrl=url, Label="send-only", AWSAccountIds=["111122223333"],
                       Actions=["SendMessage"])
    sqs.add_permission(QueueUrl=url, Label="both", AWSAccountIds=["444455556666"],
                       Actions=["ReceiveMessage", "DeleteMessage"])
    policy = policy_of(sqs, url)
    assert policy is not None
    statements = {s["Sid"]: s for s in policy["Statement"]}
    assert set(statements) == {"send-only", "both"}
    send_only = statements["send-only"]
    assert send_only["Effect"] == "Allow"
    assert send_only["Resource"] == arn
    principal = send_only["Principal"]["AWS"]
    principals = principal if isinstance(principal, list) else [principal]
    assert any("111122223333" in p for p in principals)
    actions = send_only["Action"]
    assert (actions if isinstance(actions, list) else [actions]) == ["SQS:SendMessage"]

    # A label can only be used once.
    with pytest.raises(ClientError) as ei:
        sqs.add_permission(QueueUrl=url, Label="both", AWSAccountIds=["444455556666"],
                           Actions=["SendMessage"])
    assert error_of(ei.value)[0] == "InvalidParameterValue"

    sqs.remove_permission(QueueUrl=url, Label="send-only")
    policy = policy_of(sqs, url)
    assert policy is not None
    assert [s["Sid"] for s in policy["Statement"]] == ["both"]
    sqs.remove_permission(QueueUrl=url, Label="both")
    assert policy_of(sqs, url) is None

    with pytest.raises(ClientError) as ei:
        sqs.remove_permission(QueueUrl=url, Label="never-added")
    assert error_of(ei.value)[0] == "InvalidParameterValue"


def test_add_permission_too_many_actions(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    actions = ["SendMessage", "ReceiveMessage", "DeleteMessage", "ChangeMessageVisibility",
               "GetQueueAttributes", "GetQueueUrl", "PurgeQueue", "ListQueueTags"]
    with pytest.raises(ClientError) as ei:
        sqs.add_permission(QueueUrl=url, Label="many", AWSAccountIds=["111122223333"],
                           Actions=actions)
    code, _, status = error_of(ei.value)
    assert (code, status) == ("OverLimit", 403)
    assert policy_of(sqs, url) is None


def test_set_policy_attribute_directly(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    doc = {"Version": "2012-10-17", "Statement": [
        {"Sid": "s1", "Effect": "Allow", "Principal": "*", "Action": "sqs:SendMessage",
         "Resource": "*"}]}
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(doc)})
    assert policy_of(sqs, url) == doc
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": ""})
    assert policy_of(sqs, url) is None


def test_more_tags_than_a_queue_may_have_are_refused(sqs: Any, queue_name: str) -> None:
    many = {f"k{i}": "v" for i in range(51)}
    with pytest.raises(ClientError) as ei:
        sqs.create_queue(QueueName=queue_name, tags=many)
    assert error_of(ei.value)[0] == "InvalidParameterValue"
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    with pytest.raises(ClientError) as ei:
        sqs.tag_queue(QueueUrl=url, Tags=many)
    code, message, _ = error_of(ei.value)
    assert (code, message) == (
        "InvalidParameterValue", f"Too many tags added for queue {queue_name}.")
    assert sqs.list_queue_tags(QueueUrl=url).get("Tags", {}) == {}
    with pytest.raises(ClientError) as ei:
        sqs.untag_queue(QueueUrl=url, TagKeys=["k"] * 1001)
    assert error_of(ei.value)[0] == "InvalidParameterValue"


def test_add_permission_for_more_accounts_than_a_policy_may_name(
    sqs: Any, queue_name: str
) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    with pytest.raises(ClientError) as ei:
        sqs.add_permission(QueueUrl=url, Label="many", AWSAccountIds=["111122223333"] * 51,
                           Actions=["SendMessage"])
    assert error_of(ei.value) == (
        "OverLimit", "51 AWSAccountIds were found, maximum allowed is 50.", 403)
    assert policy_of(sqs, url) is None


def test_permission_policy_as_recorded(sqs: Any, queue_name: str) -> None:
    # Recorded on AWS: the policy AddPermission creates is Version 2008-10-17, and
    # removing a label that is not there says "can't find label."
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    sqs.add_permission(QueueUrl=url, Label="crossaccountpermission",
                       AWSAccountIds=["111122223333"], Actions=["ReceiveMessage"])
    policy = policy_of(sqs, url)
    assert policy is not None and policy["Version"] == "2008-10-17"
    sqs.remove_permission(QueueUrl=url, Label="crossaccountpermission")
    with pytest.raises(ClientError) as ei:
        sqs.remove_permission(QueueUrl=url, Label="crossaccountpermission2")
    assert error_of(ei.value) == (
        "InvalidParameterValue",
        "Value crossaccountpermission2 for parameter Label is invalid. Reason: can't find label.",
        400)
