"""The line reaper: lines held by runs whose workflows are gone come back once their calls end.

An operator can terminate a run's workflow (or reset it away from calls it had placed) in the
Temporal Web UI. Its calls go on at Twilio and hold their line leases. The business's gate asks
this activity, every reap interval, to settle such runs: each call still live is hung up, each
ended call's outcome is written (which releases its lease), and once nothing of the run is left at
the carrier, the run's row is made final (`failed`, saying why)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from twilio.rest import Client as TwilioClient

from activities.courier import EventCourier
from activities.dialing import NO_RECORD, end_call, fetch_snapshot, find_unrecorded_call
from contracts.activities import REAP_LINES, CallSnapshot, ReapedLines, ReapLinesInput
from contracts.messages import Outcome
from contracts.names import run_id_of, run_workflow_id
from contracts.statuses import FINAL_ATTEMPT_STATUSES, LIVE_RUN_STATUSES, CallStatus, RunStatus, is_terminal
from db.leases import release_lines_of_ended_attempts
from db.models import Business, CallAttempt, Lead, LineLease, Run
from db.outcomes import finish_run, write_outcomes
from outbound_dialer import observability
from outbound_dialer.temporal_client import workflow_status

log = logging.getLogger(__name__)

# A lease whose attempt has no call SID yet may belong to a create still under way (a try lasts at
# most 20 s) or to a call Twilio's list does not show yet: it is looked up only after this long.
UNPLACED_GRACE = timedelta(minutes=2)
# A try sends its create within this long of claiming its line: a call created later is not its.
CREATE_SENT_WITHIN = timedelta(minutes=1)
NOT_PLACED = "not placed: the run's workflow ended before this call was placed"
WHY_GONE = {
    WorkflowExecutionStatus.TERMINATED: "the run's workflow was terminated in Temporal",
    WorkflowExecutionStatus.TIMED_OUT: "the run's workflow timed out in Temporal",
    WorkflowExecutionStatus.FAILED: "the run's workflow failed",
    WorkflowExecutionStatus.CANCELED: "the run's workflow was cancelled in Temporal",
    WorkflowExecutionStatus.CONTINUED_AS_NEW: "the run's workflow closed",
    WorkflowExecutionStatus.COMPLETED: "the run's workflow closed",
}


@dataclass
class _Held:
    """A call attempt of a gone run that may still hold a line or a call."""

    lead_id: int
    attempt: int
    call_sid: str | None
    phone: str
    claimed_at: datetime | None


class LineActivities:
    """Activities holding the database, Twilio and Temporal clients, built once in the worker."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        twilio: TwilioClient,
        client: Client,
        courier: EventCourier | None = None,
    ) -> None:
        self.sessions = sessions
        self.twilio = twilio
        self.client = client
        self.courier = courier

    @activity.defn(name=REAP_LINES)
    async def reap_lines(self, input: ReapLinesInput) -> ReapedLines:
        """Settle the business's runs whose workflows are gone: hang up their calls, write the
        outcomes of those that ended (releasing their lines) and, when none is left, end the run."""
        async with self.sessions() as session, session.begin():
            released = await release_lines_of_ended_attempts(
                await session.connection(), business_id=input.business_id
            )
            observability.LINES_REAPED.inc(released)
            leased = set(
                await session.scalars(
                    select(LineLease.run_id).where(LineLease.business_id == input.business_id).distinct()
                )
            )
            live = set(
                await session.scalars(
                    select(Run.id).where(
                        Run.business_id == input.business_id, Run.status.in_(LIVE_RUN_STATUSES)
                    )
                )
            )
            # The gate's holders are checked too, but only as runs of this business.
            holders = {run_id_of(w) for w in input.run_workflow_ids}
            ours = set(
                await session.scalars(
                    select(Run.id).where(Run.business_id == input.business_id, Run.id.in_(holders))
                )
            )
        reaped = ReapedLines()
        for run_id in sorted(leased | live | ours):
            activity.heartbeat(run_id)
            status = await self._workflow_status(run_id)
            if status == WorkflowExecutionStatus.RUNNING:
                reaped.running.append(run_workflow_id(run_id))
                if run_id in leased:
                    reaped.running_with_lines.append(run_workflow_id(run_id))
                    try:
                        await self._end_stale_leases(run_id)
                    except Exception:  # looked at again next time
                        log.warning("stale lines not looked at", extra={"run": run_id}, exc_info=True)
                continue
            reaped.gone.append(run_workflow_id(run_id))
            why = WHY_GONE.get(status, GONE) if status is not None else GONE
            try:
                left = await self._settle(input.business_id, run_id, why)
            except Exception:  # Twilio or the database refused: the run is looked at again next time
                log.warning("a gone run not settled yet", extra={"run": run_id}, exc_info=True)
                async with self.sessions() as session:
                    left = max(1, len(await _held_by(session, input.business_id, run_id)))
            if left:
                reaped.still_leased[run_workflow_id(run_id)] = left
        return reaped

    async def _end_stale_leases(self, run_id: str) -> None:
        """A running run's leases held by calls older than any call of the run can last (its time
        limit, ring timeout and margin): a call an earlier execution placed that this one does not
        know of (an operator reset the run). Twilio says it ended; its outcome is written (the run
        adopts that ending when it dials the attempt), and its line comes back."""
        async with self.sessions() as session:
            options = await session.scalar(select(Run.options).where(Run.id == run_id)) or {}
            longest = timedelta(
                seconds=int(options.get("call_time_limit_seconds", 3600))
                + int(options.get("ring_timeout_seconds", 30))
                + 2 * int(options.get("reconcile_margin_seconds", 60))
            )
            stale = await session.execute(
                select(LineLease.lead_id, LineLease.attempt, CallAttempt.call_sid)
                .join(
                    CallAttempt,
                    and_(
                        CallAttempt.run_id == LineLease.run_id,
                        CallAttempt.lead_id == LineLease.lead_id,
                        CallAttempt.attempt == LineLease.attempt,
                    ),
                )
                .where(
                    LineLease.run_id == run_id,
                    LineLease.claimed_at < datetime.now(UTC) - longest,
                    CallAttempt.call_sid.is_not(None),
                )
            )
            rows = list(stale)
        outcomes = []
        for row in rows:
            snapshot = await fetch_snapshot(self.twilio, row.call_sid)
            held = _Held(row.lead_id, row.attempt, row.call_sid, "", None)
            if (outcome := _outcome(held, row.call_sid, snapshot)) is not None:
                outcomes.append(outcome)
        if outcomes:
            async with self.sessions() as session, session.begin():
                events_for = await write_outcomes(session, run_id, outcomes)
            observability.LINES_REAPED.inc(len(outcomes))
            if events_for is not None and self.courier is not None:
                await self.courier.notify_soon(events_for)
            log.info("ended stale lines of a running run", extra={"run": run_id, "ended": len(outcomes)})

    async def _workflow_status(self, run_id: str) -> WorkflowExecutionStatus | None:
        return await workflow_status(self.client, run_workflow_id(run_id))

    async def _settle(self, business_id: str, run_id: str, why: str) -> int:
        """Settle one gone run; returns how many of its calls are still live (or may be)."""
        context = {"run": run_id}
        async with self.sessions() as session:
            caller_id = await session.scalar(select(Business.caller_id).where(Business.id == business_id))
            held = await _held_by(session, business_id, run_id)
        outcomes: list[Outcome] = []
        left = 0
        now = datetime.now(UTC)
        for call in held:
            activity.heartbeat(run_id, call.lead_id)
            sid = call.call_sid
            if sid is None:
                if call.claimed_at is not None and now - call.claimed_at < UNPLACED_GRACE:
                    left += 1
                    continue
                found = await self._call_it_placed(business_id, caller_id, call, now)
                if found is AMBIGUOUS:
                    left += 1
                    continue
                if found is None:
                    outcomes.append(
                        Outcome(call.lead_id, call.attempt, CallStatus.CANCELED, error_message=NOT_PLACED)
                    )
                    continue
                sid = str(found)
            snapshot = await fetch_snapshot(self.twilio, sid)
            if snapshot.found and not is_terminal(snapshot.status):
                if await self._workflow_status(run_id) == WorkflowExecutionStatus.RUNNING:
                    return len(held)  # reset back to life meanwhile: its calls are its own again
                log.info(
                    "hanging up a call of a gone run",
                    extra={**context, "lead": call.lead_id, "call_sid": sid},
                )
                snapshot = await end_call(
                    self.twilio, sid, answered=snapshot.status == CallStatus.IN_PROGRESS
                )
            outcome = _outcome(call, sid, snapshot)
            if outcome is None:
                left += 1
            else:
                outcomes.append(outcome)
        if await self._workflow_status(run_id) == WorkflowExecutionStatus.RUNNING:
            return len(held)
        events_for = None
        async with self.sessions() as session, session.begin():
            if outcomes:
                events_for = await write_outcomes(session, run_id, outcomes)
                observability.LINES_REAPED.inc(len(outcomes))
            if not left:
                events_for = (
                    await finish_run(session, run_id, RunStatus.FAILED, why, only_if_live=True) or events_for
                )
        if events_for is not None and self.courier is not None:
            await self.courier.notify_soon(events_for)
        log.info("settled a gone run", extra={**context, "ended": len(outcomes), "live": left, "reason": why})
        return left

    async def _call_it_placed(
        self, business_id: str, caller_id: str | None, call: _Held, now: datetime
    ) -> str | object | None:
        """The SID of the call an attempt's create placed without recording it; None if it placed
        none; AMBIGUOUS while another attempt of the business to the same number holds a line (a
        call found could be that one's; it is looked at again once that attempt has its call)."""
        if not caller_id:
            return AMBIGUOUS
        since = call.claimed_at or now - UNPLACED_GRACE
        async with self.sessions() as session:
            if await _other_attempts_to(session, business_id, call):
                return AMBIGUOUS
            found = await find_unrecorded_call(
                self.twilio, session, call.phone, caller_id, since, until=since + CREATE_SENT_WITHIN
            )
        return found.call_sid if found is not None else None


AMBIGUOUS = object()
GONE = "the run's workflow no longer exists"


async def _other_attempts_to(session: AsyncSession, business_id: str, call: _Held) -> bool:
    """Whether another attempt of the business to the same number holds a line: a call to that
    number found at Twilio could be its."""
    other = await session.scalar(
        select(LineLease.run_id)
        .join(Lead, Lead.id == LineLease.lead_id)
        .where(
            LineLease.business_id == business_id,
            Lead.phone == call.phone,
            ~and_(LineLease.lead_id == call.lead_id, LineLease.attempt == call.attempt),
        )
        .limit(1)
    )
    return other is not None


def _outcome(call: _Held, sid: str, snapshot: CallSnapshot) -> Outcome | None:
    if not snapshot.found:
        return Outcome(call.lead_id, call.attempt, CallStatus.FAILED, sid, error_message=NO_RECORD)
    if not is_terminal(snapshot.status):
        return None
    return Outcome(
        call.lead_id,
        call.attempt,
        snapshot.status,
        sid,
        duration=snapshot.duration,
        answered_by=snapshot.answered_by,
    )


async def _held_by(session: AsyncSession, business_id: str, run_id: str) -> list[_Held]:
    """The run's attempts that hold a line lease or are not final: a lease, with or without its
    attempt's row (a create that never committed), and a call whose end was never written."""
    leased = await session.execute(
        select(LineLease.lead_id, LineLease.attempt, LineLease.claimed_at, CallAttempt.call_sid, Lead.phone)
        .join(Lead, Lead.id == LineLease.lead_id)
        .outerjoin(
            CallAttempt,
            and_(
                CallAttempt.run_id == LineLease.run_id,
                CallAttempt.lead_id == LineLease.lead_id,
                CallAttempt.attempt == LineLease.attempt,
            ),
        )
        .where(LineLease.run_id == run_id, LineLease.business_id == business_id)
    )
    held = {
        (r.lead_id, r.attempt): _Held(r.lead_id, r.attempt, r.call_sid, r.phone, r.claimed_at) for r in leased
    }
    unfinished = await session.execute(
        select(CallAttempt.lead_id, CallAttempt.attempt, CallAttempt.call_sid, Lead.phone)
        .join(Lead, Lead.id == CallAttempt.lead_id)
        .join(Run, Run.id == CallAttempt.run_id)
        .where(
            CallAttempt.run_id == run_id,
            Run.business_id == business_id,
            CallAttempt.status.not_in(FINAL_ATTEMPT_STATUSES),
            CallAttempt.call_sid.is_not(None),
        )
    )
    for r in unfinished:
        held.setdefault((r.lead_id, r.attempt), _Held(r.lead_id, r.attempt, r.call_sid, r.phone, None))
    return list(held.values())
