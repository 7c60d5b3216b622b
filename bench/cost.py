"""History events and Temporal Cloud billable actions per call attempt.

One run of `--leads` short calls on `--cap` lines. Afterwards the run workflow's history (every
execution, following continue-as-new) and the business gate's history are fetched and counted by
event type.

Billable actions are estimated from history events after Temporal Cloud's published list
(docs.temporal.io/cloud/actions), one per:

- WorkflowExecutionStarted (client start, continue-as-new; a signal-with-start that starts the gate
  is billed as one action in all, but is counted here as two: the start and its signal)
- ActivityTaskStarted, times its `attempt` (each start or retry of an activity is one action)
- TimerStarted (including timers behind `wait_condition(timeout=...)`)
- UpsertWorkflowSearchAttributes
- WorkflowExecutionSignaled (each signal once, where it is received: from the API's webhook
  handler, from the gate, from a run. SignalExternalWorkflowExecutionInitiated is the sending side
  of the same signal and is not counted again)
- MarkerRecorded, once per workflow task that records any (side effects, local activities)
- StartChildWorkflowExecutionInitiated (two), WorkflowExecutionOptionsUpdated, NexusOperationScheduled
  and NexusOperationCancelRequested (one each)

Not in any history and so not counted: queries (every `GET /v1/runs/{id}` of a live run is one),
activity heartbeats (the product sends none). Workflow tasks, activity scheduled/completed events,
timer fired and the close event are history but not billed.

"Per attempt" is given two ways: over the whole run (start-up and finish included), and in steady
state, counting only the events between the dial that follows the first line freed and the last
dial, divided by the dials in that window.

    .venv/bin/python -m bench.cost [--leads 60] [--cap 3] [--talk-seconds 0.3] [--outcome completed|mixed] [--quick]
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Iterable
from typing import Any, Literal

from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory

from bench.common import (
    BenchEnv,
    add_env_arguments,
    bench_env,
    configure_simulator,
    event_type,
    log,
    machine,
    payload_json,
    run_main,
    run_to_end,
    sim_calls,
)
from contracts.names import gate_workflow_id, run_workflow_id
from support.drive import execution_chain

GOAL_EVENTS = 12
GOAL_ACTIONS = 4

# One action per event of these types.
ONE_ACTION = {
    "WorkflowExecutionStarted": "workflow_started",
    "TimerStarted": "timer_started",
    "UpsertWorkflowSearchAttributes": "search_attribute_upsert",
    "WorkflowExecutionSignaled": "signal",
    "WorkflowExecutionOptionsUpdated": "workflow_options_updated",
    "NexusOperationScheduled": "nexus_operation",
    "NexusOperationCancelRequested": "nexus_operation",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; `--quick` shrinks the run to a few seconds."""
    parser = argparse.ArgumentParser(prog="python -m bench.cost", description=__doc__)
    parser.add_argument("--leads", type=int, default=60)
    parser.add_argument("--cap", type=int, default=3)
    parser.add_argument("--talk-seconds", type=float, default=0.3)
    parser.add_argument(
        "--ring-seconds",
        type=float,
        default=0.0,
        help="how long each call rings before it is answered (0: the answer comes with the create)",
    )
    parser.add_argument(
        "--outcome",
        choices=("completed", "mixed"),
        default="completed",
        help="completed: every call answered (two callbacks per call); mixed: the simulator's default spread",
    )
    add_env_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.leads = 30
    return args


def actions(events: Iterable[HistoryEvent]) -> Counter[str]:
    """Billable actions by kind, estimated from history events as the module docstring says."""
    counts: Counter[str] = Counter()
    marker_tasks: set[int] = set()
    for event in events:
        kind = event_type(event)
        if kind in ONE_ACTION:
            counts[ONE_ACTION[kind]] += 1
        elif kind == "ActivityTaskStarted":
            counts["activity_attempt"] += event.activity_task_started_event_attributes.attempt
        elif kind == "StartChildWorkflowExecutionInitiated":
            counts["child_workflow"] += 2
        elif kind == "MarkerRecorded":
            marker_tasks.add(event.marker_recorded_event_attributes.workflow_task_completed_event_id)
    if marker_tasks:
        counts["markers"] = len(marker_tasks)
    return counts


def _per(counter: Counter[str], attempts: int) -> dict[str, float]:
    return {key: round(value / attempts, 2) for key, value in sorted(counter.items())}


def describe(histories: list[WorkflowHistory], attempts: int) -> dict[str, Any]:
    """Events and actions of a workflow's executions: totals, by type, and per attempt."""
    events = [event for history in histories for event in history.events]
    by_type = Counter(event_type(e) for e in events)
    billed = actions(events)
    activities = Counter(
        e.activity_task_scheduled_event_attributes.activity_type.name
        for e in events
        if event_type(e) == "ActivityTaskScheduled"
    )
    signals = Counter(
        e.workflow_execution_signaled_event_attributes.signal_name
        for e in events
        if event_type(e) == "WorkflowExecutionSignaled"
    )
    sent = Counter(
        e.signal_external_workflow_execution_initiated_event_attributes.signal_name
        for e in events
        if event_type(e) == "SignalExternalWorkflowExecutionInitiated"
    )
    total_actions = sum(billed.values())
    return {
        "executions": len(histories),
        "events": len(events),
        "events_per_attempt": round(len(events) / attempts, 2),
        "events_by_type": dict(by_type.most_common()),
        "events_by_type_per_attempt": _per(by_type, attempts),
        "activities_scheduled": dict(activities.most_common()),
        "signals_received": dict(signals.most_common()),
        "signals_sent": dict(sent.most_common()),
        "actions": total_actions,
        "actions_per_attempt": round(total_actions / attempts, 2),
        "actions_by_kind": dict(billed.most_common()),
    }


def steady_state(histories: list[WorkflowHistory], cap: int) -> dict[str, Any]:
    """Events and actions per dial between the (cap+1)-th dial and the last one: each dial in that
    window follows a line freed by a finished call, which is the per-call cycle that repeats."""
    events = [event for history in histories for event in history.events]
    dials = [
        i
        for i, e in enumerate(events)
        if event_type(e) == "ActivityTaskScheduled"
        and e.activity_task_scheduled_event_attributes.activity_type.name == "place_call"
    ]
    if len(dials) <= cap:
        return {"dials": 0}
    window = events[dials[cap - 1] + 1 : dials[-1] + 1]
    cycles = len(dials) - cap
    by_type = Counter(event_type(e) for e in window)
    billed = actions(window)
    # Outcome writes are batched: how many calls each record_outcomes carried, on average.
    batches = [
        len(payload_json(e.activity_task_scheduled_event_attributes.input).get("outcomes", []))
        for e in events
        if event_type(e) == "ActivityTaskScheduled"
        and e.activity_task_scheduled_event_attributes.activity_type.name == "record_outcomes"
    ]
    return {
        "dials": cycles,
        "events_per_attempt": round(len(window) / cycles, 2),
        "events_by_type_per_attempt": _per(by_type, cycles),
        "actions_per_attempt": round(sum(billed.values()) / cycles, 2),
        "actions_by_kind_per_attempt": _per(billed, cycles),
        "outcomes_per_record_outcomes": round(sum(batches) / len(batches), 2) if batches else None,
    }


async def measure(
    env: BenchEnv,
    *,
    leads: int,
    cap: int,
    talk_seconds: float,
    ring_seconds: float = 0.0,
    outcome: Literal["completed", "mixed"] = "completed",
) -> dict[str, Any]:
    """Run `leads` short calls and count the run's and the gate's history events and actions."""
    await configure_simulator(
        env,
        ring_seconds=(ring_seconds, ring_seconds),
        talk_seconds=(talk_seconds, talk_seconds),
        outcome=outcome,
    )
    call_seconds = ring_seconds + talk_seconds
    run = await run_to_end(env, cap=cap, leads=leads, within=60 + 4 * leads * call_seconds / cap)
    calls = await sim_calls(env, run.business.caller_id)
    run_histories = await execution_chain(env.client, run_workflow_id(run.run_id))
    gate_histories = await execution_chain(env.client, gate_workflow_id(run.business.id))
    attempts = sum(
        1
        for h in run_histories
        for e in h.events
        if event_type(e) == "ActivityTaskScheduled"
        and e.activity_task_scheduled_event_attributes.activity_type.name == "place_call"
    )
    run_part = describe(run_histories, attempts)
    gate_part = describe(gate_histories, attempts)
    steady = steady_state(run_histories, cap)
    system_events = (run_part["events"] + gate_part["events"]) / attempts
    system_actions = (run_part["actions"] + gate_part["actions"]) / attempts
    log.info("%d attempts: %.1f events and %.2f actions per attempt", attempts, system_events, system_actions)
    return {
        "bench": "cost",
        "leads": leads,
        "cap": cap,
        "talk_seconds": talk_seconds,
        "ring_seconds": ring_seconds,
        "outcome": outcome,
        "simulator": env.simulator,
        "run_status": run.result.get("status"),
        "attempts": attempts,
        "calls_at_carrier": len(calls),
        "run_workflow": run_part,
        "gate_workflow": gate_part,
        "run_steady_state": steady,
        "system_per_attempt": {
            "events": round(system_events, 2),
            "actions": round(system_actions, 2),
        },
        "goal": {"events_per_attempt": GOAL_EVENTS, "actions_per_attempt": GOAL_ACTIONS},
        "goal_met": {
            "events_run_workflow": run_part["events_per_attempt"] <= GOAL_EVENTS,
            "events_steady_state": steady.get("events_per_attempt", GOAL_EVENTS + 1) <= GOAL_EVENTS,
            "actions_system": system_actions <= GOAL_ACTIONS,
            "actions_steady_state": steady.get("actions_per_attempt", GOAL_ACTIONS + 1) <= GOAL_ACTIONS,
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Start everything, measure, print one JSON object."""
    args = parse_args(argv)

    async def go() -> dict[str, Any]:
        async with bench_env(simulator=args.simulator) as env:
            result = await measure(
                env,
                leads=args.leads,
                cap=args.cap,
                talk_seconds=args.talk_seconds,
                ring_seconds=args.ring_seconds,
                outcome=args.outcome,
            )
        return {**result, "machine": machine()}

    run_main(go)


if __name__ == "__main__":
    main()
