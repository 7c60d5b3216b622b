"""Names shared by the worker, the API and the tests: workflow types, ids, signals and queries, and
search attributes."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

# The workflows, by type name: one per run, one line gate and one event courier per business.
RUN_WORKFLOW = "OutboundRunWorkflow"
GATE_WORKFLOW = "BusinessLinesWorkflow"
EVENTS_WORKFLOW = "BusinessEventsWorkflow"
RETENTION_WORKFLOW = "RecordingRetentionWorkflow"  # started hourly by a schedule per task queue

# A run's signals and query.
CALL_STATUS = "call_status"  # Twilio's status callback for one of the run's calls
MACHINE_DETECTED = "machine_detected"  # Twilio's answering-machine detection's verdict on one
CANCEL = "cancel"
PAUSE = "pause"
RESUME = "resume"
LINES_GRANTED = "lines_granted"  # from the business's gate
LINES_RECALLED = "lines_recalled"
PROGRESS = "progress"
# A gate's signals and query.
DEMAND = "demand"  # from a run: the lines it holds and wants
REAP = "reap"  # from the gate watch: take back the lines of runs that are gone
LINES_IN_USE = "lines_in_use"
# The event courier's signal: new events are waiting.
EVENTS_RECORDED = "events_recorded"

# Where Twilio posts a call's status callbacks: the worker names it when it creates the call, the
# API serves it. Its query names the attempt (`run`, `lead`, `attempt`).
TWILIO_WEBHOOKS = "/v1/webhooks/twilio"
CALL_STATUS_WEBHOOK = f"{TWILIO_WEBHOOKS}/call-status"
# Where Twilio posts its answering-machine detection's verdict (AsyncAmdStatusCallback); same query.
MACHINE_WEBHOOK = f"{TWILIO_WEBHOOKS}/machine"
# Where Twilio reports the leg a connect answer bridged to (its <Dial> action); same query.
DIAL_WEBHOOK = f"{TWILIO_WEBHOOKS}/dial"
# Where Twilio reports a call's recording (RecordingStatusCallback); same query.
RECORDING_WEBHOOK = f"{TWILIO_WEBHOOKS}/recording"

BUSINESS_ID = SearchAttributeKey.for_keyword("BusinessId")
# "RunId" is reserved by Temporal (every execution has one), so the run id goes under this name.
RUN_ID = SearchAttributeKey.for_keyword("OutboundRunId")
RUN_STATUS = SearchAttributeKey.for_keyword("RunStatus")
SEARCH_ATTRIBUTES = (BUSINESS_ID, RUN_ID, RUN_STATUS)


def run_workflow_id(run_id: str) -> str:
    """The id of the workflow that owns a run."""
    return f"outbound-run-{run_id}"


def run_id_of(workflow_id: str) -> str:
    """The run a run's workflow id names."""
    return workflow_id.removeprefix("outbound-run-")


def gate_workflow_id(business_id: str) -> str:
    """The id of the workflow that hands out a business's lines."""
    return f"business-lines-{business_id}"


def events_workflow_id(business_id: str) -> str:
    """The id of the workflow that delivers a business's events to its webhook."""
    return f"business-events-{business_id}"


def retention_schedule_id(task_queue: str) -> str:
    """The schedule that deletes recordings past their business's retention, hourly."""
    return f"recording-retention-{task_queue}"


def dial_task_queue(task_queue: str) -> str:
    """Dial activities run on their own queue so the server can rate-limit call creation."""
    return f"{task_queue}-dial"
