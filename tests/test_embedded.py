"""The embedded default: the same code on SQLite (aiosqlite), as `make dev` runs it."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from db.migrate import upgrade
from tests.conftest import free_port
from tests.harness import Stack, new_number


@pytest.fixture
async def sqlite_stack(
    temporal_env: WorkflowEnvironment, simulator: str, tmp_path: Path
) -> AsyncIterator[Stack]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'outbound.db'}"
    await asyncio.to_thread(upgrade, url)
    async with Stack.start(
        temporal=temporal_env.client,
        database_url=url,
        simulator_url=simulator,
        api_port=free_port(),
        task_queue=f"test-{uuid.uuid4().hex[:8]}",
    ) as stack:
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
