"""A run's outcomes in the database: attempts' final words, their leads' outcomes, the run's final
status, with the lines those attempts held given back and the events they make for the business's
webhook, all in the caller's transaction."""

from __future__ import annotations

from typing import cast

from sqlalchemy import Table, bindparam, case, exists, func, update
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.messages import Outcome
from contracts.statuses import LEAD_QUEUED, LEAD_RETRYING, LIVE_RUN_STATUSES, LeadOutcome, outcome_for
from db.leases import AttemptKey, release_lines
from db.models import CallAttempt, Lead, Run, utcnow
from db.outbox import record_call_events, record_run_event
from db.upsert import insert_ignoring_conflict
from outbound_dialer import observability


async def finish_run(
    session: AsyncSession, run_id: str, status: str, reason: str | None, only_if_live: bool = False
) -> str | None:
    """Give the run its final status: leads never dialed become `cancelled` and the business's
    webhook gets `run.completed`. With `only_if_live`, a run whose row is already final is left as
    it is. Returns the business whose event was recorded, if any."""
    update_run = update(Run).where(Run.id == run_id)
    if only_if_live:
        update_run = update_run.where(Run.status.in_(LIVE_RUN_STATUSES))
    result = await session.execute(
        update_run.values(
            status=status, status_reason=reason, finished_at=func.coalesce(Run.finished_at, utcnow())
        )
    )
    if only_if_live and not getattr(result, "rowcount", 0):
        return None
    await session.execute(
        update(Lead)
        .where(Lead.run_id == run_id, Lead.status.in_([LEAD_QUEUED, LEAD_RETRYING]))
        .values(status=LeadOutcome.CANCELLED)
    )
    return await record_run_event(session, run_id)


_ATTEMPTS = cast(Table, CallAttempt.__table__)
_LEADS = cast(Table, Lead.__table__)

# Built once: each write runs the same statements with new parameters, so SQLAlchemy neither
# builds nor compiles a statement per outcome, and all of a batch's rows go in one executemany.
_FINISH_ATTEMPT = (
    update(_ATTEMPTS)
    .where(
        _ATTEMPTS.c.run_id == bindparam("o_run"),
        _ATTEMPTS.c.lead_id == bindparam("o_lead"),
        _ATTEMPTS.c.attempt == bindparam("o_attempt"),
    )
    .values(
        status=bindparam("o_status"),
        # Written again (a dial that carried it failed, or found every line busy), the same final
        # word keeps its time: the `call.completed` event reports it, and must not change.
        updated_at=case(
            (_ATTEMPTS.c.status == bindparam("o_status"), _ATTEMPTS.c.updated_at), else_=bindparam("o_now")
        ),
        **{
            name: func.coalesce(bindparam(f"o_{name}", type_=_ATTEMPTS.c[name].type), _ATTEMPTS.c[name])
            for name in ("call_sid", "duration", "answered_by", "error_code", "error_message", "outcome")
        },
    )
)
_SETTLE_LEAD = (
    update(_LEADS)
    .where(
        _LEADS.c.id == bindparam("o_lead"),
        _LEADS.c.run_id == bindparam("o_run"),
        ~exists().where(
            _ATTEMPTS.c.run_id == bindparam("o_run"),
            _ATTEMPTS.c.lead_id == bindparam("o_lead"),
            _ATTEMPTS.c.attempt > bindparam("o_attempt"),
        ),
    )
    .values(status=bindparam("o_lead_status"))
)


async def write_outcomes(session: AsyncSession, run_id: str, outcomes: list[Outcome]) -> str | None:
    """Write attempts' final statuses and their leads' outcomes, and a `call.completed` event for
    each if the business has a webhook. Safe to repeat and to apply late or out of order: an
    attempt's row only ever gets its own final word, and a lead takes its status from its latest
    attempt only. Returns the business's id when events were recorded for it."""
    if not outcomes:
        return None
    await insert_ignoring_conflict(
        session,
        CallAttempt,
        [
            {"run_id": run_id, "lead_id": o.lead_id, "attempt": o.attempt, "status": o.status}
            for o in outcomes
        ],
        ["run_id", "lead_id", "attempt"],
    )
    now = utcnow()
    rows = [
        {
            "o_run": run_id,
            "o_lead": o.lead_id,
            "o_attempt": o.attempt,
            "o_status": o.status,
            "o_now": now,
            "o_call_sid": o.call_sid,
            "o_duration": o.duration,
            "o_answered_by": o.answered_by,
            "o_error_code": o.error_code,
            "o_error_message": o.error_message,
            "o_outcome": o.outcome,
            "o_lead_status": (o.outcome or outcome_for(o.status)) if o.final else LEAD_RETRYING,
        }
        for o in outcomes
    ]
    connection = await session.connection()
    await connection.execute(_FINISH_ATTEMPT, rows)
    await connection.execute(_SETTLE_LEAD, rows)
    await release_lines(connection, (AttemptKey(run_id, o.lead_id, o.attempt) for o in outcomes))
    observability.outcomes_written(o.status for o in outcomes)
    return await record_call_events(session, run_id, outcomes)
