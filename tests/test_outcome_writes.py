"""Outcome writes are safe to repeat and to apply late: outcomes ride dials that may be retried."""

from __future__ import annotations

from uuid import uuid4

from sqlalchemy import select

from activities.records import RecordActivities, RecordOutcomesInput
from db.models import CallAttempt, Lead, Run
from tests.harness import Stack, new_number
from workflows.messages import Outcome


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
