"""A business's do-not-call list: numbers it must never dial, checked at dial time. The numbers
are taken by the same rule as a run's leads (`service.leads`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from db.models import Business, DoNotCall
from db.upsert import insert_ignoring_conflict
from service.errors import PhoneListInvalid, PhoneNotListed, RowProblem, UploadUnreadable
from service.lead_files import phone_records
from service.leads import JSON_PHONES, UPLOAD_LINES, phones_in_e164
from service.phones import InvalidPhone, to_e164
from service.schemas import MAX_NUMBERS_PER_REQUEST, DncChange, DncEntry


class DncService:
    """One business's do-not-call list, over the request's session."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, business: Business, phones: list[str]) -> DncChange:
        """Add numbers, each named by its index in problems; none is added if any is bad."""
        numbered = list(enumerate(phones))
        return await self._add(business.id, await asyncio.to_thread(phones_in_e164, numbered, JSON_PHONES))

    async def import_csv(self, business: Business, chunks: AsyncIterable[bytes]) -> DncChange:
        """Add the numbers of a CSV (a `phone` column, or the first column), each named by its line."""
        numbered: list[tuple[int, str]] = []
        async for line, raw in phone_records(chunks):
            if len(numbered) >= MAX_NUMBERS_PER_REQUEST:
                raise UploadUnreadable(
                    f"more than {MAX_NUMBERS_PER_REQUEST} numbers: split the list into several uploads"
                )
            numbered.append((line, raw))
        if not numbered:
            raise UploadUnreadable("the CSV has no numbers")
        # Seconds of CPU for a long list: in a thread, so the API goes on serving meanwhile.
        return await self._add(business.id, await asyncio.to_thread(phones_in_e164, numbered, UPLOAD_LINES))

    async def remove(self, business: Business, raw: str) -> None:
        """Take a number off the list; `PhoneNotListed` if it was not on it."""
        try:
            phone = to_e164(raw)
        except InvalidPhone as error:
            problem = RowProblem(
                loc=("path", "phone"), place="", kind="invalid_phone", message=str(error), value=raw
            )
            raise PhoneListInvalid([problem]) from None
        result = await self.session.execute(
            delete(DoNotCall).where(DoNotCall.business_id == business.id, DoNotCall.phone == phone)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            raise PhoneNotListed(phone)

    async def numbers(self, business: Business, limit: int, offset: int = 0) -> list[DncEntry]:
        """The list, in the order numbers were added."""
        phones = await self.session.scalars(
            select(DoNotCall.phone)
            .where(DoNotCall.business_id == business.id)
            .order_by(DoNotCall.id)
            .limit(limit)
            .offset(offset)
        )
        return [DncEntry(phone=p) for p in phones]

    async def _add(self, business_id: str, phones: list[str]) -> DncChange:
        before = await self._count(business_id)
        rows: list[dict[str, Any]] = [{"business_id": business_id, "phone": p} for p in dict.fromkeys(phones)]
        await insert_ignoring_conflict(self.session, DoNotCall, rows, ["business_id", "phone"])
        total = await self._count(business_id)
        return DncChange(added=total - before, total=total)

    async def _count(self, business_id: str) -> int:
        return int(
            await self.session.scalar(select(func.count()).where(DoNotCall.business_id == business_id)) or 0
        )
