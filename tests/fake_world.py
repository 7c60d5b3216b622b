"""A fake world for the run workflow on a Temporal dev server with time skipping: the database and
the carrier are same-named fake activities, the run workflow and the line gate are the real ones."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.clock import read_clock
from activities.gate import GateActivities
from contracts.activities import (
    CallSnapshot,
    DialInput,
    DialOutput,
    FetchCallInput,
    HangUpInput,
    LoadLeadsInput,
    LoadLeadsOutput,
    LoadRunInput,
    ReapedLines,
    ReapLinesInput,
    RecordOutcomesInput,
    RunFacts,
    SetRunStatusInput,
)
from contracts.messages import (
    CallingWindow,
    CallStatusEvent,
    LeadRef,
    Outcome,
    RunInput,
    RunOptions,
    RunResult,
)
from contracts.names import dial_task_queue, run_workflow_id
from workflows.business_lines import BusinessLinesWorkflow
from workflows.outbound_run import OutboundRunWorkflow

ALWAYS = CallingWindow("00:00", "24:00")


@dataclass
class Dial:
    lead: int
    attempt: int
    at: datetime


@dataclass
class FakeWorld:
    """The run's leads and the carrier's script: the status each attempt at a number ends with."""

    env: WorkflowEnvironment
    leads: list[LeadRef]
    script: dict[str, list[str]]
    business_id: str = field(default_factory=lambda: f"biz-{uuid.uuid4().hex[:8]}")
    dials: list[Dial] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)
    # What Twilio says when the run fetches a call it has heard nothing about for too long.
    fetched: CallSnapshot = field(default_factory=lambda: CallSnapshot(found=True, status="in-progress"))
    # How many dials to a number find every line of the business in use (their leases) first.
    lines_busy: dict[str, int] = field(default_factory=dict)

    async def now(self) -> datetime:
        """The run's virtual time: what the real activities stamp their answers with (`at`)."""
        return await self.env.get_current_time(
            self.env.client.get_workflow_handle(activity.info().workflow_id or "")
        )

    @activity.defn(name="load_run")
    async def load_run(self, input: LoadRunInput) -> RunFacts:
        return RunFacts(self.business_id, "+14155550100", 3, len(self.leads))

    @activity.defn(name="load_leads")
    async def load_leads(self, input: LoadLeadsInput) -> LoadLeadsOutput:
        after = [lead for lead in self.leads if lead.id > input.after_lead_id]
        return LoadLeadsOutput(after[: input.limit])

    @activity.defn(name="record_outcomes")
    async def record_outcomes(self, input: RecordOutcomesInput) -> float | None:
        self.outcomes.extend(input.outcomes)
        return (await self.now()).timestamp()

    @activity.defn(name="set_run_status")
    async def set_run_status(self, input: SetRunStatusInput) -> None:
        self.statuses.append(input.status)

    @activity.defn(name="stop_dials")
    async def stop_dials(self, input: LoadRunInput) -> None:
        return None

    @activity.defn(name="hang_up")
    async def hang_up(self, input: HangUpInput) -> CallSnapshot:
        return CallSnapshot(found=True, status="canceled", at=(await self.now()).timestamp())

    @activity.defn(name="fetch_call")
    async def fetch_call(self, input: FetchCallInput) -> CallSnapshot:
        return replace(self.fetched, at=(await self.now()).timestamp())

    @activity.defn(name="reap_lines")
    async def reap_lines(self, input: ReapLinesInput) -> ReapedLines:
        return ReapedLines()

    @activity.defn(name="place_call")
    async def place_call(self, input: DialInput) -> DialOutput:
        handle = self.env.client.get_workflow_handle(activity.info().workflow_id or "")
        now = await self.env.get_current_time(handle)
        self.outcomes.extend(input.outcomes)
        if self.lines_busy.get(input.to, 0) > 0:
            self.lines_busy[input.to] -= 1
            return DialOutput("", "line_busy", line_busy=True, at=now.timestamp())
        self.dials.append(Dial(input.lead_id, input.attempt, now))
        sid = f"CA{uuid.uuid4().hex}"
        status = self.script[input.to][input.attempt - 1]
        event = CallStatusEvent(input.lead_id, input.attempt, sid, status, at=now.timestamp())
        await handle.signal("call_status", event)
        return DialOutput(sid, "queued", at=now.timestamp())


class WorldRunner:
    """Runs OutboundRunWorkflow against a FakeWorld, with workers that can be restarted."""

    def __init__(self, env: WorkflowEnvironment, plain: Client) -> None:
        self.env = env
        self.plain = plain  # the gate keeps real time: only the run's clock skips
        self.workers: list[Worker] = []
        self.world: FakeWorld | None = None
        # Workflows the workers keep in memory between tasks; 0 replays every task from history.
        self.max_cached_workflows = 1000
        self.task_queue = f"rules-{uuid.uuid4().hex[:8]}"

    async def start_workers(self) -> None:
        world = self.world
        assert world is not None
        gate = GateActivities(self.plain)
        activities: list[Callable[..., Any]] = [
            # The worker's own: the wall clock it reads is behind the run's skipped time, so it never
            # moves the run's clock, which follows its timers and the fakes' stamps.
            read_clock,
            world.load_run,
            world.load_leads,
            world.record_outcomes,
            world.set_run_status,
            world.stop_dials,
            world.hang_up,
            world.fetch_call,
            gate.request_lines,
            gate.closed_workflows,
            world.reap_lines,
        ]
        workflows = [OutboundRunWorkflow, BusinessLinesWorkflow]
        self.workers = [
            Worker(
                self.env.client,
                task_queue=self.task_queue,
                workflows=workflows,
                activities=activities,
                max_cached_workflows=self.max_cached_workflows,
            ),
            Worker(
                self.env.client, task_queue=dial_task_queue(self.task_queue), activities=[world.place_call]
            ),
        ]
        for worker in self.workers:
            await worker.__aenter__()

    async def stop_workers(self) -> None:
        for worker in self.workers:
            await worker.__aexit__(None, None, None)
        self.workers = []

    async def __call__(
        self, world: FakeWorld, options: RunOptions, auto_skip: bool = True
    ) -> WorkflowHandle[OutboundRunWorkflow, RunResult]:
        """Start a run. With auto_skip, idle time passes at once; without, only by fast_forward."""
        self.world = world
        await self.start_workers()
        run_id = uuid.uuid4().hex
        with contextlib.nullcontext() if auto_skip else self.env.with_time_skipping_disabled():
            return await self.env.client.start_workflow(
                OutboundRunWorkflow.run,
                RunInput(run_id, world.business_id, options, total_leads=len(world.leads)),
                id=run_workflow_id(run_id),
                task_queue=self.task_queue,
            )


def zone_where_it_is(hour: int) -> str:
    """An IANA zone whose local time is now within the given hour."""
    now = datetime.now(UTC)
    for name in sorted(available_timezones()):
        if name.startswith(("Etc/", "SystemV/")) or "/" not in name:
            continue
        if now.astimezone(ZoneInfo(name)).hour == hour:
            return name
    raise AssertionError(f"no zone is at {hour}:00 now")
