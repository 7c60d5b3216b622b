"""Statuses, in one place: a run's, Twilio's for a call, and a lead's outcome (what each call status
means for the lead). Each is a `StrEnum`: its members are the very strings stored in the database,
shown by the API and carried in workflow payloads."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """A run's status, as its row, the API and the `RunStatus` search attribute give it."""

    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"


class EventStatus(StrEnum):
    """Where a webhook event's delivery stands."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"  # given up after EVENT_RETRY_PERIOD of retries


class RecordingStatus(StrEnum):
    """A call's recording, on its attempt: asked for when the call was placed (`pending`), made
    (`completed`), not made (Twilio's `absent`: no audio), or deleted at Twilio once the business's
    retention ran out."""

    PENDING = "pending"
    COMPLETED = "completed"
    ABSENT = "absent"
    DELETED = "deleted"


# A run whose workflow is still at work (paused is still alive: it resumes).
LIVE_RUN_STATUSES = (RunStatus.RUNNING, RunStatus.PAUSED)
FINAL_RUN_STATUSES = (RunStatus.COMPLETED, RunStatus.CANCELLED, RunStatus.FAILED)


class CallStatus(StrEnum):
    """Twilio's status of a call (its `CallStatus` callback parameter and its Call resource)."""

    QUEUED = "queued"
    INITIATED = "initiated"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"


class LeadOutcome(StrEnum):
    """How a lead's calling ended, named for the person running the campaign."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED_DNC = "skipped_dnc"
    SKIPPED_WINDOW = "skipped_window"
    # Answered by a machine (Twilio's answering-machine detection): a voicemail was left on it, or
    # none was (the answer hangs up on machines, or only detects them).
    VOICEMAIL = "voicemail"
    MACHINE = "machine"


# Twilio's `AnsweredBy` values that mean no person picked up (its answering-machine detection):
# `human` and `unknown` are a person's, as far as a run can tell.
MACHINE_ANSWERS = frozenset(
    {"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax"}
)


# Statuses after which Twilio sends nothing more for a call.
TERMINAL_CALL_STATUSES = frozenset(
    {CallStatus.COMPLETED, CallStatus.BUSY, CallStatus.NO_ANSWER, CallStatus.FAILED, CallStatus.CANCELED}
)
CALL_STATUSES = frozenset(CallStatus)

# An attempt that was never dialed because the number is on the business's do-not-call list.
SKIPPED_DNC = LeadOutcome.SKIPPED_DNC.value
# An attempt that was never dialed because the run's calling window never opens at once in every
# time zone the number may be in.
SKIPPED_WINDOW = LeadOutcome.SKIPPED_WINDOW.value

# A lead's outcome, named for the person running the campaign.
OUTCOME_BY_CALL_STATUS: dict[str, LeadOutcome] = {
    CallStatus.COMPLETED: LeadOutcome.ANSWERED,
    CallStatus.BUSY: LeadOutcome.BUSY,
    CallStatus.NO_ANSWER: LeadOutcome.NO_ANSWER,
    CallStatus.FAILED: LeadOutcome.FAILED,
    CallStatus.CANCELED: LeadOutcome.CANCELLED,
    SKIPPED_DNC: LeadOutcome.SKIPPED_DNC,
    SKIPPED_WINDOW: LeadOutcome.SKIPPED_WINDOW,
}
OUTCOMES: tuple[str, ...] = tuple(outcome.value for outcome in LeadOutcome)
# Attempt statuses after which nothing more happens to the attempt.
FINAL_ATTEMPT_STATUSES = TERMINAL_CALL_STATUSES | {SKIPPED_DNC, SKIPPED_WINDOW}

# An attempt whose create request is under way (no word from Twilio yet).
DIALING = "dialing"

# Lead states before an outcome is known.
LEAD_QUEUED = "queued"
LEAD_RETRYING = "retrying"


def is_terminal(call_status: str) -> bool:
    """Whether Twilio will report nothing further for a call in this status."""
    return call_status in TERMINAL_CALL_STATUSES


def outcome_for(call_status: str) -> LeadOutcome:
    """The lead outcome a terminal call status stands for."""
    return OUTCOME_BY_CALL_STATUS[call_status]
