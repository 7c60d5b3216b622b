"""Runs: start one from any lead source, show it, list its calls, and pause, resume or cancel it.

`RunService` is what the `/v1/runs` routes and the dashboard both call; it knows nothing of HTTP.
It takes the request's session (the caller commits it, or rolls it back on an error) and the
Temporal client, and raises `service.errors` for what it refuses.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar
from uuid import uuid4

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import (
    QueryRejectCondition,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from contracts.messages import (
    DEFAULT_ANSWER,
    CallingWindow,
    CancelRequest,
    PauseRequest,
    ResumeRequest,
    RunInput,
    RunOptions,
    RunProgress,
)
from contracts.names import (
    BUSINESS_ID,
    CANCEL,
    PAUSE,
    PROGRESS,
    RESUME,
    RUN_ID,
    RUN_STATUS,
    RUN_WORKFLOW,
    run_workflow_id,
)
from contracts.statuses import FINAL_ATTEMPT_STATUSES, LIVE_RUN_STATUSES, RunStatus
from db.models import Business, CallAttempt, Lead, Run, utcnow
from outbound_dialer.settings import Settings
from service.answers import business_answer, check_answer
from service.errors import LeadListInvalid, RunNotFound, RunNotLive, UploadUnreadable
from service.lead_files import Record
from service.leads import JSON_LEADS, UPLOAD_LINES, LeadList
from service.progress import progress_from_database, progress_from_workflow
from service.schemas import (
    AnswerIn,
    CallingWindowIn,
    CallPublic,
    LeadIn,
    RecordingPublic,
    RunCreated,
    RunOptionsIn,
    RunPublic,
)
from telephony.answers import LeadFields, twiml_for

log = logging.getLogger(__name__)
T = TypeVar("T")

INSERT_BATCH = 5_000
# Leads checked in one go off the event loop.
CHECK_CHUNK = 1_000
QUERY_TIMEOUT = timedelta(seconds=5)


class RunService:
    """The runs of one business's requests, over one database session and the Temporal client."""

    def __init__(self, session: AsyncSession, temporal: Client, settings: Settings) -> None:
        self.session = session
        self.temporal = temporal
        self.settings = settings

    # Starting a run

    async def start_from_leads(
        self, business: Business, name: str | None, options: RunOptionsIn, leads: Sequence[LeadIn]
    ) -> RunCreated:
        """A run of leads given as a JSON array, each named by its index in problems."""

        async def numbered() -> AsyncIterator[tuple[int, LeadIn]]:
            for index, lead in enumerate(leads):
                yield index, lead

        return await self._start(business, name, options, LeadList(JSON_LEADS), numbered())

    async def start_test_call(self, business: Business, phone: str, answer: AnswerIn | None) -> RunCreated:
        """One call to `phone` with the business's answer (or the one given), outside its campaigns:
        a run of one lead, so the call is under the business's line cap, its do-not-call list and
        the account's call rate like any other, and shows in its runs. It is placed at any hour."""
        options = RunOptionsIn(calling_window=CallingWindowIn(start="00:00", end="24:00"), answer=answer)
        return await self.start_from_leads(business, f"Test call to {phone}", options, [LeadIn(phone=phone)])

    async def start_from_upload(
        self, business: Business, name: str | None, options: RunOptionsIn, records: AsyncIterable[Record]
    ) -> RunCreated:
        """A run of leads read from an upload (CSV or JSON lines), each named by its line."""
        return await self._start(business, name, options, LeadList(UPLOAD_LINES), records)

    async def _start(
        self,
        business: Business,
        name: str | None,
        options_in: RunOptionsIn,
        leads: LeadList,
        source: AsyncIterable[Record | tuple[int, LeadIn]],
    ) -> RunCreated:
        """Store the run and its leads as they are read, then start its workflow. With any bad lead,
        or a body that is no lead list, nothing is stored or started: what was inserted is rolled
        back and the problems are raised."""
        run, options = await self._new_run(business, name, options_in)
        try:
            total = await self._store_leads(run.id, leads, source)
        except (LeadListInvalid, UploadUnreadable):
            await self.session.rollback()
            raise
        return await self._start_workflow(business, run, options, total)

    async def _store_leads(
        self,
        run_id: str,
        leads: LeadList,
        source: AsyncIterable[Record | tuple[int, LeadIn]],
    ) -> int:
        """Read the source a chunk at a time and check each chunk in a thread (parsing and
        validating numbers is the CPU of an upload: on the event loop it would hold up every other
        request and Twilio's callbacks), storing the good rows as they come."""
        batch: list[dict[str, Any]] = []
        async for chunk in _chunks(source, CHECK_CHUNK):
            rows = await asyncio.to_thread(_check, leads, chunk)
            batch += ({"run_id": run_id, **row} for row in rows)
            if len(batch) >= INSERT_BATCH:
                await self.session.execute(insert(Lead), batch)
                batch = []
        total = leads.finish()
        if batch:
            await self.session.execute(insert(Lead), batch)
        return total

    async def _new_run(
        self, business: Business, name: str | None, options_in: RunOptionsIn
    ) -> tuple[Run, RunOptions]:
        """The run's row (flushed, not committed) and the options its workflow is started with."""
        window = options_in.calling_window or (
            CallingWindowIn(**business.calling_window) if business.calling_window else CallingWindowIn()
        )
        answer = options_in.answer or business_answer(business)
        await check_answer(self.session, business, answer)
        stored_options = options_in.model_dump(exclude_none=True) | {
            "calling_window": window.model_dump(),
            "answer": answer.model_dump(mode="json", exclude_none=True),
        }
        options = RunOptions(
            **(
                stored_options
                | {
                    "calling_window": CallingWindow(**window.model_dump()),
                    "answer": answer.to_answer(),
                    # What a dial worker from before answers were taken plays, mid-deploy: the
                    # same answer, without the lead's fields.
                    "twiml": twiml_for(
                        answer.to_answer() if answer.kind != "voice_app" else DEFAULT_ANSWER, LeadFields()
                    ),
                }
            )
        )
        run = Run(
            id=uuid4().hex,
            business_id=business.id,
            name=name,
            status=RunStatus.RUNNING,
            options=stored_options,
            total_leads=0,
        )
        self.session.add(run)
        await self.session.flush()
        return run, options

    async def _start_workflow(
        self, business: Business, run: Run, options: RunOptions, total: int
    ) -> RunCreated:
        """Start the run's workflow. Started before the request's commit: if the commit fails, the
        workflow finds no run and ends, so no row can say `running` without a workflow behind it."""
        run.total_leads = total
        workflow_id = run_workflow_id(run.id)
        await self.temporal.start_workflow(
            RUN_WORKFLOW,
            RunInput(run_id=run.id, business_id=business.id, options=options, total_leads=total),
            id=workflow_id,
            task_queue=self.settings.TEMPORAL_TASK_QUEUE,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=TypedSearchAttributes(
                [
                    SearchAttributePair(BUSINESS_ID, business.id),
                    SearchAttributePair(RUN_ID, run.id),
                    SearchAttributePair(RUN_STATUS, RunStatus.RUNNING),
                ]
            ),
            static_summary=f"{run.name or 'Outbound run'}: {total} leads for {business.name}",
        )
        log.info("run started", extra={"run": run.id, "business": business.id, "leads": total})
        return RunCreated(id=run.id, status=RunStatus.RUNNING, workflow_id=workflow_id)

    # Reading runs

    async def own_run(self, business: Business, run_id: str) -> Run:
        """The business's run, or `RunNotFound` (another business's runs are not found either)."""
        run = await self.session.scalar(select(Run).where(Run.id == run_id, Run.business_id == business.id))
        if run is None:
            raise RunNotFound(run_id)
        return run

    async def newest(self, business: Business, limit: int) -> list[Run]:
        """The business's runs, newest first."""
        runs = await self.session.scalars(
            select(Run).where(Run.business_id == business.id).order_by(Run.created_at.desc()).limit(limit)
        )
        return list(runs)

    async def newest_ids(self, business: Business, limit: int) -> list[str]:
        ids = await self.session.scalars(
            select(Run.id).where(Run.business_id == business.id).order_by(Run.created_at.desc()).limit(limit)
        )
        return list(ids)

    async def some(self, business: Business, run_ids: Sequence[str]) -> list[Run]:
        """Those of the runs asked for that are the business's own."""
        runs = await self.session.scalars(
            select(Run).where(Run.business_id == business.id, Run.id.in_(run_ids))
        )
        return list(runs)

    async def view(self, run: Run) -> RunPublic:
        """The run with live progress: from its workflow while it runs, from the database after."""
        run_status, reason = run.status, run.status_reason
        progress = None
        if run.status in LIVE_RUN_STATUSES:
            handle = self.temporal.get_workflow_handle(run_workflow_id(run.id))
            try:
                # A closed workflow can still answer queries from its history: ask only an open one.
                live = await handle.query(
                    PROGRESS,
                    result_type=RunProgress,
                    rpc_timeout=QUERY_TIMEOUT,
                    reject_condition=QueryRejectCondition.NOT_OPEN,
                )
                progress = progress_from_workflow(live)
            except Exception as error:  # RPC errors, query failures, timeouts: all fall back the same way
                log.warning("progress query failed", extra={"run": run.id, "error": str(error)})
                run_status, reason = await self._status_without_workflow(run)
        if progress is None:
            progress = await progress_from_database(self.session, run)
        return RunPublic(
            id=run.id,
            name=run.name,
            status=run_status,
            status_reason=reason,
            workflow_id=run_workflow_id(run.id),
            progress=progress,
            created_at=run.created_at,
            finished_at=run.finished_at,
        )

    async def _status_without_workflow(self, run: Run) -> tuple[str, str | None]:
        """When the workflow cannot answer, say whether it is alive: a run is never shown running
        without a live workflow. One that has just completed wrote its final status first."""
        try:
            description = await self.temporal.get_workflow_handle(run_workflow_id(run.id)).describe(
                rpc_timeout=QUERY_TIMEOUT
            )
        except RPCError:
            return run.status, "progress is from the database: the workflow service did not answer"
        if description.status == WorkflowExecutionStatus.RUNNING:
            return run.status, "progress is from the database: no worker answered"
        if description.status == WorkflowExecutionStatus.COMPLETED:
            await self.session.refresh(run)
            return run.status, run.status_reason
        name = description.status.name.lower() if description.status else "closed"
        return RunStatus.FAILED, f"the run's workflow is {name}"

    async def calls(
        self, run: Run, *, limit: int, offset: int = 0, newest_first: bool = False
    ) -> list[CallPublic]:
        """A page of the run's call attempts, oldest (or newest) first."""
        order = CallAttempt.id.desc() if newest_first else CallAttempt.id
        rows = await self.session.execute(
            select(CallAttempt, Lead.phone)
            .join(Lead, Lead.id == CallAttempt.lead_id)
            .where(CallAttempt.run_id == run.id)
            .order_by(order)
            .limit(limit)
            .offset(offset)
        )
        return [
            CallPublic(
                lead=a.lead_id,
                phone=phone,
                attempt=a.attempt,
                call_sid=a.call_sid,
                status=a.status,
                duration=a.duration,
                answered_by=a.answered_by,
                error_code=a.error_code,
                error_message=a.error_message,
                outcome=a.lead_outcome if a.status in FINAL_ATTEMPT_STATUSES else None,
                bridged_status=a.bridged_status,
                bridged_seconds=a.bridged_seconds,
                recording=RecordingPublic(
                    sid=a.recording_sid,
                    status=a.recording_status,
                    seconds=a.recording_seconds,
                    url=a.recording_url,
                )
                if a.recording_status
                else None,
                created_at=a.created_at,
                updated_at=a.updated_at,
            )
            for a, phone in rows
        ]

    # Run controls

    async def control(self, run: Run, action: str) -> None:
        """Cancel (stop dialing, hang up calls in flight), pause (dial nothing new) or resume a run;
        `RunNotLive` if it has ended."""
        if action == CANCEL and run.status in LIVE_RUN_STATUSES and run.cancel_requested_at is None:
            # Committed before the signal: dials under way finish first, and none starts after this.
            await self.session.execute(
                update(Run).where(Run.id == run.id).values(cancel_requested_at=utcnow())
            )
            await self.session.commit()
        if run.status not in LIVE_RUN_STATUSES:
            raise RunNotLive(run.id, run.status)
        request = {CANCEL: CancelRequest, PAUSE: PauseRequest, RESUME: ResumeRequest}[action]
        try:
            await self.temporal.get_workflow_handle(run_workflow_id(run.id)).signal(
                action, request(at=time.time())
            )
        except RPCError as error:
            if error.status == RPCStatusCode.NOT_FOUND:
                raise RunNotLive(run.id) from None
            raise
        log.info("run %s requested", action, extra={"run": run.id})


async def _chunks(source: AsyncIterable[T], size: int) -> AsyncIterator[list[T]]:
    """The source's items in lists of `size` (the last may be shorter)."""
    chunk: list[T] = []
    async for item in source:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _check(leads: LeadList, chunk: Sequence[Record | tuple[int, LeadIn]]) -> list[dict[str, Any]]:
    """The rows to store of a chunk of leads (none once any lead of the list is bad)."""
    rows = []
    for item in chunk:
        row = leads.add_record(item) if isinstance(item, Record) else leads.add(*item)
        if row is not None:
            rows.append(row)
    return rows
