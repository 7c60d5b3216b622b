"""Lists streamed as CSV or JSON lines (a run's leads, a do-not-call list): read a chunk at a time,
never the whole body at once.

Each record comes out with the line it starts on (1 is the first line of the body, the CSV header
included), so an error can name the line a user sees in their editor or spreadsheet. A line ends at
a line feed, a carriage return and line feed, or a lone carriage return, as the csv module reads
lines. A lead's fields other than phone, name and timezone are kept as its metadata.
"""

from __future__ import annotations

import codecs
import csv
import json
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from typing import Any

from service.errors import UploadUnreadable
from service.schemas import check_metadata_keys

CSV_TYPES = ("text/csv",)
JSON_LINES_TYPES = ("application/x-ndjson", "application/jsonl", "application/json-lines")
MAX_RECORD_CHARS = 64 * 1024
LEAD_COLUMNS = ("phone", "name", "timezone")
_LINE_END = re.compile(r"\r\n|\r|\n")
_HAS_LINE_END = re.compile(r"[\r\n]")


@dataclass(frozen=True)
class Record:
    line: int
    fields: dict[str, Any] | None
    """The lead's fields as `LeadIn` reads them (its other fields under `metadata`), or None when
    the record itself is unreadable (see `problem`)."""
    problem: str | None = None


async def _lines(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[int, str]]:
    """The body's lines (without their ends), numbered from 1, decoded as UTF-8 (a BOM is skipped).
    Line ends are looked for in each new piece only, and an unfinished line is kept as its pieces: a
    body sent a byte at a time costs what it costs in one piece."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    parts: list[str] = []
    size = 0
    number = 0
    offset = 0
    try:
        async for chunk in chunks:
            new = decoder.decode(chunk)
            offset += len(chunk)
            # A carriage return at the end may be the first half of a CRLF: it waits for what follows.
            if not _HAS_LINE_END.search(new) and not (parts and parts[-1].endswith("\r")):
                if new:
                    parts.append(new)
                    size += len(new)
            else:
                complete, rest = _split_lines("".join(parts) + new, keep_last_cr=True)
                for line in complete:
                    number += 1
                    yield number, line
                parts, size = ([rest], len(rest)) if rest else ([], 0)
            if size > MAX_RECORD_CHARS:
                raise UploadUnreadable(f"line {number + 1} is longer than {MAX_RECORD_CHARS} characters")
        parts.append(decoder.decode(b"", final=True))
    except UnicodeDecodeError as error:
        raise UploadUnreadable(
            f"the body is not UTF-8 text (bad byte near offset {offset + error.start})"
        ) from None
    complete, pending = _split_lines("".join(parts), keep_last_cr=False)
    for line in complete:
        number += 1
        yield number, line
    if pending:
        yield number + 1, pending


def _split_lines(text: str, keep_last_cr: bool) -> tuple[list[str], str]:
    """The complete lines of `text` and what follows the last line end."""
    *complete, rest = _LINE_END.split(text)
    if keep_last_cr and complete and text.endswith("\r"):
        rest = complete.pop() + "\r"
    return complete, rest


async def _csv_rows(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[int, list[str] | None, str | None]]:
    """The CSV's non-blank rows: the line each starts on, and its cells, or why it is not CSV. A
    quoted field may span lines."""
    text, first_line = "", 0
    async for number, line in _lines(chunks):
        if not text:
            first_line = number
        text = f"{text}\n{line}" if text else line
        if text.count('"') % 2:  # inside a quoted field: the record goes on on the next line
            if len(text) > MAX_RECORD_CHARS:
                raise UploadUnreadable(f"line {first_line}: a quoted field is never closed")
            continue
        record, text = text, ""
        if not record.strip():
            continue
        try:
            yield first_line, next(csv.reader([record], strict=True)), None
        except csv.Error as error:
            yield first_line, None, f"not valid CSV ({error})"
    if text:
        raise UploadUnreadable(f"line {first_line}: a quoted field is never closed")


async def csv_records(chunks: AsyncIterable[bytes]) -> AsyncIterator[Record]:
    """Leads from CSV with a header row naming a `phone` column (`name` and `timezone` are read too;
    every other named column is the lead's metadata, empty cells left out)."""
    columns: list[str] | None = None
    async for line, cells, problem in _csv_rows(chunks):
        if cells is None:
            if columns is None:
                raise UploadUnreadable(f"line {line}: the header is {problem}")
            yield Record(line, None, problem)
            continue
        if columns is None:
            columns = _header(line, cells)
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
        yield Record(line, fields)
    if columns is None:
        raise UploadUnreadable(
            "the CSV is empty: it needs a header row with a 'phone' column and a lead per row"
        )


async def phone_records(chunks: AsyncIterable[bytes]) -> AsyncIterator[tuple[int, str]]:
    """Numbers from CSV, each with its line: the `phone` column if the first row names one (any
    case), else the first column of every row. A row too short to have the column has no number."""
    column: int | None = None
    async for line, cells, problem in _csv_rows(chunks):
        if cells is None:
            raise UploadUnreadable(f"line {line}: {problem}")
        if column is None:
            header = [cell.strip().lower() for cell in cells]
            column = header.index("phone") if "phone" in header else 0
            if "phone" in header:
                continue
        yield line, cells[column] if column < len(cells) else ""


def _header(line: int, cells: list[str]) -> list[str]:
    """The CSV's column names: phone, name and timezone in any case, the others as written; an
    unnamed column is read as nothing."""
    columns = [cell.strip() for cell in cells]
    columns = [column.lower() if column.lower() in LEAD_COLUMNS else column for column in columns]
    if "phone" not in columns:
        raise UploadUnreadable(f"line {line}: the header row has no 'phone' column (it has {columns})")
    named = [column for column in columns if column]
    twice = sorted({column for column in named if named.count(column) > 1})
    if twice:
        raise UploadUnreadable(f"line {line}: the header row names {twice} more than once")
    try:
        check_metadata_keys(column for column in named if column not in LEAD_COLUMNS)
    except ValueError as error:
        raise UploadUnreadable(f"line {line}: {error}") from None
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


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


async def json_lines_records(chunks: AsyncIterable[bytes]) -> AsyncIterator[Record]:
    """Leads from JSON lines: one object such as {"phone": "+14155550100", "name": "Ada"} per line;
    other keys, or a `metadata` object, are the lead's metadata."""
    async for number, line in _lines(chunks):
        if not line.strip():
            continue
        try:
            value = json.loads(line, parse_constant=_no_constant)
        except json.JSONDecodeError as error:
            yield Record(number, None, f"not valid JSON ({error.msg} at column {error.colno})")
            continue
        except ValueError as error:
            yield Record(number, None, str(error))
            continue
        except RecursionError:
            yield Record(number, None, "nested too deeply to be a lead")
            continue
        if not isinstance(value, dict):
            yield Record(number, None, f"expected a JSON object with a 'phone', got {type(value).__name__}")
            continue
        lead = _json_lead(value)
        if isinstance(lead, str):
            yield Record(number, None, lead)
            continue
        yield Record(number, lead)
