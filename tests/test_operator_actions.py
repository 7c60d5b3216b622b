"""What an operator does to a live run in the Temporal Web UI or CLI (pause by signal, terminate,
reset), done through the Temporal client mid-run with calls live: the line cap, one call per lead
and no stuck run hold throughout."""

from __future__ import annotations

from collections import Counter

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle

from tests.harness import Stack, execution_chain, new_number, wait_for
from workflows.messages import CallStatusEvent, RunProgress
from workflows.names import RUN_STATUS, run_workflow_id
from workflows.outbound_run import OutboundRunWorkflow


async def _idle(handle: WorkflowHandle) -> bool:
    """The workflow's latest execution has nothing under way: no activity pending, no task due."""
    description = await handle.describe()
    if description.raw_description.pending_activities:
        return False
    history = await handle.fetch_history()
    return history.events[-1].event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED


def _dials(events: list) -> int:
    return sum(
        1
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "place_call"
    )


async def test_a_pause_holds_across_continue_as_new(stack: Stack) -> None:
    """I6: once a pause is accepted, nothing new is dialed until resume, however many times the run
    continues as new meanwhile (a paused run still takes signals, and its history grows)."""
    business = await stack.create_business(cap=2)
    phones = [new_number() for _ in range(20)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    run_id = await stack.start_run(business, phones)
    handle = stack.temporal.get_workflow_handle(run_workflow_id(run_id))

    async def some_calls_placed() -> bool:
        return len(await stack.sim_calls(business.caller_id)) >= 2

    await wait_for(some_calls_placed, within=30, what="calls to be placed")
    response = await stack.http.post(f"/v1/runs/{run_id}/pause", headers=business.headers)
    assert response.status_code == 202, response.text

    async def paused_and_quiet() -> bool:
        run = await stack.run(business, run_id)
        progress = run["progress"]
        return run["status"] == "paused" and progress["in_flight"] == 0 and progress["dialing"] == 0

    await wait_for(paused_and_quiet, within=30, what="the run to pause with no call in flight")
    placed = len(await stack.sim_calls(business.caller_id))
    first_execution = (await handle.describe()).run_id

    # Late duplicate callbacks (for a call the run no longer waits on) grow the history until the
    # server suggests continuing as new, which a run with nothing under way does at once.
    stale = CallStatusEvent(lead_id=0, attempt=1, call_sid="CA" + "0" * 32, status="completed")

    async def continued_as_new() -> bool:
        await handle.signal(OutboundRunWorkflow.call_status, stale)
        return (await handle.describe()).run_id != first_execution

    await wait_for(continued_as_new, within=60, what="the paused run to continue as new", interval=0)
    await wait_for(lambda: _idle(handle), within=30, what="the new execution to settle")

    progress: RunProgress = await handle.query(OutboundRunWorkflow.progress)
    assert progress.status == "paused"
    assert progress.status_reason is not None
    assert (await handle.describe()).typed_search_attributes.get(RUN_STATUS) == "paused"
    assert (await stack.run(business, run_id))["status"] == "paused"
    chain = await execution_chain(stack.temporal, run_workflow_id(run_id))
    assert _dials(list(chain[-1].events)) == 0
    assert len(await stack.sim_calls(business.caller_id)) == placed

    response = await stack.http.post(f"/v1/runs/{run_id}/resume", headers=business.headers)
    assert response.status_code == 202
    run = await stack.wait_run_ends(business, run_id, within=60)
    assert run["status"] == "completed"
    assert run["progress"]["outcomes"]["answered"] == len(phones)
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == Counter(phones)
    assert await stack.peak_concurrency([business.caller_id]) <= 2
