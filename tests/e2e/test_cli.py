"""End-to-end: aws-cli (v1, the venv's `aws`) against a real server, parsed JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ._harness import ServerProcess

AWS = Path(sys.executable).parent / "aws"


def aws(server: ServerProcess, tmp_path: Path, *args: str) -> Any:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": "AKIDCLITEST",
        "AWS_SECRET_ACCESS_KEY": "cli-secret",
        # No developer config may leak in: profiles, regions, endpoints.
        "AWS_CONFIG_FILE": str(tmp_path / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "credentials"),
        "AWS_PAGER": "",
        # A retried send would hide server errors behind a later success.
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_RETRY_MODE": "standard",
    })
    done = subprocess.run(
        [str(AWS), "--endpoint-url", server.url, "--region", "us-east-1", "--output", "json",
         "sqs", *args],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, f"aws {' '.join(args)} failed:\n{done.stderr}\n{done.stdout}"
    return json.loads(done.stdout) if done.stdout.strip() else None


@pytest.mark.timeout(120)
def test_aws_cli_smoke(server: ServerProcess, tmp_path: Path, queue_name: str) -> None:
    if not AWS.exists():
        pytest.fail(f"{AWS} missing: the test extras install awscli")
    url = aws(server, tmp_path, "create-queue", "--queue-name", queue_name)["QueueUrl"]
    assert url == f"{server.url}/000000000000/{queue_name}"

    sent = aws(server, tmp_path, "send-message", "--queue-url", url,
               "--message-body", "from the cli",
               "--message-attributes", '{"k": {"DataType": "String", "StringValue": "v"}}')
    assert sent["MessageId"]

    received = aws(server, tmp_path, "receive-message", "--queue-url", url,
                   "--wait-time-seconds", "2", "--message-attribute-names", "All")
    (msg,) = received["Messages"]
    assert msg["Body"] == "from the cli"
    assert msg["MessageId"] == sent["MessageId"]
    assert msg["MessageAttributes"]["k"]["StringValue"] == "v"

    aws(server, tmp_path, "delete-message", "--queue-url", url,
        "--receipt-handle", msg["ReceiptHandle"])
    empty = aws(server, tmp_path, "receive-message", "--queue-url", url)
    assert empty is None or "Messages" not in empty

    listed = aws(server, tmp_path, "list-queues", "--queue-name-prefix", queue_name)
    assert listed["QueueUrls"] == [url]


# ---- ferrymq serve: options, start-up and refusals ------------------------------------


def ferrymq(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ferrymq", *args], capture_output=True,
                          text=True, timeout=timeout_s, check=False)


@pytest.mark.parametrize("args, complaint", [
    (["--port", "99999"], "'99999' is not a port number"),
    (["--port", "-1"], "'-1' is not a port number"),
    (["--account-id", "abc"], "'abc' is not a 12-digit AWS account id"),
    (["--account-id", "1234567890123"], "not a 12-digit AWS account id"),
    (["--region", "Mars 1"], "is not an AWS region name"),
    (["--public-url", "sqs.local:9324"], "is not a base URL"),
    (["--body-memory-mib", "-5"], "is not a whole number"),
    (["--purge-interval-seconds", "x"], "is not a whole number"),
])
def test_bad_options_are_one_line_and_exit_2(tmp_path: Path, args: list[str],
                                             complaint: str) -> None:
    done = ferrymq("serve", "--data-dir", str(tmp_path / "d"), *args)
    assert done.returncode == 2, done.stderr
    assert complaint in done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr


def test_an_unusable_data_dir_is_one_line_and_exit_2(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    for data_dir in (not_a_dir, not_a_dir / "below"):
        done = ferrymq("serve", "--port", "0", "--data-dir", str(data_dir))
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"ferrymq: cannot use --data-dir {data_dir}: ")
        assert done.stderr.count("\n") == 1, done.stderr


def test_every_serve_option_has_help() -> None:
    done = ferrymq("serve", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "--log-level {debug,info,warning,error} least severe log messages" in text
    assert "--disk-free-min-mib" in text


def test_startup_line_says_any_credentials_are_accepted(server: ServerProcess) -> None:
    line = next(x for x in server.output().splitlines() if "ferrymq listening on" in x)
    assert "any credentials are accepted" in line


@pytest.mark.parametrize("rate", ["0", "-2", "nan", "inf", "fast"])
def test_a_bad_clock_rate_is_refused_before_the_data_dir_is_touched(tmp_path: Path,
                                                                     rate: str) -> None:
    data = tmp_path / "d"
    done = ferrymq("serve", "--port", "0", "--data-dir", str(data), "--clock-rate", rate)
    assert done.returncode == 2
    assert done.stderr == (f"ferrymq serve: error: argument --clock-rate: {rate!r} is not a "
                           "number above 0 (see ferrymq serve --help)\n")
    assert not data.exists()


def test_a_second_server_on_a_data_dir_in_use_refuses_to_start(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "d") as first:
        done = ferrymq("serve", "--port", "0", "--data-dir", str(tmp_path / "d"))
        assert done.returncode == 1
        assert done.stderr == (
            f"ferrymq: cannot open the store: {tmp_path / 'd' / 'ferrymq.sqlite3'} is in use "
            f"by another Ferry process (pid {first.pid}); two servers on one data directory "
            "would corrupt it\n")
        assert first.is_running()


def test_an_inconsistent_store_is_one_line_and_repair_mends_it(tmp_path: Path) -> None:
    import sqlite3

    import boto3

    data = tmp_path / "d"
    with ServerProcess(data) as server:
        sqs = boto3.client("sqs", endpoint_url=server.url, region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="x")
        url = sqs.create_queue(QueueName="shared")["QueueUrl"]
        for i in range(5):
            sqs.send_message(QueueUrl=url, MessageBody=f"m{i}")
    # The state two servers sharing a file left behind: messages of a deleted queue.
    conn = sqlite3.connect(data / "ferrymq.sqlite3")
    conn.execute("DELETE FROM queues WHERE name = 'shared'")
    conn.commit()
    conn.close()
    done = ferrymq("serve", "--port", "0", "--data-dir", str(data))
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "5 messages and 0 deduplication entries of queue 'shared'" in done.stderr
    assert f"ferrymq repair --data-dir {data} --orphans adopt" in done.stderr
    repaired = ferrymq("repair", "--data-dir", str(data), "--orphans", "adopt")
    assert repaired.returncode == 0, repaired.stderr
    assert "queue 'shared' re-created with default attributes" in repaired.stderr
    with ServerProcess(data) as server:
        sqs = boto3.client("sqs", endpoint_url=server.url, region_name="us-east-1",
                           aws_access_key_id="x", aws_secret_access_key="x")
        got: list[str] = []
        for _ in range(10):
            got += [m["Body"] for m in sqs.receive_message(
                QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])]
        assert sorted(got) == [f"m{i}" for i in range(5)]
