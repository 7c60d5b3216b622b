"""A run's bookkeeping: what a status callback means, and what progress shows."""

from __future__ import annotations

from datetime import UTC, datetime

from temporalio.converter import DataConverter

from contracts.messages import (
    Answer,
    CallingWindow,
    CallStatusEvent,
    InFlightCall,
    LeadRef,
    MachineDetected,
    Message,
    Outcome,
    RunCarryOver,
    RunInput,
    RunOptions,
    WaitingLead,
)
from telephony.zones import lead_zones
from workflows.run_book import LEAD_PAGE_SIZE, MAX_WAITING, RunBook

ALWAYS = CallingWindow("00:00", "24:00")


def book_with_leads(count: int, lines: int = 3, **options: object) -> RunBook:
    book = RunBook(count, RunOptions(**({"calling_window": ALWAYS} | options)), RunCarryOver())  # type: ignore[arg-type]
    book.add_leads([LeadRef(id=i, phone=f"+1415555{i:04d}") for i in range(1, count + 1)], page_size=200)
    book.grant(seq=1, count=lines)
    return book


def status(
    lead: int, sid: str, call_status: str, seq: int | None = None, attempt: int = 1
) -> CallStatusEvent:
    return CallStatusEvent(
        lead_id=lead, attempt=attempt, call_sid=sid, status=call_status, sequence_number=seq
    )


def test_dials_only_on_free_lines() -> None:
    book = book_with_leads(5, lines=2)
    assert book.next_dial(0) is not None
    assert book.next_dial(0) is not None
    assert book.next_dial(0) is None
    progress = book.progress("running")
    assert (progress.dialing, progress.in_flight, progress.queued) == (2, 0, 3)


def test_in_flight_counts_only_calls_twilio_has() -> None:
    book = book_with_leads(3)
    call = book.next_dial(0)
    assert call is not None
    assert book.progress("running").in_flight == 0
    book.dial_placed(call.lead_id, 1, "CA1", "queued", 1)
    assert book.progress("running").in_flight == 1


def test_duplicate_and_reordered_callbacks_change_nothing() -> None:
    book = book_with_leads(2)
    call = book.next_dial(0)
    assert call is not None
    book.dial_placed(call.lead_id, 1, "CA1", "queued", 0)
    book.apply_status(status(call.lead_id, "CA1", "in-progress", seq=2), 1)
    book.apply_status(status(call.lead_id, "CA1", "ringing", seq=1), 2)  # arrives late
    assert book.calls[(call.lead_id, 1)].status == "in-progress"

    outcome = book.apply_status(status(call.lead_id, "CA1", "completed", seq=3), 3)
    assert outcome is not None and outcome.status == "completed"
    assert book.apply_status(status(call.lead_id, "CA1", "completed", seq=3), 4) is None
    assert book.apply_status(status(call.lead_id, "CA1", "busy", seq=4), 5) is None
    progress = book.progress("running")
    assert progress.done == 1
    assert progress.outcomes["answered"] == 1
    assert progress.outcomes["busy"] == 0


def test_callback_naming_another_call_sid_is_ignored() -> None:
    book = book_with_leads(1)
    call = book.next_dial(0)
    assert call is not None
    book.dial_placed(call.lead_id, 1, "CA1", "queued", 0)
    assert book.apply_status(status(call.lead_id, "CA-other", "completed"), 1) is None
    assert book.progress("running").in_flight == 1


def test_terminal_callback_before_the_create_returns_frees_the_line() -> None:
    book = book_with_leads(2, lines=1)
    call = book.next_dial(0)
    assert call is not None
    book.apply_status(status(call.lead_id, "CA1", "busy", seq=0), 1)
    book.dial_placed(call.lead_id, 1, "CA1", "queued", 2)
    assert book.free_lines == 1
    assert book.progress("running").outcomes["busy"] == 1


def test_lines_go_back_when_no_lead_is_left_or_the_gate_recalls_them() -> None:
    book = book_with_leads(2, lines=3)
    assert book.lines_to_give_back(dialing_allowed=True) == 1  # three lines, two leads
    book = book_with_leads(10, lines=3)
    book.next_dial(0)
    book.recall(seq=2, hold_at_most=1)
    assert book.lines_to_give_back(dialing_allowed=True) == 2


def test_cancel_ends_undialed_leads_cancelled() -> None:
    book = book_with_leads(5)
    call = book.next_dial(0)
    assert call is not None
    assert book.cancel_undialed() == 4
    assert not book.finished
    book.apply_status(status(call.lead_id, "CA1", "canceled"), 1)
    assert book.finished
    assert book.progress("cancelled").outcomes["cancelled"] == 5


def test_a_recalled_line_is_not_dialed_on_again() -> None:
    book = book_with_leads(10, lines=3)
    calls = [book.next_dial(0) for _ in range(3)]
    book.recall(seq=2, hold_at_most=2)
    first = calls[0]
    assert first is not None
    book.apply_status(status(first.lead_id, "CA1", "completed"), 1)
    assert book.next_dial(2) is None
    assert book.lines_to_give_back(dialing_allowed=True) == 1


def test_a_busy_lead_is_retried_after_the_delay_without_holding_a_line() -> None:
    book = book_with_leads(1, lines=1, max_attempts=2, retry_delay_seconds=3600)
    call = book.next_dial(0)
    assert call is not None
    outcome = book.apply_status(status(call.lead_id, "CA1", "busy"), 10)
    assert outcome is not None and not outcome.final
    progress = book.progress("running")
    assert (progress.retry_waiting, progress.done, progress.outcomes["busy"]) == (1, 0, 0)
    assert book.lines_wanted(dialing_allowed=True) == 0  # waiting holds no line
    assert book.next_due() == 3610
    assert book.release_due(3609) == 0
    assert book.release_due(3610) == 1
    retry = book.next_dial(3610)
    assert retry is not None and retry.attempt == 2
    final = book.apply_status(status(retry.lead_id, "CA2", "completed", attempt=2), 3700)
    assert final is not None and final.final
    assert book.finished
    assert book.progress("completed").outcomes == {
        **dict.fromkeys(book.progress("x").outcomes, 0),
        "answered": 1,
    }


def test_retries_stop_at_max_attempts_and_only_for_chosen_outcomes() -> None:
    book = book_with_leads(2, lines=2, max_attempts=2, retry_on=["busy"])
    first, second = book.next_dial(0), book.next_dial(0)
    assert first is not None and second is not None
    assert book.apply_status(status(first.lead_id, "CA1", "no-answer"), 1).final  # type: ignore[union-attr]
    assert not book.apply_status(status(second.lead_id, "CA2", "busy"), 1).final  # type: ignore[union-attr]
    book.release_due(10_000)
    again = book.next_dial(10_000)
    assert again is not None and again.attempt == 2
    assert book.apply_status(status(again.lead_id, "CA3", "busy", attempt=2), 10_001).final  # type: ignore[union-attr]
    assert book.finished


def _answered_by(book: RunBook, lead: int, sid: str, who: str) -> str | None:
    book.dial_placed(lead, 1, sid, "queued", 1)
    return book.machine_detected(MachineDetected(lead, 1, sid, who))


def test_what_a_machine_gets_is_what_the_answer_asks_and_its_outcome_says_so() -> None:
    voicemail = Answer(say="Hi", on_machine="voicemail", voicemail=Message(say="Call us back"))
    book = book_with_leads(4, lines=4, answer=voicemail, max_attempts=2, retry_on=["machine"])
    book.machines_named = True
    calls = [book.next_dial(0) for _ in range(4)]
    assert all(calls)
    assert _answered_by(book, 1, "CA1", "machine_end_beep") == "voicemail"
    assert _answered_by(book, 2, "CA2", "fax") == "hang_up"  # a fax takes no voicemail
    assert _answered_by(book, 3, "CA3", "human") is None
    assert _answered_by(book, 4, "CA4", "machine_end_silence") == "voicemail"
    book.voicemail_left(1, 1)  # Twilio took the voicemail for lead 1; lead 4's call ended first

    ended = {lead: book.apply_status(status(lead, f"CA{lead}", "completed"), 2) for lead in (1, 2, 3, 4)}
    assert {lead: o.outcome for lead, o in ended.items() if o} == {
        1: "voicemail",
        2: "machine",
        3: None,
        4: "machine",
    }
    assert {lead: o.answered_by for lead, o in ended.items() if o} == {
        1: "machine_end_beep",
        2: "fax",
        3: "human",
        4: "machine_end_silence",
    }
    # `retry_on` names `machine`: those leads are called again; voicemail and answered are done.
    assert {lead for lead, o in ended.items() if o and not o.final} == {2, 4}
    assert book.progress("running").outcomes["voicemail"] == 1


def test_a_machine_is_only_told_apart_where_the_answer_asks() -> None:
    book = book_with_leads(2, lines=2, answer=Answer(say="Hi", on_machine="continue"))
    book.machines_named = True
    assert book.next_dial(0) and book.next_dial(0)
    assert _answered_by(book, 1, "CA1", "machine_start") is None  # `continue`: nothing is done to it
    first = book.apply_status(status(1, "CA1", "completed"), 2)
    assert first is not None and first.outcome == "machine"

    before = book_with_leads(1, answer=Answer(say="Hi", on_machine="hang_up"))
    assert before.next_dial(0)  # a run started before machines were told apart counts them answered
    assert _answered_by(before, 1, "CA9", "machine_start") == "hang_up"
    older = before.apply_status(status(1, "CA9", "completed"), 2)
    assert older is not None and older.outcome is None and before.progress("x").outcomes["answered"] == 1


def test_a_verdict_acts_once_and_only_on_the_runs_own_call() -> None:
    book = book_with_leads(3, lines=3, answer=Answer(say="Hi", on_machine="hang_up"))
    book.machines_named = True
    assert book.next_dial(0) and book.next_dial(0) and book.next_dial(0)
    assert _answered_by(book, 1, "CA1", "machine_start") == "hang_up"
    # Twilio sends a callback again when it heard no answer in time: the second changes nothing.
    assert book.machine_detected(MachineDetected(1, 1, "CA1", "machine_start")) is None
    # A verdict before the run knows its call's SID may be about any call: it is not acted on.
    assert book.machine_detected(MachineDetected(2, 1, "CA-someone-elses", "machine_end_beep")) is None
    assert book.calls[(2, 1)].answered_by is None
    book.dial_placed(2, 1, "CA2", "queued", 1)
    ended = book.apply_status(status(2, "CA2", "completed"), 2)
    assert ended is not None and ended.outcome is None and ended.answered_by is None


def test_who_answered_is_kept_when_the_verdict_comes_after_the_end_or_before_machines_were_named() -> None:
    book = book_with_leads(2, lines=2, machine_detection=True)
    assert book.next_dial(0) and book.next_dial(0)
    book.dial_placed(1, 1, "CA1", "queued", 1)
    ended = book.apply_status(status(1, "CA1", "completed"), 2)
    assert ended is not None and ended.answered_by is None
    assert book.machine_detected(MachineDetected(1, 1, "CA1", "human")) is None
    assert book.take_unrecorded()[0].answered_by == "human"  # the late verdict reaches the attempt

    assert _answered_by(book, 2, "CA2", "machine_start") is None
    second = book.apply_status(status(2, "CA2", "completed"), 3)
    assert second is not None and (second.answered_by, second.outcome) == ("machine_start", None)


def test_a_lead_outside_its_window_waits_and_others_go_on() -> None:
    book = RunBook(2, RunOptions(), RunCarryOver())  # 08:00-21:00 every day
    book.grant(1, 2)
    now = datetime(2026, 11, 28, 3, 0, tzinfo=UTC).timestamp()  # 22:00 in New York, 04:00 in Paris
    book.add_leads(
        [
            LeadRef(1, "+12125551234", zones=["America/New_York"]),
            LeadRef(2, "+33612345678", zones=["Europe/Paris"]),
        ],
        page_size=200,
    )
    call = book.next_dial(now)
    assert call is None  # both closed: New York until 08:00 local, Paris until 08:00 local
    assert book.progress("running").window_waiting == 2
    paris_opens = datetime(2026, 11, 28, 7, 0, tzinfo=UTC).timestamp()
    # What the person running the campaign is told: when the first waiting lead can be called.
    assert book.progress("running").window_opens_at == "2026-11-28T07:00:00+00:00"
    assert book.next_due() == paris_opens
    book.release_due(paris_opens)
    call = book.next_dial(paris_opens)
    assert call is not None and call.lead_id == 2
    new_york_opens = datetime(2026, 11, 28, 13, 0, tzinfo=UTC).timestamp()
    assert book.next_due() == new_york_opens


def test_cancel_also_ends_leads_waiting_on_timers() -> None:
    book = book_with_leads(2, lines=1, max_attempts=3)
    call = book.next_dial(0)
    assert call is not None
    book.apply_status(status(call.lead_id, "CA1", "busy"), 1)
    assert book.cancel_undialed() == 2
    assert book.finished
    assert book.progress("cancelled").outcomes["cancelled"] == 2


def test_a_new_gate_execution_is_listened_to_and_told_what_the_run_holds() -> None:
    book = book_with_leads(5, lines=0)
    assert book.grant(seq=9, count=2, gate_run="g1")
    book.state.resync_due = False
    # The gate was terminated and started afresh: it numbers from 1 again.
    assert book.grant(seq=1, count=1, gate_run="g2")
    assert book.state.lines_held == 3 and book.state.resync_due
    assert not book.grant(seq=10, count=1, gate_run="g1")  # a late grant of the gate it left
    assert not book.recall(seq=11, hold_at_most=0, gate_run="g1")
    assert book.state.lines_held == 3 and book.state.hold_at_most is None


def test_every_line_in_use_puts_the_lead_back_first_and_backs_off() -> None:
    book = book_with_leads(3, lines=1)
    call = book.next_dial(100.0)
    assert call is not None and call.lead_id == 1
    book.line_busy(call.lead_id, call.attempt, 100.0)
    assert book.state.pending[0].id == 1 and not book.calls
    assert book.next_dial(100.5) is None  # not before the retry time
    assert book.next_due() == 101.0
    book.release_due(101.0)
    call = book.next_dial(101.0)
    assert call is not None and call.lead_id == 1
    book.line_busy(call.lead_id, call.attempt, 101.0)
    assert book.next_due() == 103.0  # doubled
    book.release_due(103.0)
    call = book.next_dial(103.0)
    assert call is not None
    book.dial_placed(call.lead_id, call.attempt, "CA1", "queued", 103.0)
    assert book.state.line_backoff == 1.0


def test_the_next_dial_gives_back_the_lease_of_the_call_whose_line_it_takes() -> None:
    book = book_with_leads(3, lines=1)
    call = book.next_dial(0)
    assert call is not None
    book.apply_status(status(call.lead_id, "CA1", "completed"), 1)
    freed = book.take_freed()
    assert freed is not None and (freed.lead_id, freed.attempt) == (call.lead_id, 1)
    assert book.take_freed() is None
    # Lines whose outcomes are written need no dial to free them.
    second = book.next_dial(2)
    assert second is not None
    book.apply_status(status(second.lead_id, "CA2", "busy"), 3)
    book.forget_freed(book.take_unrecorded())
    assert book.take_freed() is None


def test_a_refusal_that_may_be_the_account_holds_the_lead_until_a_call_says_which() -> None:
    book = book_with_leads(3, lines=1)
    first = book.next_dial(0)
    assert first is not None
    assert book.dial_refused_unsure(first.lead_id, 1, 21216, "Call blocked by Twilio") is None
    assert book.progress("running").queued == 3 and book.lines_wanted(True) == 2
    second = book.next_dial(1)
    assert second is not None and second.lead_id == 2
    book.dial_placed(second.lead_id, 1, "CA2", "queued", 2)  # the account can call
    [failed] = book.take_unrecorded()
    assert (failed.lead_id, failed.status, failed.error_code) == (first.lead_id, "failed", 21216)


def test_only_refusals_and_no_call_ever_placed_pause_the_run_and_resume_retries_them() -> None:
    book = book_with_leads(2, lines=2)
    for _ in range(2):
        call = book.next_dial(0)
        assert call is not None
        book.dial_refused_unsure(call.lead_id, 1, 21216, "Call blocked by Twilio")
    why = book.settle_refused(1)
    assert why is not None and "error 21216" in why and "the last 2 numbers" in why
    assert not book.finished and book.progress("paused").done == 0
    book.requeue_refused()
    assert [lead.id for lead in book.state.pending] == [1, 2]


def test_the_largest_carry_over_is_far_below_temporals_payload_limit() -> None:
    """A run continues as new with up to MAX_WAITING leads on timers, plus the retries of the leads it
    had in hand, a page and a half of pending leads and its calls. With toll-free numbers, each of
    which may be in any of dozens of zones, that must still fit: Temporal refuses a payload over
    2 MB (and warns over 512 KiB), and a run that cannot continue as new is stuck."""
    zones = lead_zones("+18005550100", None, None)
    assert len(zones) > 10
    book = RunBook(100_000, RunOptions(calling_window=ALWAYS), RunCarryOver())
    in_hand = LEAD_PAGE_SIZE * 3 // 2 + 100
    book.state.waiting = [
        WaitingLead(LeadRef(i, f"+1800555{i % 10_000:04d}", 2, zones), 1.8e9 + i, "window")
        for i in range(MAX_WAITING + in_hand)
    ]
    book.state.pending = [LeadRef(i, f"+1888555{i:04d}", 1, zones) for i in range(LEAD_PAGE_SIZE * 3 // 2)]
    book.calls = {
        (i, 1): InFlightCall(i, f"+1877555{i:04d}", 1, f"CA{i:032x}", zones=zones, status="in-progress")
        for i in range(100)
    }
    book.state.unrecorded = [Outcome(i, 1, "completed", f"CA{i:032x}", duration=60) for i in range(100)]
    carried = RunInput("r" * 32, "b" * 32, RunOptions(), book.carry_over(), 100_000)
    [payload] = DataConverter.default.payload_converter.to_payloads([carried])
    assert len(payload.data) < 512 * 1024
    # And it comes back whole.
    [back] = DataConverter.default.payload_converter.from_payloads([payload], [RunInput])
    again = RunBook(back.total_leads, back.options, back.carry_over or RunCarryOver())
    assert again.state.waiting[0].lead.zones == zones and again.state.pending[-1].zones == zones
    assert again.calls[(99, 1)].zones == zones
