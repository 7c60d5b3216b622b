"""A run's calls as CSV for a spreadsheet: one row per call attempt and one for each lead never
dialed, with the leads' metadata, read from the database a page of leads at a time."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from contracts.statuses import FINAL_ATTEMPT_STATUSES, OUTCOME_BY_CALL_STATUS
from db.models import CallAttempt, Lead

CALL_COLUMNS = (
    "lead_id",
    "phone",
    "name",
    "attempt",
    "status",
    "call_sid",
    "duration_seconds",
    "answered_by",
    "error_code",
    "error_message",
    "started_at",
    "ended_at",
    "outcome",
    "bridged_status",
    "bridged_seconds",
    "recording_sid",
    "recording_seconds",
    "recording_url",
    "lead_status",
)
# Metadata may hold up to 50 values of 1,000 characters a lead: keep a page's text small.
LEADS_PER_PAGE = 200
KEY_SCAN_PAGE = 2_000
# A spreadsheet reads a cell starting with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_text(text: str) -> str:
    """Free text as a spreadsheet shows it, never run: a leading quote keeps a formula inert."""
    return f"'{text}" if text.startswith(FORMULA_STARTS) else text


async def metadata_keys(session: AsyncSession, run_id: str) -> list[str]:
    """Every metadata field name the run's leads carry, in the order they first appear."""
    keys: dict[str, None] = {}
    after = 0
    while True:
        rows = (
            await session.execute(
                select(Lead.id, Lead.extra)
                .where(Lead.run_id == run_id, Lead.id > after, Lead.extra.is_not(None))
                .order_by(Lead.id)
                .limit(KEY_SCAN_PAGE)
            )
        ).all()
        for _, extra in rows:
            keys.update(dict.fromkeys(extra or ()))
        if len(rows) < KEY_SCAN_PAGE:
            return list(keys)
        after = rows[-1].id


def header(keys: Sequence[str]) -> list[str]:
    """The CSV's columns: the calls', then one per metadata field; a field named like a call
    column is shown as `metadata.<name>`."""
    taken = set(CALL_COLUMNS)
    names = list(CALL_COLUMNS)
    for key in keys:
        name = key
        while name in taken:
            name = f"metadata.{name}"
        taken.add(name)
        names.append(spreadsheet_text(name))
    return names


async def calls_csv(
    sessions: async_sessionmaker[AsyncSession], run_id: str, keys: Sequence[str]
) -> AsyncIterator[str]:
    """The CSV text, a page of leads at a time, ordered by lead then attempt. Each page is read in
    a session of its own, so a slow download holds no database connection between pages."""
    yield _csv_text([header(keys)])
    after = 0
    while True:
        async with sessions() as session:
            leads = (
                await session.execute(
                    select(Lead.id, Lead.phone, Lead.name, Lead.status, Lead.extra)
                    .where(Lead.run_id == run_id, Lead.id > after)
                    .order_by(Lead.id)
                    .limit(LEADS_PER_PAGE)
                )
            ).all()
            if not leads:
                return
            attempts = (
                await session.execute(
                    select(
                        CallAttempt.lead_id,
                        CallAttempt.attempt,
                        CallAttempt.status,
                        CallAttempt.call_sid,
                        CallAttempt.duration,
                        CallAttempt.answered_by,
                        CallAttempt.error_code,
                        CallAttempt.error_message,
                        CallAttempt.outcome,
                        CallAttempt.bridged_status,
                        CallAttempt.bridged_seconds,
                        CallAttempt.recording_sid,
                        CallAttempt.recording_seconds,
                        CallAttempt.recording_url,
                        CallAttempt.created_at,
                        CallAttempt.updated_at,
                    )
                    # Within the unique (run, lead, attempt) index: the page's leads are a range of ids.
                    .where(
                        CallAttempt.run_id == run_id,
                        CallAttempt.lead_id.between(leads[0].id, leads[-1].id),
                    )
                    .order_by(CallAttempt.lead_id, CallAttempt.attempt)
                )
            ).all()
        by_lead: dict[int, list[Any]] = defaultdict(list)
        for attempt in attempts:
            by_lead[attempt.lead_id].append(attempt)
        yield _csv_text(_page_rows(leads, by_lead, keys))
        after = leads[-1].id


def _page_rows(
    leads: Sequence[Any], attempts: dict[int, list[Any]], keys: Sequence[str]
) -> Iterable[list[str]]:
    for lead in leads:
        extra = lead.extra or {}
        lead_cells = [str(lead.id), lead.phone, spreadsheet_text(lead.name or "")]
        tail = [lead.status, *(_metadata_cell(extra.get(key)) for key in keys)]
        for a in attempts.get(lead.id, ()):
            final = a.status in FINAL_ATTEMPT_STATUSES
            ended = _iso(a.updated_at) if final else ""
            outcome = (a.outcome or OUTCOME_BY_CALL_STATUS.get(a.status, "")) if final else ""
            yield [
                *lead_cells,
                str(a.attempt),
                a.status,
                a.call_sid or "",
                _text(a.duration),
                a.answered_by or "",
                _text(a.error_code),
                spreadsheet_text(a.error_message or ""),
                _iso(a.created_at),
                ended,
                outcome,
                a.bridged_status or "",
                _text(a.bridged_seconds),
                a.recording_sid or "",
                _text(a.recording_seconds),
                a.recording_url or "",
                *tail,
            ]
        if lead.id not in attempts:
            yield [*lead_cells, *([""] * 15), *tail]


def _csv_text(rows: Iterable[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


def _metadata_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return spreadsheet_text(value)
    return str(value)
