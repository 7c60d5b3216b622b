"""The system under test, assembled from real parts: an API and workers of our own against the
session's Temporal dev server, PostgreSQL database and carrier simulator."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from temporalio.client import Client

from api.app import create_app
from contracts.statuses import FINAL_RUN_STATUSES
from db.engine import create_engine, create_sessionmaker
from db.migrate import upgrade
from db.models import CallAttempt, Lead
from outbound_dialer.settings import DEV_ADMIN_TOKEN, Settings
from outbound_dialer.temporal_client import with_settings_converter
from support.drive import (
    ALWAYS_OPEN,
    ROOT,
    Business,
    as_its_worker_replays,
    execution_chain,
    new_number,
    overlap_peak,
    serve,
    wait_for,
)
from worker import build_workers


@asynccontextmanager
async def scratch_database(server_url: str, prefix: str) -> AsyncIterator[str]:
    """A new PostgreSQL database on the server `server_url` names, migrated with Alembic to head,
    dropped afterwards; yields its asyncpg URL."""
    base = make_url(server_url)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(base.set(drivername="postgresql").render_as_string(hide_password=False))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = base.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
        try:
            await asyncio.to_thread(upgrade, url)
            yield url
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def save_history(client: Client, workflow_id: str, name: str, first_execution: bool = False) -> None:
    """Keep a workflow's history under tests/histories for the replay tests, when SAVE_HISTORIES is set:
    its newest execution's, or its first's (which ends in continue-as-new, if it did)."""
    if not os.environ.get("SAVE_HISTORIES"):
        return
    if first_execution:
        history = (await execution_chain(client, workflow_id))[0]
    else:
        run_id = (await client.get_workflow_handle(workflow_id).describe()).run_id
        handle = client.get_workflow_handle(workflow_id, run_id=run_id)
        history = as_its_worker_replays(await handle.fetch_history(), run_id)
    (ROOT / "tests" / "histories" / f"{name}.json").write_text(history.to_json())


@dataclass
class Stack:
    """Everything a test drives: the API over HTTP, the simulator's records, the database."""

    settings: Settings
    temporal: Client
    http: httpx.AsyncClient
    sim: httpx.AsyncClient
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    api_port: int
    _worker_stop: Callable[[], Awaitable[None]] | None = None
    _api_stop: Callable[[], Awaitable[None]] | None = None
    _processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @classmethod
    @asynccontextmanager
    async def start(
        cls,
        *,
        temporal: Client,
        database_url: str,
        simulator_url: str,
        api_port: int,
        task_queue: str,
        calls_per_second: float = 200,
        temporal_ui_url: str = "http://127.0.0.1:8233",
        settings: dict[str, Any] | None = None,
    ) -> AsyncIterator[Stack]:
        """A stack on these parts; `settings` overrides the worker's and the API's defaults."""
        # Test receivers listen on this machine; a test that checks the refusal says [].
        overrides = {
            "ENVIRONMENT": "development",
            "EVENT_WEBHOOK_ALLOWED_NETWORKS": ["127.0.0.0/8", "::1/128"],
            # Tests poll a run many times a second; the one that checks the limit sets its own.
            "BUSINESS_REQUESTS_PER_SECOND": 10_000,
            "BUSINESS_REQUEST_BURST": 10_000,
            # Payloads are plain unless a test encrypts them, whatever this machine's `.env` says.
            "PAYLOAD_ENCRYPTION_KEY": None,
            "PAYLOAD_DECRYPTION_KEYS": [],
            **(settings or {}),
        }
        config = Settings(
            **overrides,
            TEMPORAL_UI_URL=temporal_ui_url,
            DATABASE_URL=database_url,
            TEMPORAL_TASK_QUEUE=task_queue,
            TWILIO_API_BASE_URL=simulator_url,
            PUBLIC_BASE_URL=f"http://127.0.0.1:{api_port}",
            TWILIO_CALLS_PER_SECOND=calls_per_second,
            GATE_REAP_SECONDS=2,
            # Longer than the simulator's lists lag (conftest) plus the longest a test queues a call.
            TWILIO_LOOKUP_DELAY_SECONDS=6,
        )
        # The API and the worker read and write payloads as these settings say (encrypted, with a key).
        temporal = with_settings_converter(temporal, config)
        engine = create_engine(database_url)
        async with (
            httpx.AsyncClient(base_url=config.PUBLIC_BASE_URL, timeout=30) as http,
            httpx.AsyncClient(base_url=simulator_url, timeout=30) as sim,
        ):
            stack = cls(config, temporal, http, sim, engine, create_sessionmaker(engine), api_port)
            try:
                await stack.start_api()
                await stack.start_worker()
                yield stack
            finally:
                await stack.stop_worker()
                await stack.stop_api()
                for process in stack._processes:
                    if process.poll() is None:
                        process.kill()
                    process.wait()
                await engine.dispose()

    # The API

    def build_app(self) -> FastAPI:
        """The API application start_api serves."""
        return create_app(self.settings, self.temporal)

    async def start_api(self) -> None:
        """Serve the API on its port (again, after stop_api)."""
        ready = asyncio.Event()
        stopping = asyncio.Event()

        async def run() -> None:
            async with serve(self.build_app(), self.api_port):
                ready.set()
                await stopping.wait()

        task = asyncio.create_task(run())
        await ready.wait()

        async def stop() -> None:
            stopping.set()
            await task

        self._api_stop = stop

    async def stop_api(self) -> None:
        """Take the API down: webhooks to it fail as if it had crashed."""
        if self._api_stop is not None:
            stop, self._api_stop = self._api_stop, None
            await stop()

    # Workers

    async def start_worker(self) -> None:
        """Run the worker in this process."""
        started = asyncio.Event()
        stopping = asyncio.Event()

        async def run() -> None:
            async with build_workers(self.settings, self.temporal) as workers:
                tasks = [asyncio.create_task(w.run()) for w in workers]
                started.set()
                await stopping.wait()
                await asyncio.gather(*(w.shutdown() for w in workers))
                for t in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await t

        task = asyncio.create_task(run())
        await started.wait()

        async def stop() -> None:
            stopping.set()
            await task

        self._worker_stop = stop

    async def stop_worker(self) -> None:
        """Stop the in-process worker, if one runs."""
        if self._worker_stop is not None:
            stop, self._worker_stop = self._worker_stop, None
            await stop()

    def spawn_worker_process(self) -> subprocess.Popen[bytes]:
        """Run `worker.py` as its own process, configured like this stack."""
        settings = self.settings.model_copy(
            update={
                "TEMPORAL_ADDRESS": self.temporal.service_client.config.target_host,
                "TEMPORAL_NAMESPACE": self.temporal.namespace,
                "LOG_LEVEL": "WARNING",
            }
        )
        env = settings.environment()
        process = subprocess.Popen([sys.executable, "worker.py"], cwd=ROOT, env=env)
        self._processes.append(process)
        return process

    @staticmethod
    def kill(process: subprocess.Popen[bytes]) -> None:
        """SIGKILL: no chance to finish anything."""
        process.send_signal(signal.SIGKILL)
        process.wait()

    # API

    async def create_business(self, cap: int = 3) -> Business:
        caller_id = new_number()
        response = await self.http.post(
            "/v1/businesses",
            json={"name": f"Business {caller_id}", "caller_id": caller_id, "max_concurrent_calls": cap},
            headers={"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        return Business(body["id"], caller_id, body["api_key"], cap)

    async def start_run(
        self, business: Business, phones: list[str], options: dict[str, Any] | None = None
    ) -> str:
        # Open around the clock unless a test is about calling windows: tests run at any hour.
        options = {"calling_window": ALWAYS_OPEN} | (options or {})
        response = await self.http.post(
            "/v1/runs",
            json={"name": "test run", "leads": [{"phone": p} for p in phones], "options": options},
            headers=business.headers,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def run(self, business: Business, run_id: str) -> dict[str, Any]:
        response = await self.http.get(f"/v1/runs/{run_id}", headers=business.headers)
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def wait_run_ends(self, business: Business, run_id: str, within: float = 60) -> dict[str, Any]:
        async def ended() -> dict[str, Any] | None:
            run = await self.run(business, run_id)
            return run if run["status"] in FINAL_RUN_STATUSES else None

        return dict(await wait_for(ended, within=within, what=f"run {run_id} to end"))

    async def save_history(self, workflow_id: str, name: str) -> None:
        """Keep a workflow's history for the replay tests, when SAVE_HISTORIES is set."""
        await save_history(self.temporal, workflow_id, name)

    # Simulator

    async def force_outcomes(self, outcomes: dict[str, str]) -> None:
        """Make the simulator end calls to these numbers with these statuses."""
        config = (await self.sim.get("/_sim/config")).json()
        merged = {**config.get("outcomes_by_to", {}), **outcomes}
        response = await self.sim.post("/_sim/config", json={"outcomes_by_to": merged})
        assert response.status_code == 200, response.text

    async def sim_calls(self, caller_id: str) -> list[dict[str, Any]]:
        """Every call the simulator has seen from this caller ID."""
        calls = (await self.sim.get("/_sim/calls")).json()["calls"]
        return [c for c in calls if c["from"] == caller_id]

    async def peak_concurrency(self, caller_ids: list[str]) -> int:
        """The most calls the simulator had in flight at once from these caller IDs."""
        now = time.time()
        intervals = []
        for caller_id in caller_ids:
            for call in await self.sim_calls(caller_id):
                intervals.append((call["created_at"], call["ended_at"] or now))
        return overlap_peak(intervals)

    # Database

    async def attempts(self, run_id: str) -> list[CallAttempt]:
        async with self.sessions() as session:
            return list(
                await session.scalars(
                    select(CallAttempt).where(CallAttempt.run_id == run_id).order_by(CallAttempt.id)
                )
            )

    async def leads(self, run_id: str) -> list[Lead]:
        async with self.sessions() as session:
            return list(await session.scalars(select(Lead).where(Lead.run_id == run_id).order_by(Lead.id)))


@asynccontextmanager
async def signed_in(stack: Stack, business: Business) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A browser signed in to the dashboard, and its forms' token."""
    async with httpx.AsyncClient(base_url=stack.settings.PUBLIC_BASE_URL) as browser:
        login = await browser.get("/ui/login")
        signed = await browser.post(
            "/ui/login", data={"api_key": business.api_key, "csrf": form_token(login.text)}
        )
        assert signed.status_code == 303, signed.text
        yield browser, form_token((await browser.get("/ui/runs")).text)


def form_token(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, page
    return match.group(1)
