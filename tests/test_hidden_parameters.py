"""A database error names the statement, not the values bound to it: a lead's phone or name never
reaches a log line or a Temporal failure message through an exception's text."""

from __future__ import annotations

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
