"""Bring a database to the newest schema with Alembic."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

_INI = Path(__file__).resolve().parent.parent / "alembic.ini"


def upgrade(database_url: str, revision: str = "head") -> None:
    """Run the migrations up to `revision`; blocking, so call it from a thread inside an event loop."""
    config = Config(str(_INI))
    config.attributes["database_url"] = database_url
    command.upgrade(config, revision)


if __name__ == "__main__":
    from outbound_dialer.settings import get_settings

    upgrade(get_settings().DATABASE_URL)
