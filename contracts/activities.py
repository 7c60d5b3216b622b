"""Inputs and outputs of the activities, as the workflows schedule them and the activities take
them. New fields get defaults so running workflows keep decoding old payloads."""

from __future__ import annotations

from dataclasses import dataclass, field

from contracts.messages import Answer, AttemptRef, LeadRef, LineDemand, Message, Outcome

# The activities' names, as the workflows schedule them.
PLACE_CALL = "place_call"
HANG_UP = "hang_up"
FETCH_CALL = "fetch_call"
ANSWER_MACHINE = "answer_machine"
READ_CLOCK = "read_clock"
LOAD_RUN = "load_run"
LOAD_LEADS = "load_leads"
RECORD_OUTCOMES = "record_outcomes"
STOP_DIALS = "stop_dials"
SET_RUN_STATUS = "set_run_status"
REQUEST_LINES = "request_lines"
CLOSED_WORKFLOWS = "closed_workflows"
REAP_LINES = "reap_lines"
DELIVER_EVENTS = "deliver_events"
DELETE_EXPIRED_RECORDINGS = "delete_expired_recordings"

# The types of the errors activities fail with, as the workflows tell them apart.
INVALID_NUMBER = "InvalidNumber"
DO_NOT_CALL = "DoNotCall"
RUN_CANCELLED = "RunCancelled"
ACCOUNT_ERROR = "TwilioAccountError"
LINE_BUSY = "LineBusy"
# Refused with a 4xx that may be about the number or the account (21216, or a code we do not know).
TWILIO_REFUSED = "TwilioRefused"
# The run's answer cannot be made into TwiML (an unknown kind, or too long for Twilio).
ANSWER_INVALID = "AnswerInvalid"
# The error message of an attempt whose call Twilio has no record of.
NO_RECORD = "Twilio has no record of this call"
# The run's row never appeared: the API's request that started the run did not commit.
RUN_NOT_FOUND = "RunNotFound"


@dataclass
class DialInput:
    run_id: str
    lead_id: int
    attempt: int
    to: str
    from_: str
    twiml: str
    ring_timeout_seconds: int = 30
    call_time_limit_seconds: int = 3600
    machine_detection: bool = False
    business_id: str = ""
    # Outcomes of the run's earlier calls, written with this attempt's row instead of by an
    # activity of their own.
    outcomes: list[Outcome] = field(default_factory=list)
    # What the run's workflow understands of the answer: 2 adds `line_busy` and attempts that an
    # earlier execution of the run already ended. A try for 1 waits and retries for a line instead.
    answer_version: int = 1
    # Ended calls of the run whose line leases this dial releases before it claims its own.
    release: list[AttemptRef] = field(default_factory=list)
    # What the answered call does; without it (runs started before), `twiml` is played.
    answer: Answer | None = None


@dataclass
class DialOutput:
    call_sid: str
    status: str
    # From the dial's first schedule to this answer, as the activity saw it: how long dials take
    # now, which the run's workflow reads from its history rather than from its own clock.
    took_seconds: float | None = None
    # When the dial answered (epoch seconds): the run's clock moves on to it.
    at: float | None = None
    # Every line of the business is in use (its leases): no call was placed; dial again later.
    line_busy: bool = False
    # For an attempt that had already ended: how (a call's end, or why no call was placed).
    duration: int | None = None
    answered_by: str | None = None
    error_code: int | None = None
    error_message: str | None = None


@dataclass
class HangUpInput:
    call_sid: str
    answered: bool
    # Every refusal is retried (by the run's retry policy), account errors included: the call may
    # be going on, and the auth token may be fixed any moment.
    keep_trying: bool = False


@dataclass
class FetchCallInput:
    call_sid: str


@dataclass
class AnswerMachineInput:
    """A machine answered one of the run's calls: leave `voicemail` on it (said with the lead's
    fields if it names them)."""

    run_id: str
    lead_id: int
    attempt: int
    call_sid: str
    to: str
    voicemail: Message | None = None


@dataclass
class MachineAnswered:
    """Whether Twilio took what was asked (False: the call had already ended), and when the
    activity answered (epoch seconds)."""

    done: bool
    at: float | None = None


@dataclass
class CallSnapshot:
    """What Twilio says of a call now; `found` is False when Twilio has no such call."""

    found: bool
    status: str
    duration: int | None = None
    answered_by: str | None = None
    # When the activity answered (epoch seconds): the run's clock moves on to it.
    at: float | None = None


@dataclass
class RequestLinesInput:
    business_id: str
    task_queue: str
    demand: LineDemand


@dataclass
class ClosedWorkflowsInput:
    workflow_ids: list[str]


@dataclass
class ClosedWorkflowsOutput:
    workflow_ids: list[str] = field(default_factory=list)


@dataclass
class ReapLinesInput:
    business_id: str
    # Runs the gate counts as holding lines (workflow ids), checked along with those the database names.
    run_workflow_ids: list[str] = field(default_factory=list)


@dataclass
class ReapedLines:
    """Runs found running, runs found gone, and the lines the gone ones' calls still hold."""

    running: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)
    still_leased: dict[str, int] = field(default_factory=dict)
    # Running runs whose calls hold lines: those a gate that does not know them should greet.
    running_with_lines: list[str] = field(default_factory=list)


@dataclass
class LoadRunInput:
    run_id: str


@dataclass
class RunFacts:
    """What a run's workflow needs from the database once per history segment."""

    business_id: str
    caller_id: str
    max_concurrent_calls: int
    total_leads: int
    # When the activity answered (epoch seconds): the run's clock moves on to it.
    at: float | None = None


@dataclass
class LoadLeadsInput:
    run_id: str
    after_lead_id: int
    limit: int
    # Whether the run's workflow reads zones by index into the page's `zone_sets` (workflow code
    # from before reads only each lead's `zones`).
    pack_zones: bool = False


@dataclass
class LoadLeadsOutput:
    leads: list[LeadRef] = field(default_factory=list)
    # The distinct zone lists the leads refer to by `zone_set`.
    zone_sets: list[list[str]] = field(default_factory=list)
    # When the activity answered (epoch seconds): the run's clock moves on to it.
    at: float | None = None


@dataclass
class RecordOutcomesInput:
    run_id: str
    outcomes: list[Outcome]


@dataclass
class SetRunStatusInput:
    """A run's new status; a final status also ends every lead still queued as `cancelled`."""

    run_id: str
    status: str
    reason: str | None = None
    final: bool = False


@dataclass
class LeadCounts:
    """How a run's leads ended, as the leads table says (the run's result reports these)."""

    done: int
    outcomes: dict[str, int]


@dataclass
class EventsInput:
    business_id: str


@dataclass
class DeliverEventsInput:
    business_id: str


@dataclass
class DeliveryPass:
    """What one pass did, and when to come back: `more` when due events remain now,
    `next_attempt_in` (seconds) when the earliest event waiting for a retry is due later."""

    delivered: int = 0
    failed_attempts: int = 0
    given_up: int = 0
    more: bool = False
    next_attempt_in: float | None = None


@dataclass
class RetentionPass:
    """One pass of deleting recordings past their business's retention: how many were deleted at
    Twilio, how many Twilio refused (tried again at the next hour), and whether more are due."""

    deleted: int = 0
    refused: int = 0
    more: bool = False
