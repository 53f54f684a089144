"""End-to-end: requests addressed to the queue URL path (/<account>/<name>), raw HTTP.

Old SDKs send Query to the queue path, the PHP SDK sends JSON there; an explicit
QueueUrl parameter overrides the path.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

from ._harness import ServerProcess, http_request, receive_until

ACCOUNT = "000000000000"




def json_call(server: ServerProcess, path: str, action: str,
              params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    status, _, body = http_request(server, "POST", path, json.dumps(params).encode(), {
        "Content-Type": "application/x-amz-json-1.0",
        "X-Amz-Target": f"AmazonSQS.{action}",
    })
    return status, json.loads(body) if body else {}


def query_call(server: ServerProcess, method: str, path: str,
               params: dict[str, str]) -> tuple[int, str]:
    form = urllib.parse.urlencode({"Version": "2012-11-05", **params})
    if method == "GET":
        status, _, body = http_request(server, "GET", f"{path}?{form}")
    else:
        status, _, body = http_request(server, "POST", path, form.encode(), {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    return status, body.decode()


def test_json_to_queue_path(sqs: Any, server: ServerProcess, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    status, body = json_call(server, f"/{ACCOUNT}/{queue_name}", "SendMessage",
                             {"MessageBody": "via json path"})
    assert status == 200, body
    assert body["MD5OfMessageBody"]
    assert [m["Body"] for m in receive_until(sqs, url, 1)] == ["via json path"]


def test_query_post_to_queue_path(sqs: Any, server: ServerProcess, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    status, text = query_call(server, "POST", f"/{ACCOUNT}/{queue_name}",
                              {"Action": "SendMessage", "MessageBody": "via query path"})
    assert status == 200, text
    assert "<SendMessageResponse" in text and "<MessageId>" in text
    assert [m["Body"] for m in receive_until(sqs, url, 1)] == ["via query path"]


def test_query_get_with_query_string(sqs: Any, server: ServerProcess, queue_name: str) -> None:
    url = sqs.create_queue(QueueName=queue_name)["QueueUrl"]
    status, text = query_call(server, "GET", f"/{ACCOUNT}/{queue_name}",
                              {"Action": "SendMessage", "MessageBody": "via GET"})
    assert status == 200, text
    assert [m["Body"] for m in receive_until(sqs, url, 1)] == ["via GET"]

    status, text = query_call(server, "GET", "/", {"Action": "GetQueueUrl",
                                                   "QueueName": queue_name})
    assert status == 200, text
    found = re.search(r"<QueueUrl>([^<]+)</QueueUrl>", text)
    assert found is not None and found.group(1).endswith(f"/{ACCOUNT}/{queue_name}")


def test_query_queue_url_overrides_path(sqs: Any, server: ServerProcess,
                                        queue_name: str) -> None:
    decoy = sqs.create_queue(QueueName=queue_name + "-decoy")["QueueUrl"]
    target = sqs.create_queue(QueueName=queue_name + "-target")["QueueUrl"]
    status, text = query_call(server, "POST", f"/{ACCOUNT}/{queue_name}-decoy",
                              {"Action": "SendMessage", "QueueUrl": target,
                               "MessageBody": "explicit wins"})
    assert status == 200, text
    assert [m["Body"] for m in receive_until(sqs, target, 1)] == ["explicit wins"]
    assert "Messages" not in sqs.receive_message(QueueUrl=decoy, WaitTimeSeconds=1)

    status, body = json_call(server, f"/{ACCOUNT}/{queue_name}-decoy", "SendMessage",
                             {"QueueUrl": target, "MessageBody": "json explicit wins"})
    assert status == 200, body
    assert [m["Body"] for m in receive_until(sqs, target, 1)] == ["json explicit wins"]
    assert "Messages" not in sqs.receive_message(QueueUrl=decoy, WaitTimeSeconds=1)


def test_unknown_queue_path(server: ServerProcess, queue_name: str) -> None:
    status, body = json_call(server, f"/{ACCOUNT}/{queue_name}-nope", "SendMessage",
                             {"MessageBody": "x"})
    assert status == 400
    assert body["__type"].endswith("QueueDoesNotExist")


def test_get_without_action_is_404(server: ServerProcess) -> None:
    status, _, body = http_request(server, "GET", "/")
    assert status == 404
    assert b"UnknownOperationException" in body


def test_query_create_and_list_queues_are_invalid_on_a_queue_path(sqs: Any, server: ServerProcess,
                                                                  queue_name: str) -> None:
    # AWS-validated (LocalStack's TestSqsQueryApi): a queue URL is no endpoint for
    # these two, over GET or POST; GetQueueUrl there is allowed, even for another queue.
    sqs.create_queue(QueueName=queue_name)
    path = f"/{ACCOUNT}/{queue_name}"
    for method in ("GET", "POST"):
        for action in ("CreateQueue", "ListQueues"):
            status, text = query_call(server, method, path,
                                      {"Action": action, "QueueName": queue_name + "-x"})
            assert status == 400, text
            assert "<Code>InvalidAction</Code>" in text
            assert f"<Message>The action {action} is not valid for this endpoint." in text
    status, body = json_call(server, "/", "GetQueueUrl", {"QueueName": queue_name + "-x"})
    assert status == 400 and body["__type"].endswith("QueueDoesNotExist")
    status, text = query_call(server, "GET", path, {"Action": "GetQueueUrl",
                                                    "QueueName": queue_name})
    assert status == 200 and f"/{ACCOUNT}/{queue_name}</QueueUrl>" in text
