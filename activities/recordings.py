"""Recordings past their business's retention are deleted at Twilio, and their attempts say so."""

from __future__ import annotations

import contextlib
import logging
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)
from twilio.base.exceptions import TwilioRestException
from twilio.rest import Client as Twilio

from contracts.activities import DELETE_EXPIRED_RECORDINGS, RetentionPass
from contracts.names import RETENTION_WORKFLOW, retention_schedule_id
from contracts.statuses import RecordingStatus
from db.models import Business, CallAttempt, Run, utcnow

log = logging.getLogger(__name__)

# Recordings one pass deletes at most before it reports back to its workflow.
PASS_SIZE = 200
RETENTION_EVERY = timedelta(hours=1)


async def ensure_retention_schedule(client: Client, task_queue: str) -> None:
    """Create the hourly schedule of RecordingRetentionWorkflow unless it exists (every worker
    asks; the first makes it). A run still going when the next is due makes the next one skip."""
    schedule_id = retention_schedule_id(task_queue)
    with contextlib.suppress(ScheduleAlreadyRunningError):
        await client.create_schedule(
            schedule_id,
            Schedule(
                action=ScheduleActionStartWorkflow(RETENTION_WORKFLOW, id=schedule_id, task_queue=task_queue),
                spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=RETENTION_EVERY)]),
                policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
            ),
        )


class RecordingActivities:
    """The retention activity, built once in the worker with its session factory and Twilio client."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], twilio: Twilio) -> None:
        self.sessions = sessions
        self.twilio = twilio

    @activity.defn(name=DELETE_EXPIRED_RECORDINGS)
    async def delete_expired_recordings(self) -> RetentionPass:
        """Delete at Twilio up to PASS_SIZE recordings made longer ago than their business keeps
        them; a recording Twilio no longer has counts as deleted, one it refuses to delete is
        tried again next time."""
        result = RetentionPass()
        async with self.sessions() as session:
            due = await _expired(session)
        for attempt_id, recording_sid in due:
            if await self._delete(recording_sid):
                async with self.sessions() as session, session.begin():
                    await session.execute(
                        update(CallAttempt)
                        .where(CallAttempt.id == attempt_id)
                        .values(recording_status=RecordingStatus.DELETED, recording_url=None)
                    )
                result.deleted += 1
            else:
                result.refused += 1
            activity.heartbeat(result.deleted + result.refused)
        result.more = len(due) == PASS_SIZE and result.deleted > 0
        if due:
            log.info(
                "recordings past their retention",
                extra={"deleted": result.deleted, "refused": result.refused},
            )
        return result

    async def _delete(self, recording_sid: str) -> bool:
        try:
            await self.twilio.recordings(recording_sid).delete_async()
        except TwilioRestException as error:
            if error.status == 404:
                return True
            log.warning(
                "recording not deleted",
                extra={"recording_sid": recording_sid, "status": error.status, "code": error.code},
            )
            return False
        return True


async def _expired(session: AsyncSession) -> list[tuple[int, str]]:
    """(attempt id, recording SID) of recordings older than their business's retention, oldest first."""
    businesses = (
        await session.execute(
            select(Business.id, Business.recording_retention_days).where(
                Business.recording_retention_days.is_not(None)
            )
        )
    ).all()
    due: list[tuple[int, str]] = []
    for business_id, days in businesses:
        rows = await session.execute(
            select(CallAttempt.id, CallAttempt.recording_sid)
            .join(Run, Run.id == CallAttempt.run_id)
            .where(
                Run.business_id == business_id,
                CallAttempt.recording_status == RecordingStatus.COMPLETED,
                CallAttempt.recording_sid.is_not(None),
                CallAttempt.recording_at < utcnow() - timedelta(days=days or 0),
            )
            .order_by(CallAttempt.recording_at)
            .limit(PASS_SIZE - len(due))
        )
        due.extend((attempt_id, sid) for attempt_id, sid in rows.all() if sid)
        if len(due) >= PASS_SIZE:
            break
    return due
