"""Runs end to end: the API, a worker, the Temporal dev server, PostgreSQL and the carrier simulator."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from contracts.names import gate_workflow_id, run_workflow_id
from contracts.statuses import OUTCOME_BY_CALL_STATUS, TERMINAL_CALL_STATUSES
from support.drive import new_number, wait_for
from support.stack import Stack
from tests.conftest import SimulatorKnobs
from workflows.outbound_run import OutboundRunWorkflow

STATUSES = ["completed", "busy", "no-answer", "failed"]


async def test_a_run_of_20_leads_completes_three_calls_at_a_time(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    business = await stack.create_business(cap=3)
    phones = [new_number() for _ in range(20)]
    played = {phone: STATUSES[i % len(STATUSES)] for i, phone in enumerate(phones)}
    # The first three are answered and talk long enough to overlap: the run must use every line.
    played.update(dict.fromkeys(phones[:3], "completed"))
    await sim_knobs(talk_seconds_by_to=dict.fromkeys(phones[:3], 5.0))
    await stack.force_outcomes(played)
    run_id = await stack.start_run(business, phones)

    async def finished_while_checking_progress() -> dict | None:
        run = await stack.run(business, run_id)
        progress = run["progress"]
        calls_that_exist = len(await stack.sim_calls(business.caller_id))
        # I7: nothing shows as in flight, or done, without a call behind it.
        assert progress["in_flight"] <= 3
        assert progress["in_flight"] + progress["done"] <= calls_that_exist
        assert progress["queued"] + progress["dialing"] + progress["in_flight"] + progress["done"] == 20
        return run if run["status"] == "completed" else None

    run = await wait_for(finished_while_checking_progress, within=90, what="the run to complete")

    # I1: never more than three calls at once.
    peak = await stack.peak_concurrency([business.caller_id])
    assert peak <= 3
    assert peak == 3, "three calls that overlapped were not on the lines at once"
    # I2: every lead was called exactly once.
    sim_calls = await stack.sim_calls(business.caller_id)
    assert Counter(c["to"] for c in sim_calls) == Counter(phones)
    # I3: every lead ended with the outcome the carrier played.
    leads = await stack.leads(run_id)
    assert {lead.phone: lead.status for lead in leads} == {
        phone: OUTCOME_BY_CALL_STATUS[status] for phone, status in played.items()
    }
    assert run["finished_at"] is not None
    # I7: progress equals the attempts table, from the API and from the workflow itself.
    attempts = await stack.attempts(run_id)
    assert all(a.status in TERMINAL_CALL_STATUSES and a.call_sid for a in attempts)
    from_table = Counter(OUTCOME_BY_CALL_STATUS[a.status] for a in attempts)
    assert {k: v for k, v in run["progress"]["outcomes"].items() if v} == dict(from_table)
    live = await stack.temporal.get_workflow_handle(run_workflow_id(run_id)).query(
        OutboundRunWorkflow.progress
    )
    assert {k: v for k, v in live.outcomes.items() if v} == dict(from_table)
    assert (live.done, live.in_flight, live.queued) == (20, 0, 0)
    await stack.save_history(run_workflow_id(run_id), "run_completed")
    await stack.save_history(gate_workflow_id(business.id), "gate_one_run")
    # The calls list shows every attempt with its SID and outcome.
    response = await stack.http.get(f"/v1/runs/{run_id}/calls", headers=business.headers)
    assert sorted((c["phone"], c["status"]) for c in response.json()) == sorted(played.items())


async def test_two_runs_of_one_business_share_three_lines_and_another_business_is_not_slowed(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    busy_business = await stack.create_business(cap=3)
    other_business = await stack.create_business(cap=3)
    first = [new_number() for _ in range(12)]
    second = [new_number() for _ in range(12)]
    other = [new_number() for _ in range(9)]
    await stack.force_outcomes(dict.fromkeys(first + second + other, "completed"))
    # Each run's first calls talk long enough to overlap: each business must use every line.
    await sim_knobs(talk_seconds_by_to=dict.fromkeys(first[:3] + second[:3] + other[:3], 5.0))

    run_ids = await asyncio.gather(
        stack.start_run(busy_business, first),
        stack.start_run(busy_business, second),
        stack.start_run(other_business, other),
    )
    runs = await asyncio.gather(
        *(
            stack.wait_run_ends(b, r, within=120)
            for b, r in zip([busy_business, busy_business, other_business], run_ids, strict=True)
        )
    )
    assert [r["status"] for r in runs] == ["completed"] * 3

    for business in (busy_business, other_business):
        peak = await stack.peak_concurrency([business.caller_id])
        assert peak <= 3  # I1
        assert peak == 3, "calls that overlapped were not on the lines at once"
    # Fair sharing: both runs were dialing at the same time, rather than one after the other.
    calls = await stack.sim_calls(busy_business.caller_id)
    first_calls = [c for c in calls if c["to"] in set(first)]
    second_calls = [c for c in calls if c["to"] in set(second)]
    assert min(c["created_at"] for c in second_calls) < max(c["ended_at"] for c in first_calls)
    assert min(c["created_at"] for c in first_calls) < max(c["ended_at"] for c in second_calls)
    await stack.save_history(run_workflow_id(run_ids[1]), "run_sharing_lines")
    await stack.save_history(gate_workflow_id(busy_business.id), "gate_two_runs")


async def test_a_killed_worker_is_replaced_and_no_lead_is_dialed_twice(stack: Stack) -> None:
    await stack.stop_worker()
    process = stack.spawn_worker_process()
    business = await stack.create_business(cap=3)
    phones = [new_number() for _ in range(15)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    run_id = await stack.start_run(business, phones)

    async def some_calls_placed() -> bool:
        return len(await stack.sim_calls(business.caller_id)) >= 4

    await wait_for(some_calls_placed, within=60, what="calls to be placed")
    stack.kill(process)
    killed_at = time.time()
    stack.spawn_worker_process()

    run = await stack.wait_run_ends(business, run_id, within=120)
    assert run["status"] == "completed"
    sim_calls = await stack.sim_calls(business.caller_id)
    assert Counter(c["to"] for c in sim_calls) == Counter(phones)  # I2: once each
    assert any(c["created_at"] > killed_at for c in sim_calls)  # the new worker carried on
    assert await stack.peak_concurrency([business.caller_id]) <= 3
    assert {lead.status for lead in await stack.leads(run_id)} == {"answered"}


async def test_of_two_workers_one_gone_for_good_the_other_finishes_every_run(stack: Stack) -> None:
    """Two worker processes share the task queues; one is killed mid-run and never comes back. The
    other takes over its workflows (after the sticky queue's timeout) and its dials (retried after
    their timeout, each looked up at Twilio first), and no number is dialed twice."""
    await stack.stop_worker()
    doomed = stack.spawn_worker_process()
    survivor = stack.spawn_worker_process()
    businesses = [await stack.create_business(cap=2) for _ in range(2)]
    phones = {b.id: [new_number() for _ in range(8)] for b in businesses}
    await stack.force_outcomes({p: "completed" for numbers in phones.values() for p in numbers})
    runs = {b.id: await stack.start_run(b, phones[b.id]) for b in businesses}

    async def both_runs_dialing() -> bool:
        placed = [len(await stack.sim_calls(b.caller_id)) for b in businesses]
        return min(placed) >= 2

    await wait_for(both_runs_dialing, within=60, what="both runs to dial")
    stack.kill(doomed)

    for business in businesses:
        run = await stack.wait_run_ends(business, runs[business.id], within=120)
        assert run["status"] == "completed"
        sim_calls = await stack.sim_calls(business.caller_id)
        assert Counter(c["to"] for c in sim_calls) == Counter(phones[business.id])  # I2
        assert {lead.status for lead in await stack.leads(runs[business.id])} == {"answered"}
    assert survivor.poll() is None


async def test_cancel_stops_new_calls_at_once_and_ends_the_run_cancelled(stack: Stack) -> None:
    business = await stack.create_business(cap=3)
    phones = [new_number() for _ in range(30)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    run_id = await stack.start_run(business, phones)

    async def calls_under_way() -> bool:
        return len(await stack.sim_calls(business.caller_id)) >= 5

    await wait_for(calls_under_way, within=60, what="calls to be placed")
    response = await stack.http.post(f"/v1/runs/{run_id}/cancel", headers=business.headers)
    assert response.status_code == 202, response.text
    acknowledged_at = time.time()

    run = await stack.wait_run_ends(business, run_id)
    assert run["status"] == "cancelled"
    sim_calls = await stack.sim_calls(business.caller_id)
    assert all(c["created_at"] < acknowledged_at for c in sim_calls)  # I6
    assert len(sim_calls) < 30
    progress = run["progress"]
    assert progress["done"] == 30 and progress["in_flight"] == 0 and progress["queued"] == 0
    assert progress["outcomes"]["cancelled"] >= 30 - len(sim_calls)
    leads = await stack.leads(run_id)
    assert all(lead.status in {"answered", "cancelled"} for lead in leads)
    await stack.save_history(run_workflow_id(run_id), "run_cancelled")
    # Nothing is left ringing at the carrier.
    assert all(c["status"] in TERMINAL_CALL_STATUSES for c in await stack.sim_calls(business.caller_id))


async def test_a_business_cannot_see_or_touch_another_business_run(stack: Stack) -> None:
    owner = await stack.create_business()
    intruder = await stack.create_business()
    phones = [new_number() for _ in range(2)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    run_id = await stack.start_run(owner, phones)

    # Every route that names a run, read from the app's OpenAPI description, so a new one cannot
    # be left out.
    paths = stack.build_app().openapi()["paths"]
    run_routes = [
        (method.upper(), path.replace("{run_id}", run_id))
        for path, operations in paths.items()
        if "{run_id}" in path
        for method in operations
    ]
    assert len(run_routes) >= 6
    for method, path in run_routes:
        response = await stack.http.request(method, path, headers=intruder.headers)
        assert response.status_code == 404, (method, path, response.text)
    listed = await stack.http.get("/v1/runs", headers=intruder.headers)
    assert listed.json() == []
    run = await stack.wait_run_ends(owner, run_id)
    assert run["status"] == "completed"
    no_key = await stack.http.get(f"/v1/runs/{run_id}")
    assert no_key.status_code == 401


async def test_a_bad_lead_list_is_refused_naming_the_rows_and_nothing_starts(stack: Stack) -> None:
    business = await stack.create_business()
    good = new_number()
    response = await stack.http.post(
        "/v1/runs",
        json={"leads": [{"phone": good}, {"phone": "4155550100"}, {"phone": "+1 999"}, {"phone": good}]},
        headers=business.headers,
    )
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert [(e["loc"][2], e["type"]) for e in errors] == [
        (1, "invalid_phone"),
        (2, "invalid_phone"),
        (3, "duplicate_phone"),
    ]
    assert "country code" in errors[0]["msg"]
    assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []
    assert await stack.sim_calls(business.caller_id) == []


async def test_pause_lets_calls_finish_and_dials_nothing_until_resume(stack: Stack) -> None:
    business = await stack.create_business(cap=2)
    phones = [new_number() for _ in range(10)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    run_id = await stack.start_run(business, phones)

    async def some_calls_placed() -> bool:
        return len(await stack.sim_calls(business.caller_id)) >= 2

    await wait_for(some_calls_placed, within=30, what="calls to be placed")
    response = await stack.http.post(f"/v1/runs/{run_id}/pause", headers=business.headers)
    assert response.status_code == 202, response.text

    async def paused_and_quiet() -> dict | None:
        run = await stack.run(business, run_id)
        progress = run["progress"]
        quiet = run["status"] == "paused" and progress["in_flight"] == 0 and progress["dialing"] == 0
        return run if quiet else None

    paused = await wait_for(paused_and_quiet, within=30, what="the run to pause with no call in flight")
    assert 0 < paused["progress"]["done"] < 10
    placed = len(await stack.sim_calls(business.caller_id))
    # While paused, nothing is dialed: give it the time several dials would take.
    await asyncio.sleep(1.5)
    assert len(await stack.sim_calls(business.caller_id)) == placed
    assert (await stack.run(business, run_id))["status"] == "paused"

    response = await stack.http.post(f"/v1/runs/{run_id}/resume", headers=business.headers)
    assert response.status_code == 202
    run = await stack.wait_run_ends(business, run_id)
    assert run["status"] == "completed"
    assert run["progress"]["outcomes"]["answered"] == 10
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == Counter(phones)
    assert await stack.peak_concurrency([business.caller_id]) <= 2


async def test_a_cancel_from_the_temporal_web_ui_is_a_cancel(stack: Stack) -> None:
    business = await stack.create_business(cap=3)
    phones = [new_number() for _ in range(20)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    run_id = await stack.start_run(business, phones)

    async def calls_under_way() -> bool:
        return len(await stack.sim_calls(business.caller_id)) >= 3

    await wait_for(calls_under_way, within=30, what="calls to be placed")
    await stack.temporal.get_workflow_handle(run_workflow_id(run_id)).cancel()

    run = await stack.wait_run_ends(business, run_id)
    assert run["status"] == "cancelled"
    assert run["progress"]["done"] == 20 and run["progress"]["outcomes"]["cancelled"] > 0
    assert all(c["status"] in TERMINAL_CALL_STATUSES for c in await stack.sim_calls(business.caller_id))
    assert {lead.status for lead in await stack.leads(run_id)} <= {"answered", "cancelled"}


async def test_a_run_whose_workflow_was_terminated_is_not_shown_running(stack: Stack) -> None:
    business = await stack.create_business(cap=1)
    phones = [new_number() for _ in range(5)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    run_id = await stack.start_run(business, phones)

    async def first_call_done() -> bool:
        return (await stack.run(business, run_id))["progress"]["done"] >= 1

    # Well under way, so its history is one a worker could replay to answer a query.
    await wait_for(first_call_done, within=30, what="the first call to end")
    await stack.temporal.get_workflow_handle(run_workflow_id(run_id)).terminate("operator")
    run = await stack.run(business, run_id)
    assert run["status"] == "failed"
    assert "terminated" in run["status_reason"]


async def test_lines_of_a_run_terminated_by_an_operator_come_back_to_the_business(stack: Stack) -> None:
    business = await stack.create_business(cap=2)
    first = [new_number() for _ in range(10)]
    second = [new_number() for _ in range(3)]
    await stack.force_outcomes(dict.fromkeys(first + second, "completed"))
    terminated = await stack.start_run(business, first)

    async def holding_lines() -> bool:
        return len(await stack.sim_calls(business.caller_id)) >= 2

    await wait_for(holding_lines, within=30, what="the first run to take the lines")
    # Terminated, it can never give its lines back; the gate's reaper takes them.
    await stack.temporal.get_workflow_handle(run_workflow_id(terminated)).terminate("operator")
    run_id = await stack.start_run(business, second)
    run = await stack.wait_run_ends(business, run_id, within=60)
    assert run["status"] == "completed" and run["progress"]["outcomes"]["answered"] == 3
