"""Inputs, outputs, signals and queries of the workflows. New fields get defaults so running
workflows keep decoding old payloads."""

from __future__ import annotations

from dataclasses import dataclass, field

ALL_DAYS = [0, 1, 2, 3, 4, 5, 6]  # Monday is 0


@dataclass
class CallingWindow:
    """Local hours ("HH:MM", end exclusive; "24:00" is midnight) on the given weekdays."""

    start: str = "08:00"
    end: str = "21:00"
    days: list[int] = field(default_factory=lambda: list(ALL_DAYS))


RETRY_ON_DEFAULT = ("busy", "no_answer", "failed")


@dataclass
class Message:
    """A message said (`say`, in `voice` and `language`; `{name}` and `{metadata.<field>}` are the
    lead's) or played (the https audio at `play`)."""

    say: str | None = None
    voice: str | None = None
    language: str | None = None
    play: str | None = None


# What a run does when Twilio's answering-machine detection finds a machine (Answer.on_machine).
# Detection runs in the background (Twilio's AsyncAmd): a person who answers hears the answer at once.
ON_MACHINE_CONTINUE = "continue"  # the answer goes on; the lead's outcome is `machine`
ON_MACHINE_HANG_UP = "hang_up"  # the call is ended; the lead's outcome is `machine`
ON_MACHINE_VOICEMAIL = "voicemail"  # after the beep `voicemail` is left; the outcome is `voicemail`
ON_MACHINE_CHOICES = (ON_MACHINE_CONTINUE, ON_MACHINE_HANG_UP, ON_MACHINE_VOICEMAIL)


@dataclass
class Answer:
    """What an answered call does, as the business chose it; its TwiML is built when the call is
    placed (`telephony.answers`), never written by a business. Kind `message`: say `say` (in
    `voice` and `language`; `{name}` and `{metadata.<field>}` are the lead's) or play the https
    audio at `play`. Kind `connect`: bridge the call to `number`, one of the business's registered
    agent numbers (checked again when the call is placed). Kind `voice_agent`: stream the call's
    audio to the business's `wss://` endpoint at `url`, with the run, lead, attempt, phone, name and
    the lead's `metadata_fields` as the stream's parameters. With `on_machine` set, machines are
    detected (see ON_MACHINE_CHOICES); `voicemail` is what is left on one."""

    kind: str = "message"
    say: str | None = None
    voice: str | None = None
    language: str | None = None
    play: str | None = None
    number: str | None = None
    url: str | None = None
    metadata_fields: list[str] = field(default_factory=list)
    on_machine: str | None = None
    voicemail: Message | None = None
    # Twilio records each answered call; the recording is kept on its attempt.
    record: bool = False


DEFAULT_ANSWER = Answer(say="Hello. This is a call from your outbound campaign.")


@dataclass
class RunOptions:
    """Per-run dialing options, chosen when the run is created."""

    max_attempts: int = 1
    ring_timeout_seconds: int = 30
    call_time_limit_seconds: int = 3600
    hang_up_on_cancel: bool = True
    machine_detection: bool = False
    # Runs started before `answer` was taken play this (a business can no longer set it).
    twiml: str = "<Response><Say>Hello. This is a call from your outbound campaign.</Say></Response>"
    # Ask Twilio for a call's status when it has sent nothing for this long past the expected time.
    reconcile_margin_seconds: int = 60
    retry_delay_seconds: int = 3600
    retry_backoff: float = 1.0
    retry_on: list[str] = field(default_factory=lambda: list(RETRY_ON_DEFAULT))
    calling_window: CallingWindow = field(default_factory=CallingWindow)
    # What an answered call does; runs started before it was taken have none, and play `twiml`.
    answer: Answer | None = None


@dataclass
class LeadRef:
    """A lead as the workflow needs it: an id and a number."""

    id: int
    phone: str
    attempt: int = 1
    # The called party's time zones (several when the number does not say which).
    zones: list[str] = field(default_factory=list)
    # In payloads (a page of leads, the continue-as-new input), the zones are an index into the
    # payload's `zone_sets` instead: a toll-free number's dozen zones once, not once per lead.
    zone_set: int = -1


@dataclass
class WaitingLead:
    """A lead waiting on a timer: for its retry, or for its calling window to open."""

    lead: LeadRef
    due: float  # epoch seconds, workflow time
    reason: str  # "retry" or "window"


@dataclass
class RefusedLead:
    """A lead Twilio refused to call in a way that may be about the number or about the account
    (21216): it waits until a call placed since says the account works (then it fails as a number),
    or the run pauses when several in a row are refused."""

    lead: LeadRef
    code: int | None
    message: str


@dataclass
class InFlightCall:
    """An attempt that holds a line: its create-call was sent, and no terminal status is known."""

    lead_id: int
    phone: str
    attempt: int
    call_sid: str | None = None
    zones: list[str] = field(default_factory=list)
    zone_set: int = -1
    status: str = "dialing"
    sequence_number: int = -1
    answered: bool = False
    last_news_at: float = 0.0  # the run's clock (epoch seconds) when it last heard about the call
    # Who answered, as Twilio's answering-machine detection said (`MachineDetected`).
    answered_by: str | None = None
    # The run's voicemail was put on the call (it is playing to a machine).
    voicemail_left: bool = False


@dataclass
class CallStatusEvent:
    """A status callback from Twilio, as the webhook passes it to the run (signal `call_status`)."""

    lead_id: int
    attempt: int
    call_sid: str
    status: str
    sequence_number: int | None = None
    duration: int | None = None
    answered_by: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    # When the sender sent it (epoch seconds): what moves the run's clock (OutboundRunWorkflow._now).
    at: float | None = None


@dataclass
class MachineDetected:
    """Twilio's answering-machine detection's verdict on one of the run's calls (its
    AsyncAmdStatusCallback): `answered_by` is Twilio's `AnsweredBy`."""

    lead_id: int
    attempt: int
    call_sid: str
    answered_by: str
    # When the API received it (epoch seconds).
    at: float | None = None


@dataclass
class AttemptRef:
    """One call attempt of a run, by lead and attempt number."""

    lead_id: int
    attempt: int


@dataclass
class Outcome:
    """The final word on one attempt, written to the attempts table."""

    lead_id: int
    attempt: int
    status: str
    call_sid: str | None = None
    duration: int | None = None
    answered_by: str | None = None
    error_code: int | None = None
    error_message: str | None = None
    # False when the lead will be tried again: the attempt is recorded, the lead is not done.
    final: bool = True
    # The lead's outcome as the run judged it, where the call's status alone does not say
    # (`voicemail`, `machine`); otherwise the outcome its status stands for.
    outcome: str | None = None


@dataclass
class RunProgress:
    """Live progress of a run (query `progress`). `in_flight` counts only calls Twilio has a SID for."""

    status: str = "running"
    total: int = 0
    queued: int = 0
    dialing: int = 0
    in_flight: int = 0
    retry_waiting: int = 0
    window_waiting: int = 0
    done: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    status_reason: str | None = None
    # When the first lead waiting for its calling window may be called (ISO 8601, UTC).
    window_opens_at: str | None = None


@dataclass
class CancelRequest:
    """Signal `cancel`."""

    reason: str = "cancelled by user"
    # When the sender sent it (epoch seconds): what moves the run's clock (OutboundRunWorkflow._now).
    at: float | None = None


@dataclass
class PauseRequest:
    """Signal `pause`."""

    reason: str = "paused by user"
    # When the sender sent it (epoch seconds): what moves the run's clock (OutboundRunWorkflow._now).
    at: float | None = None


@dataclass
class ResumeRequest:
    """Signal `resume`."""

    # When the sender sent it (epoch seconds): what moves the run's clock (OutboundRunWorkflow._now).
    at: float | None = None


@dataclass
class LineDemand:
    """From a run to its business's gate: lines given back, and how many it wants to hold now.

    Besides the change (`release`), it carries the run's absolute state, so that a gate that has
    never heard of the run (started afresh after a terminate), or a run that is a new execution of
    itself (reset), converge: `held` is what the run holds after this demand, `epoch` the run's
    execution, `grant_seen_*` the last grant it applied."""

    run_workflow_id: str
    seq: int
    release: int = 0
    want: int = 0
    cap: int = 3
    # The run is ending: every line it holds, including grants still on their way, is free.
    done: bool = False
    epoch: str = ""
    held: int | None = None
    grant_seen_run: str = ""
    grant_seen_seq: int = 0
    # The run saw a gate execution it had not heard from: take `held` as the truth.
    resync: bool = False


@dataclass
class LineGrant:
    """From the gate to a run: `count` more lines are the run's to use. `gate_run` is the gate's
    execution: a run hearing from a new one tells it what it holds (a grant of 0 asks just that)."""

    seq: int
    count: int
    gate_run: str = ""
    # When the sender sent it (epoch seconds): what moves the run's clock (OutboundRunWorkflow._now).
    at: float | None = None


@dataclass
class LineRecall:
    """From the gate to a run: hold at most this many lines (give back lines as calls end)."""

    seq: int
    hold_at_most: int | None
    gate_run: str = ""
    # When the sender sent it (epoch seconds): what moves the run's clock (OutboundRunWorkflow._now).
    at: float | None = None


@dataclass
class RunCarryOver:
    """What a run carries across continue-as-new."""

    next_lead_cursor: int = 0
    leads_exhausted: bool = False
    pending: list[LeadRef] = field(default_factory=list)
    waiting: list[WaitingLead] = field(default_factory=list)
    in_flight: list[InFlightCall] = field(default_factory=list)
    unrecorded: list[Outcome] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    done: int = 0
    lines_held: int = 0
    hold_at_most: int | None = None
    demand_seq: int = 0
    want_sent: int = 0
    last_grant_seq: int = 0
    last_recall_seq: int = 0
    gate_contacted: bool = False
    cancel_reason: str | None = None
    # A pause holds across continue-as-new: the new execution dials nothing until resume.
    paused: bool = False
    pause_reason: str | None = None
    # Whether the run's row and search attributes already say `paused`.
    pause_recorded: bool = False
    # The gate execution the run last heard from, and earlier ones it no longer listens to.
    gate_run: str = ""
    retired_gate_runs: list[str] = field(default_factory=list)
    resync_due: bool = False
    # Every line of the business was in use when the run last tried to dial (its grants are only
    # advisory): dial again at `line_retry_at`, backing off while it stays so.
    line_retry_at: float | None = None
    line_backoff: float = 1.0
    # Attempts whose calls have ended and whose line leases may not have been released yet: each
    # dial releases one, the line it reuses, once that attempt's outcome is written (a line never
    # comes back before its attempt's final word).
    lines_freed: list[AttemptRef] = field(default_factory=list)
    refused: list[RefusedLead] = field(default_factory=list)
    # Whether Twilio has placed any call of this run: then the account can call.
    placed_any: bool = False
    # The distinct zone lists the leads above refer to by `zone_set`.
    zone_sets: list[list[str]] = field(default_factory=list)
    # How long this run's latest answered calls lasted (seconds), newest last: what is ordinary.
    answered_durations: list[int] = field(default_factory=list)


@dataclass
class RunInput:
    """Input of OutboundRunWorkflow. Leads are paged from the database, never passed here."""

    run_id: str
    business_id: str
    options: RunOptions = field(default_factory=RunOptions)
    carry_over: RunCarryOver | None = None
    total_leads: int = 0


@dataclass
class RunResult:
    """How a run ended."""

    status: str
    done: int
    outcomes: dict[str, int]


@dataclass
class GateHolder:
    """One run's standing at the gate."""

    run_workflow_id: str
    held: int = 0
    want: int = 0
    last_seq: int = 0
    recall_sent: int | None = None
    # The run's execution its demands last came from.
    epoch: str = ""


@dataclass
class GateInput:
    """Input of BusinessLinesWorkflow; `holders` is carried across continue-as-new."""

    business_id: str
    cap: int = 3
    holders: list[GateHolder] = field(default_factory=list)
    seq: int = 0
    # How often to check that runs holding lines are still running.
    reap_interval_seconds: float = 60.0
    # Lines still leased to calls of runs whose workflows are gone, until Twilio says they ended.
    reserved: dict[str, int] = field(default_factory=dict)
