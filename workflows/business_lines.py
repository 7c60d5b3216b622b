"""BusinessLinesWorkflow: the gate that hands out one business's lines to its runs."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import FailureError

with workflow.unsafe.imports_passed_through():
    from activities.gate import ClosedWorkflowsInput, GateActivities
    from workflows.line_pool import LinePool
    from workflows.messages import GateInput, LineDemand, LineGrant, LineRecall


@workflow.defn
class BusinessLinesWorkflow:
    """A counting semaphore over a business's lines (`business-lines-{business_id}`).

    Runs send `demand` (by signal-with-start the first time); the gate reserves lines and then
    signals `lines_granted` to the run. Runs keep lines between calls and give them back when they
    run out of leads or when the gate recalls them for a waiting run. Lines of runs that closed
    without giving them back are reclaimed by a reaper.
    """

    @workflow.init
    def __init__(self, input: GateInput) -> None:
        # Built here, not in run(): signals delivered with the start are applied before run() begins.
        self._pool = LinePool(input.cap, input.holders, input.seq)
        self._reap_interval = timedelta(seconds=input.reap_interval_seconds)
        self._changed = True

    @workflow.run
    async def run(self, input: GateInput) -> None:
        while True:
            try:
                await workflow.wait_condition(
                    lambda: self._changed, timeout=self._reap_interval if self._pool.holders else None
                )
            except TimeoutError:
                await self._reap()
            self._changed = False
            await self._send(self._pool)
            workflow.set_current_details(
                f"{self._pool.held} of {self._pool.cap} lines in use by {len(self._pool.holders)} runs"
            )
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self._changed:
                    workflow.continue_as_new(
                        GateInput(
                            input.business_id,
                            self._pool.cap,
                            self._pool.snapshot(),
                            self._pool.seq,
                            input.reap_interval_seconds,
                        )
                    )

    @workflow.signal
    def demand(self, demand: LineDemand) -> None:
        """A run's lines given back and lines wanted."""
        if self._pool.apply(demand):
            self._changed = True

    @workflow.query
    def lines_in_use(self) -> int:
        """Lines granted to runs now."""
        return self._pool.held

    async def _send(self, pool: LinePool) -> None:
        messages = pool.rebalance()
        for run_workflow_id, grant in messages.grants:
            await self._signal(run_workflow_id, "lines_granted", grant)
        for run_workflow_id, recall in messages.recalls:
            await self._signal(run_workflow_id, "lines_recalled", recall)

    async def _signal(self, run_workflow_id: str, name: str, message: LineGrant | LineRecall) -> None:
        try:
            await workflow.get_external_workflow_handle(run_workflow_id).signal(name, message)
        except FailureError:
            # The run is gone: its lines come back now.
            workflow.logger.info("run gone, lines reclaimed", extra={"run_workflow_id": run_workflow_id})
            if self._pool.reclaim(run_workflow_id):
                self._changed = True

    async def _reap(self) -> None:
        holders = [h.run_workflow_id for h in self._pool.holders.values() if h.held > 0]
        if not holders:
            return
        closed = await workflow.execute_activity_method(
            GateActivities.closed_workflows,
            ClosedWorkflowsInput(holders),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            summary=f"check {len(holders)} runs holding lines",
        )
        for run_workflow_id in closed.workflow_ids:
            workflow.logger.info(
                "lines reclaimed from closed run", extra={"run_workflow_id": run_workflow_id}
            )
            self._pool.reclaim(run_workflow_id)
            self._changed = True
