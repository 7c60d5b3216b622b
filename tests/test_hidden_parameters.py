"""A database error names the statement, not the values bound to it: a lead's phone or name never
reaches a log line or a Temporal failure message through an exception's text."""

from __future__ import annotations

import traceback
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from db.engine import create_engine

PHONE = "+14155550123"
NAME = "Ada Lovelace-Secret"


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
async def test_a_database_error_carries_no_bound_values(kind: str, database_url: str, tmp_path: Path) -> None:
    url = database_url if kind == "postgresql" else f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as failed:
                # A table that does not exist: the statement fails with its values bound.
                await connection.execute(
                    text("INSERT INTO no_such_table (phone, name) VALUES (:phone, :name)"),
                    {"phone": PHONE, "name": NAME},
                )
    finally:
        await engine.dispose()
    said = str(failed.value)
    assert "no_such_table" in said
    assert PHONE not in said and NAME not in said, said


@pytest.mark.parametrize(
    "statement",
    [
        # asyncpg refuses the value before sending it, naming it in its message.
        "SELECT CAST(:phone AS integer) WHERE :name IS NOT NULL",
        # PostgreSQL refuses the value, quoting it in its message.
        "SELECT CAST(CAST(:phone AS text) AS integer) WHERE CAST(:name AS text) IS NOT NULL",
        "SELECT CAST(CAST(:phone AS text) AS date) WHERE CAST(:name AS text) IS NOT NULL",
        # A value with a quote of its own in it.
        "SELECT CAST(CAST(:phone AS text) || '\" ' || CAST(:name AS text) AS date)",
        # PostgreSQL's context of a bad JSON value quotes it too.
        "SELECT CAST(CAST(:phone AS text) || CAST(:name AS text) AS jsonb)",
    ],
)
async def test_a_value_the_database_refuses_is_not_repeated_anywhere_in_the_error(
    statement: str, database_url: str
) -> None:
    """The error, every exception it was raised from, and the traceback a log line would print."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            with pytest.raises(DBAPIError) as failed:
                await connection.execute(text(statement), {"phone": PHONE, "name": NAME})
    finally:
        await engine.dispose()
    printed = "".join(traceback.format_exception(failed.value))
    assert "SELECT CAST" in printed
    assert PHONE not in printed and NAME not in printed, printed
    error: BaseException | None = failed.value
    while error is not None:  # and in what a logger may print of each exception's attributes
        assert PHONE not in repr(vars(error)) and NAME not in repr(vars(error)), vars(error)
        error = error.__cause__


async def test_a_constraint_a_value_breaks_is_named_without_the_value(database_url: str) -> None:
    """PostgreSQL's detail of a broken constraint repeats the row (`Key (phone)=(...)`)."""
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            await connection.execute(text("CREATE TEMPORARY TABLE leads_seen (phone text UNIQUE, name text)"))
            insert = text("INSERT INTO leads_seen (phone, name) VALUES (:phone, :name)")
            await connection.execute(insert, {"phone": PHONE, "name": NAME})
            with pytest.raises(DBAPIError) as failed:
                await connection.execute(insert, {"phone": PHONE, "name": NAME})
    finally:
        await engine.dispose()
    printed = "".join(traceback.format_exception(failed.value))
    assert "leads_seen_phone_key" in printed  # which constraint is still said
    assert PHONE not in printed and NAME not in printed, printed
