"""What Twilio reports after an answer, kept on the attempt: the leg a connect answer bridged to, and
the call's recording, deleted at Twilio once the business's retention has run out."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

from sqlalchemy import update
from temporalio.client import ScheduleActionExecutionStartWorkflow

from contracts.names import retention_schedule_id
from db.models import CallAttempt, utcnow
from support.drive import ALWAYS_OPEN, Business, new_number, twilio_callback, wait_for
from support.ports import free_port
from support.stack import Stack
from tests.conftest import SimulatorKnobs
from tests.test_business_events import Receiver, receiving, register


async def _agent(stack: Stack, business: Business) -> str:
    agent = new_number()
    response = await stack.http.put(
        f"/v1/businesses/me/agent-numbers/{agent}", json={"label": "desk"}, headers=business.headers
    )
    assert response.status_code == 200, response.text
    return agent


async def _calls(stack: Stack, business: Business, run_id: str) -> dict[str, dict[str, Any]]:
    listed = await stack.http.get(f"/v1/runs/{run_id}/calls", headers=business.headers)
    return {c["phone"]: c for c in listed.json()}


async def test_a_connected_and_recorded_call_keeps_its_agents_leg_and_its_recording(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    business = await stack.create_business()
    agent = await _agent(stack, business)
    taken, missed = new_number(), new_number()
    await stack.force_outcomes({taken: "completed", missed: "completed"})
    await sim_knobs(
        dial_outcomes_by_number={agent: "completed"},
        talk_seconds_by_to={taken: 2.0, missed: 2.0},
    )
    receiver = Receiver()
    async with receiving(receiver, free_port()) as url:
        await register(stack, business, url)
        answer = {"kind": "connect", "number": agent, "record": True}
        run_id = await stack.start_run(business, [taken], {"calling_window": ALWAYS_OPEN, "answer": answer})
        await stack.wait_run_ends(business, run_id)
        await sim_knobs(dial_outcomes_by_number={agent: "busy"})
        busy_run = await stack.start_run(
            business, [missed], {"calling_window": ALWAYS_OPEN, "answer": answer}
        )
        await stack.wait_run_ends(business, busy_run)

        async def completed() -> dict[str, Any] | None:
            for delivery in receiver.accepted():
                event = delivery.event
                if event["type"] == "call.completed" and event["data"]["lead"]["phone"] == taken:
                    return dict(event["data"])
            return None

        event = await wait_for(completed, within=30, what="the call.completed event")

    call = (await _calls(stack, business, run_id))[taken]
    recordings = (await stack.sim.get("/_sim/recordings")).json()["recordings"]
    [recording] = [r for r in recordings if r["call_sid"] == call["call_sid"]]
    assert (call["bridged_status"], call["bridged_seconds"]) == ("completed", 2)
    assert call["recording"]["sid"] == recording["sid"] and call["recording"]["status"] == "completed"
    assert call["recording"]["url"].endswith(f"/Recordings/{recording['sid']}")
    assert call["recording"]["seconds"] == recording["duration"] >= 2
    # The event waited for the recording, which Twilio reports after the call has ended.
    assert event["bridged"] == {"status": "completed", "seconds": 2}
    assert event["recording"] == call["recording"]

    other = (await _calls(stack, business, busy_run))[missed]
    assert (other["bridged_status"], other["bridged_seconds"]) == ("busy", 0)
    exported = await stack.http.get(f"/v1/runs/{run_id}/calls.csv", headers=business.headers)
    [row] = list(csv.DictReader(io.StringIO(exported.text)))
    assert (row["bridged_status"], row["recording_sid"]) == ("completed", recording["sid"])


def _forged(stack: Stack, path: str, params: dict[str, str]) -> dict[str, Any]:
    query = {"run": "0" * 32, "lead": 1, "attempt": 1}
    return twilio_callback(
        stack.settings, f"/v1/webhooks/twilio/{path}", query, params, token="not the auth token"
    )


async def test_forged_leg_and_recording_reports_are_refused(stack: Stack) -> None:
    sid = "CA" + "1" * 32
    recording = {"CallSid": sid, "RecordingSid": "RE" + "1" * 32, "RecordingStatus": "completed"}
    leg = {"CallSid": sid, "DialCallStatus": "completed", "DialCallDuration": "9"}
    for path, params in (("recording", recording), ("dial", leg)):
        forged = _forged(stack, path, params)
        assert (await stack.http.post(**forged)).status_code == 403
        assert (await stack.http.post(forged["url"], data=params)).status_code == 403


async def test_recordings_past_the_businesss_retention_are_deleted_at_twilio(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    business = await stack.create_business()
    kept, old = new_number(), new_number()
    await stack.force_outcomes({kept: "completed", old: "completed"})
    answer = {"say": "Hello", "record": True}
    run_id = await stack.start_run(business, [kept, old], {"calling_window": ALWAYS_OPEN, "answer": answer})
    await stack.wait_run_ends(business, run_id)

    async def recorded() -> bool:
        calls = await _calls(stack, business, run_id)
        return all(c["recording"] and c["recording"]["status"] == "completed" for c in calls.values())

    await wait_for(recorded, within=30, what="both recordings")
    settings = await stack.http.put(
        "/v1/businesses/me/recordings", json={"retention_days": 30}, headers=business.headers
    )
    assert settings.status_code == 200 and settings.json() == {"retention_days": 30}
    before = await _calls(stack, business, run_id)
    async with stack.sessions() as session, session.begin():
        await session.execute(
            update(CallAttempt)
            .where(CallAttempt.recording_sid == before[old]["recording"]["sid"])
            .values(recording_at=utcnow() - timedelta(days=31))
        )
    schedule = stack.temporal.get_schedule_handle(retention_schedule_id(stack.settings.TEMPORAL_TASK_QUEUE))
    await schedule.trigger()

    async def deleted() -> dict[str, Any] | None:
        calls = await _calls(stack, business, run_id)
        return calls if calls[old]["recording"]["status"] == "deleted" else None

    calls = await wait_for(deleted, within=60, what="the old recording to be deleted")
    started = (await schedule.describe()).info.recent_actions[-1]
    assert isinstance(started.action, ScheduleActionExecutionStartWorkflow)
    await stack.temporal.get_workflow_handle(started.action.workflow_id).result()
    await stack.save_history(started.action.workflow_id, "recordings_past_retention")
    assert calls[old]["recording"]["url"] is None
    assert calls[kept]["recording"]["status"] == "completed" and calls[kept]["recording"]["url"]
    at_twilio = {
        r["sid"]: r["deleted"] for r in (await stack.sim.get("/_sim/recordings")).json()["recordings"]
    }
    assert at_twilio[calls[old]["recording"]["sid"]] is True
    assert at_twilio[calls[kept]["recording"]["sid"]] is False
