"""Line leases: the business's line cap, kept where no workflow's state can lose it.

A lease is one of a business's slots (0 .. cap-1) held by one call attempt, keyed by (run, lead,
attempt). It is claimed, and committed, before the create-call request is sent, and released with
the attempt's terminal outcome: so at every instant the calls a business has at the carrier are
no more than its leases, and its leases are no more than its cap."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, bindparam, delete, exists, func, literal, select
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.statuses import FINAL_ATTEMPT_STATUSES
from db.models import Business, CallAttempt, LineLease, utcnow
from db.upsert import dialect_insert

_LEASES = cast(Table, LineLease.__table__)
_BUSINESSES = cast(Table, Business.__table__)
_ATTEMPTS = cast(Table, CallAttempt.__table__)


@dataclass(frozen=True)
class AttemptKey:
    """A call attempt: the lease's holder."""

    run_id: str
    lead_id: int
    attempt: int


_RELEASE = delete(_LEASES).where(
    _LEASES.c.run_id == bindparam("l_run"),
    _LEASES.c.lead_id == bindparam("l_lead"),
    _LEASES.c.attempt == bindparam("l_attempt"),
)
_HELD_BY = select(_LEASES.c.slot, _LEASES.c.claimed_at).where(
    _LEASES.c.run_id == bindparam("l_run"),
    _LEASES.c.lead_id == bindparam("l_lead"),
    _LEASES.c.attempt == bindparam("l_attempt"),
)
_FULL = select(
    select(func.count()).where(_LEASES.c.business_id == bindparam("l_business")).scalar_subquery()
    >= select(_BUSINESSES.c.max_concurrent_calls)
    .where(_BUSINESSES.c.id == bindparam("l_business"))
    .scalar_subquery()
)
_CLAIMS: dict[str, Any] = {}


def _claim_statement(dialect: str) -> Any:
    """INSERT the lease on the lowest free slot below the business's cap, or nothing if every slot
    is taken or the attempt already holds one (ON CONFLICT DO NOTHING on either key); RETURNING the
    slot taken. One statement, for both databases (the slots come from a recursive CTE)."""
    if dialect not in _CLAIMS:
        cap = (
            select(_BUSINESSES.c.max_concurrent_calls)
            .where(_BUSINESSES.c.id == bindparam("l_business"))
            .scalar_subquery()
        )
        slots = select(literal(0).label("slot")).cte("slots", recursive=True)
        slots = slots.union_all(select(slots.c.slot + 1).where(slots.c.slot + 1 < cap))
        taken = select(_LEASES.c.slot).where(_LEASES.c.business_id == bindparam("l_business"))
        free = (
            select(
                bindparam("l_business"),
                slots.c.slot,
                bindparam("l_run"),
                bindparam("l_lead"),
                bindparam("l_attempt"),
                bindparam("l_now", type_=_LEASES.c.claimed_at.type),
            )
            .where(slots.c.slot.not_in(taken), slots.c.slot < cap)
            .order_by(slots.c.slot)
            .limit(1)
        )
        _CLAIMS[dialect] = (
            dialect_insert(dialect, _LEASES)
            .from_select(["business_id", "slot", "run_id", "lead_id", "attempt", "claimed_at"], free)
            .on_conflict_do_nothing()
            .returning(_LEASES.c.slot)
        )
    return _CLAIMS[dialect]


def _params(key: AttemptKey) -> dict[str, Any]:
    return {"l_run": key.run_id, "l_lead": key.lead_id, "l_attempt": key.attempt}


@dataclass(frozen=True)
class Claimed:
    """The line an attempt holds, and whether an earlier try of the same dial had claimed it (and
    so may have sent its create)."""

    slot: int
    held_before: bool
    claimed_at: datetime


async def claim_line(connection: AsyncConnection, business_id: str, key: AttemptKey) -> Claimed | None:
    """The slot this attempt holds: the one it already had (an earlier try of the same dial), or a
    free one claimed now; None when every line of the business is in use."""
    statement = _claim_statement(connection.dialect.name)
    now = utcnow()
    params = {**_params(key), "l_business": business_id, "l_now": now}
    # A slot another dial took between our read and our insert costs one more try: as many tries
    # as there are slots, stopping once every one is taken.
    cap = await connection.scalar(
        select(_BUSINESSES.c.max_concurrent_calls).where(_BUSINESSES.c.id == business_id)
    )
    for _ in range(max(1, cap or 0) + 1):
        slot = (await connection.execute(statement, params)).scalar()
        if slot is not None:
            return Claimed(int(slot), held_before=False, claimed_at=now)
        held = (await connection.execute(_HELD_BY, _params(key))).first()
        if held is not None:
            return Claimed(int(held.slot), held_before=True, claimed_at=held.claimed_at)
        if (await connection.execute(_FULL, params)).scalar():
            return None
    return None


# A lease whose attempt's final word is written holds no call: a late try of that attempt finds the
# attempt's row (with its call's SID) and adopts the call rather than dialing again. Until then the
# lease stays, so such a try cannot find neither.
_OF_ENDED_ATTEMPT = exists().where(
    _ATTEMPTS.c.run_id == _LEASES.c.run_id,
    _ATTEMPTS.c.lead_id == _LEASES.c.lead_id,
    _ATTEMPTS.c.attempt == _LEASES.c.attempt,
    _ATTEMPTS.c.status.in_(FINAL_ATTEMPT_STATUSES),
)
_RELEASE_ENDED = _RELEASE.where(_OF_ENDED_ATTEMPT)
_RELEASE_ENDED_OF_BUSINESS = delete(_LEASES).where(
    _LEASES.c.business_id == bindparam("l_business"), _OF_ENDED_ATTEMPT
)


async def release_lines_of_ended_attempts(
    connection: AsyncConnection, *, keys: Iterable[AttemptKey] = (), business_id: str | None = None
) -> int:
    """Give back the lines of attempts whose final word is written: of these attempts (a run's
    dial gives back those the run freed), or of all the business's (the reaper, for a late try of
    an attempt that ended meanwhile, or a reset run's earlier execution). Returns how many."""
    released = 0
    # One statement per attempt: the final statuses are an IN list, which an executemany cannot
    # carry; a dial gives back one attempt's line, so this is one round trip there.
    for key in keys:
        released += _count(await connection.execute(_RELEASE_ENDED, _params(key)))
    if business_id is not None:
        released += _count(await connection.execute(_RELEASE_ENDED_OF_BUSINESS, {"l_business": business_id}))
    return released


def _count(result: Any) -> int:
    count = getattr(result, "rowcount", 0)
    return count if isinstance(count, int) and count > 0 else 0


async def release_lines(connection: AsyncConnection, keys: Iterable[AttemptKey]) -> None:
    """Give back the lines of these attempts (those that hold one): their calls have ended, or
    were never placed."""
    rows = [_params(key) for key in keys]
    if rows:
        await connection.execute(_RELEASE, rows)


@dataclass(frozen=True)
class HeldLine:
    """A lease as the reaper sees it."""

    key: AttemptKey
    claimed_at: datetime


async def lines_held_by_run(connection: AsyncConnection, run_id: str) -> list[HeldLine]:
    """The leases a run's attempts hold."""
    rows = await connection.execute(
        select(_LEASES.c.run_id, _LEASES.c.lead_id, _LEASES.c.attempt, _LEASES.c.claimed_at)
        .where(_LEASES.c.run_id == run_id)
        .order_by(_LEASES.c.slot)
    )
    return [HeldLine(AttemptKey(r.run_id, r.lead_id, r.attempt), r.claimed_at) for r in rows]


async def runs_holding_lines(connection: AsyncConnection, business_id: str) -> dict[str, int]:
    """How many lines each run of the business holds."""
    rows = await connection.execute(
        select(_LEASES.c.run_id, func.count())
        .where(_LEASES.c.business_id == business_id)
        .group_by(_LEASES.c.run_id)
    )
    return {run_id: int(count) for run_id, count in rows}
