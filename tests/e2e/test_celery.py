"""End-to-end: a real Celery worker (kombu's SQS transport) across a Ferry restart.

kombu's SQS transport long-polls with its own HTTP client, and stops consuming for good
after a poll that fails at the connection level (kombu issue #1127: the failed poll is
turned into a list its callback cannot read). A server that dropped parked polls on
SIGTERM therefore stopped the worker, and tasks sent after the restart never ran. Two
things make a restart invisible to it: the graceful stop answers every parked poll
(empty, ``Connection: close``), and the listening socket is inherited across the restart
(``--listen-fd``, as systemd socket activation does), so the worker's next poll waits in
the backlog for the new process instead of being refused.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ._harness import ServerProcess, wait_until

pytestmark = pytest.mark.slow

_APP = textwrap.dedent('''
    import os

    from celery import Celery

    app = Celery("ferrytest", broker=os.environ["FERRY_BROKER"])
    app.conf.update(
        broker_transport_options={
            "region": "us-east-1",
            "is_secure": False,
            # Long polls parked on the server when it stops are what this test is about.
            "wait_time_seconds": 10,
            "polling_interval": 0,
            "visibility_timeout": 60,
        },
        task_default_queue="ferry-celery",
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )


    @app.task(name="record")
    def record(n):
        with open(os.environ["FERRY_DONE"], "a") as out:
            out.write(f"{n}\\n")
''')


def _send(env: dict[str, str], cwd: Path, first: int, count: int) -> None:
    subprocess.run(
        [sys.executable, "-c", "import sys\nfrom app import record\n"
         f"for n in range({first}, {first + count}): record.delay(n)\n"],
        env=env, cwd=cwd, check=True, timeout=120, capture_output=True)


def _done(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.mark.timeout(240)
def test_a_celery_worker_survives_a_ferry_restart(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(_APP)
    done = tmp_path / "done.txt"
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    server = ServerProcess(tmp_path / "data", listen_socket=listener)
    server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(FERRY_BROKER=f"sqs://AKIDCELERY:secret@127.0.0.1:{server.port}",
               FERRY_DONE=str(done), PYTHONPATH=str(tmp_path),
               AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed in finally
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "app", "worker", "--pool=solo",
         "--without-mingle", "--without-gossip", "--loglevel=INFO"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        _send(env, tmp_path, 0, 100)
        wait_until(lambda: len(_done(done)) >= 100, timeout_s=60, what="the first 100 tasks")
        time.sleep(1)  # the worker is now parked in a long poll on the idle queue
        assert server.stop() == 0
        assert worker.poll() is None, "the worker exited when Ferry stopped"
        server.start()
        _send(env, tmp_path, 100, 100)
        wait_until(lambda: len(_done(done)) >= 200, timeout_s=90,
                   what="the 100 tasks sent after the restart")
        time.sleep(2)  # a task run twice would show up here
        assert sorted(_done(done)) == list(range(200)), "every task ran exactly once"
        assert worker.poll() is None, "the worker exited"
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait(10)
        log.close()
        server.stop()
        listener.close()
        if worker.returncode not in (0, None, -signal.SIGTERM):
            print((tmp_path / "worker.log").read_text()[-4000:])
