"""Saved histories of real runs replay on today's workflow code: a change that would break runs in
flight fails here, not in production. Refresh with `SAVE_HISTORIES=1 make pytest` only when a change
is deliberately incompatible and guarded by `workflow.patched()`, after moving today's files into a
folder of their own under `histories/` (`v1/` holds those from before the `outcomes-ride-dials`
patch, `v2/` those from before the line leases and `dial-answers-v2`): every folder keeps replaying."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from workflows.business_events import BusinessEventsWorkflow
from workflows.business_lines import BusinessLinesWorkflow
from workflows.outbound_run import OutboundRunWorkflow

FOLDER = Path(__file__).parent / "histories"
HISTORIES = {
    path.relative_to(FOLDER).with_suffix("").as_posix(): path.read_text()
    for path in sorted(FOLDER.rglob("*.json"))
}


def test_histories_of_the_main_paths_are_kept() -> None:
    main_paths = {"run_completed", "run_cancelled", "run_sharing_lines", "gate_two_runs", "run_retried"}
    main_paths |= {"run_waited_for_window", "run_reconciled", "run_continued_as_new", "events_delivered"}
    assert main_paths <= set(HISTORIES), "today's code"
    before = main_paths - {"run_continued_as_new", "events_delivered"}
    assert {f"v1/{name}" for name in before} <= set(HISTORIES), "before outcomes rode dials"
    assert {f"v2/{name}" for name in main_paths} <= set(HISTORIES), "before the line leases"
    operators = {"gate_started_afresh", "gate_reaped_a_gone_run", "run_reset_by_operator"}
    operators |= {"run_paused_across_continue_as_new", "run_skipped_window", "run_cancelled_without_database"}
    assert operators <= set(HISTORIES), "what operators and Twilio do"


@pytest.mark.parametrize("name", sorted(HISTORIES))
async def test_saved_history_replays(name: str) -> None:
    history = WorkflowHistory.from_json(name, HISTORIES[name])
    replayer = Replayer(workflows=[OutboundRunWorkflow, BusinessLinesWorkflow, BusinessEventsWorkflow])
    await replayer.replay_workflow(history)
