"""End-to-end: the verification workloads (W1 standard, W2 FIFO) against a real
``ferrymq serve`` that is killed with SIGKILL and restarted twice while they run, then
the recorded history through the checker.

The timeline: faults 3 s and 7 s into the run, then a fault-free stretch long enough
(with the drain) for the liveness rule to judge some messages, the workloads stopped,
a short wait, and the drain. The history is written to ``tmp_path``; a failing run
prints its path so it can be re-checked with ``python -m ferrymq._verify check``.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ferrymq._verify import Recorder, check, fault, load_history
from ferrymq._verify._workload import (
    Endpoints,
    QueueWorkload,
    WorkloadConfig,
    create_queue,
    wind_down,
)

from ._harness import ServerProcess

VISIBILITY_S = 5
# W1 as the team specified it: 10 % of received messages crash, some are released.
STANDARD = WorkloadConfig(producers=2, consumers=2, send_interval_s=0.02,
                          visibility_s=VISIBILITY_S, crash_fraction=0.10,
                          release_fraction=0.05, seed=1)
# W2: four groups. A FIFO crash stalls its whole group for a visibility timeout, so
# crashes are rarer than on W1 (at 10 % every group would be stalled most of the time
# and the backlog would outgrow the run).
FIFO = WorkloadConfig(producers=4, consumers=2, send_interval_s=0.1,
                      visibility_s=VISIBILITY_S, crash_fraction=0.01,
                      release_fraction=0.05, seed=2)
FAULT_AT_S = (3.0, 4.0)        # run this long before each kill -9
QUIET_S = 10.0                 # fault-free running after the last restart
SETTLE_S = 1.0                 # after stopping the workloads, before draining
DRAIN_TIMEOUT_S = 20.0


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_workloads_through_two_kill9_restarts(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    proc = ServerProcess(tmp_path / "data")
    proc.start()
    recorder = Recorder(history)
    workloads: list[QueueWorkload] = []
    try:
        endpoints = Endpoints([proc.url])
        standard = create_queue(endpoints, "verify-standard")
        fifo = create_queue(endpoints, "verify.fifo", fifo=True)
        workloads = [QueueWorkload(recorder, endpoints, standard, STANDARD),
                     QueueWorkload(recorder, endpoints, fifo, FIFO)]
        for workload in workloads:
            workload.start()
        for run_s in FAULT_AT_S:
            time.sleep(run_s)
            with fault(recorder, "kill", proc.url, signal="SIGKILL"):
                proc.kill9()
                proc.restart()
        caught_up = wind_down(workloads, quiet_s=QUIET_S, settle_s=SETTLE_S,
                              drain_timeout_s=DRAIN_TIMEOUT_S)
    finally:
        for workload in workloads:
            workload.stop()
        recorder.close()
        proc.stop()

    report = check(load_history(history))
    where = f"history: {history}\n{report.format()}"
    print(where)
    assert report.violations() == [], where
    assert caught_up == {"verify-standard": True, "verify.fifo": True}, where
    w1, w2 = report.queue("verify-standard"), report.queue("verify.fifo")
    for q in (w1, w2):
        assert not q.lost and q.lease_violations == 0, where
        # Not vacuous: real traffic, redeliveries, judged liveness, a finished drain.
        assert q.acked >= 100 and q.unique_received >= q.acked, where
        assert q.duplicates["after_release"] > 0, where
        assert q.liveness_judged > 0 and q.drain == "caught up", where
    assert w2.order_violations == 0 and w2.fifo_duplicates == 0, where
    assert w1.duplicates["after_expiry"] > 0, where   # crashed messages came back
    assert len(report.faults) == 2, where
    for kill in report.faults:
        assert kill.send_after_end_ms is not None and kill.receive_after_end_ms is not None, \
            where
    # The kills landed on traffic: some operations ended without an answer.
    assert sum(counts.get("info", 0) + counts.get("fail", 0)
               for counts in report.ops.values()) > 0, where
