"""Telling a business's events workflow that it has events to deliver."""

from __future__ import annotations

import logging

from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from contracts.activities import EventsInput
from contracts.names import EVENTS_RECORDED, EVENTS_WORKFLOW, events_workflow_id

log = logging.getLogger(__name__)


class EventCourier:
    """Tells a business's events workflow that it has events to deliver, starting it if need be."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client = client
        self.task_queue = task_queue

    async def notify(self, business_id: str) -> None:
        await self.client.start_workflow(
            EVENTS_WORKFLOW,
            EventsInput(business_id),
            id=events_workflow_id(business_id),
            task_queue=self.task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            start_signal=EVENTS_RECORDED,
            static_summary=f"Webhook events of business {business_id}",
        )

    async def notify_soon(self, business_id: str | None) -> None:
        """Notify, and on failure only log: the events are safe in the database, and the next
        notice for the business (at the latest its run's `run.completed`) delivers them."""
        if business_id is None:
            return
        try:
            await self.notify(business_id)
        except RPCError as error:
            log.warning(
                "could not notify the events workflow", extra={"business": business_id, "error": str(error)}
            )
