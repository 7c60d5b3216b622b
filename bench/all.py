"""All three benchmarks in one environment (one dev server, database, simulator and stack), one
after another, printed as one JSON object: `{"utilisation": {...}, "latency": {...}, "cost": {...}}`.

    .venv/bin/python -m bench [--quick] [--simulator process|inline]
    .venv/bin/python -m bench.all [--quick]

`--quick` is the smoke variant (30 leads, 0.3 s calls, 20 floor samples; about half a minute in
all), meant for a test to call through `run_all(quick=True)`.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench import cost, latency, utilisation
from bench.common import SimulatorMode, add_env_arguments, bench_env, log, machine, run_main


async def run_all(*, quick: bool = False, simulator: SimulatorMode = "process") -> dict[str, Any]:
    """Run utilisation, latency and cost with their default (or `--quick`) settings."""
    flags = ["--quick"] if quick else []
    u = utilisation.parse_args(flags)
    la = latency.parse_args(flags)
    c = cost.parse_args(flags)
    started = time.monotonic()
    async with bench_env(simulator=simulator) as env:
        results = {
            "utilisation": await utilisation.measure(
                env, leads=u.leads, cap=u.cap, talk_seconds=u.talk_seconds
            ),
            "latency": await latency.measure(
                env,
                leads=la.leads,
                cap=la.cap,
                talk_seconds=la.talk_seconds,
                floor_samples=la.floor_samples,
            ),
            "cost": await cost.measure(
                env, leads=c.leads, cap=c.cap, talk_seconds=c.talk_seconds, outcome=c.outcome
            ),
        }
    log.info("all benchmarks done in %.0fs", time.monotonic() - started)
    return {**results, "quick": quick, "machine": machine()}


def main(argv: list[str] | None = None) -> None:
    """Parse flags, run everything, print one JSON object."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    add_env_arguments(parser)
    args = parser.parse_args(argv)
    run_main(lambda: run_all(quick=args.quick, simulator=args.simulator))


if __name__ == "__main__":
    main()
