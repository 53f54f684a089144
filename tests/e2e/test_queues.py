"""End-to-end: queue lifecycle and queue attributes, under both wire protocols."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ._harness import ServerProcess, error_of, make_client

ACCOUNT = "000000000000"


def test_create_queue_returns_url_from_host_header(sqs: Any, server: ServerProcess,
                                                   queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    assert url == f"{server.url}/{ACCOUNT}/{queue_name}"


def test_queue_url_follows_host_header_of_each_request(
    server: ServerProcess, protocol: str, queue_name: str
) -> None:
    local = make_client(f"http://localhost:{server.port}", protocol)
    url = local.create_queue(QueueName=queue_name)["QueueUrl"]
    assert url == f"http://localhost:{server.port}/{ACCOUNT}/{queue_name}"
    # The same queue, asked for under another Host, is reported under that Host.
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        conn.request(
            "POST", "/", body=json.dumps({"QueueName": queue_name}),
            headers={
                "Host": "sqs.example.test:4566",
                "Content-Type": "application/x-amz-json-1.0",
                "X-Amz-Target": "AmazonSQS.GetQueueUrl",
            },
        )
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 200, body
    assert body["QueueUrl"] == f"http://sqs.example.test:4566/{ACCOUNT}/{queue_name}"


def test_create_queue_is_idempotent(sqs: Any, queue_name: str) -> None:
    first = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    assert sqs.create_queue(QueueName=queue_name)["QueueUrl"] == first
    # Explicit defaults are "identical attributes" too.
    again = sqs.create_queue(QueueName=queue_name, Attributes={"VisibilityTimeout": "30"})
    assert again["QueueUrl"] == first


def test_create_queue_identical_attributes_ok_different_conflict(sqs: Any,
                                                                 queue_name: str) -> None:
    attrs = {"VisibilityTimeout": "45", "DelaySeconds": "3"}
    first = sqs.create_queue(QueueName=queue_name, Attributes=attrs)["QueueUrl"]
    assert sqs.create_queue(QueueName=queue_name, Attributes=attrs)["QueueUrl"] == first
    with pytest.raises(ClientError) as ei:
        sqs.create_queue(QueueName=queue_name, Attributes={"VisibilityTimeout": "46",
                                                           "DelaySeconds": "3"})
    code, message, status = error_of(ei.value)
    assert (code, status) == ("QueueAlreadyExists", 400)
    assert isinstance(ei.value, sqs.exceptions.QueueNameExists)
    assert "VisibilityTimeout" in message


def test_create_fifo_queue_conflict_on_content_based_dedup(sqs: Any, queue_name: str) -> None:
    name = queue_name + ".fifo"
    sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true"})
    with pytest.raises(ClientError) as ei:
        sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true",
                                                     "ContentBasedDeduplication": "true"})
    code, message, _ = error_of(ei.value)
    assert code == "QueueAlreadyExists"
    assert message == (
        "A queue already exists with the same name and a different value for attribute "
        "ContentBasedDeduplication"
    )


@pytest.mark.parametrize(
    "name",
    ["has space", "a" * 81, "slash/name", "dot.name", "ümlaut", "star*"],
    ids=["space", "81-chars", "slash", "dot", "non-ascii", "star"],
)
def test_create_queue_invalid_name(sqs: Any, name: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.create_queue(QueueName=name)
    code, _, status = error_of(ei.value)
    assert (code, status) == ("InvalidParameterValue", 400)


def test_create_queue_80_chars_ok(sqs: Any, queue_name: str) -> None:
    name = (queue_name + "x" * 80)[:80]
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    assert url.endswith("/" + name)


def test_fifo_name_and_attribute_must_agree(sqs: Any, queue_name: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.create_queue(QueueName=queue_name, Attributes={"FifoQueue": "true"})
    assert error_of(ei.value)[0] == "InvalidParameterValue"
    with pytest.raises(ClientError) as ei:
        sqs.create_queue(QueueName=queue_name + ".fifo")
    assert error_of(ei.value)[0] == "InvalidParameterValue"


def test_get_queue_url(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    assert sqs.get_queue_url(QueueName=queue_name)["QueueUrl"] == url
    assert sqs.get_queue_url(QueueName=queue_name,
                             QueueOwnerAWSAccountId=ACCOUNT)["QueueUrl"] == url


def test_get_queue_url_unknown(sqs: Any, protocol: str, queue_name: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.get_queue_url(QueueName=queue_name)
    code, message, status = error_of(ei.value)
    assert code == "AWS.SimpleQueueService.NonExistentQueue"
    assert status == 400
    assert isinstance(ei.value, sqs.exceptions.QueueDoesNotExist)
    if protocol == "json":
        assert message == "The specified queue does not exist."
    else:
        assert message.startswith("The specified queue does not exist")


def test_queue_names_are_case_sensitive(sqs: Any, queue_name: str) -> None:
    sqs.create_queue(QueueName=queue_name + "-Abc")
    with pytest.raises(ClientError) as ei:
        sqs.get_queue_url(QueueName=queue_name + "-abc")
    assert isinstance(ei.value, sqs.exceptions.QueueDoesNotExist)


def test_list_queues_prefix_and_paging(sqs: Any, queue_name: str) -> None:
    names = [f"{queue_name}-{i}" for i in range(3)]
    urls = sorted(sqs.create_queue(QueueName=n)["QueueUrl"] for n in names)
    sqs.create_queue(QueueName="other" + queue_name)

    listed = sqs.list_queues(QueueNamePrefix=queue_name)
    assert sorted(listed["QueueUrls"]) == urls
    # Without MaxResults there is no NextToken.
    assert "NextToken" not in listed

    page1 = sqs.list_queues(QueueNamePrefix=queue_name, MaxResults=2)
    assert len(page1["QueueUrls"]) == 2
    token = page1["NextToken"]
    page2 = sqs.list_queues(QueueNamePrefix=queue_name, MaxResults=2, NextToken=token)
    assert len(page2["QueueUrls"]) == 1
    assert "NextToken" not in page2
    assert sorted(page1["QueueUrls"] + page2["QueueUrls"]) == urls

    everything = sqs.list_queues()["QueueUrls"]
    assert set(urls) <= set(everything)


def test_list_queues_no_match_has_no_urls(sqs: Any, queue_name: str) -> None:
    listed = sqs.list_queues(QueueNamePrefix="nomatch" + queue_name)
    assert listed.get("QueueUrls", []) == []


def test_list_queues_max_results_out_of_range(sqs: Any) -> None:
    for bad in (0, 1001):
        with pytest.raises(ClientError) as ei:
            sqs.list_queues(MaxResults=bad)
        assert error_of(ei.value)[0] == "InvalidParameterValue"


def test_delete_queue(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="doomed")
    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(ClientError) as ei:
        sqs.get_queue_url(QueueName=queue_name)
    assert isinstance(ei.value, sqs.exceptions.QueueDoesNotExist)
    assert url not in sqs.list_queues(QueueNamePrefix=queue_name).get("QueueUrls", [])
    with pytest.raises(ClientError) as ei:
        sqs.send_message(QueueUrl=url, MessageBody="x")
    assert error_of(ei.value)[0] == "AWS.SimpleQueueService.NonExistentQueue"
    with pytest.raises(ClientError) as ei:
        sqs.delete_queue(QueueUrl=url)
    assert isinstance(ei.value, sqs.exceptions.QueueDoesNotExist)


def test_recreate_within_60s_is_refused(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(ClientError) as ei:
        sqs.create_queue(QueueName=queue_name)
    code, message, status = error_of(ei.value)
    assert (code, status) == ("AWS.SimpleQueueService.QueueDeletedRecently", 400)
    assert isinstance(ei.value, sqs.exceptions.QueueDeletedRecently)
    assert message == (
        "You must wait 60 seconds after deleting a queue before you can create another "
        "with the same name."
    )


def test_recreate_allowed_when_rule_disabled(dev_sqs: Any, queue_name: str) -> None:
    url = dev_sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    dev_sqs.send_message(QueueUrl=url, MessageBody="old")
    dev_sqs.delete_queue(QueueUrl=url)
    again = dev_sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    assert again == url
    # A re-created queue starts empty.
    assert "Messages" not in dev_sqs.receive_message(QueueUrl=again, WaitTimeSeconds=0)


STANDARD_DEFAULTS = {
    "ApproximateNumberOfMessages": "0",
    "ApproximateNumberOfMessagesNotVisible": "0",
    "ApproximateNumberOfMessagesDelayed": "0",
    "DelaySeconds": "0",
    "MaximumMessageSize": "1048576",
    "MessageRetentionPeriod": "345600",
    "ReceiveMessageWaitTimeSeconds": "0",
    "VisibilityTimeout": "30",
    "SqsManagedSseEnabled": "true",
}


def test_get_attributes_all_defaults(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    for key, value in STANDARD_DEFAULTS.items():
        assert attrs[key] == value, key
    assert attrs["QueueArn"] == f"arn:aws:sqs:us-east-1:{ACCOUNT}:{queue_name}"
    # Epoch seconds, not milliseconds.
    created = int(attrs["CreatedTimestamp"])
    assert 1_600_000_000 < created < 4_000_000_000
    assert int(attrs["LastModifiedTimestamp"]) >= created
    expected = set(STANDARD_DEFAULTS) | {"QueueArn", "CreatedTimestamp", "LastModifiedTimestamp"}
    assert set(attrs) == expected
    for fifo_only in ("FifoQueue", "ContentBasedDeduplication", "DeduplicationScope",
                      "FifoThroughputLimit"):
        assert fifo_only not in attrs


def test_get_attributes_without_names_returns_none(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    assert sqs.get_queue_attributes(QueueUrl=url).get("Attributes", {}) == {}


def test_fifo_defaults(sqs: Any, queue_name: str) -> None:
    name = queue_name + ".fifo"
    url = sqs.create_queue(QueueName=name, Attributes={"FifoQueue": "true"})["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attrs["FifoQueue"] == "true"
    assert attrs["ContentBasedDeduplication"] == "false"
    assert attrs["DeduplicationScope"] == "queue"
    assert attrs["FifoThroughputLimit"] == "perQueue"
    assert attrs["QueueArn"].endswith(":" + name)


def test_get_named_attributes(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name, Attributes={"DelaySeconds": "5"})["QueueUrl"]
    attrs = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["DelaySeconds", "VisibilityTimeout"])["Attributes"]
    assert attrs == {"DelaySeconds": "5", "VisibilityTimeout": "30"}


def test_get_unknown_attribute_name(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    with pytest.raises(ClientError) as ei:
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["NoSuchAttribute"])
    assert error_of(ei.value)[:1] == ("InvalidAttributeName",)


def test_set_attributes_round_trip(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    new = {
        "VisibilityTimeout": "120",
        "DelaySeconds": "10",
        "MaximumMessageSize": "2048",
        "MessageRetentionPeriod": "3600",
        "ReceiveMessageWaitTimeSeconds": "2",
    }
    sqs.set_queue_attributes(QueueUrl=url, Attributes=new)
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(new))["Attributes"]
    assert attrs == new


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("VisibilityTimeout", "43201"),
        ("VisibilityTimeout", "-1"),
        ("DelaySeconds", "901"),
        ("MaximumMessageSize", "1023"),
        ("MaximumMessageSize", "1048577"),
        ("MessageRetentionPeriod", "59"),
        ("MessageRetentionPeriod", "1209601"),
        ("ReceiveMessageWaitTimeSeconds", "21"),
        ("VisibilityTimeout", "abc"),
    ],
)
def test_set_attribute_out_of_range(sqs: Any, queue_name: str, name: str, value: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    with pytest.raises(ClientError) as ei:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={name: value})
    code, message, status = error_of(ei.value)
    assert (code, status) == ("InvalidAttributeValue", 400)
    assert name in message
    # Nothing was changed by the refused request.
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[name])["Attributes"]
    assert attrs[name] == STANDARD_DEFAULTS[name]


def test_create_queue_out_of_range_attribute(sqs: Any, queue_name: str) -> None:
    with pytest.raises(ClientError) as ei:
        sqs.create_queue(QueueName=queue_name, Attributes={"VisibilityTimeout": "43201"})
    assert error_of(ei.value)[0] == "InvalidAttributeValue"
    with pytest.raises(ClientError):
        sqs.get_queue_url(QueueName=queue_name)


def test_set_unknown_attribute(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    with pytest.raises(ClientError) as ei:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Bogus": "1"})
    assert error_of(ei.value)[0] == "InvalidAttributeName"


def test_read_only_attribute_cannot_be_set(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    with pytest.raises(ClientError) as ei:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"QueueArn": "arn:x"})
    assert error_of(ei.value)[0] == "InvalidAttributeName"


@pytest.mark.parametrize("attr", ["ContentBasedDeduplication", "DeduplicationScope",
                                  "FifoThroughputLimit"])
def test_fifo_only_attributes_on_standard_queue(sqs: Any, queue_name: str, attr: str) -> None:
    values = {"ContentBasedDeduplication": "true", "DeduplicationScope": "messageGroup",
              "FifoThroughputLimit": "perMessageGroupId"}
    with pytest.raises(ClientError) as ei:
        sqs.create_queue(QueueName=queue_name, Attributes={attr: values[attr]})
    assert error_of(ei.value)[0] == "InvalidAttributeName"
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    with pytest.raises(ClientError) as ei:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={attr: values[attr]})
    assert error_of(ei.value)[0] == "InvalidAttributeName"


def test_fifo_queue_attribute_false_on_standard_queue(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    with pytest.raises(ClientError) as ei:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"FifoQueue": "true"})
    assert error_of(ei.value)[0] in ("InvalidAttributeName", "InvalidAttributeValue")


def test_fifo_queue_type_cannot_change(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name + ".fifo",
                           Attributes={"FifoQueue": "true"})["QueueUrl"]
    with pytest.raises(ClientError) as ei:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"FifoQueue": "false"})
    code, message, _ = error_of(ei.value)
    assert code == "InvalidAttributeValue"
    assert message == (
        "Invalid value for the parameter FifoQueue. Reason: Modifying queue type is not "
        "supported."
    )


def test_set_attributes_bumps_last_modified(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    before = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["LastModifiedTimestamp"])["Attributes"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"VisibilityTimeout": "31"})
    after = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["LastModifiedTimestamp"])["Attributes"]
    assert int(after["LastModifiedTimestamp"]) >= int(before["LastModifiedTimestamp"])


def test_operations_on_unknown_queue(sqs: Any, server: ServerProcess, queue_name: str) -> None:
    url = f"{server.url}/{ACCOUNT}/{queue_name}"
    calls: list[Callable[[], Any]] = [
        lambda: sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"]),
        lambda: sqs.set_queue_attributes(QueueUrl=url, Attributes={"DelaySeconds": "1"}),
        lambda: sqs.send_message(QueueUrl=url, MessageBody="x"),
        lambda: sqs.receive_message(QueueUrl=url),
        lambda: sqs.purge_queue(QueueUrl=url),
        lambda: sqs.list_queue_tags(QueueUrl=url),
    ]
    for call in calls:
        with pytest.raises(ClientError) as ei:
            call()
        assert isinstance(ei.value, sqs.exceptions.QueueDoesNotExist)


def test_fifo_queue_false_is_an_unknown_attribute_of_standard_queues(
    sqs: Any, queue_name: str
) -> None:
    # Recorded on AWS, for both actions.
    unknown = ("InvalidAttributeName", "Unknown Attribute FifoQueue.", 400)
    with pytest.raises(ClientError) as ei:
        sqs.create_queue(QueueName=queue_name, Attributes={"FifoQueue": "false"})
    assert error_of(ei.value) == unknown
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    for value in ("false", "true"):
        with pytest.raises(ClientError) as ei:
            sqs.set_queue_attributes(QueueUrl=url, Attributes={"FifoQueue": value})
        assert error_of(ei.value) == unknown


@pytest.mark.parametrize("name", ["Policy", "RedrivePolicy", "RedriveAllowPolicy"])
def test_deeply_nested_policies_are_refused_not_a_server_error(
    sqs: Any, queue_name: str, name: str
) -> None:
    # About 1,000 levels made json.loads raise RecursionError (a 500). SQS answers with
    # its error for an invalid policy.
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    deep = '{"a":' * 1000 + "1" + "}" * 1000
    for call in (
        lambda: sqs.set_queue_attributes(QueueUrl=url, Attributes={name: deep}),
        lambda: sqs.create_queue(QueueName=queue_name + "-2", Attributes={name: deep}),
    ):
        with pytest.raises(ClientError) as ei:
            call()
        code, message, status = error_of(ei.value)
        if name == "Policy":
            assert (code, message, status) == (
                "InvalidAttributeValue", "Invalid value for the parameter Policy.", 400)
        else:
            assert (code, status) == ("InvalidParameterValue", 400)
            assert message.endswith("is not a valid JSON map.")
    assert name not in sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["All"])["Attributes"]


def test_policy_over_the_size_quota_is_over_limit(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    big = json.dumps({"Version": "2012-10-17", "Statement": [], "Id": "x" * 8192})
    with pytest.raises(ClientError) as ei:
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": big})
    assert error_of(ei.value) == ("OverLimit", "Submitted policy is over max allowed size.", 403)


def test_too_many_attribute_names_are_refused(sqs: Any, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    with pytest.raises(ClientError) as ei:
        sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"] * 1001)
    assert error_of(ei.value)[0] == "InvalidParameterValue"
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["VisibilityTimeout"] * 1000)
    assert attrs["Attributes"] == {"VisibilityTimeout": "30"}
