"""The business's do-not-call list: numbers it must never dial, checked at dial time."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, func, select

from api.deps import BusinessDep, SessionDep
from api.phones import InvalidPhone, to_e164
from api.schemas import MAX_OFFSET, Rejected, problems
from db.models import DoNotCall
from db.upsert import insert_ignoring_conflict

router = APIRouter(prefix="/v1/dnc", tags=["do-not-call"])


class DncAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phones: list[str] = Field(min_length=1, max_length=100_000)


class DncChange(BaseModel):
    added: int = Field(description="Numbers new to the list (ones already on it are not counted).")
    total: int


class DncEntry(BaseModel):
    phone: str


def _normalised(raw: list[str], where: str) -> list[str]:
    phones, errors = [], []
    for row, value in enumerate(raw):
        try:
            phones.append(to_e164(value))
        except InvalidPhone as error:
            errors.append(
                {
                    "loc": [where, row],
                    "type": "invalid_phone",
                    "msg": f"{where} {row}: {error}",
                    "input": value,
                }
            )
    if errors:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=errors)
    return phones


async def _add(session: SessionDep, business_id: str, phones: list[str]) -> DncChange:
    before = await _count(session, business_id)
    rows: list[dict[str, Any]] = [{"business_id": business_id, "phone": p} for p in dict.fromkeys(phones)]
    await insert_ignoring_conflict(session, DoNotCall, rows, ["business_id", "phone"])
    total = await _count(session, business_id)
    return DncChange(added=total - before, total=total)


async def _count(session: SessionDep, business_id: str) -> int:
    return int(await session.scalar(select(func.count()).where(DoNotCall.business_id == business_id)) or 0)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DncChange)
async def add_numbers(body: DncAdd, business: BusinessDep, session: SessionDep) -> DncChange:
    """Add numbers; each is normalised to E.164. Leads not yet dialed are suppressed at once."""
    return await _add(session, business.id, _normalised(body.phones, "phones"))


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    response_model=DncChange,
    responses={422: {"model": Rejected, "description": "The CSV cannot be read, or a number is bad."}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/csv": {"schema": {"type": "string"}, "example": "phone\n+14155550100\n+14155550101\n"}
            },
        }
    },
)
async def import_csv(request: Request, business: BusinessDep, session: SessionDep) -> DncChange:
    """Add numbers from a CSV body (`Content-Type: text/csv`): a `phone` column, or the first column.
    The body may be as large as a lead list (`MAX_UPLOAD_BYTES`)."""
    body = await request.body()
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the CSV is not UTF-8 text") from None
    # Lines split as the csv module splits them: a lone carriage return ends a line too.
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        rows = [row for row in reader if any(cell.strip() for cell in row)]
    except csv.Error as error:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"line {reader.line_num}: not valid CSV ({error})"
        ) from None
    if not rows:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the CSV has no rows")
    header = [cell.strip().lower() for cell in rows[0]]
    column = header.index("phone") if "phone" in header else 0
    data = rows[1:] if "phone" in header else rows
    phones = [row[column] if column < len(row) else "" for row in data]  # a short row has no number
    return await _add(session, business.id, _normalised(phones, "row"))


@router.delete("/{phone}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404))
async def remove_number(phone: str, business: BusinessDep, session: SessionDep) -> None:
    """Take a number off the list."""
    number = _normalised([phone], "phone")[0]
    result = await session.execute(
        delete(DoNotCall).where(DoNotCall.business_id == business.id, DoNotCall.phone == number)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{number} is not on the do-not-call list")


@router.get("", response_model=list[DncEntry])
async def list_numbers(
    business: BusinessDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[DncEntry]:
    """The list, in the order numbers were added."""
    phones = await session.scalars(
        select(DoNotCall.phone)
        .where(DoNotCall.business_id == business.id)
        .order_by(DoNotCall.id)
        .limit(limit)
        .offset(offset)
    )
    return [DncEntry(phone=p) for p in phones]
