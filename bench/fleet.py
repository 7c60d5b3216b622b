"""Fleet throughput: many businesses dialing at once, and which process runs out of CPU first.

`--businesses` businesses (200) with `--cap` lines each (3), one run each of `--leads-per-business`
leads (20), every call answered at once (`ring_seconds` 0) and lasting exactly `--talk-seconds` (2),
with the call rate limit lifted (`TWILIO_CALLS_PER_SECOND` 10000). If nothing else held it back the
fleet would place

    ideal calls per second = businesses x cap / talk_seconds      (300 for the defaults)

The API (`python -m api`) and the worker (`python worker.py`) run as processes of their own
(`bench.processes`), next to the Temporal dev server and the simulator; every run is started through
the API at once (16 requests in flight) after all businesses exist.

Achieved rate: from the simulator's call records, the creates between the 20th and the 80th
percentile of create time (the middle 60%: ramp-up and tail left out) divided by the time between
those two creates (cross-checked by Little's law: mean lines in use / mean call length, which
creates that come in bursts cannot skew). Where a window exists in which every business is dialing
(from the last business's first create to the first business's last create) and it spans at least
two call lengths, its rate is reported too. Lines in use in a window = busy line-seconds inside it
/ its length, against businesses x cap.

Per business: utilisation = busy line-seconds / (cap x (last end - first create)), as in
`bench.utilisation`, summarised over businesses (min, p10, p50, mean, max), and the most lines it had
in use at once (never above its cap: invariant I1).

CPU: utime + stime from /proc for the worker, the API, the dev server, the simulator and this
process, sampled every 0.5 s and interpolated to the window's ends; reported as CPU seconds per 1000
calls (creates in the window) and utilisation = CPU seconds / wall seconds. A Python process is
limited to about one core (one event loop holding the GIL; the worker's Rust core threads can add a
little on top), the Go dev server to all of the machine's cores: `saturates_first` is the process
with the highest utilisation as a share of that limit. `machine_utilisation` is how busy all cores
were (anything else running on the machine included); at 0.9 or more (`machine_saturated`) the
processes are competing for the machine's cores, and the machine is the limit before any one of them
reaches its own.

    .venv/bin/python -m bench.fleet [--businesses 200] [--leads-per-business 20] [--cap 3]
                                    [--talk-seconds 2] [--plot fleet.png] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from bench.common import add_env_arguments, configure_simulator, log, machine, run_main
from bench.plots import Interval, intervals_of, plot_fleet
from bench.processes import ProcessEnv, Sampler, process_env
from contracts.names import run_workflow_id
from support.drive import Business, new_number, overlap_peak

CALLS_PER_SECOND_LIMIT = 10_000
STARTS_IN_FLIGHT = 16
MIDDLE = (0.2, 0.8)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line flags; `--quick` is 20 businesses x 6 leads."""
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--businesses", type=int, default=200)
    parser.add_argument("--leads-per-business", type=int, default=20)
    parser.add_argument("--cap", type=int, default=3)
    parser.add_argument("--talk-seconds", type=float, default=2.0)
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of lines in use over time")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes on the same task queues (the split is reported)",
    )
    add_env_arguments(parser)
    args = parser.parse_args(argv)
    if args.quick:
        args.businesses, args.leads_per_business = 20, 6
    return args


def worker_split(cpu: dict[str, Any]) -> dict[str, float]:
    """Each worker process's share of the workers' CPU: how the task queues spread the load."""
    used = {name: p["cpu_seconds"] for name, p in cpu["processes"].items() if name.startswith("worker")}
    total = sum(used.values()) or 1.0
    return {name: round(seconds / total, 3) for name, seconds in used.items()}


def spread(values: Sequence[float], digits: int = 4) -> dict[str, float | int]:
    """Count, min, p10, p50, mean and max (nearest rank), rounded."""
    ordered = sorted(values)
    if not ordered:
        return {"count": 0}

    def rank(q: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    return {
        "count": len(ordered),
        "min": round(ordered[0], digits),
        "p10": round(rank(0.10), digits),
        "p50": round(rank(0.50), digits),
        "mean": round(sum(ordered) / len(ordered), digits),
        "max": round(ordered[-1], digits),
    }


def busy_inside(intervals: Sequence[Interval], start: float, end: float) -> float:
    """Line-seconds of the intervals that fall inside [start, end]."""
    return sum(max(0.0, min(e, end) - max(s, start)) for s, e in intervals)


def window_report(
    creates: Sequence[float],
    intervals: Sequence[Interval],
    start: float,
    end: float,
    lines: int,
    ideal: float,
) -> dict[str, Any]:
    """Creates per second in [start, end], and lines in use there, against the ideal."""
    count = sum(1 for t in creates if start <= t <= end)
    seconds = end - start
    # Both ends are creates: count - 1 gaps between them.
    rate = (count - 1) / seconds if seconds > 0 and count > 1 else None
    in_use = busy_inside(intervals, start, end) / seconds if seconds > 0 else None
    mean_call = sum(e - s for s, e in intervals) / len(intervals)
    # Little's law, a cross-check that creates arriving in bursts cannot skew: calls per second =
    # mean lines in use / mean call length.
    by_lines = in_use / mean_call if in_use is not None and mean_call > 0 else None
    return {
        "seconds": round(seconds, 3),
        "creates": count,
        "calls_per_second": round(rate, 2) if rate is not None else None,
        "ratio_to_ideal": round(rate / ideal, 4) if rate is not None else None,
        "mean_lines_in_use": round(in_use, 2) if in_use is not None else None,
        "lines": lines,
        "calls_per_second_from_lines_in_use": round(by_lines, 2) if by_lines is not None else None,
    }


async def create_businesses(env: ProcessEnv, count: int, cap: int) -> list[Business]:
    """`count` businesses through the API, a few requests at a time."""
    gate = asyncio.Semaphore(8)

    async def one() -> Business:
        async with gate:
            return await env.stack.create_business(cap=cap)

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def measure(
    env: ProcessEnv,
    *,
    businesses: int,
    leads_per_business: int,
    cap: int,
    talk_seconds: float,
    plot: str | None = None,
) -> dict[str, Any]:
    """Start one run per business at once, wait for all of them, and report throughput and CPU."""
    await configure_simulator(env, ring_seconds=(0.0, 0.0), talk_seconds=(talk_seconds, talk_seconds))
    fleet = await create_businesses(env, businesses, cap)
    phones = {b.id: [new_number() for _ in range(leads_per_business)] for b in fleet}
    ideal = businesses * cap / talk_seconds
    ideal_seconds = math.ceil(leads_per_business / cap) * talk_seconds
    within = 180 + 10 * ideal_seconds + businesses
    log.info(
        "%d businesses x %d leads, cap %d, %.2fs calls: ideal %.1f calls/s",
        businesses,
        leads_per_business,
        cap,
        talk_seconds,
        ideal,
    )

    starts = asyncio.Semaphore(STARTS_IN_FLIGHT)
    started_at: dict[str, float] = {}

    async def run_one(business: Business) -> Any:
        async with starts:
            run_id = await env.stack.start_run(business, phones[business.id])
            started_at[business.id] = time.time()
        return await env.client.get_workflow_handle(run_workflow_id(run_id)).result()

    sampler = Sampler(env.watched(), interval=0.5)
    async with sampler:
        first_start = time.time()
        tasks = [asyncio.create_task(run_one(b)) for b in fleet]
        done, pending = await asyncio.wait(tasks, timeout=within)
        finished = time.time()
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    log.info("runs ended in %.1fs (%d still running when given up)", finished - first_start, len(pending))

    statuses = _run_statuses(done, pending)
    calls = (await env.stack.sim.get("/_sim/calls")).json()["calls"]
    by_business, unended = _calls_by_business(calls, fleet)
    every = sorted(span for spans in by_business.values() for span in spans)
    if not every:
        raise RuntimeError("no call ended")
    low, high, steady, all_active, whole = _windows(every, by_business, businesses * cap, talk_seconds, ideal)

    utilisations, while_waiting, peaks = _per_business(by_business, cap)
    steady_cpu = sampler.cpu_report(low, high, steady["creates"])

    result: dict[str, Any] = {
        "bench": "fleet",
        "businesses": businesses,
        "leads_per_business": leads_per_business,
        "cap": cap,
        "talk_seconds": talk_seconds,
        "ring_seconds": 0.0,
        "calls_per_second_limit": CALLS_PER_SECOND_LIMIT,
        "simulator": env.simulator,
        "runs": dict(statuses),
        "calls": len(every) + unended,
        "calls_not_ended": unended,
        "expected_calls": businesses * leads_per_business,
        "ideal_calls_per_second": round(ideal, 2),
        "steady_window": {"how": "creates between the 20th and 80th percentile of create time", **steady},
        "all_businesses_dialing_window": all_active,
        "whole_run": whole,
        "run_starts_spread_seconds": round(max(started_at.values()) - min(started_at.values()), 3)
        if started_at
        else None,
        "seconds_from_first_start_to_last_run_end": round(finished - first_start, 3),
        "per_business_utilisation": spread(utilisations),
        "per_business_utilisation_while_leads_wait": spread(while_waiting),
        "per_business_peak_lines": max(peaks, default=0),
        "businesses_over_cap": sum(1 for p in peaks if p > cap),
        "cpu_steady_window": steady_cpu,
        "worker_split": worker_split(steady_cpu),
        "cpu_whole_run": sampler.cpu_report(first_start, finished, len(every)),
        "rss_mib_at_end": {
            w.name: round((sampler.rss_at(w.name, finished) or 0) / 2**20, 1) for w in sampler.watched
        },
        "process_logs": env.log_summaries(),
    }
    if plot:
        plot_fleet(
            {b.id: intervals_of([c for c in calls if c["from"] == b.caller_id]) for b in fleet},
            cap,
            plot,
            f"{businesses} businesses x cap {cap}, {talk_seconds:g} s calls: "
            f"{steady['calls_per_second']} calls/s of {ideal:g} ideal",
            window=(low, high),
        )
        result["plot"] = plot
    log.info(
        "steady %.1f calls/s (%.0f%% of %.0f); busiest: %s",
        steady["calls_per_second"] or 0,
        100 * (steady["ratio_to_ideal"] or 0),
        ideal,
        result["cpu_steady_window"]["saturates_first"],
    )
    return result


def _windows(
    every: list[Interval],
    by_business: dict[str, list[Interval]],
    lines: int,
    talk_seconds: float,
    ideal: float,
) -> tuple[float, float, dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """Throughput in three windows: the middle 60% of creates (steady), while every business was
    dialing, and the whole run."""
    creates = [start for start, _ in every]

    # The middle 60% of creates.
    low = creates[round(MIDDLE[0] * (len(creates) - 1))]
    high = creates[round(MIDDLE[1] * (len(creates) - 1))]
    steady = window_report(creates, every, low, high, lines, ideal)
    steady["start_offset_seconds"] = round(low - creates[0], 3)

    # Every business dialing: from the last first-create to the first last-create.
    firsts = [spans[0][0] for spans in by_business.values() if spans]
    lasts = [spans[-1][0] for spans in by_business.values() if spans]
    all_active = None
    # Only worth a number when it spans a couple of call lengths: between two waves of creates it
    # would count next to none.
    if len(firsts) == len(by_business) and min(lasts) - max(firsts) >= 2 * talk_seconds:
        all_active = window_report(creates, every, max(firsts), min(lasts), lines, ideal)

    last_end = max(end for _, end in every)
    whole = window_report(creates, every, creates[0], last_end, lines, ideal)
    return low, high, steady, all_active, whole


def _run_statuses(done: set[asyncio.Task[Any]], pending: set[asyncio.Task[Any]]) -> Counter[str]:
    """How the runs ended, as their workflows' results say."""
    statuses: Counter[str] = Counter({"not ended in time": len(pending)} if pending else {})
    for task in done:
        error = task.exception()
        if error is not None:
            statuses[f"error: {type(error).__name__}"] += 1
            log.warning("a run did not end well: %r", error)
        else:
            outcome = task.result()
            statuses[str(outcome.get("status") if isinstance(outcome, dict) else outcome)] += 1
    return statuses


def _calls_by_business(
    calls: list[dict[str, Any]], fleet: list[Business]
) -> tuple[dict[str, list[Interval]], int]:
    """Each business's ended calls, as (created, ended) spans, and how many calls had not ended."""
    callers = {b.caller_id: b for b in fleet}
    by_business: dict[str, list[Interval]] = {b.id: [] for b in fleet}
    unended = 0
    for call in calls:
        business = callers.get(call["from"])
        if business is None:
            continue
        if call["ended_at"] is None:
            unended += 1
        else:
            by_business[business.id].append((call["created_at"], call["ended_at"]))
    return by_business, unended


def _per_business(
    by_business: dict[str, list[Interval]], cap: int
) -> tuple[list[float], list[float], list[int]]:
    """Each business's use of its lines: over its whole run, while it still had leads waiting, and
    its peak of calls at once."""
    utilisations: list[float] = []
    while_waiting: list[float] = []
    peaks: list[int] = []
    for spans in by_business.values():
        if not spans:
            continue
        busy = sum(e - s for s, e in spans)
        wall = max(e for _, e in spans) - spans[0][0]
        utilisations.append(busy / (cap * wall) if wall > 0 else 0.0)
        waiting = spans[-1][0] - spans[0][0]
        if waiting > 0:
            while_waiting.append(busy_inside(spans, spans[0][0], spans[-1][0]) / (cap * waiting))
        peaks.append(overlap_peak(spans))
    return utilisations, while_waiting, peaks


def main(argv: list[str] | None = None) -> None:
    """Start everything (API and worker as processes), measure, print one JSON object."""
    args = parse_args(argv)

    async def go() -> dict[str, Any]:
        async with process_env(
            simulator=args.simulator, calls_per_second=CALLS_PER_SECOND_LIMIT, workers=args.workers
        ) as env:
            result = await measure(
                env,
                businesses=args.businesses,
                leads_per_business=args.leads_per_business,
                cap=args.cap,
                talk_seconds=args.talk_seconds,
                plot=args.plot,
            )
        return {**result, "machine": machine()}

    run_main(go)


if __name__ == "__main__":
    main()
