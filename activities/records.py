"""Activities that read and write a run's records: leads in, outcomes out."""

from __future__ import annotations

import time

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.courier import EventCourier
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
from contracts.messages import LeadRef
from contracts.statuses import OUTCOMES
from contracts.zone_sets import pack_zones
from db.models import Business, Lead, Run, utcnow
from db.outcomes import finish_run, write_outcomes
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
