"""BusinessLinesWorkflow: the gate that hands out one business's lines to its runs."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, FailureError

with workflow.unsafe.imports_passed_through():
    from contracts.activities import (
        CLOSED_WORKFLOWS,
        REAP_LINES,
        ClosedWorkflowsInput,
        ClosedWorkflowsOutput,
        ReapedLines,
        ReapLinesInput,
    )
    from contracts.messages import GateInput, LineDemand, LineGrant, LineRecall
    from contracts.names import DEMAND, GATE_WORKFLOW, LINES_GRANTED, LINES_IN_USE, LINES_RECALLED, REAP
    from workflows.line_pool import LinePool

# The gate's grants are advisory: the hard cap is the database's line leases. A gate execution
# takes what a run says it holds when it has not heard from the run before (it was started afresh
# after a terminate, or the run was reset), greets the business's running runs it does not know so
# that they say it, and reaps from the database: runs whose workflows are gone have their calls hung
# up, and the lines of those calls are not granted until Twilio says they ended.
GATE_CONVERGES = "gate-converges"
# A reap that keeps failing (Twilio refusing the account, the database away) is given up for this
# interval and tried at the next: meanwhile the gate goes on granting lines.
REAP_RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10), maximum_attempts=3)
# A gate greets every running run of the business it has not heard from, not only those whose calls
# hold lines: a run that had asked a terminated gate for lines and held none waited for good.
GREET_EVERY_RUNNING_RUN = "greet-every-running-run"
# A gate an operator reset to a point after its first workflow task replays the demands it copied
# as the execution it was reset from applied them (LinePool.reset_from); before, it read them as
# naming another execution's grants, counted other lines, and its replay failed.
GATE_KNOWS_ITS_RESET = "gate-knows-its-reset"


@workflow.defn(name=GATE_WORKFLOW)
class BusinessLinesWorkflow:
    """A counting semaphore over a business's lines (`business-lines-{business_id}`).

    Runs send `demand` (by signal-with-start the first time); the gate reserves lines and then
    signals `lines_granted` to the run. Runs keep lines between calls and give them back when they
    run out of leads or when the gate recalls them for a waiting run. Lines of runs whose workflows
    are gone are reclaimed by a reaper once their calls have ended.
    """

    @workflow.init
    def __init__(self, input: GateInput) -> None:
        # Built here, not in run(): signals delivered with the start are applied before run() begins.
        self._input = input
        info = workflow.info()
        reset_from = info.original_execution_run_id if workflow.patched(GATE_KNOWS_ITS_RESET) else ""
        self._pool = LinePool(input.cap, input.holders, input.seq, info.run_id, input.reserved, reset_from)
        self._reap_interval = timedelta(seconds=input.reap_interval_seconds)
        self._changed = True
        self._reap_due = False
        self._reap_task: asyncio.Task[None] | None = None
        self._greeted: set[str] = set()

    @workflow.run
    async def run(self, input: GateInput) -> None:
        if self._converges():
            # A gate started afresh (not continued as new) looks at once for what it cannot know.
            self._reap_due = workflow.info().continued_run_id is None
            await self._run_converging()
        else:
            await self._run_before_convergence()

    @workflow.signal(name=DEMAND)
    def demand(self, demand: LineDemand) -> None:
        """A run's lines given back and lines wanted."""
        if self._pool.apply(demand, self._converges()):
            self._changed = True

    @workflow.signal(name=REAP)
    def reap(self) -> None:
        """Look now for runs whose workflows are gone (an operator can send it from the Web UI)."""
        self._reap_due = True

    @workflow.query(name=LINES_IN_USE)
    def lines_in_use(self) -> int:
        """Lines granted to runs now, and lines held by calls of runs that are gone."""
        return self._pool.held

    def _converges(self) -> bool:
        return workflow.patched(GATE_CONVERGES)

    async def _run_converging(self) -> None:
        pool = self._pool
        while True:
            try:
                await workflow.wait_condition(
                    lambda: self._changed or (self._reap_due and not self._reaping()),
                    timeout=self._reap_interval if pool.holders or pool.reserved else None,
                    timeout_summary="reap",
                )
            except TimeoutError:
                self._reap_due = True
            self._changed = False
            await self._send(pool)
            if self._reap_due and not self._reaping():
                # In the background: grants go on while Twilio and the database are asked.
                self._reap_due = False
                self._reap_task = asyncio.create_task(self._reap_from_database())
            self._show(pool)
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(
                    lambda: workflow.all_handlers_finished() and not self._reaping()
                )
                workflow.continue_as_new(self._carry_over())

    def _reaping(self) -> bool:
        return self._reap_task is not None and not self._reap_task.done()

    async def _run_before_convergence(self) -> None:
        """The loop of gates started before `gate-converges`, kept for their executions."""
        while True:
            try:
                await workflow.wait_condition(
                    lambda: self._changed, timeout=self._reap_interval if self._pool.holders else None
                )
            except TimeoutError:
                await self._reap_closed_holders()
            self._changed = False
            await self._send(self._pool)
            self._show(self._pool)
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                if not self._changed:
                    workflow.continue_as_new(self._carry_over())

    def _carry_over(self) -> GateInput:
        pool = self._pool
        return GateInput(
            self._input.business_id,
            pool.cap,
            pool.snapshot(),
            pool.seq,
            self._input.reap_interval_seconds,
            dict(pool.reserved),
        )

    def _show(self, pool: LinePool) -> None:
        gone = sum(pool.reserved.values())
        workflow.set_current_details(
            f"{pool.held} of {pool.cap} lines in use by {len(pool.holders)} runs"
            + (f" ({gone} by calls of runs that are gone)" if gone else "")
        )

    async def _send(self, pool: LinePool) -> None:
        messages = pool.rebalance()
        for run_workflow_id, grant in messages.grants:
            await self._signal(run_workflow_id, LINES_GRANTED, grant)
        for run_workflow_id, recall in messages.recalls:
            await self._signal(run_workflow_id, LINES_RECALLED, recall)

    async def _signal(self, run_workflow_id: str, name: str, message: LineGrant | LineRecall) -> None:
        # The run's clock moves on to this (a run waiting for lines may have heard nothing for long).
        message.at = workflow.time()
        try:
            await workflow.get_external_workflow_handle(run_workflow_id).signal(name, message)
        except FailureError:
            # The run is gone. Before `gate-converges` its lines came back now; since, the reaper
            # gives them back once its calls have ended.
            workflow.logger.info("run gone", extra={"run_workflow_id": run_workflow_id})
            if self._converges():
                self._reap_due = True
            elif self._pool.reclaim(run_workflow_id):
                self._changed = True

    async def _reap_from_database(self) -> None:
        pool = self._pool
        try:
            reaped = await workflow.execute_activity(
                REAP_LINES,
                ReapLinesInput(self._input.business_id, sorted(pool.holders)),
                start_to_close_timeout=timedelta(minutes=2),
                heartbeat_timeout=timedelta(seconds=60),
                retry_policy=REAP_RETRY,
                summary=f"reap lines of runs that are gone ({len(pool.holders)} holding)",
                result_type=ReapedLines,
            )
        except ActivityError as error:
            workflow.logger.warning(
                "reap failed; tried again later", extra={"error": str(error.cause or error)}
            )
            return
        for run_workflow_id in reaped.gone:
            if pool.reclaim(run_workflow_id):
                workflow.logger.info(
                    "lines reclaimed from a gone run", extra={"run_workflow_id": run_workflow_id}
                )
        if reaped.still_leased != pool.reserved:
            pool.reserve(reaped.still_leased)
        # Runs this execution has not heard of: they say what they hold and want.
        unknown = reaped.running if workflow.patched(GREET_EVERY_RUNNING_RUN) else reaped.running_with_lines
        for run_workflow_id in unknown:
            if run_workflow_id not in pool.holders and run_workflow_id not in self._greeted:
                self._greeted.add(run_workflow_id)
                await self._signal(run_workflow_id, LINES_GRANTED, pool.hello(run_workflow_id))
        self._changed = True

    async def _reap_closed_holders(self) -> None:
        holders = [h.run_workflow_id for h in self._pool.holders.values() if h.held > 0]
        if not holders:
            return
        closed = await workflow.execute_activity(
            CLOSED_WORKFLOWS,
            ClosedWorkflowsInput(holders),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_interval=timedelta(seconds=30)),
            summary=f"check {len(holders)} runs holding lines",
            result_type=ClosedWorkflowsOutput,
        )
        for run_workflow_id in closed.workflow_ids:
            workflow.logger.info(
                "lines reclaimed from closed run", extra={"run_workflow_id": run_workflow_id}
            )
            self._pool.reclaim(run_workflow_id)
            self._changed = True
