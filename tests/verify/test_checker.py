"""The checker on small synthetic histories: each property violated once and found,
its excuses honoured, and a clean history passing. Times are in milliseconds."""

from __future__ import annotations

from typing import Any

from ferrymq._verify import CheckConfig, Report, check, make_body

from ._builder import History


def run(h: History, **config: Any) -> Report:
    return check(h.events, CheckConfig(**config))


def only(report: Report) -> str:
    found = report.violations()
    assert len(found) == 1, found
    return found[0]


# --- a clean history --------------------------------------------------------------


def test_clean_standard_history_passes() -> None:
    h = History()
    for i in range(3):
        h.send(f"0-{i}", i * 10, i * 10 + 1)
    handles = h.receive(["0-0", "0-1", "0-2"], 40, 41)
    h.delete([("0-0", handles[0]), ("0-1", handles[1]), ("0-2", handles[2])], 42, 43)
    h.drain(50, 60)
    report = run(h)
    assert report.violations() == []
    q = report.queue("q")
    assert (q.attempted, q.acked, q.unique_received, q.deliveries) == (3, 3, 3, 3)
    assert q.drain == "caught up"
    assert report.latency_ms["send"]["count"] == 3


def test_empty_history_is_clean() -> None:
    assert check([]).violations() == []


# --- P1: no acked loss ------------------------------------------------------------


def test_lost_messages_are_split_prefix_middle_postfix() -> None:
    h = History()
    for i in range(5):
        h.send(f"0-{i}", i, i + 0.5)
    h.deliver_and_delete("0-1", 10)
    h.deliver_and_delete("0-3", 20)
    q = run(h).queue("q")
    assert q.lost == ["0-0", "0-2", "0-4"]
    assert q.lost_split == {"prefix": 1, "middle": 1, "postfix": 1}
    assert "3 acked messages never received" in only(run(h))


def test_unacked_sends_that_never_arrive_are_not_lost() -> None:
    h = History()
    h.send("0-0", 0, 1, type_="info")
    h.send("0-1", 2, 3, type_="fail")
    h.send("0-2", 4, 5, type_=None)  # invoked, never completed: indeterminate
    report = run(h)
    assert report.violations() == []
    assert (report.queue("q").failed, report.queue("q").indeterminate) == (1, 2)


def test_received_but_never_deleted_ok_is_undeleted() -> None:
    h = History()
    h.send("0-0", 0, 1)
    (handle,) = h.receive(["0-0"], 2, 3)
    h.delete([("0-0", handle)], 4, 5, type_="fail")
    h.delete([("0-0", handle)], 6, 7, entry_types=["fail"])
    assert run(h).queue("q").undeleted == ["0-0"]
    assert "received but never deleted" in only(run(h))
    # An indeterminate delete may have worked: nothing is left to drain.
    h.delete([("0-0", handle)], 8, 9, entry_types=["info"])
    report = run(h)
    assert report.violations() == []
    assert report.queue("q").maybe_deleted == ["0-0"]


# --- P2: no phantoms, no corruption -----------------------------------------------


def test_message_whose_send_failed_is_unexpected() -> None:
    h = History()
    h.send("0-0", 0, 1, type_="fail")
    h.deliver_and_delete("0-0", 5)
    assert run(h).queue("q").unexpected == ["0-0"]


def test_message_never_sent_is_unexpected() -> None:
    h = History()
    h.deliver_and_delete("7-7", 5)
    assert "unexpected" in only(run(h))


def test_indeterminate_send_that_arrives_is_recovered() -> None:
    h = History()
    h.send("0-0", 0, 1, type_="info")
    h.deliver_and_delete("0-0", 5)
    report = run(h)
    assert report.violations() == []
    assert report.queue("q").recovered == ["0-0"]


def test_corrupted_body_md5_group_and_send_md5_are_found() -> None:
    h = History(fifo=True)
    for i in range(4):
        h.send(f"g:{i}", i, i + 0.5, md5="0" * 32 if i == 3 else None)
    bad_body = make_body("g:0")[:-1] + ("0" if make_body("g:0")[-1] != "0" else "1")
    handles = h.receive(["g:0", "g:1", "g:2", "g:3"], 10, 11, bodies={"g:0": bad_body},
                        md5s={"g:1": "f" * 32}, groups={"g:2": "other"})
    h.delete([(f"g:{i}", handles[i]) for i in range(4)], 12, 13)
    corrupted = run(h).queue("q.fifo").corrupted
    assert len(corrupted) == 4, corrupted
    assert any("send" in c for c in corrupted)
    assert any("MD5OfBody" in c for c in corrupted)
    assert any("MessageGroupId" in c for c in corrupted)
    assert any("not one we sent" in c for c in corrupted)


# --- P3: duplicates and their classes ---------------------------------------------


def test_duplicate_classes_on_a_standard_queue() -> None:
    h = History()
    for i in range(5):
        h.send(f"0-{i}", 0, 1)
    # 0-0: crashed, redelivered after its 5 s lease ran out.
    h.receive(["0-0"], 10, 11)
    h.deliver_and_delete("0-0", 5_100)
    # 0-1: released with visibility 0, redelivered at once.
    (a,) = h.receive(["0-1"], 20, 21)
    h.release([("0-1", a)], 22, 23)
    h.deliver_and_delete("0-1", 30)
    # 0-2: deleted ok, redelivered anyway (at-least-once: counted, not a violation).
    h.deliver_and_delete("0-2", 40)
    h.deliver_and_delete("0-2", 50)
    # 0-3: the delete timed out; the message came back inside its lease window (a
    # deleted message may come back on a standard queue: excused).
    (b,) = h.receive(["0-3"], 60, 61)
    h.delete([("0-3", b)], 62, 90, type_="info")
    h.deliver_and_delete("0-3", 100)
    # 0-4: an ok delete racing the redelivery.
    (c,) = h.receive(["0-4"], 110, 111)
    h.delete([("0-4", c)], 112, 200)
    h.receive(["0-4"], 150, 151, process=2)
    report = run(h)
    assert report.violations() == []
    assert report.queue("q").duplicates == {
        "after_delete": 1, "lease": 0, "after_release": 1, "delete_race": 1,
        "after_failed_delete": 1, "after_expiry": 1}


def test_fifo_redelivery_after_ok_delete_is_a_violation_within_the_window() -> None:
    h = History(fifo=True)
    h.send("g:0", 0, 1)
    h.deliver_and_delete("g:0", 10)
    h.deliver_and_delete("g:0", 6_000)
    assert "FIFO duplicates" in only(run(h))


def test_fifo_redelivery_after_the_dedup_window_is_only_counted() -> None:
    h = History(fifo=True)
    h.send("g:0", 0, 1)
    h.deliver_and_delete("g:0", 10)
    h.deliver_and_delete("g:0", 301_000)
    report = run(h)
    assert report.violations() == []
    assert report.queue("q.fifo").duplicates["after_delete"] == 1


def test_fifo_key_enqueued_twice_is_a_violation() -> None:
    h = History(fifo=True)
    h.send("g:0", 0, 1)
    h.deliver_and_delete("g:0", 10)
    h.events[-3]["value"]["messages"][0]["message_id"] = "another"
    h.deliver_and_delete("g:0", 20)
    assert run(h).queue("q.fifo").fifo_duplicates >= 1


# --- P5: exclusive lease ----------------------------------------------------------


def test_redelivery_inside_the_lease_is_a_violation() -> None:
    h = History()
    h.send("0-0", 0, 1)
    h.receive(["0-0"], 10, 11)                       # lease until >= 5010
    h.deliver_and_delete("0-0", 4_000, process=2)    # served by 4001 < 5010 - 100
    assert "inside another delivery's lease" in only(run(h))


def test_redelivery_within_epsilon_of_the_lease_end_is_allowed() -> None:
    h = History()
    h.send("0-0", 0, 1)
    h.receive(["0-0"], 10, 11)
    h.deliver_and_delete("0-0", 4_910, process=2)    # ends 4911, not < 4910
    assert run(h).violations() == []
    # A skew budget widens the tolerance.
    h2 = History()
    h2.send("0-0", 0, 1)
    h2.receive(["0-0"], 10, 11)
    h2.deliver_and_delete("0-0", 4_700, process=2)
    assert run(h2).violations() != []
    assert run(h2, skew_ms=250).violations() == []


def test_released_lease_excuses_the_redelivery() -> None:
    h = History()
    h.send("0-0", 0, 1)
    (a,) = h.receive(["0-0"], 10, 11)
    h.release([("0-0", a)], 1_000, 3_000, type_="info")  # outcome unknown: may have ended it
    h.deliver_and_delete("0-0", 2_000, process=2)
    assert run(h).violations() == []


def test_an_indeterminate_delete_may_land_long_after_its_client_gave_up() -> None:
    # The delete from the first delivery timed out at 50 but may have been applied at
    # any time later (a paused node resuming), e.g. after 0-0 was redelivered at 5100;
    # on a standard queue the delivery at 6000 is then a deleted message coming back.
    h = History()
    h.send("0-0", 0, 1)
    (a,) = h.receive(["0-0"], 10, 11)
    h.delete([("0-0", a)], 12, 50, type_="info")
    h.receive(["0-0"], 5_100, 5_101, process=2)
    h.deliver_and_delete("0-0", 6_000, process=3)
    assert run(h).violations() == []
    # An ok delete that was over before the lease began excuses nothing.
    h = History()
    h.send("0-0", 0, 1)
    (a,) = h.receive(["0-0"], 10, 11)
    h.delete([("0-0", a)], 12, 50, entry_types=["ok"])
    h.receive(["0-0"], 5_100, 5_101, process=2)
    h.deliver_and_delete("0-0", 6_000, process=3)
    assert run(h).queue("q").lease_violations == 1


def test_release_after_the_redelivery_does_not_excuse_it() -> None:
    h = History()
    h.send("0-0", 0, 1)
    (a,) = h.receive(["0-0"], 10, 11)
    h.deliver_and_delete("0-0", 2_000, process=2)        # ends 2001
    h.release([("0-0", a)], 2_500, 2_600)
    assert "lease" in only(run(h))


def test_fifo_timed_out_delete_does_not_excuse_a_redelivery_inside_the_lease() -> None:
    # On a standard queue it would (a deleted message may come back); on FIFO either
    # the delete happened (a deleted message came back) or the lease broke.
    for fifo, violations in ((False, 0), (True, 1)):
        h = History(fifo=fifo)
        key = "g:0" if fifo else "0-0"
        h.send(key, 0, 1)
        (a,) = h.receive([key], 10, 11)
        h.delete([(key, a)], 12, 1_000, type_="info")
        h.deliver_and_delete(key, 2_000, process=2)
        assert len(run(h).violations()) == violations, (fifo, run(h).violations())


def test_concurrent_receives_of_one_message_conflict_whichever_came_first() -> None:
    h = History()
    h.send("0-0", 0, 1)
    a = h.receive(["0-0"], 10, 30)
    b = h.receive(["0-0"], 20, 40, process=2)
    h.delete([("0-0", a[0])], 50, 51)
    h.delete([("0-0", b[0])], 50, 51, process=2)
    assert run(h).queue("q").lease_violations == 1


def test_concurrent_receives_with_short_leases_are_not_convicted() -> None:
    h = History()
    h.send("0-0", 0, 1)
    a = h.receive(["0-0"], 10, 200, vt_s=0.1)   # the second may have come after expiry
    b = h.receive(["0-0"], 20, 300, process=2, vt_s=0.1)
    h.delete([("0-0", a[0]), ("0-0", b[0])], 400, 401)
    assert run(h).violations() == []


def test_attempt_id_retry_dates_the_lease_from_the_first_attempt() -> None:
    # The first attempt (answer lost at t=100) chose the message; the retry with the
    # same attempt id returned it at 6000. The lease began before 100, so a delivery
    # to someone else at 5500 is after it ran out, not inside a lease that began at 6000.
    h = History(fifo=True)
    h.send("g:0", 0, 1)
    h.receive([], 10, 100, type_="info", attempt_id="A")
    handle = h.handle("g:0")
    h.receive([("g:0", handle)], 5_800, 6_000, attempt_id="A")
    h.receive(["g:0"], 5_500, 5_600, process=2)
    report = run(h)
    assert report.queue("q.fifo").lease_violations == 0
    assert report.queue("q.fifo").deliveries == 2
    # Without the attempt id the same timeline is a violation.
    for event in h.events:
        if event["f"] == "receive":
            event["value"]["attempt_id"] = None
    assert run(h).queue("q.fifo").lease_violations == 1


def test_the_same_receipt_handle_twice_is_one_delivery() -> None:
    # Both answers of a retried receive arrived (or two nodes replayed one attempt):
    # one lease, not a second delivery inside the first's.
    h = History(fifo=True)
    h.send("g:0", 0, 1)
    handle = h.handle("g:0")
    h.receive([("g:0", handle)], 10, 20, attempt_id="A")
    h.receive([("g:0", handle)], 30, 40, attempt_id="A", process=2)
    h.delete([("g:0", handle)], 50, 51)
    report = run(h)
    assert report.violations() == []
    assert report.queue("q.fifo").deliveries == 1


# --- P4: FIFO order ---------------------------------------------------------------


def fifo_with(n: int) -> History:
    h = History(fifo=True)
    for i in range(n):
        h.send(f"g:{i}", i, i + 0.5)
    return h


def test_clean_fifo_history_with_a_crash_and_a_release_passes() -> None:
    h = fifo_with(4)
    a = h.receive(["g:0", "g:1", "g:2"], 10, 11)
    h.delete([("g:0", a[0])], 12, 13)                      # g:1 crashed, g:2 after it
    b = h.receive(["g:1", "g:2", "g:3"], 5_100, 5_101)     # lease ran out: redelivered
    h.delete([("g:1", b[0])], 5_102, 5_103)
    h.release([("g:2", b[1]), ("g:3", b[2])], 5_104, 5_105)
    c = h.receive(["g:2", "g:3"], 5_110, 5_111, process=2)
    h.delete([("g:2", c[0]), ("g:3", c[1])], 5_112, 5_113, process=2)
    report = run(h)
    assert report.violations() == []
    assert report.queue("q.fifo").duplicates["after_expiry"] == 2


def test_fifo_message_delivered_before_its_predecessor_was_deleted() -> None:
    h = fifo_with(2)
    (a,) = h.receive(["g:0"], 10, 11, vt_s=0.05)   # a short lease: no in-flight proof
    (b,) = h.receive(["g:1"], 500, 501, process=2)
    h.delete([("g:0", a)], 600, 601)
    h.delete([("g:1", b)], 602, 603, process=2)
    assert "not_deleted" in only(run(h))


def test_fifo_two_in_flight_messages_of_a_group_out_of_order() -> None:
    h = fifo_with(2)
    (a,) = h.receive(["g:0"], 10, 11)
    (b,) = h.receive(["g:1"], 500, 501, process=2)
    h.delete([("g:0", a)], 600, 601)
    h.delete([("g:1", b)], 602, 603, process=2)
    assert "in_flight" in only(run(h))


def test_fifo_batch_must_be_ascending() -> None:
    h = fifo_with(2)
    a = h.receive(["g:1", "g:0"], 10, 11)
    h.delete([("g:1", a[0]), ("g:0", a[1])], 12, 13)
    assert "batch_order" in only(run(h))


def test_fifo_gap_in_a_batch_needs_the_missing_message_deleted() -> None:
    h = fifo_with(3)
    a = h.receive(["g:0", "g:2"], 10, 11)   # g:1 acked, never deleted before
    h.delete([("g:0", a[0]), ("g:2", a[1])], 12, 13)
    h.deliver_and_delete("g:1", 20)
    assert "FIFO order" in only(run(h))
    # Fine when g:1 had been delivered and deleted before, and g:0 came back.
    h = fifo_with(3)
    a = h.receive(["g:0", "g:1"], 10, 11)
    h.delete([("g:1", a[1])], 12, 13)
    b = h.receive(["g:0", "g:2"], 5_100, 5_101)
    h.delete([("g:0", b[0]), ("g:2", b[1])], 5_102, 5_103)
    assert run(h).violations() == []


def test_delete_before_a_receive_means_before_the_receive_completed() -> None:
    # A long poll parked since t=10 is woken by the delete of g:0 at t=500: legal,
    # though the delete was invoked after the receive was.
    h = fifo_with(2)
    (a,) = h.receive(["g:0"], 5, 6)
    h.delete([("g:0", a)], 500, 501)
    (b,) = h.receive(["g:1"], 10, 502, process=2)
    h.delete([("g:1", b)], 503, 504, process=2)
    assert run(h).violations() == []


def test_timed_out_delete_is_convicted_when_the_message_comes_back_later() -> None:
    h = fifo_with(2)
    (a,) = h.receive(["g:0"], 10, 11, vt_s=0.05)
    h.delete([("g:0", a)], 20, 200, type_="info")
    (b,) = h.receive(["g:1"], 300, 301, process=2)
    h.delete([("g:1", b)], 302, 303, process=2)
    assert run(h).queue("q.fifo").order_violations == 0   # nothing proves g:0 was there
    h.deliver_and_delete("g:0", 400)                         # ...but it was
    assert "redelivered_later" in only(run(h))


def test_released_head_redelivered_while_a_later_message_is_in_flight_is_legal() -> None:
    # Recorded on SQS: g:0 released while g:1 of the same batch is in flight; the
    # next receive returns g:0 again.
    h = fifo_with(2)
    a = h.receive(["g:0", "g:1"], 10, 11)
    h.release([("g:0", a[0])], 12, 13)
    (b,) = h.receive(["g:0"], 20, 21, process=2)
    h.delete([("g:0", b)], 22, 23, process=2)
    h.delete([("g:1", a[1])], 30, 31)
    assert run(h).violations() == []


def test_groups_are_independent() -> None:
    h = History(fifo=True)
    h.send("a:0", 0, 1)
    h.send("b:0", 0, 1, process=1)
    h.send("b:1", 2, 3, process=1)
    (x,) = h.receive(["a:0"], 10, 11)
    y = h.receive(["b:0", "b:1"], 12, 13, process=2)
    h.delete([("b:0", y[0]), ("b:1", y[1])], 14, 15, process=2)
    h.delete([("a:0", x)], 16, 17)
    assert run(h).violations() == []


# --- P6: liveness -----------------------------------------------------------------


def test_late_delivery_in_a_fault_free_window_is_a_violation() -> None:
    h = History()
    h.send("0-0", 0, 1)
    h.send("0-1", 100, 101)
    h.deliver_and_delete("0-1", 200)
    h.deliver_and_delete("0-0", 16_000)   # > 1 + 2*5000 + 5000
    h.drain(40_000, 41_000)
    report = run(h)
    assert "not delivered within 15000.0 ms" in only(report)
    assert report.queue("q").liveness_judged == 2


def test_late_delivery_across_a_fault_is_not_judged() -> None:
    h = History()
    h.send("0-0", 0, 1)
    h.fault("kill", 3_000, 4_000)
    h.deliver_and_delete("0-0", 16_000)
    h.drain(40_000, 41_000)
    report = run(h)
    assert report.violations() == []
    assert report.queue("q").liveness_judged == 0


def test_windows_shorter_than_r_are_not_judged() -> None:
    h = History()
    h.send("0-0", 0, 1)
    h.deliver_and_delete("0-0", 16_000)
    h.drain(16_010, 16_020)
    assert run(h).violations() != []
    assert run(h, liveness_window_min_ms=60_000).violations() == []


def test_drain_that_did_not_catch_up_is_a_violation() -> None:
    h = History()
    h.send("0-0", 0, 1)
    h.deliver_and_delete("0-0", 10)
    h.drain(20, 30, caught_up=False)
    assert "drain did not catch up" in only(run(h))


# --- P7: availability -------------------------------------------------------------


def test_time_to_first_ok_send_and_receive_after_each_fault() -> None:
    h = History()
    h.send("0-0", 0, 1)
    h.fault("kill", 1_000, 1_500)
    h.send("0-1", 1_010, 1_020, type_="fail")     # refused: not counted
    h.send("0-2", 1_600, 1_700)
    h.deliver_and_delete("0-0", 2_000)
    h.deliver_and_delete("0-2", 2_100)
    report = run(h)
    (fault,) = report.faults
    assert (fault.start_ms, fault.end_ms) == (1_000.0, 1_500.0)
    assert fault.send_ms == 700.0 and fault.send_after_end_ms == 200.0
    assert fault.receive_ms == 1_001.0 and fault.receive_after_end_ms == 501.0


def test_fault_that_never_ended_reaches_the_end_of_the_history() -> None:
    h = History()
    h.send("0-0", 0, 1)
    h.fault("pause", 100, None)
    h.deliver_and_delete("0-0", 20_000)
    report = run(h)
    assert report.faults[0].end_ms is None
    assert report.queue("q").liveness_judged == 0


def test_report_formats_and_serialises() -> None:
    h = History()
    h.send("0-0", 0, 1)
    h.deliver_and_delete("0-0", 10)
    report = run(h)
    text = report.format()
    assert "queue q (standard)" in text and "violations: 0" in text
    assert report.to_dict()["violations"] == []
