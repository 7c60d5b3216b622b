"""A business's API keys and its dashboard sessions: a key works until it expires or is revoked;
a rotation gives the keys before it a short overlap; a dashboard session is a random token whose
hash the server keeps, so signing out, or the key's end, ends it everywhere."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from db.models import ApiKey, Business, DashboardSession, utcnow
from service.errors import NotNewestKey, TooManySessions

# How long a dashboard session lasts, at most.
SESSION_LIFETIME = timedelta(hours=12)
KEY_PREFIX = "obk_"
# The most dashboard sessions a business has at once: a new one ends the oldest past it.
MAX_LIVE_SESSIONS = 20
# The most keys of a business that work at once (the newest and those in an overlap): a rotation
# ends the oldest past it.
MAX_WORKING_KEYS = 5
# Keys that stopped working, kept (the newest) so an operator can see when they stopped.
KEPT_ENDED_KEYS = 100


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
    # The business's newest key (no end set by a rotation): only it may make a new key.
    newest: bool = True


def _working(now: datetime) -> tuple[ColumnElement[bool], ColumnElement[bool]]:
    return (
        ApiKey.revoked_at.is_(None),
        or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now),
    )


def _still_working(now: datetime) -> ColumnElement[bool]:
    return and_(*_working(now))


async def business_for_key(session: AsyncSession, raw: str) -> Signed | None:
    """The business whose working key this is, if any."""
    row = (
        await session.execute(
            select(Business, ApiKey.id, ApiKey.expires_at)
            .join(ApiKey, ApiKey.business_id == Business.id)
            .where(ApiKey.key_hash == hash_api_key(raw), *_working(utcnow()))
        )
    ).first()
    return Signed(row[0], row[1], newest=row[2] is None) if row is not None else None


async def issue_key(
    session: AsyncSession, signed: Signed, overlap: timedelta | None
) -> tuple[str, datetime | None]:
    """A new key for the business, shown once, asked for with the key `signed` (key id 0: by the
    operator). The keys before it keep working for `overlap` (None: they are revoked at once, with
    every dashboard session). Returns the key and when the keys before it stop. `NotNewestKey`
    when the asking key is not the business's newest."""
    business = signed.business
    await _lock(session, business.id)
    if signed.key_id and not await still_newest(session, signed.key_id):
        raise NotNewestKey()
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
    await _prune_keys(session, business.id, now)
    return raw, ends


async def _prune_keys(session: AsyncSession, business_id: str, now: datetime) -> None:
    """Keep a business's keys bounded however often it rotates: at most MAX_WORKING_KEYS work (the
    oldest past them are revoked), and of those that stopped, the newest KEPT_ENDED_KEYS are kept
    (with their sessions, which ended with them, removed first)."""
    of_business = ApiKey.business_id == business_id
    surplus = select(ApiKey.id).where(of_business, *_working(now)).order_by(ApiKey.id.desc())
    await session.execute(
        update(ApiKey)
        .where(ApiKey.id.in_(surplus.offset(MAX_WORKING_KEYS).scalar_subquery()))
        .values(revoked_at=now)
    )
    await _prune_sessions(session, business_id, now)
    ended = select(ApiKey.id).where(of_business, ~_still_working(now)).order_by(ApiKey.id.desc())
    await session.execute(
        delete(ApiKey).where(ApiKey.id.in_(ended.offset(KEPT_ENDED_KEYS).scalar_subquery()))
    )


async def revoke_keys(session: AsyncSession, business_id: str) -> int:
    """Revoke every working key of the business and end its dashboard sessions; how many keys."""
    await _lock(session, business_id)
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


async def _lock(session: AsyncSession, business_id: str) -> None:
    """Take the business's row for this transaction: key changes of one business happen one at a
    time, so a rotation cannot slip a key past an operator's replace-all."""
    # FOR NO KEY UPDATE: the business's runs, events and leases may still be written meanwhile.
    await session.execute(
        select(Business.id).where(Business.id == business_id).with_for_update(key_share=True)
    )


async def still_newest(session: AsyncSession, key_id: int) -> bool:
    """Whether a key is still the business's newest working key (read under the business's lock)."""
    now = utcnow()
    found = await session.scalar(
        select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.expires_at.is_(None), *_working(now))
    )
    return found is not None


async def open_session(session: AsyncSession, signed: Signed) -> str:
    """A new dashboard session for the business; the token goes in the browser's cookie. Sessions
    that ended are removed; past MAX_LIVE_SESSIONS the oldest end, but only those opened with this
    key or an older one, so a leaked key in its overlap cannot sign the owner out of sessions of a
    newer key. `TooManySessions` when there are none such to end."""
    token = secrets.token_urlsafe(32)
    await _lock(session, signed.business.id)  # a rotation pruning keys waits, and so do other sign-ins
    now = utcnow()
    await _prune_sessions(session, signed.business.id, now)
    of_business = DashboardSession.business_id == signed.business.id
    live = int(await session.scalar(select(func.count()).where(of_business)) or 0)
    if live >= MAX_LIVE_SESSIONS:
        endable = (
            select(DashboardSession.id)
            .where(of_business, DashboardSession.api_key_id <= signed.key_id)
            # The oldest key's sessions first: a leaked key cannot keep its own while the owner's
            # team, signing in with a newer key, end each other's.
            .order_by(DashboardSession.api_key_id, DashboardSession.created_at, DashboardSession.id)
            .limit(live - MAX_LIVE_SESSIONS + 1)
        )
        ended = await session.execute(
            delete(DashboardSession).where(DashboardSession.id.in_(endable.scalar_subquery()))
        )
        if int(getattr(ended, "rowcount", 0) or 0) < live - MAX_LIVE_SESSIONS + 1:
            raise TooManySessions(MAX_LIVE_SESSIONS)
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


async def _prune_sessions(session: AsyncSession, business_id: str, now: datetime) -> None:
    """Remove the business's dashboard sessions that ended: signed out, expired, or opened with a
    key that no longer works."""
    dead_keys = select(ApiKey.id).where(ApiKey.business_id == business_id, ~_still_working(now))
    await session.execute(
        delete(DashboardSession).where(
            DashboardSession.business_id == business_id,
            or_(
                DashboardSession.ended_at.is_not(None),
                DashboardSession.expires_at <= now,
                DashboardSession.api_key_id.in_(dead_keys.scalar_subquery()),
            ),
        )
    )


async def close_session(session: AsyncSession, token: str) -> None:
    """End a dashboard session (sign-out)."""
    await session.execute(
        update(DashboardSession)
        .where(DashboardSession.id == hash_api_key(token), DashboardSession.ended_at.is_(None))
        .values(ended_at=utcnow())
    )
