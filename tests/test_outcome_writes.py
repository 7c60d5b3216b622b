"""Outcome writes are safe to repeat and to apply late: outcomes ride dials that may be retried. And a
run's first read of its row gives up on a row that never appears, not on a database that is away."""

from __future__ import annotations

import dataclasses
from uuid import uuid4

import pytest
from sqlalchemy import select
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.records import RUN_APPEARS_WITHIN_TRIES, RecordActivities
from contracts.activities import RUN_NOT_FOUND, LoadRunInput, RecordOutcomesInput
from contracts.messages import Outcome
from db.engine import create_engine, create_sessionmaker
from db.leases import AttemptKey, claim_line, lines_held_by_run, release_lines_of_ended_attempts
from db.models import CallAttempt, Lead, Run
from support.drive import new_number
from support.stack import Stack
from workflows.outbound_run import LOAD_RUN_RETRY


async def test_a_late_write_of_an_earlier_attempt_does_not_undo_the_leads_outcome(stack: Stack) -> None:
    business = await stack.create_business()
    async with stack.sessions() as session, session.begin():
        run = Run(id=uuid4().hex, business_id=business.id, status="running", total_leads=1, options={})
        session.add(run)
        await session.flush()
        lead = Lead(run_id=run.id, phone=new_number())
        session.add(lead)
    busy = Outcome(lead.id, 1, "busy", call_sid=f"CA{uuid4().hex}", final=False)
    answered = Outcome(lead.id, 2, "completed", call_sid=f"CA{uuid4().hex}", duration=42)
    records = RecordActivities(stack.sessions)
    await records.record_outcomes(RecordOutcomesInput(run.id, [busy]))
    await records.record_outcomes(RecordOutcomesInput(run.id, [answered]))
    await records.record_outcomes(RecordOutcomesInput(run.id, [busy]))  # a dial that carried it, retried

    async with stack.sessions() as session:
        assert await session.scalar(select(Lead.status).where(Lead.id == lead.id)) == "answered"
        attempts = (
            await session.execute(
                select(CallAttempt.attempt, CallAttempt.status, CallAttempt.duration)
                .where(CallAttempt.lead_id == lead.id)
                .order_by(CallAttempt.attempt)
            )
        ).all()
    assert [tuple(a) for a in attempts] == [(1, "busy", None), (2, "completed", 42)]


async def test_an_outcome_names_a_lead_of_its_own_run_only(stack: Stack) -> None:
    """A lead is settled by its run and id together: an outcome written for one run that names
    another run's lead (a crafted or mistaken activity input) leaves that lead as it was."""
    business = await stack.create_business()
    async with stack.sessions() as session, session.begin():
        runs = [
            Run(id=uuid4().hex, business_id=business.id, status="running", total_leads=1, options={})
            for _ in "ab"
        ]
        session.add_all(runs)
        await session.flush()
        theirs = Lead(run_id=runs[1].id, phone=new_number())
        session.add(theirs)
    records = RecordActivities(stack.sessions)
    await records.record_outcomes(RecordOutcomesInput(runs[0].id, [Outcome(theirs.id, 1, "busy")]))
    async with stack.sessions() as session:
        assert await session.scalar(select(Lead.status).where(Lead.id == theirs.id)) == "queued"


async def test_a_run_row_that_never_appears_is_given_up_but_a_database_away_is_waited_out(
    stack: Stack,
) -> None:
    """load_run starts every execution (continue-as-new too): a run missing after its tries fails,
    but a database that cannot be reached is retried however long it stays away."""
    records = RecordActivities(stack.sessions)
    missing = LoadRunInput(uuid4().hex)

    async def load(attempt: int, activities: RecordActivities) -> ApplicationError | Exception:
        environment = ActivityEnvironment()
        environment.info = dataclasses.replace(environment.info, attempt=attempt)
        with pytest.raises(Exception) as raised:
            await environment.run(activities.load_run, missing)
        return raised.value

    early = await load(1, records)
    assert isinstance(early, ApplicationError) and early.type == RUN_NOT_FOUND and not early.non_retryable
    last = await load(RUN_APPEARS_WITHIN_TRIES, records)
    assert isinstance(last, ApplicationError) and last.type == RUN_NOT_FOUND and last.non_retryable

    unreachable = create_engine("postgresql+asyncpg://postgres@127.0.0.1:1/test")
    try:
        away = await load(RUN_APPEARS_WITHIN_TRIES * 5, RecordActivities(create_sessionmaker(unreachable)))
    finally:
        await unreachable.dispose()
    assert not isinstance(away, ApplicationError)
    assert LOAD_RUN_RETRY.maximum_attempts == 0, (
        "load_run's retries must not run out while the database is away"
    )


async def test_the_lines_of_several_ended_attempts_come_back_in_one_call(stack: Stack) -> None:
    """Found in review: giving back the lines of more than one attempt at once failed (an expanding
    IN in an executemany); a dial gives back at most one today, the reaper and later callers more."""
    business = await stack.create_business(cap=3)
    async with stack.sessions() as session, session.begin():
        run = Run(id=uuid4().hex, business_id=business.id, status="running", total_leads=3, options={})
        session.add(run)
        await session.flush()
        leads = [Lead(run_id=run.id, phone=new_number()) for _ in range(3)]
        session.add_all(leads)
        await session.flush()
        keys = [AttemptKey(run.id, lead.id, 1) for lead in leads]
        for key in keys:
            assert await claim_line(await session.connection(), business.id, key) is not None
        session.add_all(
            [
                CallAttempt(run_id=run.id, lead_id=keys[0].lead_id, attempt=1, status="completed"),
                CallAttempt(run_id=run.id, lead_id=keys[1].lead_id, attempt=1, status="busy"),
                CallAttempt(run_id=run.id, lead_id=keys[2].lead_id, attempt=1, status="in-progress"),
            ]
        )
    async with stack.sessions() as session, session.begin():
        await release_lines_of_ended_attempts(await session.connection(), keys=keys)
    async with stack.sessions() as session:
        held = await lines_held_by_run(await session.connection(), run.id)
    assert [line.key for line in held] == [keys[2]]  # the call still going keeps its line
