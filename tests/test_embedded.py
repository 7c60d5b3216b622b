"""The embedded default: the same code on SQLite (aiosqlite), as `make dev` runs it."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from db.migrate import upgrade
from support.drive import new_number
from support.stack import Stack


@pytest.fixture
async def sqlite_stack(
    stack_on: Callable[..., AbstractAsyncContextManager[Stack]], tmp_path: Path
) -> AsyncIterator[Stack]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'outbound.db'}"
    await asyncio.to_thread(upgrade, url)
    async with stack_on(url) as stack:
        yield stack


async def test_a_run_completes_on_sqlite(sqlite_stack: Stack) -> None:
    stack = sqlite_stack
    business = await stack.create_business(cap=3)
    phones = [new_number() for _ in range(8)]
    await stack.force_outcomes(dict.fromkeys(phones, "busy"))
    run_id = await stack.start_run(business, phones)
    run = await stack.wait_run_ends(business, run_id)
    assert run["status"] == "completed"
    assert run["progress"]["outcomes"]["busy"] == 8
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == Counter(phones)
    assert await stack.peak_concurrency([business.caller_id]) <= 3
