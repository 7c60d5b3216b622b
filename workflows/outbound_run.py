"""OutboundRunWorkflow: one durable workflow decides every dial of a run."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar, cast

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, FailureError

with workflow.unsafe.imports_passed_through():
    from contracts.activities import (
        ACCOUNT_ERROR,
        ANSWER_INVALID,
        ANSWER_MACHINE,
        DO_NOT_CALL,
        FETCH_CALL,
        HANG_UP,
        INVALID_NUMBER,
        LOAD_LEADS,
        LOAD_RUN,
        NO_RECORD,
        PLACE_CALL,
        READ_CLOCK,
        RECORD_OUTCOMES,
        REQUEST_LINES,
        RUN_CANCELLED,
        RUN_NOT_FOUND,
        SET_RUN_STATUS,
        STOP_DIALS,
        TWILIO_REFUSED,
        AnswerMachineInput,
        CallSnapshot,
        DialInput,
        DialOutput,
        FetchCallInput,
        HangUpInput,
        LeadCounts,
        LoadLeadsInput,
        LoadLeadsOutput,
        LoadRunInput,
        MachineAnswered,
        RecordOutcomesInput,
        RequestLinesInput,
        RunFacts,
        SetRunStatusInput,
    )
    from contracts.messages import (
        ON_MACHINE_VOICEMAIL,
        AttemptRef,
        CallStatusEvent,
        CancelRequest,
        InFlightCall,
        LineDemand,
        LineGrant,
        LineRecall,
        MachineDetected,
        Outcome,
        PauseRequest,
        ResumeRequest,
        RunCarryOver,
        RunInput,
        RunProgress,
        RunResult,
    )
    from contracts.names import (
        CALL_STATUS,
        CANCEL,
        LINES_GRANTED,
        LINES_RECALLED,
        MACHINE_DETECTED,
        PAUSE,
        PROGRESS,
        RESUME,
        RUN_STATUS,
        RUN_WORKFLOW,
        dial_task_queue,
        gate_workflow_id,
        run_workflow_id,
    )
    from contracts.statuses import SKIPPED_DNC, CallStatus, RunStatus, is_terminal
    from workflows.run_book import LEAD_PAGE_SIZE, RunBook

T = TypeVar("T")
DB_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
# Retried until DIAL_DEADLINE: a 429 was never processed and a 5xx or timeout is looked up before
# dialing again, so a retry never places a second call.
DIAL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=30),
    non_retryable_error_types=[INVALID_NUMBER, ACCOUNT_ERROR, RUN_CANCELLED, DO_NOT_CALL, TWILIO_REFUSED],
)
DIAL_DEADLINE = timedelta(hours=1)
DIAL_TRY_TIMEOUT = timedelta(seconds=60)
# Outcomes ride the next dial (written in the transaction that claims its attempt) rather than an
# activity of their own, as long as dials run promptly; see _outcomes_to_carry.
OUTCOMES_RIDE_DIALS = "outcomes-ride-dials"
RIDE_WHILE_DIALS_TAKE_AT_MOST = 1.0
# How long the last dial took is read from its result, which history records, not from the
# workflow's clock between scheduling it and applying its result: a workflow task retried after the
# Temporal server restarted can be read at another time on replay, and the ride-or-write choice
# then differed between the live run and its replay (a nondeterminism error, the run stuck).
DIAL_TIME_FROM_RESULT = "dial-time-from-result"
DRAIN_BEFORE_CONTINUE_AS_NEW = "drain-before-continue-as-new"
# Calling windows are read to the second (07:59:01 is before an 08:00 opening); runs started before
# rounded the time up to the next minute.
WINDOWS_TO_THE_SECOND = "windows-to-the-second"
# An answered call Twilio has said nothing about for this long (plus the reconcile margin) is
# fetched, and again after as long if it is still going: a lost `completed` callback holds its line
# minutes, not up to the call time limit (an hour by default).
RECHECK_ANSWERED_CALLS = "recheck-answered-calls"
# The dial's answers since line leases (DialInput.answer_version 2): a dial that finds every line in
# use comes back as `line_busy` and is tried again later; a dial that finds its attempt already ended
# (a reset run redialing what its earlier execution dialed) comes back with that ending; and a
# refusal that may be about the number or the account (21216) holds the lead (RunBook.dial_refused_unsure).
DIAL_ANSWERS_V2 = "dial-answers-v2"
# Work the run does in the background survives what Twilio answers: a lookup refused (20003 after
# the auth token was rotated) is tried again at the next check instead of ending the checks, a
# hang-up is tried until Twilio takes it (or the call ends otherwise), and anything else a
# background task raises fails the workflow task, where the Web UI shows it, instead of vanishing.
BACKGROUND_WORK_SURVIVES = "background-work-survives"
HANG_UP_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
# A cancel hangs up the calls in flight before it writes anything (the database may be away: the
# hang-ups need only Twilio).
CANCEL_HANGS_UP_FIRST = "cancel-hangs-up-first"
# A cancel request from Temporal (the Web UI, the CLI) is a cancel whenever it comes: the run's
# dialing and its end run as tasks it awaits through asyncio.shield, so the request reaches the run
# as a CancelledError there, not inside an activity it was awaiting (which failed the workflow, or
# ended it with its row still `running`).
TEMPORAL_CANCEL_SHIELDED = "temporal-cancel-shielded"
# While the run drains before continuing as new it still writes outcomes: a call that ended holds
# its line lease until its outcome is written.
OUTCOMES_WHILE_DRAINING = "outcomes-while-draining"
# A quiet answered call whose line leads wait for (or that is all the run waits for) is asked about
# once it has been quiet for much longer than this run's answered calls last (RunBook.overdue_calls),
# checked every SOONER_TICK meanwhile; other calls are asked about as before.
ANSWERED_CHECKED_SOONER = "answered-calls-checked-sooner"
SOONER_TICK = timedelta(seconds=15)
# The run's result reports its leads' outcomes as the leads table has them once the run is over: an
# execution an operator reset and then cancelled counted `cancelled` the leads its earlier
# execution had called.
RESULT_FROM_TABLE = "result-from-table"
ANSWERED_RECHECK_SECONDS = 300
# The run's choices (which leads are due, which calls are quiet, whether a window is open) read the
# run's own clock, moved on only by what its history holds: when each signal was sent and each
# activity answered (their `at`), and the due time of each timer that fired. The workflow's clock is
# the time a workflow task started, and a task retried after the Temporal server restarted can be
# read at another time on replay than it ran: a choice made from it could differ, and the run stop
# on a nondeterminism error. Where nothing it heard said when (a timer fired, perhaps late after an
# outage; a dial failed; a signal from the Web UI), the run reads the time by an activity, whose
# answer history keeps, before its next choice. Timers are still armed from the workflow's
# clock (only when they fire matters, and their firing is in the history), for at least a
# millisecond: whether a timer is armed at all is a choice, made from the run's clock.
HISTORY_CLOCK = "history-clock"
# A dial refused because of the run's answer (its agent number taken off the list, a kind the worker
# does not know) pauses the run with the reason, as an account error does: every call would be
# refused alike. Runs started before fail that lead and go on to the next.
ANSWER_REFUSED_PAUSES = "answer-refused-pauses"
# A call a machine answered (Twilio's answering-machine detection, signal `machine_detected`) ends as
# `voicemail` or `machine` rather than `answered`, and `retry_on` can name those; runs started before
# count it `answered`.
MACHINES_NAMED = "machines-named"
# A machine's call is ended, or given the run's voicemail, by one activity tried for this long.
MACHINE_ANSWER_TIMEOUT = timedelta(minutes=2)
# A signal's `at` moves the run's clock only by this much (seconds): a larger step either way has the
# time read instead, so that no sender (a replica whose clock is off, a signal typed into the Web UI)
# can carry the run's calling windows, retries and quiet-call checks far from the time.
SIGNAL_CLOCK_SLACK = 60.0
# The API commits the run row just after starting the workflow; load_run gives it time to appear
# (RUN_APPEARS_WITHIN_TRIES tries), and is retried without limit while the database is away: it runs
# again at the start of every continue-as-new.
LOAD_RUN_RETRY = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=5)
)


@workflow.defn(name=RUN_WORKFLOW)
class OutboundRunWorkflow:
    """Dials a run's leads through Twilio within the business's line cap (`outbound-run-{run_id}`).

    Leads are paged in from the database. Each dial waits for a line from the business's gate,
    places the call by activity and holds the line until Twilio reports a terminal status (by the
    `call_status` signal) or, if Twilio goes quiet, until the call is fetched and found over.
    Outcomes are written in batches. `cancel` stops dialing at once and hangs up calls in flight;
    `pause` and `resume` hold and release new dials.
    """

    @workflow.init
    def __init__(self, input: RunInput) -> None:
        self._input = input
        self._book = RunBook(input.total_leads, input.options, input.carry_over or RunCarryOver())
        # Here, not in run(): signals in an execution's first task (a carried call's status after
        # continue-as-new) are handled before run() begins.
        self._book.machines_named = workflow.patched(MACHINES_NAMED)
        self._facts: RunFacts | None = None
        self._status: str = RunStatus.RUNNING
        self._reason: str | None = None
        self._wake = False
        # Activities started in the background: dials, hang-ups, outcome writes.
        self._tasks: set[asyncio.Task[None]] = set()
        self._recording = False
        self._last_dial_seconds = 0.0
        self._hung_up: set[str] = set()
        # Hang-ups under way by call SID, cancelled when the call ends otherwise.
        self._hang_ups: dict[str, asyncio.Task[None]] = {}
        # What a background task raised that it should not have (a bug): the run loop raises it.
        self._broken: BaseException | None = None
        # Whether Temporal has asked this execution to cancel (it asks once).
        self._cancel_requested = False
        self._dials_stopped = False
        # See HISTORY_CLOCK: the execution's start is in its history, and so is every later move.
        started = workflow.info().workflow_start_time
        self._clock = started.timestamp() if started is not None else 0.0
        # Something happened that did not say when: read the time before the next choice.
        self._clock_unsure = True

    # Messages

    @workflow.signal(name=CALL_STATUS)
    def call_status(self, event: CallStatusEvent) -> None:
        """A Twilio status callback for one of this run's attempts."""
        self._heard_at(event.at)
        self._apply_status(event)

    def _apply_status(self, event: CallStatusEvent) -> None:
        outcome = self._book.apply_status(event, self._now())
        if outcome is not None and outcome.call_sid in self._hang_ups:
            self._hang_ups.pop(outcome.call_sid).cancel()
        if outcome is not None:
            workflow.logger.info(
                "call ended",
                extra={
                    "lead": outcome.lead_id,
                    "attempt": outcome.attempt,
                    "call_sid": outcome.call_sid,
                    "status": outcome.status,
                },
            )
        self._wake = True

    @workflow.signal(name=MACHINE_DETECTED)
    def machine_detected(self, event: MachineDetected) -> None:
        """Twilio's answering-machine detection's verdict on one of this run's calls: a machine's
        call is ended or given the voicemail, as the run's answer asks."""
        self._heard_at(event.at)
        action = self._book.machine_detected(event)
        call = self._book.calls.get((event.lead_id, event.attempt))
        if action is not None and call is not None and not self._book.state.cancel_reason:
            if action == ON_MACHINE_VOICEMAIL:
                self._start_task(self._answer_machine(call))
            else:
                self._hang_up_call(call)
        self._wake = True

    async def _answer_machine(self, call: InFlightCall) -> None:
        """Leave the run's voicemail on a machine; a machine that could not be given it is hung up
        on, as a hang-up is: tried until Twilio takes it or the call ends."""
        answer = self._input.options.answer
        assert answer is not None and call.call_sid is not None
        context = {"lead": call.lead_id, "attempt": call.attempt, "call_sid": call.call_sid}
        try:
            answered = await workflow.execute_activity(
                ANSWER_MACHINE,
                AnswerMachineInput(
                    self._input.run_id,
                    call.lead_id,
                    call.attempt,
                    call.call_sid,
                    call.phone,
                    answer.voicemail,
                ),
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=MACHINE_ANSWER_TIMEOUT,
                retry_policy=HANG_UP_RETRY,
                summary=f"voicemail on a machine: {call.call_sid} (lead {call.lead_id})",
                result_type=MachineAnswered,
            )
        except ActivityError:
            workflow.logger.warning("voicemail not left; hanging up on the machine", extra=context)
            if (call.lead_id, call.attempt) in self._book.calls:
                self._hang_up_call(call)
            return
        self._clock_to(answered.at)
        if answered.done:
            self._book.voicemail_left(call.lead_id, call.attempt)

    @workflow.signal(name=CANCEL)
    def cancel(self, request: CancelRequest) -> None:
        """Stop dialing now; hang up calls in flight; the rest of the leads end `cancelled`."""
        self._heard_at(request.at)
        self._cancel(request.reason)

    def _cancel(self, reason: str) -> None:
        if self._book.state.cancel_reason is None:
            self._book.state.cancel_reason = reason
        self._wake = True

    @workflow.signal(name=PAUSE)
    def pause(self, request: PauseRequest) -> None:
        """Dial nothing new; calls in flight finish."""
        self._heard_at(request.at)
        self._pause(request.reason)

    def _pause(self, reason: str) -> None:
        self._book.state.paused = True
        self._book.state.pause_reason = reason
        self._wake = True

    @workflow.signal(name=RESUME)
    def resume(self, request: ResumeRequest) -> None:
        """Dial again after a pause."""
        self._heard_at(request.at)
        self._book.state.paused = False
        self._book.state.pause_reason = None
        self._book.requeue_refused()
        self._wake = True

    @workflow.signal(name=LINES_GRANTED)
    def lines_granted(self, grant: LineGrant) -> None:
        """Lines from the business's gate."""
        self._heard_at(grant.at)
        if self._book.grant(grant.seq, grant.count, grant.gate_run):
            self._wake = True

    @workflow.signal(name=LINES_RECALLED)
    def lines_recalled(self, recall: LineRecall) -> None:
        """The gate asks for lines back for a waiting run."""
        self._heard_at(recall.at)
        if self._book.recall(recall.seq, recall.hold_at_most, recall.gate_run):
            self._wake = True

    @workflow.query(name=PROGRESS)
    def progress(self) -> RunProgress:
        """Live progress: counts agree with the attempts table once outcomes are written."""
        return self._book.progress(self._display_status(), self._reason or self._book.state.pause_reason)

    # The run

    @workflow.run
    async def run(self, input: RunInput) -> RunResult:
        try:
            facts = await workflow.execute_activity(
                LOAD_RUN,
                LoadRunInput(input.run_id),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=LOAD_RUN_RETRY,
                result_type=RunFacts,
            )
        except ActivityError as error:
            if isinstance(error.cause, ApplicationError) and error.cause.type == RUN_NOT_FOUND:
                workflow.logger.warning("run never appeared in the database", extra={"run": input.run_id})
                return RunResult(status=RunStatus.FAILED, done=0, outcomes={})
            raise
        self._facts = facts
        self._clock_to(facts.at)
        self._book.total = facts.total_leads
        # Not among self._tasks: these sleep on timers for as long as there is something to wait for.
        timers = [
            asyncio.create_task(self._reconcile_quiet_calls()),
            asyncio.create_task(self._wake_waiting_leads()),
        ]
        if workflow.patched(BACKGROUND_WORK_SURVIVES):
            for timer in timers:
                timer.add_done_callback(self._note_if_broken)

        if not workflow.patched(TEMPORAL_CANCEL_SHIELDED):
            try:
                await self._dial_until_done()
            except asyncio.CancelledError:
                # A cancel request from the Temporal Web UI or CLI is handled like the `cancel` signal.
                self._cancel("cancelled from Temporal")
                await self._dial_until_done()
            for timer in timers:
                timer.cancel()
            return await self._finish()
        await self._shielded(self._dial_until_done())
        for timer in timers:
            timer.cancel()
        return await self._shielded(self._finish())

    async def _shielded(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` to its end; a cancel request from Temporal meanwhile is taken as the `cancel`
        signal (dialing stops, calls are hung up) instead of breaking off what `work` awaits.

        Temporal sends a run one cancel request; a second CancelledError is the worker tearing the
        workflow down (evicted from its cache, or a replay that failed), which must go through."""
        task = asyncio.create_task(work)
        while True:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if self._cancel_requested:
                    raise
                self._cancel_requested = True
                self._cancel("cancelled from Temporal")

    async def _dial_until_done(self) -> None:
        book = self._book
        while True:
            if self._broken is not None:
                # A plain error fails the workflow task (shown, and retried), not the run.
                raise RuntimeError(f"background work of the run failed: {self._broken!r}") from self._broken
            self._wake = False
            if self._clock_unsure and workflow.patched(HISTORY_CLOCK):
                await self._read_clock()
            cancelled = book.state.cancel_reason is not None
            if cancelled:
                book.cancel_undialed()
                if workflow.patched(CANCEL_HANGS_UP_FIRST):
                    self._hang_up_calls()
                    await self._stop_dials()
                else:
                    await self._stop_dials()
                    self._hang_up_calls()
            else:
                book.release_due(self._now())
                if book.needs_leads():
                    await self._load_leads()

            dialing_allowed = not cancelled and not book.state.paused
            exact_windows = workflow.patched(WINDOWS_TO_THE_SECOND)
            # Once the server suggests continuing as new, start nothing until the activities
            # under way are done, so that moment comes however busy the run is. Lines are kept.
            while (
                dialing_allowed
                and not self._draining()
                and (call := book.next_dial(self._now(), exact_windows)) is not None
            ):
                self._start_task(self._dial(call, self._outcomes_to_carry(), book.take_freed()))
            if dialing_allowed and (why := book.settle_refused(self._now())) is not None:
                self._pause(why)
            await self._settle_lines(dialing_allowed)
            # Asked again: the awaits above may have let the last call end. While draining, outcomes
            # are still written: a call that ended holds its line lease until its outcome is.
            if not self._draining() or workflow.patched(OUTCOMES_WHILE_DRAINING):
                self._record_outcomes()
            await self._show_pause()

            if book.finished and not self._tasks and not book.state.unrecorded:
                return
            if workflow.info().is_continue_as_new_suggested() and not self._tasks:
                await workflow.wait_condition(workflow.all_handlers_finished)
                carry = book.carry_over()
                workflow.continue_as_new(
                    RunInput(
                        self._input.run_id, self._input.business_id, self._input.options, carry, book.total
                    )
                )
            workflow.set_current_details(self._details())
            await workflow.wait_condition(lambda: self._wake)

    async def _load_leads(self) -> None:
        page = await workflow.execute_activity(
            LOAD_LEADS,
            LoadLeadsInput(
                self._input.run_id, self._book.state.next_lead_cursor, LEAD_PAGE_SIZE, pack_zones=True
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
            result_type=LoadLeadsOutput,
        )
        self._clock_to(page.at)
        self._book.add_leads(page.leads, LEAD_PAGE_SIZE, page.zone_sets)

    async def _settle_lines(self, dialing_allowed: bool) -> None:
        """Give back lines the run cannot use; ask for lines when it could dial more."""
        book = self._book
        give_back = book.lines_to_give_back(dialing_allowed)
        want = book.lines_wanted(dialing_allowed)
        if give_back or book.state.resync_due:
            resync, book.state.resync_due = book.state.resync_due, False
            book.released(give_back)
            await self._send_demand(give_back, want, resync=resync)
        elif want > book.state.want_sent and want > book.state.lines_held:
            # A gate that thinks we want fewer lines than we do would leave us waiting; one that
            # thinks we want more only grants lines we hand straight back, so a fall is not sent.
            await self._send_demand(0, want)

    async def _send_demand(self, release: int, want: int, done: bool = False, resync: bool = False) -> None:
        assert self._facts is not None
        state = self._book.state
        state.demand_seq += 1
        state.want_sent = want
        demand = LineDemand(
            run_workflow_id=run_workflow_id(self._input.run_id),
            seq=state.demand_seq,
            release=release,
            want=want,
            cap=self._facts.max_concurrent_calls,
            done=done,
            epoch=workflow.info().run_id,
            held=state.lines_held,
            grant_seen_run=state.gate_run,
            grant_seen_seq=state.last_grant_seq,
            resync=resync,
        )
        if state.gate_contacted:
            try:
                await workflow.get_external_workflow_handle(gate_workflow_id(self._facts.business_id)).signal(
                    "demand", demand
                )
                return
            except FailureError:
                workflow.logger.info("gate not running; starting it", extra={"run": self._input.run_id})
        await workflow.execute_activity(
            REQUEST_LINES,
            RequestLinesInput(self._facts.business_id, workflow.info().task_queue, demand),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
        )
        state.gate_contacted = True

    def _draining(self) -> bool:
        """Whether to let the activities under way finish, then continue as new. A run with
        nothing left to dial finishes instead, writing its last outcomes first."""
        return (
            not self._book.finished
            and workflow.info().is_continue_as_new_suggested()
            and workflow.patched(DRAIN_BEFORE_CONTINUE_AS_NEW)
        )

    def _outcomes_to_carry(self) -> list[Outcome]:
        """The outcomes the next dial writes with its attempt row: one activity (and workflow task)
        fewer per call. Not while dials are slow to run, as when the account's call rate holds them
        in the queue, so an outcome still reaches the database within about a second."""
        if not self._book.state.unrecorded or self._last_dial_seconds > RIDE_WHILE_DIALS_TAKE_AT_MOST:
            return []
        if not workflow.patched(OUTCOMES_RIDE_DIALS):
            return []
        return self._book.take_unrecorded()

    async def _dial(self, call: InFlightCall, carried: list[Outcome], freed: AttemptRef | None) -> None:
        scheduled_at = workflow.time()
        answer_version = 2 if workflow.patched(DIAL_ANSWERS_V2) else 1
        try:
            placed = await workflow.execute_activity(
                PLACE_CALL,
                self._dial_input(call, carried, freed, answer_version),
                task_queue=dial_task_queue(workflow.info().task_queue),
                # Longer than a try can take (two lookups and a create, TWILIO_TIMEOUT_SECONDS each),
                # so a retry never overlaps a try still at work.
                start_to_close_timeout=DIAL_TRY_TIMEOUT,
                schedule_to_close_timeout=DIAL_DEADLINE,
                retry_policy=DIAL_RETRY,
                summary=f"dial {call.phone[:5]}… (lead {call.lead_id}, attempt {call.attempt})",
                result_type=DialOutput,
            )
        except ActivityError as error:
            await self._dial_failed(call, error, carried, freed, scheduled_at, answer_version)
        else:
            self._dial_answered(call, placed, carried, scheduled_at, answer_version)

    def _dial_input(
        self, call: InFlightCall, carried: list[Outcome], freed: AttemptRef | None, answer_version: int
    ) -> DialInput:
        assert self._facts is not None
        options = self._input.options
        return DialInput(
            run_id=self._input.run_id,
            lead_id=call.lead_id,
            attempt=call.attempt,
            to=call.phone,
            from_=self._facts.caller_id,
            twiml=options.twiml,
            ring_timeout_seconds=options.ring_timeout_seconds,
            call_time_limit_seconds=options.call_time_limit_seconds,
            machine_detection=options.machine_detection,
            business_id=self._facts.business_id,
            outcomes=carried,
            answer_version=answer_version,
            release=[freed] if freed else [],
            answer=options.answer,
        )

    async def _dial_failed(
        self,
        call: InFlightCall,
        error: ActivityError,
        carried: list[Outcome],
        freed: AttemptRef | None,
        scheduled_at: float,
        answer_version: int,
    ) -> None:
        """A dial that failed for good: the lead's outcome, a pause for the account, or nothing
        placed (its carried outcomes and freed line are kept for the next write)."""
        self._clock_unsure = True
        if workflow.patched(HISTORY_CLOCK):
            await self._read_clock()
        self._note_dial_time(scheduled_at, None)
        # A failed dial may not have written the outcomes it carried; writing twice is harmless.
        self._book.state.unrecorded.extend(carried)
        if freed is not None:
            self._book.state.lines_freed.append(freed)
        cause = error.cause
        kind = cause.type if isinstance(cause, ApplicationError) else None
        code, message = None, str(cause or error)
        if isinstance(cause, ApplicationError) and cause.details:
            code, message = cause.details[0], f"{cause.details[1]}"
        workflow.logger.warning(
            "dial failed", extra={"lead": call.lead_id, "attempt": call.attempt, "error": message}
        )
        if kind == ACCOUNT_ERROR:
            # Every dial would fail the same way: keep the lead, pause, and say why.
            self._book.dial_refused(call.lead_id, call.attempt)
            said = f"error {code}: {message}" if code is not None else message
            self._pause(f"Twilio refused the call ({said}); fix the account, then resume")
            return
        if kind == ANSWER_INVALID and workflow.patched(ANSWER_REFUSED_PAUSES):
            self._book.dial_refused(call.lead_id, call.attempt)
            self._pause(f"No call was placed: {message}. Fix it, then resume")
            return
        if kind == TWILIO_REFUSED and answer_version >= 2:
            why = self._book.dial_refused_unsure(call.lead_id, call.attempt, code, message)
            if why is not None:
                self._pause(why)
            return
        status = {RUN_CANCELLED: CallStatus.CANCELED, DO_NOT_CALL: SKIPPED_DNC}.get(
            kind or "", CallStatus.FAILED
        )
        self._book.dial_failed(call.lead_id, call.attempt, code, message, self._now(), status)

    def _dial_answered(
        self,
        call: InFlightCall,
        placed: DialOutput,
        carried: list[Outcome],
        scheduled_at: float,
        answer_version: int,
    ) -> None:
        """A dial's answer: the call placed (or adopted, perhaps already ended), every line busy, or
        an attempt an earlier execution of the run ended without a call."""
        self._clock_to(placed.at)
        self._note_dial_time(scheduled_at, placed.took_seconds)
        if answer_version >= 2 and placed.line_busy:
            # Its outcomes were written with the leases they free (before the claim found no
            # line); kept to be written again, which changes nothing, should that have failed.
            self._book.state.unrecorded.extend(carried)
            self._book.line_busy(call.lead_id, call.attempt, self._now())
            return
        self._book.forget_freed(carried)
        if answer_version >= 2 and not placed.call_sid:
            # An earlier execution of this run ended the attempt without a call.
            self._book.dial_failed(
                call.lead_id,
                call.attempt,
                placed.error_code,
                placed.error_message or "",
                self._now(),
                placed.status,
            )
            return
        self._book.dial_placed(call.lead_id, call.attempt, placed.call_sid, placed.status, self._now())
        if answer_version >= 2 and is_terminal(placed.status):
            # Adopted a call that has already ended (its callbacks came before this execution).
            self._apply_status(
                CallStatusEvent(
                    lead_id=call.lead_id,
                    attempt=call.attempt,
                    call_sid=placed.call_sid,
                    status=placed.status,
                    duration=placed.duration,
                    answered_by=placed.answered_by,
                    error_code=placed.error_code,
                    error_message=placed.error_message,
                )
            )

    def _note_dial_time(self, scheduled_at: float, took_seconds: float | None) -> None:
        """Keep how long the last dial took (it decides whether outcomes ride the next one): as the
        dial reported it, or unchanged for a dial that failed without saying."""
        if workflow.patched(DIAL_TIME_FROM_RESULT):
            if took_seconds is not None:
                self._last_dial_seconds = took_seconds
        else:
            self._last_dial_seconds = workflow.time() - scheduled_at

    async def _stop_dials(self) -> None:
        if self._dials_stopped:
            return
        self._dials_stopped = True
        if any(call.call_sid is None for call in self._book.calls.values()):
            await workflow.execute_activity(
                STOP_DIALS,
                LoadRunInput(self._input.run_id),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=DB_RETRY,
            )

    def _hang_up_calls(self) -> None:
        if not self._input.options.hang_up_on_cancel:
            return
        for call in list(self._book.calls.values()):
            self._hang_up_call(call)

    def _hang_up_call(self, call: InFlightCall) -> None:
        if call.call_sid and call.call_sid not in self._hung_up:
            self._hung_up.add(call.call_sid)
            task = self._start_task(self._hang_up(call))
            if workflow.patched(BACKGROUND_WORK_SURVIVES):
                self._hang_ups[call.call_sid] = task

    async def _hang_up(self, call: InFlightCall) -> None:
        assert call.call_sid is not None
        summary = f"hang up {call.call_sid} (lead {call.lead_id}, attempt {call.attempt})"
        if not workflow.patched(BACKGROUND_WORK_SURVIVES):
            snapshot = await workflow.execute_activity(
                HANG_UP,
                HangUpInput(call.call_sid, call.answered),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=5, non_retryable_error_types=[ACCOUNT_ERROR]),
                summary=summary,
                result_type=CallSnapshot,
            )
            self._apply_snapshot(call, snapshot)
            return
        try:
            options = self._input.options
            snapshot = await workflow.execute_activity(
                HANG_UP,
                HangUpInput(call.call_sid, call.answered, keep_trying=True),
                start_to_close_timeout=timedelta(seconds=30),
                # No call outlives its time limit: past it, the quiet-call checks learn its end.
                schedule_to_close_timeout=timedelta(
                    seconds=options.call_time_limit_seconds
                    + options.ring_timeout_seconds
                    + options.reconcile_margin_seconds
                ),
                retry_policy=HANG_UP_RETRY,
                summary=summary,
                result_type=CallSnapshot,
            )
            self._clock_to(snapshot.at)
        except (asyncio.CancelledError, ActivityError) as error:
            if isinstance(error, ActivityError) and not isinstance(error.cause, CancelledError):
                workflow.logger.warning(
                    "hang-up given up; the call has reached its time limit",
                    extra={"lead": call.lead_id, "attempt": call.attempt, "call_sid": call.call_sid},
                )
            return  # the call ended otherwise (its callback came), or its time limit has passed
        finally:
            self._hang_ups.pop(call.call_sid, None)
        self._apply_snapshot(call, snapshot)

    def _record_outcomes(self) -> None:
        if self._recording or not self._book.state.unrecorded:
            return
        self._recording = True
        self._start_task(self._write_outcomes(self._book.take_unrecorded()))

    async def _write_outcomes(self, batch: list[Outcome]) -> None:
        try:
            done_at = await workflow.execute_activity(
                RECORD_OUTCOMES,
                RecordOutcomesInput(self._input.run_id, batch),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=DB_RETRY,
                result_type=cast(type, float | None),
            )
            self._clock_to(done_at)
            self._book.forget_freed(batch)
        finally:
            self._recording = False

    async def _wake_waiting_leads(self) -> None:
        """One timer, for the earliest lead waiting on a retry or its calling window. A lead that
        waits holds no line."""
        while True:
            await workflow.wait_condition(lambda: self._book.next_due() is not None)
            armed_for = self._book.next_due()
            assert armed_for is not None

            def earlier_lead(armed_for: float = armed_for) -> bool:
                due = self._book.next_due()
                return due is not None and due < armed_for

            def released(armed_for: float = armed_for) -> bool:
                due = self._book.next_due()
                return due is None or due > armed_for

            if workflow.patched(HISTORY_CLOCK):
                if armed_for > self._now():
                    try:
                        await workflow.wait_condition(
                            earlier_lead,
                            timeout=max(0.001, armed_for - workflow.time()),
                            timeout_summary="next lead due",
                        )
                        continue  # an earlier lead: arm for it instead
                    except TimeoutError:
                        pass
                self._clock_to(armed_for)
                self._clock_unsure = True
                self._wake = True
                await workflow.wait_condition(released)
                continue
            try:
                await workflow.wait_condition(
                    earlier_lead,
                    timeout=max(0.0, armed_for - workflow.time()),
                    timeout_summary="next lead due",
                )
            except TimeoutError:
                self._wake = True
                await workflow.wait_condition(released)

    async def _reconcile_quiet_calls(self) -> None:
        """Every margin, fetch calls Twilio has been quiet about for too long and apply the answer."""
        interval = timedelta(seconds=max(5, self._input.options.reconcile_margin_seconds))
        while True:
            await workflow.wait_condition(lambda: bool(self._book.calls))
            sooner = workflow.patched(ANSWERED_CHECKED_SOONER)
            wanted = (
                sooner
                and self._book.quiet_answered_seconds() is not None
                and self._book.lines_wanted_by_waiting()
            )
            tick = min(interval, SOONER_TICK) if wanted else interval
            armed_at = self._now()
            await workflow.sleep(tick)
            if workflow.patched(HISTORY_CLOCK):
                # At least a tick has passed, however the time reads; more if the timer fired late.
                self._clock_to(armed_at + tick.total_seconds())
                await self._read_clock()
            recheck = ANSWERED_RECHECK_SECONDS if workflow.patched(RECHECK_ANSWERED_CALLS) else None
            survives = workflow.patched(BACKGROUND_WORK_SURVIVES)
            for call in self._book.overdue_calls(self._now(), recheck, sooner):
                assert call.call_sid is not None
                try:
                    snapshot: CallSnapshot = await workflow.execute_activity(
                        FETCH_CALL,
                        FetchCallInput(call.call_sid),
                        start_to_close_timeout=timedelta(seconds=30),
                        retry_policy=DB_RETRY,
                        summary=f"fetch quiet call {call.call_sid}",
                        result_type=CallSnapshot,
                    )
                    self._clock_to(snapshot.at)
                except ActivityError as error:
                    if not survives:
                        raise
                    # Still quiet and still overdue: asked again at the next check.
                    workflow.logger.warning(
                        "quiet call not looked up",
                        extra={
                            "lead": call.lead_id,
                            "attempt": call.attempt,
                            "call_sid": call.call_sid,
                            "error": str(error.cause or error),
                        },
                    )
                    continue
                workflow.logger.info(
                    "reconciled quiet call",
                    extra={
                        "lead": call.lead_id,
                        "attempt": call.attempt,
                        "call_sid": call.call_sid,
                        "status": snapshot.status,
                    },
                )
                self._apply_snapshot(call, snapshot)

    def _apply_snapshot(self, call: InFlightCall, snapshot: CallSnapshot) -> None:
        """Apply what Twilio said when asked, as if it were a status callback."""
        assert call.call_sid is not None
        self._apply_status(
            CallStatusEvent(
                lead_id=call.lead_id,
                attempt=call.attempt,
                call_sid=call.call_sid,
                status=snapshot.status,
                duration=snapshot.duration,
                answered_by=snapshot.answered_by,
                error_message=None if snapshot.found else NO_RECORD,
            )
        )

    async def _show_pause(self) -> None:
        """Write a pause or resume to the run's row and search attributes once it takes effect."""
        state = self._book.state
        if state.paused == state.pause_recorded or state.cancel_reason:
            return
        state.pause_recorded = state.paused
        status = RunStatus.PAUSED if state.paused else RunStatus.RUNNING
        await self._set_status(status, state.pause_reason, final=False)

    async def _set_status(self, status: str, reason: str | None, final: bool) -> LeadCounts | None:
        counts = await workflow.execute_activity(
            SET_RUN_STATUS,
            SetRunStatusInput(self._input.run_id, status, reason, final=final),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=DB_RETRY,
            result_type=cast(type, LeadCounts | None),
        )
        workflow.upsert_search_attributes([RUN_STATUS.value_set(status)])
        return counts

    async def _finish(self) -> RunResult:
        book = self._book
        self._status = RunStatus.CANCELLED if book.state.cancel_reason else RunStatus.COMPLETED
        self._reason = book.state.cancel_reason
        if book.state.gate_contacted:
            held = book.state.lines_held
            book.released(held)
            await self._send_demand(held, 0, done=True)
        counts = await self._set_status(self._status, self._reason, final=True)
        if counts is not None and workflow.patched(RESULT_FROM_TABLE):
            book.state.done, book.state.outcomes = counts.done, dict(counts.outcomes)
        workflow.set_current_details(self._details())
        return RunResult(status=self._status, done=book.state.done, outcomes=dict(book.state.outcomes))

    # Helpers

    def _now(self) -> float:
        """The time the run's choices read (see HISTORY_CLOCK); runs from before read the workflow's."""
        return self._clock if workflow.patched(HISTORY_CLOCK) else workflow.time()

    def _clock_to(self, at: float | None) -> None:
        """Move the run's clock on to when one of its own activities answered, or a timer was due;
        never back. An answer that does not say (from code of before) leaves the time to be read."""
        if at is None or not math.isfinite(at):
            self._clock_unsure = True
        elif at > self._clock:
            self._clock = at

    def _heard_at(self, at: float | None) -> None:
        """Move the run's clock on to when a signal was sent, if that is within SIGNAL_CLOCK_SLACK
        of what the run knows; otherwise (a signal from the Web UI, a long quiet spell, a sender
        whose clock is off) the time is read before the next choice."""
        if at is not None and math.isfinite(at) and abs(at - self._clock) <= SIGNAL_CLOCK_SLACK:
            self._clock_to(at)
        else:
            self._clock_unsure = True

    async def _read_clock(self) -> None:
        """Read the time by an activity (its answer is in the history) and move the clock on. Not a
        local activity: a run whose local activity's answer reached it in a later workflow task
        than the one that recorded it replayed its choices in another order."""
        self._clock_unsure = False
        self._clock_to(
            await workflow.execute_activity(
                READ_CLOCK,
                start_to_close_timeout=timedelta(seconds=10),
                retry_policy=DB_RETRY,
                result_type=float,
            )
        )

    def _start_task(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        note_if_broken = workflow.patched(BACKGROUND_WORK_SURVIVES)

        def _done(finished: asyncio.Task[None]) -> None:
            self._tasks.discard(finished)
            self._wake = True
            if note_if_broken:
                self._note_if_broken(finished)

        task.add_done_callback(_done)
        return task

    def _note_if_broken(self, finished: asyncio.Task[None]) -> None:
        """Keep what a background task raised, for the run loop to raise: a workflow task that fails
        shows in the Web UI and is retried, where a task that died alone would be forgotten."""
        if not finished.cancelled() and finished.exception() is not None and self._broken is None:
            self._broken = finished.exception()
            self._wake = True

    def _display_status(self) -> str:
        if self._status != RunStatus.RUNNING:
            return self._status
        if self._book.state.cancel_reason:
            return "cancelling"
        return RunStatus.PAUSED if self._book.state.paused else RunStatus.RUNNING

    def _details(self) -> str:
        p = self._book.progress(self._display_status())
        return (
            f"{p.status}: {p.done}/{p.total} done, {p.in_flight} in flight, {p.dialing} dialing, "
            f"{p.queued} queued, lines held {self._book.state.lines_held}"
        )
