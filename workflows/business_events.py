"""BusinessEventsWorkflow: delivers one business's webhook events."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from contracts.activities import DELIVER_EVENTS, DeliverEventsInput, DeliveryPass, EventsInput
    from contracts.names import EVENTS_RECORDED, EVENTS_WORKFLOW

# A delivery pass is retried only when the database or the worker fails it; a webhook that fails is
# the event's own retry, recorded on its row.
PASS_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
# With nothing waiting for a retry and no news for this long, the workflow ends; the next event
# starts it again.
IDLE = timedelta(minutes=10)


@workflow.defn(name=EVENTS_WORKFLOW)
class BusinessEventsWorkflow:
    """Sends a business's recorded events to its webhook (`business-events-{business_id}`).

    The activities that record events signal `events_recorded` (by signal-with-start). Each signal,
    and each retry coming due, runs a delivery pass; the events and their delivery state live in
    the database, so a pass that is lost or repeated only delays or repeats a delivery, with the
    same event id.
    """

    @workflow.init
    def __init__(self, input: EventsInput) -> None:
        # A new execution (a start, or a continue-as-new) begins with a pass.
        self._recorded = True
        self._delivered = 0

    @workflow.signal(name=EVENTS_RECORDED)
    def events_recorded(self) -> None:
        """New events are in the database."""
        self._recorded = True

    @workflow.run
    async def run(self, input: EventsInput) -> None:
        retry_in: float | None = None
        while True:
            if self._recorded:
                self._recorded = False
                done: DeliveryPass = await workflow.execute_activity(
                    DELIVER_EVENTS,
                    DeliverEventsInput(input.business_id),
                    start_to_close_timeout=timedelta(minutes=10),
                    heartbeat_timeout=timedelta(minutes=1),
                    retry_policy=PASS_RETRY,
                    summary="deliver due events",
                    result_type=DeliveryPass,
                )
                self._delivered += done.delivered
                self._recorded = self._recorded or done.more
                retry_in = done.next_attempt_in
                workflow.set_current_details(
                    f"{self._delivered} events delivered"
                    + (f"; next retry in {retry_in:.0f} s" if retry_in is not None else "")
                )
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(input)
            try:
                await workflow.wait_condition(
                    lambda: self._recorded,
                    timeout=timedelta(seconds=max(retry_in, 1.0)) if retry_in is not None else IDLE,
                    timeout_summary="next retry due" if retry_in is not None else "idle",
                )
            except TimeoutError:
                if retry_in is None:
                    return
                self._recorded = True
