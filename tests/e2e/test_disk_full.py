"""End-to-end: a full disk under a real server, on a size-limited tmpfs (real ENOSPC).

What a user expects (and each test checks): the server keeps running; writes are
refused with 503 ServiceUnavailable (which SDKs retry with back-off), never a 500;
reads that need no write are answered; the condition is logged once, not per request;
writes come back by themselves when space returns; a restart on the full disk starts;
and nothing acknowledged is lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from _tmpfs import fill, mounted_tmpfs
from botocore.exceptions import ClientError

from ._harness import ServerProcess, error_of, make_client, wait_until

pytestmark = pytest.mark.slow

_TMPFS_BYTES = 48 * 1024 * 1024
_BODY = "x" * 100_000


def _send_until_refused(sqs: Any, url: str, acked: set[str], limit: int = 2000) -> None:
    for i in range(limit):
        try:
            acked.add(sqs.send_message(QueueUrl=url, MessageBody=f"{i}:{_BODY}")["MessageId"])
        except ClientError as exc:
            code, _message, status = error_of(exc)
            assert (code, status) == ("ServiceUnavailable", 503), error_of(exc)
            return
    raise AssertionError("the disk never filled")


def _count(sqs: Any, url: str) -> int:
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"])


def _answered(sqs: Any, url: str) -> int | None:
    try:
        return _count(sqs, url) + 1  # +1: a count of 0 is an answer too
    except ClientError as exc:
        assert error_of(exc)[2] == 503, error_of(exc)
        return None


def _writable(sqs: Any, url: str, acked: set[str]) -> bool:
    try:
        acked.add(sqs.send_message(QueueUrl=url, MessageBody="after")["MessageId"])
    except ClientError as exc:
        assert error_of(exc)[2] == 503, error_of(exc)
        return False
    return True


def _drain(sqs: Any, url: str, want: int) -> set[str]:
    got: set[str] = set()
    for _ in range(400):
        messages = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                       VisibilityTimeout=60).get("Messages", [])
        got.update(m["MessageId"] for m in messages)
        if len(got) >= want and not messages:
            break
    return got


def test_enospc_mid_commit_rebuilds_refuses_writes_and_resumes(tmp_path: Path) -> None:
    # --disk-free-min-mib 0: no early stop, so the disk really fills under a commit.
    with mounted_tmpfs(tmp_path / "disk", _TMPFS_BYTES) as disk:
        server = ServerProcess(disk / "data", ("--disk-free-min-mib", "0"))
        with server:
            sqs = make_client(server.url, "json")
            url = sqs.create_queue(QueueName="full")["QueueUrl"]
            acked: set[str] = set()
            filler = fill(disk, leave_bytes=3 * 1024 * 1024)
            _send_until_refused(sqs, url, acked)
            assert acked, "some sends fit before the disk filled"
            # Reads come back once the core is rebuilt from what is durable.
            wait_until(lambda: _answered(sqs, url), timeout_s=10, what="a read")
            assert _count(sqs, url) == len(acked)
            assert sqs.list_queues()["QueueUrls"] == [url]
            for _ in range(5):
                with pytest.raises(ClientError) as refused:
                    sqs.send_message(QueueUrl=url, MessageBody="refused")
                assert error_of(refused.value)[2] == 503
            with pytest.raises(ClientError) as refused:
                sqs.receive_message(QueueUrl=url)
            assert error_of(refused.value)[2] == 503
            assert server.is_running()
            assert server.wait_for_output("the disk is full").count("the disk is full") == 1
            assert "Traceback" not in server.output()
            # A restart on the full disk starts, and answers reads.
            assert server.stop() == 0
            server.start()
            assert _count(sqs, url) == len(acked)
            filler.unlink()
            wait_until(lambda: _writable(sqs, url, acked), timeout_s=15, what="writes")
            assert _drain(sqs, url, len(acked)) == acked
            assert "Traceback" not in server.output()


def test_low_space_stops_writes_before_the_disk_is_full(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "disk", _TMPFS_BYTES) as disk:
        server = ServerProcess(disk / "data", ("--disk-free-min-mib", "8"))
        with server:
            sqs = make_client(server.url, "query")
            url = sqs.create_queue(QueueName="low")["QueueUrl"]
            acked: set[str] = set()
            filler = fill(disk, leave_bytes=12 * 1024 * 1024)
            _send_until_refused(sqs, url, acked)
            assert acked
            assert _count(sqs, url) == len(acked)  # no rebuild needed: reads at once
            logged = server.wait_for_output("the disk is nearly full")
            assert logged.count("the disk is nearly full") == 1
            assert "state rebuilt" not in server.output()
            filler.unlink()
            wait_until(lambda: _writable(sqs, url, acked), timeout_s=15, what="writes")
            server.wait_for_output("the disk has room again")
            assert _drain(sqs, url, len(acked)) == acked
