"""Workloads for fault tests: producer and consumer threads on boto3, recorded.

What belongs here: the boto3 clients (retries off, so every attempt is one recorded
operation), the translation of boto3's outcomes into ``ok``/``fail``/``info``, the
standard (W1) and FIFO (W2) producer and consumer threads, and the drain. Faults are
the test's business (``_history.fault`` records them); judging is the checker's.

Works against any list of SQS endpoints: each request goes to the next endpoint of its
thread's rotation, and the queue URL is rebuilt on that endpoint (same path), so one
``ferrymq serve`` today and several cluster nodes later take the same code.

Outcomes (``classify``): a clean 4xx is ``fail``, except 408 and 429, which say
nothing certain about a request that may have been read; a connection that was never
opened (refused, or the connect timed out) is ``fail`` too, since no byte of the
request left; everything else (a read timeout, a reset or closed connection, a 5xx,
an answer that would not parse) is ``info``.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3
import botocore.session
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError

from ferrymq._core._errors import InternalError
from ferrymq._verify._history import CONTROL, Recorder, make_body

__all__ = [
    "Endpoints",
    "QueueRef",
    "QueueWorkload",
    "WorkloadConfig",
    "classify",
    "batch_outcome",
    "create_queue",
    "decide_received",
    "drain_all",
    "probe_send",
    "wind_down",
]

# Bounds on every worker loop, so a server that never fails cannot make one spin for
# ever: far above what a test run reaches (50 sends/s for 30 s is 1,500).
SENDS_PER_PRODUCER_MAX = 100_000
RECEIVES_PER_CONSUMER_MAX = 100_000
# A FIFO producer retries one message until it is acknowledged; past this many
# attempts (minutes of back-off) the run is hopeless and the producer gives up.
SEND_ATTEMPTS_MAX = 5_000
# Times a drain retries one delete whose outcome was not ok before it leaves the
# message to come back after its visibility timeout.
DRAIN_DELETE_RETRIES_MAX = 3
# Entries per batch request: SQS's own limit.
BATCH_ENTRIES_MAX = 10
# 4xx statuses that do not prove the request was not executed.
_UNCERTAIN_4XX = (408, 429)


def classify(exc: BaseException) -> tuple[str, dict[str, Any]]:
    """The history type of a failed boto3 call, and what to record about it."""
    if isinstance(exc, ClientError):
        response = exc.response
        status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        code = str(response.get("Error", {}).get("Code", ""))
        detail = {"error": code or type(exc).__name__, "status": status}
        if 400 <= status < 500 and status not in _UNCERTAIN_4XX:
            return "fail", detail
        return "info", detail
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return "fail", {"error": type(exc).__name__, "status": None}
    return "info", {"error": type(exc).__name__, "status": None}


class Endpoints:
    """SQS endpoints and boto3 clients for them: one client per (thread, endpoint),
    built on one botocore session so the service model is parsed once."""

    def __init__(self, urls: Iterable[str], *, read_timeout_s: float = 5.0,
                 connect_timeout_s: float = 1.0) -> None:
        self.urls = [url.rstrip("/") for url in urls]
        if not self.urls:
            raise ValueError("at least one endpoint is needed")
        self._config = Config(
            # One attempt per call: a retry inside botocore would be an unrecorded
            # operation, and would hide the fault from the history.
            retries={"total_max_attempts": 1, "mode": "standard"},
            connect_timeout=connect_timeout_s,
            # Longer than the longest long poll the workloads make (2 s) plus a commit.
            read_timeout=read_timeout_s,
        )
        self._lock = threading.Lock()
        self._session = botocore.session.get_session()
        self._local = threading.local()

    def client(self, url: str) -> Any:
        clients: dict[str, Any] | None = getattr(self._local, "clients", None)
        if clients is None:
            clients = self._local.clients = {}
        client = clients.get(url)
        if client is None:
            # botocore sessions are not safe to build clients from concurrently.
            with self._lock:
                client = boto3.session.Session(botocore_session=self._session).client(
                    "sqs", region_name="us-east-1", endpoint_url=url,
                    aws_access_key_id="ferry-verify", aws_secret_access_key="ferry-verify",
                    config=self._config)
            clients[url] = client
        return client

    def pick(self, turn: int) -> str:
        return self.urls[turn % len(self.urls)]


@dataclass(frozen=True)
class QueueRef:
    """A queue as the workloads address it: its name and its URL's path."""

    name: str
    path: str
    fifo: bool

    def url(self, endpoint: str) -> str:
        return endpoint + self.path


def create_queue(endpoints: Endpoints, name: str, *, fifo: bool = False,
                 attributes: dict[str, str] | None = None,
                 tags: dict[str, str] | None = None) -> QueueRef:
    """Create ``name`` through the first endpoint (before any fault: not recorded)."""
    attrs = dict(attributes or {})
    if fifo:
        attrs["FifoQueue"] = "true"
    extra: dict[str, Any] = {"tags": dict(tags)} if tags else {}
    url = endpoints.client(endpoints.urls[0]).create_queue(
        QueueName=name, Attributes=attrs, **extra)["QueueUrl"]
    return QueueRef(name, urlsplit(url).path, fifo)


@dataclass(frozen=True)
class WorkloadConfig:
    """Knobs of one queue's workload. For FIFO, ``producers`` is the number of groups
    (one sequential producer each), and ``crash_fraction`` should stay small: each
    crash stalls its group for a whole visibility timeout."""

    producers: int = 2
    consumers: int = 2
    send_interval_s: float = 0.02
    max_messages: int = 10
    wait_s: int = 2
    visibility_s: int = 5
    crash_fraction: float = 0.10
    release_fraction: float = 0.05
    # Pause after a non-ok operation: keeps a dead server from being hammered (and
    # the history from filling with refused connections).
    error_backoff_s: float = 0.05
    # FIFO receives retried with one ReceiveRequestAttemptId before a new one.
    receive_retries_max: int = 3
    # Empty receives in a row, with every acked message deleted, that end a drain.
    drain_empty_receives: int = 2
    seed: int = 0


@dataclass
class _Ledger:
    """What the workload itself knows, for the drain: keys acked, keys deleted ok, and
    keys whose delete was indeterminate (it may have worked: such a message may never
    come back, and the drain must not wait for it for ever)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)
    uncertain: set[str] = field(default_factory=set)
    last_uncertain_s: float = float("-inf")

    def ack(self, key: str) -> None:
        with self.lock:
            self.acked.add(key)

    def record_deletes(self, types: dict[str, str]) -> None:
        with self.lock:
            for key, type_ in types.items():
                if type_ == "ok":
                    self.deleted.add(key)
                elif type_ == "info":
                    self.uncertain.add(key)
                    self.last_uncertain_s = time.monotonic()

    def missing(self) -> int:
        """Acked keys neither deleted ok nor possibly deleted."""
        with self.lock:
            return len(self.acked - self.deleted - self.uncertain)


class _Actor:
    """One process of the history: a thread's identity, its clients and its calls."""

    def __init__(self, recorder: Recorder, endpoints: Endpoints, queue: QueueRef,
                 config: WorkloadConfig, ledger: _Ledger) -> None:
        self.recorder = recorder
        self.endpoints = endpoints
        self.queue = queue
        self.config = config
        self.ledger = ledger
        self.process = recorder.new_process()
        self.rng = random.Random(f"{config.seed}:{queue.name}:{self.process}")
        self.turn = 0

    def base(self) -> dict[str, Any]:
        return {"queue": self.queue.name, "fifo": self.queue.fifo}

    def call(self, f: str, value: dict[str, Any],
             request: Callable[[Any, str], dict[str, Any]],
             result: Callable[[dict[str, Any]], dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        """Record and make one request: ``request(client, queue_url)`` calls boto3,
        ``result(response)`` says what to record of an ok answer."""
        node = self.endpoints.pick(self.turn)
        self.turn += 1
        client = self.endpoints.client(node)
        pending = self.recorder.invoke(self.process, f, value, node)
        try:
            response = request(client, self.queue.url(node))
        except Exception as exc:  # noqa: BLE001 - every outcome is recorded, none raised
            type_, detail = classify(exc)
            self.recorder.complete(pending, type_, detail)
            return type_, {}
        recorded = result(response)
        self.recorder.complete(pending, "ok", recorded)
        return "ok", response

    # -- the operations --

    def receive(self, *, wait_s: int, attempt_id: str | None) -> tuple[str, list[dict[str, Any]]]:
        cfg = self.config
        value = {**self.base(), "max": cfg.max_messages, "wait_s": wait_s,
                 "vt_s": cfg.visibility_s, "attempt_id": attempt_id}
        params: dict[str, Any] = {
            "MaxNumberOfMessages": cfg.max_messages, "WaitTimeSeconds": wait_s,
            "VisibilityTimeout": cfg.visibility_s,
            "MessageSystemAttributeNames": ["MessageGroupId", "SequenceNumber",
                                            "ApproximateReceiveCount"],
        }
        if attempt_id is not None:
            params["ReceiveRequestAttemptId"] = attempt_id

        def result(response: dict[str, Any]) -> dict[str, Any]:
            return {"messages": [{
                "body": m.get("Body"), "md5": m.get("MD5OfBody"),
                "message_id": m.get("MessageId"), "handle": m.get("ReceiptHandle"),
                "group": m.get("Attributes", {}).get("MessageGroupId"),
                "sequence_number": m.get("Attributes", {}).get("SequenceNumber"),
                "receive_count": m.get("Attributes", {}).get("ApproximateReceiveCount"),
            } for m in response.get("Messages", [])]}

        type_, response = self.call(
            "receive", value,
            lambda client, url: client.receive_message(QueueUrl=url, **params), result)
        return type_, list(response.get("Messages", []))

    def batch(self, f: str, messages: list[dict[str, Any]]) -> dict[str, str]:
        """DeleteMessageBatch (``f == "delete"``) or ChangeMessageVisibilityBatch to 0
        (``"change_visibility"``) of ``messages``; the type of each entry by key."""
        if not messages:
            return {}
        if len(messages) > BATCH_ENTRIES_MAX:
            raise InternalError(f"{len(messages)} entries in one batch")
        entries = [{"id": _key_of(m), "handle": m["ReceiptHandle"]} for m in messages]
        value = {**self.base(), "entries": entries}
        wire = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                for i, m in enumerate(messages)]
        if f == "change_visibility":
            value["vt_s"] = 0
            for entry in wire:
                entry["VisibilityTimeout"] = 0

        def request(client: Any, url: str) -> dict[str, Any]:
            if f == "delete":
                response: dict[str, Any] = client.delete_message_batch(QueueUrl=url,
                                                                       Entries=wire)
            else:
                response = client.change_message_visibility_batch(QueueUrl=url, Entries=wire)
            return response

        def result(response: dict[str, Any]) -> dict[str, Any]:
            return batch_outcome(entries, response)

        type_, response = self.call(f, value, request, result)
        types = {e["id"]: "info" if type_ == "ok" else type_ for e in entries}
        for ok in response.get("Successful", []):
            types[entries[int(ok["Id"])]["id"]] = "ok"
        for bad in response.get("Failed", []):
            types[entries[int(bad["Id"])]["id"]] = "fail" if bad.get("SenderFault") else "info"
        if f == "delete":
            self.ledger.record_deletes(types)
        return types

    def backoff(self) -> None:
        time.sleep(self.config.error_backoff_s)


def _send_result(response: dict[str, Any]) -> dict[str, Any]:
    return {"message_id": response.get("MessageId"), "md5": response.get("MD5OfMessageBody"),
            "sequence_number": response.get("SequenceNumber")}


def probe_send(recorder: Recorder, endpoints: Endpoints, queue: QueueRef,
               url: str) -> str:
    """One recorded send of a new message to the standard queue ``queue`` through
    ``url``, from a process of its own; its history type. A probe of one node at one
    moment, for a test whose workload threads may all be waiting on some other node.
    The message is the checker's like any W1 message (acked: it must be received and
    deleted, by a consumer or the drain)."""
    if queue.fifo:
        raise ValueError("a probe sends to a standard queue (a FIFO send needs its group's "
                         "sequence)")
    process = recorder.new_process()
    key = f"{process}-0"
    body = make_body(key)
    pending = recorder.invoke(process, "send", {"queue": queue.name, "fifo": False,
                                                "id": key, "body": body, "attempt": 0}, url)
    try:
        response = endpoints.client(url).send_message(QueueUrl=queue.url(url),
                                                      MessageBody=body)
    except Exception as exc:  # noqa: BLE001 - every outcome is recorded, none raised
        type_, detail = classify(exc)
        recorder.complete(pending, type_, detail)
        return type_
    recorder.complete(pending, "ok", _send_result(response))
    return "ok"


def _key_of(message: dict[str, Any]) -> str:
    body = message.get("Body")
    return body.rpartition("|")[0] if isinstance(body, str) else ""


class _Worker(threading.Thread):
    def __init__(self, actor: _Actor, stop: threading.Event, role: str) -> None:
        super().__init__(name=f"verify-{actor.queue.name}-{role}-{actor.process}", daemon=True)
        self.actor = actor
        self.stop = stop


class _StandardProducer(_Worker):
    """W1: bodies ``{process}-{counter}|{hash}``; each attempt is a new message (no
    retries), so every key has exactly one send."""

    def run(self) -> None:
        a = self.actor
        for counter in range(SENDS_PER_PRODUCER_MAX):
            if self.stop.is_set():
                return
            key = f"{a.process}-{counter}"
            body = make_body(key)

            def request(client: Any, url: str, body: str = body) -> dict[str, Any]:
                response: dict[str, Any] = client.send_message(QueueUrl=url, MessageBody=body)
                return response

            type_, _ = a.call("send", {**a.base(), "id": key, "body": body, "attempt": 0},
                              request, _send_result)
            if type_ == "ok":
                a.ledger.ack(key)
                self.stop.wait(a.config.send_interval_s)
            else:
                a.backoff()


class _FifoProducer(_Worker):
    """W2: one group, sequence numbers 0, 1, 2, ...; a message is retried with its
    deduplication id until acked, and only then is the next one sent."""

    def __init__(self, actor: _Actor, stop: threading.Event, group: str) -> None:
        super().__init__(actor, stop, f"producer-{group}")
        self.group = group

    def run(self) -> None:
        a = self.actor
        for seq in range(SENDS_PER_PRODUCER_MAX):
            key = f"{self.group}:{seq}"
            body = make_body(key)

            def request(client: Any, url: str, body: str = body,
                        key: str = key) -> dict[str, Any]:
                response: dict[str, Any] = client.send_message(
                    QueueUrl=url, MessageBody=body, MessageGroupId=self.group,
                    MessageDeduplicationId=key)
                return response

            for attempt in range(SEND_ATTEMPTS_MAX):
                if self.stop.is_set():
                    return
                type_, _ = a.call(
                    "send", {**a.base(), "id": key, "body": body, "group": self.group,
                             "dedup": key, "attempt": attempt},
                    request, _send_result)
                if type_ == "ok":
                    a.ledger.ack(key)
                    break
                a.backoff()
            else:
                return
            if self.stop.wait(a.config.send_interval_s):
                return


class _Consumer(_Worker):
    """Receives, then per message: crash (leave it), release (visibility 0) or delete,
    deletes and releases in one batch each. On a FIFO queue a crash or a release
    applies to the rest of that group's run in the batch, as a consumer that stops
    processing a group would; a receive whose outcome was not ok is retried with the
    same ``ReceiveRequestAttemptId``."""

    def run(self) -> None:
        a = self.actor
        cfg = a.config
        attempt_id: str | None = None
        retries = 0
        for _ in range(RECEIVES_PER_CONSUMER_MAX):
            if self.stop.is_set():
                return
            if a.queue.fifo and attempt_id is None:
                attempt_id = uuid.uuid4().hex
            type_, messages = a.receive(wait_s=cfg.wait_s, attempt_id=attempt_id)
            if type_ != "ok":
                retries += 1
                if type_ == "fail" or retries > cfg.receive_retries_max:
                    attempt_id, retries = None, 0
                a.backoff()
                continue
            attempt_id, retries = None, 0
            delete, release = self.decide(messages)
            for chunk in (delete, release):
                if len(chunk) > BATCH_ENTRIES_MAX:
                    raise InternalError("a receive returned more than 10 messages")
            a.batch("delete", delete)
            a.batch("change_visibility", release)

    def decide(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                              list[dict[str, Any]]]:
        a = self.actor
        return decide_received(messages, a.queue.fifo, a.rng, a.config.crash_fraction,
                               a.config.release_fraction)


def batch_outcome(entries: list[dict[str, Any]], response: dict[str, Any]
                  ) -> dict[str, Any]:
    """A batch's history value from its answer: each entry ok, fail (the client's
    fault) or info (SenderFault false: the server failed it, outcome unknown)."""
    outcome = [dict(e) for e in entries]
    for ok in response.get("Successful", []):
        outcome[int(ok["Id"])]["type"] = "ok"
    for bad in response.get("Failed", []):
        outcome[int(bad["Id"])].update(
            type="fail" if bad.get("SenderFault") else "info", error=bad.get("Code"))
    return {"entries": outcome}


def decide_received(messages: list[dict[str, Any]], fifo: bool, rng: random.Random,
                    crash_fraction: float, release_fraction: float
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What a consumer does with a receive's messages: (delete, release); the rest it
    "crashes" on, leaving them to their leases. In a FIFO queue a consumer that stops
    or gives back a message of a group stops (or gives back) the rest of the group's run
    too, as a real one processing in order would."""
    delete: list[dict[str, Any]] = []
    release: list[dict[str, Any]] = []
    if not fifo:
        for m in messages:
            roll = rng.random()
            if roll < crash_fraction:
                continue
            (release if roll < crash_fraction + release_fraction else delete).append(m)
        return delete, release
    runs: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        runs.setdefault(m.get("Attributes", {}).get("MessageGroupId", ""), []).append(m)
    for run in runs.values():
        for i, m in enumerate(run):
            roll = rng.random()
            if roll < crash_fraction:
                break
            if roll < crash_fraction + release_fraction:
                release.extend(run[i:])
                break
            delete.append(m)
    return delete, release


class QueueWorkload:
    """W1 (standard) or W2 (FIFO) on one queue: producers and consumers as threads.

    ``start()``, then faults (the test's), then ``stop()`` and, after a wait, ``drain()``.
    """

    def __init__(self, recorder: Recorder, endpoints: Endpoints, queue: QueueRef,
                 config: WorkloadConfig | None = None) -> None:
        self.recorder = recorder
        self.endpoints = endpoints
        self.queue = queue
        self.config = config or WorkloadConfig()
        self.ledger = _Ledger()
        self._stop = threading.Event()
        self._threads: list[_Worker] = []

    def _actor(self) -> _Actor:
        return _Actor(self.recorder, self.endpoints, self.queue, self.config, self.ledger)

    def start(self) -> None:
        if self._threads:
            raise InternalError("workload started twice")
        cfg = self.config
        for i in range(cfg.producers):
            if self.queue.fifo:
                self._threads.append(_FifoProducer(self._actor(), self._stop, f"g{i}"))
            else:
                self._threads.append(_StandardProducer(self._actor(), self._stop, "producer"))
        for _ in range(cfg.consumers):
            self._threads.append(_Consumer(self._actor(), self._stop, "consumer"))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every thread after its current operation; a thread still alive after
        ``timeout_s`` is an error (its next operations would race the drain)."""
        self._stop.set()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            raise RuntimeError(f"workload threads did not stop: {alive}")

    @property
    def acked(self) -> int:
        with self.ledger.lock:
            return len(self.ledger.acked)

    def drain(self, timeout_s: float) -> bool:
        """Receive and delete, without crashes, until it has caught up or ``timeout_s``
        has passed. Caught up: every acked message was deleted ok or had a delete of
        unknown outcome, the last ``drain_empty_receives`` receives came back empty,
        and a visibility timeout has passed since the last delete of unknown outcome
        (a message that delete did not remove is visible again by then). Recorded as a
        ``drain`` of ``CONTROL``: ok if it caught up."""
        actor = self._actor()
        cfg = self.config
        pending = self.recorder.invoke(CONTROL, "drain", {"queue": self.queue.name})
        deadline = time.monotonic() + timeout_s
        empties = 0
        caught_up = False
        attempt_id: str | None = None
        # Bounded by the deadline; the count bound only guards against a clock that
        # does not move.
        for _ in range(RECEIVES_PER_CONSUMER_MAX):
            settled = time.monotonic() > self.ledger.last_uncertain_s + cfg.visibility_s + 1
            if self.ledger.missing() == 0 and empties >= cfg.drain_empty_receives and settled:
                caught_up = True
                break
            if time.monotonic() >= deadline:
                break
            if self.queue.fifo and attempt_id is None:
                attempt_id = uuid.uuid4().hex
            type_, messages = actor.receive(wait_s=1, attempt_id=attempt_id)
            if type_ != "ok":
                if type_ == "fail":
                    attempt_id = None
                actor.backoff()
                continue
            attempt_id = None
            empties = 0 if messages else empties + 1
            todo = messages
            for _retry in range(DRAIN_DELETE_RETRIES_MAX):
                if not todo:
                    break
                types = actor.batch("delete", todo)
                todo = [m for m in todo if types.get(_key_of(m)) == "info"]
        self.recorder.complete(pending, "ok" if caught_up else "info",
                               {"missing": self.ledger.missing()})
        return caught_up


def drain_all(workloads: Iterable[QueueWorkload], timeout_s: float) -> dict[str, bool]:
    """Drain several queues at once, one thread each; whether each caught up."""
    results: dict[str, bool] = {}
    lock = threading.Lock()

    def one(workload: QueueWorkload) -> None:
        caught = workload.drain(timeout_s)
        with lock:
            results[workload.queue.name] = caught

    threads = [threading.Thread(target=one, args=(w,), name=f"verify-drain-{w.queue.name}",
                                daemon=True) for w in workloads]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout_s + 30)
    return results


def wind_down(workloads: Sequence[QueueWorkload], *, quiet_s: float, settle_s: float,
              drain_timeout_s: float) -> dict[str, bool]:
    """The end of a fault run: ``quiet_s`` more of fault-free traffic (so liveness is
    judged), the workloads stopped, ``settle_s`` for what is in flight, then every queue
    drained: whether each caught up."""
    time.sleep(quiet_s)
    for workload in workloads:
        workload.stop()
    time.sleep(settle_s)
    return drain_all(workloads, drain_timeout_s)
