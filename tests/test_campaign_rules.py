"""Campaign rules over days of virtual time: retries, calling windows, pauses. The run workflow and
the line gate are the real ones, on a Temporal dev server with time skipping; the database and the
carrier are replaced by same-named fake activities (the end-to-end tests cover those)."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from temporalio import activity
from temporalio.testing import WorkflowEnvironment

from contracts.activities import (
    CallSnapshot,
    DialInput,
    DialOutput,
    LoadLeadsInput,
    LoadLeadsOutput,
    SetRunStatusInput,
)
from contracts.messages import (
    CallStatusEvent,
    LeadRef,
    PauseRequest,
    ResumeRequest,
    RunOptions,
)
from support.drive import wait_for
from support.stack import save_history
from tests.fake_world import ALWAYS, Dial, FakeWorld, WorldRunner, zone_where_it_is
from workflows.outbound_run import OutboundRunWorkflow


async def test_busy_then_answered_on_the_second_attempt_an_hour_later(
    skipping: WorkflowEnvironment, world_runner: WorldRunner
) -> None:
    world = FakeWorld(skipping, [LeadRef(1, "+14155550101")], {"+14155550101": ["busy", "completed"]})
    options = RunOptions(max_attempts=3, retry_delay_seconds=3600, calling_window=ALWAYS)
    handle = await world_runner(world, options)
    result = await handle.result()

    assert result.status == "completed"
    assert result.outcomes == {"answered": 1}
    assert [(d.lead, d.attempt) for d in world.dials] == [(1, 1), (1, 2)]
    assert world.dials[1].at - world.dials[0].at >= timedelta(hours=1)
    assert [(o.attempt, o.status, o.final) for o in world.outcomes] == [
        (1, "busy", False),
        (2, "completed", True),
    ]
    await save_history(skipping.client, handle.id, "run_retried")


async def test_an_answered_call_whose_end_was_never_heard_of_frees_its_line_in_minutes(
    skipping: WorkflowEnvironment, world_runner: WorldRunner
) -> None:
    # Answered, then silence: the `completed` callback was lost. Twilio, asked, says it ended.
    world = FakeWorld(skipping, [LeadRef(1, "+14155550104")], {"+14155550104": ["in-progress"]})
    world.fetched = CallSnapshot(found=True, status="completed", duration=240)
    options = RunOptions(calling_window=ALWAYS, call_time_limit_seconds=3600)
    handle = await world_runner(world, options)
    result = await handle.result()

    assert result.outcomes == {"answered": 1}
    ended = (await handle.fetch_history()).events[-1].event_time.ToDatetime(tzinfo=UTC)
    assert ended - world.dials[0].at < timedelta(minutes=10)  # not the call's hour-long time limit
    assert [(o.status, o.duration) for o in world.outcomes] == [("completed", 240)]
    await save_history(skipping.client, handle.id, "run_rechecked_answered_call")


async def test_a_lead_where_it_is_22_00_waits_until_08_00_local(
    skipping: WorkflowEnvironment, world_runner: WorldRunner
) -> None:
    zone = zone_where_it_is(22)
    night = LeadRef(1, "+14155550102", zones=[zone])
    day = LeadRef(2, "+14155550103", zones=[zone_where_it_is(12)])
    world = FakeWorld(skipping, [night, day], {night.phone: ["completed"], day.phone: ["completed"]})
    started = datetime.now(UTC)
    handle = await world_runner(world, RunOptions())  # 08:00-21:00 local, every day
    result = await handle.result()

    assert result.outcomes == {"answered": 2}
    assert [d.lead for d in world.dials] == [2, 1]  # the other lead went on at once
    night_dial = world.dials[1]
    local = night_dial.at.astimezone(ZoneInfo(zone))
    assert (local.hour, local.minute) == (8, 0), local
    assert night_dial.at - started > timedelta(hours=9)
    await save_history(skipping.client, handle.id, "run_waited_for_window")


async def test_a_retry_timer_that_fires_while_paused_waits_for_resume(
    skipping: WorkflowEnvironment, world_runner: WorldRunner
) -> None:
    lead = LeadRef(1, "+14155550104")
    world = FakeWorld(skipping, [lead], {lead.phone: ["no-answer", "completed"]})
    options = RunOptions(max_attempts=2, retry_delay_seconds=3600, calling_window=ALWAYS)
    handle = await world_runner(world, options, auto_skip=False)

    async def first_attempt_ended() -> bool:
        progress = await handle.query(OutboundRunWorkflow.progress)
        return progress.retry_waiting == 1

    await wait_for(first_attempt_ended, within=30, what="the first attempt to end")
    await handle.signal(OutboundRunWorkflow.pause, PauseRequest("lunch"))
    # Let the retry timer fire in virtual time while paused.
    await skipping.fast_forward(handle, timedelta(hours=2))
    progress = await handle.query(OutboundRunWorkflow.progress)
    assert progress.status == "paused"
    assert len(world.dials) == 1
    assert progress.queued == 1 and progress.retry_waiting == 0

    await handle.signal(OutboundRunWorkflow.resume, ResumeRequest())
    result = await handle.result()
    assert result.outcomes == {"answered": 1}
    assert [d.attempt for d in world.dials] == [1, 2]
    assert world.dials[1].at - world.dials[0].at >= timedelta(hours=2)


async def test_a_week_long_run_with_pauses(skipping: WorkflowEnvironment, world_runner: WorldRunner) -> None:
    leads = [LeadRef(i, f"+1415555011{i}") for i in range(1, 4)]
    script = {lead.phone: ["no-answer", "busy", "no-answer", "completed"] for lead in leads}
    world = FakeWorld(skipping, leads, script)
    options = RunOptions(max_attempts=4, retry_delay_seconds=2 * 86400, calling_window=ALWAYS)
    handle = await world_runner(world, options, auto_skip=False)

    async def dialed_and_waiting(dials: int) -> bool:
        progress = await handle.query(OutboundRunWorkflow.progress)
        return len(world.dials) == dials and progress.retry_waiting == 3

    await wait_for(lambda: dialed_and_waiting(3), within=30, what="first attempts")
    await skipping.fast_forward(handle, timedelta(days=2))
    await wait_for(lambda: dialed_and_waiting(6), within=30, what="second attempts")

    await handle.signal(OutboundRunWorkflow.pause, PauseRequest("long weekend"))
    await skipping.fast_forward(handle, timedelta(days=3))  # the third attempts fall due while paused
    assert len(world.dials) == 6, "nothing is dialed while paused"
    assert (await handle.query(OutboundRunWorkflow.progress)).queued == 3
    await handle.signal(OutboundRunWorkflow.resume, ResumeRequest())

    await wait_for(lambda: dialed_and_waiting(9), within=30, what="third attempts")
    await skipping.fast_forward(handle, timedelta(days=2))
    result = await handle.result()

    assert result.outcomes == {"answered": 3}
    assert sorted((d.lead, d.attempt) for d in world.dials) == [
        (i, a) for i in (1, 2, 3) for a in (1, 2, 3, 4)
    ]
    assert world.dials[-1].at - world.dials[0].at >= timedelta(days=7)
    assert len([o for o in world.outcomes if o.final]) == 3 and len(world.outcomes) == 12


async def test_a_restarted_worker_dials_waiting_leads_once_and_on_time(
    skipping: WorkflowEnvironment, world_runner: WorldRunner
) -> None:
    retried = LeadRef(1, "+14155550121", zones=[zone_where_it_is(12)])
    night = LeadRef(2, "+14155550122", zones=[zone_where_it_is(22)])
    world = FakeWorld(
        skipping, [retried, night], {retried.phone: ["busy", "completed"], night.phone: ["completed"]}
    )
    options = RunOptions(max_attempts=2, retry_delay_seconds=3600)
    started = datetime.now(UTC)
    handle = await world_runner(world, options)

    async def both_waiting() -> bool:
        progress = await handle.query(OutboundRunWorkflow.progress)
        return progress.retry_waiting == 1 and progress.window_waiting == 1

    await wait_for(both_waiting, within=30, what="one lead waiting to retry and one for its window")
    await world_runner.stop_workers()
    await world_runner.start_workers()
    result = await handle.result()

    assert result.outcomes == {"answered": 2}
    assert sorted((d.lead, d.attempt) for d in world.dials) == [(1, 1), (1, 2), (2, 1)]
    by_key = {(d.lead, d.attempt): d.at for d in world.dials}
    assert by_key[(1, 2)] - by_key[(1, 1)] >= timedelta(hours=1)
    assert by_key[(2, 1)].astimezone(ZoneInfo(night.zones[0])).hour == 8
    assert by_key[(2, 1)] - started > timedelta(hours=9)


@dataclass
class SlowToFinishWorld(FakeWorld):
    """A world whose database is slow to take a run's final status the first time it is asked."""

    asked_to_finish: asyncio.Event = field(default_factory=asyncio.Event)

    @activity.defn(name="set_run_status")
    async def set_run_status(self, input: SetRunStatusInput) -> None:
        if input.final and not self.asked_to_finish.is_set():
            self.asked_to_finish.set()
            await asyncio.sleep(3)
            raise RuntimeError("the database did not answer in time")
        self.statuses.append(input.status)


async def test_a_cancel_from_temporal_while_the_run_writes_its_end_still_writes_it(
    skipping: WorkflowEnvironment, world_runner: WorldRunner
) -> None:
    """I3: a cancel request that reaches the run while it writes its final status does not end the
    workflow with the row still saying `running`: the final status is written all the same."""
    lead = LeadRef(1, "+14155550105")
    world = SlowToFinishWorld(skipping, [lead], {lead.phone: ["completed"]})
    handle = await world_runner(world, RunOptions(calling_window=ALWAYS), auto_skip=False)

    await asyncio.wait_for(world.asked_to_finish.wait(), timeout=30)
    await handle.cancel()
    result = await handle.result()
    assert result.status == "completed"
    assert world.statuses[-1] == "completed"


@dataclass
class LostEndingsWorld(FakeWorld):
    """Calls end with the duration the script gives (`completed/40`), or are answered and then never
    heard of again (`silent`): their `completed` callbacks were lost. Asked, Twilio says they ended."""

    @activity.defn(name="place_call")
    async def place_call(self, input: DialInput) -> DialOutput:
        handle = self.env.client.get_workflow_handle(activity.info().workflow_id or "")
        now = await self.env.get_current_time(handle)
        self.dials.append(Dial(input.lead_id, input.attempt, now))
        self.outcomes.extend(input.outcomes)
        sid = f"CA{uuid.uuid4().hex}"
        played = self.script[input.to][input.attempt - 1]
        if played == "silent":
            event = CallStatusEvent(input.lead_id, input.attempt, sid, "in-progress", sequence_number=1)
        else:
            status, seconds = played.split("/")
            event = CallStatusEvent(input.lead_id, input.attempt, sid, status, duration=int(seconds))
        event.at = now.timestamp()
        await handle.signal("call_status", event)
        return DialOutput(sid, "queued", at=now.timestamp())


async def test_calls_whose_end_was_lost_are_asked_about_sooner_when_leads_wait_for_their_lines(
    skipping: WorkflowEnvironment, world_runner: WorldRunner
) -> None:
    """All three lines held by answered calls whose `completed` callbacks were lost, a lead waiting.
    This run's answered calls last 40 s, so calls quiet for much longer than that are asked about
    within a couple of minutes, not after the five minutes of silence any answered call gets."""
    finished = [LeadRef(i, f"+1415555020{i}") for i in range(1, 7)]
    silent = [LeadRef(i, f"+1415555021{i}") for i in range(7, 10)]
    waiting = LeadRef(10, "+14155550220")
    script = {lead.phone: ["completed/40"] for lead in [*finished, waiting]} | {
        lead.phone: ["silent"] for lead in silent
    }
    world = LostEndingsWorld(skipping, [*finished, *silent, waiting], script)
    world.fetched = CallSnapshot(found=True, status="completed", duration=45)
    handle = await world_runner(world, RunOptions(calling_window=ALWAYS))
    result = await handle.result()

    assert result.outcomes == {"answered": 10}
    silent_dialed = max(d.at for d in world.dials if d.lead in {lead.id for lead in silent})
    [last] = [d for d in world.dials if d.lead == waiting.id]
    assert last.at - silent_dialed < timedelta(minutes=3)
    await save_history(skipping.client, handle.id, "run_asked_sooner")


@dataclass
class SlowToPageWorld(FakeWorld):
    """A world whose database is slow to hand over the second page of leads."""

    paging: asyncio.Event = field(default_factory=asyncio.Event)

    @activity.defn(name="load_leads")
    async def load_leads(self, input: LoadLeadsInput) -> LoadLeadsOutput:
        if input.after_lead_id > 0 and not self.paging.is_set():
            self.paging.set()
            await asyncio.sleep(3)
            raise RuntimeError("the database did not answer in time")
        return await super().load_leads(input)


async def test_a_cancel_from_temporal_while_the_run_awaits_an_activity_is_a_cancel(
    skipping: WorkflowEnvironment, world_runner: WorldRunner
) -> None:
    """A cancel request that comes while the run waits on an activity (here, a page of leads the
    database is slow to give) cancels the run as the `cancel` signal does: it ends `cancelled`,
    with its final status written, not failed with its row still `running`."""
    leads = [LeadRef(i, f"+141555503{i:02d}") for i in range(1, 206)]
    world = SlowToPageWorld(skipping, leads, {lead.phone: ["completed"] for lead in leads})
    handle = await world_runner(world, RunOptions(calling_window=ALWAYS), auto_skip=False)

    await asyncio.wait_for(world.paging.wait(), timeout=30)
    await handle.cancel()
    result = await handle.result()
    assert result.status == "cancelled"
    assert world.statuses[-1] == "cancelled"
    assert result.outcomes.get("cancelled", 0) > 0


async def test_a_run_evicted_from_the_cache_after_every_task_still_ends(
    skipping: WorkflowEnvironment, world_runner: WorldRunner
) -> None:
    """A worker that keeps no workflow in memory replays the run for every task and tears it down
    after: each teardown must go through (a run that caught it as a cancel request, or looped on
    it, would spin the worker's CPU), and the run ends as it would have."""
    world_runner.max_cached_workflows = 0
    leads = [LeadRef(i, f"+141555504{i:02d}") for i in range(1, 6)]
    world = FakeWorld(skipping, leads, {lead.phone: ["completed"] for lead in leads})
    handle = await world_runner(world, RunOptions(calling_window=ALWAYS))
    result = await asyncio.wait_for(handle.result(), timeout=60)
    assert result.status == "completed" and result.outcomes == {"answered": 5}
