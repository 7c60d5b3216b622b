"""Answering machines: Twilio tells them from people in the background (AsyncAmd), and a run leaves
its voicemail on them or ends their calls, as its answer asks; the outcome says which."""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from typing import Any

from contracts.names import MACHINE_WEBHOOK, run_workflow_id
from outbound_dialer.settings import DEV_AUTH_TOKEN
from support.drive import ALWAYS_OPEN, new_number, twilio_callback, wait_for
from support.stack import Stack
from tests.conftest import SimulatorKnobs

HOSTILE_NAME = 'Ada <Hangup/> & "Lovelace"'


def _machine_verdict(stack: Stack, query: dict[str, Any], sid: str, who: str, token: str) -> dict[str, Any]:
    params = {
        "AccountSid": "AC" + "0" * 32,
        "CallSid": sid,
        "AnsweredBy": who,
        "MachineDetectionDuration": "900",
    }
    return twilio_callback(stack.settings, MACHINE_WEBHOOK, query, params, token=token)


async def test_a_machine_gets_the_voicemail_after_its_beep_and_a_person_the_answer(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    business = await stack.create_business()
    machine, person = new_number(), new_number()
    await stack.force_outcomes({machine: "completed", person: "completed"})
    # Left alone, the machine's call would run for ten minutes: the voicemail ends it.
    await sim_knobs(
        answered_by_by_to={machine: "machine_end_beep", person: "human"},
        talk_seconds_by_to={machine: 600.0, person: 1.0},
    )
    answer = {
        "say": "Hello {name}",
        "on_machine": "voicemail",
        "voicemail": {"say": "Sorry we missed you, {name}", "voice": "alice"},
    }
    leads = [{"phone": machine, "name": HOSTILE_NAME}, {"phone": person, "name": HOSTILE_NAME}]
    body = {"leads": leads, "options": {"calling_window": ALWAYS_OPEN, "answer": answer}}
    created = await stack.http.post("/v1/runs", json=body, headers=business.headers)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    run = await stack.wait_run_ends(business, run_id, within=60)
    await stack.save_history(run_workflow_id(run_id), "run_left_voicemail")

    assert run["status"] == "completed"
    assert {k: v for k, v in run["progress"]["outcomes"].items() if v} == {"answered": 1, "voicemail": 1}
    calls = {c["to"]: c for c in await stack.sim_calls(business.caller_id)}
    # The person heard the answer at once, and nothing else; the machine got the voicemail, the
    # lead's name in it as text.
    assert calls[person]["updated_with"] == []
    [left] = calls[machine]["updated_with"]
    said = ET.fromstring(left)
    assert [(e.tag, e.text, e.attrib) for e in said] == [
        ("Say", f"Sorry we missed you, {HOSTILE_NAME}", {"voice": "alice"})
    ]
    listed = (await stack.http.get(f"/v1/runs/{run_id}/calls", headers=business.headers)).json()
    by_phone = {c["phone"]: c for c in listed}
    assert (by_phone[machine]["answered_by"], by_phone[machine]["outcome"]) == (
        "machine_end_beep",
        "voicemail",
    )
    assert (by_phone[person]["answered_by"], by_phone[person]["outcome"]) == ("human", "answered")

    exported = await stack.http.get(f"/v1/runs/{run_id}/calls.csv", headers=business.headers)
    rows = {r["phone"]: r for r in csv.DictReader(io.StringIO(exported.text))}
    assert (rows[machine]["outcome"], rows[machine]["lead_status"]) == ("voicemail", "voicemail")
    assert (rows[person]["outcome"], rows[person]["lead_status"]) == ("answered", "answered")


async def test_a_machines_call_is_ended_when_the_answer_hangs_up_on_machines(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    business = await stack.create_business()
    machine = new_number()
    await stack.force_outcomes({machine: "completed"})
    await sim_knobs(answered_by_by_to={machine: "machine_start"}, talk_seconds_by_to={machine: 600.0})
    options = {"calling_window": ALWAYS_OPEN, "answer": {"say": "Hello", "on_machine": "hang_up"}}
    run_id = await stack.start_run(business, [machine], options)
    run = await stack.wait_run_ends(business, run_id, within=60)

    assert {k: v for k, v in run["progress"]["outcomes"].items() if v} == {"machine": 1}
    [call] = await stack.sim_calls(business.caller_id)
    assert call["status"] == "completed" and call["updated_with"] == []
    [attempt] = await stack.attempts(run_id)
    assert (attempt.answered_by, attempt.outcome) == ("machine_start", "machine")


async def test_a_forged_machine_verdict_is_refused_and_hangs_up_on_nobody(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    business = await stack.create_business()
    person = new_number()
    await stack.force_outcomes({person: "completed"})
    await sim_knobs(answered_by_by_to={person: "human"}, talk_seconds_by_to={person: 4.0})
    options = {"calling_window": ALWAYS_OPEN, "answer": {"say": "Hello", "on_machine": "hang_up"}}
    run_id = await stack.start_run(business, [person], options)

    async def answered() -> dict[str, Any] | None:
        calls = await stack.sim_calls(business.caller_id)
        return calls[0] if calls and calls[0]["status"] == "in-progress" else None

    call = await wait_for(answered, within=30, what="the person to answer")
    [attempt] = await stack.attempts(run_id)
    query = {"run": run_id, "lead": attempt.lead_id, "attempt": 1}
    forged = _machine_verdict(stack, query, call["sid"], "machine_start", token="not the auth token")
    assert (await stack.http.post(**forged)).status_code == 403
    unsigned = await stack.http.post(forged["url"], data=forged["data"])
    assert unsigned.status_code == 403
    # Signed by Twilio for a URL this service did not make (a business's own TwiML can hand Twilio
    # `<Number amdStatusCallback=...>` naming another run's attempt).
    params = dict(forged["data"])
    foreign = twilio_callback(
        stack.settings, MACHINE_WEBHOOK, query, params, token=DEV_AUTH_TOKEN, ours=False
    )
    assert (await stack.http.post(**foreign)).status_code == 403

    run = await stack.wait_run_ends(business, run_id, within=60)
    assert {k: v for k, v in run["progress"]["outcomes"].items() if v} == {"answered": 1}
    [attempt] = await stack.attempts(run_id)
    assert (attempt.answered_by, attempt.outcome) == ("human", None)
    assert attempt.duration is not None and attempt.duration >= 4  # talked to its end, not hung up on


async def test_a_machine_verdict_for_a_run_that_is_gone_is_acknowledged(stack: Stack) -> None:
    query = {"run": "0" * 32, "lead": 1, "attempt": 1}
    verdict = _machine_verdict(stack, query, "CA" + "1" * 32, "machine_start", token=DEV_AUTH_TOKEN)
    assert (await stack.http.post(**verdict)).status_code == 204
