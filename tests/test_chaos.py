"""The chaos run, short: runs on a misbehaving carrier while the worker, the API and the Temporal dev
server are killed at random moments, then DESIGN.md's invariants checked from the carrier's records
and the database (`bench.chaos`; `python -m bench.chaos` is the full size). And the checks
themselves: each finds what breaks its invariant, and nothing in a clean record."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Callable

import pytest

from bench.chaos import chaos
from bench.chaos_checks import AttemptRow, CarrierCall, Evidence, ProgressSample, RunEvidence, check
from bench.chaos_plan import SHORT

CALLER = "+14155550100"


@pytest.mark.integration  # starts a system of its own
async def test_a_short_chaos_run_keeps_every_invariant() -> None:
    async with asyncio.timeout(300):
        report = await chaos(SHORT)

    repeat = f"repeat with: {report['repeat_with']}; logs and the dev server's state in {report['logs']}"
    assert report["violations"] == [], f"{repeat}\n{json.dumps(report['violations'], indent=1)[:5000]}"
    # The faults happened, or the run proved nothing.
    faults = report["process_faults"]["by_kind"]
    assert faults["worker_kill"] > 0 and faults["api_restart"] >= 1 and faults["temporal_restart"] >= 1
    carrier = report["simulator_faults"]
    assert carrier["create_429"] + carrier["create_5xx"] + carrier["create_5xx_after_create"] > 0
    assert carrier["callbacks_dropped"] + carrier["callbacks_duplicated"] + carrier["callbacks_reordered"] > 0
    assert report["recovery"]["runs_live_at_last_fault"] > 0
    assert report["progress_samples"] > 0
    # Every run ended: the one cancelled mid-way cancelled, the others completed.
    runs = report["runs"]
    cancelled = len(runs["cancelled_mid_way"])
    assert runs["started"] == SHORT.businesses * SHORT.runs_per_business
    assert runs["by_status"].get("cancelled", 0) == cancelled == SHORT.cancels
    assert runs["by_status"].get("completed", 0) == runs["started"] - cancelled
    assert runs["leads"] == runs["started"] * SHORT.leads_per_run


def clean_record() -> Evidence:
    """One completed run of two leads on two lines, as every record should look."""
    calls = [
        CarrierCall("CA1", CALLER, "+14155550101", "completed", 10.0, 13.0, 3, "r1", 1, 1),
        CarrierCall("CA2", CALLER, "+14155550102", "busy", 11.0, 12.0, 0, "r1", 2, 1),
    ]
    run = RunEvidence(
        id="r1",
        business_id="b1",
        caller_id=CALLER,
        cap=2,
        max_attempts=1,
        status="completed",
        finished=True,
        total_leads=2,
        leads={1: "answered", 2: "busy"},
        attempts=[AttemptRow(1, 1, "CA1", "completed", 3), AttemptRow(2, 1, "CA2", "busy", None)],
        api_progress={
            "total": 2,
            "queued": 0,
            "dialing": 0,
            "in_flight": 0,
            "done": 2,
            "outcomes": {"answered": 1, "busy": 1, "cancelled": 0},
        },
        workflow_status="COMPLETED",
        workflow_result={"status": "completed", "done": 2, "outcomes": {"answered": 1, "busy": 1}},
    )
    live = {"total": 2, "queued": 1, "dialing": 0, "in_flight": 1, "retry_waiting": 0, "window_waiting": 0}
    sample = ProgressSample("r1", 10.5, "running", {**live, "done": 0, "outcomes": {}}, calls_created=1)
    return Evidence({CALLER: 2}, [run], calls, [sample], started={"r1"}, checked_at=20.0)


def over_cap(e: Evidence) -> None:
    e.caps[CALLER] = e.runs[0].cap = 1


def dialed_twice(e: Evidence) -> None:
    e.calls.append(CarrierCall("CA3", CALLER, "+14155550101", "completed", 14.0, 15.0, 1, "r1", 1, 1))


def lead_left_queued(e: Evidence) -> None:
    e.runs[0].leads[2] = "queued"


def run_never_ended(e: Evidence) -> None:
    e.runs[0].status, e.runs[0].finished = "running", False


def outcome_differs(e: Evidence) -> None:
    e.runs[0].attempts[0] = AttemptRow(1, 1, "CA1", "no-answer", None)


def called_after_cancel(e: Evidence) -> None:
    e.runs[0].status, e.runs[0].cancel_accepted_at = "cancelled", 10.5


def dialed_while_paused(e: Evidence) -> None:
    e.runs[0].dials_while_paused = [{"execution": "r1-2", "event": 40}]


def terminated_yet_completed(e: Evidence) -> None:
    e.runs[0].terminated_at = 10.5  # its workflow COMPLETED: the terminate did not hold


def progress_without_a_call(e: Evidence) -> None:
    e.samples[0] = ProgressSample("r1", 10.5, "running", e.samples[0].progress, calls_created=0)


def api_shows_other_counts(e: Evidence) -> None:
    assert e.runs[0].api_progress is not None
    e.runs[0].api_progress["outcomes"]["answered"] = 2


@pytest.mark.parametrize(
    ("invariant", "damage"),
    [
        ("I1", over_cap),
        ("I2", dialed_twice),
        ("I3", lead_left_queued),
        ("I4", run_never_ended),
        ("I5", outcome_differs),
        ("I6", called_after_cancel),
        ("I6", dialed_while_paused),
        ("I3", terminated_yet_completed),
        ("I7", progress_without_a_call),
        ("I7", api_shows_other_counts),
    ],
)
def test_each_check_finds_what_breaks_its_invariant(
    invariant: str, damage: Callable[[Evidence], None]
) -> None:
    assert check(clean_record()) == []
    record = copy.deepcopy(clean_record())
    damage(record)
    assert invariant in {v["invariant"] for v in check(record)}
