"""The worker: runs the workflows and activities. Start as many as you like on one task queue."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Protocol

import httpx
from temporalio.client import Client
from temporalio.worker import Worker

from activities.clock import read_clock
from activities.courier import EventCourier
from activities.dialing import DialingActivities
from activities.events import EventActivities
from activities.gate import GateActivities, GateWatch
from activities.lines import LineActivities
from activities.recordings import RecordingActivities, ensure_retention_schedule
from activities.records import RecordActivities
from contracts.names import dial_task_queue
from db.engine import create_engine, create_sessionmaker
from outbound_dialer.egress import Egress
from outbound_dialer.logs import configure_logging
from outbound_dialer.observability import serve_worker_metrics, worker_runtime
from outbound_dialer.settings import Settings, get_settings
from outbound_dialer.temporal_client import connect_temporal
from telephony.twilio_client import CallbackUrls, close_twilio_client, create_twilio_client
from workflows.business_events import BusinessEventsWorkflow
from workflows.business_lines import BusinessLinesWorkflow
from workflows.outbound_run import OutboundRunWorkflow
from workflows.recording_retention import RecordingRetentionWorkflow

log = logging.getLogger("worker")


DIAL_POLLERS = 12
# How long a stopping worker lets the activities it runs finish (a create takes at most
# TWILIO_TIMEOUT_SECONDS, then its transaction commits); docker-compose's stop_grace_period is longer.
GRACEFUL_SHUTDOWN = timedelta(seconds=30)


class Runnable(Protocol):
    async def run(self) -> None: ...

    async def shutdown(self) -> None: ...


@asynccontextmanager
async def build_workers(settings: Settings, client: Client) -> AsyncIterator[list[Runnable]]:
    """What one process runs: workflows and most activities on TEMPORAL_TASK_QUEUE, call creation
    on its own queue (rate-limited by the Temporal server across all workers), and the watch that
    starts a business's line gate when runs or calls need one and none runs."""
    # Activities are retried, so a connection the database dropped costs one try, not a ping per use.
    engine = create_engine(settings.DATABASE_URL, ping_on_checkout=False)
    sessions = create_sessionmaker(engine)
    twilio = create_twilio_client(settings)
    courier = EventCourier(client, settings.TEMPORAL_TASK_QUEUE)
    records = RecordActivities(sessions, courier)
    dialing = DialingActivities(
        sessions,
        twilio,
        CallbackUrls.of(settings),
        courier,
        lookup_delay=timedelta(seconds=settings.TWILIO_LOOKUP_DELAY_SECONDS),
    )
    gate = GateActivities(client, settings.GATE_REAP_SECONDS)
    recordings = RecordingActivities(sessions, twilio)
    await ensure_retention_schedule(client, settings.TEMPORAL_TASK_QUEUE)
    lines = LineActivities(sessions, twilio, client, courier)
    webhooks = _webhook_client(settings)
    events = EventActivities(
        sessions,
        webhooks,
        settings.EVENT_RETRY_SECONDS,
        Egress.allowing(settings.EVENT_WEBHOOK_ALLOWED_NETWORKS),
        settings.EVENT_TIMEOUT_SECONDS,
    )
    try:
        yield [
            Worker(
                client,
                task_queue=settings.TEMPORAL_TASK_QUEUE,
                workflows=[
                    OutboundRunWorkflow,
                    BusinessLinesWorkflow,
                    BusinessEventsWorkflow,
                    RecordingRetentionWorkflow,
                ],
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
                activities=[
                    records.load_run,
                    records.load_leads,
                    records.record_outcomes,
                    records.set_run_status,
                    records.stop_dials,
                    dialing.hang_up,
                    dialing.fetch_call,
                    dialing.answer_machine,
                    gate.request_lines,
                    gate.closed_workflows,
                    lines.reap_lines,
                    events.deliver_events,
                    recordings.delete_expired_recordings,
                    read_clock,
                ],
            ),
            Worker(
                client,
                task_queue=dial_task_queue(settings.TEMPORAL_TASK_QUEUE),
                activities=[dialing.place_call],
                max_task_queue_activities_per_second=settings.TWILIO_CALLS_PER_SECOND,
                # A deploy lets creates under way finish and record their calls, rather than
                # cancelling them mid-request and leaving the retry to look the calls up.
                graceful_shutdown_timeout=GRACEFUL_SHUTDOWN,
                # A poller waiting on every partition of the queue at all times: with the SDK's
                # default of 5 a dial could wait ~40 ms for a poller to reach its partition.
                max_concurrent_activity_task_polls=DIAL_POLLERS,
            ),
            GateWatch(client, sessions, settings.TEMPORAL_TASK_QUEUE, settings.GATE_REAP_SECONDS),
        ]
    finally:
        await webhooks.aclose()
        await close_twilio_client(twilio)
        await engine.dispose()


def _webhook_client(settings: Settings) -> httpx.AsyncClient:
    """The client events are delivered with: no redirects, no proxy from the environment, and no
    connection kept for another request (each delivery connects to the address it checked)."""
    return httpx.AsyncClient(
        timeout=settings.EVENT_TIMEOUT_SECONDS,
        follow_redirects=False,
        limits=httpx.Limits(max_keepalive_connections=0),
        trust_env=False,
    )


async def main() -> None:
    """Run until SIGINT or SIGTERM, then finish the tasks in hand and stop."""
    settings = get_settings()
    configure_logging(settings.LOG_LEVEL)
    client = await connect_temporal(settings, runtime=worker_runtime(settings), service="worker")
    if settings.WORKER_METRICS_ADDRESS:
        serve_worker_metrics(settings.WORKER_METRICS_ADDRESS)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with build_workers(settings, client) as workers:
        log.info("worker started", extra={"task_queue": settings.TEMPORAL_TASK_QUEUE})
        runs = [asyncio.create_task(w.run()) for w in workers]
        await stop.wait()
        log.info("worker stopping")
        await asyncio.gather(*(w.shutdown() for w in workers))
        for task in runs:
            with contextlib.suppress(asyncio.CancelledError):
                await task


if __name__ == "__main__":
    asyncio.run(main())
