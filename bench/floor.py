"""The engine's floor for next-dial latency: a signal to a waiting workflow, which then runs an
activity that makes one HTTP request. Nothing of the product is involved (no database, no gate, no
Twilio SDK), so this is the least a signal-to-side-effect round trip costs on this machine and
this Temporal server.

Kept apart from `bench.latency` because the workflow sandbox re-imports the module that defines a
workflow: this one imports nothing heavy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from temporalio import activity, workflow

with workflow.unsafe.imports_passed_through():
    import httpx
    from fastapi import FastAPI, Request
    from temporalio.client import Client
    from temporalio.worker import Worker

    from bench.common import scheduling_tasks


@dataclass
class PingInput:
    """One request for the activity to make."""

    url: str
    n: int


@dataclass
class FloorInput:
    """Where the activity posts, and on which task queue it runs (None: the workflow's own)."""

    url: str
    activity_task_queue: str | None = None


class FloorActivities:
    """The trivial activity, holding one keep-alive HTTP client as the Twilio SDK client does."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    @activity.defn(name="floor_post")
    async def post(self, input: PingInput) -> None:
        """POST the sample number to the endpoint."""
        response = await self.http.post(input.url, json={"n": input.n})
        response.raise_for_status()


@workflow.defn(name="FloorWorkflow")
class FloorWorkflow:
    """Waits for `ping`, runs `floor_post` for it, waits again; `done` ends it."""

    @workflow.init
    def __init__(self, input: FloorInput) -> None:
        self._pings: list[int] = []
        self._done = False

    @workflow.signal
    def ping(self, n: int) -> None:
        """Sample `n`: make one HTTP request now."""
        self._pings.append(n)

    @workflow.signal
    def done(self) -> None:
        """No more samples."""
        self._done = True

    @workflow.run
    async def run(self, input: FloorInput) -> int:
        """Serve pings until `done`; returns how many were served."""
        count = 0
        while True:
            await workflow.wait_condition(lambda: bool(self._pings) or self._done)
            if not self._pings:
                return count
            n = self._pings.pop(0)
            await workflow.execute_activity_method(
                FloorActivities.post,
                PingInput(input.url, n),
                task_queue=input.activity_task_queue,
                start_to_close_timeout=timedelta(seconds=10),
            )
            count += 1


@dataclass
class Endpoint:
    """The small HTTP endpoint the activity posts to: when each sample's request arrived."""

    arrivals: dict[int, float]
    waiting: dict[int, asyncio.Event]

    def app(self) -> FastAPI:
        """A one-route app; the arrival time is taken when the route starts, before the body is
        read, as the simulator takes a create request's time at its door."""
        app = FastAPI()

        @app.post("/ping")
        async def ping(request: Request) -> dict[str, bool]:
            arrived = time.time()
            n = int((await request.json())["n"])
            self.arrivals[n] = arrived
            if (event := self.waiting.get(n)) is not None:
                event.set()
            return {"ok": True}

        return app


@asynccontextmanager
async def floor_workers(client: Client) -> AsyncIterator[tuple[str, str]]:
    """A workflow worker (with the activity, so it may be executed eagerly) and a separate activity
    worker on its own rate-limited queue, as the product's dial worker is. Yields both queue names."""
    queue = f"floor-{uuid.uuid4().hex[:8]}"
    activity_queue = f"{queue}-activity"
    async with httpx.AsyncClient(timeout=10) as http:
        activities = FloorActivities(http)
        workers = [
            Worker(client, task_queue=queue, workflows=[FloorWorkflow], activities=[activities.post]),
            Worker(
                client,
                task_queue=activity_queue,
                activities=[activities.post],
                max_task_queue_activities_per_second=1000,
            ),
        ]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        try:
            yield queue, activity_queue
        finally:
            await asyncio.gather(*(w.shutdown() for w in workers))
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task


@dataclass
class FloorSamples:
    """Each sample's total (signal sent -> request received) and its parts from the history, seconds."""

    total: list[float] = field(default_factory=list)
    signal_recorded: list[float] = field(default_factory=list)
    workflow_task: list[float] = field(default_factory=list)
    task_pickup: list[float] = field(default_factory=list)
    task_work: list[float] = field(default_factory=list)
    dispatch: list[float] = field(default_factory=list)
    activity: list[float] = field(default_factory=list)

    def __add__(self, other: FloorSamples) -> FloorSamples:
        """Both sets of samples, pooled."""
        return FloorSamples(
            *(getattr(self, name) + getattr(other, name) for name in self.__dataclass_fields__)
        )


async def measure_floor(
    client: Client,
    endpoint: Endpoint,
    url: str,
    *,
    task_queue: str,
    activity_task_queue: str | None,
    samples: int,
    settle_seconds: float = 0.15,
) -> FloorSamples:
    """Time from just before each `ping` signal is sent to the endpoint receiving the activity's
    request, split at the history's signal, activity-scheduled and activity-started events. Samples
    are sent one at a time, `settle_seconds` apart, so each signal finds the workflow idle (a signal
    arriving during a workflow task waits for it, which is not the floor)."""
    handle = await client.start_workflow(
        FloorWorkflow.run,
        FloorInput(url, activity_task_queue),
        id=f"floor-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
    )
    # Two warm-up samples first: the first activity opens the HTTP connection.
    offset = 1_000_000 * (1 + len(endpoint.arrivals))
    sent: dict[int, float] = {}
    for i in range(samples + 2):
        n = offset + i
        endpoint.waiting[n] = asyncio.Event()
        await asyncio.sleep(settle_seconds)
        sent[n] = time.time()
        await handle.signal(FloorWorkflow.ping, n)
        async with asyncio.timeout(10):
            await endpoint.waiting[n].wait()
    await handle.signal(FloorWorkflow.done)
    await handle.result()

    signaled: dict[int, float] = {}
    scheduled: dict[int, tuple[int, float]] = {}
    started: dict[int, float] = {}
    events = (await handle.fetch_history()).events
    tasks = scheduling_tasks(events)
    for event in events:
        at = event.event_time.seconds + event.event_time.nanos / 1e9
        if event.HasField("workflow_execution_signaled_event_attributes"):
            attrs = event.workflow_execution_signaled_event_attributes
            if attrs.signal_name == "ping":
                signaled[int(json.loads(attrs.input.payloads[0].data))] = at
        elif event.HasField("activity_task_scheduled_event_attributes"):
            n = int(json.loads(event.activity_task_scheduled_event_attributes.input.payloads[0].data)["n"])
            scheduled[n] = (event.event_id, at)
        elif event.HasField("activity_task_started_event_attributes"):
            started[event.activity_task_started_event_attributes.scheduled_event_id] = at
    result = FloorSamples()
    for n in sorted(sent)[2:]:
        event_id, scheduled_at = scheduled[n]
        result.total.append(endpoint.arrivals[n] - sent[n])
        result.signal_recorded.append(signaled[n] - sent[n])
        result.workflow_task.append(scheduled_at - signaled[n])
        result.task_pickup.append(tasks[event_id].started - signaled[n])
        result.task_work.append(tasks[event_id].completed - tasks[event_id].started)
        result.dispatch.append(started[event_id] - scheduled_at)
        result.activity.append(endpoint.arrivals[n] - started[event_id])
    return result
