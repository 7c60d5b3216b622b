"""Next-dial latency, and the engine's own floor measured in the same run.

The worker runs as its own process, as deployed (`python worker.py`); the API is served in this
process so that the time each callback reaches it can be taken (`--worker-in-process` puts the
worker here too, beside the API, as earlier versions of this benchmark did).

Next-dial latency: for each terminal status callback of a business that still has leads waiting,
the time from the callback reaching the API to the next create-call request of that business
reaching the carrier.

- "Callback received" is taken by an ASGI middleware wrapped around the API inside this benchmark
  (`bench.common.WebhookTimer`): the wall-clock time the POST to /v1/webhooks/twilio/call-status
  entered the app, before the signature check and the signal. Only terminal CallStatus values count.
- "Create sent" is the simulator's own record of each create request (`/_sim/stats`
  `create_requests`), same machine, same clock.
- Matching: with `cap` lines, the first `cap` creates need no line to be freed; after that, each
  create is made on a line freed by a terminal callback. So the k-th terminal callback (in arrival
  order) is paired with create number cap + k. Callbacks after the last create (no lead waiting)
  are not samples.

Floor: `bench.floor` - signal a waiting workflow, which runs one activity that POSTs to a small
local endpoint; floor = signal sent -> that POST received. Measured with the activity on the
workflow's own task queue (the plain floor, which the server may hand to the worker eagerly), half
of the samples before the product run and half after, pooled; and once more after the run on a
separate rate-limited queue, as the product's dial activity is.

The latency is also split by the run's history into where the time goes: API (callback in ->
signal recorded), workflow task (signal -> place_call scheduled; of which: signal -> a worker picks
the workflow task up, and picked up -> the worker's answer recorded), activity dispatch (scheduled ->
started) and the dial activity itself (started -> create request at the carrier). The floor is split
the same way.

    .venv/bin/python -m bench.latency [--leads 200] [--cap 3] [--talk-seconds 1] [--floor-samples 100]
        [--worker-in-process] [--quick]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from bench.common import (
    BenchEnv,
    TaskTimes,
    add_env_arguments,
    bench_env,
    configure_simulator,
    create_times,
    event_time,
    event_type,
    free_port,
    log,
    machine,
    payload_json,
    percentiles,
    run_main,
    run_to_end,
    scheduling_tasks,
)
from bench.floor import Endpoint, FloorSamples, floor_workers, measure_floor
from bench.processes import process_env
from contracts.names import run_workflow_id
from contracts.statuses import TERMINAL_CALL_STATUSES
from support.drive import execution_chain, serve

GOAL_P50_RATIO = 1.5
GOAL_P99_RATIO = 3.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; `--quick` shrinks the run to a few seconds."""
    parser = argparse.ArgumentParser(prog="python -m bench.latency", description=__doc__)
    parser.add_argument("--leads", type=int, default=200)
    parser.add_argument(
        "--talk-seconds",
        type=float,
        default=1.0,
        help="mean call length; each call lasts 0.5x to 1.5x this, so lines do not end in lockstep",
    )
    parser.add_argument("--cap", type=int, default=3)
    parser.add_argument("--floor-samples", type=int, default=100)
    parser.add_argument(
        "--worker-in-process",
        action="store_true",
        help="run the worker in this process beside the API (default: its own process, as deployed)",
    )
    add_env_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.leads, args.talk_seconds, args.floor_samples = 30, 0.3, 20
    return args


def _ms(values: Sequence[float]) -> dict[str, float | int]:
    return percentiles([1000 * v for v in values])


async def _stages(
    env: BenchEnv, run_id: str, cap: int, arrivals: list[float], creates: list[float]
) -> dict[str, Any]:
    """Split each sample at the history events between callback and create."""
    signals: list[float] = []
    scheduled: list[tuple[float, float | None, TaskTimes | None]] = []
    for history in await execution_chain(env.client, run_workflow_id(run_id)):
        tasks = scheduling_tasks(history.events)
        started_at: dict[int, float] = {}
        dials: list[tuple[int, float]] = []
        for event in history.events:
            kind = event_type(event)
            if kind == "WorkflowExecutionSignaled":
                attrs = event.workflow_execution_signaled_event_attributes
                body = payload_json(attrs.input)
                if attrs.signal_name == "call_status" and body.get("status") in TERMINAL_CALL_STATUSES:
                    signals.append(event_time(event))
            elif kind == "ActivityTaskScheduled":
                if event.activity_task_scheduled_event_attributes.activity_type.name == "place_call":
                    dials.append((event.event_id, event_time(event)))
            elif kind == "ActivityTaskStarted":
                started_at[event.activity_task_started_event_attributes.scheduled_event_id] = event_time(
                    event
                )
        scheduled.extend((at, started_at.get(event_id), tasks.get(event_id)) for event_id, at in dials)
    signals.sort()
    scheduled.sort(key=lambda dial: dial[0])
    api, task, pickup, work, dispatch, activity = [], [], [], [], [], []
    for k, arrived in enumerate(arrivals):
        if cap + k >= min(len(creates), len(scheduled)) or k >= len(signals):
            break
        dial_scheduled, dial_started, by_task = scheduled[cap + k]
        api.append(signals[k] - arrived)
        task.append(dial_scheduled - signals[k])
        if by_task is not None:
            pickup.append(by_task.started - signals[k])
            work.append(by_task.completed - by_task.started)
        if dial_started is not None:
            dispatch.append(dial_started - dial_scheduled)
            activity.append(creates[cap + k] - dial_started)
    return {
        "api_callback_to_signal_recorded_ms": _ms(api),
        "workflow_task_signal_to_dial_scheduled_ms": _ms(task),
        "of_which_signal_to_task_picked_up_ms": _ms(pickup),
        "of_which_task_picked_up_to_answered_ms": _ms(work),
        "activity_dispatch_scheduled_to_started_ms": _ms(dispatch),
        "dial_activity_started_to_create_ms": _ms(activity),
    }


def _floor_stages(samples: FloorSamples) -> dict[str, Any]:
    return {
        "signal_sent_to_recorded_ms": _ms(samples.signal_recorded),
        "workflow_task_signal_to_activity_scheduled_ms": _ms(samples.workflow_task),
        "of_which_signal_to_task_picked_up_ms": _ms(samples.task_pickup),
        "of_which_task_picked_up_to_answered_ms": _ms(samples.task_work),
        "activity_dispatch_scheduled_to_started_ms": _ms(samples.dispatch),
        "activity_started_to_request_ms": _ms(samples.activity),
    }


async def measure(
    env: BenchEnv, *, leads: int, cap: int, talk_seconds: float, floor_samples: int
) -> dict[str, Any]:
    """Measure the floor, run `leads` calls on `cap` lines, measure the floor again; report the
    run, the pooled floor and their ratios. The floor is taken on both sides of the run so that a
    machine that speeds up or slows down meanwhile does not tilt the ratio either way."""
    await configure_simulator(
        env, ring_seconds=(0.0, 0.0), talk_seconds=(0.5 * talk_seconds, 1.5 * talk_seconds)
    )
    endpoint = Endpoint({}, {})
    port = free_port()
    async with serve(endpoint.app(), port) as base, floor_workers(env.client) as (queue, act_queue):
        url = f"{base}/ping"

        async def floor_now(samples: int, activity_task_queue: str | None = None) -> FloorSamples:
            return await measure_floor(
                env.client,
                endpoint,
                url,
                task_queue=queue,
                activity_task_queue=activity_task_queue,
                samples=samples,
            )

        floor_before = await floor_now(floor_samples // 2)
        run = await run_to_end(env, cap=cap, leads=leads, within=60 + 4 * leads * talk_seconds / cap)
        floor_after = await floor_now(floor_samples - floor_samples // 2)
        floor_separate = await floor_now(floor_samples, act_queue)
    floor = floor_before + floor_after

    caller_id = run.business.caller_id
    arrivals = [a.at for a in env.stack.webhooks.for_caller(caller_id)]
    creates = await create_times(env, caller_id)
    samples = [creates[cap + k] - at for k, at in enumerate(arrivals) if cap + k < len(creates)]
    negative = sum(1 for s in samples if s < 0)
    stages = await _stages(env, run.run_id, cap, arrivals, creates)
    log.info(
        "next-dial latency: %d samples (%d terminal callbacks, %d creates)",
        len(samples),
        len(arrivals),
        len(creates),
    )

    latency_ms = _ms(samples)
    floor_ms = _ms(floor.total)
    separate_ms = _ms(floor_separate.total)

    def ratio(a: dict[str, float | int], b: dict[str, float | int], key: str) -> float | None:
        return round(a[key] / b[key], 2) if b.get(key) else None

    ratio_p50 = ratio(latency_ms, floor_ms, "p50")
    ratio_p99 = ratio(latency_ms, floor_ms, "p99")
    return {
        "bench": "latency",
        "leads": leads,
        "cap": cap,
        "talk_seconds": [round(0.5 * talk_seconds, 3), round(1.5 * talk_seconds, 3)],
        "simulator": env.simulator,
        "run_status": run.result.get("status"),
        "terminal_callbacks": len(arrivals),
        "creates": len(creates),
        "negative_samples": negative,
        "callback_received": "ASGI middleware in front of the API, time the POST entered the app",
        "create_sent": "simulator create_requests time",
        "next_dial_ms": latency_ms,
        "next_dial_stages": stages,
        "floor_ms": floor_ms,
        "floor_before_run_p50_ms": _ms(floor_before.total).get("p50"),
        "floor_after_run_p50_ms": _ms(floor_after.total).get("p50"),
        "floor_stages": _floor_stages(floor),
        "floor_separate_activity_queue_ms": separate_ms,
        "floor_separate_activity_queue_stages": _floor_stages(floor_separate),
        "ratio_p50": ratio_p50,
        "ratio_p99": ratio_p99,
        "ratio_vs_separate_queue_floor": {
            "p50": ratio(latency_ms, separate_ms, "p50"),
            "p99": ratio(latency_ms, separate_ms, "p99"),
        },
        "goal": {"ratio_p50": GOAL_P50_RATIO, "ratio_p99": GOAL_P99_RATIO},
        "goal_met": {
            "p50": ratio_p50 is not None and ratio_p50 <= GOAL_P50_RATIO,
            "p99": ratio_p99 is not None and ratio_p99 <= GOAL_P99_RATIO,
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Start everything, measure, print one JSON object."""
    args = parse_args(argv)

    async def go() -> dict[str, Any]:
        environment = (
            bench_env(simulator=args.simulator)
            if args.worker_in_process
            else process_env(simulator=args.simulator, calls_per_second=1000, api_in_process=True)
        )
        async with environment as env:
            result = await measure(
                env,
                leads=args.leads,
                cap=args.cap,
                talk_seconds=args.talk_seconds,
                floor_samples=args.floor_samples,
            )
        worker = "this process, beside the API" if args.worker_in_process else "its own process"
        return {**result, "worker": worker, "machine": machine()}

    run_main(go)


if __name__ == "__main__":
    main()
