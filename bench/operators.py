"""What an operator does to live workflows from the Temporal Web UI or CLI: terminate one, reset
one to its first workflow task. Used by the chaos run and the operator tests."""

from __future__ import annotations

import uuid

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError


async def running(client: Client, workflow_id: str) -> str | None:
    """The run id of the workflow's running execution, if it has one."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError:
        return None
    return description.run_id if description.status == WorkflowExecutionStatus.RUNNING else None


async def terminate(client: Client, workflow_id: str, reason: str = "operator") -> bool:
    """Terminate the workflow's running execution; False if none was running."""
    if await running(client, workflow_id) is None:
        return False
    try:
        await client.get_workflow_handle(workflow_id).terminate(reason)
    except RPCError:
        return False
    return True


async def reset_to_first_workflow_task(client: Client, workflow_id: str) -> bool:
    """What the Web UI's Reset to "first workflow task" does, signals received since reapplied;
    False if the workflow was not running or could not be reset."""
    run_id = await running(client, workflow_id)
    if run_id is None:
        return False
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    first = next(
        (e.event_id for e in history.events if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED),
        None,
    )
    if first is None:
        return False
    try:
        await client.workflow_service.reset_workflow_execution(
            ResetWorkflowExecutionRequest(
                namespace=client.namespace,
                workflow_execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id),
                reason="operator reset",
                workflow_task_finish_event_id=first,
                request_id=str(uuid.uuid4()),
            )
        )
    except RPCError:
        return False
    return True
