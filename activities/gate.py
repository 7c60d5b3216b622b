"""Activities the line gate and the runs use to reach each other through the Temporal service,
and the watch that keeps a gate running wherever one is needed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from contracts.activities import (
    CLOSED_WORKFLOWS,
    REQUEST_LINES,
    ClosedWorkflowsInput,
    ClosedWorkflowsOutput,
    RequestLinesInput,
)
from contracts.messages import GateInput
from contracts.names import (
    DEMAND,
    GATE_WORKFLOW,
    REAP,
    RUN_WORKFLOW,
    gate_workflow_id,
    run_id_of,
    run_workflow_id,
)
from contracts.statuses import LIVE_RUN_STATUSES
from db.models import Business, LineLease, Run
from outbound_dialer.temporal_client import workflow_status

log = logging.getLogger(__name__)
# A run whose latest execution is in one of these is gone: nothing of it will act again.
CLOSED = frozenset(
    {
        WorkflowExecutionStatus.COMPLETED,
        WorkflowExecutionStatus.FAILED,
        WorkflowExecutionStatus.CANCELED,
        WorkflowExecutionStatus.TERMINATED,
        WorkflowExecutionStatus.TIMED_OUT,
    }
)
# The longest one look at the business's gates may take.
LOOK_TIMEOUT = 20.0


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
        GATE_WORKFLOW,
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

    @activity.defn(name=REQUEST_LINES)
    async def request_lines(self, input: RequestLinesInput) -> None:
        """Deliver a run's demand to its business's gate, starting the gate if it is not running."""
        await signal_gate(
            self.client,
            input.business_id,
            input.demand.cap,
            input.task_queue,
            self.reap_interval_seconds,
            DEMAND,
            [input.demand],
        )

    @activity.defn(name=CLOSED_WORKFLOWS)
    async def closed_workflows(self, input: ClosedWorkflowsInput) -> ClosedWorkflowsOutput:
        """Which of these workflows are no longer running (the gate takes their lines back)."""
        closed = [
            workflow_id
            for workflow_id in input.workflow_ids
            if await workflow_status(self.client, workflow_id) != WorkflowExecutionStatus.RUNNING
        ]
        return ClosedWorkflowsOutput(closed)


class GateWatch:
    """Keeps a line gate running for every business that has calls holding lines or runs not yet
    ended, run by each worker beside its Temporal workers.

    A gate is started by its runs' demands; an operator who terminates a business's gate and its
    only run leaves nobody to demand lines again, and that run's calls would go on unheard of while
    its row said `running`. Nor does a running gate know every run: one that holds and wants no line
    (waiting for a retry or its calling window) is dropped when the gate continues as new, and if an
    operator then terminates it, nothing tells the gate. Every interval the watch looks at each
    business with live runs or leased lines: it starts, with a `reap` signal, a gate that is not
    running, and sends `reap` to a running one when one of those runs' workflows is not running. The
    gate then hangs up the gone run's calls and ends it, and greets the runs it does not know."""

    def __init__(
        self,
        client: Client,
        sessions: async_sessionmaker[AsyncSession],
        task_queue: str,
        interval_seconds: float,
    ) -> None:
        self.client = client
        self.sessions = sessions
        self.task_queue = task_queue
        self.interval_seconds = interval_seconds
        self._stop = asyncio.Event()

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                # Bounded, so that a worker told to stop is not held by Temporal or the database.
                await asyncio.wait_for(self.look(), timeout=min(self.interval_seconds, LOOK_TIMEOUT))
            except Exception:  # Temporal or the database away: looked at again next time
                log.warning("line gates not looked at", exc_info=True)
            # Workers started together by a deploy do not all look at once.
            pause = self.interval_seconds * random.uniform(0.75, 1.25)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)

    async def shutdown(self) -> None:
        self._stop.set()

    async def look(self) -> list[str]:
        """Have the gates look that should; returns the businesses whose gates it started or asked
        to reap. A business that cannot be looked at does not keep the others from being looked at,
        and they are looked at in a new order each time."""
        async with self.sessions() as session:
            leased = select(LineLease.business_id, LineLease.run_id)
            live = select(Run.business_id, Run.id).where(Run.status.in_(LIVE_RUN_STATUSES))
            runs_of: dict[str, set[str]] = {}
            for business_id, run_id in (await session.execute(leased.union(live))).all():
                runs_of.setdefault(business_id, set()).add(run_id)
            caps = dict(
                (
                    await session.execute(
                        select(Business.id, Business.max_concurrent_calls).where(Business.id.in_(runs_of))
                    )
                ).all()
            )
        listed_running = await self._listed_running()
        asked = []
        for business_id, cap in random.sample(list(caps.items()), len(caps)):
            try:
                unlisted = runs_of[business_id] - listed_running
                if await self._gate_runs(business_id) and not await self._any_gone(unlisted):
                    continue
                log.info("asking a line gate to look for gone runs", extra={"business": business_id})
                await signal_gate(
                    self.client, business_id, cap, self.task_queue, self.interval_seconds, REAP, []
                )
            except Exception:  # Temporal refused, or answered something this SDK cannot read
                log.warning("line gate not looked at", extra={"business": business_id}, exc_info=True)
                continue
            asked.append(business_id)
        return asked

    async def _listed_running(self) -> set[str]:
        """The runs Temporal's visibility lists as running: one list instead of a describe per run.
        It lags, so it can only fail to list a run that runs (then described), or list for a moment
        one that has just closed (found gone at the next look)."""
        query = f'WorkflowType="{RUN_WORKFLOW}" AND ExecutionStatus="Running"'
        try:
            return {run_id_of(w.id) async for w in self.client.list_workflows(query)}
        except RPCError:
            log.warning("running runs not listed; each is described", exc_info=True)
            return set()

    async def _any_gone(self, run_ids: set[str]) -> bool:
        """Whether any of these runs' workflows has closed (terminated, reset away from, timed out)
        or does not exist; a status this SDK does not name is not taken for gone."""
        for run_id in sorted(run_ids):
            status = await workflow_status(self.client, run_workflow_id(run_id))
            if status is None or status in CLOSED:
                return True
        return False

    async def _gate_runs(self, business_id: str) -> bool:
        return (
            await workflow_status(self.client, gate_workflow_id(business_id))
            == WorkflowExecutionStatus.RUNNING
        )
