"""Twilio as it really behaves: lost, late, duplicated and ambiguous, and never a double dial."""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.dialing import DialingActivities
from contracts.activities import DialInput
from contracts.messages import Outcome, RunInput
from contracts.names import run_workflow_id
from contracts.statuses import OUTCOME_BY_CALL_STATUS
from db.models import Lead, Run
from outbound_dialer.settings import DEV_AUTH_TOKEN
from support.drive import execution_chain, new_number, wait_for
from support.stack import Stack, save_history
from telephony.twilio_client import CallbackUrls, close_twilio_client, create_twilio_client
from tests.conftest import SUGGEST_CONTINUE_AS_NEW_AFTER_EVENTS, SimulatorKnobs

# Quick reconciliation for tests: a quiet call is fetched within seconds, not minutes.
QUICK_RECONCILE = {"reconcile_margin_seconds": 5, "call_time_limit_seconds": 10, "ring_timeout_seconds": 5}


async def played_outcomes(stack: Stack, caller_id: str) -> dict[str, str]:
    """What the carrier says happened to each number called from this caller ID."""
    return {c["to"]: OUTCOME_BY_CALL_STATUS[c["status"]] for c in await stack.sim_calls(caller_id)}


async def recorded_outcomes(stack: Stack, run_id: str) -> dict[str, str]:
    return {lead.phone: lead.status for lead in await stack.leads(run_id)}


async def test_a_5xx_after_the_call_was_created_does_not_dial_twice(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """As Twilio lists calls: a call waits queued, with no start time, for up to 2 s, and lists show
    new calls 3 s late (conftest). A retry must find the call its try placed all the same."""
    await sim_knobs(create_5xx_after_create_rate=0.3, queue_seconds=(0.0, 2.0), seed=11)
    business = await stack.create_business(cap=3)
    phones = [new_number() for _ in range(24)]
    await stack.force_outcomes({p: ("completed", "busy")[i % 2] for i, p in enumerate(phones)})
    before = (await stack.sim.get("/_sim/stats")).json()["faults"]["create_5xx_after_create"]
    run_id = await stack.start_run(business, phones)

    run = await stack.wait_run_ends(business, run_id)
    assert run["status"] == "completed"
    injected = (await stack.sim.get("/_sim/stats")).json()["faults"]["create_5xx_after_create"] - before
    assert injected > 0, "the fault was never injected, so this test proved nothing"
    sim_calls = await stack.sim_calls(business.caller_id)
    assert Counter(c["to"] for c in sim_calls) == Counter(phones)  # exactly one call each
    assert await recorded_outcomes(stack, run_id) == await played_outcomes(stack, business.caller_id)
    attempts = await stack.attempts(run_id)
    assert {a.call_sid for a in attempts} == {c["sid"] for c in sim_calls}


async def test_duplicated_reordered_and_dropped_callbacks(stack: Stack, sim_knobs: SimulatorKnobs) -> None:
    await sim_knobs(duplicate_callback_rate=0.2, reorder_callback_rate=0.1, drop_callback_rate=0.05, seed=5)
    business = await stack.create_business(cap=3)
    phones = [new_number() for _ in range(50)]
    statuses = ["completed", "busy", "no-answer", "failed"]
    await stack.force_outcomes({p: statuses[i % 4] for i, p in enumerate(phones)})
    callbacks_before = (await stack.sim.get("/_sim/stats")).json()["callbacks"]
    run_id = await stack.start_run(business, phones, options=QUICK_RECONCILE)

    run = await stack.wait_run_ends(business, run_id, within=120)
    assert run["status"] == "completed"
    callbacks = (await stack.sim.get("/_sim/stats")).json()["callbacks"]
    assert callbacks["duplicated"] > callbacks_before["duplicated"]
    assert await recorded_outcomes(stack, run_id) == await played_outcomes(stack, business.caller_id)
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == Counter(phones)
    assert await stack.peak_concurrency([business.caller_id]) <= 3
    assert run["progress"]["done"] == 50


@pytest.mark.parametrize(
    ("cap", "talk_seconds"),
    [(3, (0.2, 0.6)), (30, (0.0, 0.0))],  # the second keeps dials under way at every moment
    ids=["cap-3", "cap-30-instant-calls"],
)
async def test_a_run_that_continues_as_new_carries_its_calls_in_flight_and_every_outcome(
    stack: Stack, sim_knobs: SimulatorKnobs, cap: int, talk_seconds: tuple[float, float]
) -> None:
    await sim_knobs(duplicate_callback_rate=0.3, reorder_callback_rate=0.2, seed=9, talk_seconds=talk_seconds)
    business = await stack.create_business(cap=cap)
    phones = [new_number() for _ in range(45 if cap == 3 else 250)]
    statuses = ["completed", "busy", "completed", "no-answer"]
    await stack.force_outcomes({p: statuses[i % 4] for i, p in enumerate(phones)})
    # A callback refused for longer than Twilio waits while a run closes is found by asking Twilio.
    run_id = await stack.start_run(business, phones, options=QUICK_RECONCILE)

    run = await stack.wait_run_ends(business, run_id, within=120)
    chain = await execution_chain(stack.temporal, run_workflow_id(run_id))
    assert len(chain) >= 2, "the run never continued as new, so this test proved nothing"
    # However busy the run, it continues as new soon after the server suggests it (without waiting
    # for a moment with no dial under way, the 250-lead run's one segment had about 1,500 events).
    assert max(len(h.events) for h in chain) < 3 * SUGGEST_CONTINUE_AS_NEW_AFTER_EVENTS
    converter = stack.temporal.data_converter
    carried = [
        (
            await converter.decode(
                history.events[0].workflow_execution_started_event_attributes.input.payloads, [RunInput]
            )
        )[0]
        for history in chain[1:]
    ]
    if cap == 3:  # calls that talk are still live when it continues; instant ones may all have ended
        assert any(c.carry_over and c.carry_over.in_flight for c in carried), (
            "no call was in flight across it"
        )
    assert all(c.total_leads == len(phones) for c in carried)

    assert run["status"] == "completed"
    assert run["progress"]["done"] == len(phones) == sum(run["progress"]["outcomes"].values())
    assert await recorded_outcomes(stack, run_id) == await played_outcomes(stack, business.caller_id)
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == Counter(phones)
    assert await stack.peak_concurrency([business.caller_id]) <= cap
    if cap == 30:  # drained before it continued as new
        await save_history(
            stack.temporal, run_workflow_id(run_id), "run_continued_as_new", first_execution=True
        )


async def test_the_api_down_for_30_seconds_while_calls_finish(stack: Stack) -> None:
    business = await stack.create_business(cap=3)
    phones = [new_number() for _ in range(6)]
    await stack.force_outcomes({p: ("completed", "no-answer")[i % 2] for i, p in enumerate(phones)})
    run_id = await stack.start_run(business, phones, options=QUICK_RECONCILE)

    async def calls_under_way() -> bool:
        return len(await stack.sim_calls(business.caller_id)) >= 3

    await wait_for(calls_under_way, within=30, what="calls to be placed")
    failed_before = (await stack.sim.get("/_sim/stats")).json()["callbacks"]["failed"]
    await stack.stop_api()
    await asyncio.sleep(30)  # the outage itself: every callback in this window is lost
    await stack.start_api()
    lost = (await stack.sim.get("/_sim/stats")).json()["callbacks"]["failed"] - failed_before
    assert lost > 0, "no callback hit the outage, so this test proved nothing"

    run = await stack.wait_run_ends(business, run_id, within=60)
    assert run["status"] == "completed"
    assert await recorded_outcomes(stack, run_id) == await played_outcomes(stack, business.caller_id)
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == Counter(phones)


async def test_answering_machine_detection_is_kept_on_the_attempt(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    business = await stack.create_business(cap=3)
    phones = [new_number() for _ in range(4)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    # Detection runs beside the call (AsyncAmd): calls long enough for its verdict to come first.
    await sim_knobs(talk_seconds_by_to=dict.fromkeys(phones, 1.5))
    run_id = await stack.start_run(business, phones, options={"machine_detection": True})
    run = await stack.wait_run_ends(business, run_id)
    assert run["status"] == "completed"
    calls = (await stack.http.get(f"/v1/runs/{run_id}/calls", headers=business.headers)).json()
    by_sid = {c["sid"]: c["answered_by"] for c in await stack.sim_calls(business.caller_id)}
    assert all(c["answered_by"] for c in calls)
    assert {c["call_sid"]: c["answered_by"] for c in calls} == by_sid


async def test_an_account_error_pauses_the_run_with_a_reason_and_resume_finishes_it(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    business = await stack.create_business(cap=2)
    phones = [new_number() for _ in range(4)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    await sim_knobs(errors_by_from={business.caller_id: 21210})
    run_id = await stack.start_run(business, phones)

    async def paused() -> dict[str, Any] | None:
        run = await stack.run(business, run_id)
        return run if run["status"] == "paused" else None

    run = await wait_for(paused, within=30, what="the run to pause")
    assert "21210" in run["status_reason"] and "resume" in run["status_reason"]
    assert await stack.sim_calls(business.caller_id) == []
    assert run["progress"]["done"] == 0 and run["progress"]["queued"] == 4

    await sim_knobs(errors_by_from={})  # the account is fixed
    assert (await stack.http.post(f"/v1/runs/{run_id}/resume", headers=business.headers)).status_code == 202
    run = await stack.wait_run_ends(business, run_id)
    assert run["status"] == "completed" and run["progress"]["outcomes"]["answered"] == 4
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == Counter(phones)


async def test_a_worker_killed_between_create_and_recording_the_sid_does_not_dial_again(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    await stack.stop_worker()
    worker = stack.spawn_worker_process()
    business = await stack.create_business(cap=1)
    phones = [new_number() for _ in range(2)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    await sim_knobs(create_response_delay_seconds=5)
    run_id = await stack.start_run(business, phones)

    async def first_call_created() -> bool:
        return len(await stack.sim_calls(business.caller_id)) == 1

    await wait_for(first_call_created, within=30, what="the first call to be created")
    stack.kill(worker)  # Twilio has the call; the worker never heard back
    assert not any(a.call_sid for a in await stack.attempts(run_id))
    await sim_knobs(create_response_delay_seconds=0)
    stack.spawn_worker_process()

    run = await stack.wait_run_ends(business, run_id, within=90)
    assert run["status"] == "completed"
    sim_calls = await stack.sim_calls(business.caller_id)
    assert Counter(c["to"] for c in sim_calls) == Counter(phones)  # no second call
    assert {a.call_sid for a in await stack.attempts(run_id)} == {c["sid"] for c in sim_calls}


async def test_a_second_try_that_overlaps_the_first_waits_for_it_and_finds_its_call(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """A dial tried again while its first try still waits for Twilio's answer (the try timed out,
    its worker is alive) must not place a second call, even though Twilio's call list does not
    show the first call yet: the second try waits on the first one's attempt row."""
    business = await stack.create_business(cap=1)
    phone = new_number()
    run_id = uuid.uuid4().hex
    async with stack.sessions() as session, session.begin():
        session.add(Run(id=run_id, business_id=business.id, status="running", total_leads=1, options={}))
        await session.flush()
        lead = Lead(run_id=run_id, phone=phone)
        session.add(lead)
    await sim_knobs(create_response_delay_seconds=2, list_lag_seconds=60)
    twilio = create_twilio_client(stack.settings)
    try:
        dialing = DialingActivities(stack.sessions, twilio, CallbackUrls.of(stack.settings))
        dial = DialInput(
            run_id, lead.id, 1, phone, business.caller_id, "<Response/>", business_id=business.id
        )
        first = asyncio.create_task(ActivityEnvironment().run(dialing.place_call, dial))

        async def call_created() -> bool:
            return len(await stack.sim_calls(business.caller_id)) == 1

        await wait_for(call_created, within=10, what="the first try's call")
        retry = ActivityEnvironment()
        retry.info = dataclasses.replace(retry.info, attempt=2)
        second = await retry.run(dialing.place_call, dial)
        assert first.done()  # the second try waited for the first
        assert second.call_sid == (await first).call_sid
    finally:
        await close_twilio_client(twilio)
    sim_calls = await stack.sim_calls(business.caller_id)
    assert [c["to"] for c in sim_calls] == [phone]
    assert [a.call_sid for a in await stack.attempts(run_id)] == [sim_calls[0]["sid"]]


async def test_a_retry_of_a_dial_whose_call_ended_meanwhile_adopts_that_call(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """A create answered 5xx placed its call; the call ends (busy) before the retry, and the run
    carries its outcome on the next lead's dial, which gives the attempt's line back. The retry,
    coming while that dial still waits for Twilio, must find the ended call, not place another."""
    business = await stack.create_business(cap=2)
    phones = [new_number(), new_number()]
    run_id = uuid.uuid4().hex
    async with stack.sessions() as session, session.begin():
        session.add(Run(id=run_id, business_id=business.id, status="running", total_leads=2, options={}))
        await session.flush()
        leads = [Lead(run_id=run_id, phone=p) for p in phones]
        session.add_all(leads)
    twilio = create_twilio_client(stack.settings)
    try:
        dialing = DialingActivities(
            stack.sessions, twilio, CallbackUrls.of(stack.settings), lookup_delay=timedelta(0)
        )
        first = DialInput(
            run_id,
            leads[0].id,
            1,
            phones[0],
            business.caller_id,
            "<Response/>",
            business_id=business.id,
            answer_version=2,
        )
        await sim_knobs(create_5xx_after_create_rate=1.0)
        with pytest.raises(ApplicationError):
            await ActivityEnvironment().run(dialing.place_call, first)
        (placed,) = await stack.sim_calls(business.caller_id)
        ended = Outcome(leads[0].id, 1, "busy", placed["sid"])
        await sim_knobs(create_5xx_after_create_rate=0.0, create_response_delay_seconds=3)
        second = DialInput(
            run_id,
            leads[1].id,
            1,
            phones[1],
            business.caller_id,
            "<Response/>",
            business_id=business.id,
            outcomes=[ended],
            answer_version=2,
        )
        next_lead = asyncio.create_task(ActivityEnvironment().run(dialing.place_call, second))

        async def next_lead_sent() -> bool:
            return len(await stack.sim_calls(business.caller_id)) == 2

        await wait_for(next_lead_sent, within=10, what="the next lead's create")
        retry = ActivityEnvironment()
        retry.info = dataclasses.replace(retry.info, attempt=2)
        adopted = await retry.run(dialing.place_call, first)
        await next_lead
    finally:
        await close_twilio_client(twilio)
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == Counter(phones)
    assert adopted.call_sid == placed["sid"]


async def test_a_429_storm_delays_calls_and_two_workers_keep_the_global_rate(
    stack_on: Callable[..., AbstractAsyncContextManager[Stack]], database_url: str
) -> None:
    rate = 4.0
    async with stack_on(database_url, calls_per_second=rate) as stack:
        stack.spawn_worker_process()  # a second worker beside the in-process one
        before = (await stack.sim.get("/_sim/stats")).json()["faults"]["create_429"]
        await stack.sim.post("/_sim/config", json={"create_429_rate": 0.5})
        try:
            business = await stack.create_business(cap=8)
            phones = [new_number() for _ in range(16)]
            await stack.force_outcomes(dict.fromkeys(phones, "completed"))
            run_id = await stack.start_run(business, phones)
            run = await stack.wait_run_ends(business, run_id, within=120)
        finally:
            await stack.sim.post("/_sim/config", json={"create_429_rate": 0.0})
        stats = (await stack.sim.get("/_sim/stats")).json()
        placed = Counter(c["to"] for c in await stack.sim_calls(business.caller_id))

    assert run["status"] == "completed" and run["progress"]["outcomes"]["answered"] == 16
    assert stats["faults"]["create_429"] > before
    assert placed == Counter(phones)
    # The server's limiter lets a burst of one second's worth through, then holds the rate as it
    # hands out dial tasks. A create reaches Twilio a little after its task was handed out (the
    # activity reads the database first), so a window of requests may hold the tasks handed out
    # up to that delay before it: count over 3 seconds, allowing one second of delay.
    requests = sorted(stats["create_requests"][business.caller_id])
    window, burst, delay = 3.0, rate, 1.0
    busiest = max(sum(1 for t in requests if start <= t < start + window) for start in requests)
    assert busiest <= rate * (window + delay) + burst, f"{busiest} create requests in {window}s at {rate}/s"
    assert len(requests) > len(phones), "429s were retried"


async def test_a_429_is_retried_after_the_wait_twilio_asks_for(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    business = await stack.create_business(cap=1)
    phone = new_number()
    await stack.force_outcomes({phone: "completed"})
    # Without Retry-After the first retry would come after the dial policy's 1 s.
    await sim_knobs(create_429_rate=1.0, retry_after_seconds=3)
    run_id = await stack.start_run(business, [phone])

    async def requests() -> list[float]:
        stats = (await stack.sim.get("/_sim/stats")).json()
        return sorted(stats["create_requests"].get(business.caller_id, []))

    async def refused_twice() -> bool:
        return len(await requests()) >= 2

    await wait_for(refused_twice, within=30, what="two refused creates")
    await sim_knobs(create_429_rate=0.0)
    run = await stack.wait_run_ends(business, run_id)

    assert run["status"] == "completed" and run["progress"]["outcomes"]["answered"] == 1
    first, second = (await requests())[:2]
    assert second - first >= 3.0, f"retried {second - first:.2f}s after a 429 that asked for 3s"
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == {phone: 1}


async def test_a_bad_number_fails_that_lead_with_twilios_reason_and_the_run_goes_on(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    business = await stack.create_business(cap=2)
    good, bad = new_number(), new_number()
    await stack.force_outcomes({good: "completed"})
    await sim_knobs(errors_by_to={bad: 21211})
    run_id = await stack.start_run(business, [bad, good])

    run = await stack.wait_run_ends(business, run_id)
    assert run["status"] == "completed"
    assert run["progress"]["outcomes"]["failed"] == 1 and run["progress"]["outcomes"]["answered"] == 1
    response = await stack.http.get(f"/v1/runs/{run_id}/calls", headers=business.headers)
    calls = {c["phone"]: c for c in response.json()}
    assert calls[bad]["status"] == "failed" and calls[bad]["call_sid"] is None
    assert calls[bad]["error_code"] == 21211 and bad in calls[bad]["error_message"]


async def test_a_call_twilio_never_heard_of_ends_failed_with_the_reason(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    business = await stack.create_business(cap=1)
    phone = new_number()
    await stack.force_outcomes({phone: "completed"})
    await sim_knobs(ring_seconds=(3.0, 3.0))
    run_id = await stack.start_run(business, [phone], options=QUICK_RECONCILE)

    async def ringing() -> bool:
        return len(await stack.sim_calls(business.caller_id)) == 1

    await wait_for(ringing, within=30, what="the call to ring")
    await stack.sim.post("/_sim/reset")  # the carrier forgets the call: no callback will ever come

    run = await stack.wait_run_ends(business, run_id, within=60)
    assert run["status"] == "completed" and run["progress"]["outcomes"]["failed"] == 1
    (attempt,) = await stack.attempts(run_id)
    assert attempt.status == "failed" and attempt.error_message == "Twilio has no record of this call"
    await stack.save_history(run_workflow_id(run_id), "run_reconciled")


async def _failed_activities(stack: Stack, run_id: str, activity_type: str) -> int:
    history = await stack.temporal.get_workflow_handle(run_workflow_id(run_id)).fetch_history()
    scheduled = {
        e.event_id
        for e in history.events
        if e.activity_task_scheduled_event_attributes.activity_type.name == activity_type
    }
    return sum(
        1
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED
        and e.activity_task_failed_event_attributes.scheduled_event_id in scheduled
    )


async def test_quiet_calls_are_still_looked_up_after_twilio_refused_a_lookup(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """The auth token is rotated while a run waits on calls whose last callbacks were lost: looking
    them up fails with 20003 until the worker's token works again. The lookups go on, and the run
    ends instead of holding its lines for good."""
    business = await stack.create_business(cap=2)
    phones = [new_number() for _ in range(2)]
    await stack.force_outcomes(dict.fromkeys(phones, "busy"))
    await sim_knobs(webhooks_unreachable_until=time.time() + 3600)  # every callback is lost
    run_id = await stack.start_run(business, phones, options=QUICK_RECONCILE)

    async def calls_ended() -> bool:
        calls = await stack.sim_calls(business.caller_id)
        return len(calls) == 2 and all(c["ended_at"] for c in calls)

    await wait_for(calls_ended, within=30, what="both calls to end at the carrier")
    await stack.sim.post("/_sim/config", json={"auth_token": "rotated-by-the-account-owner"})
    try:
        await wait_for(
            lambda: _failed_activities(stack, run_id, "fetch_call"), within=60, what="a lookup Twilio refused"
        )
    finally:
        await stack.sim.post("/_sim/config", json={"auth_token": DEV_AUTH_TOKEN})

    run = await stack.wait_run_ends(business, run_id, within=60)
    assert run["status"] == "completed" and run["progress"]["outcomes"]["busy"] == 2


async def test_a_hang_up_twilio_refuses_for_a_while_is_tried_until_it_succeeds(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """A cancel hangs up calls in flight; Twilio answers the hang-ups 500 for half a minute. They are
    tried until one succeeds, rather than given up after a few tries while the calls go on."""
    business = await stack.create_business(cap=2)
    phones = [new_number() for _ in range(4)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    await sim_knobs(talk_seconds_by_to=dict.fromkeys(phones, 300.0))
    run_id = await stack.start_run(business, phones)

    async def answered() -> bool:
        calls = await stack.sim_calls(business.caller_id)
        return len(calls) == 2 and all(c["status"] == "in-progress" for c in calls)

    await wait_for(answered, within=30, what="two calls to be answered")
    await sim_knobs(updates_fail_until=time.time() + 30)
    response = await stack.http.post(f"/v1/runs/{run_id}/cancel", headers=business.headers)
    assert response.status_code == 202

    run = await stack.wait_run_ends(business, run_id, within=120)
    assert run["status"] == "cancelled"
    calls = await stack.sim_calls(business.caller_id)
    assert all(c["status"] == "completed" for c in calls)
    await stack.save_history(run_workflow_id(run_id), "run_hung_up_despite_5xx")
    # Hung up once Twilio took the hang-up, well before the calls' five minutes were up.
    assert all(c["ended_at"] - c["created_at"] < 120 for c in calls)


@pytest.mark.parametrize("code", [21215, 21219], ids=["no-geo-permission", "trial-unverified-number"])
async def test_a_number_the_account_may_not_call_fails_that_lead_and_the_run_goes_on(
    stack: Stack, sim_knobs: SimulatorKnobs, code: int
) -> None:
    """21215 (no geo permission for the destination) and 21219 (a trial account's unverified number)
    are about the number called: that lead fails with Twilio's reason, the others are called."""
    business = await stack.create_business(cap=2)
    foreign, *others = [new_number() for _ in range(4)]
    await stack.force_outcomes(dict.fromkeys(others, "completed"))
    await sim_knobs(errors_by_to={foreign: code})
    run_id = await stack.start_run(business, [foreign, *others])

    run = await stack.wait_run_ends(business, run_id, within=30)
    assert run["status"] == "completed"
    assert run["progress"]["outcomes"]["answered"] == 3 and run["progress"]["outcomes"]["failed"] == 1
    calls = {
        c["phone"]: c
        for c in (await stack.http.get(f"/v1/runs/{run_id}/calls", headers=business.headers)).json()
    }
    assert calls[foreign]["error_code"] == code and calls[foreign]["call_sid"] is None


async def test_numbers_refused_one_after_another_pause_the_run_and_none_is_lost(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """21216 is either one blocked destination or an account that may not call +1 numbers at all
    (no Primary Customer Profile). Refused three times in a row with no call placed, the run pauses
    with Twilio's reason rather than failing every lead; once fixed, resume calls them all."""
    business = await stack.create_business(cap=2)
    phones = [new_number() for _ in range(6)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    await sim_knobs(errors_by_to=dict.fromkeys(phones, 21216))
    run_id = await stack.start_run(business, phones)

    async def paused() -> dict | None:
        run = await stack.run(business, run_id)
        return run if run["status"] == "paused" else None

    run = await wait_for(paused, within=30, what="the run to pause")
    assert "21216" in run["status_reason"] and "resume" in run["status_reason"]
    assert run["progress"]["done"] == 0 and not await stack.sim_calls(business.caller_id)

    await sim_knobs(errors_by_to={})  # the account got its profile
    response = await stack.http.post(f"/v1/runs/{run_id}/resume", headers=business.headers)
    assert response.status_code == 202
    run = await stack.wait_run_ends(business, run_id, within=60)
    assert run["status"] == "completed" and run["progress"]["outcomes"]["answered"] == 6
    await stack.save_history(run_workflow_id(run_id), "run_paused_after_refusals")
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == Counter(phones)


async def test_one_blocked_number_among_good_ones_fails_alone(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    business = await stack.create_business(cap=1)
    blocked, *good = [new_number() for _ in range(3)]
    await stack.force_outcomes(dict.fromkeys(good, "completed"))
    await sim_knobs(errors_by_to={blocked: 21216})
    run_id = await stack.start_run(business, [blocked, *good])

    run = await stack.wait_run_ends(business, run_id, within=30)
    assert run["status"] == "completed"
    assert run["progress"]["outcomes"]["answered"] == 2 and run["progress"]["outcomes"]["failed"] == 1
    [attempt] = [a for a in await stack.attempts(run_id) if a.call_sid is None]
    assert attempt.status == "failed" and attempt.error_code == 21216


@pytest.mark.parametrize("code", [20005, 10001], ids=["account-not-active", "account-suspended"])
async def test_a_suspended_account_pauses_the_run_at_once(
    stack: Stack, sim_knobs: SimulatorKnobs, code: int
) -> None:
    business = await stack.create_business(cap=2)
    phones = [new_number() for _ in range(3)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    await sim_knobs(account_error=code)
    run_id = await stack.start_run(business, phones)

    async def paused() -> dict | None:
        run = await stack.run(business, run_id)
        return run if run["status"] == "paused" else None

    run = await wait_for(paused, within=30, what="the run to pause")
    assert str(code) in run["status_reason"]
    await sim_knobs(account_error=None)  # funds added
    assert (await stack.http.post(f"/v1/runs/{run_id}/resume", headers=business.headers)).status_code == 202
    run = await stack.wait_run_ends(business, run_id, within=60)
    assert run["status"] == "completed" and run["progress"]["outcomes"]["answered"] == 3


@pytest.mark.parametrize(("code", "kind"), [(20003, "TwilioAccountError"), (20429, "TwilioHttp429")])
async def test_a_refused_lookup_of_an_earlier_try_is_classified_like_a_refused_create(
    stack: Stack, sim_knobs: SimulatorKnobs, code: int, kind: str
) -> None:
    """A retry looks up the call its first try may have placed; Twilio refusing the lookup means
    what refusing a create means: an account problem pauses the run, a 429 waits as asked."""
    business = await stack.create_business(cap=1)
    phone = new_number()
    run_id = uuid.uuid4().hex
    async with stack.sessions() as session, session.begin():
        session.add(Run(id=run_id, business_id=business.id, status="running", total_leads=1, options={}))
        await session.flush()
        lead = Lead(run_id=run_id, phone=phone)
        session.add(lead)
    await sim_knobs(account_error=code, retry_after_seconds=7)
    twilio = create_twilio_client(stack.settings)
    try:
        dialing = DialingActivities(
            stack.sessions, twilio, CallbackUrls.of(stack.settings), lookup_delay=timedelta(0)
        )
        dial = DialInput(
            run_id, lead.id, 1, phone, business.caller_id, "<Response/>", business_id=business.id
        )
        retry = ActivityEnvironment()
        retry.info = dataclasses.replace(retry.info, attempt=2)
        with pytest.raises(ApplicationError) as refused:
            await retry.run(dialing.place_call, dial)
    finally:
        await close_twilio_client(twilio)
    assert refused.value.type == kind
    if code == 20429:
        assert refused.value.next_retry_delay == timedelta(seconds=7)
    else:
        assert refused.value.non_retryable
    assert not await stack.sim_calls(business.caller_id)


async def test_a_twilio_request_that_gets_no_answer_times_out(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """The SDK's async HTTP client ignores the timeout it is built with; ours applies it, so a create
    Twilio does not answer fails (and is looked up before it is tried again) instead of hanging."""
    await sim_knobs(create_response_delay_seconds=5)
    twilio = create_twilio_client(stack.settings.model_copy(update={"TWILIO_TIMEOUT_SECONDS": 1.0}))
    caller, callee = new_number(), new_number()
    try:
        with pytest.raises(asyncio.TimeoutError):
            await twilio.calls.create_async(to=callee, from_=caller, twiml="<Response/>")
    finally:
        await close_twilio_client(twilio)
    assert len(await stack.sim_calls(caller)) == 1  # placed, unanswered: exactly the ambiguous case


async def test_a_worker_stopped_for_a_deploy_finishes_the_create_under_way(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """SIGTERM (a deploy) while a create waits for Twilio's answer: the worker lets it finish and
    record its call before it leaves, instead of cancelling it mid-request and leaving a retry to
    find the call in lists that lag."""
    await stack.stop_worker()
    worker = stack.spawn_worker_process()
    business = await stack.create_business(cap=1)
    phones = [new_number() for _ in range(2)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    await sim_knobs(create_response_delay_seconds=3)
    run_id = await stack.start_run(business, phones)

    async def first_call_created() -> bool:
        return len(await stack.sim_calls(business.caller_id)) == 1

    await wait_for(first_call_created, within=30, what="the first call to be created")
    worker.send_signal(signal.SIGTERM)
    await asyncio.to_thread(worker.wait, 60)
    [call] = await stack.sim_calls(business.caller_id)
    assert [a.call_sid for a in await stack.attempts(run_id)] == [call["sid"]]

    await sim_knobs(create_response_delay_seconds=0)
    stack.spawn_worker_process()
    run = await stack.wait_run_ends(business, run_id, within=60)
    assert run["status"] == "completed"
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id)) == Counter(phones)


async def test_a_callback_the_api_could_not_take_comes_again(stack: Stack, sim_knobs: SimulatorKnobs) -> None:
    """The status-callback URL asks Twilio (connection overrides in its fragment) to retry a
    callback that found the API down or answering 5xx, rather than once, on a refused connection
    only: the run hears of the call's end from Twilio itself, not minutes later from a lookup."""
    business = await stack.create_business(cap=1)
    phone = new_number()
    await stack.force_outcomes({phone: "completed"})
    await sim_knobs(talk_seconds_by_to={phone: 2.0})
    run_id = await stack.start_run(business, [phone])

    async def answered() -> bool:
        return [c["status"] for c in await stack.sim_calls(business.caller_id)] == ["in-progress"]

    await wait_for(answered, within=30, what="the call to be answered")
    before = (await stack.sim.get("/_sim/stats")).json()["callbacks"]
    await stack.stop_api()
    try:

        async def refused_twice() -> bool:
            stats = (await stack.sim.get("/_sim/stats")).json()["callbacks"]
            return stats["retried"] - before["retried"] >= 2

        await wait_for(refused_twice, within=30, what="the final callback to be refused and retried")
    finally:
        await stack.start_api()
    # Found again well before the quiet call would be looked up (ring timeout plus a minute).
    run = await stack.wait_run_ends(business, run_id, within=30)
    assert run["status"] == "completed" and run["progress"]["outcomes"]["answered"] == 1
    stats = (await stack.sim.get("/_sim/stats")).json()["callbacks"]
    assert stats["failed"] == before["failed"]
