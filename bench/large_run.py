"""Large run: one run of `--leads` leads (100,000) on `--cap` lines (50), calls as short as the
simulator makes them (answered at once, `--talk-seconds` 0), the call rate limit lifted
(`TWILIO_CALLS_PER_SECOND` 10000). The API and the worker run as processes of their own
(`bench.processes`). What it measures:

- upload: the leads go up as one streamed request body (CSV by default, `--format ndjson` for JSON
  lines) generated chunk by chunk, so neither side needs the whole list as one string. The endpoint is
  read from the API's OpenAPI document: `POST /v1/runs` if it takes `text/csv`, else
  `POST /v1/runs/import`. `--upload json` sends the classic `POST /v1/runs` JSON body instead.
  `upload.seconds` is from the first byte sent to the 201.
- wall: from the run workflow's first `WorkflowExecutionStarted` to its last execution's close event
  (server times); calls per second = calls that ended / wall, and, from the simulator's records,
  calls / (first create to last end).
- continue-as-new: the run workflow's executions (following `continued_execution_run_id` back from
  the newest) and, per execution, its events and its bytes (the sum of each event's protobuf
  `ByteSize()`); the largest execution by events and by bytes, for the run and for the business's
  gate (`business-lines-{business_id}`). For scale: the server suggests continue-as-new at 4096
  events or 4 MiB by default and terminates a workflow at 51,200 events or 50 MiB.
- worker memory: VmRSS of the worker process, sampled every second: before the upload, after it, at
  the middle of the run's wall time, at the end, and the peak. The API's and the dev server's too.
- that every lead ended: lead statuses and attempt statuses from the database, the simulator's call
  count, and `GET /v1/runs/{id}` once the run is over.
- CPU seconds per 1000 calls of each process over the run, as `bench.fleet` reports them.

    .venv/bin/python -m bench.large_run [--leads 100000] [--cap 50] [--talk-seconds 0]
                                        [--format csv|ndjson] [--upload stream|json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import func, select
from temporalio.client import Client

from bench.common import (
    add_env_arguments,
    configure_simulator,
    event_time,
    event_type,
    log,
    machine,
    run_main,
)
from bench.processes import ProcessEnv, Sampler, process_env
from contracts.names import gate_workflow_id, run_workflow_id
from contracts.statuses import FINAL_ATTEMPT_STATUSES, OUTCOMES
from db.models import CallAttempt, Lead
from support.drive import ALWAYS_OPEN, Business, new_number

CALLS_PER_SECOND_LIMIT = 10_000
MAX_CAP = 100  # service/schemas.py: BusinessCreate.max_concurrent_calls le=100
CHUNK_LEADS = 2_000
MIB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; `--quick` is 10,000 leads."""
    parser = argparse.ArgumentParser(prog="python -m bench.large_run", description=__doc__)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument(
        "--cap", type=int, default=50, help=f"the business's lines (the API allows {MAX_CAP})"
    )
    parser.add_argument("--talk-seconds", type=float, default=0.0)
    parser.add_argument("--format", choices=("csv", "ndjson"), default="csv", help="streamed body format")
    parser.add_argument(
        "--upload",
        choices=("stream", "json"),
        default="stream",
        help="streamed body (default) or one JSON body",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="give up after this many seconds (default 600 + 0.1 per lead)",
    )
    parser.add_argument(
        "--dev-server-config",
        metavar="KEY=VALUE",
        action="append",
        default=[],
        help="a dynamic config value for the dev server, e.g. limit.historyCount.suggestContinueAsNew=300 "
        "to see continue-as-new in a small run (repeatable)",
    )
    add_env_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.leads = 10_000
    if not 1 <= args.cap <= MAX_CAP:
        parser.error(f"--cap must be between 1 and {MAX_CAP}")
    return args


# Uploading


async def lead_lines(phones: Sequence[str], fmt: str, sent: list[int]) -> AsyncIterator[bytes]:
    """The request body, CHUNK_LEADS leads at a time; counts the bytes in `sent[0]`."""
    if fmt == "csv":
        header = b"phone\n"
        sent[0] += len(header)
        yield header
    for start in range(0, len(phones), CHUNK_LEADS):
        chunk = phones[start : start + CHUNK_LEADS]
        if fmt == "csv":
            text = "".join(f"{p}\n" for p in chunk)
        else:
            text = "".join(json.dumps({"phone": p}) + "\n" for p in chunk)
        data = text.encode()
        sent[0] += len(data)
        yield data


async def streaming_endpoint(http: httpx.AsyncClient) -> str:
    """Where the API takes a streamed lead list: `POST /v1/runs` when it accepts `text/csv`, else
    `POST /v1/runs/import`."""
    spec = (await http.get("/openapi.json")).json()
    paths = spec.get("paths", {})
    content = paths.get("/v1/runs", {}).get("post", {}).get("requestBody", {}).get("content", {})
    if "text/csv" in content:
        return "/v1/runs"
    if "post" in paths.get("/v1/runs/import", {}):
        return "/v1/runs/import"
    raise RuntimeError(
        "the API has no streamed lead upload (neither /v1/runs nor /v1/runs/import takes text/csv)"
    )


@dataclass
class Upload:
    """How the leads went up."""

    run_id: str
    endpoint: str
    content_type: str
    seconds: float
    body_bytes: int


async def upload(env: ProcessEnv, business: Business, phones: Sequence[str], how: str, fmt: str) -> Upload:
    """Start the run with its leads, streamed or as one JSON body."""
    options = {"calling_window": ALWAYS_OPEN}
    if how == "json":
        body = {"name": "large run", "leads": [{"phone": p} for p in phones], "options": options}
        content = json.dumps(body).encode()
        started = time.monotonic()
        response = await env.stack.http.post(
            "/v1/runs",
            content=content,
            headers={**business.headers, "Content-Type": "application/json"},
            timeout=httpx.Timeout(1800),
        )
        endpoint, content_type, size = "/v1/runs", "application/json", len(content)
    else:
        endpoint = await streaming_endpoint(env.stack.http)
        content_type = "text/csv" if fmt == "csv" else "application/x-ndjson"
        sent = [0]
        started = time.monotonic()
        response = await env.stack.http.post(
            endpoint,
            params={"name": "large run", "options": json.dumps(options)},
            content=lead_lines(phones, fmt, sent),
            headers={**business.headers, "Content-Type": content_type},
            timeout=httpx.Timeout(1800),
        )
        size = sent[0]
    seconds = time.monotonic() - started
    if response.status_code != 201:
        raise RuntimeError(f"upload to {endpoint} answered {response.status_code}: {response.text[:2000]}")
    return Upload(str(response.json()["id"]), endpoint, content_type, seconds, size)


# Histories


@dataclass(frozen=True)
class Execution:
    """One execution of a workflow id: its size and when it started and closed."""

    run_id: str
    events: int
    bytes: int
    started_at: float
    last_event_at: float
    last_event: str


async def executions(client: Client, workflow_id: str) -> list[Execution]:
    """Every execution of a workflow id, oldest first, following continue-as-new back from the
    newest. Events are counted as they stream in, never kept: a 100k-lead run has ~a million."""
    found: list[Execution] = []
    run_id: str | None = None
    while True:
        previous = ""
        count = size = 0
        first_at = last_at = 0.0
        last = ""
        async for event in client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history_events():
            if count == 0:
                previous = event.workflow_execution_started_event_attributes.continued_execution_run_id
                first_at = event_time(event)
            count += 1
            size += event.ByteSize()
            last_at = event_time(event)
            last = event_type(event)
        found.insert(0, Execution(run_id or "latest", count, size, first_at, last_at, last))
        if not previous:
            return found
        run_id = previous


def executions_report(chain: Sequence[Execution]) -> dict[str, Any]:
    """Executions, continue-as-new count, events and bytes in all and in the largest execution."""
    if not chain:
        return {"executions": 0}
    by_events = max(chain, key=lambda e: e.events)
    by_bytes = max(chain, key=lambda e: e.bytes)
    events = sorted(e.events for e in chain)
    return {
        "executions": len(chain),
        "continue_as_new": len(chain) - 1,
        "events": sum(e.events for e in chain),
        "bytes": sum(e.bytes for e in chain),
        "largest_by_events": {
            "execution": chain.index(by_events) + 1,
            "events": by_events.events,
            "bytes": by_events.bytes,
        },
        "largest_by_bytes": {
            "execution": chain.index(by_bytes) + 1,
            "events": by_bytes.events,
            "bytes": by_bytes.bytes,
        },
        "events_per_execution_median": events[len(events) // 2],
        "last_event": chain[-1].last_event,
    }


# Checking the outcome


async def lead_check(env: ProcessEnv, business: Business, run_id: str, expected: int) -> dict[str, Any]:
    """Every lead in a terminal state? From the database, the simulator and the API."""
    async with env.stack.sessions() as session:
        leads = dict(
            (
                await session.execute(
                    select(Lead.status, func.count()).where(Lead.run_id == run_id).group_by(Lead.status)
                )
            ).all()
        )
        attempts = dict(
            (
                await session.execute(
                    select(CallAttempt.status, func.count())
                    .where(CallAttempt.run_id == run_id)
                    .group_by(CallAttempt.status)
                )
            ).all()
        )
    ended = sum(n for status, n in leads.items() if status in OUTCOMES)
    api = await env.stack.run(business, run_id)
    return {
        "leads_by_status": leads,
        "leads_stored": sum(leads.values()),
        "leads_ended": ended,
        "leads_not_ended": sum(leads.values()) - ended,
        "all_leads_ended": ended == expected == sum(leads.values()),
        "attempts_by_status": attempts,
        "attempts_not_final": sum(
            n for status, n in attempts.items() if status not in FINAL_ATTEMPT_STATUSES
        ),
        "api_status": api.get("status"),
        "api_progress": api.get("progress"),
    }


async def log_progress(env: ProcessEnv, run_id: str, total: int, every: float = 15) -> None:
    """Attempts so far, from the database, every `every` seconds (a cheap indexed count)."""
    started = time.monotonic()
    while True:
        await asyncio.sleep(every)
        async with env.stack.sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(CallAttempt).where(CallAttempt.run_id == run_id)
            )
        elapsed = time.monotonic() - started
        log.info(
            "%d of %d leads dialed after %.0fs (%.1f/s)", count or 0, total, elapsed, (count or 0) / elapsed
        )


def mib(value: int | None) -> float | None:
    return round(value / MIB, 1) if value is not None else None


async def measure(
    env: ProcessEnv,
    *,
    leads: int,
    cap: int,
    talk_seconds: float,
    fmt: str = "csv",
    how: str = "stream",
    within: float | None = None,
) -> dict[str, Any]:
    """Upload, run to the end, then read histories, memory, CPU and lead statuses."""
    await configure_simulator(env, ring_seconds=(0.0, 0.0), talk_seconds=(talk_seconds, talk_seconds))
    business = await env.stack.create_business(cap=cap)
    log.info("making %d numbers", leads)
    phones = [new_number() for _ in range(leads)]
    within = within if within is not None else 600 + 0.1 * leads

    sampler = Sampler(env.watched(), interval=1.0)
    async with sampler:
        before = sampler.sample()
        log.info("uploading %d leads (%s, %s)", leads, how, fmt)
        sent = await upload(env, business, phones, how, fmt)
        after_upload = sampler.sample()
        log.info("uploaded to %s in %.1fs; run %s", sent.endpoint, sent.seconds, sent.run_id)
        handle = env.client.get_workflow_handle(run_workflow_id(sent.run_id))
        progress = asyncio.create_task(log_progress(env, sent.run_id, leads))
        try:
            async with asyncio.timeout(within):
                result: Any = await handle.result()
            outcome = result.get("status") if isinstance(result, dict) else str(result)
        except Exception as error:  # a terminated or failed workflow is a finding, not a crash
            log.warning("run workflow did not complete: %r", error)
            outcome = f"error: {type(error).__name__}: {error}"
        finally:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
        at_end = sampler.sample()
    description = await handle.describe()
    log.info("run ended (%s) in %.1fs; reading histories", outcome, at_end.at - after_upload.at)

    run_chain = await executions(env.client, run_workflow_id(sent.run_id))
    gate_chain = await executions(env.client, gate_workflow_id(business.id))
    wall = run_chain[-1].last_event_at - run_chain[0].started_at
    middle = run_chain[0].started_at + wall / 2

    calls = [
        c for c in (await env.stack.sim.get("/_sim/calls")).json()["calls"] if c["from"] == business.caller_id
    ]
    ended = [c for c in calls if c["ended_at"] is not None]
    dialing = (max(c["ended_at"] for c in ended) - min(c["created_at"] for c in ended)) if ended else 0.0
    check = await lead_check(env, business, sent.run_id, leads)
    check["simulator_calls"] = len(calls)
    check["simulator_calls_not_ended"] = len(calls) - len(ended)

    def rss(name: str) -> dict[str, float | None]:
        return {
            "start": mib(before.rss.get(name)),
            "after_upload": mib(after_upload.rss.get(name)),
            "middle": mib(sampler.rss_at(name, middle)),
            "end": mib(at_end.rss.get(name)),
            "peak": mib(sampler.rss_peak(name)),
        }

    result_json: dict[str, Any] = {
        "bench": "large_run",
        "leads": leads,
        "cap": cap,
        "talk_seconds": talk_seconds,
        "ring_seconds": 0.0,
        "calls_per_second_limit": CALLS_PER_SECOND_LIMIT,
        "simulator": env.simulator,
        "run_status": outcome,
        "workflow_status": description.status.name if description.status is not None else None,
        "upload": {
            "endpoint": sent.endpoint,
            "content_type": sent.content_type,
            "streamed": how == "stream",
            "seconds": round(sent.seconds, 3),
            "body_bytes": sent.body_bytes,
            "leads_per_second": round(leads / sent.seconds, 1) if sent.seconds > 0 else None,
        },
        "wall_seconds": round(wall, 3),
        "calls_per_second": round(len(ended) / wall, 2) if wall > 0 else None,
        "calls_per_second_while_dialing": round(len(ended) / dialing, 2) if dialing > 0 else None,
        "run_workflow": {
            **executions_report(run_chain),
            "events_per_lead": round(sum(e.events for e in run_chain) / leads, 2),
        },
        "gate_workflow": executions_report(gate_chain),
        "worker_rss_mib": rss("worker"),
        "api_rss_mib": rss("api"),
        "temporal_rss_mib": rss("temporal"),
        "leads_check": check,
        "cpu": sampler.cpu_report(run_chain[0].started_at, run_chain[-1].last_event_at, len(ended)),
        "process_logs": env.log_summaries(),
    }
    log.info(
        "%d calls in %.1fs (%.1f/s), %d executions, worker peak %.0f MiB, all ended: %s",
        len(ended),
        wall,
        len(ended) / wall if wall > 0 else 0,
        len(run_chain),
        result_json["worker_rss_mib"]["peak"] or 0,
        check["all_leads_ended"],
    )
    return result_json


def main(argv: list[str] | None = None) -> None:
    """Start everything (API and worker as processes), measure, print one JSON object."""
    args = parse_args(argv)

    async def go() -> dict[str, Any]:
        dev_server_args = [
            arg for value in args.dev_server_config for arg in ("--dynamic-config-value", value)
        ]
        async with process_env(
            simulator=args.simulator, calls_per_second=CALLS_PER_SECOND_LIMIT, dev_server_args=dev_server_args
        ) as env:
            result = await measure(
                env,
                leads=args.leads,
                cap=args.cap,
                talk_seconds=args.talk_seconds,
                fmt=args.format,
                how=args.upload,
                within=args.timeout,
            )
        return {**result, "dev_server_config": args.dev_server_config, "machine": machine()}

    run_main(go)


if __name__ == "__main__":
    main()
