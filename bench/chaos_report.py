"""The chaos run's measures: when dialing resumed after each fault, and how long until every run
ended."""

from __future__ import annotations

from typing import Any

from bench.chaos_plan import FaultDone


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
