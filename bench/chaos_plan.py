"""The chaos run's plan, drawn from the seed before anything starts: the scenario, the carrier's
misbehaviour, the businesses, runs and leads, and the schedule of faults."""

from __future__ import annotations

import random
import signal
from dataclasses import dataclass, replace
from typing import Any

import phonenumbers

from support.drive import ALWAYS_OPEN

CAPS = (1, 2, 3)
AREA_CODES = ("212", "312", "415", "646", "718")
# Reconciliation within seconds: a call whose last callback was lost is fetched after ring
# timeout (or time limit, once answered) + margin, so a lost callback holds a line ~10-20 s.
CALL_TIME_LIMIT_SECONDS = 10
RUN_OPTIONS: dict[str, Any] = {
    "calling_window": ALWAYS_OPEN,
    "ring_timeout_seconds": 5,
    "call_time_limit_seconds": CALL_TIME_LIMIT_SECONDS,
    "reconcile_margin_seconds": 5,
}
CARRIER: dict[str, Any] = {
    "ring_seconds": (0.1, 1.0),
    "talk_seconds": (0.3, 1.5),
    "outcome_weights": {"completed": 0.6, "busy": 0.15, "no-answer": 0.2, "failed": 0.05},
    "drop_callback_rate": 0.03,
    "duplicate_callback_rate": 0.15,
    "reorder_callback_rate": 0.15,
    "create_429_rate": 0.08,
    "retry_after_seconds": 0.5,
    "create_5xx_rate": 0.04,
    "create_5xx_after_create_rate": 0.06,
    # Failed callbacks are retried as the callback URL's connection overrides ask (#rc=5&rp=ct,rt,5xx):
    # after 0.25, 0.5, 1, 2 and 4 s.
    "callback_retry_backoff_seconds": 0.25,
    "callback_timeout_seconds": 5.0,
}
PROCESS_FAULTS = ("worker_kill", "api_restart", "temporal_restart")
OPERATOR_FAULTS = ("gate_terminate", "gate_reset", "run_terminate", "run_reset", "pause_resume")
DATABASE_FAULTS = ("db_outage",)
FAULT_KINDS = PROCESS_FAULTS + OPERATOR_FAULTS + DATABASE_FAULTS
# How often each kind comes, once every kind has come once.
FAULT_WEIGHT = {
    "worker_kill": 0.4,
    "api_restart": 0.3,
    "temporal_restart": 0.3,
    "gate_terminate": 0.1,
    "gate_reset": 0.1,
    "run_terminate": 0.08,
    "run_reset": 0.1,
    "pause_resume": 0.15,
    "db_outage": 0.15,
}
PROCESS_OF = {"worker_kill": "worker", "api_restart": "api", "temporal_restart": "temporal"}
CALLS_PER_SECOND = 20.0
SAMPLE_EVERY_SECONDS = 0.5
PROCESS_UP_WITHIN = 60.0
WORKFLOW_CLOSES_WITHIN = 30.0


@dataclass(frozen=True)
class Scenario:
    """How big the run is, how long faults go on, and the seed that fixes every random choice."""

    businesses: int = 4
    runs_per_business: int = 3
    leads_per_run: int = 20
    seconds: float = 90.0
    fault_gap_seconds: float = 7.0
    cancels: int = 2
    seed: int = 1
    recover_within: float = 300.0
    # Far below the server's default (4096 events), so runs and gates continue as new under fire.
    suggest_continue_as_new_after: int = 100
    # What an operator does in the Web UI, and database outages, besides the process faults.
    operator: bool = True
    db_outages: bool = True
    # Every business's line cap; 0 gives them 1, 2 and 3 in turn.
    cap: int = 0

    @property
    def fault_kinds(self) -> tuple[str, ...]:
        return (
            PROCESS_FAULTS
            + (OPERATOR_FAULTS if self.operator else ())
            + (DATABASE_FAULTS if self.db_outages else ())
        )

    def command(self) -> str:
        """The command line that repeats this scenario."""
        return (
            f"python -m bench.chaos --seed {self.seed} --businesses {self.businesses} "
            f"--runs-per-business {self.runs_per_business} --leads-per-run {self.leads_per_run} "
            f"--seconds {self.seconds:g} --fault-gap {self.fault_gap_seconds:g} --cancels {self.cancels} "
            f"--cap {self.cap}"
            + ("" if self.operator else " --no-operator")
            + ("" if self.db_outages else " --no-db-outages")
        )


# `make test`'s version: 36 leads, about 15 s of the process faults, at least one of each kind
# (the operator's actions and database outages are in the full run).
SHORT = Scenario(
    businesses=3,
    runs_per_business=2,
    leads_per_run=6,
    seconds=15.0,
    fault_gap_seconds=4.0,
    cancels=1,
    operator=False,
    db_outages=False,
)


# The plan, drawn from the seed before anything starts


@dataclass(frozen=True)
class PlannedRun:
    business: int
    start_at: float  # seconds after the faults begin
    phones: list[str]
    cancel_at: float | None = None  # cancel at this moment, once a fifth of the leads were called


@dataclass(frozen=True)
class PlannedFault:
    at: float
    kind: str
    how: signal.Signals
    down_seconds: float
    # Which business or live run an operator's action picks: this fraction into the list.
    pick: float = 0.0


@dataclass(frozen=True)
class Plan:
    caller_ids: list[str]
    caps: list[int]
    runs: list[PlannedRun]
    faults: list[PlannedFault]


def numbers(rng: random.Random, count: int, taken: set[str]) -> list[str]:
    """`count` valid US numbers not in `taken` (which grows)."""
    found: list[str] = []
    while len(found) < count:
        candidate = f"+1{rng.choice(AREA_CODES)}{rng.randint(2000000, 9999999)}"
        if candidate not in taken and phonenumbers.is_valid_number(phonenumbers.parse(candidate)):
            taken.add(candidate)
            found.append(candidate)
    return found


def plan(scenario: Scenario) -> Plan:
    """Businesses, runs (the first of each business at once, the rest during the first 60% of the
    fault window), which runs to cancel, and the faults: the first three are one of each kind in a
    random order, the rest random kinds, `fault_gap_seconds` apart on average."""
    rng = random.Random(scenario.seed)
    taken: set[str] = set()
    caller_ids = numbers(rng, scenario.businesses, taken)
    caps = [scenario.cap or CAPS[i % len(CAPS)] for i in range(scenario.businesses)]
    runs = []
    for business in range(scenario.businesses):
        for n in range(scenario.runs_per_business):
            start_at = 0.0 if n == 0 else round(rng.uniform(0, 0.6 * scenario.seconds), 2)
            runs.append(PlannedRun(business, start_at, numbers(rng, scenario.leads_per_run, taken)))
    # Cancel first runs of the narrowest businesses: they dial from the start (a business's later
    # runs may wait for its lines) and are still dialing mid-way.
    firsts = sorted((i for i, r in enumerate(runs) if r.start_at == 0), key=lambda i: caps[runs[i].business])
    pool = firsts[: max(scenario.cancels, (len(firsts) + 1) // 2)]
    for i in rng.sample(pool, min(scenario.cancels, len(pool))):
        cancel_at = max(runs[i].start_at, round(rng.uniform(0.1, 0.35) * scenario.seconds, 2))
        runs[i] = replace(runs[i], cancel_at=cancel_at)

    all_kinds = scenario.fault_kinds
    kinds = list(all_kinds)
    rng.shuffle(kinds)
    faults: list[PlannedFault] = []
    at = 0.0
    while True:
        at += rng.uniform(0.5, 1.5) * scenario.fault_gap_seconds
        if at > scenario.seconds and len(faults) >= len(all_kinds):
            break
        if len(faults) < len(kinds):
            kind = kinds[len(faults)]
        else:
            kind = rng.choices(all_kinds, [FAULT_WEIGHT[k] for k in all_kinds])[0]
        pick = round(rng.random(), 3)
        if kind == "worker_kill":
            fault = PlannedFault(round(at, 2), kind, signal.SIGKILL, round(rng.uniform(0, 1), 2))
        elif kind == "api_restart":
            how = rng.choice((signal.SIGKILL, signal.SIGTERM))
            fault = PlannedFault(round(at, 2), kind, how, round(rng.uniform(0, 1.5), 2))
        elif kind == "temporal_restart":
            fault = PlannedFault(round(at, 2), kind, signal.SIGKILL, round(rng.uniform(0.5, 3), 2))
        else:
            fault = PlannedFault(round(at, 2), kind, signal.SIGTERM, round(rng.uniform(2, 6), 2), pick)
        faults.append(fault)
    return Plan(caller_ids, caps, runs, faults)


@dataclass
class FaultDone:
    at: float
    kind: str
    signal: str
    down_seconds: float
    back_after_seconds: float
    worker_polling_after_seconds: float | None = None
