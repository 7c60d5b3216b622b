"""Lead lists streamed as CSV or JSON lines: read a chunk at a time, never the whole body at once.

Each record comes out with the line it starts on (1 is the first line of the body, the CSV header
included), so an error can name the line a user sees in their editor or spreadsheet. A lead's
fields other than phone, name and timezone are kept as its metadata.
"""

from __future__ import annotations

import codecs
import csv
import json
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from api.schemas import check_metadata_keys

CSV_TYPES = ("text/csv",)
JSON_LINES_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines")
MAX_RECORD_CHARS = 64 * 1024
LEAD_COLUMNS = ("phone", "name", "timezone")


class UploadError(ValueError):
    """The body cannot be read as a lead list at all (not a problem of one lead)."""


@dataclass(frozen=True)
class Record:
    line: int
    fields: dict[str, Any] | None
    """The lead's fields as `LeadIn` reads them (its other fields under `metadata`), or None when
    the record itself is unreadable (see `problem`)."""
    problem: str | None = None


async def _lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[int, str]]:
    """The body's lines (without their ends), numbered from 1, decoded as UTF-8 (a BOM is skipped)."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    pending = ""
    number = 0
    offset = 0
    try:
        async for chunk in chunks:
            pending += decoder.decode(chunk)
            offset += len(chunk)
            *complete, pending = pending.split("\n")
            for line in complete:
                number += 1
                yield number, line.removesuffix("\r")
            if len(pending) > MAX_RECORD_CHARS:
                raise UploadError(f"line {number + 1} is longer than {MAX_RECORD_CHARS} characters")
        pending += decoder.decode(b"", final=True)
    except UnicodeDecodeError as error:
        raise UploadError(
            f"the body is not UTF-8 text (bad byte near offset {offset + error.start})"
        ) from None
    if pending:
        yield number + 1, pending.removesuffix("\r")


async def csv_records(chunks: AsyncIterable[bytes]) -> AsyncIterator[Record]:
    """Leads from CSV with a header row naming a `phone` column (`name` and `timezone` are read too;
    every other named column is the lead's metadata, empty cells left out). A quoted field may span
    lines."""
    columns: list[str] | None = None
    text, first_line = "", 0
    async for number, line in _lines(chunks):
        if not text:
            first_line = number
        text = f"{text}\n{line}" if text else line
        if text.count('"') % 2:  # inside a quoted field: the record goes on on the next line
            if len(text) > MAX_RECORD_CHARS:
                raise UploadError(f"line {first_line}: a quoted field is never closed")
            continue
        record, text = text, ""
        if not record.strip():
            continue
        try:
            cells = next(csv.reader([record], strict=True))
        except csv.Error as error:
            if columns is None:
                raise UploadError(f"line {first_line}: the header is not valid CSV ({error})") from None
            yield Record(first_line, None, f"not valid CSV ({error})")
            continue
        if columns is None:
            columns = _header(first_line, cells)
            continue
        fields: dict[str, Any] = {}
        metadata: dict[str, str] = {}
        for column, cell in zip(columns, cells, strict=False):
            value = cell.strip()
            if not column or not value:
                continue
            if column in LEAD_COLUMNS:
                fields[column] = value
            else:
                metadata[column] = value
        if metadata:
            fields["metadata"] = metadata
        yield Record(first_line, fields)
    if text:
        raise UploadError(f"line {first_line}: a quoted field is never closed")
    if columns is None:
        raise UploadError("the CSV is empty: it needs a header row with a 'phone' column and a lead per row")


def _header(line: int, cells: list[str]) -> list[str]:
    """The CSV's column names: phone, name and timezone in any case, the others as written; an
    unnamed column is read as nothing."""
    columns = [cell.strip() for cell in cells]
    columns = [column.lower() if column.lower() in LEAD_COLUMNS else column for column in columns]
    if "phone" not in columns:
        raise UploadError(f"line {line}: the header row has no 'phone' column (it has {columns})")
    named = [column for column in columns if column]
    twice = sorted({column for column in named if named.count(column) > 1})
    if twice:
        raise UploadError(f"line {line}: the header row names {twice} more than once")
    try:
        check_metadata_keys(column for column in named if column not in LEAD_COLUMNS)
    except ValueError as error:
        raise UploadError(f"line {line}: {error}") from None
    return columns


def _json_lead(value: dict[str, Any]) -> dict[str, Any] | str:
    """A JSON-lines lead as `LeadIn` reads it: its keys other than phone, name and timezone, and
    the fields of a `metadata` object, are its metadata. Or what is wrong with it."""
    fields = {key: item for key, item in value.items() if key in LEAD_COLUMNS}
    metadata = {key: item for key, item in value.items() if key not in (*LEAD_COLUMNS, "metadata")}
    nested = value.get("metadata")
    if isinstance(nested, dict):
        both = sorted(metadata.keys() & nested.keys())
        if both:
            return f"{both} given both as keys and inside 'metadata'"
        metadata |= nested
    elif nested is not None:
        metadata["metadata"] = nested
    if metadata:
        fields["metadata"] = metadata
    return fields


async def json_lines_records(chunks: AsyncIterable[bytes]) -> AsyncIterator[Record]:
    """Leads from JSON lines: one object such as {"phone": "+14155550100", "name": "Ada"} per line;
    other keys, or a `metadata` object, are the lead's metadata."""
    async for number, line in _lines(chunks):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            yield Record(number, None, f"not valid JSON ({error.msg} at column {error.colno})")
            continue
        if not isinstance(value, dict):
            yield Record(number, None, f"expected a JSON object with a 'phone', got {type(value).__name__}")
            continue
        lead = _json_lead(value)
        if isinstance(lead, str):
            yield Record(number, None, lead)
            continue
        yield Record(number, lead)
