"""Activities the line gate and the runs use to reach each other through the Temporal service."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from workflows.messages import GateInput, LineDemand
from workflows.names import gate_workflow_id


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


async def signal_gate(
    client: Client,
    business_id: str,
    cap: int,
    task_queue: str,
    reap_interval_seconds: float,
    signal: str,
    args: list[Any],
) -> None:
    """Signal a business's line gate, starting it first if it is not running."""
    await client.start_workflow(
        "BusinessLinesWorkflow",
        GateInput(business_id=business_id, cap=cap, reap_interval_seconds=reap_interval_seconds),
        id=gate_workflow_id(business_id),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        start_signal=signal,
        start_signal_args=args,
        static_summary=f"Lines of business {business_id}",
    )


class GateActivities:
    """Activities holding a Temporal client, built once in the worker."""

    def __init__(self, client: Client, reap_interval_seconds: float = 60.0) -> None:
        self.client = client
        self.reap_interval_seconds = reap_interval_seconds

    @activity.defn
    async def request_lines(self, input: RequestLinesInput) -> None:
        """Deliver a run's demand to its business's gate, starting the gate if it is not running."""
        await signal_gate(
            self.client,
            input.business_id,
            input.demand.cap,
            input.task_queue,
            self.reap_interval_seconds,
            "demand",
            [input.demand],
        )

    @activity.defn
    async def closed_workflows(self, input: ClosedWorkflowsInput) -> ClosedWorkflowsOutput:
        """Which of these workflows are no longer running (the gate takes their lines back)."""
        closed = []
        for workflow_id in input.workflow_ids:
            try:
                description = await self.client.get_workflow_handle(workflow_id).describe()
            except RPCError as error:
                if error.status == RPCStatusCode.NOT_FOUND:
                    closed.append(workflow_id)
                    continue
                raise
            if description.status != WorkflowExecutionStatus.RUNNING:
                closed.append(workflow_id)
        return ClosedWorkflowsOutput(closed)
