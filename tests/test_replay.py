"""Saved histories of real runs replay on today's workflow code: a change that would break runs in
flight fails here, not in production. Refresh with `SAVE_HISTORIES=1 make pytest` only when a change
is deliberately incompatible and guarded by `workflow.patched()`, after moving today's files into a
folder of their own under `histories/` (`v1/` holds those from before the `outcomes-ride-dials`
patch, `v2/` those from before the line leases and `dial-answers-v2`, `v3/` those from before
`history-clock`): every folder keeps replaying."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from workflows.business_events import BusinessEventsWorkflow
from workflows.business_lines import BusinessLinesWorkflow
from workflows.outbound_run import OutboundRunWorkflow
from workflows.recording_retention import RecordingRetentionWorkflow

FOLDER = Path(__file__).parent / "histories"
# The execution `gate_reset_by_operator` was reset from.
RESET_FROM = "a587bc26-cccc-46ed-8a61-1272dcc48f57"
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
    assert {f"v3/{name}" for name in main_paths} <= set(HISTORIES), "before the history clock"
    operators = {
        "gate_started_afresh",
        "gate_reaped_a_gone_run",
        "gate_reset_by_operator",
        "run_reset_by_operator",
    }
    operators |= {"run_paused_across_continue_as_new", "run_skipped_window", "run_cancelled_without_database"}
    operators |= {"run_reset_then_cancelled", "gate_greeted_a_waiting_run"}
    assert operators <= set(HISTORIES), "what operators and Twilio do"
    answers = {"run_paused_by_its_answer", "run_left_voicemail", "recordings_past_retention"}
    assert answers <= set(HISTORIES), "what an answered call does"


@pytest.mark.parametrize("name", sorted(HISTORIES))
async def test_saved_history_replays(name: str) -> None:
    history = WorkflowHistory.from_json(name, HISTORIES[name])
    replayer = Replayer(
        workflows=[
            OutboundRunWorkflow,
            BusinessLinesWorkflow,
            BusinessEventsWorkflow,
            RecordingRetentionWorkflow,
        ]
    )
    await replayer.replay_workflow(history)


async def test_a_reset_gate_replays_only_as_its_worker_sees_it() -> None:
    """The gate tells its executions apart by run id. An execution an operator reset (this one, from
    a chaos run) starts with a copy of the start event of the execution it was reset from, and the
    SDK's Replayer takes the run id from there: replaying such a history as fetched reads another
    run id than its worker did, and fails. Saved histories and the chaos run's replays give each
    execution its own run id (`support.stack.as_its_worker_replays`)."""
    history = WorkflowHistory.from_json("gate", HISTORIES["gate_reset_by_operator"])
    replayer = Replayer(workflows=[BusinessLinesWorkflow])
    await replayer.replay_workflow(history)
    events = list(history.events)
    events[0].workflow_execution_started_event_attributes.original_execution_run_id = RESET_FROM
    with pytest.raises(NondeterminismError):
        await replayer.replay_workflow(WorkflowHistory(history.workflow_id, events))
