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
