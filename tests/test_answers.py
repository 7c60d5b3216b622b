"""When someone answers: a business chooses what its answered calls do, and never writes TwiML. The
TwiML is built with the `twilio` library, so whatever a lead's fields hold is said, never run."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any, get_args

import pytest
from fastapi import FastAPI, Request, Response
from pydantic import ValidationError
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from contracts.messages import ON_MACHINE_CHOICES, Answer
from contracts.names import run_workflow_id
from service.schemas import AnswerIn
from support.drive import ALWAYS_OPEN, new_number, serve, wait_for
from support.ports import free_port
from support.stack import Stack, signed_in
from telephony.answers import MAX_TWIML_CHARS, LeadFields, twiml_for
from tests.conftest import SimulatorKnobs

HOSTILE_NAME = 'Ada <Dial>+19005550100</Dial> & "Lovelace"'


def _said(twiml: str) -> tuple[str, dict[str, str]]:
    """The text the TwiML says and the `<Say>`'s attributes; fails if it is not one `<Say>`."""
    response = ET.fromstring(twiml)
    assert response.tag == "Response" and [child.tag for child in response] == ["Say"]
    return response[0].text or "", dict(response[0].attrib)


def test_a_leads_fields_are_said_as_text_whatever_they_hold() -> None:
    answer = Answer(say="Hello {name}, your {metadata.plan} plan {{renews}}", voice="Polly.Joanna")
    twiml = twiml_for(answer, LeadFields(HOSTILE_NAME, {"plan": "gold & <silver>"}))
    text, attributes = _said(twiml)
    assert text == f"Hello {HOSTILE_NAME}, your gold & <silver> plan {{renews}}"
    assert attributes == {"voice": "Polly.Joanna"}
    assert "<Dial>" not in twiml

    text, _ = _said(twiml_for(answer, LeadFields(None, {})))
    assert text == "Hello , your  plan {renews}"


def test_a_message_fits_in_what_twilio_takes_however_long_the_leads_fields() -> None:
    answer = Answer(say="{metadata.a} {metadata.b} {metadata.c} " * 5)
    twiml = twiml_for(answer, LeadFields("x", {key: "&" * 1000 for key in "abc"}))
    assert len(twiml) <= MAX_TWIML_CHARS
    _said(twiml)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        ({"say": "Hello {nmae}"}, "{name} or {metadata.<field>}"),
        ({"say": "Hi", "play": "https://example.com/a.mp3"}, "give one"),
        ({}, "give one"),
        ({"play": "http://example.com/a.mp3"}, "https://"),
        ({"play": "https://example.com/a.mp3", "voice": "alice"}, "not for `play`"),
        ({"say": "Hi", "voice": 'Polly.Joanna" onload="x'}, "pattern"),
        ({"say": "Hi", "kind": "dial"}, "literal_error"),
        ({"say": "Hi", "on_machine": "voicemail"}, "give both or neither"),
        ({"say": "Hi", "voicemail": {"say": "Call back"}}, "give both or neither"),
        ({"say": "Hi", "on_machine": "voicemail", "voicemail": {}}, "give one"),
        ({"say": "Hi", "on_machine": "voicemail", "voicemail": {"say": "{x}"}}, "{name} or {metadata"),
        ({"say": "Hi", "on_machine": "shout"}, "literal_error"),
    ],
)
def test_a_bad_answer_is_refused_with_the_reason(body: dict[str, str], complaint: str) -> None:
    with pytest.raises(ValidationError) as refused:
        AnswerIn.model_validate(body)
    assert complaint in str(refused.value) or complaint in str(refused.value.errors())


def test_a_voicemail_is_a_message_with_the_leads_fields_said_as_text() -> None:
    answer = AnswerIn.model_validate(
        {"say": "Hi", "on_machine": "voicemail", "voicemail": {"say": "{name}, call us", "voice": "alice"}}
    ).to_answer()
    assert answer.voicemail is not None and answer.on_machine == "voicemail"
    text, attributes = _said(twiml_for(answer.voicemail, LeadFields(HOSTILE_NAME)))
    assert (text, attributes) == (f"{HOSTILE_NAME}, call us", {"voice": "alice"})


def test_the_choices_on_a_machine_are_the_ones_the_run_knows() -> None:
    assert get_args(get_args(AnswerIn.model_fields["on_machine"].annotation)[0]) == ON_MACHINE_CHOICES


async def test_a_businesss_answer_is_what_its_calls_say_with_each_leads_fields(stack: Stack) -> None:
    business = await stack.create_business()
    default = await stack.http.get("/v1/businesses/me/answer", headers=business.headers)
    assert default.status_code == 200 and "outbound campaign" in default.json()["say"]
    chosen = {"kind": "message", "say": "Hello {name}, about your {metadata.plan} plan.", "voice": "alice"}
    response = await stack.http.put("/v1/businesses/me/answer", json=chosen, headers=business.headers)
    assert response.status_code == 200, response.text
    assert (await stack.http.get("/v1/businesses/me/answer", headers=business.headers)).json() == chosen

    phone, other = new_number(), new_number()
    await stack.force_outcomes({phone: "completed", other: "completed"})
    leads = [{"phone": phone, "name": HOSTILE_NAME, "metadata": {"plan": 'gold & "silver"'}}]
    body = {"leads": leads, "options": {"calling_window": ALWAYS_OPEN}}
    created = await stack.http.post("/v1/runs", json=body, headers=business.headers)
    assert created.status_code == 201, created.text
    await stack.wait_run_ends(business, created.json()["id"])
    override = {"calling_window": ALWAYS_OPEN, "answer": {"play": "https://example.com/hello.mp3"}}
    run_id = await stack.start_run(business, [other], override)
    await stack.wait_run_ends(business, run_id)

    calls = {c["to"]: c for c in await stack.sim_calls(business.caller_id)}
    text, attributes = _said(calls[phone]["twiml"])
    assert text == f'Hello {HOSTILE_NAME}, about your gold & "silver" plan.'
    assert attributes == {"voice": "alice"}
    played = ET.fromstring(calls[other]["twiml"])
    assert [(child.tag, child.text) for child in played] == [("Play", "https://example.com/hello.mp3")]


async def test_raw_twiml_is_refused_and_names_what_replaces_it(stack: Stack) -> None:
    business = await stack.create_business()
    dial_out = "<Response><Dial>+19005550100</Dial></Response>"
    body = {"leads": [{"phone": new_number()}], "options": {"twiml": dial_out}}
    response = await stack.http.post("/v1/runs", json=body, headers=business.headers)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "options", "twiml"] and "`answer`" in error["msg"]
    assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []
    assert await stack.sim_calls(business.caller_id) == []


async def test_the_dashboard_shows_and_changes_the_answer_and_says_what_is_wrong(stack: Stack) -> None:
    business = await stack.create_business()
    async with signed_in(stack, business) as (browser, token):
        shown = await browser.get("/ui/answer")
        assert shown.status_code == 200 and "outbound campaign" in shown.text
        bad = await browser.post("/ui/answer", data={"csrf": token, "say": "Hi {nmae}"})
        assert bad.status_code == 422 and "{name} or {metadata.&lt;field&gt;}" in bad.text
        forged = await browser.post("/ui/answer", data={"csrf": "x" + token, "say": "Hi"})
        assert forged.status_code == 403
        saved = await browser.post("/ui/answer", data={"csrf": token, "say": "Hi {name}", "voice": "alice"})
        assert saved.status_code == 303
    answer = (await stack.http.get("/v1/businesses/me/answer", headers=business.headers)).json()
    assert answer == {"kind": "message", "say": "Hi {name}", "voice": "alice"}


async def test_the_dashboard_sets_every_kind_of_answer_with_machines_and_recording(stack: Stack) -> None:
    business = await stack.create_business()
    agent = new_number()
    registered = await stack.http.put(
        f"/v1/businesses/me/agent-numbers/{agent}", json={"label": "desk"}, headers=business.headers
    )
    assert registered.status_code == 200, registered.text
    async with signed_in(stack, business) as (browser, token):
        shown = await browser.get("/ui/answer")
        assert f'value="{agent}"' in shown.text  # the registered numbers are the choices
        connect = {
            "csrf": token,
            "kind": "connect",
            "number": agent,
            "on_machine": "voicemail",
            "voicemail_say": "Hi {name}, call us back",
            "record": "on",
        }
        assert (await browser.post("/ui/answer", data=connect)).status_code == 303
        connected = (await stack.http.get("/v1/businesses/me/answer", headers=business.headers)).json()
        assert connected == {
            "kind": "connect",
            "number": agent,
            "on_machine": "voicemail",
            "voicemail": {"say": "Hi {name}, call us back"},
            "record": True,
        }
        shown = await browser.get("/ui/answer")
        assert "Hi {name}, call us back" in shown.text and 'value="connect" selected' in shown.text

        agent_form = {
            "csrf": token,
            "kind": "voice_agent",
            "url": "wss://agent.example.com/m",
            "metadata_fields": "plan, tier",
        }
        assert (await browser.post("/ui/answer", data=agent_form)).status_code == 303
        streamed = (await stack.http.get("/v1/businesses/me/answer", headers=business.headers)).json()
        assert streamed == {
            "kind": "voice_agent",
            "url": "wss://agent.example.com/m",
            "metadata_fields": ["plan", "tier"],
        }

        app = await browser.post(
            "/ui/answer", data={"csrf": token, "kind": "voice_app", "url": "https://app.example.com/a"}
        )
        assert app.status_code == 200 and "whsec_" in app.text  # its signing secret, shown once
        again = await browser.post(
            "/ui/answer", data={"csrf": token, "kind": "voice_app", "url": "https://app.example.com/b"}
        )
        assert again.status_code == 303

        half = await browser.post("/ui/answer", data={"csrf": token, "say": "Hi", "on_machine": "voicemail"})
        assert half.status_code == 422 and "give both or neither" in half.text


async def test_calls_are_connected_only_to_registered_agent_numbers(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    """A connect answer bridges the call to an agent's number, which the business must register
    first: refused when set or when a run starts, and checked again before each call is placed."""
    business = await stack.create_business(cap=1)
    agent, headers = new_number(), business.headers
    connect = {"kind": "connect", "number": agent}
    refused = await stack.http.put("/v1/businesses/me/answer", json=connect, headers=headers)
    assert refused.status_code == 422 and "register it first" in refused.json()["detail"]
    options = {"calling_window": ALWAYS_OPEN, "answer": connect}
    body = {"leads": [{"phone": new_number()}], "options": options}
    assert (await stack.http.post("/v1/runs", json=body, headers=headers)).status_code == 422

    registered = await stack.http.put(
        f"/v1/businesses/me/agent-numbers/{agent}", json={"label": "front desk"}, headers=headers
    )
    assert registered.status_code == 200, registered.text
    listed = (await stack.http.get("/v1/businesses/me/agent-numbers", headers=headers)).json()
    assert listed == [{"phone": agent, "label": "front desk"}]
    assert (
        await stack.http.put("/v1/businesses/me/answer", json=connect, headers=headers)
    ).status_code == 200

    first, later = new_number(), new_number()
    await stack.force_outcomes({first: "completed", later: "completed"})
    await sim_knobs(talk_seconds_by_to={first: 3.0})
    run_id = await stack.start_run(business, [first, later])

    async def first_call_live() -> bool:
        return len(await stack.sim_calls(business.caller_id)) == 1

    await wait_for(first_call_live, within=30, what="the first call to be placed")
    [call] = await stack.sim_calls(business.caller_id)
    bridged = ET.fromstring(call["twiml"])
    assert [(c.tag, [(n.tag, n.text) for n in c]) for c in bridged] == [("Dial", [("Number", agent)])]

    # Taken off the list while the run waits for its one line: its next call is not placed, and the
    # run pauses saying why (every call would be refused alike) until the number is back.
    removed = await stack.http.delete(f"/v1/businesses/me/agent-numbers/{agent}", headers=headers)
    assert removed.status_code == 204

    async def paused() -> dict[str, Any] | None:
        run = await stack.run(business, run_id)
        return run if run["status"] == "paused" else None

    run = await wait_for(paused, within=30, what="the run to pause")
    assert f"{agent} is not one of the business's agent numbers" in run["status_reason"]
    assert [c["to"] for c in await stack.sim_calls(business.caller_id)] == [first]
    await stack.http.put(f"/v1/businesses/me/agent-numbers/{agent}", json={}, headers=headers)
    assert (await stack.http.post(f"/v1/runs/{run_id}/resume", headers=headers)).status_code == 202
    run = await stack.wait_run_ends(business, run_id)
    assert run["status"] == "completed" and run["progress"]["outcomes"]["answered"] == 2
    await stack.save_history(run_workflow_id(run_id), "run_paused_by_its_answer")
    assert sorted(c["to"] for c in await stack.sim_calls(business.caller_id)) == sorted([first, later])


def test_a_voice_agent_learns_who_it_talks_to_from_the_streams_parameters() -> None:
    answer = Answer(kind="voice_agent", url="wss://agent.example.com/media", metadata_fields=["plan", "gone"])
    lead = LeadFields(HOSTILE_NAME, {"plan": 'gold & "silver"'}, "+14155550100", "r1", 7, 2)
    response = ET.fromstring(twiml_for(answer, lead))
    [connect] = list(response)
    [stream] = list(connect)
    assert (connect.tag, stream.tag, stream.attrib) == (
        "Connect",
        "Stream",
        {"url": "wss://agent.example.com/media"},
    )
    assert [(p.attrib["name"], p.attrib["value"]) for p in stream] == [
        ("run_id", "r1"),
        ("lead_id", "7"),
        ("attempt", "2"),
        ("phone", "+14155550100"),
        ("name", HOSTILE_NAME),
        ("metadata.plan", 'gold & "silver"'),
        ("metadata.gone", ""),
    ]


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "voice_agent", "url": "https://agent.example.com/media"},
        {"kind": "voice_agent", "url": 'wss://agent.example.com/"><Dial>'},
        {"kind": "voice_agent", "url": "wss://agent.example.com", "say": "Hi"},
        {"kind": "message", "say": "Hi", "url": "wss://agent.example.com"},
        {
            "kind": "voice_agent",
            "url": "wss://a.example.com",
            "metadata_fields": [f"f{i}" for i in range(11)],
        },
    ],
)
def test_a_voice_agent_answer_takes_a_wss_url_and_a_few_fields(body: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        AnswerIn.model_validate(body)


async def test_a_run_streams_its_answered_calls_to_the_businesss_voice_agent(stack: Stack) -> None:
    business = await stack.create_business()
    phone = new_number()
    await stack.force_outcomes({phone: "completed"})
    agent = {"kind": "voice_agent", "url": "wss://agent.example.com/media", "metadata_fields": ["plan"]}
    leads = [{"phone": phone, "name": "Ada", "metadata": {"plan": "gold", "secret": "not passed on"}}]
    body = {"leads": leads, "options": {"calling_window": ALWAYS_OPEN, "answer": agent}}
    created = await stack.http.post("/v1/runs", json=body, headers=business.headers)
    assert created.status_code == 201, created.text
    run_id = created.json()["id"]
    await stack.wait_run_ends(business, run_id)
    [call] = await stack.sim_calls(business.caller_id)
    [stream] = list(ET.fromstring(call["twiml"])[0])
    parameters = {p.attrib["name"]: p.attrib["value"] for p in stream}
    [attempt] = await stack.attempts(run_id)
    assert parameters == {
        "run_id": run_id,
        "lead_id": str(attempt.lead_id),
        "attempt": "1",
        "phone": phone,
        "name": "Ada",
        "metadata.plan": "gold",
    }


def test_what_twiml_cannot_carry_is_refused_from_a_business_and_dropped_from_a_lead() -> None:
    """Found in review: a control character or a lone surrogate in a message or a lead's field made
    malformed TwiML, and a message of 1,000 ampersands was taken though it could never fit."""
    for say in ("Hi \u000b there", "Hi \ud800"):
        with pytest.raises(ValidationError, match="cannot be said or sent to Twilio"):
            AnswerIn.model_validate({"say": say})
    with pytest.raises(ValidationError, match="longer than Twilio takes"):
        AnswerIn.model_validate({"say": "&" * 1000})
    answer = Answer(say="{name}: {metadata.x}")
    text, _ = _said(twiml_for(answer, LeadFields("Ada\u0001", {"x": "a\udc00b\ufffe"})))
    assert text == "Ada: ab"


def test_a_voice_agents_field_names_are_text_too() -> None:
    with pytest.raises(ValidationError, match="cannot be said or sent to Twilio"):
        AnswerIn.model_validate(
            {"kind": "voice_agent", "url": "wss://a.example.com", "metadata_fields": ["a\u0000"]}
        )


async def test_a_voice_app_is_fetched_for_each_answered_call_signed_with_the_businesss_secret(
    stack: Stack,
) -> None:
    """Twilio fetches the business's own app when the call is answered; the app learns the run, lead
    and attempt from the query, and verifies them with its own secret (a Standard Webhooks library),
    since Twilio's signature is made with the operator's token."""
    business = await stack.create_business()
    asked: list[dict[str, str]] = []
    app = FastAPI()

    @app.post("/answer")
    async def answer(request: Request) -> Response:
        query = dict(request.query_params)
        asked.append(query)
        Webhook(secrets[0]).verify(
            f"{query['run']}.{query['lead']}.{query['attempt']}",
            {k: query[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")},
            json_parse=False,
        )
        return Response("<Response><Say>Hello from the app</Say></Response>", media_type="text/xml")

    secrets: list[str] = []
    async with serve(app, free_port()) as app_url:
        chosen = {"kind": "voice_app", "url": f"{app_url}/answer?campaign=spring"}
        saved = await stack.http.put("/v1/businesses/me/answer", json=chosen, headers=business.headers)
        assert saved.status_code == 200, saved.text
        secrets.append(saved.json()["signing_secret"])
        assert secrets[0].startswith("whsec_")
        again = await stack.http.put("/v1/businesses/me/answer", json=chosen, headers=business.headers)
        assert "signing_secret" not in again.json()  # shown once, when it is made

        phone = new_number()
        await stack.force_outcomes({phone: "completed"})
        run_id = await stack.start_run(business, [phone])
        await stack.wait_run_ends(business, run_id)
    [call] = await stack.sim_calls(business.caller_id)
    assert call["answer_error"] is None and call["twiml"] is None
    assert call["answered_with"] == "<Response><Say>Hello from the app</Say></Response>"
    [attempt] = await stack.attempts(run_id)
    [query] = asked
    assert (query["run"], query["lead"], query["attempt"], query["campaign"]) == (
        run_id,
        str(attempt.lead_id),
        "1",
        "spring",
    )

    forged = {**query, "lead": str(attempt.lead_id + 1)}
    with pytest.raises(WebhookVerificationError):
        Webhook(secrets[0]).verify(
            f"{forged['run']}.{forged['lead']}.{forged['attempt']}",
            {k: forged[k] for k in ("webhook-id", "webhook-timestamp", "webhook-signature")},
            json_parse=False,
        )


async def test_a_test_call_plays_the_answer_once_under_the_do_not_call_list(stack: Stack) -> None:
    """ "Call me": one call with the business's answer (or one to try), at any hour, as a run of one
    lead, so the do-not-call list and the line cap hold for it as for any call."""
    business = await stack.create_business()
    mine, blocked = new_number(), new_number()
    await stack.force_outcomes({mine: "completed"})
    await stack.http.post("/v1/dnc", json={"phones": [blocked]}, headers=business.headers)
    trial = {"phone": mine, "answer": {"say": "Is this how it sounds?", "voice": "alice"}}
    called = await stack.http.post("/v1/businesses/me/test-call", json=trial, headers=business.headers)
    assert called.status_code == 201, called.text
    run = await stack.wait_run_ends(business, called.json()["id"])
    assert run["name"] == f"Test call to {mine}" and run["progress"]["outcomes"]["answered"] == 1
    [call] = await stack.sim_calls(business.caller_id)
    assert _said(call["twiml"]) == ("Is this how it sounds?", {"voice": "alice"})

    refused = await stack.http.post(
        "/v1/businesses/me/test-call", json={"phone": blocked}, headers=business.headers
    )
    run = await stack.wait_run_ends(business, refused.json()["id"])
    assert run["progress"]["outcomes"]["skipped_dnc"] == 1
    assert [c["to"] for c in await stack.sim_calls(business.caller_id)] == [mine]

    async with signed_in(stack, business) as (browser, token):
        bad = await browser.post("/ui/answer/test-call", data={"csrf": token, "phone": "4155550100"})
        assert bad.status_code == 422 and "country code" in bad.text
        again = await browser.post("/ui/answer/test-call", data={"csrf": token, "phone": mine})
        assert again.status_code == 303 and again.headers["location"].startswith("/ui/runs/")
