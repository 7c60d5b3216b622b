"""Twilio's call-status vocabulary and what each status means for a lead."""

from __future__ import annotations

# Statuses after which Twilio sends nothing more for a call.
TERMINAL_CALL_STATUSES = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
CALL_STATUSES = frozenset({"queued", "initiated", "ringing", "in-progress"}) | TERMINAL_CALL_STATUSES

# An attempt that was never dialed because the number is on the business's do-not-call list.
SKIPPED_DNC = "skipped_dnc"
# An attempt that was never dialed because the run's calling window never opens at once in every
# time zone the number may be in.
SKIPPED_WINDOW = "skipped_window"

# A lead's outcome, named for the person running the campaign.
OUTCOME_BY_CALL_STATUS = {
    "completed": "answered",
    "busy": "busy",
    "no-answer": "no_answer",
    "failed": "failed",
    "canceled": "cancelled",
    SKIPPED_DNC: "skipped_dnc",
    SKIPPED_WINDOW: "skipped_window",
}
OUTCOMES = ("answered", "busy", "no_answer", "failed", "cancelled", "skipped_dnc", "skipped_window")
# Attempt statuses after which nothing more happens to the attempt.
FINAL_ATTEMPT_STATUSES = TERMINAL_CALL_STATUSES | {SKIPPED_DNC, SKIPPED_WINDOW}

# Lead states before an outcome is known.
LEAD_QUEUED = "queued"
LEAD_RETRYING = "retrying"


def is_terminal(call_status: str) -> bool:
    """Whether Twilio will report nothing further for a call in this status."""
    return call_status in TERMINAL_CALL_STATUSES


def outcome_for(call_status: str) -> str:
    """The lead outcome a terminal call status stands for."""
    return OUTCOME_BY_CALL_STATUS[call_status]
