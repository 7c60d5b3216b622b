"""Twilio's status webhooks: a bad signature changes nothing; duplicates and stale callbacks are harmless."""

from __future__ import annotations

from typing import Any

import httpx
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode
from twilio.request_validator import RequestValidator

from api.app import create_app
from contracts.names import CALL_STATUS_WEBHOOK
from outbound_dialer.settings import DEV_AUTH_TOKEN
from support.drive import Business, new_number, serve, twilio_callback, wait_for
from support.ports import free_port
from support.stack import Stack
from telephony.twilio_client import CallbackUrls
from tests.conftest import SimulatorKnobs


def signed(
    stack: Stack,
    query: dict[str, Any],
    params: dict[str, str],
    token: str = DEV_AUTH_TOKEN,
    ours: bool = True,
) -> dict:
    return twilio_callback(stack.settings, CALL_STATUS_WEBHOOK, query, params, token=token, ours=ours)


def callback(sid: str, status: str, seq: int) -> dict[str, str]:
    return {
        "CallSid": sid,
        "CallStatus": status,
        "SequenceNumber": str(seq),
        "AccountSid": "AC" + "0" * 32,
        "CallDuration": "7",
        "CalledCity": "",
    }


async def progress(stack: Stack, business: Business, run_id: str) -> dict[str, Any]:
    return dict((await stack.run(business, run_id))["progress"])


async def test_forged_duplicate_and_stale_callbacks_change_nothing(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    await sim_knobs(ring_seconds=(2.5, 2.5))  # a call rings while the test sends callbacks
    business = await stack.create_business(cap=1)
    first, second = new_number(), new_number()
    await stack.force_outcomes({first: "completed", second: "completed"})
    run_id = await stack.start_run(business, [first, second])

    async def second_call_ringing() -> dict[str, Any] | None:
        calls = (await stack.http.get(f"/v1/runs/{run_id}/calls", headers=business.headers)).json()
        by_phone = {c["phone"]: c for c in calls}
        if by_phone.get(first, {}).get("status") == "completed" and by_phone.get(second, {}).get("call_sid"):
            return by_phone
        return None

    calls = await wait_for(
        second_call_ringing, within=30, what="the first call to end and the second to ring"
    )
    first_call, second_call = calls[first], calls[second]
    before = await progress(stack, business, run_id)
    assert (before["done"], before["in_flight"]) == (1, 1)

    def query(call: dict[str, Any]) -> dict[str, Any]:
        return {"run": run_id, "lead": call["lead"], "attempt": call["attempt"]}

    # A forged "busy" for the ringing call: refused, nothing changes.
    forged = signed(stack, query(second_call), callback(second_call["call_sid"], "busy", 9), token="wrong")
    assert (await stack.http.post(**forged)).status_code == 403
    # Signed by Twilio, but for a URL this service did not make: what a business's own TwiML gets
    # by giving Twilio `<Number statusCallback=...>` naming another run's attempt.
    foreign = signed(stack, query(second_call), callback(second_call["call_sid"], "busy", 9), ours=False)
    assert (await stack.http.post(**foreign)).status_code == 403
    # The first call's terminal callback again, now claiming busy: it already ended.
    duplicate = signed(stack, query(first_call), callback(first_call["call_sid"], "busy", 4))
    assert (await stack.http.post(**duplicate)).status_code == 204
    # A callback for the ringing attempt that names some other call.
    impostor = signed(stack, query(second_call), callback("CA" + "f" * 32, "failed", 9))
    assert (await stack.http.post(**impostor)).status_code == 204
    # A stale "queued" arriving late.
    stale = signed(stack, query(second_call), callback(second_call["call_sid"], "queued", 0))
    assert (await stack.http.post(**stale)).status_code == 204

    after = await progress(stack, business, run_id)
    assert (after["done"], after["in_flight"]) == (1, 1)
    assert after["outcomes"]["busy"] == 0 and after["outcomes"]["failed"] == 0

    run = await stack.wait_run_ends(business, run_id)
    assert run["status"] == "completed"
    assert run["progress"]["outcomes"]["answered"] == 2
    assert {lead.status for lead in await stack.leads(run_id)} == {"answered"}


class _ClosingFor:
    """The real Temporal client, except that its first `refusals` signals are refused the way the
    server refuses them while a run is continuing as new."""

    def __init__(self, client: Client, refusals: int) -> None:
        self.client, self.refusals = client, refusals

    def get_workflow_handle(self, workflow_id: str) -> _ClosingFor:
        self.handle: WorkflowHandle[Any, Any] = self.client.get_workflow_handle(workflow_id)
        return self

    async def signal(self, name: str, arg: Any) -> None:
        if self.refusals:
            self.refusals -= 1
            message = "workflow operation can not be applied because workflow is closing"
            raise RPCError(message, RPCStatusCode.RESOURCE_EXHAUSTED, b"")
        await self.handle.signal(name, arg)


async def test_a_status_refused_while_the_run_continues_as_new_is_delivered(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    await sim_knobs(ring_seconds=(20.0, 20.0))  # the call rings until the test's callback ends it
    business = await stack.create_business(cap=1)
    run_id = await stack.start_run(business, [new_number()])

    async def ringing() -> dict[str, Any] | None:
        calls = (await stack.http.get(f"/v1/runs/{run_id}/calls", headers=business.headers)).json()
        return calls[0] if calls and calls[0]["call_sid"] else None

    call = await wait_for(ringing, within=30, what="the call to be placed")
    app = create_app(stack.settings)
    app.state.settings = stack.settings
    app.state.temporal = _ClosingFor(stack.temporal, refusals=3)
    request = signed(
        stack, {"run": run_id, "lead": call["lead"], "attempt": 1}, callback(call["call_sid"], "busy", 3)
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post(**request)
    assert response.status_code == 204, response.text
    run = await stack.wait_run_ends(business, run_id)
    assert run["progress"]["outcomes"]["busy"] == 1


async def test_a_bad_signature_is_refused(stack: Stack) -> None:
    request = signed(
        stack, {"run": "nope", "lead": 1, "attempt": 1}, callback("CA1", "completed", 1), token="x"
    )
    response = await stack.http.post(**request)
    assert response.status_code == 403
    unsigned = await stack.http.post(request["url"], data=request["data"])
    assert unsigned.status_code == 403


async def test_a_callback_for_a_run_that_no_longer_exists_is_acknowledged(stack: Stack) -> None:
    request = signed(stack, {"run": "0" * 32, "lead": 1, "attempt": 1}, callback("CA1", "completed", 1))
    assert (await stack.http.post(**request)).status_code == 204


async def test_blank_fields_are_part_of_the_signature(stack: Stack) -> None:
    request = signed(stack, {"run": "0" * 32, "lead": 1, "attempt": 1}, callback("CA1", "completed", 1))
    del request["data"]["CalledCity"]  # dropping a blank field breaks the signature Twilio computed
    assert (await stack.http.post(**request)).status_code == 403


async def test_webhooks_signed_with_hmac_sha256_are_accepted(stack: Stack) -> None:
    """Twilio's newer signing names its algorithm in X-Twilio-Webhooks-Signature-Settings."""
    query = {"run": "0" * 32, "lead": 1, "attempt": 1}
    params = callback("CA1", "completed", 1)
    url = signed(stack, query, params)["url"]
    signature = RequestValidator(DEV_AUTH_TOKEN).compute_signature(url, params, algorithm="HMAC_SHA256")
    headers = {
        "X-Twilio-Signature": signature,
        "X-Twilio-Webhooks-Signature-Settings": "algorithm=HMAC_SHA256",
    }
    assert (await stack.http.post(url, data=params, headers=headers)).status_code == 204
    # The same signature claimed as SHA-1 does not pass.
    assert (
        await stack.http.post(url, data=params, headers={"X-Twilio-Signature": signature})
    ).status_code == 403


async def test_behind_a_tls_proxy_the_public_url_is_what_twilio_signed(stack: Stack) -> None:
    """Twilio signs https://public-host/...; the API sees http://127.0.0.1:port/... from the proxy."""
    public = "https://dialer.example.com/outbound"
    settings = stack.settings.model_copy(update={"PUBLIC_BASE_URL": public})
    async with serve(create_app(settings, stack.temporal), free_port()) as local_url:
        params = callback("CA1", "completed", 1)
        made = CallbackUrls.of(settings).status("0" * 32, 1, 1).split("#")[0]
        path = made.removeprefix(public)
        as_twilio_saw_it = RequestValidator(DEV_AUTH_TOKEN).compute_signature(public + path, params)
        as_the_api_sees_it = RequestValidator(DEV_AUTH_TOKEN).compute_signature(local_url + path, params)
        async with httpx.AsyncClient(base_url=local_url) as client:
            ok = await client.post(path, data=params, headers={"X-Twilio-Signature": as_twilio_saw_it})
            refused = await client.post(path, data=params, headers={"X-Twilio-Signature": as_the_api_sees_it})
    assert ok.status_code == 204
    assert refused.status_code == 403
