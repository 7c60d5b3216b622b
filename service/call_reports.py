"""What Twilio reports of a call after it was placed, kept on its attempt: the leg a connect answer
bridged to (its `<Dial>` action), and the call's recording (its recording status callback)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Update, or_, update
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.statuses import RecordingStatus
from db.models import CallAttempt, utcnow


@dataclass(frozen=True)
class AttemptCall:
    """The attempt a callback's URL names, and the call Twilio says it is about."""

    run_id: str
    lead_id: int
    attempt: int
    call_sid: str


@dataclass(frozen=True)
class BridgedLeg:
    """How the leg to the agent number went (Twilio's `DialCallStatus`, `DialCallDuration`)."""

    status: str
    seconds: int | None
    call_sid: str | None


@dataclass(frozen=True)
class Recording:
    """A call's recording (Twilio's `RecordingSid`, `RecordingStatus`, `RecordingDuration`, `RecordingUrl`)."""

    sid: str
    status: str
    seconds: int | None
    url: str | None
    at: datetime | None = None


def _the_attempt(call: AttemptCall) -> Update:
    # The attempt's row has the call's SID once it is placed; a row whose SID was lost (an adopted
    # call not yet stored) takes the report too. Another call's report changes nothing.
    return update(CallAttempt).where(
        CallAttempt.run_id == call.run_id,
        CallAttempt.lead_id == call.lead_id,
        CallAttempt.attempt == call.attempt,
        or_(CallAttempt.call_sid == call.call_sid, CallAttempt.call_sid.is_(None)),
    )


async def record_bridged_leg(session: AsyncSession, call: AttemptCall, leg: BridgedLeg) -> bool:
    """Keep the bridged leg's outcome and length on the attempt; False if no attempt matches."""
    result = await session.execute(
        _the_attempt(call).values(
            bridged_status=leg.status[:16], bridged_seconds=leg.seconds, bridged_call_sid=leg.call_sid
        )
    )
    return bool(getattr(result, "rowcount", 0))


async def record_recording(session: AsyncSession, call: AttemptCall, recording: Recording) -> bool:
    """Keep the recording on the attempt; False if no attempt matches. A recording already deleted
    at Twilio stays deleted (a late, repeated callback does not bring its URL back)."""
    result = await session.execute(
        _the_attempt(call)
        .where(
            or_(
                CallAttempt.recording_status.is_(None),
                CallAttempt.recording_status != RecordingStatus.DELETED,
            )
        )
        .values(
            recording_sid=recording.sid,
            recording_status=recording.status[:16],
            recording_seconds=recording.seconds,
            recording_url=recording.url,
            recording_at=recording.at or utcnow(),
        )
    )
    return bool(getattr(result, "rowcount", 0))
