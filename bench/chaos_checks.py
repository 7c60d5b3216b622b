"""The invariants of DESIGN.md section 4, checked after a chaos run from what the carrier recorded
(the simulator's calls: when each was created and ended, its final status, and the status-callback
URL that names its run, lead and attempt) and what the database and the API say.

Pure functions over `Evidence`, so they can be shown to fail on made-up records as well.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from contracts.statuses import (
    FINAL_ATTEMPT_STATUSES,
    OUTCOME_BY_CALL_STATUS,
    OUTCOMES,
    TERMINAL_CALL_STATUSES,
)

RUN_ENDINGS = ("completed", "cancelled", "failed")


@dataclass(frozen=True)
class CarrierCall:
    """A call as the simulator recorded it; `run`, `lead` and `attempt` come from its callback URL."""

    sid: str
    caller_id: str
    to: str
    status: str
    created_at: float
    ended_at: float | None
    duration: int | None
    run: str | None
    lead: int | None
    attempt: int | None

    @classmethod
    def from_summary(cls, summary: dict[str, Any]) -> CarrierCall:
        """From an entry of the simulator's `GET /_sim/calls`."""
        query = parse_qs(urlsplit(summary.get("status_callback") or "").query)

        def number(name: str) -> int | None:
            values = query.get(name)
            return int(values[0]) if values and values[0].isdigit() else None

        return cls(
            sid=summary["sid"],
            caller_id=summary["from"],
            to=summary["to"],
            status=summary["status"],
            created_at=summary["created_at"],
            ended_at=summary["ended_at"],
            duration=summary["duration"],
            run=query.get("run", [None])[0],
            lead=number("lead"),
            attempt=number("attempt"),
        )

    def brief(self) -> dict[str, Any]:
        return {
            "sid": self.sid,
            "run": self.run,
            "lead": self.lead,
            "attempt": self.attempt,
            "status": self.status,
            "created_at": round(self.created_at, 3),
            "ended_at": round(self.ended_at, 3) if self.ended_at is not None else None,
        }


@dataclass(frozen=True)
class AttemptRow:
    lead_id: int
    attempt: int
    call_sid: str | None
    status: str
    duration: int | None


@dataclass
class RunEvidence:
    """One run: its rows, what the API and Temporal say of it, and what the driver did to it."""

    id: str
    business_id: str
    caller_id: str
    cap: int
    max_attempts: int
    status: str
    finished: bool
    total_leads: int
    leads: dict[int, str]  # lead id -> status
    attempts: list[AttemptRow]
    api_progress: dict[str, Any] | None
    workflow_status: str | None
    workflow_result: dict[str, Any] | None
    cancel_accepted_at: float | None = None
    cancel_refused: bool = False
    # Terminated by the driver, as an operator would from the Web UI: it must end `failed`.
    terminated_at: float | None = None
    # Dials the run's workflow scheduled while a pause was in force (there must be none).
    dials_while_paused: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ProgressSample:
    """`GET /v1/runs/{id}` while the run was live, and how many calls the carrier had created for
    the run once the answer was in."""

    run_id: str
    at: float
    status: str
    progress: dict[str, Any]
    calls_created: int


@dataclass
class Evidence:
    """Everything the checks read."""

    caps: dict[str, int]  # caller ID -> the business's line cap
    runs: list[RunEvidence]
    calls: list[CarrierCall]
    samples: list[ProgressSample] = field(default_factory=list)
    started: set[str] = field(default_factory=set)  # run ids the API answered 201 for
    checked_at: float = 0.0


def violation(invariant: str, what: str, **details: Any) -> dict[str, Any]:
    return {"invariant": invariant, "what": what, **details}


def check(evidence: Evidence) -> list[dict[str, Any]]:
    """Every violation found, each naming its invariant and the run, lead and calls involved."""
    return [
        *check_cap(evidence),
        *check_once(evidence),
        *check_terminal(evidence),
        *check_durable(evidence),
        *check_webhooks(evidence),
        *check_cancel(evidence),
        *check_truth(evidence),
    ]


def check_cap(evidence: Evidence) -> list[dict[str, Any]]:
    """I1: per business, calls open at once at the carrier (created .. ended) never above the cap."""
    found: list[dict[str, Any]] = []
    by_caller: defaultdict[str, list[CarrierCall]] = defaultdict(list)
    for call in evidence.calls:
        by_caller[call.caller_id].append(call)
    for caller_id, calls in by_caller.items():
        cap = evidence.caps.get(caller_id)
        if cap is None:
            continue
        # Ends sort before starts at the same instant: a line freed and taken at once is fine.
        edges = sorted(
            [(c.created_at, 1, c) for c in calls]
            + [(c.ended_at if c.ended_at is not None else evidence.checked_at, -1, c) for c in calls],
            key=lambda edge: (edge[0], edge[1]),
        )
        open_calls: dict[str, CarrierCall] = {}
        for _, step, call in edges:
            if step > 0:
                open_calls[call.sid] = call
                if len(open_calls) > cap:
                    found.append(
                        violation(
                            "I1",
                            f"{len(open_calls)} calls in flight at once on a cap of {cap}",
                            caller_id=caller_id,
                            calls=[
                                c.brief() for c in sorted(open_calls.values(), key=lambda c: c.created_at)
                            ],
                        )
                    )
                    break
            else:
                open_calls.pop(call.sid, None)
    return found


def check_once(evidence: Evidence) -> list[dict[str, Any]]:
    """I2: at most one call per (run, lead, attempt); with max_attempts 1, a completed run called
    each lead exactly once."""
    found: list[dict[str, Any]] = []
    keyed: defaultdict[tuple[str | None, int | None, int | None], list[CarrierCall]] = defaultdict(list)
    for call in evidence.calls:
        keyed[(call.run, call.lead, call.attempt)].append(call)
    for (run_id, lead, attempt), calls in keyed.items():
        if run_id is None or lead is None or attempt is None:
            found.extend(
                violation("I2", "a call whose callback URL names no attempt", call=c.brief()) for c in calls
            )
        elif len(calls) > 1:
            found.append(
                violation(
                    "I2",
                    f"{len(calls)} calls for one attempt",
                    run=run_id,
                    lead=lead,
                    attempt=attempt,
                    calls=[c.brief() for c in sorted(calls, key=lambda c: c.created_at)],
                )
            )
    calls_per_lead = Counter((c.run, c.lead) for c in evidence.calls)
    for run in evidence.runs:
        if run.status != "completed" or run.max_attempts != 1:
            continue
        for lead_id, status in run.leads.items():
            placed = calls_per_lead[(run.id, lead_id)]
            if placed != 1:
                found.append(
                    violation(
                        "I2",
                        f"a lead of a completed run was called {placed} times",
                        run=run.id,
                        lead=lead_id,
                        lead_status=status,
                        attempts=[vars(a) for a in run.attempts if a.lead_id == lead_id],
                    )
                )
    return found


def check_terminal(evidence: Evidence) -> list[dict[str, Any]]:
    """I3: an ended run is completed, cancelled or failed, its workflow closed, every lead in one
    terminal state and every attempt final; no call left live at the carrier after its run ended."""
    found: list[dict[str, Any]] = []
    for run in evidence.runs:
        if not run.finished:
            continue  # I4 reports it
        if run.status not in RUN_ENDINGS:
            found.append(violation("I3", f"run shows {run.status!r}", run=run.id))
        if run.terminated_at is not None:
            if run.workflow_status != "TERMINATED" or run.status != "failed":
                found.append(
                    violation(
                        "I3",
                        f"a terminated run ended {run.status}, its workflow {run.workflow_status}",
                        run=run.id,
                    )
                )
        elif run.workflow_status != "COMPLETED":
            found.append(
                violation(
                    "I3", f"run ended {run.status} but its workflow is {run.workflow_status}", run=run.id
                )
            )
        for lead_id, status in run.leads.items():
            if status not in OUTCOMES:
                found.append(violation("I3", f"lead left {status!r}", run=run.id, lead=lead_id))
        for attempt in run.attempts:
            if attempt.status not in FINAL_ATTEMPT_STATUSES:
                found.append(
                    violation(
                        "I3",
                        f"attempt left {attempt.status!r}",
                        run=run.id,
                        lead=attempt.lead_id,
                        attempt=attempt.attempt,
                        call_sid=attempt.call_sid,
                    )
                )
    ended = {run.id for run in evidence.runs if run.finished}
    for call in evidence.calls:
        if call.run in ended and call.status not in TERMINAL_CALL_STATUSES:
            found.append(
                violation("I3", "a call still live at the carrier after its run ended", call=call.brief())
            )
    return found


def check_durable(evidence: Evidence) -> list[dict[str, Any]]:
    """I4: no run lost (every started run is in the database, every call belongs to a known run),
    every run ended after the faults stopped, and each run not cancelled completed."""
    found: list[dict[str, Any]] = []
    known = {run.id for run in evidence.runs}
    for run_id in sorted(evidence.started - known):
        found.append(violation("I4", "a started run is not in the database", run=run_id))
    for call in evidence.calls:
        if call.run is not None and call.run not in known:
            found.append(violation("I4", "a call of a run the database does not know", call=call.brief()))
    for run in evidence.runs:
        if not run.finished:
            found.append(
                violation(
                    "I4",
                    f"run still {run.status} after the faults stopped",
                    run=run.id,
                    workflow_status=run.workflow_status,
                    api_progress=run.api_progress,
                )
            )
        elif run.terminated_at is not None:
            continue  # I3 checks how it ended
        elif run.cancel_accepted_at is None and run.status != "completed":
            found.append(
                violation(
                    "I4", f"a run nobody cancelled ended {run.status}", run=run.id, result=run.workflow_result
                )
            )
        elif run.cancel_accepted_at is not None and run.status != "cancelled":
            found.append(violation("I4", f"a cancelled run ended {run.status}", run=run.id))
    return found


def check_webhooks(evidence: Evidence) -> list[dict[str, Any]]:
    """I5: despite lost, repeated and reordered callbacks, each call's attempt holds the carrier's
    final status and duration, and its lead the outcome that status stands for."""
    found: list[dict[str, Any]] = []
    runs = {run.id: run for run in evidence.runs}
    for call in evidence.calls:
        run = runs.get(call.run or "")
        if run is None or not run.finished or call.status not in TERMINAL_CALL_STATUSES:
            continue
        attempt = next((a for a in run.attempts if a.call_sid == call.sid), None)
        if attempt is None:
            found.append(violation("I5", "no attempt holds the call's SID", call=call.brief()))
            continue
        if (attempt.lead_id, attempt.attempt) != (call.lead, call.attempt):
            found.append(
                violation(
                    "I5", "the call's SID is on another attempt", call=call.brief(), attempt=vars(attempt)
                )
            )
        if attempt.status != call.status or (attempt.duration or 0) != (call.duration or 0):
            found.append(
                violation(
                    "I5",
                    f"attempt says {attempt.status} ({attempt.duration} s), the carrier {call.status} "
                    f"({call.duration} s)",
                    call=call.brief(),
                )
            )
        latest = max((a.attempt for a in run.attempts if a.lead_id == attempt.lead_id), default=0)
        lead_status = run.leads.get(attempt.lead_id)
        if attempt.attempt == latest and lead_status != OUTCOME_BY_CALL_STATUS[call.status]:
            found.append(
                violation(
                    "I5",
                    f"lead says {lead_status}, its last call ended {call.status}",
                    run=run.id,
                    lead=attempt.lead_id,
                    call=call.brief(),
                )
            )
    return found


def check_cancel(evidence: Evidence) -> list[dict[str, Any]]:
    """I6: no call of a run is created after its cancel was accepted (202); no dial is started
    while a pause is in force, across continue-as-new."""
    found: list[dict[str, Any]] = []
    for run in evidence.runs:
        if run.dials_while_paused:
            found.append(
                violation(
                    "I6",
                    f"{len(run.dials_while_paused)} dials started while the run was paused",
                    run=run.id,
                    dials=run.dials_while_paused,
                )
            )
        if run.cancel_accepted_at is None:
            continue
        late = [c for c in evidence.calls if c.run == run.id and c.created_at > run.cancel_accepted_at]
        if late:
            found.append(
                violation(
                    "I6",
                    f"{len(late)} calls created after the cancel was accepted",
                    run=run.id,
                    cancel_accepted_at=round(run.cancel_accepted_at, 3),
                    calls=[c.brief() for c in late],
                )
            )
    return found


def check_truth(evidence: Evidence) -> list[dict[str, Any]]:
    """I7: what the API shows equals the tables; each lead's status is its last attempt's; an
    attempt's SID is a call that exists; while a run was live, nothing showed in flight or done
    without a call behind it, and no more than the cap was in use."""
    found: list[dict[str, Any]] = []
    sids = {call.sid for call in evidence.calls}
    for run in evidence.runs:
        if not run.finished:
            continue
        from_leads = Counter(run.leads.values())
        expected = {name: from_leads.get(name, 0) for name in OUTCOMES}
        progress = run.api_progress or {}
        shown = {name: progress.get("outcomes", {}).get(name, 0) for name in OUTCOMES}
        if (
            shown != expected
            or progress.get("total") != len(run.leads)
            or progress.get("done") != len(run.leads)
            or any(progress.get(k) for k in ("queued", "dialing", "in_flight"))
        ):
            found.append(
                violation(
                    "I7",
                    "the API's progress differs from the leads table",
                    run=run.id,
                    api=progress,
                    table=expected,
                )
            )
        result = run.workflow_result
        if result is not None:
            said = {k: v for k, v in (result.get("outcomes") or {}).items() if v}
            if said != {k: v for k, v in expected.items() if v} or result.get("done") != len(run.leads):
                found.append(
                    violation(
                        "I7",
                        "the workflow's count differs from the leads table",
                        run=run.id,
                        workflow=result,
                        table=expected,
                    )
                )
        latest: dict[int, AttemptRow] = {}
        for attempt in run.attempts:
            if attempt.lead_id not in latest or attempt.attempt > latest[attempt.lead_id].attempt:
                latest[attempt.lead_id] = attempt
            if attempt.call_sid is not None and attempt.call_sid not in sids:
                found.append(
                    violation(
                        "I7",
                        "an attempt names a call the carrier never created",
                        run=run.id,
                        attempt=vars(attempt),
                    )
                )
        for lead_id, status in run.leads.items():
            last = latest.get(lead_id)
            want = OUTCOME_BY_CALL_STATUS.get(last.status, last.status) if last is not None else "cancelled"
            if status != want:
                found.append(
                    violation(
                        "I7",
                        f"lead says {status}, its attempts say {want}",
                        run=run.id,
                        lead=lead_id,
                        attempt=vars(last) if last is not None else None,
                    )
                )
    caps = {run.id: run.cap for run in evidence.runs}
    for sample in evidence.samples:
        p = sample.progress
        parts = ("queued", "dialing", "in_flight", "retry_waiting", "window_waiting", "done")
        with_call = p["in_flight"] + p["done"] - p["outcomes"].get("cancelled", 0)
        problem = None
        if sum(p.get(k, 0) for k in parts) != p["total"]:
            problem = "progress parts do not add up to the total"
        elif with_call > sample.calls_created:
            problem = (
                f"{with_call} leads shown in flight or done with a call, {sample.calls_created} calls exist"
            )
        elif p["in_flight"] > caps.get(sample.run_id, p["in_flight"]):
            # Dials under way are not calls: after an operator resets or terminates a line gate its
            # grants can run ahead of the cap for a while, and the extra dials wait for a lease.
            problem = "more calls shown in flight than the business has lines"
        if problem:
            found.append(
                violation(
                    "I7", problem, run=sample.run_id, at=round(sample.at, 3), status=sample.status, progress=p
                )
            )
    return found
