"""Outcomes over real loopback sockets: what boto3 raises for each way a request can
end, and how the workloads record it (one attempt per recorded operation, FIFO
retries reusing their ids). The server here is a scripted stand-in, not Ferry: it
answers what each test tells it to, so every failure mode is reachable on demand."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ferrymq._verify import pair_ops
from ferrymq._verify._history import Recorder
from ferrymq._verify._workload import (
    Endpoints,
    QueueRef,
    QueueWorkload,
    WorkloadConfig,
    classify,
)

READ_TIMEOUT_S = 0.5


class Scripted(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.lock = threading.Lock()
        self.script: list[str] = []      # what to do with the next requests, in order
        self.default = "ok"
        self.requests: list[tuple[str, dict[str, Any]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def next_action(self, target: str, body: dict[str, Any]) -> str:
        with self.lock:
            self.requests.append((target, body))
            return self.script.pop(0) if self.script else self.default


class Handler(BaseHTTPRequestHandler):
    server: Scripted

    def log_message(self, *args: object) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        target = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
        action = self.server.next_action(target, body)
        if action == "close":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if action == "hang":
            time.sleep(READ_TIMEOUT_S * 3)
            return
        if action == "ok":
            status, payload = 200, self.answer(target, body)
        else:
            status = int(action)
            payload = {"__type": "com.amazonaws.sqs#InvalidParameterValue" if status < 500
                       else "com.amazon.coral.service#InternalFailure", "message": "scripted"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    @staticmethod
    def answer(target: str, body: dict[str, Any]) -> dict[str, Any]:
        if target == "SendMessage":
            return {"MessageId": "m1", "MD5OfMessageBody": "0" * 32, "SequenceNumber": "1"}
        if target == "DeleteMessageBatch":
            return {"Successful": [{"Id": e["Id"]} for e in body["Entries"]], "Failed": []}
        return {}


@pytest.fixture(autouse=True)
def _no_aws_config(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's ~/.aws config (retries, endpoint) must not change what is tested.
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    for key in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"):
        monkeypatch.delenv(key, raising=False)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


def outcome_of(url: str) -> tuple[str, dict[str, Any]]:
    client = Endpoints([url], read_timeout_s=READ_TIMEOUT_S).client(url)
    try:
        client.send_message(QueueUrl=f"{url}/000000000000/q", MessageBody="x")
    except Exception as exc:  # noqa: BLE001 - the point is what it was
        return classify(exc)
    return "ok", {}


@pytest.mark.parametrize(("action", "type_", "error"), [
    ("400", "fail", "InvalidParameterValue"),
    ("404", "fail", "InvalidParameterValue"),
    ("408", "info", "InvalidParameterValue"),   # may have been read: uncertain
    ("500", "info", "InternalFailure"),
    ("503", "info", "InternalFailure"),
    ("close", "info", "ConnectionClosedError"),
    ("hang", "info", "ReadTimeoutError"),
])
def test_outcomes_of_a_server_that_answered_badly(scripted: Scripted, action: str,
                                                  type_: str, error: str) -> None:
    scripted.default = action
    got_type, detail = outcome_of(scripted.url)
    assert (got_type, detail["error"]) == (type_, error)
    assert len(scripted.requests) == 1, "botocore retried behind the recorder's back"


def test_a_refused_connection_certainly_did_not_happen() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now.
    assert outcome_of(f"http://127.0.0.1:{port}") == (
        "fail", {"error": "EndpointConnectionError", "status": None})


def test_client_error_without_status_is_indeterminate() -> None:
    exc = ClientError({"Error": {"Code": "Weird"}}, "SendMessage")
    assert classify(exc)[0] == "info"


def run_briefly(workload: QueueWorkload, scripted: Scripted, count: int) -> None:
    workload.start()
    deadline = time.monotonic() + 10
    while len(scripted.requests) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    workload.stop()


def config(**overrides: Any) -> WorkloadConfig:
    base = {"producers": 0, "consumers": 0, "error_backoff_s": 0.001, "send_interval_s": 0.0,
            "wait_s": 0}
    return WorkloadConfig(**{**base, **overrides})


def test_every_attempt_is_one_recorded_operation(scripted: Scripted) -> None:
    scripted.default = "500"
    recorder = Recorder()
    workload = QueueWorkload(recorder, Endpoints([scripted.url]),
                             QueueRef("q", "/000000000000/q", False), config(producers=1))
    run_briefly(workload, scripted, 20)
    sends = [op for op in pair_ops(recorder.events()) if op.f == "send"]
    assert len(sends) == len(scripted.requests) >= 20
    assert {op.type for op in sends} == {"info"}
    # A standard producer never re-sends a key: each attempt is a new message.
    keys = [op.value["id"] for op in sends]
    assert len(set(keys)) == len(keys)
    assert [body["MessageBody"] for _, body in scripted.requests] == \
        [op.value["body"] for op in sends]


def test_fifo_producer_retries_one_dedup_id_until_acked(scripted: Scripted) -> None:
    scripted.script = ["500", "close", "503"]
    recorder = Recorder()
    workload = QueueWorkload(recorder, Endpoints([scripted.url], read_timeout_s=1),
                             QueueRef("q.fifo", "/000000000000/q.fifo", True),
                             config(producers=1))
    run_briefly(workload, scripted, 6)
    wire = [body for target, body in scripted.requests if target == "SendMessage"]
    assert [b["MessageDeduplicationId"] for b in wire[:5]] == ["g0:0"] * 4 + ["g0:1"]
    assert {b["MessageGroupId"] for b in wire} == {"g0"}
    sends = [op for op in pair_ops(recorder.events()) if op.f == "send"]
    assert [op.type for op in sends[:4]] == ["info", "info", "info", "ok"]
    assert [op.value["attempt"] for op in sends[:5]] == [0, 1, 2, 3, 0]


def test_fifo_consumer_retries_reuse_the_attempt_id(scripted: Scripted) -> None:
    scripted.default = "500"
    recorder = Recorder()
    cfg = config(consumers=1, receive_retries_max=2)
    workload = QueueWorkload(recorder, Endpoints([scripted.url]),
                             QueueRef("q.fifo", "/000000000000/q.fifo", True), cfg)
    run_briefly(workload, scripted, 9)
    ids = [body["ReceiveRequestAttemptId"] for _, body in scripted.requests[:9]]
    # One id for the first try and its two retries, then a new one.
    assert ids[0] == ids[1] == ids[2] != ids[3] == ids[4] == ids[5] != ids[6]
    receives = [op for op in pair_ops(recorder.events()) if op.f == "receive"]
    assert [op.value["attempt_id"] for op in receives[:9]] == ids
    assert receives[0].value["vt_s"] == cfg.visibility_s


def test_batch_entries_are_recorded_per_entry(scripted: Scripted) -> None:
    recorder = Recorder()
    workload = QueueWorkload(recorder, Endpoints([scripted.url]),
                             QueueRef("q", "/000000000000/q", False), config())
    actor = workload._actor()
    messages = [{"Body": "0-1|x", "ReceiptHandle": "h1"}, {"Body": "0-2|y", "ReceiptHandle": "h2"}]
    assert actor.batch("delete", messages) == {"0-1": "ok", "0-2": "ok"}
    scripted.default = "500"
    assert actor.batch("delete", messages) == {"0-1": "info", "0-2": "info"}
    first, second = [op for op in pair_ops(recorder.events()) if op.f == "delete"]
    assert [e["type"] for e in first.value["entries"]] == ["ok", "ok"]
    assert second.type == "info" and "type" not in second.value["entries"][0]
    assert workload.ledger.deleted == {"0-1", "0-2"}
    assert workload.ledger.uncertain == {"0-1", "0-2"}
