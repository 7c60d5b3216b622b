"""The dashboard: server-rendered pages under /ui for the person running the campaigns.

Each page shows the current state as rendered, and its script keeps it current by polling the small
JSON routes under /ui/api, which read the session cookie; the public API under /v1 stays bearer-only.
Every form posts back here and does what the matching /v1 route does, through the same service
(`service.runs`, `service.dnc`); what the service refuses comes back as the page, saying why.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from api.dashboard_session import (
    ApiUser,
    DashboardUser,
    PageUser,
    check_csrf,
    end_session,
    keep_login_token,
    login_token_matches,
    new_login_token,
    safe_next,
    start_session,
)
from api.dashboard_views import (
    NewRunForm,
    RowError,
    page,
    row_errors,
    temporal_ui_link,
    upload_chunks,
)
from api.deps import DncDep, MetricsDep, RunsDep, SessionDep, SettingsDep, within_share
from service.answers import agent_numbers, business_answer
from service.answers import set_answer as save_answer
from service.calls_export import calls_csv, metadata_keys
from service.errors import (
    ListInvalid,
    NumberNotRegistered,
    PhoneListInvalid,
    PhoneNotListed,
    RunNotFound,
    RunNotLive,
    TooManySessions,
    UploadUnreadable,
)
from service.keys import business_for_key, open_session
from service.lead_files import csv_records, json_lines_records
from service.phones import InvalidPhone, to_e164
from service.schemas import MAX_NUMBERS_PER_REQUEST, MAX_OFFSET, AnswerIn, RunPublic

router = APIRouter(prefix="/ui", include_in_schema=False)

LISTED_RUNS = 50
LISTED_CALLS = 50
LISTED_DNC = 500
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
NOTICES = {
    "cancel": "Cancel accepted: no new calls will be placed.",
    "pause": "Paused: calls in progress finish, no new ones start.",
    "resume": "Resumed.",
    "ended": "The run has already ended.",
    "started": "Run started.",
    "dnc-added": "Numbers added to the do-not-call list.",
    "dnc-removed": "Number taken off the do-not-call list.",
    "dnc-missing": "That number was not on the list.",
    "answer-saved": "Saved: runs started from now on take it.",
}


def _redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status.HTTP_303_SEE_OTHER)


def _notice(code: str | None) -> str | None:
    return NOTICES.get(code or "")


@router.get("")
async def home() -> RedirectResponse:
    """The runs list."""
    return _redirect("/ui/runs")


# Signing in


@router.get("/login")
async def login_page(request: Request, settings: SettingsDep, next: str | None = None) -> Response:
    """The sign-in form."""
    return _login_form(request, settings, next_path=safe_next(next))


def _login_form(
    request: Request, settings: SettingsDep, next_path: str, error: str | None = None, status_code: int = 200
) -> Response:
    token = new_login_token()
    response = page(
        request,
        "login.html",
        {"user": None, "csrf": token, "next": next_path, "error": error},
        status_code=status_code,
    )
    keep_login_token(response, settings, token)
    return response


@router.post("/login")
async def login(request: Request, session: SessionDep, settings: SettingsDep) -> Response:
    """Check the business API key as the API does, and keep it in the session cookie."""
    async with request.form(max_files=0, max_fields=10) as form:
        api_key = form.get("api_key")
        next_path = safe_next(str(form.get("next") or ""))
        if not login_token_matches(request, form):
            return _login_form(
                request, settings, next_path, "The sign-in form expired. Please try again.", 403
            )
    signed = None
    if isinstance(api_key, str) and api_key.strip():
        signed = await business_for_key(session, api_key.strip())
    if signed is None:
        return _login_form(request, settings, next_path, "That is not a business API key.", 401)
    within_share(request, signed.business.id)  # each sign-in keeps a session row: counted too
    try:
        token = await open_session(session, signed)
    except TooManySessions as refused:
        return _login_form(request, settings, next_path, f"{refused}.", 409)
    response = _redirect(next_path)
    start_session(response, settings, token)
    return response


@router.post("/logout")
async def logout(request: Request, user: PageUser, session: SessionDep) -> Response:
    """Sign out: the session ends on the server, and the browser forgets it."""
    async with request.form(max_files=0, max_fields=10) as form:
        check_csrf(user, form)
    response = _redirect("/ui/login")
    await end_session(request, session, response)
    return response


# Runs


@router.get("/runs")
async def runs_page(request: Request, user: PageUser, runs: RunsDep) -> Response:
    """The business's runs, newest first, each with its progress."""
    shown = [await runs.view(run) for run in await runs.newest(user.business, LISTED_RUNS)]
    return page(request, "runs.html", {"user": user, "nav": "runs", "runs": shown})


@router.get("/runs/new")
async def new_run_page(request: Request, user: PageUser) -> Response:
    """The form that starts a run from a CSV of leads."""
    form = NewRunForm.for_business(user.business.calling_window)
    return page(request, "new_run.html", {"user": user, "nav": "new", "form": form})


@router.post("/runs/new")
async def create_run(request: Request, user: PageUser, runs: RunsDep, metrics: MetricsDep) -> Response:
    """Start a run from the uploaded file, through the same checks and storage as
    `POST /v1/runs/import`. With any problem the form comes back listing each, and nothing starts."""
    async with request.form(max_files=1, max_fields=30) as form:
        check_csrf(user, form)
        fields = NewRunForm.read(form)
        upload = form.get("leads")

        def again(problems: list[str], rows: list[RowError] | None = None) -> Response:
            context = {"user": user, "nav": "new", "form": fields, "problems": problems, "rows": rows or []}
            return page(request, "new_run.html", context, status.HTTP_422_UNPROCESSABLE_CONTENT)

        options, problems = fields.options()
        if not isinstance(upload, UploadFile) or not upload.filename:
            problems.append("Leads: choose a CSV file")
        if options is None or problems or not isinstance(upload, UploadFile):
            return again(problems)
        is_json_lines = (upload.filename or "").lower().endswith(JSON_LINES_SUFFIXES)
        read = json_lines_records if is_json_lines else csv_records
        try:
            created = await runs.start_from_upload(
                user.business, fields.name or None, options, read(upload_chunks(upload))
            )
        except ListInvalid as bad:
            return again(["Nothing was started: fix these lines and upload the file again."], row_errors(bad))
        except UploadUnreadable as error:
            return again([f"Nothing was started: {error}"])
    metrics.succeeded("import_run")
    return _redirect(f"/ui/runs/{created.id}?notice=started")


@router.get("/runs/{run_id}")
async def run_page(
    request: Request,
    run_id: str,
    user: PageUser,
    runs: RunsDep,
    settings: SettingsDep,
    notice: str | None = None,
) -> Response:
    """One run: progress, outcomes, the latest calls, its controls and its workflow."""
    try:
        run = await runs.own_run(user.business, run_id)
    except RunNotFound:
        context = {"user": user, "title": "Run not found", "message": "There is no such run of yours."}
        return page(request, "message.html", context, status.HTTP_404_NOT_FOUND)
    shown = await runs.view(run)
    calls = await runs.calls(run, limit=LISTED_CALLS, newest_first=True)
    context = {
        "user": user,
        "nav": "runs",
        "run": shown,
        "calls": calls,
        "temporal_link": temporal_ui_link(settings, shown.workflow_id),
        "notice": _notice(notice),
    }
    return page(request, "run.html", context)


@router.post("/runs/{run_id}/{action}")
async def control_run(
    request: Request,
    run_id: str,
    action: Literal["cancel", "pause", "resume"],
    user: PageUser,
    runs: RunsDep,
    metrics: MetricsDep,
) -> Response:
    """Cancel, pause or resume, as `POST /v1/runs/{id}/{action}` does."""
    async with request.form(max_files=0, max_fields=10) as form:
        check_csrf(user, form)
    try:
        await runs.control(await runs.own_run(user.business, run_id), action)
    except RunNotLive:
        return _redirect(f"/ui/runs/{run_id}?notice=ended")
    metrics.succeeded(f"{action}_run")
    return _redirect(f"/ui/runs/{run_id}?notice={action}")


@router.get("/runs/{run_id}/calls.csv")
async def export_calls(
    request: Request, run_id: str, user: PageUser, runs: RunsDep, session: SessionDep
) -> StreamingResponse:
    """The run's calls as CSV, as `GET /v1/runs/{id}/calls.csv` gives them."""
    run = await runs.own_run(user.business, run_id)
    keys = await metadata_keys(session, run.id)
    return StreamingResponse(
        calls_csv(request.app.state.sessions, run.id, keys),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="run-{run.id}-calls.csv"'},
    )


# The pages' own JSON, read by their script


def _json(content: Any) -> JSONResponse:
    return JSONResponse(content, headers={"Cache-Control": "no-store"})


@router.get("/api/runs")
async def runs_json(
    user: ApiUser,
    runs: RunsDep,
    ids: Annotated[list[str], Query(alias="id", max_length=LISTED_RUNS)] = [],  # noqa: B006
) -> JSONResponse:
    """The runs asked for (those a page shows as live), and the ids of the newest runs, so a page
    can tell when a run has started elsewhere."""
    newest = await runs.newest_ids(user.business, LISTED_RUNS)
    shown: list[RunPublic] = [await runs.view(run) for run in await runs.some(user.business, ids)]
    return _json({"runs": [run.model_dump(mode="json") for run in shown], "newest": newest})


@router.get("/api/runs/{run_id}")
async def run_json(run_id: str, user: ApiUser, runs: RunsDep) -> JSONResponse:
    """The run and its latest calls, newest first."""
    run = await runs.own_run(user.business, run_id)
    shown = await runs.view(run)
    calls = await runs.calls(run, limit=LISTED_CALLS, newest_first=True)
    return _json({"run": shown.model_dump(mode="json"), "calls": [c.model_dump(mode="json") for c in calls]})


# When someone answers


@router.get("/answer")
async def answer_page(
    request: Request, user: PageUser, session: SessionDep, notice: str | None = None
) -> Response:
    """What the business's answered calls do, as a form to change it."""
    return await _answer_form(
        request, user, session, business_answer(user.business).model_dump(), notice=_notice(notice)
    )


async def _answer_form(
    request: Request,
    user: PageUser,
    session: SessionDep,
    answer: dict[str, Any],
    problems: list[str] | None = None,
    notice: str | None = None,
    status_code: int = status.HTTP_200_OK,
) -> Response:
    context = {
        "user": user,
        "nav": "answer",
        "answer": answer,
        "agent_numbers": await agent_numbers(session, user.business),
        "problems": problems or [],
        "notice": notice,
    }
    return page(request, "answer.html", context, status_code)


def _typed_answer(form: FormData) -> dict[str, Any]:
    """The answer form's fields as an answer's JSON (what is left empty is left out)."""

    def text(name: str) -> str | None:
        return str(form.get(name) or "").strip() or None

    names = ("kind", "say", "voice", "language", "play", "number", "url", "on_machine")
    typed: dict[str, Any] = {name: text(name) for name in names}
    fields = text("metadata_fields")
    typed["metadata_fields"] = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
    voicemail = {k: v for k, v in (("say", text("voicemail_say")), ("play", text("voicemail_play"))) if v}
    typed["voicemail"] = voicemail or None
    typed["record"] = True if form.get("record") else None
    return {name: value for name, value in typed.items() if value is not None}


@router.post("/answer")
async def set_answer(request: Request, user: PageUser, session: SessionDep) -> Response:
    """Save the answer, as `PUT /v1/businesses/me/answer` does; with a problem, the form comes back
    saying what it is. A voice app's signing secret, when it is made, is shown once."""
    async with request.form(max_files=0, max_fields=20) as form:
        check_csrf(user, form)
        typed = _typed_answer(form)
    unprocessable = status.HTTP_422_UNPROCESSABLE_CONTENT
    try:
        answer = AnswerIn.model_validate(typed)
    except ValidationError as error:
        problems = [str(e["msg"]).removeprefix("Value error, ") for e in error.errors(include_url=False)]
        return await _answer_form(request, user, session, typed, problems, status_code=unprocessable)
    try:
        secret = await save_answer(session, user.business, answer)
    except NumberNotRegistered as error:
        return await _answer_form(request, user, session, typed, [str(error)], status_code=unprocessable)
    if secret is not None:
        notice = f"Saved. Your voice app's signing secret, shown only now: {secret}"
        return await _answer_form(request, user, session, answer.model_dump(), notice=notice)
    return _redirect("/ui/answer?notice=answer-saved")


@router.post("/answer/test-call")
async def test_call(request: Request, user: PageUser, runs: RunsDep) -> Response:
    """Call the number given with the business's answer, as `POST /v1/businesses/me/test-call` does,
    and show its run."""
    async with request.form(max_files=0, max_fields=10) as form:
        check_csrf(user, form)
        raw = str(form.get("phone") or "").strip()
    try:
        phone = to_e164(raw)
    except InvalidPhone as error:
        context = {
            "user": user,
            "nav": "answer",
            "answer": business_answer(user.business),
            "problems": [str(error)],
            "notice": None,
        }
        return page(request, "answer.html", context, status.HTTP_422_UNPROCESSABLE_CONTENT)
    created = await runs.start_test_call(user.business, phone, None)
    return _redirect(f"/ui/runs/{created.id}?notice=started")


# Do not call


@router.get("/dnc")
async def dnc_page(
    request: Request,
    user: PageUser,
    dnc: DncDep,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    notice: str | None = None,
) -> Response:
    """The do-not-call list, a form to add numbers and a button to take each off."""
    return await _dnc_page(request, user, dnc, offset, _notice(notice))


async def _dnc_page(
    request: Request,
    user: DashboardUser,
    dnc: DncDep,
    offset: int = 0,
    notice: str | None = None,
    typed: str = "",
    problems: list[str] | None = None,
    rows: list[RowError] | None = None,
) -> Response:
    entries = await dnc.numbers(user.business, limit=LISTED_DNC + 1, offset=offset)
    context = {
        "user": user,
        "nav": "dnc",
        "phones": [entry.phone for entry in entries[:LISTED_DNC]],
        "offset": offset,
        "next_offset": offset + LISTED_DNC if len(entries) > LISTED_DNC else None,
        "page_size": LISTED_DNC,
        "notice": notice,
        "typed": typed,
        "problems": problems or [],
        "rows": rows or [],
    }
    failed = bool(problems or rows)
    return page(request, "dnc.html", context, status.HTTP_422_UNPROCESSABLE_CONTENT if failed else 200)


@router.post("/dnc/add")
async def add_dnc(request: Request, user: PageUser, dnc: DncDep) -> Response:
    """Add numbers, one a line (or separated by commas), as `POST /v1/dnc` does."""
    async with request.form(max_files=0, max_fields=10) as form:
        check_csrf(user, form)
        raw = form.get("phones")
    typed = raw if isinstance(raw, str) else ""
    phones = [p.strip() for line in typed.splitlines() for p in line.split(",") if p.strip()]
    if not phones:
        return await _dnc_page(request, user, dnc, typed=typed, problems=["Enter at least one number."])
    if len(phones) > MAX_NUMBERS_PER_REQUEST:
        problem = f"At most {MAX_NUMBERS_PER_REQUEST} numbers at a time."
        return await _dnc_page(request, user, dnc, typed=typed, problems=[problem])
    try:
        await dnc.add(user.business, phones)
    except PhoneListInvalid as bad:
        rows = row_errors(bad)
        for row in rows:
            row.line = None
        problem = "Nothing was added: fix these numbers (E.164, like +14155550100)."
        return await _dnc_page(request, user, dnc, typed=typed, problems=[problem], rows=rows)
    return _redirect("/ui/dnc?notice=dnc-added")


@router.post("/dnc/remove")
async def remove_dnc(request: Request, user: PageUser, dnc: DncDep) -> Response:
    """Take a number off the list, as `DELETE /v1/dnc/{phone}` does."""
    async with request.form(max_files=0, max_fields=10) as form:
        check_csrf(user, form)
        phone = form.get("phone")
    if not isinstance(phone, str):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "which number?")
    try:
        await dnc.remove(user.business, phone)
    except (PhoneNotListed, PhoneListInvalid):
        return _redirect("/ui/dnc?notice=dnc-missing")
    return _redirect("/ui/dnc?notice=dnc-removed")
