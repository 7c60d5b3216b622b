"""What the dashboard's pages are made of: the templates and their filters, the headers every page
carries, and the forms read back into the API's own request models."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from contracts.messages import ALL_DAYS
from outbound_dialer.settings import Settings
from service.errors import ListInvalid
from service.schemas import CallingWindowIn, Progress, RunOptionsIn

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"
TEMPLATES_DIR = HERE / "templates"
UPLOAD_CHUNK = 64 * 1024
MAX_NAME_CHARS = 200

# No script or style from anywhere else, no inline script, no framing (the buttons cancel runs).
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
OUTCOME_LABELS = {
    "answered": "Answered",
    "busy": "Busy",
    "no_answer": "No answer",
    "failed": "Failed",
    "cancelled": "Cancelled",
    "skipped_dnc": "Do not call",
    "skipped_window": "Outside calling window",
}
COUNT_LABELS = {
    "queued": "Queued",
    "dialing": "Dialing",
    "in_flight": "In call",
    "retry_waiting": "Waiting to retry",
    "window_waiting": "Outside calling hours",
    "done": "Done",
}
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
OPTION_LABELS = {
    "max_attempts": "Calls per lead",
    "retry_delay_seconds": "Retry after",
    "calling_window": "Calling window",
    "start": "start",
    "end": "end",
    "days": "days",
}


def _static_version() -> str:
    """Changes when the CSS or the script does, so browsers fetch the new one."""
    digest = hashlib.sha256()
    for path in sorted(STATIC_DIR.iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def percent(progress: Progress) -> int:
    """Leads done, in whole percent: 100 only when every lead is."""
    return progress.done * 100 // progress.total if progress.total else 0


def when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else ""


def clock(moment: datetime | None) -> str:
    return moment.strftime("%H:%M:%S") if moment else ""


templates = Jinja2Templates(directory=TEMPLATES_DIR)
templates.env.globals.update(
    static_version=_static_version(),
    percent=percent,
    outcome_labels=OUTCOME_LABELS,
    count_labels=COUNT_LABELS,
    day_names=DAY_NAMES,
)
templates.env.filters.update(when=when, clock=clock)


def page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    """A rendered page with the dashboard's headers."""
    return templates.TemplateResponse(request, name, context, status_code=status_code, headers=PAGE_HEADERS)


def temporal_ui_link(settings: Settings, workflow_id: str) -> str:
    """The workflow's page in the Temporal Web UI."""
    namespace = quote(settings.TEMPORAL_NAMESPACE, safe="")
    return f"{settings.TEMPORAL_UI_URL}/namespaces/{namespace}/workflows/{quote(workflow_id, safe='')}"


@dataclass
class RowError:
    """One problem with an upload, as the page lists it."""

    line: int | None
    value: str
    problem: str


def row_errors(refused: ListInvalid) -> list[RowError]:
    """A refused list's problems as rows: the line (or row) number, what was there, what is wrong."""
    rows = [
        RowError(problem.number, "" if problem.value is None else str(problem.value), problem.message)
        for problem in refused.rows
    ]
    if refused.unlisted:
        rows.append(RowError(None, "", f"{refused.unlisted} more errors not listed"))
    return rows


@dataclass
class NewRunForm:
    """The new-run form's fields, as typed (so a page with errors shows them again)."""

    name: str = ""
    max_attempts: str = "1"
    retry_delay_minutes: str = "60"
    window_start: str = "08:00"
    window_end: str = "21:00"
    days: tuple[int, ...] = tuple(ALL_DAYS)

    @classmethod
    def for_business(cls, calling_window: dict[str, Any] | None) -> NewRunForm:
        window = CallingWindowIn(**calling_window) if calling_window else CallingWindowIn()
        return cls(window_start=window.start, window_end=window.end, days=tuple(window.days))

    @classmethod
    def read(cls, form: FormData) -> NewRunForm:
        def text(key: str) -> str:
            value = form.get(key)
            return value.strip() if isinstance(value, str) else ""

        days = tuple(int(day) for day in form.getlist("days") if isinstance(day, str) and day.isdigit())
        return cls(
            name=text("name"),
            max_attempts=text("max_attempts"),
            retry_delay_minutes=text("retry_delay_minutes"),
            window_start=text("window_start"),
            window_end=text("window_end"),
            days=days,
        )

    def options(self) -> tuple[RunOptionsIn | None, list[str]]:
        """The run's options, or what is wrong with the fields."""
        problems = []
        if len(self.name) > MAX_NAME_CHARS:
            problems.append(f"Name: at most {MAX_NAME_CHARS} characters")
        if "\x00" in self.name:
            problems.append("Name: must not contain the NUL character")
        if not self.days:
            problems.append("Calling window: choose at least one day")
        try:
            delay_seconds: object = int(self.retry_delay_minutes) * 60
        except ValueError:
            problems.append("Retry after: a whole number of minutes")
            delay_seconds = None
        if problems:
            return None, problems
        try:
            options = RunOptionsIn.model_validate(
                {
                    "max_attempts": self.max_attempts,
                    "retry_delay_seconds": delay_seconds,
                    "calling_window": {
                        "start": self.window_start,
                        "end": self.window_end,
                        "days": list(self.days),
                    },
                }
            )
        except ValidationError as error:
            return None, [_option_problem(e) for e in error.errors(include_url=False)]
        return options, []


def _option_problem(error: Any) -> str:
    where = " ".join(OPTION_LABELS.get(str(part), str(part)) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["loc"] and error["loc"][0] == "retry_delay_seconds":
        message = "between 1 minute and 7 days"
    elif error["type"] == "string_pattern_mismatch":  # the calling window's times
        message = "a time such as 08:00 (the end may be 24:00)"
    return f"{where.capitalize()}: {message}" if where else message


async def upload_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
    """The uploaded file a chunk at a time, as the import reads a request body."""
    while chunk := await upload.read(UPLOAD_CHUNK):
        yield chunk
