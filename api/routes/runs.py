"""Runs: start one with its leads, watch it, list its calls, pause, resume or cancel it."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated, Any
from uuid import uuid4

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import (
    QueryRejectCondition,
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError, RPCStatusCode

from api.calls_export import calls_csv, metadata_keys
from api.deps import BusinessDep, SessionDep, SettingsDep, TemporalDep
from api.lead_upload import CSV_TYPES, JSON_LINES_TYPES, Record, UploadError, csv_records, json_lines_records
from api.phones import InvalidPhone, to_e164
from api.progress import progress_from_database, progress_from_workflow
from api.schemas import (
    MAX_OFFSET,
    MAX_RUN_METADATA_KEYS,
    Accepted,
    CallingWindowIn,
    CallPublic,
    LeadIn,
    Rejected,
    RunCreate,
    RunCreated,
    RunOptionsIn,
    RunPublic,
    problems,
)
from db.models import LIVE_RUN_STATUSES, Business, CallAttempt, Lead, Run, utcnow
from outbound_dialer.settings import Settings
from workflows.calling_window import CallingWindow
from workflows.messages import CancelRequest, PauseRequest, ResumeRequest, RunInput, RunOptions
from workflows.names import BUSINESS_ID, RUN_ID, RUN_STATUS, run_workflow_id
from workflows.outbound_run import OutboundRunWorkflow

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/runs", tags=["runs"])

LIVE_STATUSES = LIVE_RUN_STATUSES
MAX_STREAMED_LEADS = 1_000_000
MAX_LISTED_ERRORS = 100
INSERT_BATCH = 5_000
QUERY_TIMEOUT = timedelta(seconds=5)


class LeadListErrors(Exception):
    """Leads that cannot be stored, each named by its line: `errors` as in a 422's `detail`."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} bad leads")
        self.errors = errors


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RunCreated)
async def create_run(
    body: RunCreate, business: BusinessDep, session: SessionDep, temporal: TemporalDep, settings: SettingsDep
) -> RunCreated:
    """Store the run and its leads, then start its workflow. A bad lead list is a 422 naming every
    bad row, and nothing is stored or started. For lists of many thousands, `POST /v1/runs/import`
    streams CSV or JSON lines instead."""
    phones = _validated_phones(body.leads)
    run, options = await new_run(session, business, body.name, body.options)
    await session.execute(
        insert(Lead),
        [
            {
                "run_id": run.id,
                "phone": p,
                "name": lead.name,
                "timezone": lead.timezone,
                "extra": lead.metadata,
            }
            for p, lead in zip(phones, body.leads, strict=True)
        ],
    )
    return await start_run(temporal, settings, business, run, options, len(phones))


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    response_model=RunCreated,
    responses={
        **problems(415),
        422: {"model": Rejected, "description": "The list, or the options, are bad."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "phone,name\n+14155550100,Ada\n+14155550101,Grace\n",
                },
                "application/x-ndjson": {
                    "schema": {"type": "string"},
                    "example": '{"phone": "+14155550100", "name": "Ada"}\n',
                },
            },
        }
    },
)
async def import_run(
    request: Request,
    business: BusinessDep,
    session: SessionDep,
    temporal: TemporalDep,
    settings: SettingsDep,
    name: Annotated[str | None, Query(max_length=200, description="The run's name.")] = None,
    options: Annotated[
        str | None, Query(description="The run's options as a JSON object, as in `POST /v1/runs`.")
    ] = None,
) -> RunCreated:
    """Start a run whose leads are streamed in the body, up to a million: CSV with a header row
    naming a `phone` column (`name` and `timezone` are read too, every other column is kept as the
    lead's metadata), or JSON lines, one `{"phone", "name"?, "timezone"?, ...}` object per line
    (other keys, or a `metadata` object, are the metadata). The body is read a chunk at a time and
    the leads are stored as they come. Errors name the line they are on; with any error nothing is
    stored or started."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type in CSV_TYPES:
        records = csv_records(request.stream())
    elif media_type in JSON_LINES_TYPES:
        records = json_lines_records(request.stream())
    else:
        raise HTTPException(
            status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
            f"send the leads as text/csv or application/x-ndjson, not {media_type or 'an unnamed type'}",
        )
    run, run_options = await new_run(session, business, name, _options_from_query(options))
    try:
        total = await store_streamed_leads(session, run.id, records)
    except LeadListErrors as bad:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=bad.errors) from None
    except UploadError as error:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(error)) from None
    return await start_run(temporal, settings, business, run, run_options, total)


def _options_from_query(raw: str | None) -> RunOptionsIn:
    if raw is None:
        return RunOptionsIn()
    try:
        return RunOptionsIn.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("query", "options", *e["loc"])} for e in error.errors(include_url=False)]
        ) from None


async def store_streamed_leads(session: AsyncSession, run_id: str, records: AsyncIterator[Record]) -> int:
    """Validate and insert the leads as they arrive; `LeadListErrors` naming the bad lines if any is
    bad (the caller rolls back what was inserted), `UploadError` if the body is no lead list."""
    errors: list[dict[str, Any]] = []
    error_count = 0
    first_line: dict[str, int] = {}
    metadata_keys: set[str] = set()
    batch: list[dict[str, Any]] = []

    def bad(line: int, value: object, kind: str, message: str) -> None:
        nonlocal error_count
        error_count += 1
        if len(errors) < MAX_LISTED_ERRORS:
            errors.append(
                {
                    "loc": ["body", "line", line],
                    "type": kind,
                    "msg": f"line {line}: {message}",
                    "input": value,
                }
            )

    async for record in records:
        if record.fields is None:
            bad(record.line, None, "unreadable_lead", record.problem or "unreadable")
            continue
        try:
            lead = LeadIn.model_validate(record.fields)
        except ValidationError as error:
            for e in error.errors(include_url=False):
                where = ".".join(str(part) for part in e["loc"]) or "lead"
                bad(record.line, e.get("input"), e["type"], f"{where}: {e['msg']}")
            continue
        try:
            phone = to_e164(lead.phone)
        except InvalidPhone as error:
            bad(record.line, lead.phone, "invalid_phone", str(error))
            continue
        if phone in first_line:
            message = f"{phone} is also on line {first_line[phone]}; each number once per run"
            bad(record.line, lead.phone, "duplicate_phone", message)
            continue
        new_keys = (lead.metadata or {}).keys() - metadata_keys
        if len(metadata_keys) + len(new_keys) > MAX_RUN_METADATA_KEYS:
            message = f"the run's leads use more than {MAX_RUN_METADATA_KEYS} different metadata fields"
            bad(record.line, sorted(new_keys), "too_many_metadata_fields", message)
            continue
        metadata_keys |= new_keys
        if len(first_line) >= MAX_STREAMED_LEADS:
            raise UploadError(f"more than {MAX_STREAMED_LEADS} leads: split the list into several runs")
        first_line[phone] = record.line
        if error_count:
            continue  # nothing will be stored: only look for more errors
        batch.append(
            {
                "run_id": run_id,
                "phone": phone,
                "name": lead.name,
                "timezone": lead.timezone,
                "extra": lead.metadata,
            }
        )
        if len(batch) >= INSERT_BATCH:
            await session.execute(insert(Lead), batch)
            batch = []
    if error_count:
        if error_count > len(errors):
            errors.append(
                {
                    "loc": ["body"],
                    "type": "more_errors",
                    "msg": f"{error_count - len(errors)} more errors not listed",
                    "input": None,
                }
            )
        raise LeadListErrors(errors)
    if not first_line:
        raise UploadError("the list has no leads")
    if batch:
        await session.execute(insert(Lead), batch)
    return len(first_line)


async def new_run(
    session: AsyncSession, business: Business, name: str | None, options_in: RunOptionsIn
) -> tuple[Run, RunOptions]:
    """The run's row (flushed, not committed) and the options its workflow is started with."""
    window = options_in.calling_window or (
        CallingWindowIn(**business.calling_window) if business.calling_window else CallingWindowIn()
    )
    stored_options = options_in.model_dump(exclude_none=True) | {"calling_window": window.model_dump()}
    options = RunOptions(**(stored_options | {"calling_window": CallingWindow(**window.model_dump())}))
    run = Run(
        id=uuid4().hex,
        business_id=business.id,
        name=name,
        status="running",
        options=stored_options,
        total_leads=0,
    )
    session.add(run)
    await session.flush()
    return run, options


async def start_run(
    temporal: Client, settings: Settings, business: Business, run: Run, options: RunOptions, total: int
) -> RunCreated:
    """Start the run's workflow. Started before the request's commit: if the commit fails, the
    workflow finds no run and ends, so no row can say `running` without a workflow behind it."""
    run.total_leads = total
    workflow_id = run_workflow_id(run.id)
    await temporal.start_workflow(
        OutboundRunWorkflow.run,
        RunInput(run_id=run.id, business_id=business.id, options=options, total_leads=total),
        id=workflow_id,
        task_queue=settings.TEMPORAL_TASK_QUEUE,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        search_attributes=TypedSearchAttributes(
            [
                SearchAttributePair(BUSINESS_ID, business.id),
                SearchAttributePair(RUN_ID, run.id),
                SearchAttributePair(RUN_STATUS, "running"),
            ]
        ),
        static_summary=f"{run.name or 'Outbound run'}: {total} leads for {business.name}",
    )
    log.info("run started", extra={"run": run.id, "business": business.id, "leads": total})
    return RunCreated(id=run.id, status="running", workflow_id=workflow_id)


def _validated_phones(leads: list[LeadIn]) -> list[str]:
    errors: list[dict[str, Any]] = []
    phones: list[str] = []
    first_row: dict[str, int] = {}
    for row, lead in enumerate(leads):
        try:
            phone = to_e164(lead.phone)
        except InvalidPhone as error:
            errors.append(_row_error(row, lead.phone, "invalid_phone", str(error)))
            continue
        if phone in first_row:
            message = f"{phone} is also lead {first_row[phone]}; each number once per run"
            errors.append(_row_error(row, lead.phone, "duplicate_phone", message))
            continue
        first_row[phone] = row
        phones.append(phone)
    if errors:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=errors)
    return phones


def _row_error(row: int, phone: str, kind: str, message: str) -> dict[str, Any]:
    return {
        "loc": ["body", "leads", row, "phone"],
        "type": kind,
        "msg": f"lead {row}: {message}",
        "input": phone,
    }


async def own_run(session: AsyncSession, business: Business, run_id: str) -> Run:
    run = await session.scalar(select(Run).where(Run.id == run_id, Run.business_id == business.id))
    if run is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"run {run_id} not found")
    return run


@router.get("", response_model=list[RunCreated])
async def list_runs(
    business: BusinessDep, session: SessionDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[RunCreated]:
    """The business's runs, newest first."""
    runs = await session.scalars(
        select(Run).where(Run.business_id == business.id).order_by(Run.created_at.desc()).limit(limit)
    )
    return [RunCreated(id=r.id, status=r.status, workflow_id=run_workflow_id(r.id)) for r in runs]


@router.get("/{run_id}", response_model=RunPublic, responses=problems(404))
async def read_run(
    run_id: str, business: BusinessDep, session: SessionDep, temporal: TemporalDep
) -> RunPublic:
    """The run with live progress: from its workflow while it runs, from the database after."""
    return await run_public(session, temporal, await own_run(session, business, run_id))


async def run_public(session: AsyncSession, temporal: Client, run: Run) -> RunPublic:
    """A run as `GET /v1/runs/{id}` shows it (the dashboard shows the same)."""
    run_status, reason = run.status, run.status_reason
    progress = None
    if run.status in LIVE_STATUSES:
        handle = temporal.get_workflow_handle(run_workflow_id(run.id))
        try:
            # A closed workflow can still answer queries from its history: ask only an open one.
            live = await handle.query(
                OutboundRunWorkflow.progress,
                rpc_timeout=QUERY_TIMEOUT,
                reject_condition=QueryRejectCondition.NOT_OPEN,
            )
            progress = progress_from_workflow(live)
        except Exception as error:  # RPC errors, query failures, timeouts: all fall back the same way
            log.warning("progress query failed", extra={"run": run.id, "error": str(error)})
            run_status, reason = await _status_without_workflow(session, temporal, run)
    if progress is None:
        progress = await progress_from_database(session, run)
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


async def _status_without_workflow(
    session: AsyncSession, temporal: Client, run: Run
) -> tuple[str, str | None]:
    """When the workflow cannot answer, say whether it is alive: a run is never shown running
    without a live workflow. One that has just completed wrote its final status first."""
    try:
        description = await temporal.get_workflow_handle(run_workflow_id(run.id)).describe(
            rpc_timeout=QUERY_TIMEOUT
        )
    except RPCError:
        return run.status, "progress is from the database: the workflow service did not answer"
    if description.status == WorkflowExecutionStatus.RUNNING:
        return run.status, "progress is from the database: no worker answered"
    if description.status == WorkflowExecutionStatus.COMPLETED:
        await session.refresh(run)
        return run.status, run.status_reason
    name = description.status.name.lower() if description.status else "closed"
    return "failed", f"the run's workflow is {name}"


@router.get("/{run_id}/calls", response_model=list[CallPublic], responses=problems(404))
async def list_calls(
    run_id: str,
    business: BusinessDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[CallPublic]:
    """Every call attempt of the run, in the order they were made."""
    run = await own_run(session, business, run_id)
    return await calls_of(session, run, limit=limit, offset=offset)


async def calls_of(
    session: AsyncSession, run: Run, *, limit: int, offset: int = 0, newest_first: bool = False
) -> list[CallPublic]:
    """A page of the run's call attempts, oldest (or newest) first."""
    order = CallAttempt.id.desc() if newest_first else CallAttempt.id
    rows = await session.execute(
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
            created_at=a.created_at,
            updated_at=a.updated_at,
        )
        for a, phone in rows
    ]


@router.get(
    "/{run_id}/calls.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}, **problems(404)},
)
async def export_calls(
    run_id: str, request: Request, business: BusinessDep, session: SessionDep
) -> StreamingResponse:
    """The run's calls as a CSV download: a row per call attempt, ordered by lead then attempt,
    and a row for each lead never dialed, so every lead is accounted for. After the call columns
    comes one column per metadata field of the run's leads."""
    run = await own_run(session, business, run_id)
    keys = await metadata_keys(session, run.id)
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return StreamingResponse(
        calls_csv(sessions, run.id, keys),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="run-{run.id}-calls.csv"'},
    )


async def _signal_run(temporal: Client, run: Run, signal: str, arg: object) -> None:
    if run.status not in LIVE_STATUSES:
        raise HTTPException(status.HTTP_409_CONFLICT, f"run {run.id} is already {run.status}")
    try:
        await temporal.get_workflow_handle(run_workflow_id(run.id)).signal(signal, arg)
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            raise HTTPException(status.HTTP_409_CONFLICT, f"run {run.id} is no longer running") from None
        raise


@router.post(
    "/{run_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=problems(404, 409),
)
async def cancel_run(
    run_id: str, business: BusinessDep, session: SessionDep, temporal: TemporalDep
) -> Accepted:
    """Stop dialing now, hang up calls in flight, end the run `cancelled`."""
    run = await own_run(session, business, run_id)
    if run.status in LIVE_STATUSES and run.cancel_requested_at is None:
        # Committed before the signal: dials under way finish first, and none starts after this.
        await session.execute(update(Run).where(Run.id == run.id).values(cancel_requested_at=utcnow()))
        await session.commit()
    await _signal_run(temporal, run, "cancel", CancelRequest(at=time.time()))
    log.info("run cancel requested", extra={"run": run.id})
    return Accepted(id=run.id, status=run.status, detail="cancel accepted: no new calls will be placed")


@router.post(
    "/{run_id}/pause",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=problems(404, 409),
)
async def pause_run(
    run_id: str, business: BusinessDep, session: SessionDep, temporal: TemporalDep
) -> Accepted:
    """Dial nothing new; calls in flight finish."""
    run = await own_run(session, business, run_id)
    await _signal_run(temporal, run, "pause", PauseRequest(at=time.time()))
    return Accepted(id=run.id, status=run.status, detail="pause accepted")


@router.post(
    "/{run_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=problems(404, 409),
)
async def resume_run(
    run_id: str, business: BusinessDep, session: SessionDep, temporal: TemporalDep
) -> Accepted:
    """Dial again after a pause."""
    run = await own_run(session, business, run_id)
    await _signal_run(temporal, run, "resume", ResumeRequest(at=time.time()))
    return Accepted(id=run.id, status=run.status, detail="resume accepted")
