"""Delivering a business's webhook events: signed, retried.

A business that registers a webhook URL gets a `call.completed` event for every attempt's outcome
and a `run.completed` event when a run ends, recorded in the outbox (`db.outbox`) with what they
report. The business's events workflow (`business-events-{id}`) delivers them with the activity
below: a POST of the event
as JSON, signed per the Standard Webhooks specification (HMAC-SHA256 over id, timestamp and body),
retried with backoff until the receiver answers 2xx or EVENT_RETRY_PERIOD has passed. Every
delivery of an event carries the same `webhook-id`, so a receiver that keeps the ids it has
processed sees each event once in effect.
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import httpx
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from standardwebhooks.webhooks import Webhook
from temporalio import activity

from contracts.activities import DELIVER_EVENTS, DeliverEventsInput, DeliveryPass
from contracts.statuses import OUTCOMES, EventStatus, RecordingStatus
from db.models import Business, CallAttempt, Event, Lead, Run, utcnow
from db.outbox import CALL_COMPLETED, RUN_COMPLETED
from outbound_dialer import observability
from outbound_dialer.egress import Egress, EgressRefused

log = logging.getLogger(__name__)

# Deliveries are retried for this long after the event was recorded, then it is given up.
EVENT_RETRY_PERIOD = timedelta(days=3)
MAX_RETRY_DELAY = timedelta(hours=1)
# A recorded call's `call.completed` waits this long at most for Twilio to report the recording
# (it does a few seconds after the call ends), looking again every RECORDING_LOOK.
RECORDING_WAIT = timedelta(minutes=2)
RECORDING_LOOK = timedelta(seconds=3)
# Events one pass of the delivery activity sends before it reports back to its workflow.
PASS_SIZE = 100
# Of a webhook's answer only its status matters: this much of its body is read, the rest dropped.
ANSWER_KEPT = 4096
USER_AGENT = "outbound-dialer-webhooks/1"


class EventActivities:
    """The delivery activity, built once in the worker with its session factory and HTTP client."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        http: httpx.AsyncClient,
        first_retry_seconds: float = 5.0,
        egress: Egress | None = None,
        deadline_seconds: float = 10.0,
    ) -> None:
        self.sessions = sessions
        self.http = http
        self.first_retry = timedelta(seconds=first_retry_seconds)
        self.egress = egress or Egress()
        self.deadline = deadline_seconds

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
                        Event.status == EventStatus.PENDING,
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
            due = await _postpone_until_recorded(session, due)
            bodies = await _bodies(session, due)
        if due:
            assert business is not None and business.webhook_url and business.webhook_secret
            signer = Webhook(business.webhook_secret)
            for index, event in enumerate(due):
                retry_at = await self._deliver(event, bodies[event.id], business.webhook_url, signer, result)
                activity.heartbeat(result.delivered + result.failed_attempts)
                if retry_at is not None:
                    # No answer in time: the rest would each wait as long. They are put off untried.
                    await self._put_off(due[index + 1 :], retry_at, business.webhook_url)
                    break
        if not result.more:
            result.next_attempt_in = await self._next_attempt_in(input.business_id)
        return result

    async def _deliver(
        self, event: Event, body: str, url: str, signer: Webhook, result: DeliveryPass
    ) -> datetime | None:
        """Send one event and record how it went. Returns when it is tried again if the webhook
        gave no answer within the deadline (a pass would spend as long on each event after it),
        else None."""
        context = {
            "business": event.business_id,
            "run": event.run_id,
            "lead": event.lead_id,
            "attempt": event.attempt,
            "event": event.id,
            "event_type": event.type,
        }
        attempts = event.attempts + 1
        retry_at = utcnow() + min(self.first_retry * 2 ** (attempts - 1), MAX_RETRY_DELAY)
        # The try is counted before it is made: a delivery that takes its worker down (or the
        # worker is lost meanwhile) has still used a try, and the event backs off like any failure.
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(Event).where(Event.id == event.id).values(attempts=attempts, next_attempt_at=retry_at)
            )
        sent_at = utcnow()
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event.id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signer.sign(event.id, sent_at, body),
        }
        status_code: int | None = None
        timed_out = False
        try:
            status_code = await self._post(url, body.encode(), headers)
            error = None if 200 <= status_code < 300 else f"the webhook answered HTTP {status_code}"
        except EgressRefused as refused:
            error = f"refused: {refused}"
        except TimeoutError:
            timed_out = True
            error = f"no answer within {self.deadline:g} s from {urlsplit(url).hostname}"
        except httpx.HTTPError as failure:
            # Named by kind and host only: a URL may carry credentials.
            error = f"{type(failure).__name__} reaching {urlsplit(url).hostname}"
        values: dict[str, Any] = {"last_status_code": status_code, "last_error": error}
        if error is None:
            values.update(status=EventStatus.DELIVERED, delivered_at=utcnow())
            result.delivered += 1
            observability.EVENTS_DELIVERED.labels(event.type).inc()
            log.info("event delivered", extra=context)
        else:
            result.failed_attempts += 1
            if retry_at > event.created_at + EVENT_RETRY_PERIOD:
                values.update(status=EventStatus.FAILED)
                result.given_up += 1
                observability.EVENTS_GIVEN_UP.labels(event.type).inc()
                log.warning("event given up", extra={**context, "error": error, "tries": attempts})
            else:
                observability.EVENT_DELIVERY_FAILURES.labels(event.type).inc()
                log.info("event delivery failed", extra={**context, "error": error, "tries": attempts})
        async with self.sessions() as session, session.begin():
            await session.execute(update(Event).where(Event.id == event.id).values(**values))
        return retry_at if timed_out else None

    async def _put_off(self, events: list[Event], until: datetime, url: str) -> None:
        """Put events off to `until` without a try, saying why."""
        if not events:
            return
        reason = f"not tried: {urlsplit(url).hostname} gave no answer in time to the event before it"
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(Event)
                .where(Event.id.in_([e.id for e in events]))
                .values(next_attempt_at=until, last_error=reason)
            )

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> int:
        """POST to the webhook at the address its host resolves to now, if that address may be sent
        to (Egress): the connection is made to that very address (the host name stays in `Host`,
        in TLS's SNI and in the certificate check), so a name cannot resolve once for the check
        and again elsewhere for the connection. The whole exchange ends within the deadline, and
        only the first ANSWER_KEPT bytes of the answer are read."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        async with asyncio.timeout(self.deadline):
            address = await self.egress.resolve(host, port)
            userinfo, _, hostport = parts.netloc.rpartition("@")
            literal = f"[{address}]" if address.version == 6 else str(address)
            netloc = f"{userinfo}@{literal}:{port}" if userinfo else f"{literal}:{port}"
            pinned = urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
            extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
            request = self.http.build_request(
                "POST", pinned, content=body, headers={**headers, "host": hostport}, extensions=extensions
            )
            response = await self.http.send(request, stream=True)
            try:
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read >= ANSWER_KEPT:
                        break
            finally:
                await response.aclose()
            return response.status_code

    async def _give_up(self, session: AsyncSession, events: list[Event], reason: str) -> None:
        """Mark these events failed, in the transaction the session has open (it read them)."""
        await session.execute(
            update(Event)
            .where(Event.id.in_([e.id for e in events]))
            .values(status=EventStatus.FAILED, last_error=reason)
        )
        await session.commit()

    async def _next_attempt_in(self, business_id: str) -> float | None:
        async with self.sessions() as session:
            earliest = await session.scalar(
                select(func.min(Event.next_attempt_at)).where(
                    Event.business_id == business_id, Event.status == EventStatus.PENDING
                )
            )
        if earliest is None:
            return None
        if earliest.tzinfo is None:
            earliest = earliest.replace(tzinfo=utcnow().tzinfo)
        return max(0.0, (earliest - utcnow()).total_seconds())


async def _postpone_until_recorded(session: AsyncSession, due: list[Event]) -> list[Event]:
    """The events to send now: a recorded call's `call.completed` waits (up to RECORDING_WAIT) for
    its recording, so that the event carries it. The others are put off a moment, in the
    session's transaction (committed here)."""
    calls = [e for e in due if e.type == CALL_COMPLETED and e.created_at > utcnow() - RECORDING_WAIT]
    if not calls:
        return due
    waiting = {
        tuple(row)
        for row in (
            await session.execute(
                select(CallAttempt.run_id, CallAttempt.lead_id, CallAttempt.attempt).where(
                    CallAttempt.run_id.in_({e.run_id for e in calls}),
                    CallAttempt.lead_id.in_({e.lead_id for e in calls}),
                    CallAttempt.recording_status == RecordingStatus.PENDING,
                )
            )
        ).all()
    }
    later = [e.id for e in calls if (e.run_id, e.lead_id, e.attempt) in waiting]
    if later:
        await session.execute(
            update(Event).where(Event.id.in_(later)).values(next_attempt_at=utcnow() + RECORDING_LOOK)
        )
        await session.commit()
    return [e for e in due if e.id not in later]


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
        "outcome": attempt.lead_outcome,
        # A connect answer's leg to the agent number, and the call's recording, when there are.
        "bridged": {"status": attempt.bridged_status, "seconds": attempt.bridged_seconds}
        if attempt.bridged_status
        else None,
        "recording": {
            "sid": attempt.recording_sid,
            "status": attempt.recording_status,
            "seconds": attempt.recording_seconds,
            "url": attempt.recording_url,
        }
        if attempt.recording_status
        else None,
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
