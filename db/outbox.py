"""The events outbox: a business's webhook events, recorded in the transaction that writes what
they report, so no crash can lose one. Each event's id is derived from what it reports, so writing
the same outcome twice makes one event. The business's events workflow delivers them
(`activities.events`)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.messages import Outcome
from contracts.statuses import EventStatus
from db.models import Business, Event, Run, utcnow
from db.upsert import insert_ignoring_conflict

CALL_COMPLETED = "call.completed"
RUN_COMPLETED = "run.completed"
EVENT_TYPES = (CALL_COMPLETED, RUN_COMPLETED)

_EVENT_IDS = uuid.UUID("6c1f6a52-8d1e-4c55-9a47-3f1f8f0e2b7d")


def event_id(type_: str, run_id: str, lead_id: int | None = None, attempt: int | None = None) -> str:
    """The event's id, from what it reports: the same outcome always makes the same event."""
    subject = f"{type_}/{run_id}" if lead_id is None else f"{type_}/{run_id}/{lead_id}/{attempt}"
    return f"evt_{uuid.uuid5(_EVENT_IDS, subject).hex}"


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
        "status": EventStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }
