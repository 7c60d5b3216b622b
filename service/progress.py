"""A run's progress as the database records it, for runs whose workflow has ended (or cannot answer)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.messages import RunProgress
from contracts.statuses import FINAL_ATTEMPT_STATUSES, LEAD_RETRYING, OUTCOMES
from db.models import CallAttempt, Lead, Run
from service.schemas import Progress


async def progress_from_database(session: AsyncSession, run: Run) -> Progress:
    """Counts from the leads and attempts tables: outcomes per lead, calls per attempt."""
    lead_counts = dict(
        (
            await session.execute(
                select(Lead.status, func.count()).where(Lead.run_id == run.id).group_by(Lead.status)
            )
        ).all()
    )
    live = (
        await session.execute(
            select(CallAttempt.call_sid.is_not(None), func.count())
            .where(CallAttempt.run_id == run.id, CallAttempt.status.not_in(FINAL_ATTEMPT_STATUSES))
            .group_by(CallAttempt.call_sid.is_not(None))
        )
    ).all()
    in_flight = sum(count for has_sid, count in live if has_sid)
    dialing = sum(count for has_sid, count in live if not has_sid)
    outcomes = {name: lead_counts.get(name, 0) for name in OUTCOMES}
    done = sum(outcomes.values())
    retry_waiting = lead_counts.get(LEAD_RETRYING, 0)
    return Progress(
        total=run.total_leads,
        queued=max(0, run.total_leads - done - in_flight - dialing - retry_waiting),
        dialing=dialing,
        in_flight=in_flight,
        retry_waiting=retry_waiting,
        done=done,
        outcomes=outcomes,
    )


def progress_from_workflow(progress: RunProgress) -> Progress:
    """The workflow's own live counts."""
    return Progress(
        total=progress.total,
        queued=progress.queued,
        dialing=progress.dialing,
        in_flight=progress.in_flight,
        retry_waiting=progress.retry_waiting,
        window_waiting=progress.window_waiting,
        done=progress.done,
        outcomes=progress.outcomes,
        window_opens_at=datetime.fromisoformat(progress.window_opens_at)
        if progress.window_opens_at
        else None,
    )
