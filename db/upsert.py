"""INSERT .. ON CONFLICT for both supported databases."""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase


async def insert_ignoring_conflict(
    session: AsyncSession, model: type[DeclarativeBase], rows: list[dict[str, Any]], keys: list[str]
) -> None:
    """Insert rows, leaving any row whose `keys` already exist untouched."""
    if not rows:
        return
    await session.execute(
        dialect_insert(session, model).values(rows).on_conflict_do_nothing(index_elements=keys)
    )


def dialect_insert(session: AsyncSession, model: type[DeclarativeBase]) -> postgresql.Insert | sqlite.Insert:
    """An INSERT for the session's database, with its ON CONFLICT clauses."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)
