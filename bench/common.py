"""What every benchmark shares: a Temporal dev server, a fresh PostgreSQL database, the carrier
simulator and the system under test (`support.stack.Stack`), plus the small measuring tools.

A benchmark prints exactly one JSON object on stdout. Everything else (our logs, the dev server's and
the simulator's output) goes to stderr: `run_main` points file descriptor 1 at stderr for the whole
run, child processes included, and writes the result to the real stdout at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import os
import platform
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs

import httpx
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client

from api.app import create_app
from contracts.names import run_workflow_id
from contracts.statuses import TERMINAL_CALL_STATUSES
from outbound_dialer.settings import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN, Settings
from support.drive import ROOT, Business, new_number, serve, wait_for
from support.ports import free_port
from support.stack import Stack, scratch_database
from support.temporal_dev import TEMPORAL_BINARY, dev_server
from telephony.simulator import SimulatorConfig
from telephony.simulator import create_app as create_simulator_app

log = logging.getLogger("bench")

DEFAULT_DATABASE = "postgresql://postgres@127.0.0.1:5432/test"
WEBHOOK_PATH = "/v1/webhooks/twilio/call-status"
SimulatorMode = Literal["process", "inline"]


def percentiles(values: Sequence[float]) -> dict[str, float | int]:
    """Count, mean, p50, p90, p99 and max of `values` (linear interpolation between ranks)."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}

    def at(q: float) -> float:
        rank = q * (len(ordered) - 1)
        low, high = math.floor(rank), math.ceil(rank)
        return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)

    return {
        "count": len(ordered),
        "mean": round(sum(ordered) / len(ordered), 2),
        "p50": round(at(0.50), 2),
        "p90": round(at(0.90), 2),
        "p99": round(at(0.99), 2),
        "max": round(ordered[-1], 2),
    }


# When status callbacks reach the API


@dataclass(frozen=True)
class WebhookArrival:
    """A terminal status callback: when it entered the API's ASGI stack, and for which call."""

    at: float
    caller_id: str
    call_sid: str
    status: str


@dataclass
class WebhookClock:
    """The arrivals of terminal status callbacks, recorded by `WebhookTimer` inside the API."""

    arrivals: list[WebhookArrival] = field(default_factory=list)

    def for_caller(self, caller_id: str) -> list[WebhookArrival]:
        """Arrivals for calls from this caller ID (one business), in arrival order."""
        return sorted((a for a in self.arrivals if a.caller_id == caller_id), key=lambda a: a.at)


class WebhookTimer:
    """ASGI middleware: notes the wall-clock time a status-callback POST enters the app and, once its
    form is read, keeps the time if the CallStatus is terminal. It sits outside every route, so the
    time is taken before signature checking and before the signal to the run."""

    def __init__(self, app: ASGIApp, clock: WebhookClock) -> None:
        self.app = app
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != WEBHOOK_PATH:
            await self.app(scope, receive, send)
            return
        arrived = time.time()
        body: list[bytes] = []

        async def receive_and_keep() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.append(message.get("body", b""))
            return message

        await self.app(scope, receive_and_keep, send)
        form = parse_qs(b"".join(body).decode(), keep_blank_values=True)
        status = form.get("CallStatus", [""])[0]
        if status in TERMINAL_CALL_STATUSES:
            self.clock.arrivals.append(
                WebhookArrival(arrived, form.get("From", [""])[0], form.get("CallSid", [""])[0], status)
            )


@dataclass
class BenchStack(Stack):
    """The test harness's stack, with the API wrapped in a `WebhookTimer` (product code unchanged)."""

    webhooks: WebhookClock = field(default_factory=WebhookClock)

    def __post_init__(self) -> None:
        # The harness shortens the gate's reap interval so tests see dead runs' lines come back
        # quickly; a benchmark measures the product's default (every reap is a timer and an activity).
        self.settings = self.settings.model_copy(
            update={"GATE_REAP_SECONDS": Settings.model_fields["GATE_REAP_SECONDS"].default}
        )

    def build_app(self) -> FastAPI:
        """The API with the webhook timer added."""
        app = create_app(self.settings, self.temporal)
        app.add_middleware(WebhookTimer, clock=self.webhooks)
        return app


# Servers


@asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """A new PostgreSQL database, migrated to head, dropped afterwards (`BENCH_DATABASE_URL` names
    the server; the default is the local `test` database with trust auth)."""
    async with scratch_database(
        os.environ.get("BENCH_DATABASE_URL") or DEFAULT_DATABASE, "outbound_bench"
    ) as url:
        yield url


@asynccontextmanager
async def simulator_server(mode: SimulatorMode) -> AsyncIterator[str]:
    """The carrier simulator, with request validation off (it costs ~8 ms per create that real
    Twilio does not charge us) and no queueing delay. `process` runs it as its own process, as a
    remote carrier would be; `inline` serves it in this event loop, as the tests do."""
    port = free_port()
    if mode == "inline":
        config = SimulatorConfig(
            account_sid=DEV_ACCOUNT_SID,
            auth_token=DEV_AUTH_TOKEN,
            validate_requests=False,
            queue_seconds=(0.0, 0.0),
        )
        async with serve(create_simulator_app(config), port) as url:
            yield url
        return
    env = {
        **os.environ,
        "TWILIO_ACCOUNT_SID": DEV_ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": DEV_AUTH_TOKEN,
        "SIMULATOR_FAULTS": "",
    }
    command = [
        sys.executable,
        "-m",
        "telephony.simulator",
        "--port",
        str(port),
        "--log-level",
        "warning",
        "--no-validate-requests",
        "--queue-seconds",
        "0",
        "0",
    ]
    process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=url, timeout=2) as http:

            async def up() -> bool:
                try:
                    return (await http.get("/_sim/config")).status_code == 200
                except httpx.HTTPError:
                    return False

            await wait_for(up, within=20, what="simulator process", interval=0.1)
        yield url
    finally:
        process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


@dataclass
class BenchEnv:
    """Everything a benchmark drives."""

    client: Client
    stack: BenchStack
    simulator: SimulatorMode


@asynccontextmanager
async def bench_env(
    *, simulator: SimulatorMode = "process", calls_per_second: float = 1000
) -> AsyncIterator[BenchEnv]:
    """Start the dev server, a fresh database, the simulator and the stack (API and worker in this
    process); tear all of it down afterwards, in reverse order."""
    async with AsyncExitStack() as exits:
        started = time.monotonic()
        temporal = await exits.enter_async_context(dev_server())
        database_url = await exits.enter_async_context(fresh_database())
        simulator_url = await exits.enter_async_context(simulator_server(simulator))
        stack = await exits.enter_async_context(
            BenchStack.start(
                temporal=temporal.client,
                database_url=database_url,
                simulator_url=simulator_url,
                api_port=free_port(),
                task_queue=f"bench-{uuid.uuid4().hex[:8]}",
                calls_per_second=calls_per_second,
            )
        )
        assert isinstance(stack, BenchStack)
        log.info("environment up in %.1fs (simulator: %s)", time.monotonic() - started, simulator)
        yield BenchEnv(temporal.client, stack, simulator)
        log.info("tearing down")


# Driving a run


async def configure_simulator(
    env: BenchEnv,
    *,
    ring_seconds: tuple[float, float],
    talk_seconds: tuple[float, float],
    outcome: Literal["completed", "mixed"] = "completed",
) -> None:
    """Set call timings and outcomes. `completed` answers every call (the most callbacks per call);
    `mixed` is the simulator's default spread of completed, busy, no-answer and failed."""
    weights = (
        {"completed": 1.0}
        if outcome == "completed"
        else {"completed": 0.6, "busy": 0.15, "no-answer": 0.2, "failed": 0.05}
    )
    response = await env.stack.sim.post(
        "/_sim/config",
        json={"ring_seconds": ring_seconds, "talk_seconds": talk_seconds, "outcome_weights": weights},
    )
    response.raise_for_status()


@dataclass
class FinishedRun:
    """A run that ended: its ids, what the workflow returned, and when it was started."""

    business: Business
    run_id: str
    result: dict[str, Any]
    started_at: float
    ended_at: float
    cpu_seconds: float


async def run_to_end(env: BenchEnv, *, cap: int, leads: int, within: float) -> FinishedRun:
    """Create a business with `cap` lines, start a run of `leads` fresh numbers through the API and
    wait for its workflow's result (following continue-as-new). Waiting on the result instead of
    polling `GET /v1/runs` keeps progress queries out of the measured load."""
    business = await env.stack.create_business(cap=cap)
    phones = [new_number() for _ in range(leads)]
    cpu_before = time.process_time()
    started_at = time.time()
    run_id = await env.stack.start_run(business, phones)
    log.info("run %s started: %d leads, cap %d", run_id, leads, cap)
    handle = env.client.get_workflow_handle(run_workflow_id(run_id))
    async with asyncio.timeout(within):
        result = await handle.result()
    ended_at = time.time()
    log.info("run %s ended in %.1fs: %s", run_id, ended_at - started_at, result)
    return FinishedRun(
        business,
        run_id,
        result if isinstance(result, dict) else {"result": result},
        started_at,
        ended_at,
        time.process_time() - cpu_before,
    )


async def sim_calls(env: BenchEnv, caller_id: str) -> list[dict[str, Any]]:
    """The simulator's record of every call from this caller ID."""
    return await env.stack.sim_calls(caller_id)


async def create_times(env: BenchEnv, caller_id: str) -> list[float]:
    """When each create-call request from this caller ID reached the simulator, in order."""
    stats = (await env.stack.sim.get("/_sim/stats")).json()
    return sorted(stats["create_requests"].get(caller_id, []))


def event_type(event: HistoryEvent) -> str:
    """An event's type as the Web UI spells it: `WorkflowExecutionSignaled`, `TimerStarted`..."""
    name = EventType.Name(event.event_type).removeprefix("EVENT_TYPE_")
    return "".join(part.title() for part in name.split("_"))


def event_time(event: HistoryEvent) -> float:
    """When the server recorded the event, as epoch seconds (same clock as `time.time()` here)."""
    return event.event_time.seconds + event.event_time.nanos / 1e9


@dataclass(frozen=True)
class TaskTimes:
    """The workflow task that scheduled an activity: when the server scheduled it, when a worker
    picked it up, and when the worker's answer was recorded (epoch seconds)."""

    scheduled: float
    started: float
    completed: float


def scheduling_tasks(events: Sequence[HistoryEvent]) -> dict[int, TaskTimes]:
    """For each ActivityTaskScheduled event (by id), the workflow task whose answer scheduled it."""
    at = {event.event_id: event_time(event) for event in events}
    tasks: dict[int, TaskTimes] = {}
    completed: dict[int, HistoryEvent] = {}
    for event in events:
        if event.HasField("workflow_task_completed_event_attributes"):
            completed[event.event_id] = event
        elif event.HasField("activity_task_scheduled_event_attributes"):
            done = completed.get(
                event.activity_task_scheduled_event_attributes.workflow_task_completed_event_id
            )
            if done is not None:
                attrs = done.workflow_task_completed_event_attributes
                tasks[event.event_id] = TaskTimes(
                    at[attrs.scheduled_event_id], at[attrs.started_event_id], at[done.event_id]
                )
    return tasks


def payload_json(payloads: Payloads) -> Any:
    """The first payload of a signal or activity input, decoded from the default JSON converter."""
    return json.loads(payloads.payloads[0].data) if payloads.payloads else None


# Running a benchmark


def machine() -> dict[str, Any]:
    """Where the numbers came from."""
    try:
        temporal = subprocess.run(
            [str(TEMPORAL_BINARY), "--version"], capture_output=True, text=True, check=False, timeout=10
        ).stdout.strip()
    except OSError:
        temporal = "unknown"
    return {
        "nproc": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "temporal_cli": temporal,
    }


def add_env_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags every benchmark takes."""
    parser.add_argument(
        "--simulator",
        choices=("process", "inline"),
        default="process",
        help="run the carrier simulator as its own process (default) or in this event loop",
    )
    parser.add_argument("--quick", action="store_true", help="a few-seconds smoke run")


def run_main(measure: Callable[[], Coroutine[Any, Any, dict[str, Any]]]) -> None:
    """Run `measure` with stdout kept for the result alone; print the result as one JSON object."""
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    log.setLevel(logging.INFO)
    sys.stdout.flush()
    result_fd = os.dup(1)
    # Whatever writes to fd 1 from now on (the dev server, the simulator, stray prints) lands on stderr.
    os.dup2(2, 1)
    try:
        result = asyncio.run(measure())
    finally:
        sys.stdout.flush()
    with os.fdopen(result_fd, "w") as out:
        out.write(json.dumps(result, indent=2) + "\n")
