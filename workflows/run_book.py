"""A run's bookkeeping as plain state: leads waiting, calls holding lines, outcomes to record.

OutboundRunWorkflow orchestrates; every decision about what a status means, whether to dial, retry
or give a line back, and what progress to show lives here, where unit tests can drive it.
"""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.messages import (
    ON_MACHINE_HANG_UP,
    ON_MACHINE_VOICEMAIL,
    AttemptRef,
    CallStatusEvent,
    InFlightCall,
    LeadRef,
    MachineDetected,
    Outcome,
    RefusedLead,
    RunCarryOver,
    RunOptions,
    RunProgress,
    WaitingLead,
)
from contracts.statuses import (
    DIALING,
    MACHINE_ANSWERS,
    OUTCOMES,
    SKIPPED_WINDOW,
    CallStatus,
    LeadOutcome,
    is_terminal,
    outcome_for,
)
from contracts.zone_sets import pack_zones, unpack_zones
from workflows.calling_window import window_check

LEAD_PAGE_SIZE = 200
# Leads parked on timers are workflow state; past this many, paging waits for some to be dialed.
MAX_WAITING = 2000
# A dial that found every line of the business in use is tried again after this long, doubling.
LINE_RETRY_SECONDS = 1.0
MAX_LINE_RETRY_SECONDS = 30.0
# Gate executions a run remembers having left, so that their late messages are not taken as new.
RETIRED_GATE_RUNS_KEPT = 4
# Refusals that may be about the account (21216), in a row with no call placed, that pause the run.
REFUSALS_TO_PAUSE = 3
# While leads wait for the lines answered calls hold (or those calls are all the run waits for), a
# call quiet for twice as long as this run's answered calls last (its 90th percentile, from the
# latest ANSWERED_KEPT, once there are ANSWERED_KNOWN), and at least SOONER_FLOOR_SECONDS, is asked
# about after SOONER_MARGIN_SECONDS more: its `completed` callback was probably lost.
ANSWERED_KEPT = 20
ANSWERED_KNOWN = 5
SOONER_FLOOR_SECONDS = 30.0
SOONER_MARGIN_SECONDS = 15.0


class RunBook:
    """Everything a run knows, carried whole across continue-as-new as a RunCarryOver."""

    def __init__(self, total: int, options: RunOptions, state: RunCarryOver) -> None:
        self.total = total
        self.options = options
        self.state = state
        unpack_zones(self._everything_with_zones(), state.zone_sets)
        state.zone_sets = []
        self.calls: dict[tuple[int, int], InFlightCall] = {(c.lead_id, c.attempt): c for c in state.in_flight}
        # A call a machine answered ends as `voicemail` or `machine`, not `answered` (runs started
        # before answering machines were told apart leave this False).
        self.machines_named = False

    # Leads

    def needs_leads(self) -> bool:
        """Whether to page more leads in: the buffer runs low and the database has more."""
        return (
            not self.state.leads_exhausted
            and len(self.state.pending) < LEAD_PAGE_SIZE // 2
            and len(self.state.waiting) < MAX_WAITING
        )

    def add_leads(
        self, leads: list[LeadRef], page_size: int, zone_sets: list[list[str]] | None = None
    ) -> None:
        """Append a page of leads read after the cursor (their zones by index into `zone_sets`)."""
        unpack_zones(leads, zone_sets or [])
        self.state.pending.extend(leads)
        if leads:
            self.state.next_lead_cursor = leads[-1].id
        if len(leads) < page_size:
            self.state.leads_exhausted = True

    @property
    def undialed(self) -> int:
        """Leads with no outcome and no call in flight (waiting ones included)."""
        return self.total - self.state.done - len(self.calls)

    @property
    def ready(self) -> int:
        """Leads that could be dialed now if there were lines: not in flight, not on a timer, not
        held after a refusal."""
        return self.undialed - len(self.state.waiting) - len(self.state.refused)

    # Lines

    @property
    def free_lines(self) -> int:
        """Lines held and not used by a call."""
        return self.state.lines_held - len(self.calls)

    @property
    def dialable_lines(self) -> int:
        """Free lines the run may dial on: a recall caps what it keeps using."""
        usable = self.state.lines_held
        if self.state.hold_at_most is not None:
            usable = min(usable, self.state.hold_at_most)
        return usable - len(self.calls)

    def lines_wanted(self, dialing_allowed: bool) -> int:
        """How many lines this run could use now. Leads on timers hold none."""
        return len(self.calls) + (self.ready if dialing_allowed else 0)

    def lines_to_give_back(self, dialing_allowed: bool) -> int:
        """Free lines the run should return: more than it can use, or more than the gate allows."""
        free = self.free_lines
        if free <= 0:
            return 0
        surplus = self.state.lines_held - self.lines_wanted(dialing_allowed)
        limit = self.state.hold_at_most
        if limit is not None:
            surplus = max(surplus, self.state.lines_held - limit)
        return max(0, min(free, surplus))

    def grant(self, seq: int, count: int, gate_run: str = "") -> bool:
        """Take lines granted by the gate; a duplicate grant is ignored."""
        if not self._from_current_gate(gate_run):
            return False
        if seq <= self.state.last_grant_seq:
            return False
        self.state.last_grant_seq = seq
        self.state.lines_held += count
        return True

    def recall(self, seq: int, hold_at_most: int | None, gate_run: str = "") -> bool:
        """Apply the gate's recall target; stale ones are ignored."""
        if not self._from_current_gate(gate_run):
            return False
        if seq <= self.state.last_recall_seq:
            return False
        self.state.last_recall_seq = seq
        self.state.hold_at_most = hold_at_most
        return True

    def _from_current_gate(self, gate_run: str) -> bool:
        """Whether a message from this gate execution counts. A gate execution not heard from
        before (the gate continued as new, or was started afresh or reset by an operator) numbers
        its messages anew and may not know what this run holds: the run listens to it from now on,
        drops its recall target, and owes it a report (`resync_due`). Late messages from gate
        executions it has left are dropped."""
        state = self.state
        if not gate_run or gate_run == state.gate_run:
            return True
        if gate_run in state.retired_gate_runs:
            return False
        if state.gate_run:
            state.retired_gate_runs = [*state.retired_gate_runs, state.gate_run][-RETIRED_GATE_RUNS_KEPT:]
        state.gate_run = gate_run
        state.last_grant_seq = state.last_recall_seq = 0
        state.hold_at_most = None
        state.resync_due = True
        return True

    def released(self, count: int) -> None:
        """Record lines given back to the gate."""
        self.state.lines_held -= count

    # Timers

    def next_due(self) -> float | None:
        """When the next waiting lead's timer fires, or dialing may be tried again after every
        line was found in use."""
        dues = [w.due for w in self.state.waiting]
        if self.state.line_retry_at is not None:
            dues.append(self.state.line_retry_at)
        return min(dues, default=None)

    def release_due(self, now: float) -> int:
        """Move leads whose timer has fired to the front of the line, earliest first."""
        if self.state.line_retry_at is not None and self.state.line_retry_at <= now:
            self.state.line_retry_at = None
        due = sorted((w for w in self.state.waiting if w.due <= now), key=lambda w: w.due)
        if due:
            self.state.waiting = [w for w in self.state.waiting if w.due > now]
            self.state.pending[:0] = [w.lead for w in due]
        return len(due)

    # Dialing

    def next_dial(self, now: float, exact_window: bool = True) -> InFlightCall | None:
        """Take the next lead onto a free line, or None when there is no line or no lead. A lead
        outside its calling window is parked until the window opens, one whose window never opens
        ends `skipped_window`, and the next one is tried. `exact_window=False` reads windows to the
        minute, as runs started before they were read to the second did."""
        if self.state.line_retry_at is not None and now < self.state.line_retry_at:
            return None
        while self.dialable_lines > 0 and self.state.pending:
            lead = self.state.pending.pop(0)
            check = window_check(
                self.options.calling_window, lead.zones, datetime.fromtimestamp(now, UTC), exact_window
            )
            if check.never is not None:
                self._skip(lead, SKIPPED_WINDOW, check.never)
                continue
            if check.opens_at is not None:
                self.state.waiting.append(WaitingLead(lead, check.opens_at, "window"))
                continue
            call = InFlightCall(
                lead_id=lead.id, phone=lead.phone, attempt=lead.attempt, zones=lead.zones, last_news_at=now
            )
            self.calls[(call.lead_id, call.attempt)] = call
            return call
        return None

    def dial_placed(self, lead_id: int, attempt: int, call_sid: str, status: str, now: float) -> None:
        """The create-call returned: the call exists and has a SID."""
        call = self.calls.get((lead_id, attempt))
        if call is None:
            return
        self.state.line_backoff = LINE_RETRY_SECONDS
        self.state.placed_any = True
        self.refused_were_numbers(now)
        call.call_sid = call_sid
        if call.sequence_number < 0 and call.status == DIALING:
            call.status = status
        call.last_news_at = now

    def dial_failed(
        self,
        lead_id: int,
        attempt: int,
        code: int | None,
        message: str,
        now: float,
        status: str = CallStatus.FAILED,
    ) -> Outcome | None:
        """The create-call failed for good: no call exists, the lead ends `status` (it is not
        retried: the number or the lead is the problem), and the line is free."""
        call = self.calls.get((lead_id, attempt))
        if call is None:
            return None
        outcome = Outcome(lead_id, attempt, status, call.call_sid, error_code=code, error_message=message)
        return self._finish(call, outcome, now, retry=False)

    def dial_refused(self, lead_id: int, attempt: int) -> None:
        """Twilio refused the account, not the number: the lead waits, first in line, to be dialed
        again with the same attempt (no call was placed)."""
        call = self.calls.pop((lead_id, attempt), None)
        if call is not None:
            self.state.pending.insert(0, LeadRef(call.lead_id, call.phone, call.attempt, call.zones))

    def dial_refused_unsure(self, lead_id: int, attempt: int, code: int | None, message: str) -> str | None:
        """Twilio refused the number in a way that may be about the account (21216: a blocked
        destination, or an account that may not call +1 numbers at all). The lead is held, no call
        having been placed. Returns why the run should pause when it is the REFUSALS_TO_PAUSE-th in
        a row: then it is the account, and failing every lead would lose them all."""
        call = self.calls.pop((lead_id, attempt), None)
        if call is None:
            return None
        lead = LeadRef(call.lead_id, call.phone, call.attempt, call.zones)
        self.state.refused.append(RefusedLead(lead, code, message))
        if len(self.state.refused) < REFUSALS_TO_PAUSE:
            return None
        return self._refusals_reason()

    def _refusals_reason(self) -> str:
        last = self.state.refused[-1]
        count = len(self.state.refused)
        numbers = "the only number" if count == 1 else f"the last {count} numbers"
        said = f"error {last.code}: {last.message}" if last.code is not None else last.message
        return (
            f"Twilio refused {numbers} dialed, with no call placed ({said}); this is usually the "
            "account (for +1 numbers, a missing Primary Customer Profile): fix it, then resume"
        )

    def refused_were_numbers(self, now: float) -> None:
        """A call was placed since: the account can call, so the held leads' numbers were refused;
        they fail with Twilio's reason."""
        for refused in self.state.refused:
            self._skip(refused.lead, CallStatus.FAILED, refused.message, refused.code)
        self.state.refused = []

    def requeue_refused(self) -> None:
        """The run is resumed after its account was fixed: the held leads are dialed first."""
        self.state.pending[:0] = [refused.lead for refused in self.state.refused]
        self.state.refused = []

    def settle_refused(self, now: float) -> str | None:
        """Only held leads are left: none will prove the account works. If the run has placed calls,
        the account can call and they fail as numbers; if it never has, returns why it pauses."""
        state = self.state
        if not state.refused or state.pending or state.waiting or self.calls or not state.leads_exhausted:
            return None
        if state.placed_any:
            self.refused_were_numbers(now)
            return None
        return self._refusals_reason()

    def line_busy(self, lead_id: int, attempt: int, now: float) -> None:
        """Every line of the business was in use (the database's leases, not the gate, are the cap):
        no call was placed. The lead waits first in line, nothing is dialed until `line_retry_at`,
        and the gate is told what the run holds."""
        call = self.calls.pop((lead_id, attempt), None)
        if call is not None:
            self.state.pending.insert(0, LeadRef(call.lead_id, call.phone, call.attempt, call.zones))
        self.state.line_retry_at = now + self.state.line_backoff
        self.state.line_backoff = min(self.state.line_backoff * 2, MAX_LINE_RETRY_SECONDS)
        self.state.resync_due = True

    def apply_status(self, event: CallStatusEvent, now: float) -> Outcome | None:
        """Apply a status callback. Duplicates, stale (reordered) callbacks and callbacks for
        calls this run no longer waits on change nothing. Returns the outcome on a terminal status."""
        call = self.calls.get((event.lead_id, event.attempt))
        if call is None:
            return None
        if call.call_sid is not None and call.call_sid != event.call_sid:
            return None
        call.call_sid = event.call_sid
        call.last_news_at = now
        if is_terminal(event.status):
            outcome = Outcome(
                lead_id=call.lead_id,
                attempt=call.attempt,
                status=event.status,
                call_sid=event.call_sid,
                duration=event.duration,
                answered_by=event.answered_by,
                error_code=event.error_code,
                error_message=event.error_message,
            )
            return self._finish(call, outcome, now, retry=self.state.cancel_reason is None)
        # A status fetched from Twilio has no sequence number; it is current when it is read.
        if event.sequence_number is None or event.sequence_number > call.sequence_number:
            call.sequence_number = max(call.sequence_number, event.sequence_number or -1)
            call.status = event.status
            call.answered = call.answered or event.status == CallStatus.IN_PROGRESS
        return None

    def machine_detected(self, event: MachineDetected) -> str | None:
        """Twilio's verdict on who answered one of the run's calls. Returns what to do now: `hang_up`
        or `voicemail` when a machine answered and the run's answer asks for it, else None."""
        call = self.calls.get((event.lead_id, event.attempt))
        if call is None:
            self._late_verdict(event)
            return None
        # Only a verdict on the call the run placed, and only the first (Twilio sends a callback
        # again when it heard no answer in time). A verdict before the run knows its call's SID
        # may be about any call a callback URL was given to: it is not acted on.
        if call.call_sid != event.call_sid or call.answered_by is not None:
            return None
        call.answered_by = event.answered_by
        call.answered = True
        on_machine = self.options.answer.on_machine if self.options.answer is not None else None
        if event.answered_by not in MACHINE_ANSWERS or on_machine not in (
            ON_MACHINE_HANG_UP,
            ON_MACHINE_VOICEMAIL,
        ):
            return None
        # A fax takes no voicemail.
        return ON_MACHINE_HANG_UP if event.answered_by == "fax" else on_machine

    def _late_verdict(self, event: MachineDetected) -> None:
        """A verdict that came after its call's end still says who answered, if the outcome is not
        written yet."""
        for outcome in self.state.unrecorded:
            if (outcome.lead_id, outcome.attempt, outcome.call_sid) == (
                event.lead_id,
                event.attempt,
                event.call_sid,
            ):
                outcome.answered_by = outcome.answered_by or event.answered_by

    def voicemail_left(self, lead_id: int, attempt: int) -> None:
        """The run's voicemail is playing on the call: a machine took it."""
        call = self.calls.get((lead_id, attempt))
        if call is not None:
            call.voicemail_left = True

    def _outcome_name(self, call: InFlightCall, outcome: Outcome) -> LeadOutcome:
        name = outcome_for(outcome.status)
        outcome.answered_by = outcome.answered_by or call.answered_by
        if not self.machines_named:
            return name
        if name == LeadOutcome.ANSWERED and outcome.answered_by in MACHINE_ANSWERS:
            name = LeadOutcome.VOICEMAIL if call.voicemail_left else LeadOutcome.MACHINE
            outcome.outcome = name
        return name

    def _finish(self, call: InFlightCall, outcome: Outcome, now: float, retry: bool) -> Outcome:
        del self.calls[(call.lead_id, call.attempt)]
        self.state.lines_freed.append(AttemptRef(call.lead_id, call.attempt))
        if outcome.status == CallStatus.COMPLETED and outcome.duration:
            self.state.answered_durations = [*self.state.answered_durations, outcome.duration][
                -ANSWERED_KEPT:
            ]
        name = self._outcome_name(call, outcome)
        if retry and name in self.options.retry_on and call.attempt < self.options.max_attempts:
            delay = self.options.retry_delay_seconds * self.options.retry_backoff ** (call.attempt - 1)
            lead = LeadRef(call.lead_id, call.phone, call.attempt + 1, call.zones)
            self.state.waiting.append(WaitingLead(lead, now + delay, "retry"))
            outcome.final = False
        else:
            self.state.done += 1
            self.state.outcomes[name] = self.state.outcomes.get(name, 0) + 1
        self.state.unrecorded.append(outcome)
        return outcome

    def _skip(self, lead: LeadRef, status: str, reason: str, code: int | None = None) -> None:
        """End a lead without calling it: its attempt is recorded with `status` and the reason."""
        outcome = Outcome(lead.id, lead.attempt, status, error_code=code, error_message=reason)
        self.state.done += 1
        name = outcome_for(status)
        self.state.outcomes[name] = self.state.outcomes.get(name, 0) + 1
        self.state.unrecorded.append(outcome)

    def overdue_calls(
        self, now: float, answered_recheck_seconds: float | None = None, sooner: bool = False
    ) -> list[InFlightCall]:
        """Calls Twilio has gone quiet about for longer than the call could last: ask Twilio. An
        answered call is asked about every `answered_recheck_seconds` of silence, when given, rather
        than only once it could have reached its time limit; with `sooner`, much sooner while its
        line is wanted (see `quiet_answered_seconds`)."""
        margin = self.options.reconcile_margin_seconds
        quiet = self.quiet_answered_seconds() if sooner and self.lines_wanted_by_waiting() else None
        overdue = []
        for call in self.calls.values():
            if call.call_sid is None:
                continue
            expected: float = self.options.ring_timeout_seconds
            allowance: float = margin
            if call.answered:
                expected = self.options.call_time_limit_seconds
                if answered_recheck_seconds is not None:
                    expected = min(expected, answered_recheck_seconds)
                if quiet is not None and quiet < expected:
                    expected, allowance = quiet, min(margin, SOONER_MARGIN_SECONDS)
            if now - call.last_news_at > expected + allowance:
                overdue.append(call)
        return overdue

    def quiet_answered_seconds(self) -> float | None:
        """How long an answered call of this run may be quiet before it is asked about while its line
        is wanted: twice the 90th percentile of how long its answered calls last, at least
        SOONER_FLOOR_SECONDS; None until ANSWERED_KNOWN calls say what is ordinary."""
        durations = sorted(self.state.answered_durations)
        if len(durations) < ANSWERED_KNOWN:
            return None
        return max(SOONER_FLOOR_SECONDS, 2.0 * durations[int(0.9 * (len(durations) - 1))])

    def lines_wanted_by_waiting(self) -> bool:
        """Whether leads wait for lines the run's calls hold, or those calls are all it waits for."""
        if self.ready > 0 and self.dialable_lines <= 0:
            return True
        state = self.state
        return (
            bool(self.calls)
            and not (state.pending or state.waiting or state.refused)
            and state.leads_exhausted
        )

    # Ending

    def cancel_undialed(self) -> int:
        """Drop every lead not yet dialed, waiting ones too; they end `cancelled`. Returns how many."""
        count = self.undialed
        self.state.pending.clear()
        self.state.waiting.clear()
        self.state.refused.clear()
        self.state.leads_exhausted = True
        self.state.done += count
        self.state.outcomes[LeadOutcome.CANCELLED] = self.state.outcomes.get(LeadOutcome.CANCELLED, 0) + count
        return count

    def take_freed(self) -> AttemptRef | None:
        """The ended call whose line lease the next dial releases before it claims one, if any."""
        return self.state.lines_freed.pop(0) if self.state.lines_freed else None

    def forget_freed(self, written: list[Outcome]) -> None:
        """These outcomes are written, which released their leases: no dial need release them."""
        done = {(o.lead_id, o.attempt) for o in written}
        if done:
            self.state.lines_freed = [r for r in self.state.lines_freed if (r.lead_id, r.attempt) not in done]

    def take_unrecorded(self) -> list[Outcome]:
        """Hand over the outcomes not yet written, for one batched write."""
        batch, self.state.unrecorded = self.state.unrecorded, []
        return batch

    @property
    def finished(self) -> bool:
        """Every lead has an outcome."""
        return self.state.done >= self.total and not self.calls

    def progress(self, status: str, reason: str | None = None) -> RunProgress:
        """What the person running the campaign sees."""
        dialing = sum(1 for c in self.calls.values() if c.call_sid is None)
        retry_waiting = sum(1 for w in self.state.waiting if w.reason == "retry")
        window_waiting = len(self.state.waiting) - retry_waiting
        opens = min((w.due for w in self.state.waiting if w.reason == "window"), default=None)
        return RunProgress(
            status=status,
            total=self.total,
            queued=self.ready + len(self.state.refused),
            dialing=dialing,
            in_flight=len(self.calls) - dialing,
            retry_waiting=retry_waiting,
            window_waiting=window_waiting,
            done=self.state.done,
            outcomes={name: self.state.outcomes.get(name, 0) for name in OUTCOMES},
            status_reason=reason,
            window_opens_at=datetime.fromtimestamp(opens, UTC).isoformat() if opens is not None else None,
        )

    def carry_over(self) -> RunCarryOver:
        """State to continue-as-new with, each distinct zone list once."""
        self.state.in_flight = list(self.calls.values())
        pack_zones(self._everything_with_zones(), self.state.zone_sets)
        return self.state

    def _everything_with_zones(self) -> list[LeadRef | InFlightCall]:
        state = self.state
        return [
            *state.pending,
            *(w.lead for w in state.waiting),
            *(r.lead for r in state.refused),
            *state.in_flight,
        ]
