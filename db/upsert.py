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
    table = cast(Table, model.__table__)
    statement = dialect_insert(session.get_bind().dialect.name, table).on_conflict_do_nothing(
        index_elements=keys
    )
    await (await session.connection()).execute(statement, rows)


def dialect_insert(dialect: str, table: Table) -> postgresql.Insert | sqlite.Insert:
    """An INSERT for this kind of database (a dialect name), with its ON CONFLICT clauses."""
    return postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
