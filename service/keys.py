"""A business's API keys and its dashboard sessions: a key works until it expires or is revoked;
a rotation gives the keys before it a short overlap; a dashboard session is a random token whose
hash the server keeps, so signing out, or the key's end, ends it everywhere."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from db.models import ApiKey, Business, DashboardSession, utcnow

# How long a dashboard session lasts, at most.
SESSION_LIFETIME = timedelta(hours=12)
KEY_PREFIX = "obk_"


def new_api_key() -> str:
    """A fresh business API key (256 bits of randomness)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """The stored form of a key (or a session token). They are random, so a fast hash is enough."""
    return hashlib.sha256(key.encode()).hexdigest()


def same_secret(given: str, expected: str) -> bool:
    """Compare secrets in constant time."""
    return hmac.compare_digest(given.encode(), expected.encode())


@dataclass(frozen=True)
class Signed:
    """Who a request is: the business, and the key (row id) it came with."""

    business: Business
    key_id: int


def _working(now: datetime) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return (
        ApiKey.revoked_at.is_(None),
        or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
    )


async def business_for_key(session: AsyncSession, raw: str) -> Signed | None:
    """The business whose working key this is, if any."""
    row = (
        await session.execute(
            select(Business, ApiKey.id)
            .join(ApiKey, ApiKey.business_id == Business.id)
            .where(ApiKey.key_hash == hash_api_key(raw), *_working(utcnow()))
        )
    ).first()
    return Signed(row[0], row[1]) if row is not None else None


async def issue_key(
    session: AsyncSession, business: Business, overlap: timedelta | None
) -> tuple[str, datetime | None]:
    """A new key for the business, shown once. The keys before it keep working for `overlap`
    (None: they are revoked at once, with every dashboard session). Returns the key and when the
    keys before it stop."""
    now = utcnow()
    if overlap is None:
        await revoke_keys(session, business.id)
        ends: datetime | None = now
    else:
        ends = now + overlap
        await session.execute(
            update(ApiKey)
            .where(ApiKey.business_id == business.id, *_working(now))
            .where(or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > ends))
            .values(expires_at=ends)
        )
    raw = new_api_key()
    session.add(ApiKey(business_id=business.id, key_hash=hash_api_key(raw), created_at=now))
    business.api_key_hash = hash_api_key(raw)
    await session.flush()
    return raw, ends


async def revoke_keys(session: AsyncSession, business_id: str) -> int:
    """Revoke every working key of the business and end its dashboard sessions; how many keys."""
    now = utcnow()
    result = await session.execute(
        update(ApiKey).where(ApiKey.business_id == business_id, *_working(now)).values(revoked_at=now)
    )
    await session.execute(
        update(DashboardSession)
        .where(DashboardSession.business_id == business_id, DashboardSession.ended_at.is_(None))
        .values(ended_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def open_session(session: AsyncSession, signed: Signed) -> str:
    """A new dashboard session for the business; the token goes in the browser's cookie."""
    token = secrets.token_urlsafe(32)
    now = utcnow()
    session.add(
        DashboardSession(
            id=hash_api_key(token),
            business_id=signed.business.id,
            api_key_id=signed.key_id,
            created_at=now,
            expires_at=now + SESSION_LIFETIME,
        )
    )
    await session.flush()
    return token


async def business_for_session(session: AsyncSession, token: str) -> Business | None:
    """The business of a live dashboard session (not ended, not expired, its key still working)."""
    now = utcnow()
    return await session.scalar(
        select(Business)
        .join(DashboardSession, DashboardSession.business_id == Business.id)
        .join(ApiKey, ApiKey.id == DashboardSession.api_key_id)
        .where(
            DashboardSession.id == hash_api_key(token),
            DashboardSession.ended_at.is_(None),
            DashboardSession.expires_at > now,
            *_working(now),
        )
    )


async def close_session(session: AsyncSession, token: str) -> None:
    """End a dashboard session (sign-out)."""
    await session.execute(
        update(DashboardSession)
        .where(DashboardSession.id == hash_api_key(token), DashboardSession.ended_at.is_(None))
        .values(ended_at=utcnow())
    )
