"""Driving a running system from outside: serving the API in-process, waiting for what must come,
new phone numbers and businesses, the peak of overlapping calls, and workflow histories as their
workers replay them."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import phonenumbers
import uvicorn
from starlette.applications import Starlette
from temporalio.client import Client, WorkflowHistory
from twilio.request_validator import RequestValidator

from outbound_dialer.settings import Settings
from telephony.twilio_client import CallbackUrls

ROOT = Path(__file__).resolve().parent.parent
ALWAYS_OPEN = {"start": "00:00", "end": "24:00"}


@asynccontextmanager
async def serve(app: Starlette, port: int) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn in this event loop; yields its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    await wait_for(lambda: _true(server.started), within=15, what="server start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _true(value: bool) -> bool:
    return value


async def wait_for(
    check: Callable[[], Awaitable[Any]], *, within: float, what: str, interval: float = 0.05
) -> Any:
    """Poll `check` until it returns something truthy; fail the test with `what` at the deadline."""
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what}")
        await asyncio.sleep(interval)


_used_numbers: set[str] = set()


def as_its_worker_replays(history: WorkflowHistory, run_id: str) -> WorkflowHistory:
    """An execution's history with its own run id, as a worker replays it. The SDK's Replayer takes
    the run id from the start event's `original_execution_run_id`, and an execution an operator
    reset starts with a copy of the start event of the execution it was reset from: replayed as
    fetched, it reads that execution's run id where its worker read its own."""
    events = list(history.events)
    events[0].workflow_execution_started_event_attributes.original_execution_run_id = run_id
    return WorkflowHistory(history.workflow_id, events)


async def execution_chain(client: Client, workflow_id: str) -> list[WorkflowHistory]:
    """The histories of every execution of a workflow id, oldest first, following continue-as-new
    back from the newest run by each start event's `continued_execution_run_id`."""
    histories = [await client.get_workflow_handle(workflow_id).fetch_history()]
    while True:
        started = histories[0].events[0].workflow_execution_started_event_attributes
        previous = started.continued_execution_run_id
        if not previous:
            return histories
        histories.insert(0, await client.get_workflow_handle(workflow_id, run_id=previous).fetch_history())


_rng = random.Random()


def new_number() -> str:
    """A valid US number not used before in this session."""
    while True:
        candidate = f"+1{_rng.choice(['212', '312', '415', '646', '718'])}{_rng.randint(2000000, 9999999)}"
        if candidate not in _used_numbers and phonenumbers.is_valid_number(phonenumbers.parse(candidate)):
            _used_numbers.add(candidate)
            return candidate


@dataclass
class Business:
    id: str
    caller_id: str
    api_key: str
    cap: int

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}


def overlap_peak(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def twilio_callback(
    settings: Settings,
    path: str,
    query: dict[str, Any],
    params: dict[str, str],
    token: str | None = None,
    ours: bool = True,
) -> dict[str, Any]:
    """A callback as Twilio would send it to `path` for the attempt in `query` (run, lead,
    attempt): signed with `token` (the deployment's auth token if unset), to a URL the deployment
    made (`ours`) or to one with the same query but no token of ours, as a business's own TwiML
    could give Twilio. The keyword arguments of an httpx POST."""
    urls = CallbackUrls.of(settings)
    if ours:
        url = urls.url(path, str(query["run"]), int(query["lead"]), int(query["attempt"])).split("#")[0]
    else:
        url = f"{settings.PUBLIC_BASE_URL}{path}?{urlencode(query)}"
    secret = token if token is not None else settings.TWILIO_AUTH_TOKEN.get_secret_value()
    signature = RequestValidator(secret).compute_signature(url, params)
    return {"url": url, "data": params, "headers": {"X-Twilio-Signature": signature}}
