"""Names shared by the worker, the API and the tests: workflow ids and search attributes."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

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


def dial_task_queue(task_queue: str) -> str:
    """Dial activities run on their own queue so the server can rate-limit call creation."""
    return f"{task_queue}-dial"
