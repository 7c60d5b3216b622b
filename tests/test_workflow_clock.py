"""A run's choices come from its history, not from when its workflow tasks happened to run.

A workflow task retried after the Temporal server restarts can run at another time than the one
its history keeps. A choice made from the workflow's clock can then differ between the live run and
a replay of it, and the run stops with a nondeterminism error. These tests replay real runs with
the workflow-task times moved and check that today's code makes the same choices: when a dial took
(`dial-time-from-result`), and every choice the run's clock decides (`history-clock`): which
leads are due again, whether a lead's calling window is open, which calls have been quiet too long."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from contracts.activities import CallSnapshot
from contracts.messages import LeadRef, PauseRequest, ResumeRequest, RunOptions
from contracts.names import gate_workflow_id, run_workflow_id
from support.drive import execution_chain, new_number, wait_for
from support.stack import Stack, save_history
from tests.fake_world import FakeWorld, WorldRunner, zone_where_it_is
from workflows.business_lines import BusinessLinesWorkflow
from workflows.outbound_run import DIAL_TIME_FROM_RESULT, HISTORY_CLOCK, OutboundRunWorkflow

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


def tasks_read_at(history: WorkflowHistory, shifts: dict[int, float]) -> WorkflowHistory:
    """The same history, with workflow task `n` (counted from 0) started `shifts[n]` seconds later
    (earlier when negative) than it was: what a retried task can read."""
    events, task = list(history.events), -1
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            task += 1
            nanos = event.event_time.ToNanoseconds() + int(shifts.get(task, 0.0) * 1_000_000_000)
            event.event_time.FromNanoseconds(nanos)
    return WorkflowHistory(history.workflow_id, events)


def task_count(history: WorkflowHistory) -> int:
    return sum(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED for e in history.events)


def every_task_read_otherwise(history: WorkflowHistory, by: float = 2.0) -> list[WorkflowHistory]:
    """The history with each of its workflow tasks in turn read `by` seconds early, then as much
    late; and with every task read at a random time up to `by` seconds away."""
    tasks = task_count(history)
    jitter = random.Random(tasks)
    return [
        *(tasks_read_at(history, {n: shift}) for n in range(tasks) for shift in (-by, by)),
        tasks_read_at(history, {n: jitter.uniform(-by, by) for n in range(tasks)}),
    ]


async def run_on_timers(
    world_runner: WorldRunner, env: WorkflowEnvironment
) -> tuple[FakeWorld, WorkflowHistory, WorkflowHistory]:
    """A run whose choices wait on its clock: a lead busy then called again an hour later, a lead
    outside its calling window called when it opens, an answered call whose end was never heard
    of, asked about once it has been quiet too long, and a dial that found every line in use, tried
    again a moment later. Its history, and its business's gate's."""
    noon, night = zone_where_it_is(12), zone_where_it_is(22)
    leads = [
        LeadRef(1, "+14155550601", zones=[noon]),
        LeadRef(2, "+14155550602", zones=[night]),
        LeadRef(3, "+14155550603", zones=[noon]),
        LeadRef(4, "+14155550604", zones=[noon]),
    ]
    script = {
        "+14155550601": ["busy", "completed"],
        "+14155550602": ["completed"],
        "+14155550603": ["in-progress"],
        "+14155550604": ["completed"],
    }
    world = FakeWorld(env, leads, script)
    world.fetched = CallSnapshot(found=True, status="completed", duration=30)
    world.lines_busy = {"+14155550604": 2}
    handle = await world_runner(world, RunOptions(max_attempts=2, retry_delay_seconds=3600))
    result = await handle.result()
    assert result.outcomes == {"answered": 4}
    gate = world_runner.plain.get_workflow_handle(gate_workflow_id(world.business_id))
    return world, await handle.fetch_history(), await gate.fetch_history()


async def test_a_run_that_waits_on_its_clock_replays_the_same_whenever_its_tasks_ran(
    skipping: WorkflowEnvironment, world_runner: WorldRunner
) -> None:
    world, run, gate = await run_on_timers(world_runner, skipping)
    # The retry came an hour later, the lead outside its window when the window opened.
    assert [(d.lead, d.attempt) for d in world.dials][-2:] == [(1, 2), (2, 1)], [
        (d.lead, d.attempt, d.at.isoformat()) for d in world.dials
    ]
    await save_history(skipping.client, run.workflow_id, "run_on_its_clock")
    runs, gates = Replayer(workflows=[OutboundRunWorkflow]), Replayer(workflows=[BusinessLinesWorkflow])
    for history in every_task_read_otherwise(run):
        await runs.replay_workflow(history)
    for history in every_task_read_otherwise(gate):
        await gates.replay_workflow(history)


async def test_before_the_history_clock_a_task_read_at_another_time_changed_the_runs_choices(
    skipping: WorkflowEnvironment, world_runner: WorldRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check above can fail: runs from before `history-clock` read the workflow's clock, and
    some task of theirs, read an hour away, makes another choice on replay. (With time skipping a
    task that follows a timer may run well after the timer was due, so a shift of seconds does not
    always cross a due time; an hour does.)"""
    patched = workflow.patched  # every other change stays, with its marker in history
    monkeypatch.setattr(workflow, "patched", lambda id: id != HISTORY_CLOCK and patched(id))
    _, run, _ = await run_on_timers(world_runner, skipping)
    monkeypatch.undo()
    replayer = Replayer(workflows=[OutboundRunWorkflow])
    await replayer.replay_workflow(run)  # as recorded, it replays
    failed = 0
    for history in every_task_read_otherwise(run, by=3600.0):
        try:
            await replayer.replay_workflow(history)
        except NondeterminismError:
            failed += 1
    assert failed > 0


async def test_a_signal_that_says_it_was_sent_at_another_time_does_not_move_the_calling_window(
    skipping: WorkflowEnvironment, world_runner: WorldRunner
) -> None:
    """A signal's `at` is the sender's word: one hours ahead (a replica whose clock is off, a signal
    typed into the Web UI) or not a time at all does not open a lead's calling window, nor wedge the
    run; the run reads the time instead, and calls the lead when its window opens."""
    zone = zone_where_it_is(22)
    night = LeadRef(1, "+14155550701", zones=[zone])
    world = FakeWorld(skipping, [night], {night.phone: ["completed"]})
    started = datetime.now(UTC)
    handle = await world_runner(world, RunOptions(), auto_skip=False)  # 08:00-21:00 local

    async def waiting_for_its_window() -> bool:
        return (await handle.query(OutboundRunWorkflow.progress)).window_waiting == 1

    await wait_for(waiting_for_its_window, within=30, what="the lead to wait for its window")
    await handle.signal(OutboundRunWorkflow.pause, PauseRequest(at=time.time() + 12 * 3600))
    await handle.signal(OutboundRunWorkflow.resume, ResumeRequest(at=float("inf")))
    await handle.signal(OutboundRunWorkflow.pause, PauseRequest("checked", at=float("nan")))

    async def paused() -> bool:
        return (await handle.query(OutboundRunWorkflow.progress)).status == "paused"

    await wait_for(paused, within=30, what="the run to take the three signals")
    assert world.dials == []
    await handle.signal(OutboundRunWorkflow.resume, ResumeRequest())
    await skipping.fast_forward(handle, timedelta(hours=11))
    assert (await handle.result()).outcomes == {"answered": 1}
    [dial] = world.dials
    local = dial.at.astimezone(ZoneInfo(zone))
    assert local.date() > started.astimezone(ZoneInfo(zone)).date() and 8 <= local.hour < 21
