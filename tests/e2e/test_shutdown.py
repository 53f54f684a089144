"""End-to-end: a graceful stop (SIGTERM) answers its clients instead of dropping them."""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path

from ._harness import PROTOCOLS, ServerProcess, make_client, receive


def test_sigterm_answers_parked_long_polls_and_in_flight_sends(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data")
    server.start()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=10)
    try:
        clients = {p: make_client(server.url, p) for p in PROTOCOLS}
        url = clients["json"].create_queue(QueueName="drain")["QueueUrl"]
        # Sends go to another queue, so nothing they store wakes the parked polls.
        sent_url = clients["json"].create_queue(QueueName="sent")["QueueUrl"]
        polls = [pool.submit(receive, clients[p], url, WaitTimeSeconds=20)
                 for p in PROTOCOLS for _ in range(3)]
        time.sleep(1)  # every poll is parked on the empty queue
        assert not any(p.done() for p in polls)

        def send(i: int) -> str:
            return str(clients["json"].send_message(QueueUrl=sent_url, MessageBody=f"m{i}")
                       ["MessageId"])

        sends = [pool.submit(send, i) for i in range(200)]
        time.sleep(0.05)  # some sends are in flight when the signal arrives
        started = time.monotonic()
        assert server.stop() == 0
        stop_s = time.monotonic() - started
        # Every parked poll got an (empty) answer, not a reset, and well before its 20 s.
        assert [p.result(timeout=5) for p in polls] == [[]] * len(polls)
        assert stop_s < 5, f"the stop waited {stop_s:.1f} s"
        acked = set()
        for future in sends:
            try:
                acked.add(future.result(timeout=10))
            except Exception:  # refused or cut off after the stop began: not acknowledged
                pass
        assert "ferrymq stopped" in server.output()
        assert "Traceback" not in server.output()
    finally:
        pool.shutdown(wait=True)
        server.stop()  # a no-op after the stop above; the clean-up when it failed first
    # Whatever was acknowledged before the stop is there after it.
    server.start()
    try:
        sqs = make_client(server.url, "json")
        got: set[str] = set()
        for _ in range(100):
            batch = receive(sqs, sent_url, VisibilityTimeout=60)
            if not batch and len(got) >= len(acked):
                break
            got.update(m["MessageId"] for m in batch)
        assert acked <= got
        assert acked, "no send was acknowledged at all"
    finally:
        server.stop()
