"""A run's choices come from its history, not from when its workflow tasks happened to run.

A workflow task retried after the Temporal server restarts can run at another time than the one
its history keeps. A choice made from the workflow's clock can then differ between the live run and
a replay of it, and the run stops with a nondeterminism error. These tests replay real runs with
the workflow-task times moved and check that today's code makes the same choices."""

from __future__ import annotations

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from tests.harness import Stack, execution_chain, new_number, wait_for
from workflows.names import run_workflow_id
from workflows.outbound_run import DIAL_TIME_FROM_RESULT, OutboundRunWorkflow

LATE_BY_SECONDS = 2


def answers_read_late(history: WorkflowHistory) -> WorkflowHistory:
    """The same history, with each workflow task that learns a dial's answer started
    LATE_BY_SECONDS later than it was (and everything after it moved on as much)."""
    events = list(history.events)
    dials = {
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "place_call"
    }
    shift, answered = 0, False
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            answered = answered or event.activity_task_completed_event_attributes.scheduled_event_id in dials
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and answered:
            shift, answered = shift + LATE_BY_SECONDS, False
        event.event_time.FromNanoseconds(event.event_time.ToNanoseconds() + shift * 1_000_000_000)
    return WorkflowHistory(history.workflow_id, events)


async def run_to_end(stack: Stack) -> list[WorkflowHistory]:
    business = await stack.create_business(cap=3)
    phones = [new_number() for _ in range(8)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    run_id = await stack.start_run(business, phones)
    await stack.wait_run_ends(business, run_id)

    async def closed() -> bool:
        return (
            await stack.temporal.get_workflow_handle(run_workflow_id(run_id)).describe()
        ).close_time is not None

    await wait_for(closed, within=30, what="the run's workflow to close")
    return await execution_chain(stack.temporal, run_workflow_id(run_id))


async def test_a_run_replays_the_same_however_late_its_dial_answers_were_read(stack: Stack) -> None:
    histories = await run_to_end(stack)
    replayer = Replayer(workflows=[OutboundRunWorkflow])
    for history in histories:
        await replayer.replay_workflow(answers_read_late(history))


async def test_before_the_fix_the_dial_answers_time_changed_the_runs_choices(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: the code before `dial-time-from-result` timed dials with the
    workflow's clock, and its runs do not replay once that clock reads differently."""
    await stack.stop_worker()
    with monkeypatch.context() as before:
        patched = workflow.patched  # every other change stays, with its marker in history
        before.setattr(workflow, "patched", lambda id: id != DIAL_TIME_FROM_RESULT and patched(id))
        await stack.start_worker()
        histories = await run_to_end(stack)
        await stack.stop_worker()
    replayer = Replayer(workflows=[OutboundRunWorkflow])
    for history in histories:
        await replayer.replay_workflow(history)  # as recorded, it replays
    with pytest.raises(NondeterminismError):
        for history in histories:
            await replayer.replay_workflow(answers_read_late(history))
