"""Engine and session factory for PostgreSQL (asyncpg) and SQLite (aiosqlite) alike."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

# How long to wait for PostgreSQL to accept a connection (asyncpg waits 60 s by default): a database
# that has gone silent fails a request or an activity try in this time instead of holding it.
CONNECT_TIMEOUT_SECONDS = 10


def create_engine(url: str, *, ping_on_checkout: bool = True) -> AsyncEngine:
    """An async engine; SQLite gets WAL and a busy timeout so the API and worker can share the file.

    `ping_on_checkout` tests each pooled connection before use (one round trip each time), so a
    connection the database dropped is replaced rather than failing a request. Code that is retried
    anyway, such as activities, can do without: a dropped connection fails one try, and the pool
    then replaces every connection older than the failure.

    Errors name their statement without the values bound to it (`hide_parameters`): a lead's phone
    or name stays out of logs and of the failure messages Temporal keeps in histories."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        engine = create_async_engine(
            url,
            pool_pre_ping=ping_on_checkout,
            connect_args={"timeout": CONNECT_TIMEOUT_SECONDS},
            hide_parameters=True,
        )
        event.listen(engine.sync_engine, "handle_error", _refused_values_hidden)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
    event.listen(engine.sync_engine, "handle_error", _refused_values_hidden)

    @event.listens_for(engine.sync_engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return engine


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit."""
    return async_sessionmaker(engine, expire_on_commit=False)


# A value PostgreSQL refuses (SQLSTATE class 22, data exceptions) is quoted in its message, and
# asyncpg names a value it cannot send; a row that breaks a constraint (class 23) is repeated in the
# error's detail (`Key (phone)=(...)`). Any of them would carry a lead's phone or name into a log
# line or a Temporal failure, whatever `hide_parameters` hides.
# From the first quote to the last: a quoted value may hold quotes and lines of its own.
_QUOTED = re.compile(r'"[\s\S]*"')
_ARGUMENT = re.compile(r"(invalid input for query argument \$\d+): .*", re.DOTALL)
_NOT_SHOWN = "(the values are not shown)"


def _refused_values_hidden(context: ExceptionContext) -> None:
    """Take the values bound to the statement off the error (its text already leaves them out),
    and the refused values out of its text, and out of every exception it came from."""
    if context.sqlalchemy_exception is not None:
        context.sqlalchemy_exception.params = None
    chain: list[BaseException] = []
    error: BaseException | None = context.original_exception
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    states = {str(getattr(e, "sqlstate", "") or "")[:2] for e in chain}
    if not states & {"22", "23"}:
        return
    if context.sqlalchemy_exception is not None:
        chain.append(context.sqlalchemy_exception)
    for error in chain:
        for field in ("detail", "hint", "context", "internal_query"):  # asyncpg's
            if isinstance(getattr(error, field, None), str) and getattr(error, field):
                setattr(error, field, _NOT_SHOWN)
        if "22" in states:
            error.args = tuple(_hidden(a) if isinstance(a, str) else a for a in error.args)
            if isinstance(getattr(error, "message", None), str):
                error.message = _hidden(error.message)  # type: ignore[attr-defined]


def _hidden(text: str) -> str:
    return _QUOTED.sub('"…"', _ARGUMENT.sub(r"\1 (its value is not shown)", text))
