"""What an operator does to a live run in the Temporal Web UI or CLI (pause by signal, terminate,
reset), done through the Temporal client mid-run with calls live: the line cap, one call per lead
and no stuck run hold throughout."""

from __future__ import annotations

from collections import Counter

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.worker import Replayer

from bench.operators import reset_to_first_workflow_task
from contracts.messages import CallStatusEvent, LineDemand, RunProgress
from contracts.names import RUN_STATUS, gate_workflow_id, run_workflow_id
from contracts.statuses import FINAL_ATTEMPT_STATUSES
from db.models import Run
from support.drive import as_its_worker_replays, execution_chain, new_number, wait_for
from support.stack import Stack, save_history
from tests.conftest import SimulatorKnobs
from workflows.business_lines import BusinessLinesWorkflow
from workflows.outbound_run import OutboundRunWorkflow


async def _idle(handle: WorkflowHandle) -> bool:
    """The workflow's latest execution has nothing under way: no activity and no workflow task."""
    raw = (await handle.describe()).raw_description
    return not raw.pending_activities and not raw.HasField("pending_workflow_task")


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
    await save_history(
        stack.temporal, run_workflow_id(run_id), "run_paused_across_continue_as_new", first_execution=True
    )
    assert len(await stack.sim_calls(business.caller_id)) == placed

    response = await stack.http.post(f"/v1/runs/{run_id}/resume", headers=business.headers)
    assert response.status_code == 202
    run = await stack.wait_run_ends(business, run_id, within=60)
    assert run["status"] == "completed"
    assert run["progress"]["outcomes"]["answered"] == len(phones)
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == Counter(phones)
    assert await stack.peak_concurrency([business.caller_id]) <= 2


async def _calls_live(stack: Stack, phones: list[str]) -> int:
    """How many calls to these numbers the carrier has going now."""
    wanted = set(phones)
    return sum(
        1
        for c in (await stack.sim.get("/_sim/calls")).json()["calls"]
        if c["to"] in wanted and not c["ended_at"]
    )


async def test_terminating_the_line_gate_mid_run_keeps_the_cap(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """I1: a fresh gate does not grant lines that the runs still hold; they are in use until the
    calls on them end, whatever the gate's state says."""
    await sim_knobs(talk_seconds=(1.0, 2.0))
    business = await stack.create_business(cap=3)
    long_run, short_run, later_run = ([new_number() for _ in range(n)] for n in (18, 4, 9))
    await stack.force_outcomes(dict.fromkeys(long_run + short_run + later_run, "completed"))
    first = await stack.start_run(business, long_run)
    second = await stack.start_run(business, short_run)

    async def both_runs_calling() -> bool:
        return await _calls_live(stack, long_run) > 0 and await _calls_live(stack, short_run) > 0

    await wait_for(both_runs_calling, within=30, what="both runs to have calls live")
    await stack.temporal.get_workflow_handle(gate_workflow_id(business.id)).terminate("operator")
    assert (await stack.wait_run_ends(business, second, within=60))["status"] == "completed"
    third = await stack.start_run(business, later_run)

    for run_id, phones in ((first, long_run), (third, later_run)):
        run = await stack.wait_run_ends(business, run_id, within=120)
        assert run["status"] == "completed"
        assert run["progress"]["outcomes"]["answered"] == len(phones)
    assert await stack.peak_concurrency([business.caller_id]) <= 3
    called = Counter(c["to"] for c in await stack.sim_calls(business.caller_id))
    assert called == Counter(long_run + short_run + later_run)
    await stack.save_history(gate_workflow_id(business.id), "gate_started_afresh")


async def test_a_gate_reset_mid_run_keeps_the_cap_and_its_history_replays(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """I1 and I4: an operator resets the line gate to its first workflow task while two runs hold
    its lines. The runs finish within the cap, and the reset gate's history replays as its worker
    replays it (with its own run id, which the gate tells its executions apart by)."""
    await sim_knobs(talk_seconds=(1.0, 2.0))
    business = await stack.create_business(cap=3)
    first, second = [new_number() for _ in range(12)], [new_number() for _ in range(6)]
    await stack.force_outcomes(dict.fromkeys(first + second, "completed"))
    first_id = await stack.start_run(business, first)
    second_id = await stack.start_run(business, second)

    async def both_runs_calling() -> bool:
        return await _calls_live(stack, first) > 0 and await _calls_live(stack, second) > 0

    await wait_for(both_runs_calling, within=30, what="both runs to have calls live")
    assert await reset_to_first_workflow_task(stack.temporal, gate_workflow_id(business.id))
    for run_id, phones in ((first_id, first), (second_id, second)):
        run = await stack.wait_run_ends(business, run_id, within=120)
        assert run["status"] == "completed" and run["progress"]["outcomes"]["answered"] == len(phones)
    assert await stack.peak_concurrency([business.caller_id]) <= 3
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == Counter(first + second)

    gate = gate_workflow_id(business.id)
    replayer = Replayer(workflows=[BusinessLinesWorkflow])
    executions = [e async for e in stack.temporal.list_workflows(f'WorkflowId="{gate}"')]
    assert len(executions) >= 2, "the gate was never reset, so this test proved nothing"
    for execution in executions:
        handle = stack.temporal.get_workflow_handle(gate, run_id=execution.run_id)
        await replayer.replay_workflow(as_its_worker_replays(await handle.fetch_history(), execution.run_id))


async def test_gate_terminated_a_run_terminated_and_another_reset_mid_run(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """What an operator might do in the Web UI, all at once with calls live: terminate the gate,
    terminate one run and reset another to its first workflow task. The carrier never has more than
    the cap in flight, no number is dialed twice, the reset run and the untouched one finish, and the
    terminated run's calls are hung up and it is not shown running."""
    await sim_knobs(talk_seconds=(1.0, 2.0))
    business = await stack.create_business(cap=3)
    doomed, reset, untouched = ([new_number() for _ in range(n)] for n in (9, 12, 12))
    await stack.force_outcomes(dict.fromkeys(doomed + reset + untouched, "completed"))
    # The doomed run's first call would go on for a minute: only a hang-up ends it sooner.
    await sim_knobs(talk_seconds_by_to={doomed[0]: 60.0})
    doomed_id = await stack.start_run(business, doomed)
    reset_id = await stack.start_run(business, reset)
    untouched_id = await stack.start_run(business, untouched)

    async def every_run_calling() -> bool:
        called = {c["to"] for c in await stack.sim_calls(business.caller_id)}
        return (
            await _calls_live(stack, doomed) > 0
            and bool(called & set(reset))
            and bool(called & set(untouched))
        )

    await wait_for(every_run_calling, within=30, what="every run to have placed a call")
    await stack.temporal.get_workflow_handle(gate_workflow_id(business.id)).terminate("operator")
    await stack.temporal.get_workflow_handle(run_workflow_id(doomed_id)).terminate("operator")
    assert await reset_to_first_workflow_task(stack.temporal, run_workflow_id(reset_id))

    async def doomed_calls_hung_up() -> bool:
        return await _calls_live(stack, doomed) == 0

    await wait_for(doomed_calls_hung_up, within=30, what="the terminated run's calls to be hung up")
    for run_id, phones in ((reset_id, reset), (untouched_id, untouched)):
        run = await stack.wait_run_ends(business, run_id, within=180)
        assert run["status"] == "completed", run
        assert run["progress"]["outcomes"]["answered"] == len(phones)
    assert await stack.peak_concurrency([business.caller_id]) <= 3
    called = Counter(c["to"] for c in await stack.sim_calls(business.caller_id))
    assert all(count == 1 for count in called.values()), called
    assert set(called) >= set(reset + untouched)

    async def doomed_run_settled() -> dict | None:
        run = await stack.run(business, doomed_id)
        attempts = await stack.attempts(doomed_id)
        settled = run["status"] == "failed" and all(a.status in FINAL_ATTEMPT_STATUSES for a in attempts)
        return run if settled else None

    run = await wait_for(
        doomed_run_settled, within=30, what="the terminated run's row and calls to be settled"
    )
    assert "terminated" in run["status_reason"]
    async with stack.sessions() as session:
        row = await session.get(Run, doomed_id)
        assert row is not None and row.status == "failed" and row.finished_at is not None
    assert {lead.status for lead in await stack.leads(doomed_id)} <= {"answered", "cancelled"}
    await stack.save_history(run_workflow_id(reset_id), "run_reset_by_operator")
    await stack.save_history(gate_workflow_id(business.id), "gate_reaped_a_gone_run")


async def test_a_terminated_runs_calls_are_hung_up_before_its_lines_are_used_again(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """I1 and I3: a run terminated in the Web UI cannot hang up its own calls; the gate's reaper does,
    its lines are used again only once Twilio says those calls ended, and the run ends `failed`."""
    business = await stack.create_business(cap=2)
    terminated, later = [new_number() for _ in range(4)], [new_number() for _ in range(3)]
    await stack.force_outcomes(dict.fromkeys(terminated + later, "completed"))
    await sim_knobs(talk_seconds_by_to=dict.fromkeys(terminated, 60.0))
    terminated_id = await stack.start_run(business, terminated)

    async def holding_both_lines() -> bool:
        return await _calls_live(stack, terminated) == 2

    await wait_for(holding_both_lines, within=30, what="the first run's calls to be live on both lines")
    await stack.temporal.get_workflow_handle(run_workflow_id(terminated_id)).terminate("operator")
    later_id = await stack.start_run(business, later)

    run = await stack.wait_run_ends(business, later_id, within=60)
    assert run["status"] == "completed" and run["progress"]["outcomes"]["answered"] == 3
    assert await stack.peak_concurrency([business.caller_id]) <= 2
    assert await _calls_live(stack, terminated) == 0  # hung up, not left to run their minute
    async with stack.sessions() as session:
        row = await session.get(Run, terminated_id)
        assert row is not None and row.status == "failed"
        assert row.status_reason == "the run's workflow was terminated in Temporal"
    attempts = await stack.attempts(terminated_id)
    # Hung up: answered calls end `completed`, ringing ones `canceled`.
    assert len(attempts) == 2 and all(a.status in ("completed", "canceled") for a in attempts)
    assert {lead.status for lead in await stack.leads(terminated_id)} <= {"answered", "cancelled"}


async def test_a_run_terminated_with_its_gate_has_its_calls_hung_up_with_no_other_run_about(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """An operator terminates a business's gate and its only run, calls live: no run will ever ask
    the gate for lines again, yet the calls are hung up and the run ends `failed`."""
    business = await stack.create_business(cap=2)
    phones = [new_number() for _ in range(3)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    await sim_knobs(talk_seconds_by_to=dict.fromkeys(phones, 120.0))
    run_id = await stack.start_run(business, phones)

    async def holding_both_lines() -> bool:
        return await _calls_live(stack, phones) == 2

    await wait_for(holding_both_lines, within=30, what="the run's calls to be live on both lines")
    await stack.temporal.get_workflow_handle(gate_workflow_id(business.id)).terminate("operator")
    await stack.temporal.get_workflow_handle(run_workflow_id(run_id)).terminate("operator")

    async def hung_up_and_ended() -> bool:
        async with stack.sessions() as session:
            row = await session.get(Run, run_id)
        return await _calls_live(stack, phones) == 0 and row is not None and row.status == "failed"

    await wait_for(hung_up_and_ended, within=45, what="the calls hung up and the run ended failed")
    assert len(await stack.sim_calls(business.caller_id)) == 2


async def test_a_run_reset_then_cancelled_reports_the_outcomes_its_calls_had(stack: Stack) -> None:
    """I7: a run reset to its first workflow task after some of its calls were answered, then
    cancelled before it reached those leads again. What the workflow reports (its result, in the
    Web UI) is what the leads table says, not `cancelled` for calls that were answered."""
    business = await stack.create_business(cap=2)
    phones = [new_number() for _ in range(8)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    run_id = await stack.start_run(business, phones)

    async def some_answered() -> bool:
        return sum(1 for lead in await stack.leads(run_id) if lead.status == "answered") >= 2

    await wait_for(some_answered, within=30, what="two leads answered")
    response = await stack.http.post(f"/v1/runs/{run_id}/pause", headers=business.headers)
    assert response.status_code == 202

    async def quiet() -> bool:
        return await _calls_live(stack, phones) == 0

    await wait_for(quiet, within=30, what="the paused run's calls to end")
    # The pause is applied again after the reset: the new execution dials nothing before the cancel.
    assert await reset_to_first_workflow_task(stack.temporal, run_workflow_id(run_id))
    response = await stack.http.post(f"/v1/runs/{run_id}/cancel", headers=business.headers)
    assert response.status_code == 202
    run = await stack.wait_run_ends(business, run_id, within=60)
    assert run["status"] == "cancelled"

    result = await stack.temporal.get_workflow_handle(run_workflow_id(run_id)).result()
    table = Counter(lead.status for lead in await stack.leads(run_id))
    assert table["answered"] >= 2
    assert {k: v for k, v in result["outcomes"].items() if v} == dict(table)
    assert result["done"] == len(phones)
    await save_history(stack.temporal, run_workflow_id(run_id), "run_reset_then_cancelled")


async def test_a_run_waiting_for_lines_when_the_gate_is_terminated_still_gets_them(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """A run that asked for lines and holds none when an operator terminates the gate: the gate
    started afresh (by the other run's next demand, or a worker) learns of it and grants it lines."""
    business = await stack.create_business(cap=2)
    holding, waiting = [new_number() for _ in range(2)], [new_number() for _ in range(2)]
    await stack.force_outcomes(dict.fromkeys(holding + waiting, "completed"))
    await sim_knobs(talk_seconds_by_to=dict.fromkeys(holding, 8.0))
    holding_id = await stack.start_run(business, holding)

    async def both_lines_held() -> bool:
        return await _calls_live(stack, holding) == 2

    await wait_for(both_lines_held, within=30, what="the first run's calls on both lines")
    waiting_id = await stack.start_run(business, waiting)
    waiter = stack.temporal.get_workflow_handle(run_workflow_id(waiting_id))

    async def asked_for_lines() -> bool:
        return await _asked(waiter)

    await wait_for(asked_for_lines, within=30, what="the second run to ask the gate for lines")
    await stack.temporal.get_workflow_handle(gate_workflow_id(business.id)).terminate("operator")

    run = await stack.wait_run_ends(business, waiting_id, within=60)
    assert run["status"] == "completed" and run["progress"]["outcomes"]["answered"] == 2
    assert (await stack.wait_run_ends(business, holding_id, within=30))["status"] == "completed"
    assert await stack.peak_concurrency([business.caller_id]) <= 2
    await stack.save_history(gate_workflow_id(business.id), "gate_greeted_a_waiting_run")


async def _asked(handle: WorkflowHandle) -> bool:
    """Whether the run's `request_lines` activity has delivered a demand to its gate."""
    history = await handle.fetch_history()
    requests = {
        e.event_id
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "request_lines"
    }
    return any(
        e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
        and e.activity_task_completed_event_attributes.scheduled_event_id in requests
        for e in history.events
    )


async def test_a_run_the_gate_has_forgotten_still_ends_when_it_is_terminated(stack: Stack) -> None:
    """Found by the chaos run: a run waiting for a retry holds and wants no line, so its gate, once
    continued as new, no longer knows it. An operator then terminated it: nothing asked the gate to
    look, the gate (running for the business) was never started afresh, and the run's row said
    `running` for good. The workers' gate watch now finds runs whose rows are live but whose
    workflows are not, and has their gate settle them."""
    business = await stack.create_business(cap=1)
    phone = new_number()
    await stack.force_outcomes({phone: "busy"})
    options = {"max_attempts": 2, "retry_on": ["busy"], "retry_delay_seconds": 3600}
    run_id = await stack.start_run(business, [phone], options)

    async def waiting_to_retry() -> bool:
        return (await stack.run(business, run_id))["progress"]["retry_waiting"] == 1

    await wait_for(waiting_to_retry, within=30, what="the run to wait for its retry")
    gate = stack.temporal.get_workflow_handle(gate_workflow_id(business.id))
    first_gate = (await gate.describe()).run_id

    # Demands of runs already done grow the gate's history until the server suggests continuing as
    # new, as the busy business's other runs did; none of them makes the gate look at the database.
    done_runs = iter(range(1_000_000))

    async def gate_continued_as_new() -> bool:
        gone = LineDemand(run_workflow_id(f"done-{next(done_runs)}"), seq=1, cap=1, done=True, held=0)
        await gate.signal(BusinessLinesWorkflow.demand, gone)
        return (await gate.describe()).run_id != first_gate

    await wait_for(gate_continued_as_new, within=60, what="the gate to continue as new", interval=0)
    await stack.temporal.get_workflow_handle(run_workflow_id(run_id)).terminate("operator")

    async def ended_failed() -> bool:
        async with stack.sessions() as session:
            row = await session.get(Run, run_id)
        return row is not None and row.status == "failed"

    await wait_for(ended_failed, within=30, what="the terminated run to end failed")
    run = await stack.run(business, run_id)
    assert run["status"] == "failed" and run["progress"]["retry_waiting"] == 0
    assert len(await stack.sim_calls(business.caller_id)) == 1
