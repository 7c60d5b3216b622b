"""A run's bookkeeping: what a status callback means, and what progress shows."""

from __future__ import annotations

from workflows.messages import CallStatusEvent, LeadRef, RunCarryOver, RunOptions
from workflows.run_book import RunBook


def book_with_leads(count: int, lines: int = 3) -> RunBook:
    book = RunBook(count, RunOptions(), RunCarryOver())
    book.add_leads([LeadRef(id=i, phone=f"+1415555{i:04d}") for i in range(1, count + 1)], page_size=200)
    book.grant(seq=1, count=lines)
    return book


def status(lead: int, sid: str, call_status: str, seq: int | None = None) -> CallStatusEvent:
    return CallStatusEvent(lead_id=lead, attempt=1, call_sid=sid, status=call_status, sequence_number=seq)


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
