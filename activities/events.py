"""Events for a business's webhook: recorded with what they report, delivered signed, retried.

A business that registers a webhook URL gets a `call.completed` event for every attempt's outcome
and a `run.completed` event when a run ends. Each event is written to the `events` table in the
same transaction as the outcome or final status it reports, so no crash can lose one, and its id is
derived from what it reports, so writing the same outcome twice makes one event. The business's
events workflow (`business-events-{id}`) delivers them with the activity below: a POST of the event
as JSON, signed per the Standard Webhooks specification (HMAC-SHA256 over id, timestamp and body),
retried with backoff until the receiver answers 2xx or EVENT_RETRY_PERIOD has passed. Every
delivery of an event carries the same `webhook-id`, so a receiver that keeps the ids it has
processed sees each event once in effect.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import uuid
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Table, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook
from temporalio import activity
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from contracts.activities import DELIVER_EVENTS, DeliverEventsInput, DeliveryPass, EventsInput
from contracts.messages import Outcome
from contracts.names import EVENTS_RECORDED, EVENTS_WORKFLOW, events_workflow_id
from contracts.statuses import OUTCOME_BY_CALL_STATUS, OUTCOMES
from db.models import Business, CallAttempt, Event, Lead, Run, utcnow
from db.upsert import insert_ignoring_conflict
from outbound_dialer import observability

log = logging.getLogger(__name__)

CALL_COMPLETED = "call.completed"
RUN_COMPLETED = "run.completed"
EVENT_TYPES = (CALL_COMPLETED, RUN_COMPLETED)

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# Deliveries are retried for this long after the event was recorded, then it is given up.
EVENT_RETRY_PERIOD = timedelta(days=3)
MAX_RETRY_DELAY = timedelta(hours=1)
# Events one pass of the delivery activity sends before it reports back to its workflow.
PASS_SIZE = 100
USER_AGENT = "outbound-dialer-webhooks/1"

_EVENT_IDS = uuid.UUID("6c1f6a52-8d1e-4c55-9a47-3f1f8f0e2b7d")


def event_id(type_: str, run_id: str, lead_id: int | None = None, attempt: int | None = None) -> str:
    """The event's id, from what it reports: the same outcome always makes the same event."""
    subject = f"{type_}/{run_id}" if lead_id is None else f"{type_}/{run_id}/{lead_id}/{attempt}"
    return f"evt_{uuid.uuid5(_EVENT_IDS, subject).hex}"


def new_signing_secret() -> str:
    """A signing secret in the Standard Webhooks form: `whsec_` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# Recording: in the transaction that writes what the event reports.

_BUSINESSES = cast(Table, Business.__table__)
_RUNS = cast(Table, Run.__table__)
_WEBHOOK_OF_RUN = (
    select(_RUNS.c.business_id)
    .join(_BUSINESSES, _BUSINESSES.c.id == _RUNS.c.business_id)
    .where(_RUNS.c.id == bindparam("run"), _BUSINESSES.c.webhook_url.is_not(None))
)


async def _business_with_webhook(session: AsyncSession, run_id: str) -> str | None:
    connection = await session.connection()
    business_id: str | None = (await connection.execute(_WEBHOOK_OF_RUN, {"run": run_id})).scalar()
    return business_id


async def record_call_events(session: AsyncSession, run_id: str, outcomes: list[Outcome]) -> str | None:
    """A `call.completed` event per outcome, if the run's business has a webhook; returns that
    business's id when it has one (its events workflow should be told), else None."""
    if not outcomes:
        return None
    business_id = await _business_with_webhook(session, run_id)
    if business_id is None:
        return None
    now = utcnow()
    await insert_ignoring_conflict(
        session,
        Event,
        [
            _event_row(CALL_COMPLETED, business_id, run_id, now, o.lead_id, o.attempt)
            for o in {(o.lead_id, o.attempt): o for o in outcomes}.values()
        ],
        ["id"],
    )
    return business_id


async def record_run_event(session: AsyncSession, run_id: str) -> str | None:
    """The run's `run.completed` event, if its business has a webhook; returns the business's id
    when it has one."""
    business_id = await _business_with_webhook(session, run_id)
    if business_id is not None:
        await insert_ignoring_conflict(
            session, Event, [_event_row(RUN_COMPLETED, business_id, run_id, utcnow())], ["id"]
        )
    return business_id


def _event_row(
    type_: str,
    business_id: str,
    run_id: str,
    now: datetime,
    lead_id: int | None = None,
    attempt: int | None = None,
) -> dict[str, Any]:
    return {
        "id": event_id(type_, run_id, lead_id, attempt),
        "business_id": business_id,
        "type": type_,
        "run_id": run_id,
        "lead_id": lead_id,
        "attempt": attempt,
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


class EventCourier:
    """Tells a business's events workflow that it has events to deliver, starting it if need be."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue

    async def notify(self, business_id: str) -> None:
        await self.client.start_workflow(
            EVENTS_WORKFLOW,
            EventsInput(business_id),
            id=events_workflow_id(business_id),
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal=EVENTS_RECORDED,
            static_summary=f"Webhook events of business {business_id}",
        )

    async def notify_soon(self, business_id: str | None) -> None:
        """Notify, and on failure only log: the events are safe in the database, and the next
        notice for the business (at the latest its run's `run.completed`) delivers them."""
        if business_id is None:
            return
        try:
            await self.notify(business_id)
        except RPCError as error:
            log.warning(
                "could not notify the events workflow", extra={"business": business_id, "error": str(error)}
            )


# Delivery: one business's due events, one POST each.


class EventActivities:
    """The delivery activity, built once in the worker with its session factory and HTTP client."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        http: httpx.AsyncClient,
        first_retry_seconds: float = 5.0,
    ) -> None:
        self.sessions = sessions
        self.http = http
        self.first_retry = timedelta(seconds=first_retry_seconds)

    @activity.defn(name=DELIVER_EVENTS)
    async def deliver_events(self, input: DeliverEventsInput) -> DeliveryPass:
        """POST the business's due events to its webhook, oldest first, and record each result."""
        result = DeliveryPass()
        async with self.sessions() as session:
            business = await session.get(Business, input.business_id)
            due = list(
                await session.scalars(
                    select(Event)
                    .where(
                        Event.business_id == input.business_id,
                        Event.status == PENDING,
                        Event.next_attempt_at <= utcnow(),
                    )
                    .order_by(Event.created_at, Event.lead_id, Event.attempt)
                    .limit(PASS_SIZE + 1)
                )
            )
            result.more = len(due) > PASS_SIZE
            due = due[:PASS_SIZE]
            if due and (business is None or not business.webhook_url or not business.webhook_secret):
                await self._give_up(session, due, "the business has no webhook registered")
                result.given_up = len(due)
                due = []
            bodies = await _bodies(session, due)
        if due:
            assert business is not None and business.webhook_url and business.webhook_secret
            signer = Webhook(business.webhook_secret)
            for event in due:
                await self._deliver(event, bodies[event.id], business.webhook_url, signer, result)
                activity.heartbeat(result.delivered + result.failed_attempts)
        if not result.more:
            result.next_attempt_in = await self._next_attempt_in(input.business_id)
        return result

    async def _deliver(
        self, event: Event, body: str, url: str, signer: Webhook, result: DeliveryPass
    ) -> None:
        context = {
            "business": event.business_id,
            "run": event.run_id,
            "lead": event.lead_id,
            "attempt": event.attempt,
            "event": event.id,
            "event_type": event.type,
        }
        sent_at = utcnow()
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event.id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signer.sign(event.id, sent_at, body),
        }
        status_code: int | None = None
        try:
            response = await self.http.post(url, content=body.encode(), headers=headers)
            status_code = response.status_code
            error = None if response.is_success else f"the webhook answered HTTP {status_code}"
        except httpx.HTTPError as failure:
            # Named by kind and host only: a URL may carry credentials.
            error = f"{type(failure).__name__} reaching {urlsplit(url).hostname}"
        attempts = event.attempts + 1
        values: dict[str, Any] = {"attempts": attempts, "last_status_code": status_code, "last_error": error}
        if error is None:
            values.update(status=DELIVERED, delivered_at=utcnow())
            result.delivered += 1
            observability.EVENTS_DELIVERED.labels(event.type).inc()
            log.info("event delivered", extra=context)
        else:
            retry_at = utcnow() + min(self.first_retry * 2 ** (attempts - 1), MAX_RETRY_DELAY)
            result.failed_attempts += 1
            if retry_at > event.created_at + EVENT_RETRY_PERIOD:
                values.update(status=FAILED)
                result.given_up += 1
                observability.EVENTS_GIVEN_UP.labels(event.type).inc()
                log.warning("event given up", extra={**context, "error": error, "tries": attempts})
            else:
                values.update(next_attempt_at=retry_at)
                observability.EVENT_DELIVERY_FAILURES.labels(event.type).inc()
                log.info("event delivery failed", extra={**context, "error": error, "tries": attempts})
        async with self.sessions() as session, session.begin():
            await session.execute(update(Event).where(Event.id == event.id).values(**values))

    async def _give_up(self, session: AsyncSession, events: list[Event], reason: str) -> None:
        """Mark these events failed, in the transaction the session has open (it read them)."""
        await session.execute(
            update(Event).where(Event.id.in_([e.id for e in events])).values(status=FAILED, last_error=reason)
        )
        await session.commit()

    async def _next_attempt_in(self, business_id: str) -> float | None:
        async with self.sessions() as session:
            earliest = await session.scalar(
                select(func.min(Event.next_attempt_at)).where(
                    Event.business_id == business_id, Event.status == PENDING
                )
            )
        if earliest is None:
            return None
        if earliest.tzinfo is None:
            earliest = earliest.replace(tzinfo=utcnow().tzinfo)
        return max(0.0, (earliest - utcnow()).total_seconds())


async def _bodies(session: AsyncSession, events: list[Event]) -> dict[str, str]:
    """Each event's JSON body, built from the records it reports on (final once it is recorded)."""
    calls = [e for e in events if e.type == CALL_COMPLETED]
    runs = [e for e in events if e.type == RUN_COMPLETED]
    bodies: dict[str, str] = {}
    if calls:
        rows = await session.execute(
            select(CallAttempt, Lead)
            .join(Lead, Lead.id == CallAttempt.lead_id)
            .where(
                CallAttempt.run_id.in_({e.run_id for e in calls}),
                CallAttempt.lead_id.in_({e.lead_id for e in calls}),
            )
        )
        attempts = {(a.run_id, a.lead_id, a.attempt): (a, lead) for a, lead in rows.all()}
        latest = {(run_id, lead_id): 0 for run_id, lead_id, _ in attempts}
        for run_id, lead_id, number in attempts:
            latest[(run_id, lead_id)] = max(latest[(run_id, lead_id)], number)
        for event in calls:
            attempt, lead = attempts[(event.run_id, cast(int, event.lead_id), cast(int, event.attempt))]
            final = attempt.attempt == latest[(event.run_id, lead.id)] and lead.status in OUTCOMES
            bodies[event.id] = _envelope(event, _call_data(attempt, lead, final))
    for event in runs:
        run = await session.get(Run, event.run_id)
        assert run is not None
        counts: dict[str, int] = dict(
            (
                await session.execute(
                    select(Lead.status, func.count()).where(Lead.run_id == run.id).group_by(Lead.status)
                )
            ).all()
        )
        bodies[event.id] = _envelope(event, _run_data(run, counts))
    return bodies


def _envelope(event: Event, data: dict[str, Any]) -> str:
    return json.dumps(
        {
            "id": event.id,
            "type": event.type,
            "timestamp": event.created_at.isoformat(),
            "business_id": event.business_id,
            "data": data,
        },
        separators=(",", ":"),
    )


def _call_data(attempt: CallAttempt, lead: Lead, final: bool) -> dict[str, Any]:
    return {
        "run_id": attempt.run_id,
        "lead": {"id": lead.id, "phone": lead.phone, "name": lead.name, "metadata": lead.extra or {}},
        "attempt": attempt.attempt,
        # False when the lead is to be called again: a later attempt reports its outcome.
        "final": final,
        "outcome": OUTCOME_BY_CALL_STATUS.get(attempt.status, attempt.status),
        "call_sid": attempt.call_sid,
        "call_status": attempt.status,
        "duration": attempt.duration,
        "answered_by": attempt.answered_by,
        "error_code": attempt.error_code,
        "error_message": attempt.error_message,
        "ended_at": attempt.updated_at.isoformat(),
    }


def _run_data(run: Run, counts: dict[str, int]) -> dict[str, Any]:
    outcomes = {name: counts.get(name, 0) for name in OUTCOMES}
    return {
        "run_id": run.id,
        "name": run.name,
        "status": run.status,
        "reason": run.status_reason,
        "total": run.total_leads,
        "done": sum(outcomes.values()),
        "outcomes": outcomes,
        "created_at": run.created_at.isoformat(),
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
    }
