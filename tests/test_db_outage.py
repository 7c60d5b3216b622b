"""PostgreSQL unavailable for a while: activities retry, nothing is lost, runs finish when it returns.

The outage is played by a TCP proxy between this test's API and worker and the session's PostgreSQL:
cutting it resets every connection and refuses new ones, which is what a database that went away
looks like to the application, while the server itself (shared by the session) stays up.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import make_url

from contracts.names import run_workflow_id
from contracts.statuses import OUTCOME_BY_CALL_STATUS, OUTCOMES, TERMINAL_CALL_STATUSES
from support.drive import Business, new_number, wait_for
from support.stack import Stack
from support.tcp_proxy import TcpProxy
from tests.conftest import SimulatorKnobs
from workflows.outbound_run import OutboundRunWorkflow

CAP = 3
LEADS = 15
STATUSES = ["completed", "busy", "no-answer", "failed"]
# Long enough for the calls in flight to end (their callbacks come in), for the next dials and the
# outcome writes to fail and be retried, and for the run's page to be asked for.
OUTAGE_SECONDS = 6.0
# One dial's create is answered this late: the call exists at Twilio, and the dial learns its SID
# only after the database has gone, so its transaction cannot record the call.
HELD_ANSWER_SECONDS = 6.0
# That call rings on until after the dial's first retry once the database is back, so nothing but
# the dial itself can tell the retry that the call exists.
SLOW_CALL_RING_SECONDS = 16.0
# A dial that took its attempt row just before the cut may still send its create a moment after.
CREATES_ALREADY_UNDER_WAY = 1.0


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    """A proxy in front of the session's PostgreSQL server."""
    server = make_url(database_url)
    async with TcpProxy.running(server.host or "127.0.0.1", server.port or 5432) as proxy:
        yield proxy


@pytest.fixture
async def stack(
    stack_on: Callable[..., AbstractAsyncContextManager[Stack]], database_url: str, proxy: TcpProxy
) -> AsyncIterator[Stack]:
    """A worker and an API whose every database connection goes through the proxy."""
    through_proxy = make_url(database_url).set(host="127.0.0.1", port=proxy.port)
    async with stack_on(through_proxy.render_as_string(hide_password=False)) as stack:
        yield stack


async def webhook_counts(stack: Stack) -> tuple[float, float]:
    """Status callbacks the API took (valid signature), and callbacks it answered 503."""
    text = (await stack.http.get("/metrics")).text
    totals = {
        family.name: sum(s.value for s in family.samples if s.name.endswith("_total"))
        for family in text_string_to_metric_families(text)
    }
    return totals["dialer_webhooks_received"], totals["dialer_webhooks_undelivered"]


async def assert_called_once_each_with_outcomes_recorded(
    stack: Stack, business: Business, run_id: str, played: dict[str, str]
) -> list[dict[str, Any]]:
    """I1, I2, I3 and I7 for a finished run: never more than the cap in flight; each lead called
    exactly once; one final attempt per lead holding its call and the outcome the carrier played;
    progress equal to the attempts table. Returns the carrier's calls."""
    run = await stack.run(business, run_id)
    assert run["status"] == "completed" and run["finished_at"] is not None
    sim_calls = await stack.sim_calls(business.caller_id)
    assert await stack.peak_concurrency([business.caller_id]) <= business.cap
    assert Counter(c["to"] for c in sim_calls) == Counter(list(played))
    leads = await stack.leads(run_id)
    attempts = await stack.attempts(run_id)
    assert Counter(a.lead_id for a in attempts) == Counter(lead.id for lead in leads)
    assert all(a.status in TERMINAL_CALL_STATUSES for a in attempts)
    assert {a.call_sid for a in attempts} == {c["sid"] for c in sim_calls}
    carrier_says = {c["to"]: OUTCOME_BY_CALL_STATUS[c["status"]] for c in sim_calls}
    assert carrier_says == {phone: OUTCOME_BY_CALL_STATUS[status] for phone, status in played.items()}
    assert {lead.phone: lead.status for lead in leads} == carrier_says
    from_table: Counter[str] = Counter(OUTCOME_BY_CALL_STATUS[a.status] for a in attempts)
    assert run["progress"]["outcomes"] == {name: from_table.get(name, 0) for name in OUTCOMES}
    progress = run["progress"]
    assert (progress["done"], progress["queued"], progress["dialing"], progress["in_flight"]) == (
        len(played),
        0,
        0,
        0,
    )
    return sim_calls


async def test_a_database_outage_mid_run_loses_nothing_and_the_runs_finish(
    stack: Stack, proxy: TcpProxy, sim_knobs: SimulatorKnobs
) -> None:
    normal = (await stack.sim.get("/_sim/config")).json()
    # Twilio's call list may show a new call only a while later: no dial may depend on it.
    await sim_knobs(list_lag_seconds=60)
    business = await stack.create_business(cap=CAP)
    phones = [new_number() for _ in range(LEADS)]
    played = {phone: STATUSES[i % len(STATUSES)] for i, phone in enumerate(phones)}
    slow_business = await stack.create_business(cap=1)
    slow_played = {new_number(): "completed"}
    await stack.force_outcomes(played | slow_played)

    async def calls_placed(business: Business, at_least: int) -> list[dict[str, Any]] | None:
        calls = await stack.sim_calls(business.caller_id)
        return calls if len(calls) >= at_least else None

    # The slow dial, alone on the simulator while its answer is held back.
    await sim_knobs(
        create_response_delay_seconds=HELD_ANSWER_SECONDS,
        ring_seconds=(SLOW_CALL_RING_SECONDS, SLOW_CALL_RING_SECONDS),
    )
    slow_run_id = await stack.start_run(slow_business, list(slow_played))
    [slow_call] = await wait_for(lambda: calls_placed(slow_business, 1), within=30, what="the slow call")
    await sim_knobs(create_response_delay_seconds=0, ring_seconds=normal["ring_seconds"])

    run_id = await stack.start_run(business, phones)
    answer_due = slow_call["created_at"] + HELD_ANSWER_SECONDS
    await wait_for(
        lambda: calls_placed(business, CAP),
        within=answer_due - time.time() - 0.5,
        what="the run's calls to be in flight before the slow dial hears back",
    )
    received_before, _ = await webhook_counts(stack)
    proxy.cut()
    cut_at = time.time()
    try:
        # The API says at once that it cannot answer now, and when to ask again.
        asked_at = time.monotonic()
        response = await stack.http.get(f"/v1/runs/{run_id}", headers=business.headers)
        assert time.monotonic() - asked_at < 5
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) > 0
        assert "database" in response.json()["detail"]

        # Twilio's callbacks keep coming: the calls in flight end while the database is away.
        async def callbacks_taken() -> bool:
            return (await webhook_counts(stack))[0] > received_before

        await wait_for(callbacks_taken, within=OUTAGE_SECONDS, what="callbacks during the outage")
        await asyncio.sleep(max(0.0, cut_at + OUTAGE_SECONDS - time.time()))  # the rest of the outage
    finally:
        proxy.restore()
    restored_at = time.time()
    received_during_outage = (await webhook_counts(stack))[0] - received_before

    # The API answers again as soon as the database is back.
    assert (await stack.run(business, run_id))["progress"]["total"] == LEADS

    await stack.wait_run_ends(business, run_id, within=60)
    await stack.wait_run_ends(slow_business, slow_run_id, within=60)
    sim_calls = await assert_called_once_each_with_outcomes_recorded(stack, business, run_id, played)
    [slow_call] = await assert_called_once_each_with_outcomes_recorded(
        stack, slow_business, slow_run_id, slow_played
    )

    # The outage was real: the application kept trying the database; Twilio's callbacks reached
    # the API and none was refused; calls ended while the database was away, and none was placed
    # without it; the slow dial heard back only after the cut, and its call was still ringing when
    # the database came back.
    assert proxy.connections_refused > 0
    assert received_during_outage > 0
    assert (await webhook_counts(stack))[1] == 0
    assert any(cut_at <= (c["ended_at"] or 0) <= restored_at for c in sim_calls)
    assert not [c for c in sim_calls if cut_at + CREATES_ALREADY_UNDER_WAY < c["created_at"] < restored_at]
    assert cut_at < answer_due
    assert slow_call["ended_at"] > restored_at


async def test_a_cancel_while_the_database_is_away_hangs_up_the_calls_at_once(
    stack: Stack, proxy: TcpProxy, sim_knobs: SimulatorKnobs
) -> None:
    """An operator cancels from the Temporal Web UI while PostgreSQL is away (the API cannot take a
    cancel then), with one call answered and the next dial stuck on the database. The answered call
    is hung up at once; what the run writes waits for the database, and the run ends `cancelled`
    once it is back."""
    business = await stack.create_business(cap=2)
    long_call, *short_calls = [new_number() for _ in range(6)]
    await stack.force_outcomes(dict.fromkeys([long_call, *short_calls], "completed"))
    await sim_knobs(talk_seconds_by_to={long_call: 300.0})
    run_id = await stack.start_run(business, [long_call, *short_calls])
    handle = stack.temporal.get_workflow_handle(run_workflow_id(run_id))

    async def answered() -> bool:
        calls = {c["to"]: c for c in await stack.sim_calls(business.caller_id)}
        return long_call in calls and calls[long_call]["status"] == "in-progress" and len(calls) >= 2

    await wait_for(answered, within=30, what="the long call to be answered")
    proxy.cut()
    try:

        async def a_dial_stuck() -> bool:
            return (await handle.query(OutboundRunWorkflow.progress)).dialing > 0

        await wait_for(a_dial_stuck, within=20, what="a dial to wait for the database")
        await handle.cancel()

        async def hung_up() -> bool:
            calls = {c["to"]: c for c in await stack.sim_calls(business.caller_id)}
            return calls[long_call]["ended_at"] is not None

        await wait_for(hung_up, within=20, what="the answered call to be hung up while the database is away")
    finally:
        proxy.restore()
    run = await stack.wait_run_ends(business, run_id, within=60)
    assert run["status"] == "cancelled"
    attempts = {a.lead_id: a for a in await stack.attempts(run_id)}
    [long_lead] = [lead for lead in await stack.leads(run_id) if lead.phone == long_call]
    assert attempts[long_lead.id].status == "completed"
    assert Counter(c["to"] for c in await stack.sim_calls(business.caller_id))[long_call] == 1
    await stack.save_history(run_workflow_id(run_id), "run_cancelled_without_database")
