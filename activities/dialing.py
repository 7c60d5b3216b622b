"""Dialing activities: place a call exactly once, hang up, and ask Twilio what became of a call."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, bindparam, exists, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from sqlalchemy.sql import Executable
from temporalio import activity
from temporalio.exceptions import ApplicationError
from twilio.base import values
from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client
from twilio.rest.api.v2010.account.call import CallInstance

from activities.courier import EventCourier
from contracts.activities import (
    ACCOUNT_ERROR,
    ANSWER_INVALID,
    ANSWER_MACHINE,
    DO_NOT_CALL,
    FETCH_CALL,
    HANG_UP,
    INVALID_NUMBER,
    LINE_BUSY,
    NO_RECORD,
    PLACE_CALL,
    RUN_CANCELLED,
    TWILIO_REFUSED,
    AnswerMachineInput,
    CallSnapshot,
    DialInput,
    DialOutput,
    FetchCallInput,
    HangUpInput,
    MachineAnswered,
)
from contracts.messages import ON_MACHINE_CONTINUE, ON_MACHINE_VOICEMAIL, Answer, Message
from contracts.statuses import DIALING, FINAL_ATTEMPT_STATUSES, CallStatus, RecordingStatus
from db.leases import AttemptKey, Claimed, claim_line, release_lines, release_lines_of_ended_attempts
from db.models import AgentNumber, Business, CallAttempt, DoNotCall, Lead, Run, utcnow
from db.outcomes import write_outcomes
from db.upsert import dialect_insert
from outbound_dialer import observability
from telephony.answers import LeadFields, says_lead_fields, twiml_for, voice_app_url
from telephony.twilio_client import (
    ACCOUNT_ERROR_CODES,
    NOT_IN_PROGRESS,
    NUMBER_ERROR_CODES,
    RETRY_LATER_CODES,
    CallbackUrls,
    last_retry_after,
)

log = logging.getLogger(__name__)

# A retry waits this long after its earlier try claimed its line before it looks for the call that
# try may have placed: Twilio's call lists show new calls late, and queued calls have no start time.
LOOKUP_WAIT = "WaitingForCallLists"
# A dial that finds every line in use asks again a few times (another run's ended call is about to
# give its lease back) before it answers `line_busy`.
LINE_WAITS_SECONDS = (0.05, 0.1, 0.2, 0.4)
# Only what changes a decision: answered (the call may now last up to its time limit) and the end.
STATUS_EVENTS = ["answered", "completed"]
# Clock skew allowed between us and Twilio when looking for a call we may already have placed.
LOOKUP_SKEW = timedelta(minutes=2)

# The statements of the dial path, built once: only their parameters change from call to call.
_ATTEMPTS = cast(Table, CallAttempt.__table__)
_RUNS = cast(Table, Run.__table__)
_DNC = cast(Table, DoNotCall.__table__)
_KEY = (
    _ATTEMPTS.c.run_id == bindparam("a_run"),
    _ATTEMPTS.c.lead_id == bindparam("a_lead"),
    _ATTEMPTS.c.attempt == bindparam("a_attempt"),
)
_CLAIMED = select(
    _ATTEMPTS.c.call_sid,
    _ATTEMPTS.c.status,
    _ATTEMPTS.c.duration,
    _ATTEMPTS.c.answered_by,
    _ATTEMPTS.c.error_code,
    _ATTEMPTS.c.error_message,
).where(*_KEY)
_DIAL_BLOCKERS = (
    _RUNS.c.cancel_requested_at,
    exists().where(_DNC.c.business_id == bindparam("f_business"), _DNC.c.phone == bindparam("f_to")),
)
# The share lock makes a cancel wait for creates already under way, so once the API has
# acknowledged a cancel no call can be created (PostgreSQL; SQLite, one writer at a time, has no
# row locks).
_FENCE = select(*_DIAL_BLOCKERS).where(_RUNS.c.id == bindparam("f_run")).with_for_update(read=True, of=_RUNS)
_STORE_SID = (
    update(_ATTEMPTS)
    .where(*_KEY, _ATTEMPTS.c.call_sid.is_(None))
    .values(
        call_sid=bindparam("a_sid"),
        status=CallStatus.QUEUED,
        updated_at=bindparam("a_now"),
        recording_status=bindparam("a_recording"),
    )
)
_CLAIMS: dict[str, Executable] = {}


def _claim_statement(dialect: str) -> Executable:
    """INSERT the attempt unless it exists, returning a row only when it was written now; one
    statement per database kind. On PostgreSQL the same statement takes the cancel fence and reads
    the do-not-call list (one round trip before the create instead of two)."""
    if dialect not in _CLAIMS:
        insert = (
            dialect_insert(dialect, _ATTEMPTS)
            .values(
                run_id=bindparam("a_run"),
                lead_id=bindparam("a_lead"),
                attempt=bindparam("a_attempt"),
                status=DIALING,
            )
            .on_conflict_do_nothing(index_elements=["run_id", "lead_id", "attempt"])
            .returning(_ATTEMPTS.c.id)
        )
        if dialect == "postgresql":
            claim = insert.cte("claim")
            _CLAIMS[dialect] = _FENCE.add_columns(exists(select(claim.c.id)))
        else:
            _CLAIMS[dialect] = insert
    return _CLAIMS[dialect]


@dataclass(frozen=True)
class _Claim:
    """The attempt's row as the dial found it, and what may stop the dial."""

    new: bool
    cancel_requested_at: object
    on_do_not_call: bool


async def _claim(connection: AsyncConnection, input: DialInput) -> _Claim:
    """Write the attempt's row unless an earlier try did, take the cancel fence, read the DNC list."""
    dialect = connection.dialect.name
    key = _attempt_key(input)
    fence = {"f_run": input.run_id, "f_business": input.business_id, "f_to": input.to}
    if dialect == "postgresql":
        cancel_requested_at, suppressed, new = (
            await connection.execute(_claim_statement(dialect), {**key, **fence})
        ).one()
    else:
        new = (await connection.execute(_claim_statement(dialect), key)).first() is not None
        cancel_requested_at, suppressed = (await connection.execute(_FENCE, fence)).one()
    return _Claim(bool(new), cancel_requested_at, bool(suppressed))


@dataclass(frozen=True)
class ToRun:
    """What Twilio runs when the call is answered: TwiML given with the create, or the URL of the
    business's voice app that it fetches the TwiML from."""

    twiml: str | None = None
    url: str | None = None


async def _what_to_run(session: AsyncSession, input: DialInput, dial_action: str) -> ToRun:
    """The run's answer as TwiML (with the lead's fields if it names them; a connect answer's leg
    reported to `dial_action`), or as its voice app's signed URL; runs started before answers
    were taken play their `twiml`."""
    if input.answer is None:
        return ToRun(twiml=input.twiml)
    if input.answer.kind == "voice_app":
        secret = await session.scalar(select(Business.answer_secret).where(Business.id == input.business_id))
        if secret is None:
            raise ApplicationError(
                "the business has no voice app secret", type=ANSWER_INVALID, non_retryable=True
            )
        at = datetime.now(UTC)
        return ToRun(url=voice_app_url(input.answer, secret, input.run_id, input.lead_id, input.attempt, at))
    return ToRun(twiml=await _twiml(session, input, dial_action))


async def _twiml(session: AsyncSession, input: DialInput, dial_action: str) -> str:
    """The answer as TwiML, with the lead's fields if it names them."""
    assert input.answer is not None
    if input.answer.kind == "connect" and not await _registered(
        session, input.business_id, input.answer.number
    ):
        # Checked when the run started too; checked again here, as the number may have been taken
        # off the business's agent numbers since: no call is placed to be bridged there.
        raise ApplicationError(
            f"{input.answer.number} is not one of the business's agent numbers",
            type=ANSWER_INVALID,
            non_retryable=True,
        )
    try:
        return await _twiml_with_lead(
            session, input.answer, input.run_id, input.lead_id, input.attempt, input.to, dial_action
        )
    except ValueError as error:
        # The answer itself is wrong (a kind this worker does not know, mid-deploy): every call of
        # the run would be refused the same way.
        raise ApplicationError(str(error), type=ANSWER_INVALID, non_retryable=True) from None


async def _twiml_with_lead(
    session: AsyncSession,
    said: Answer | Message,
    run_id: str,
    lead_id: int,
    attempt: int,
    to: str,
    dial_action: str | None = None,
) -> str:
    """An answer or a voicemail as TwiML, with the lead's fields (read only if it names them)."""
    lead = LeadFields(phone=to, run_id=run_id, lead_id=lead_id, attempt=attempt)
    if says_lead_fields(said):
        row = (
            await session.execute(
                select(Lead.name, Lead.extra).where(Lead.id == lead_id, Lead.run_id == run_id)
            )
        ).first()
        if row is not None:
            lead = replace(lead, name=row.name, metadata=row.extra or {})
    return twiml_for(said, lead, dial_action)


def _machine_detection(input: DialInput, callback: str) -> dict[str, Any]:
    """The create's answering-machine detection, when the run's answer asks what to do on a
    machine (or the run asked only to know): in the background (`AsyncAmd`), so a person who
    answers hears the answer at once, with Twilio's verdict sent to its own callback. A voicemail
    waits for the end of the machine's greeting (`DetectMessageEnd`)."""
    on_machine = input.answer.on_machine if input.answer is not None else None
    if on_machine is None and input.machine_detection:
        on_machine = ON_MACHINE_CONTINUE
    if on_machine is None:
        return {}
    return {
        "machine_detection": "DetectMessageEnd" if on_machine == ON_MACHINE_VOICEMAIL else "Enable",
        "async_amd": "true",
        "async_amd_status_callback": callback,
        "async_amd_status_callback_method": "POST",
    }


def _recording(input: DialInput, callback: str) -> dict[str, Any]:
    """The create's recording, when the run's answer records: the whole call, reported to its own
    callback once made (or found to have no audio: `absent`)."""
    if input.answer is None or not input.answer.record:
        return {}
    return {
        "record": True,
        "recording_status_callback": callback,
        "recording_status_callback_method": "POST",
        "recording_status_callback_event": ["completed", "absent"],
    }


async def _registered(session: AsyncSession, business_id: str, number: str | None) -> bool:
    found = await session.scalar(
        select(AgentNumber.id).where(AgentNumber.business_id == business_id, AgentNumber.phone == number)
    )
    return found is not None


def _attempt_key(input: DialInput) -> dict[str, Any]:
    return {"a_run": input.run_id, "a_lead": input.lead_id, "a_attempt": input.attempt}


class DialingActivities:
    """Activities that talk to Twilio, built once in the worker with its clients."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        twilio: Client,
        callbacks: CallbackUrls,
        courier: EventCourier | None = None,
        lookup_delay: timedelta = timedelta(seconds=15),
    ) -> None:
        self.sessions = sessions
        self.twilio = twilio
        self.callbacks = callbacks
        self.courier = courier
        # How long after a create that may have placed its call the call is looked for in Twilio's
        # lists (TWILIO_LOOKUP_DELAY_SECONDS): longer than they lag, and than a call stays queued.
        self.lookup_delay = lookup_delay

    @activity.defn(name=PLACE_CALL)
    async def place_call(self, input: DialInput) -> DialOutput:
        """Place one call for (run, lead, attempt), at most once.

        One transaction, held open across the create: it writes the attempt's row under its unique
        key (a second try of the same dial waits on it, then finds the call), takes the run's
        cancel fence and checks the do-not-call list, places the call, and stores the call's SID
        with the outcomes the dial carries. A row that already has a SID is the answer. A retry is
        never blind: an earlier try may have reached Twilio (a lost response, a killed worker), so
        Twilio is asked for a matching call placed since the dial was first scheduled.

        A try that created its call and then lost its transaction (the database went away) leaves
        the call in its heartbeat details, which Temporal hands to the next try: that try adopts
        the call even while Twilio's call list does not show it yet.
        """
        key = AttemptKey(input.run_id, input.lead_id, input.attempt)
        line, events_for = await self._take_line(input, key)
        if events_for is not None and self.courier is not None:
            await self.courier.notify_soon(events_for)
        if line is None:
            log.info(
                "every line in use",
                extra={"run": input.run_id, "lead": input.lead_id, "attempt": input.attempt},
            )
            observability.LINES_BUSY.inc()
            if input.answer_version >= 2:
                return DialOutput("", "line_busy", line_busy=True, at=time.time())
            raise ApplicationError(
                "every line of the business is in use", type=LINE_BUSY, next_retry_delay=timedelta(seconds=2)
            )
        # An earlier try that still holds this attempt's line may have sent its create (a try that
        # certainly did not gives its line back): look before dialing. Dials of runs from before
        # the leases (answer version 1) may follow a try that held none.
        earlier = line.held_before or (input.answer_version < 2 and activity.info().attempt > 1)
        dial = _DialState(line, earlier_may_have_placed=earlier)
        try:
            async with self.sessions() as session, session.begin():
                placed = await self._place(session, input, dial)
        except BaseException as error:
            if dial.created:
                activity.heartbeat(dial.created.call_sid, dial.created.status)
            elif dial.never_placed(error):
                await self._give_back_line(key)
            raise
        placed.took_seconds = round((datetime.now(UTC) - activity.info().scheduled_time).total_seconds(), 3)
        placed.at = time.time()
        return placed

    async def _take_line(self, input: DialInput, key: AttemptKey) -> tuple[Claimed | None, str | None]:
        """Claim a line lease for the attempt, committed before Twilio is asked: the attempt's own
        lease if an earlier try took one, else a free slot below the cap, asking again briefly while
        none is. The outcomes this dial carries are written first, in the same transaction that
        gives back their lines: a line comes back only with its attempt's final word, which a late
        try of that attempt's dial reads (and adopts its call) instead of dialing again. Also
        returns the business whose events the outcomes recorded, if any."""
        events_for = None
        for wait in (0.0, *LINE_WAITS_SECONDS):
            if wait:
                await asyncio.sleep(wait)
            async with self.sessions() as session, session.begin():
                if wait == 0.0:
                    events_for = await write_outcomes(session, input.run_id, input.outcomes)
                    await release_lines_of_ended_attempts(
                        await session.connection(),
                        keys=[AttemptKey(input.run_id, f.lead_id, f.attempt) for f in input.release],
                    )
                line = await claim_line(await session.connection(), input.business_id, key)
            if line is not None:
                return line, events_for
        return None, events_for

    async def _give_back_line(self, key: AttemptKey) -> None:
        """Release the line of a dial that certainly placed no call."""
        try:
            async with self.sessions() as session, session.begin():
                await release_lines(await session.connection(), [key])
        except Exception:  # the retry, or the outcome's write, gives it back then
            log.warning("line not given back", extra={"run": key.run_id, "lead": key.lead_id}, exc_info=True)

    async def _place(self, session: AsyncSession, input: DialInput, dial: _DialState) -> DialOutput:
        """place_call's transaction. A call it creates is put in `dial.created` at once, before
        anything can fail to record it."""
        context = {"run": input.run_id, "lead": input.lead_id, "attempt": input.attempt}
        claim = await _claim(await session.connection(), input)
        if not claim.new:
            earlier = (await (await session.connection()).execute(_CLAIMED, _attempt_key(input))).one()
            if earlier.call_sid:
                log.info("call already placed", extra={**context, "call_sid": earlier.call_sid})
                observability.CALLS_ADOPTED.inc()
                placed = DialOutput(earlier.call_sid, earlier.status)
                if input.answer_version >= 2:
                    placed = await self._as_it_is_now(placed, earlier)
                    if placed.status in FINAL_ATTEMPT_STATUSES:
                        await self._ended_holds_no_line(session, input)
                await self._store_sid(session, input, placed)
                return placed
            if input.answer_version >= 2 and earlier.status in FINAL_ATTEMPT_STATUSES:
                # Ended without a call by an earlier execution of the run (reset by an operator).
                await self._ended_holds_no_line(session, input)
                ended = DialOutput(
                    "", earlier.status, error_code=earlier.error_code, error_message=earlier.error_message
                )
                return ended
        if dial.earlier_may_have_placed:
            found = _created_by_earlier_try()
            if found is None:
                self._wait_for_call_lists(dial)
                found = await find_unrecorded_call(
                    self.twilio, session, input.to, input.from_, activity.info().scheduled_time
                )
            if found is not None:
                log.info(
                    "adopted call placed by an earlier try", extra={**context, "call_sid": found.call_sid}
                )
                observability.CALLS_ADOPTED.inc()
                await self._store_sid(session, input, found)
                return found
        if claim.cancel_requested_at is not None:
            raise ApplicationError(
                "the run was cancelled before this call was placed",
                type=RUN_CANCELLED,
                non_retryable=True,
            )
        if claim.on_do_not_call:
            raise ApplicationError(
                "the number is on the business's do-not-call list", type=DO_NOT_CALL, non_retryable=True
            )
        dial_action = self.callbacks.dial(input.run_id, input.lead_id, input.attempt)
        call = await self._create(input, dial, await _what_to_run(session, input, dial_action))
        placed = DialOutput(call.sid or "", call.status or CallStatus.QUEUED)
        dial.created = placed
        log.info("call placed", extra={**context, "call_sid": placed.call_sid})
        observability.CALLS_PLACED.inc()
        await self._store_sid(session, input, placed)
        return placed

    async def _create(self, input: DialInput, dial: _DialState, runs: ToRun) -> CallInstance:
        """Ask Twilio to place the call. A refusal is classified (a 4xx about the number or the
        account fails for good); a 5xx or no answer may have placed it, and is retried after the
        lookup delay, when the retry looks for it first."""
        dial.sent = True
        try:
            return await self.twilio.calls.create_async(
                to=input.to,
                from_=input.from_,
                twiml=runs.twiml if runs.twiml is not None else values.unset,
                url=runs.url if runs.url is not None else values.unset,
                method="POST" if runs.url is not None else values.unset,
                status_callback=self.callbacks.status(input.run_id, input.lead_id, input.attempt),
                status_callback_event=STATUS_EVENTS,
                status_callback_method="POST",
                timeout=input.ring_timeout_seconds,
                time_limit=input.call_time_limit_seconds,
                **_machine_detection(
                    input, self.callbacks.machine(input.run_id, input.lead_id, input.attempt)
                ),
                **_recording(input, self.callbacks.recording(input.run_id, input.lead_id, input.attempt)),
            )
        except TwilioRestException as error:
            dial.refused = error.status < 500
            failure = _classify(error)
            observability.dial_failed(failure.type or "TwilioError")
            if not dial.refused:  # a 5xx may have placed the call: look for it once lists show it
                failure = ApplicationError(
                    failure.message, *failure.details, type=failure.type, next_retry_delay=self.lookup_delay
                )
            raise failure from None
        except Exception as error:  # no answer from Twilio (timed out, reset): it may have placed it
            observability.dial_failed(type(error).__name__)
            # Named by its type only: some exceptions' text carries the request, auth header and all.
            raise ApplicationError(
                f"no answer from Twilio to the create ({type(error).__name__})",
                type=type(error).__name__,
                next_retry_delay=self.lookup_delay,
            ) from None

    def _wait_for_call_lists(self, dial: _DialState) -> None:
        """Raise (to be retried later) while Twilio's lists may not show yet a call that an earlier
        try placed: they show new calls late, and find queued ones only by status."""
        waited = datetime.now(UTC) - dial.line.claimed_at
        if waited < self.lookup_delay:
            raise ApplicationError(
                "waiting for Twilio's call lists to show a call an earlier try may have placed",
                type=LOOKUP_WAIT,
                next_retry_delay=self.lookup_delay - waited,
            )

    async def _ended_holds_no_line(self, session: AsyncSession, input: DialInput) -> None:
        """An attempt that has ended holds no line (a late try of it may have claimed one again)."""
        await release_lines(
            await session.connection(), [AttemptKey(input.run_id, input.lead_id, input.attempt)]
        )

    async def _as_it_is_now(self, placed: DialOutput, earlier: Any) -> DialOutput:
        """An adopted call's ending as the attempt's row has it, or else as Twilio says now: a run
        redialing what an earlier execution of it dialed learns at once that the call has ended."""
        if earlier.status in FINAL_ATTEMPT_STATUSES:
            return DialOutput(
                placed.call_sid,
                earlier.status,
                duration=earlier.duration,
                answered_by=earlier.answered_by,
                error_code=earlier.error_code,
                error_message=earlier.error_message,
            )
        snapshot = await fetch_snapshot(self.twilio, placed.call_sid)
        if not snapshot.found:
            return DialOutput(placed.call_sid, CallStatus.FAILED, error_message=NO_RECORD)
        return DialOutput(
            placed.call_sid, snapshot.status, duration=snapshot.duration, answered_by=snapshot.answered_by
        )

    async def _store_sid(self, session: AsyncSession, input: DialInput, placed: DialOutput) -> None:
        """Record the call's SID on its attempt."""
        await (await session.connection()).execute(
            _STORE_SID,
            {
                **_attempt_key(input),
                "a_sid": placed.call_sid,
                "a_now": utcnow(),
                # Reported by its own callback once made: the call's event waits a little for it.
                "a_recording": RecordingStatus.PENDING
                if input.answer is not None and input.answer.record
                else None,
            },
        )

    @activity.defn(name=HANG_UP)
    async def hang_up(self, input: HangUpInput) -> CallSnapshot:
        """End a call: cancel it if it has not been answered, complete it if it has. Returns what
        Twilio says of the call afterwards: a call cancelled while queued gets no status callback,
        so this answer is the only news of its end. A call that is already over is success."""
        try:
            snapshot = await end_call(self.twilio, input.call_sid, input.answered)
        except ApplicationError as error:
            if input.keep_trying and error.non_retryable:
                raise ApplicationError(str(error), *error.details, type=error.type) from None
            raise
        return replace(snapshot, at=time.time())

    @activity.defn(name=ANSWER_MACHINE)
    async def answer_machine(self, input: AnswerMachineInput) -> MachineAnswered:
        """Put the run's voicemail on a call a machine answered (Twilio plays it, then hangs up).
        A call that has already ended is not an error: `done` is False. Once Twilio has taken it,
        a retry of this activity (its answer lost) does not send it again, which would start the
        message over."""
        context = {
            "run": input.run_id,
            "lead": input.lead_id,
            "attempt": input.attempt,
            "call_sid": input.call_sid,
        }
        if activity.info().heartbeat_details:
            return MachineAnswered(done=True, at=time.time())
        if input.voicemail is None:
            raise ApplicationError("no voicemail to leave", type=ANSWER_INVALID, non_retryable=True)
        try:
            async with self.sessions() as session:
                twiml = await _twiml_with_lead(
                    session, input.voicemail, input.run_id, input.lead_id, input.attempt, input.to
                )
        except ValueError as error:
            raise ApplicationError(str(error), type=ANSWER_INVALID, non_retryable=True) from None
        try:
            await self.twilio.calls(input.call_sid).update_async(twiml=twiml)
        except TwilioRestException as error:
            if error.status == 404 or error.code == NOT_IN_PROGRESS:
                log.info("machine's call had ended", extra=context)
                return MachineAnswered(done=False, at=time.time())
            raise _classify(error) from None
        activity.heartbeat("voicemail sent")
        log.info("voicemail left", extra=context)
        return MachineAnswered(done=True, at=time.time())

    @activity.defn(name=FETCH_CALL)
    async def fetch_call(self, input: FetchCallInput) -> CallSnapshot:
        """Ask Twilio for a call's current status, for a call whose callbacks went missing."""
        return replace(await fetch_snapshot(self.twilio, input.call_sid), at=time.time())


class _DialState:
    """What one try of a dial did, for its failure path: whether it sent the create, whether Twilio
    refused it, and the call it created; and whether an earlier try may have placed the call."""

    def __init__(self, line: Claimed, earlier_may_have_placed: bool) -> None:
        self.line = line
        self.earlier_may_have_placed = earlier_may_have_placed
        self.sent = False
        self.refused = False
        self.created: DialOutput | None = None

    def never_placed(self, error: BaseException) -> bool:
        """Whether the dial certainly placed no call: this try failed before sending the create, or
        Twilio refused it (a 4xx), and no earlier try may have placed one. A 5xx, a timeout or a lost
        connection after sending may have placed one."""
        if self.created is not None or self.earlier_may_have_placed:
            return False
        return (not self.sent or self.refused) and not isinstance(error, asyncio.CancelledError)


async def find_unrecorded_call(
    twilio: Client,
    session: AsyncSession,
    to: str,
    from_: str,
    since: datetime,
    until: datetime | None = None,
) -> DialOutput | None:
    """A call to this number from this caller ID, created since `since` (and by `until`, when
    given), that no attempt has recorded: one a dial placed without learning its SID. It comes with
    what Twilio says of it now (its status, and its duration if it has ended)."""
    try:
        started = await twilio.calls.list_async(
            to=to, from_=from_, start_time_after=since - LOOKUP_SKEW, limit=20
        )
        # A queued call has no start time yet, so no StartTime filter finds it.
        queued = await twilio.calls.list_async(to=to, from_=from_, status=CallStatus.QUEUED, limit=20)
    except TwilioException as error:
        raise _classify(_page_error(error)) from None

    def created_in_time(call: CallInstance) -> bool:
        created = call.date_created
        if created is None:
            return True
        return created >= since - LOOKUP_SKEW and (until is None or created <= until + LOOKUP_SKEW)

    calls = [c for c in {c.sid: c for c in [*queued, *started]}.values() if created_in_time(c)]
    known = set(
        await session.scalars(
            select(CallAttempt.call_sid).where(CallAttempt.call_sid.in_([c.sid for c in calls if c.sid]))
        )
    )
    for call in calls:
        if call.sid and call.sid not in known:
            now = _snapshot(call)
            return DialOutput(call.sid, now.status, duration=now.duration, answered_by=now.answered_by)
    return None


async def end_call(twilio: Client, call_sid: str, answered: bool) -> CallSnapshot:
    """Hang up a call (cancel it if not answered, complete it if it is) and say what Twilio says
    of it afterwards. A call that is already over is success."""
    try:
        call = await twilio.calls(call_sid).update_async(
            status=CallStatus.COMPLETED if answered else CallStatus.CANCELED
        )
        if call.status == CallStatus.IN_PROGRESS:
            # Answered between our last news and the cancel: `canceled` does not end it.
            call = await twilio.calls(call_sid).update_async(status=CallStatus.COMPLETED)
    except TwilioRestException as error:
        if error.status == 404:
            return CallSnapshot(found=False, status=CallStatus.FAILED)
        if error.code != NOT_IN_PROGRESS:
            raise _classify(error) from None
        return await fetch_snapshot(twilio, call_sid)
    log.info("hung up", extra={"call_sid": call_sid, "status": call.status})
    return _snapshot(call)


async def fetch_snapshot(twilio: Client, call_sid: str) -> CallSnapshot:
    """What Twilio says of a call now; a call it has no record of is not `found`."""
    try:
        call = await twilio.calls(call_sid).fetch_async()
    except TwilioRestException as error:
        if error.status == 404:
            return CallSnapshot(found=False, status=CallStatus.FAILED)
        raise _classify(error) from None
    return _snapshot(call)


def _created_by_earlier_try() -> DialOutput | None:
    """The call an earlier try of this dial created but could not record, from the heartbeat
    details that try left."""
    details = activity.info().heartbeat_details
    if len(details) == 2 and all(isinstance(d, str) and d for d in details):
        return DialOutput(details[0], details[1])
    return None


def _snapshot(call: CallInstance) -> CallSnapshot:
    return CallSnapshot(
        found=True,
        status=call.status or CallStatus.QUEUED,
        duration=int(call.duration) if call.duration else None,
        answered_by=call.answered_by,
    )


def _page_error(error: TwilioException) -> TwilioRestException:
    """A refused list request as the refused request it is: the SDK raises a bare TwilioException
    ("Unable to fetch page") carrying the response, where other requests raise a
    TwilioRestException with Twilio's status and code."""
    if isinstance(error, TwilioRestException):
        return error
    response = error.args[1] if len(error.args) > 1 else None
    status = int(getattr(response, "status_code", 0) or 0)
    try:
        body = json.loads(getattr(response, "text", "") or "{}")
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    code = body.get("code") if isinstance(body.get("code"), int) else None
    return TwilioRestException(status, "", str(body.get("message") or error.args[0]), code)


def _classify(error: TwilioRestException) -> ApplicationError:
    """Turn a Twilio error into what the workflow should do: fail the lead, pause the run, hold the
    lead until it is clear whether the number or the account is refused, or retry (after Twilio's
    Retry-After, when it gave one)."""
    message = f"Twilio error {error.code}: {error.msg}"
    if error.code in NUMBER_ERROR_CODES:
        return ApplicationError(message, error.code, error.msg, type=INVALID_NUMBER, non_retryable=True)
    if error.code in ACCOUNT_ERROR_CODES:
        return ApplicationError(message, error.code, error.msg, type=ACCOUNT_ERROR, non_retryable=True)
    if 400 <= error.status < 500 and error.status != 429 and error.code not in RETRY_LATER_CODES:
        return ApplicationError(message, error.code, error.msg, type=TWILIO_REFUSED, non_retryable=True)
    retry_after = last_retry_after() if error.status == 429 else None
    return ApplicationError(
        message,
        error.code,
        error.msg,
        type=f"TwilioHttp{error.status}",
        next_retry_delay=timedelta(seconds=retry_after) if retry_after is not None else None,
    )
