"""INSERT .. ON CONFLICT for both supported databases."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase


async def insert_ignoring_conflict(
    session: AsyncSession, model: type[DeclarativeBase], rows: list[dict[str, Any]], keys: list[str]
) -> None:
    """Insert rows, leaving any row whose `keys` already exist untouched."""
    if not rows:
        return
    statement = dialect_insert(session, cast(Table, model.__table__)).on_conflict_do_nothing(
        index_elements=keys
    )
    await (await session.connection()).execute(statement, rows)


def dialect_insert(
    session: AsyncSession, target: type[DeclarativeBase] | Table
) -> postgresql.Insert | sqlite.Insert:
    """An INSERT for the session's database, with its ON CONFLICT clauses."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(target)
    return sqlite.insert(target)
