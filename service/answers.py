"""What a business's answered calls do: its default answer, and the agent numbers an answer may
connect calls to (registered first: the registration is where an operator limits destinations)."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from contracts.messages import DEFAULT_ANSWER
from db.models import AgentNumber as AgentNumberRow
from db.models import Business
from db.upsert import insert_ignoring_conflict
from service.errors import NumberNotRegistered, PhoneListInvalid, PhoneNotListed, RowProblem, VoiceAppUnsigned
from service.phones import InvalidPhone, to_e164
from service.schemas import AgentNumber, AnswerIn
from service.signing import new_signing_secret


def business_answer(business: Business) -> AnswerIn:
    """What the business's answered calls do: its own choice, or the product's greeting."""
    if business.answer:
        return AnswerIn.model_validate(business.answer)
    return AnswerIn(say=DEFAULT_ANSWER.say)


async def check_answer(session: AsyncSession, business: Business, answer: AnswerIn) -> None:
    """`NumberNotRegistered` for an answer that connects to a number not registered by the business;
    `VoiceAppUnsigned` for a run's voice app before the business has a signing secret for it."""
    if answer.kind == "voice_app" and business.answer_secret is None:
        raise VoiceAppUnsigned()
    if answer.kind == "connect" and answer.number is not None:
        registered = await session.scalar(
            select(AgentNumberRow.id).where(
                AgentNumberRow.business_id == business.id, AgentNumberRow.phone == answer.number
            )
        )
        if registered is None:
            raise NumberNotRegistered(answer.number)


async def set_answer(session: AsyncSession, business: Business, answer: AnswerIn) -> str | None:
    """Make the answer the business's default, for runs started from now on. A voice app's first
    answer makes the secret its URLs are signed with, returned (once) here."""
    made = None
    if answer.kind == "voice_app" and business.answer_secret is None:
        made = business.answer_secret = new_signing_secret()
    await check_answer(session, business, answer)
    business.answer = answer.model_dump(mode="json", exclude_none=True)
    await session.flush()
    return made


async def agent_numbers(session: AsyncSession, business: Business) -> list[AgentNumber]:
    rows = await session.scalars(
        select(AgentNumberRow).where(AgentNumberRow.business_id == business.id).order_by(AgentNumberRow.id)
    )
    return [AgentNumber(phone=row.phone, label=row.label) for row in rows]


async def register_agent_number(
    session: AsyncSession, business: Business, raw: str, label: str | None
) -> AgentNumber:
    """Register a number answers may connect calls to (again: its label changes)."""
    phone = _e164(raw)
    await insert_ignoring_conflict(
        session,
        AgentNumberRow,
        [{"business_id": business.id, "phone": phone, "label": label}],
        ["business_id", "phone"],
    )
    row = await session.scalar(
        select(AgentNumberRow).where(AgentNumberRow.business_id == business.id, AgentNumberRow.phone == phone)
    )
    assert row is not None
    row.label = label
    await session.flush()
    return AgentNumber(phone=phone, label=label)


async def remove_agent_number(session: AsyncSession, business: Business, raw: str) -> None:
    """Take a number off the agent numbers; runs that connect to it fail their calls' leads from now
    on, and the business's answer, if it connects there, must be changed before its next run."""
    phone = _e164(raw)
    result = await session.execute(
        delete(AgentNumberRow).where(AgentNumberRow.business_id == business.id, AgentNumberRow.phone == phone)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise PhoneNotListed(phone, "agent numbers")


def _e164(raw: str) -> str:
    try:
        return to_e164(raw)
    except InvalidPhone as error:
        problem = RowProblem(
            loc=("path", "phone"), place="", kind="invalid_phone", message=str(error), value=raw
        )
        raise PhoneListInvalid([problem]) from None
