"""The business's do-not-call list: numbers it must never dial, checked at dial time. The routes
hand each request to the do-not-call service (`service.dnc`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from api.deps import BusinessDep, DncDep
from api.problems import Rejected, problems
from service.schemas import MAX_OFFSET, DncAdd, DncChange, DncEntry

router = APIRouter(prefix="/v1/dnc", tags=["do-not-call"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DncChange)
async def add_numbers(body: DncAdd, business: BusinessDep, dnc: DncDep) -> DncChange:
    """Add numbers; each is normalised to E.164. Leads not yet dialed are suppressed at once."""
    return await dnc.add(business, body.phones)


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
async def import_csv(request: Request, business: BusinessDep, dnc: DncDep) -> DncChange:
    """Add numbers from a CSV body (`Content-Type: text/csv`): a `phone` column, or the first column,
    up to 100,000 numbers. The body is read a chunk at a time; errors name the line they are on, and
    with any error no number is added."""
    return await dnc.import_csv(business, request.stream())


@router.delete("/{phone}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404))
async def remove_number(phone: str, business: BusinessDep, dnc: DncDep) -> None:
    """Take a number off the list."""
    await dnc.remove(business, phone)


@router.get("", response_model=list[DncEntry])
async def list_numbers(
    business: BusinessDep,
    dnc: DncDep,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> list[DncEntry]:
    """The list, in the order numbers were added."""
    return await dnc.numbers(business, limit, offset)
