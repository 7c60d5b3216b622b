"""The chaos run's measures and report: faults by kind, recovery times, the invariants' verdicts."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.chaos_checks import Evidence
from bench.chaos_plan import PROCESS_OF, FaultDone, Scenario

if TYPE_CHECKING:
    from bench.chaos import Chaos


def create_times(stats: dict[str, Any], caller_ids: list[str]) -> list[float]:
    """When each create request from our businesses reached the carrier (placed or refused)."""
    return sorted(t for caller_id in caller_ids for t in stats["create_requests"].get(caller_id, []))


def first_after(times: list[float], moment: float) -> float | None:
    return next((t for t in times if t > moment), None)


def runs_live_at(timeline: list[dict[str, Any]], moment: float) -> int:
    return sum(
        1
        for r in timeline
        if r["created_at"] <= moment and (r["finished_at"] is None or r["finished_at"] > moment)
    )


def recovery(
    faults: list[FaultDone], timeline: list[dict[str, Any]], creates: list[float], t0: float
) -> dict[str, Any]:
    """Time from the last fault until every run ended; per dev-server restart, time until dialing
    resumed; per fault, time until the next create."""
    finished = [r["finished_at"] for r in timeline if r["finished_at"] is not None]
    all_ended = max(finished) if finished and len(finished) == len(timeline) else None
    last = max((f.at for f in faults), default=None)
    last_back = max((f.at + f.back_after_seconds for f in faults), default=None)
    restarts = []
    for f in faults:
        if f.kind != "temporal_restart":
            continue
        up = f.at + f.back_after_seconds
        resumed = first_after(creates, up)
        restarts.append(
            {
                "at_seconds": round(f.at - t0, 2),
                "down_seconds": f.back_after_seconds,
                "runs_live": runs_live_at(timeline, f.at),
                "worker_polling_again_after_seconds": f.worker_polling_after_seconds,
                "dialing_resumed_after_up_seconds": round(resumed - up, 3) if resumed else None,
                "dialing_resumed_after_kill_seconds": round(resumed - f.at, 3) if resumed else None,
            }
        )
    per_fault = []
    for f in faults:
        following = first_after(creates, f.at)
        per_fault.append(
            {
                "at_seconds": round(f.at - t0, 2),
                "kind": f.kind,
                "signal": f.signal,
                "down_seconds": f.down_seconds,
                "back_after_seconds": f.back_after_seconds,
                "runs_live": runs_live_at(timeline, f.at),
                "next_create_after_seconds": round(following - f.at, 3) if following else None,
            }
        )
    return {
        "last_fault_at_seconds": round(last - t0, 2) if last is not None else None,
        "all_runs_ended_at_seconds": round(all_ended - t0, 2) if all_ended is not None else None,
        "seconds_from_last_fault_to_all_runs_ended": round(all_ended - last, 2)
        if all_ended is not None and last is not None
        else None,
        "seconds_from_last_process_back_to_all_runs_ended": round(all_ended - last_back, 2)
        if all_ended is not None and last_back is not None
        else None,
        "runs_live_at_last_fault": runs_live_at(timeline, last) if last is not None else 0,
        # Work still ahead when the faults stopped: the wait above is for this, not only recovery.
        "creates_after_last_fault": sum(1 for t in creates if last is not None and t > last),
        "dev_server_restarts": restarts,
        "faults": per_fault,
    }


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
