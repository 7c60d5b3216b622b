"""Calling windows read in the called party's time zones: when a lead may be called, to the second,
and a clear outcome for a lead whose window can never open (the run goes on)."""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import UTC, datetime, timedelta

from cli.render import live_counts
from contracts.messages import CallingWindow, LeadRef, RunCarryOver, RunOptions
from contracts.names import run_workflow_id
from support.drive import new_number, wait_for
from support.stack import Stack
from telephony.zones import lead_zones
from tests.test_campaign_rules import zone_where_it_is
from workflows.calling_window import window_check
from workflows.run_book import RunBook

NINE_TO_FIVE = CallingWindow("09:00", "17:00")
MORNING = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)  # a Tuesday


def test_a_window_that_opens_at_eight_is_closed_at_seven_fifty_nine_and_one_second() -> None:
    window = CallingWindow("08:00", "21:00")
    almost = datetime(2026, 12, 1, 7, 59, 1, tzinfo=UTC)
    check = window_check(window, ["UTC"], almost)
    assert check.opens_at == datetime(2026, 12, 1, 8, 0, tzinfo=UTC).timestamp()
    assert check.never is None
    assert window_check(window, ["UTC"], datetime(2026, 12, 1, 8, 0, tzinfo=UTC)).open_now
    assert window_check(window, ["UTC"], datetime(2026, 12, 1, 20, 59, 59, tzinfo=UTC)).open_now
    assert not window_check(window, ["UTC"], datetime(2026, 12, 1, 21, 0, tzinfo=UTC)).open_now


def test_a_window_never_open_in_all_of_a_numbers_zones_says_so_instead_of_raising() -> None:
    zones = ["Pacific/Honolulu", "America/New_York"]  # five or six hours apart
    check = window_check(CallingWindow("11:00", "13:00"), zones, MORNING)
    assert not check.open_now and check.opens_at is None
    assert check.never is not None
    assert "11:00-13:00" in check.never and "2 time zones" in check.never and "timezone" in check.never


def test_a_zone_the_worker_does_not_know_is_a_reason_not_an_error() -> None:
    check = window_check(NINE_TO_FIVE, ["Mars/Olympus_Mons"], MORNING)
    assert check.never is not None and "Mars/Olympus_Mons" in check.never


def test_a_kazakh_mobile_number_is_read_in_kazakhstan_not_in_every_zone_of_plus_seven() -> None:
    zones = lead_zones("+77012345678", None, None)
    assert zones and all(zone.startswith("Asia/") for zone in zones)
    assert "Europe/Moscow" not in zones and "Asia/Kamchatka" not in zones
    check = window_check(NINE_TO_FIVE, zones, MORNING)
    assert check.never is None  # Kazakhstan keeps one offset: 09:00-17:00 opens every day


def test_a_lead_whose_window_never_opens_ends_skipped_and_the_others_are_dialed() -> None:
    book = RunBook(3, RunOptions(calling_window=CallingWindow("11:00", "13:00")), RunCarryOver())
    book.grant(1, 1)
    everywhere = ["Pacific/Honolulu", "America/Chicago", "America/New_York"]
    book.add_leads(
        [
            LeadRef(1, "+18005550100", zones=everywhere),
            LeadRef(2, "+12125551234", zones=["America/New_York"]),
            LeadRef(3, "+13125551234", zones=["America/Chicago"]),
        ],
        page_size=200,
    )
    new_york_noon = datetime(2026, 12, 1, 17, 0, tzinfo=UTC).timestamp()
    call = book.next_dial(new_york_noon)
    assert call is not None and call.lead_id == 2  # lead 1 did not take the line
    [skipped] = book.take_unrecorded()
    assert (skipped.lead_id, skipped.status, skipped.call_sid) == (1, "skipped_window", None)
    assert skipped.error_message is not None and "3 time zones" in skipped.error_message
    progress = book.progress("running")
    assert progress.done == 1 and progress.outcomes["skipped_window"] == 1
    assert progress.window_waiting == 0


async def test_a_number_whose_window_never_opens_does_not_hold_up_the_run(stack: Stack) -> None:
    """I8: a toll-free number may be anywhere from Hawaii to New York, where a 10:00-14:00 window is
    never open at once. Its lead ends `skipped_window` with the reason; every other lead is called."""
    business = await stack.create_business(cap=3)
    noon_somewhere = zone_where_it_is(12)
    phones = [new_number() for _ in range(8)]
    toll_free = "+18005550100"
    await stack.force_outcomes(dict.fromkeys([*phones, toll_free], "completed"))
    leads = [{"phone": toll_free}] + [{"phone": p, "timezone": noon_somewhere} for p in phones]
    response = await stack.http.post(
        "/v1/runs",
        json={"leads": leads, "options": {"calling_window": {"start": "10:00", "end": "14:00"}}},
        headers=business.headers,
    )
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]

    run = await stack.wait_run_ends(business, run_id, within=60)
    assert run["status"] == "completed"
    assert run["progress"]["outcomes"]["answered"] == 8
    assert run["progress"]["outcomes"]["skipped_window"] == 1
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == Counter(phones)
    calls = (await stack.http.get(f"/v1/runs/{run_id}/calls", headers=business.headers)).json()
    [skipped] = [c for c in calls if c["phone"] == toll_free]
    assert skipped["status"] == "skipped_window" and skipped["call_sid"] is None
    assert "never open at once" in skipped["error_message"]
    export = (await stack.http.get(f"/v1/runs/{run_id}/calls.csv", headers=business.headers)).text
    [row] = [r for r in csv.DictReader(io.StringIO(export)) if r["phone"] == toll_free]
    assert row["status"] == row["lead_status"] == "skipped_window"
    assert "never open at once" in row["error_message"]
    await stack.save_history(run_workflow_id(run_id), "run_skipped_window")


async def test_a_run_outside_calling_hours_says_when_its_window_opens(stack: Stack) -> None:
    """The first five minutes: a run started at night shows its leads waiting and says when the
    window opens, in the API and on the command line."""
    business = await stack.create_business(cap=3)
    now = datetime.now(UTC)
    # A window that opens in two hours (or at 01:00 tomorrow, when that would cross midnight).
    opens = (now + timedelta(hours=2)).replace(second=0, microsecond=0)
    if opens.date() != now.date() or opens.hour >= 23:
        opens = (now + timedelta(days=1)).replace(hour=1, minute=0, second=0, microsecond=0)
    window = {"start": opens.strftime("%H:%M"), "end": f"{opens.hour + 1:02d}:{opens.minute:02d}"}
    leads = [{"phone": new_number(), "timezone": "UTC"} for _ in range(2)]
    response = await stack.http.post(
        "/v1/runs", json={"leads": leads, "options": {"calling_window": window}}, headers=business.headers
    )
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]

    async def waiting() -> dict | None:
        run = await stack.run(business, run_id)
        return run if run["progress"]["window_waiting"] == 2 else None

    run = await wait_for(waiting, within=30, what="both leads to wait for their window")
    assert datetime.fromisoformat(run["progress"]["window_opens_at"]) == opens
    assert f"calling window opens {opens:%Y-%m-%d %H:%M} UTC" in live_counts(run["progress"])
    assert not await stack.sim_calls(business.caller_id)
    response = await stack.http.post(f"/v1/runs/{run_id}/cancel", headers=business.headers)
    assert response.status_code == 202
