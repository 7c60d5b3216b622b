"""The simulator refuses what Twilio's own OpenAPI description refuses, and accepts what the SDK sends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from twilio.rest import Client

from telephony.simulator import SimulatorConfig, create_app, fidelity
from tests.test_simulator import FROM, SID, TO, TOKEN, TWIML, Sim, serve_app

CALLS = f"/2010-04-01/Accounts/{SID}/Calls.json"
VALID = {"To": TO, "From": FROM, "Twiml": TWIML}

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:twilio.*")


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    """A simulator whose calls ring for a long time, so updates find them still live."""
    config = SimulatorConfig(
        account_sid=SID, auth_token=TOKEN, seed=3, queue_seconds=(0.0, 0.0), ring_seconds=(30.0, 30.0)
    )
    async for url in serve_app(create_app(config)):
        yield Sim(url, config)


@pytest.fixture
async def http(sim: Sim) -> AsyncIterator[httpx.AsyncClient]:
    """A raw client with the right credentials, to send what the SDK would never send."""
    async with httpx.AsyncClient(base_url=sim.url, auth=(SID, TOKEN)) as client:
        yield client


def _twilio_error(response: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["more_info"].endswith(str(body["code"]))
    return body


async def test_what_the_dialer_sends_passes(twilio: Client) -> None:
    """The dialer's create, lookup and hang-up calls, as activities/dialing.py makes them."""
    call = await twilio.calls.create_async(
        to=TO,
        from_=FROM,
        twiml=TWIML,
        status_callback="https://example.com/status?run=1&lead=2&attempt=1",
        status_callback_event=["initiated", "ringing", "answered", "completed"],
        status_callback_method="POST",
        timeout=30,
        time_limit=3600,
        machine_detection="Enable",
    )
    found = await twilio.calls.list_async(
        to=TO, from_=FROM, start_time_after=datetime.now(UTC) - timedelta(minutes=1), limit=20
    )
    assert [c.sid for c in found] == [call.sid]
    assert (await twilio.calls(call.sid).fetch_async()).status == "ringing"
    assert (await twilio.calls(call.sid).update_async(status="completed")).status == "canceled"


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("StatusCallbackEvent", "bogus", 21626),
        ("Timeout", "abc", 20001),
        ("MachineDetection", "Sometimes", 20001),
        ("StatusCallbackMethod", "PUT", 20001),
        # The simulator never reads Record: only Twilio's description can refuse it.
        ("Record", "maybe", 20001),
        ("ApplicationSid", "AP123", 20001),
    ],
)
async def test_create_refuses_values_twilio_refuses(
    http: httpx.AsyncClient, field: str, value: str, code: int
) -> None:
    body = _twilio_error(await http.post(CALLS, data={**VALID, field: value}))
    assert body["code"] == code
    assert field in body["message"]
    assert (await http.get("/_sim/calls")).json()["calls"] == []


@pytest.mark.parametrize(("missing", "code"), [("To", 21201), ("From", 21213)])
async def test_missing_numbers_keep_twilios_codes(http: httpx.AsyncClient, missing: str, code: int) -> None:
    form = {k: v for k, v in VALID.items() if k != missing}
    assert _twilio_error(await http.post(CALLS, data={**form, "Timeout": "30"}))["code"] == code


async def test_repeated_array_fields_and_unknown_parameters_pass(http: httpx.AsyncClient) -> None:
    form = {**VALID, "StatusCallbackEvent": ["ringing", "answered"], "NoSuchParameter": "ignored"}
    created = await http.post(CALLS, data=form)
    assert created.status_code == 201, created.text


async def test_update_refuses_an_unknown_status(http: httpx.AsyncClient) -> None:
    sid = (await http.post(CALLS, data=VALID)).json()["sid"]
    body = _twilio_error(
        await http.post(f"/2010-04-01/Accounts/{SID}/Calls/{sid}.json", data={"Status": "exploded"})
    )
    assert body["code"] == 20001 and "Status" in body["message"]
    assert (await http.get("/_sim/calls")).json()["calls"][0]["status"] == "ringing"


async def test_list_and_fetch_follow_the_description(http: httpx.AsyncClient) -> None:
    body = _twilio_error(await http.get(CALLS, params={"Status": "exploded"}))
    assert body["code"] == 20001 and "Status" in body["message"]
    assert "PageSize" in _twilio_error(await http.get(CALLS, params={"PageSize": "0"}))["message"]
    # Twilio documents date-only filters although the description types them as date-time.
    assert (await http.get(CALLS, params={"StartTime>": "2026-01-02"})).status_code == 200
    assert _twilio_error(await http.get(f"/2010-04-01/Accounts/{SID}/Calls/CA123.json"), 404)["code"] == 20404


async def test_credentials_are_checked_before_parameters(sim: Sim) -> None:
    async with httpx.AsyncClient(base_url=sim.url, auth=(SID, "wrong")) as http:
        assert _twilio_error(await http.post(CALLS, data={"Timeout": "abc"}), 401)["code"] == 20003


async def test_checking_can_be_turned_off(sim: Sim, http: httpx.AsyncClient) -> None:
    sim.config.validate_requests = False
    assert (await http.post(CALLS, data={**VALID, "Record": "maybe"})).status_code == 201


async def test_the_description_is_prepared_once(
    http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    fidelity.calls_api.cache_clear()
    prepared: list[int] = []
    original = fidelity.calls_spec

    def counting(full: dict[str, Any]) -> dict[str, Any]:
        prepared.append(1)
        return original(full)

    monkeypatch.setattr(fidelity, "calls_spec", counting)
    for _ in range(3):
        assert (await http.post(CALLS, data=VALID)).status_code == 201
    assert (await http.get(CALLS)).status_code == 200
    assert _twilio_error(await http.post(CALLS, data={**VALID, "Timeout": "abc"}))["code"] == 20001
    assert len(prepared) == 1
    assert fidelity.calls_api.cache_info().misses == 1


def test_the_prepared_description_holds_only_the_calls_operations() -> None:
    full = json.loads(fidelity.DEFAULT_SPEC_PATH.read_text(encoding="utf-8"))
    spec = fidelity.calls_spec(full)
    assert set(spec["paths"]) == set(fidelity.CALLS_PATHS)
    assert all(set(item) == {"get", "post"} for item in spec["paths"].values())
    create = spec["paths"][fidelity.CALLS_PATHS[0]]["post"]["requestBody"]["content"][
        "application/x-www-form-urlencoded"
    ]
    repeated = {"style": "form", "explode": True}
    assert create["encoding"] == {"StatusCallbackEvent": repeated, "RecordingStatusCallbackEvent": repeated}
    assert set(spec["components"]["schemas"]) == {"call_enum_status", "call_enum_update_status"}
    assert len(json.dumps(spec)) < len(json.dumps(full)) // 20
    original = full["paths"][fidelity.CALLS_PATHS[0]]["post"]["requestBody"]["content"]
    assert "encoding" not in original["application/x-www-form-urlencoded"]


def test_the_description_path_can_be_overridden(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(fidelity.SPEC_ENV, raising=False)
    assert fidelity.spec_path() == fidelity.DEFAULT_SPEC_PATH
    missing = tmp_path / "nowhere.json"
    monkeypatch.setenv(fidelity.SPEC_ENV, str(missing))
    assert fidelity.spec_path() == missing
    with pytest.raises(RuntimeError, match=fidelity.SPEC_ENV):
        fidelity.calls_api(missing)
