"""Slot utilisation: how much of a business's line capacity is spent in calls while leads wait.

One business, `--cap` lines, every call answered and lasting `--talk-seconds` with no ringing, so a
line is busy exactly from its create-call request to the call's end. From the simulator's records:

    utilisation = busy line-seconds / (cap x wall)

busy line-seconds = sum over calls of (ended_at - created_at); wall = first create to last end. The
limit is 1.0; what is lost is the time a line sits free between one call's end and the next create
(the next-dial latency, see `bench.latency`) plus the ramp-up and the tail of the run.

`--plot PATH` draws the lines in use over time against the cap (PNG, from the same records).

    .venv/bin/python -m bench.utilisation [--leads 300] [--cap 3] [--talk-seconds 2] [--plot PATH] [--quick]
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.common import (
    BenchEnv,
    add_env_arguments,
    bench_env,
    configure_simulator,
    log,
    machine,
    run_main,
    run_to_end,
    sim_calls,
)
from bench.plots import plot_business

GOAL = 0.97


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; `--quick` shrinks the run to a few seconds."""
    parser = argparse.ArgumentParser(prog="python -m bench.utilisation", description=__doc__)
    parser.add_argument("--leads", type=int, default=300)
    parser.add_argument("--cap", type=int, default=3)
    parser.add_argument("--talk-seconds", type=float, default=2.0)
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of lines in use over time")
    add_env_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.leads, args.talk_seconds = 30, 0.3
    return args


async def measure(
    env: BenchEnv, *, leads: int, cap: int, talk_seconds: float, plot: str | None = None
) -> dict[str, Any]:
    """Run `leads` answered calls of `talk_seconds` on `cap` lines and report the utilisation."""
    await configure_simulator(env, ring_seconds=(0.0, 0.0), talk_seconds=(talk_seconds, talk_seconds))
    # The ideal wall is leads x talk / cap; allow four times that plus start-up before giving up.
    run = await run_to_end(env, cap=cap, leads=leads, within=60 + 4 * leads * talk_seconds / cap)
    calls = await sim_calls(env, run.business.caller_id)
    ended = [c for c in calls if c["ended_at"] is not None]
    if len(ended) != len(calls) or not calls:
        raise RuntimeError(f"{len(calls) - len(ended)} of {len(calls)} calls have not ended")
    intervals = sorted((c["created_at"], c["ended_at"]) for c in calls)
    busy = sum(end - start for start, end in intervals)
    first_create = intervals[0][0]
    last_create = intervals[-1][0]
    last_end = max(end for _, end in intervals)
    wall = last_end - first_create
    utilisation = busy / (cap * wall)

    # The same ratio over the window in which some lead was still waiting to be dialed (first to last
    # create): the tail, where lines fall idle because no lead is left, is the run ending, not waste.
    window = last_create - first_create
    busy_in_window = sum(max(0.0, min(end, last_create) - start) for start, end in intervals)
    while_waiting = busy_in_window / (cap * window) if window > 0 else None

    log.info("utilisation %.4f over %.1fs wall, %d calls", utilisation, wall, len(calls))
    if plot:
        title = (
            f"1 business, cap {cap}, {len(calls)} calls of {talk_seconds:g} s: utilisation {utilisation:.4f}"
        )
        plot_business(intervals, cap, plot, title)
    return {
        "bench": "utilisation",
        "leads": leads,
        "cap": cap,
        "calls": len(calls),
        "talk_seconds": talk_seconds,
        "ring_seconds": 0.0,
        "simulator": env.simulator,
        "run_status": run.result.get("status"),
        "wall_seconds": round(wall, 3),
        "busy_line_seconds": round(busy, 3),
        "ideal_wall_seconds": round(busy / cap, 3),
        "utilisation": round(utilisation, 4),
        "utilisation_while_leads_wait": round(while_waiting, 4) if while_waiting is not None else None,
        # Line-time lost per call: (cap x wall - busy) / calls.
        "idle_ms_per_call": round(1000 * (cap * wall - busy) / len(calls), 1),
        "mean_call_seconds": round(busy / len(calls), 3),
        "goal": GOAL,
        "goal_met": utilisation >= GOAL,
        "shortfall": round(max(0.0, GOAL - utilisation), 4),
        # CPU of this process (API and worker; the simulator too when inline) while the run lasted.
        "bench_process_cpu_seconds_per_1000_calls": round(1000 * run.cpu_seconds / len(calls), 2),
        **({"plot": plot} if plot else {}),
    }


def main(argv: list[str] | None = None) -> None:
    """Start everything, measure, print one JSON object."""
    args = parse_args(argv)

    async def go() -> dict[str, Any]:
        async with bench_env(simulator=args.simulator) as env:
            result = await measure(
                env, leads=args.leads, cap=args.cap, talk_seconds=args.talk_seconds, plot=args.plot
            )
        return {**result, "machine": machine()}

    run_main(go)


if __name__ == "__main__":
    main()
