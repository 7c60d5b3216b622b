"""Activities that read and write a run's records: leads in, outcomes out."""

from __future__ import annotations

import time
from typing import cast

from sqlalchemy import Table, bindparam, case, exists, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.events import EventCourier, record_call_events, record_run_event
from contracts.activities import (
    LOAD_LEADS,
    LOAD_RUN,
    RECORD_OUTCOMES,
    RUN_NOT_FOUND,
    SET_RUN_STATUS,
    STOP_DIALS,
    LeadCounts,
    LoadLeadsInput,
    LoadLeadsOutput,
    LoadRunInput,
    RecordOutcomesInput,
    RunFacts,
    SetRunStatusInput,
)
from contracts.messages import LeadRef, Outcome
from contracts.statuses import LEAD_QUEUED, LEAD_RETRYING, LIVE_RUN_STATUSES, OUTCOMES, outcome_for
from contracts.zone_sets import pack_zones
from db.leases import AttemptKey, release_lines
from db.models import Business, CallAttempt, Lead, Run, utcnow
from db.upsert import insert_ignoring_conflict
from outbound_dialer import observability
from telephony.zones import lead_zones

# The API commits a run's row just after starting its workflow: a row still missing after this many
# tries of load_run never will be, and the run is given up. Other failures (the database away) are
# retried for as long as they last.
RUN_APPEARS_WITHIN_TRIES = 20


class RecordActivities:
    """Database activities, built once in the worker with its session factory."""

    def __init__(
        self, sessions: async_sessionmaker[AsyncSession], courier: EventCourier | None = None
    ) -> None:
        self.sessions = sessions
        self.courier = courier

    @activity.defn(name=LOAD_RUN)
    async def load_run(self, input: LoadRunInput) -> RunFacts:
        """Read the run and its business. The API commits the run after starting the workflow, so a
        missing row is retried RUN_APPEARS_WITHIN_TRIES times before the run is given up; a database
        that cannot be reached is retried until it can."""
        async with self.sessions() as session:
            row = (
                await session.execute(
                    select(Run, Business)
                    .join(Business, Run.business_id == Business.id)
                    .where(Run.id == input.run_id)
                )
            ).first()
        if row is None:
            raise ApplicationError(
                f"run {input.run_id} is not in the database",
                type=RUN_NOT_FOUND,
                non_retryable=activity.info().attempt >= RUN_APPEARS_WITHIN_TRIES,
            )
        run, business = row
        return RunFacts(
            business_id=business.id,
            caller_id=business.caller_id,
            max_concurrent_calls=business.max_concurrent_calls,
            total_leads=run.total_leads,
            at=time.time(),
        )

    @activity.defn(name=LOAD_LEADS)
    async def load_leads(self, input: LoadLeadsInput) -> LoadLeadsOutput:
        """A page of the run's leads after the cursor, in upload order, each with the time zones
        its calling window is read in."""
        async with self.sessions() as session:
            fallback = await session.scalar(
                select(Business.timezone)
                .join(Run, Run.business_id == Business.id)
                .where(Run.id == input.run_id)
            )
            rows = await session.execute(
                select(Lead.id, Lead.phone, Lead.timezone)
                .where(Lead.run_id == input.run_id, Lead.id > input.after_lead_id)
                .order_by(Lead.id)
                .limit(input.limit)
            )
            page = LoadLeadsOutput(
                [
                    LeadRef(id=lead_id, phone=phone, zones=lead_zones(phone, timezone, fallback))
                    for lead_id, phone, timezone in rows
                ]
            )
        if input.pack_zones:
            pack_zones(page.leads, page.zone_sets)
        page.at = time.time()
        return page

    @activity.defn(name=RECORD_OUTCOMES)
    async def record_outcomes(self, input: RecordOutcomesInput) -> float | None:
        """Write final attempt statuses and lead outcomes in one transaction, with their events for
        the business's webhook; safe to repeat. Returns when it was done (epoch seconds), which
        moves the run's clock on (runs from before read no answer)."""
        async with self.sessions() as session, session.begin():
            events_for = await write_outcomes(session, input.run_id, input.outcomes)
        if self.courier is not None:
            await self.courier.notify_soon(events_for)
        return time.time()

    @activity.defn(name=STOP_DIALS)
    async def stop_dials(self, input: LoadRunInput) -> None:
        """Mark the run cancelled for the dial activity, so a dial already under way places no call
        (the API does the same before it acknowledges a cancel)."""
        async with self.sessions() as session, session.begin():
            await session.execute(
                update(Run)
                .where(Run.id == input.run_id, Run.cancel_requested_at.is_(None))
                .values(cancel_requested_at=utcnow())
            )

    @activity.defn(name=SET_RUN_STATUS)
    async def set_run_status(self, input: SetRunStatusInput) -> LeadCounts | None:
        """Set the run's status; at the end, leads never dialed become `cancelled` and the
        business's webhook gets `run.completed` (its events workflow is told, or this is retried),
        and the leads' outcomes are returned: the table knows the calls of every execution of the
        run, an execution an operator reset only those it placed or adopted."""
        events_for, counts = None, None
        async with self.sessions() as session, session.begin():
            if input.final:
                events_for = await finish_run(session, input.run_id, input.status, input.reason)
                counts = await _lead_counts(session, input.run_id)
            else:
                await session.execute(
                    update(Run)
                    .where(Run.id == input.run_id)
                    .values(status=input.status, status_reason=input.reason)
                )
        if events_for is not None and self.courier is not None:
            await self.courier.notify(events_for)
        return counts


async def _lead_counts(session: AsyncSession, run_id: str) -> LeadCounts:
    rows = await session.execute(
        select(Lead.status, func.count()).where(Lead.run_id == run_id).group_by(Lead.status)
    )
    outcomes = {status: int(count) for status, count in rows.all() if status in OUTCOMES}
    return LeadCounts(sum(outcomes.values()), outcomes)


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
        .values(status="cancelled")
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
            for name in ("call_sid", "duration", "answered_by", "error_code", "error_message")
        },
    )
)
_SETTLE_LEAD = (
    update(_LEADS)
    .where(
        _LEADS.c.id == bindparam("o_lead"),
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
            "o_lead_status": outcome_for(o.status) if o.final else LEAD_RETRYING,
        }
        for o in outcomes
    ]
    connection = await session.connection()
    await connection.execute(_FINISH_ATTEMPT, rows)
    await connection.execute(_SETTLE_LEAD, rows)
    await release_lines(connection, (AttemptKey(run_id, o.lead_id, o.attempt) for o in outcomes))
    observability.outcomes_written(o.status for o in outcomes)
    return await record_call_events(session, run_id, outcomes)
