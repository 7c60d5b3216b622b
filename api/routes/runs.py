"""Runs: start one with its leads, watch it, list its calls, pause, resume or cancel it. The routes
read the request and hand it to the runs service (`service.runs`); its errors become HTTP answers in
the app's one handler (`api.app`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.bodies import json_body_in_thread, json_body_openapi
from api.deps import BusinessDep, RunsDep, SessionDep
from api.problems import Rejected, problems
from contracts.names import run_workflow_id
from service.calls_export import calls_csv, metadata_keys
from service.lead_files import CSV_TYPES, JSON_LINES_TYPES, csv_records, json_lines_records
from service.schemas import MAX_OFFSET, Accepted, CallPublic, RunCreate, RunCreated, RunOptionsIn, RunPublic

router = APIRouter(prefix="/v1/runs", tags=["runs"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=RunCreated,
    openapi_extra=json_body_openapi(RunCreate),
)
async def create_run(
    # The business first: a request with no working key, or past its share, is refused before
    # its body is parsed.
    business: BusinessDep,
    body: Annotated[RunCreate, Depends(json_body_in_thread(RunCreate, listed="leads"))],
    runs: RunsDep,
) -> RunCreated:
    """Store the run and its leads, then start its workflow. A bad lead list is a 422 naming every
    bad row, and nothing is stored or started. For lists of many thousands, `POST /v1/runs/import`
    streams CSV or JSON lines instead."""
    return await runs.start_from_leads(business, body.name, body.options, body.leads)


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
    runs: RunsDep,
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
    return await runs.start_from_upload(business, name, _options_from_query(options), records)


def _options_from_query(raw: str | None) -> RunOptionsIn:
    if raw is None:
        return RunOptionsIn()
    try:
        return RunOptionsIn.model_validate_json(raw)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("query", "options", *e["loc"])} for e in error.errors(include_url=False)]
        ) from None


@router.get("", response_model=list[RunCreated])
async def list_runs(
    business: BusinessDep, runs: RunsDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
) -> list[RunCreated]:
    """The business's runs, newest first."""
    listed = await runs.newest(business, limit)
    return [RunCreated(id=r.id, status=r.status, workflow_id=run_workflow_id(r.id)) for r in listed]


@router.get("/{run_id}", response_model=RunPublic, responses=problems(404))
async def read_run(run_id: str, business: BusinessDep, runs: RunsDep) -> RunPublic:
    """The run with live progress: from its workflow while it runs, from the database after."""
    return await runs.view(await runs.own_run(business, run_id))


@router.get("/{run_id}/calls", response_model=list[CallPublic], responses=problems(404))
async def list_calls(
    run_id: str,
    business: BusinessDep,
    runs: RunsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[CallPublic]:
    """Every call attempt of the run, in the order they were made."""
    return await runs.calls(await runs.own_run(business, run_id), limit=limit, offset=offset)


@router.get(
    "/{run_id}/calls.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}, **problems(404)},
)
async def export_calls(
    run_id: str, request: Request, business: BusinessDep, runs: RunsDep, session: SessionDep
) -> StreamingResponse:
    """The run's calls as a CSV download: a row per call attempt, ordered by lead then attempt,
    and a row for each lead never dialed, so every lead is accounted for. After the call columns
    comes one column per metadata field of the run's leads."""
    run = await runs.own_run(business, run_id)
    keys = await metadata_keys(session, run.id)
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return StreamingResponse(
        calls_csv(sessions, run.id, keys),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="run-{run.id}-calls.csv"'},
    )


CONTROLLED = {
    "cancel": "cancel accepted: no new calls will be placed",
    "pause": "pause accepted",
    "resume": "resume accepted",
}


async def _control(runs: RunsDep, business: BusinessDep, run_id: str, action: str) -> Accepted:
    run = await runs.own_run(business, run_id)
    await runs.control(run, action)
    return Accepted(id=run.id, status=run.status, detail=CONTROLLED[action])


@router.post(
    "/{run_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=problems(404, 409),
)
async def cancel_run(run_id: str, business: BusinessDep, runs: RunsDep) -> Accepted:
    """Stop dialing now, hang up calls in flight, end the run `cancelled`."""
    return await _control(runs, business, run_id, "cancel")


@router.post(
    "/{run_id}/pause",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=problems(404, 409),
)
async def pause_run(run_id: str, business: BusinessDep, runs: RunsDep) -> Accepted:
    """Dial nothing new; calls in flight finish."""
    return await _control(runs, business, run_id, "pause")


@router.post(
    "/{run_id}/resume",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    responses=problems(404, 409),
)
async def resume_run(run_id: str, business: BusinessDep, runs: RunsDep) -> Accepted:
    """Dial again after a pause."""
    return await _control(runs, business, run_id, "resume")
