"""Chaos run: many runs of several businesses on a misbehaving carrier while processes are killed at
random moments, then every invariant of DESIGN.md section 4 checked from the carrier's own records
and the database.

The carrier simulator loses, repeats and reorders status callbacks, retries the ones that fail,
answers creates with 429 and 500, and sometimes places the call and still answers 500. Meanwhile a
driver, at random moments drawn from `--seed`:

- SIGKILLs the worker process; a new one is started (after up to a second);
- restarts the API process (SIGKILL or SIGTERM, down for up to 1.5 s);
- SIGKILLs the Temporal dev server and starts it again on the same SQLite file and port (down for
  0.5-3 s). The dev server is this run's own, never a shared one;
- does what an operator does in the Temporal Web UI: terminates a business's line gate, or resets
  it to its first workflow task; terminates a run (it must end `failed`, its calls hung up), or
  resets one to its first workflow task (it must still complete, dialing no lead twice); pauses a
  run through the API and resumes it 2-6 s later (no dial may be scheduled in between, across
  continue-as-new);
- cuts PostgreSQL away from the API and the worker for 2-6 s (a TCP proxy refuses and resets every
  connection), while the carrier's callbacks keep coming.

It also starts runs while this goes on, and cancels some runs mid-way (at a random moment, once a
fifth of their leads were called). The dev server suggests continue-as-new after 100 events, so
runs and line gates continue as new under fire too. When the faults stop, every run must end;
then `bench.chaos_checks` checks I1-I7 and the report lists each violation with the run, lead and
calls involved (the list must be empty). Progress is also sampled through the API all along, for
the live half of I7. Last, every workflow history (runs and line gates, each continue-as-new) is
replayed with the workflow code, as a worker that lost its cache would: one that does not replay is
a run stuck for good at its next worker restart, reported under I4 even when no restart hit it.

The API and the worker are processes of their own, started with a process manager's habits
(`bench.restartable`): one that exits by itself is started again, and counted. The database is a
fresh PostgreSQL one; the simulator runs as its own process and is never restarted (its memory is
the record the checks read).

Measures: faults by kind, time from the last fault until every run ended, and for each restart of
the dev server how long it was down and how long until dialing resumed (the first create request
reaching the carrier after it was back), plus the time until the next create after every fault.

    .venv/bin/python -m bench.chaos [--seed 1] [--businesses 4] [--runs-per-business 3]
                                    [--leads-per-run 20] [--seconds 90] [--cap 3] [--quick]

The same seed gives the same businesses, leads, run and cancel schedule, fault schedule and
simulator random sequence; the interleaving with the processes' own timing still varies, so a
failure found with one seed is worth running a few times.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError
from temporalio.worker import Replayer

from bench import operators
from bench.chaos_checks import (
    RUN_ENDINGS,
    AttemptRow,
    CarrierCall,
    Evidence,
    ProgressSample,
    RunEvidence,
    check,
    violation,
)
from bench.chaos_plan import (
    CALL_TIME_LIMIT_SECONDS,
    CALLS_PER_SECOND,
    CARRIER,
    PROCESS_OF,
    PROCESS_UP_WITHIN,
    RUN_OPTIONS,
    SAMPLE_EVERY_SECONDS,
    SHORT,
    WORKFLOW_CLOSES_WITHIN,
    FaultDone,
    Plan,
    PlannedFault,
    PlannedRun,
    Scenario,
    plan,
)
from bench.chaos_report import create_times, recovery
from bench.common import fresh_database, log, machine, run_main, simulator_server
from bench.restartable import (
    Restartable,
    connect_when_up,
    wait_until_polling,
    wait_until_serving,
    wait_until_temporal_serves,
)
from contracts.names import gate_workflow_id, run_workflow_id
from db.engine import create_engine, create_sessionmaker
from db.models import Business, CallAttempt, Lead, Run
from outbound_dialer.settings import DEV_ADMIN_TOKEN, Settings
from support.drive import as_its_worker_replays, execution_chain, wait_for
from support.ports import free_port
from support.tcp_proxy import TcpProxy
from support.temporal_dev import dev_server_argv
from workflows.business_lines import BusinessLinesWorkflow
from workflows.outbound_run import OutboundRunWorkflow

# Talking to the API while it comes and goes


class ApiUnavailable(Exception):
    """The API did not give a usable answer in time."""


@dataclass
class Api:
    """Requests to the API that wait while it is being restarted and try again when a request
    failed in a way that is safe to repeat."""

    http: httpx.AsyncClient
    up: asyncio.Event = field(default_factory=asyncio.Event)
    retries: Counter[str] = field(default_factory=Counter)

    async def send(
        self, method: str, path: str, *, key: str, body: Any = None, within: float = 120.0
    ) -> httpx.Response:
        """Send until the API answers below 500, as a user would. A cancel twice is one cancel. A
        run start that failed with a 5xx stored nothing (the workflow of a run whose row was never
        committed ends by itself); one whose answer was lost with the connection may have started
        the run, and trying again starts a second one, which the checks then cover too: they read
        every run of the chaos run's businesses from the database."""
        deadline = time.monotonic() + within
        while True:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                await self.up.wait()
            try:
                response = await self.http.request(
                    method, path, json=body, headers={"Authorization": f"Bearer {key}"}
                )
                if response.status_code < 500:
                    return response
                reason = f"{method} answered {response.status_code}"
            except httpx.HTTPError as error:
                reason = f"{method} failed: {type(error).__name__}"
            self.retries[reason] += 1
            if time.monotonic() > deadline:
                raise ApiUnavailable(reason)
            await asyncio.sleep(0.2)


# The run


@dataclass
class StartedRun:
    id: str
    business: int
    phones: list[str]
    started_at: float
    cancel_accepted_at: float | None = None
    cancel_refused: bool = False
    cancel_planned: bool = False
    terminated_at: float | None = None
    reset_at: list[float] = field(default_factory=list)
    paused: int = 0


@dataclass
class Chaos:
    """The driver: starts runs, cancels some, injects faults, samples progress, then collects."""

    scenario: Scenario
    plan: Plan
    client: Client
    api: Api
    sim: httpx.AsyncClient
    sessions: async_sessionmaker[AsyncSession]
    settings: Settings
    worker: Restartable
    api_process: Restartable
    temporal: Restartable
    database_proxy: TcpProxy | None = None
    businesses: list[tuple[str, str]] = field(default_factory=list)  # (id, api key)
    runs: list[StartedRun] = field(default_factory=list)
    faults: list[FaultDone] = field(default_factory=list)
    samples: list[ProgressSample] = field(default_factory=list)
    ended: set[str] = field(default_factory=set)
    operator_actions: list[dict[str, Any]] = field(default_factory=list)
    t0: float = 0.0

    # Businesses and runs

    async def create_businesses(self) -> None:
        for caller_id, cap in zip(self.plan.caller_ids, self.plan.caps, strict=True):
            response = await self.api.send(
                "POST",
                "/v1/businesses",
                key=DEV_ADMIN_TOKEN,
                body={"name": f"Chaos {caller_id}", "caller_id": caller_id, "max_concurrent_calls": cap},
            )
            assert response.status_code == 201, response.text
            self.businesses.append((response.json()["id"], response.json()["api_key"]))

    async def start_run(self, planned: PlannedRun) -> None:
        await asyncio.sleep(max(0.0, self.t0 + planned.start_at - time.time()))
        _, key = self.businesses[planned.business]
        body = {"name": "chaos", "leads": [{"phone": p} for p in planned.phones], "options": RUN_OPTIONS}
        response = await self.api.send("POST", "/v1/runs", key=key, body=body)
        assert response.status_code == 201, response.text
        run = StartedRun(
            response.json()["id"],
            planned.business,
            planned.phones,
            time.time(),
            cancel_planned=planned.cancel_at is not None,
        )
        self.runs.append(run)
        if planned.cancel_at is not None:
            await self.cancel_mid_way(run, planned.cancel_at)

    async def cancel_mid_way(self, run: StartedRun, at: float) -> None:
        """Cancel at `at`, or later once a fifth of the run's leads were called (never, if the run
        ends first)."""
        await asyncio.sleep(max(0.0, self.t0 + at - time.time()))
        enough = max(1, len(run.phones) // 5)

        async def called_enough() -> bool:
            calls = (await self.sim.get("/_sim/calls")).json()["calls"]
            placed = sum(1 for c in calls if f"run={run.id}&" in (c["status_callback"] or ""))
            return placed >= enough or run.id in self.ended

        await wait_for(
            called_enough, within=self.scenario.recover_within, what="calls to cancel", interval=0.2
        )
        if run.id in self.ended or run.terminated_at is not None:
            return
        _, key = self.businesses[run.business]
        response = await self.api.send("POST", f"/v1/runs/{run.id}/cancel", key=key)
        if response.status_code == 202:
            run.cancel_accepted_at = time.time()
            log.info("run %s cancel accepted", run.id)
        else:
            run.cancel_refused = True
            log.info("run %s cancel refused: %s", run.id, response.text)

    async def sample_progress(self) -> None:
        """Read every live run's progress through the API, then count the calls behind it."""
        while True:
            live = [r for r in self.runs if r.id not in self.ended]
            if self.api.up.is_set() and live:
                answers = await asyncio.gather(*(self._progress(r) for r in live))
                calls = (await self.sim.get("/_sim/calls")).json()["calls"]
                created = Counter(CarrierCall.from_summary(c).run for c in calls)
                for run, answer in zip(live, answers, strict=True):
                    if answer is None:
                        continue
                    at, body = answer
                    if body["status"] in RUN_ENDINGS:
                        self.ended.add(run.id)
                    else:
                        self.samples.append(
                            ProgressSample(run.id, at, body["status"], body["progress"], created[run.id])
                        )
            await asyncio.sleep(SAMPLE_EVERY_SECONDS)

    async def _progress(self, run: StartedRun) -> tuple[float, dict[str, Any]] | None:
        _, key = self.businesses[run.business]
        try:
            response = await self.api.http.get(
                f"/v1/runs/{run.id}", headers={"Authorization": f"Bearer {key}"}
            )
        except httpx.HTTPError:
            return None
        return (time.time(), response.json()) if response.status_code == 200 else None

    # Faults

    async def inject_faults(self) -> None:
        for fault in self.plan.faults:
            await asyncio.sleep(max(0.0, self.t0 + fault.at - time.time()))
            await self.inject(fault)

    async def inject(self, fault: PlannedFault) -> None:
        at = time.time()
        log.info(
            "fault at %.1fs: %s (%s, down %.1fs)",
            at - self.t0,
            fault.kind,
            fault.how.name,
            fault.down_seconds,
        )
        polling_after = None
        queue = self.settings.TEMPORAL_TASK_QUEUE
        if fault.kind == "worker_kill":
            await self.worker.restart(fault.how, fault.down_seconds)
            await wait_until_polling(self.client, queue, self.worker, PROCESS_UP_WITHIN)
            back = time.time()
        elif fault.kind == "api_restart":
            self.api.up.clear()
            await self.api_process.restart(fault.how, fault.down_seconds)
            await wait_until_serving(self.api.http, PROCESS_UP_WITHIN)
            back = time.time()
            self.api.up.set()
        elif fault.kind == "temporal_restart":
            await self.temporal.restart(fault.how, fault.down_seconds)
            await wait_until_temporal_serves(self.client, PROCESS_UP_WITHIN)
            back = time.time()
            await wait_until_polling(self.client, queue, self.worker, PROCESS_UP_WITHIN)
            polling_after = round(time.time() - back, 3)
        else:
            target = await self.act_as_operator(fault)
            back = time.time()
            self.operator_actions.append({"at_seconds": round(at - self.t0, 2), "kind": fault.kind, **target})
        self.faults.append(
            FaultDone(at, fault.kind, fault.how.name, fault.down_seconds, round(back - at, 3), polling_after)
        )

    async def act_as_operator(self, fault: PlannedFault) -> dict[str, Any]:
        """An operator's action, or a database outage; says what it acted on."""
        if fault.kind == "db_outage":
            assert self.database_proxy is not None
            self.database_proxy.cut()
            try:
                await asyncio.sleep(fault.down_seconds)
            finally:
                self.database_proxy.restore()
            return {"down_seconds": fault.down_seconds}
        if fault.kind in ("gate_terminate", "gate_reset"):
            business_id, _ = self.businesses[int(fault.pick * len(self.businesses))]
            gate = gate_workflow_id(business_id)
            if fault.kind == "gate_terminate":
                done = await operators.terminate(self.client, gate, "chaos: operator")
            else:
                done = await operators.reset_to_first_workflow_task(self.client, gate)
            return {"business": business_id, "done": done}
        live = [r for r in self.runs if r.id not in self.ended and r.terminated_at is None]
        if fault.kind == "run_terminate":
            live = [r for r in live if not r.cancel_planned]
        if not live:
            return {"done": False}
        run = live[int(fault.pick * len(live))]
        workflow_id = run_workflow_id(run.id)
        if fault.kind == "run_terminate":
            run.terminated_at = time.time()
            done = await operators.terminate(self.client, workflow_id, "chaos: operator")
            if not done:
                run.terminated_at = None
        elif fault.kind == "run_reset":
            done = await operators.reset_to_first_workflow_task(self.client, workflow_id)
            if done:
                run.reset_at.append(time.time())
        else:
            done = await self.pause_and_resume(run, fault.down_seconds)
        return {"run": run.id, "done": done}

    async def pause_and_resume(self, run: StartedRun, seconds: float) -> bool:
        _, key = self.businesses[run.business]
        if (await self.api.send("POST", f"/v1/runs/{run.id}/pause", key=key)).status_code != 202:
            return False
        run.paused += 1
        await asyncio.sleep(seconds)
        await self.api.send("POST", f"/v1/runs/{run.id}/resume", key=key)
        return True

    # The end

    async def wait_all_ended(self, business_ids: list[str]) -> bool:
        """Until every run of these businesses has ended in the database (or the time is up)."""

        async def all_ended() -> bool:
            async with self.sessions() as session:
                statuses = list(
                    await session.scalars(select(Run.status).where(Run.business_id.in_(business_ids)))
                )
            return all(s in RUN_ENDINGS for s in statuses)

        try:
            await wait_for(
                all_ended, within=self.scenario.recover_within, what="every run to end", interval=0.2
            )
        except AssertionError:
            return False
        return True

    async def collect(self) -> tuple[Evidence, list[dict[str, Any]]]:
        """What the carrier, the database, the API and Temporal say, read once everything ended."""
        calls = [CarrierCall.from_summary(c) for c in (await self.sim.get("/_sim/calls")).json()["calls"]]
        ours = set(self.plan.caller_ids)
        calls = [c for c in calls if c.caller_id in ours]
        business_ids = [b for b, _ in self.businesses]
        keys = dict(self.businesses)
        started = {r.id: r for r in self.runs}
        async with self.sessions() as session:
            rows = (
                await session.execute(
                    select(Run, Business).join(Business).where(Run.business_id.in_(business_ids))
                )
            ).all()
            run_ids = [run.id for run, _ in rows]
            lead_rows = (
                await session.execute(
                    select(Lead.run_id, Lead.id, Lead.status).where(Lead.run_id.in_(run_ids))
                )
            ).all()
            attempt_rows = list(
                await session.scalars(select(CallAttempt).where(CallAttempt.run_id.in_(run_ids)))
            )
        leads: dict[str, dict[int, str]] = {}
        for run_id, lead_id, status in lead_rows:
            leads.setdefault(run_id, {})[lead_id] = status
        attempts: dict[str, list[AttemptRow]] = {}
        for a in attempt_rows:
            attempts.setdefault(a.run_id, []).append(
                AttemptRow(a.lead_id, a.attempt, a.call_sid, a.status, a.duration)
            )
        timeline = []
        runs = []
        for run, business in rows:
            api_progress = None
            response = await self.api.send("GET", f"/v1/runs/{run.id}", key=keys[business.id])
            if response.status_code == 200:
                api_progress = response.json()["progress"]
            workflow_status, result = await self._workflow(run.id)
            driven = started.get(run.id)
            paused_dials = await self._dials_while_paused(run.id) if driven and driven.paused else []
            runs.append(
                RunEvidence(
                    id=run.id,
                    business_id=business.id,
                    caller_id=business.caller_id,
                    cap=business.max_concurrent_calls,
                    max_attempts=int(run.options.get("max_attempts", 1)),
                    status=run.status,
                    finished=run.status in RUN_ENDINGS and run.finished_at is not None,
                    total_leads=run.total_leads,
                    leads=leads.get(run.id, {}),
                    attempts=attempts.get(run.id, []),
                    api_progress=api_progress,
                    workflow_status=workflow_status,
                    workflow_result=result,
                    cancel_accepted_at=driven.cancel_accepted_at if driven else None,
                    cancel_refused=driven.cancel_refused if driven else False,
                    terminated_at=driven.terminated_at if driven else None,
                    dials_while_paused=paused_dials,
                )
            )
            timeline.append(
                {
                    "run": run.id,
                    "created_at": run.created_at.timestamp(),
                    "finished_at": run.finished_at.timestamp() if run.finished_at else None,
                }
            )
        evidence = Evidence(
            caps={b.caller_id: b.max_concurrent_calls for _, b in rows},
            runs=runs,
            calls=calls,
            samples=self.samples,
            started=set(started),
            checked_at=time.time(),
        )
        return evidence, timeline

    async def replay_histories(self) -> tuple[dict[str, int], list[dict[str, Any]]]:
        """Replay every execution's history (runs and line gates, each continue-as-new) with the
        workflow code, as a worker that lost its cache does. A history that does not replay is a
        run or gate stuck for good once its worker restarts (I4), whether or not it happened here.
        Also counts, per workflow type, the executions that continued as new."""
        replayer = Replayer(workflows=[OutboundRunWorkflow, BusinessLinesWorkflow])
        ids: dict[str, set[str]] = {}
        executions: Counter[str] = Counter()
        failures = []
        async for execution in self.client.list_workflows():
            ids.setdefault(execution.workflow_type, set()).add(execution.id)
            executions[execution.workflow_type] += 1
            handle = self.client.get_workflow_handle(execution.id, run_id=execution.run_id)
            replayed = await replayer.replay_workflow(
                as_its_worker_replays(await handle.fetch_history(), execution.run_id),
                raise_on_replay_failure=False,
            )
            if replayed.replay_failure is not None:
                failures.append(
                    violation(
                        "I4",
                        "the history does not replay with the workflow code: a worker that has to "
                        "replay it fails every workflow task, and the workflow is stuck",
                        workflow=execution.id,
                        execution=execution.run_id,
                        failure=str(replayed.replay_failure)[:400],
                    )
                )
        continued = {kind: executions[kind] - len(ids[kind]) for kind in sorted(ids)}
        return continued, failures

    async def _dials_while_paused(self, run_id: str) -> list[dict[str, Any]]:
        """Dials the run scheduled between a `pause` signal and the next `resume`, over every
        execution of its workflow in turn (a pause holds across continue-as-new)."""
        found = []
        paused = False
        for history in await execution_chain(self.client, run_workflow_id(run_id)):
            for event in history.events:
                if event.HasField("workflow_execution_signaled_event_attributes"):
                    name = event.workflow_execution_signaled_event_attributes.signal_name
                    paused = {"pause": True, "resume": False}.get(name, paused)
                elif (
                    paused
                    and event.HasField("activity_task_scheduled_event_attributes")
                    and event.activity_task_scheduled_event_attributes.activity_type.name == "place_call"
                ):
                    found.append({"execution": history.run_id, "event": event.event_id})
        return found

    async def _workflow(self, run_id: str) -> tuple[str | None, dict[str, Any] | None]:
        """The run workflow's status and result. The run's row says it ended just before its
        workflow returns, so give the workflow a moment to close before asking."""
        handle = self.client.get_workflow_handle(run_workflow_id(run_id))
        result: Any = None
        try:
            async with asyncio.timeout(WORKFLOW_CLOSES_WITHIN):
                result = await handle.result()
        except (TimeoutError, WorkflowFailureError, RPCError) as error:
            log.warning("run %s workflow gave no result: %r", run_id, error)
        try:
            description = await handle.describe()
        except RPCError as error:
            return f"unknown ({error.message})", None
        status = description.status.name if description.status is not None else None
        if description.status != WorkflowExecutionStatus.COMPLETED:
            return status, None
        return status, result if isinstance(result, dict) else {"result": result}


# Putting it together


async def chaos(scenario: Scenario, *, keep_state: bool = False) -> dict[str, Any]:
    """Run the scenario from scratch (its own dev server, database, simulator, API and worker) and
    return the report. The dev server's SQLite file is kept when a violation was found or
    `keep_state` asks for it (`temporal server start-dev --db-filename` on it shows the histories)."""
    began = time.time()
    the_plan = plan(scenario)
    log_dir = Path(tempfile.mkdtemp(prefix="chaos-"))
    log.info("chaos: %s; logs in %s", scenario.command(), log_dir)
    async with AsyncExitStack() as exits:
        temporal_port = free_port()
        temporal = Restartable(
            "temporal",
            dev_server_argv(
                temporal_port,
                log_dir / "temporal.db",
                dynamic_config=[
                    f"limit.historyCount.suggestContinueAsNew={scenario.suggest_continue_as_new_after}"
                ],
            ),
            dict(os.environ),
            log_dir,
        )
        await temporal.start()
        exits.push_async_callback(temporal.close)
        client = await connect_when_up(f"127.0.0.1:{temporal_port}", PROCESS_UP_WITHIN)
        database_url = await exits.enter_async_context(fresh_database())
        # The API and the worker reach PostgreSQL through a proxy the driver can cut; the driver
        # reads its evidence directly.
        server = make_url(database_url)
        proxy = await exits.enter_async_context(
            TcpProxy.running(server.host or "127.0.0.1", server.port or 5432)
        )
        proxied_url = server.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        simulator_url = await exits.enter_async_context(simulator_server("process"))
        sim = await exits.enter_async_context(httpx.AsyncClient(base_url=simulator_url, timeout=60))
        (await sim.post("/_sim/config", json={**CARRIER, "seed": scenario.seed})).raise_for_status()
        (await sim.post("/_sim/reset")).raise_for_status()  # the random sequence starts from the seed

        api_port = free_port()
        settings = Settings(
            ENVIRONMENT="development",
            # The benchmarks measure the dialer, not the per-business request limit.
            BUSINESS_REQUESTS_PER_SECOND=10_000,
            BUSINESS_REQUEST_BURST=10_000,
            # Payloads in plain JSON, whatever this machine's `.env` says: the benchmark's own
            # client and replayer read them without a key.
            PAYLOAD_ENCRYPTION_KEY=None,
            PAYLOAD_DECRYPTION_KEYS=[],
            DATABASE_URL=proxied_url,
            TEMPORAL_ADDRESS=f"127.0.0.1:{temporal_port}",
            TEMPORAL_NAMESPACE=client.namespace,
            TEMPORAL_TASK_QUEUE=f"chaos-{uuid.uuid4().hex[:8]}",
            TWILIO_API_BASE_URL=simulator_url,
            PUBLIC_BASE_URL=f"http://127.0.0.1:{api_port}",
            TWILIO_CALLS_PER_SECOND=CALLS_PER_SECOND,
            LOG_LEVEL="WARNING",
        )
        env = settings.environment()
        worker = Restartable("worker", [sys.executable, "worker.py"], env, log_dir)
        api_process = Restartable("api", [sys.executable, "-m", "api", "--port", str(api_port)], env, log_dir)
        for process in (worker, api_process):
            await process.start()
            exits.push_async_callback(process.close)
        http = await exits.enter_async_context(
            httpx.AsyncClient(base_url=settings.PUBLIC_BASE_URL, timeout=30)
        )
        engine = create_engine(database_url)
        exits.push_async_callback(engine.dispose)
        await wait_until_serving(http, PROCESS_UP_WITHIN)
        await wait_until_polling(client, settings.TEMPORAL_TASK_QUEUE, worker, PROCESS_UP_WITHIN)
        api = Api(http)
        api.up.set()
        driver = Chaos(
            scenario,
            the_plan,
            client,
            api,
            sim,
            create_sessionmaker(engine),
            settings,
            worker,
            api_process,
            temporal,
            database_proxy=proxy,
        )
        await driver.create_businesses()
        log.info(
            "up in %.1fs; %d runs, %d faults planned",
            time.time() - began,
            len(the_plan.runs),
            len(the_plan.faults),
        )

        driver.t0 = time.time()
        sampler = asyncio.create_task(driver.sample_progress())
        starts = [asyncio.create_task(driver.start_run(r)) for r in the_plan.runs]
        await driver.inject_faults()
        faults_stopped = time.time()
        log.info("faults stopped after %.1fs; waiting for every run to end", faults_stopped - driver.t0)
        await _all(starts)
        business_ids = [b for b, _ in driver.businesses]
        all_ended = await driver.wait_all_ended(business_ids)
        sampler.cancel()
        (stopped,) = await asyncio.gather(sampler, return_exceptions=True)
        if not isinstance(stopped, asyncio.CancelledError):
            raise RuntimeError("the progress sampler stopped early") from stopped

        async def calls_over() -> bool:
            calls = (await sim.get("/_sim/calls")).json()["calls"]
            return all(c["ended_at"] is not None for c in calls)

        if all_ended:
            # Calls end at the carrier within their time limit; one still live is reported.
            try:
                await wait_for(calls_over, within=CALL_TIME_LIMIT_SECONDS + 5, what="calls to end")
            except AssertionError:
                log.warning("calls still live at the carrier after every run ended")
        evidence, timeline = await driver.collect()
        continued_as_new, replay_failures = await driver.replay_histories()
        violations = [*check(evidence), *replay_failures]
        stats = (await sim.get("/_sim/stats")).json()
        report = build_report(scenario, driver, evidence, timeline, stats, violations, began, log_dir)
        report["continued_as_new"] = continued_as_new
    if not violations and not keep_state:
        remove_dev_server_state(log_dir)
    return report


def remove_dev_server_state(log_dir: Path) -> None:
    """The dev server's SQLite files: kept only when a violation needs looking into."""
    for leftover in log_dir.glob("temporal.db*"):
        leftover.unlink()


async def _all(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for every task; the first failure is raised once all are done."""
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


def build_report(
    scenario: Scenario,
    driver: Chaos,
    evidence: Evidence,
    timeline: list[dict[str, Any]],
    stats: dict[str, Any],
    violations: list[dict[str, Any]],
    began: float,
    log_dir: Path,
) -> dict[str, Any]:
    """The JSON report."""
    kinds = Counter(f.kind for f in driver.faults)
    processes = {"worker": driver.worker, "api": driver.api_process, "temporal": driver.temporal}
    creates = create_times(stats, driver.plan.caller_ids)
    callbacks = stats["callbacks"]
    return {
        "bench": "chaos",
        "seed": scenario.seed,
        "repeat_with": scenario.command(),
        "scenario": asdict(scenario),
        "runs": {
            "started": len(evidence.runs),
            "by_status": dict(Counter(r.status for r in evidence.runs)),
            "cancelled_mid_way": [
                {"run": r.id, "accepted_at_seconds": round(r.cancel_accepted_at - driver.t0, 2)}
                for r in driver.runs
                if r.cancel_accepted_at is not None
            ],
            "cancels_planned": sum(1 for r in driver.plan.runs if r.cancel_at is not None),
            # Refused with 409: the run had ended by the time the cancel reached it.
            "cancel_too_late": sum(1 for r in driver.runs if r.cancel_refused),
            "leads": sum(len(r.leads) for r in evidence.runs),
            "leads_by_status": dict(Counter(s for r in evidence.runs for s in r.leads.values())),
        },
        "calls": {
            "placed": len(evidence.calls),
            "by_status": dict(Counter(c.status for c in evidence.calls)),
            "create_requests": len(creates),
        },
        "simulator_faults": {
            "create_429": stats["faults"]["create_429"],
            "create_5xx": stats["faults"]["create_5xx"],
            "create_5xx_after_create": stats["faults"]["create_5xx_after_create"],
            "callbacks_dropped": callbacks["dropped"],
            "callbacks_duplicated": callbacks["duplicated"],
            "callbacks_reordered": callbacks["reordered"],
            "callbacks_retried": callbacks["retried"],
            "callbacks_given_up": callbacks["failed"],
            "callbacks_sent": callbacks["sent"],
        },
        "operator_actions": driver.operator_actions,
        "runs_terminated": sum(1 for r in driver.runs if r.terminated_at is not None),
        "runs_reset": sum(1 for r in driver.runs if r.reset_at),
        "runs_paused": sum(1 for r in driver.runs if r.paused),
        "process_faults": {
            "by_kind": {kind: kinds.get(kind, 0) for kind in scenario.fault_kinds},
            "by_process": {
                name: {
                    "kills_or_restarts": kinds.get(kind, 0),
                    "starts": processes[name].starts,
                    "exits_on_its_own": len(processes[name].unplanned_exits),
                }
                for kind, name in PROCESS_OF.items()
            },
        },
        "progress_samples": len(evidence.samples),
        "api_retries": dict(driver.api.retries),
        "violations": violations,
        "recovery": recovery(driver.faults, timeline, creates, driver.t0),
        "wall_seconds": round(time.time() - began, 2),
        "logs": str(log_dir),
        "log_lines_by_level": {name: p.log_levels() for name, p in processes.items()},
    }


def parse_args(argv: list[str] | None = None) -> tuple[Scenario, bool]:
    """Command-line flags; `--quick` is the short version `make test` runs."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    default = Scenario()
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--businesses", type=int, default=default.businesses)
    parser.add_argument("--runs-per-business", type=int, default=default.runs_per_business)
    parser.add_argument("--leads-per-run", type=int, default=default.leads_per_run)
    parser.add_argument("--seconds", type=float, default=default.seconds, help="how long faults go on")
    parser.add_argument(
        "--fault-gap",
        type=float,
        default=default.fault_gap_seconds,
        help="mean seconds between process faults",
    )
    parser.add_argument("--cancels", type=int, default=default.cancels, help="runs cancelled mid-way")
    parser.add_argument("--cap", type=int, default=default.cap, help="every business's line cap (0: 1, 2, 3)")
    parser.add_argument(
        "--no-operator", action="store_true", help="no terminate, reset or pause from the Temporal side"
    )
    parser.add_argument("--no-db-outages", action="store_true", help="never cut PostgreSQL away")
    parser.add_argument(
        "--recover-within",
        type=float,
        default=default.recover_within,
        help="give up waiting for runs to end after this",
    )
    parser.add_argument("--quick", action="store_true", help="the short version (as in make test)")
    parser.add_argument(
        "--keep-state", action="store_true", help="keep the dev server's SQLite file even without violations"
    )
    args = parser.parse_args(argv)
    if args.quick:
        return replace(SHORT, seed=args.seed), args.keep_state
    scenario = Scenario(
        businesses=args.businesses,
        runs_per_business=args.runs_per_business,
        leads_per_run=args.leads_per_run,
        seconds=args.seconds,
        fault_gap_seconds=args.fault_gap,
        cancels=args.cancels,
        seed=args.seed,
        recover_within=args.recover_within,
        operator=not args.no_operator,
        db_outages=not args.no_db_outages,
        cap=args.cap,
    )
    return scenario, args.keep_state


def main(argv: list[str] | None = None) -> None:
    """Run the scenario and print one JSON object."""
    scenario, keep_state = parse_args(argv)

    async def go() -> dict[str, Any]:
        return {**(await chaos(scenario, keep_state=keep_state)), "machine": machine()}

    run_main(go)


if __name__ == "__main__":
    main()
