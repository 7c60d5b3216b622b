"""The carrier simulator, driven through the real twilio SDK as the dialer drives Twilio."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request, Response
from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from telephony.simulator import SimulatorConfig, create_app
from telephony.simulator.__main__ import FAULTS_ENV, parse
from telephony.simulator.config import FinalStatus

SID = "AC" + "1" * 32
TOKEN = "test-auth-token"
FROM = "+14155550100"
TO = "+14155550111"
OTHER_TO = "+14155550122"
OTHER_FROM = "+14155550133"
TWIML = "<Response><Say>hi</Say></Response>"
ALL_EVENTS = ["initiated", "ringing", "answered", "completed"]

# The SDK's own use of deprecated aiohttp auth arguments.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:twilio.*")


@dataclass
class Received:
    """One status callback as the receiving endpoint saw it."""

    url: str
    form: dict[str, str]
    signature: str


@dataclass
class Sim:
    """A running simulator: its base URL and its config, which tests may change."""

    url: str
    config: SimulatorConfig


async def serve_app(app: FastAPI) -> AsyncIterator[str]:
    """Serve an app on a free local port for the duration of a test; yields its base URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.create_task(server.serve())
    await _wait_until(lambda: server.started or task.done(), "server start")
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def _wait_until(condition: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    try:
        async with asyncio.timeout(5):
            while True:
                met = condition()
                if met if isinstance(met, bool) else await met:
                    return
                await asyncio.sleep(0.01)
    except TimeoutError as exc:
        raise AssertionError(f"timed out waiting for {what}") from exc


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[Received]]]:
    """An HTTP endpoint that records every status callback it gets."""
    received: list[Received] = []
    app = FastAPI()

    @app.api_route("/status", methods=["GET", "POST"])
    async def status(request: Request) -> Response:
        fields = request.query_params if request.method == "GET" else await request.form()
        form = {k: str(v) for k, v in fields.items() if k not in ("run", "lead", "attempt")}
        received.append(Received(str(request.url), form, request.headers.get("X-Twilio-Signature", "")))
        return Response(status_code=204)

    async for url in serve_app(app):
        yield url, received


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    """A simulator with short ring and talk times, reachable over HTTP."""
    config = SimulatorConfig(
        account_sid=SID,
        auth_token=TOKEN,
        seed=7,
        queue_seconds=(0.0, 0.02),
        ring_seconds=(0.05, 0.15),
        talk_seconds=(0.05, 0.15),
    )
    async for url in serve_app(create_app(config)):
        yield Sim(url, config)


async def _sim_get(sim: Sim, path: str) -> Any:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        response = await http.get(path)
        response.raise_for_status()
        return response.json()


def _terminal(received: list[Received], call_sid: str) -> list[Received]:
    return [r for r in received if r.form["CallSid"] == call_sid and "CallDuration" in r.form]


async def test_call_plays_out_with_signed_ordered_callbacks(
    sim: Sim, twilio: Client, receiver: tuple[str, list[Received]]
) -> None:
    base, received = receiver
    callback_url = f"{base}/status?run=1&lead=42&attempt=1"
    sim.config.outcomes_by_to = {TO: "completed"}

    call = await twilio.calls.create_async(
        to=TO,
        from_=FROM,
        twiml=TWIML,
        status_callback=callback_url,
        status_callback_event=ALL_EVENTS,
        machine_detection="Enable",
    )
    assert call.sid.startswith("CA") and len(call.sid) == 34
    assert call.status == "queued"

    await _wait_until(lambda: bool(_terminal(received, call.sid)), "terminal callback")
    validator = RequestValidator(TOKEN)
    for r in received:
        assert r.url == callback_url
        assert validator.validate(callback_url, r.form, r.signature), r.form
    assert [r.form["SequenceNumber"] for r in received] == ["0", "1", "2", "3"]
    assert [r.form["CallStatus"] for r in received] == ["initiated", "ringing", "in-progress", "completed"]
    final = received[-1].form
    assert final["CallSid"] == call.sid
    assert final["To"] == TO and final["From"] == FROM and final["AccountSid"] == SID
    assert final["AnsweredBy"] in ("human", "machine_start")
    assert final["CalledCity"] == "" and final["CallDuration"] == final["Duration"]

    fetched = await twilio.calls(call.sid).fetch_async()
    assert fetched.status == "completed"
    assert fetched.duration == final["CallDuration"]
    assert fetched.answered_by == final["AnsweredBy"]


@pytest.mark.parametrize("outcome", ["busy", "no-answer", "failed"])
async def test_unanswered_outcome_sends_only_the_terminal_callback_by_default(
    sim: Sim, twilio: Client, receiver: tuple[str, list[Received]], outcome: FinalStatus
) -> None:
    base, received = receiver
    sim.config.outcomes_by_to = {TO: outcome}

    call = await twilio.calls.create_async(
        to=TO, from_=FROM, url=f"{base}/twiml", status_callback=f"{base}/status"
    )

    await _wait_until(lambda: bool(_terminal(received, call.sid)), "terminal callback")
    assert [(r.form["CallStatus"], r.form["SequenceNumber"]) for r in received] == [(outcome, "0")]
    assert received[0].form["CallDuration"] == "0"
    assert (await twilio.calls(call.sid).fetch_async()).status == outcome


@pytest.mark.parametrize(
    ("to", "from_", "code"),
    [("+1234", FROM, 21211), ("not-a-number", FROM, 21211), (TO, "+1555", 21212)],
)
async def test_invalid_numbers_are_rejected_like_twilio(
    twilio: Client, to: str, from_: str, code: int
) -> None:
    with pytest.raises(TwilioRestException) as caught:
        await twilio.calls.create_async(to=to, from_=from_, twiml=TWIML)
    assert (caught.value.status, caught.value.code) == (400, code)


async def test_missing_instructions_are_rejected(twilio: Client) -> None:
    with pytest.raises(TwilioRestException) as caught:
        await twilio.calls.create_async(to=TO, from_=FROM)
    assert caught.value.code == 21205


async def test_wrong_credentials_get_20003(sim: Sim) -> None:
    http_client = AsyncTwilioHttpClient()
    client = Client(SID, "wrong-token", http_client=http_client)
    client.api.base_url = sim.url
    try:
        with pytest.raises(TwilioRestException) as caught:
            await client.calls.create_async(to=TO, from_=FROM, twiml=TWIML)
    finally:
        await http_client.close()
    assert (caught.value.status, caught.value.code) == (401, 20003)
    assert (await _sim_get(sim, "/_sim/calls"))["calls"] == []


async def test_unknown_call_is_404(twilio: Client) -> None:
    with pytest.raises(TwilioRestException) as caught:
        await twilio.calls("CA" + "0" * 32).fetch_async()
    assert (caught.value.status, caught.value.code) == (404, 20404)


async def test_cancel_a_ringing_call(sim: Sim, twilio: Client, receiver: tuple[str, list[Received]]) -> None:
    base, received = receiver
    sim.config.ring_seconds = (30.0, 30.0)
    call = await twilio.calls.create_async(to=TO, from_=FROM, twiml=TWIML, status_callback=f"{base}/status")

    async def ringing() -> bool:
        return (await twilio.calls(call.sid).fetch_async()).status == "ringing"

    await _wait_until(ringing, "the call to ring")

    canceled = await twilio.calls(call.sid).update_async(status="canceled")
    assert canceled.status == "canceled"
    await _wait_until(lambda: bool(_terminal(received, call.sid)), "terminal callback")
    assert [r.form["CallStatus"] for r in received] == ["canceled"]

    with pytest.raises(TwilioRestException) as caught:
        await twilio.calls(call.sid).update_async(status="canceled")
    assert (caught.value.status, caught.value.code) == (400, 21220)


async def test_list_filters_by_to_from_and_start_time(sim: Sim, twilio: Client) -> None:
    before = datetime.now(UTC) - timedelta(seconds=2)
    first = await twilio.calls.create_async(to=TO, from_=FROM, twiml=TWIML)
    second = await twilio.calls.create_async(to=OTHER_TO, from_=OTHER_FROM, twiml=TWIML)

    async def dialed() -> bool:
        return all([(await twilio.calls(c.sid).fetch_async()).start_time for c in (first, second)])

    await _wait_until(dialed, "both calls to leave the queue")

    assert [c.sid for c in await twilio.calls.list_async(to=TO)] == [first.sid]
    assert [c.sid for c in await twilio.calls.list_async(from_=OTHER_FROM)] == [second.sid]
    newest_first = [second.sid, first.sid]
    assert [c.sid for c in await twilio.calls.list_async(start_time_after=before)] == newest_first
    assert [
        c.sid for c in await twilio.calls.list_async(start_time_after=before, page_size=1)
    ] == newest_first
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert await twilio.calls.list_async(start_time_after=later) == []


async def test_a_queued_call_has_no_start_time_and_new_calls_show_in_lists_late(
    sim: Sim, twilio: Client
) -> None:
    """Twilio's Call resource: `start_time` is "Empty if the call has not yet been dialed"
    (../shared/twilio/twilio_api_v2010.json), so a `StartTime` filter cannot find a queued call;
    `Status=queued` can. And a new call shows in lists only after a while."""
    sim.config.queue_seconds = (2.0, 2.0)
    before = datetime.now(UTC) - timedelta(minutes=1)
    call = await twilio.calls.create_async(to=TO, from_=FROM, twiml=TWIML)
    assert (await twilio.calls(call.sid).fetch_async()).start_time is None
    assert await twilio.calls.list_async(to=TO, start_time_after=before) == []
    assert [c.sid for c in await twilio.calls.list_async(to=TO, status="queued")] == [call.sid]

    sim.config.list_lag_seconds = 60
    late = await twilio.calls.create_async(to=OTHER_TO, from_=FROM, twiml=TWIML)
    assert await twilio.calls.list_async(to=OTHER_TO) == []
    assert (await twilio.calls(late.sid).fetch_async()).sid == late.sid  # a fetch by SID finds it


async def test_stats_count_creates_and_peak_concurrency(sim: Sim, twilio: Client) -> None:
    sim.config.ring_seconds = (0.3, 0.3)
    for to in (TO, TO, OTHER_TO):
        await twilio.calls.create_async(to=to, from_=FROM, twiml=TWIML)
    await twilio.calls.create_async(to=TO, from_=OTHER_FROM, twiml=TWIML)

    stats = await _sim_get(sim, "/_sim/stats")
    creates = {(c["to"], c["from"]): c["count"] for c in stats["creates"]}
    assert creates == {(TO, FROM): 2, (OTHER_TO, FROM): 1, (TO, OTHER_FROM): 1}
    peaks = {c["from"]: c["peak"] for c in stats["concurrency"]}
    assert peaks == {FROM: 3, OTHER_FROM: 1}

    async def all_ended() -> bool:
        return (await _sim_get(sim, "/_sim/stats"))["in_flight"] == 0

    await _wait_until(all_ended, "every call to end")
    calls = (await _sim_get(sim, "/_sim/calls"))["calls"]
    assert len(calls) == 4 and all(c["ended_at"] >= c["created_at"] for c in calls)


async def test_5xx_after_create_places_the_call_but_fails_the_request(sim: Sim, twilio: Client) -> None:
    sim.config.create_5xx_after_create_rate = 1.0
    with pytest.raises(TwilioRestException) as caught:
        await twilio.calls.create_async(to=TO, from_=FROM, twiml=TWIML)
    assert caught.value.status == 500

    found = await twilio.calls.list_async(to=TO, from_=FROM)  # queued or dialed: no StartTime filter
    assert len(found) == 1
    stats = await _sim_get(sim, "/_sim/stats")
    assert stats["faults"]["create_5xx_after_create"] == 1
    assert stats["creates"] == [{"to": TO, "from": FROM, "count": 1}]


async def test_429_creates_nothing(sim: Sim, twilio: Client) -> None:
    sim.config.create_429_rate = 1.0
    with pytest.raises(TwilioRestException) as caught:
        await twilio.calls.create_async(to=TO, from_=FROM, twiml=TWIML)
    assert (caught.value.status, caught.value.code) == (429, 20429)
    assert (await _sim_get(sim, "/_sim/calls"))["calls"] == []


async def test_config_and_reset_routes(sim: Sim, twilio: Client) -> None:
    await twilio.calls.create_async(to=TO, from_=FROM, twiml=TWIML)
    async with httpx.AsyncClient(base_url=sim.url) as http:
        updated = await http.post("/_sim/config", json={"drop_callback_rate": 0.5, "ring_seconds": [1, 2]})
        assert updated.status_code == 200
        assert updated.json()["drop_callback_rate"] == 0.5
        assert sim.config.ring_seconds == (1.0, 2.0)
        assert "auth_token" not in updated.json()

        rejected = await http.post("/_sim/config", json={"drop_callback_rate": 2, "seed": 1})
        assert rejected.status_code == 422
        assert sim.config.seed == 7

        assert (await http.post("/_sim/reset")).status_code == 200
        assert (await http.get("/_sim/calls")).json()["calls"] == []


async def test_reordered_and_duplicated_callbacks(
    sim: Sim, twilio: Client, receiver: tuple[str, list[Received]]
) -> None:
    base, received = receiver
    sim.config.outcomes_by_to = {TO: "completed"}
    sim.config.reorder_callback_rate = 1.0
    sim.config.duplicate_callback_rate = 1.0
    call = await twilio.calls.create_async(
        to=TO, from_=FROM, twiml=TWIML, status_callback=f"{base}/status", status_callback_event=ALL_EVENTS
    )

    await _wait_until(lambda: len(received) == 6, "six callbacks")
    # Each held-back callback follows the next one; each sent one arrives twice.
    assert [r.form["SequenceNumber"] for r in received] == ["1", "1", "0", "3", "3", "2"]
    assert received[0].form == received[1].form and received[0].signature == received[1].signature
    stats = (await _sim_get(sim, "/_sim/stats"))["callbacks"]
    assert (stats["sent"], stats["duplicated"], stats["reordered"]) == (6, 2, 2)
    assert _terminal(received, call.sid)[0].form["CallStatus"] == "completed"


async def test_callbacks_retry_until_the_endpoint_is_back(
    sim: Sim, twilio: Client, receiver: tuple[str, list[Received]]
) -> None:
    base, received = receiver
    sim.config.webhooks_unreachable_until = time.time() + 3600
    sim.config.callback_retry_attempts = 5
    sim.config.callback_retry_backoff_seconds = 0.1
    call = await twilio.calls.create_async(to=TO, from_=FROM, twiml=TWIML, status_callback=f"{base}/status")
    await _wait_until(_stats_condition(sim, lambda s: s["callbacks"]["retried"] >= 1), "a retry")
    sim.config.webhooks_unreachable_until = None  # the endpoint is back

    await _wait_until(lambda: bool(_terminal(received, call.sid)), "terminal callback")
    stats = (await _sim_get(sim, "/_sim/stats"))["callbacks"]
    assert stats["retried"] >= 1 and stats["sent"] == 1 and stats["failed"] == 0


@pytest.mark.parametrize(
    ("fragment", "delivered"),
    [("", False), ("#rc=3&rp=5xx", True), ("#rc=3&rp=all", True), ("#rc=3&rp=ct", False)],
    ids=["no-overrides", "retry-5xx", "retry-all", "retry-connect-only"],
)
async def test_a_callback_answered_5xx_is_retried_only_as_the_url_fragment_asks(
    sim: Sim, twilio: Client, fragment: str, delivered: bool
) -> None:
    """Twilio's webhook connection overrides: a fragment on the callback URL (never sent, and not
    part of the signature) sets the retries; by default a 5xx answer is not retried."""
    answers = [503, 503]
    received: list[Received] = []
    app = FastAPI()

    @app.post("/status")
    async def status(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        received.append(Received(str(request.url), form, request.headers.get("X-Twilio-Signature", "")))
        return Response(status_code=answers.pop(0) if answers else 204)

    async for base in serve_app(app):
        sim.config.callback_retry_backoff_seconds = 0.05
        call = await twilio.calls.create_async(
            to=TO, from_=FROM, twiml=TWIML, status_callback=f"{base}/status?run=7{fragment}"
        )

        # The sender's verdict: delivered, or given up.
        await _wait_until(
            _stats_condition(sim, lambda s: s["callbacks"]["sent"] + s["callbacks"]["failed"] == 1),
            "the terminal callback to be delivered or given up",
        )
        assert call.sid
    stats = (await _sim_get(sim, "/_sim/stats"))["callbacks"]
    assert (stats["sent"], stats["failed"]) == ((1, 0) if delivered else (0, 1))
    assert len(received) == (3 if delivered else 1)
    validator = RequestValidator(TOKEN)
    for got in received:
        assert got.url == f"{base}/status?run=7"
        assert validator.validate(got.url, got.form, got.signature)


async def test_dropped_callbacks_never_arrive(
    sim: Sim, twilio: Client, receiver: tuple[str, list[Received]]
) -> None:
    base, received = receiver
    sim.config.drop_callback_rate = 1.0
    await twilio.calls.create_async(to=TO, from_=FROM, twiml=TWIML, status_callback=f"{base}/status")

    await _wait_until(_stats_condition(sim, lambda s: s["callbacks"]["dropped"] == 1), "a dropped callback")
    assert received == []


async def test_get_callbacks_are_signed_over_the_full_url(
    sim: Sim, twilio: Client, receiver: tuple[str, list[Received]]
) -> None:
    base, received = receiver
    callback_url = f"{base}/status?run=7"
    call = await twilio.calls.create_async(
        to=TO, from_=FROM, twiml=TWIML, status_callback=callback_url, status_callback_method="GET"
    )

    await _wait_until(lambda: bool(_terminal(received, call.sid)), "terminal callback")
    (only,) = received
    assert only.url.startswith(callback_url + "&")
    assert RequestValidator(TOKEN).validate(only.url, {}, only.signature)


def _stats_condition(sim: Sim, predicate: Callable[[dict[str, Any]], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return predicate(await _sim_get(sim, "/_sim/stats"))

    return check


def test_fault_flags_reach_the_config() -> None:
    argv = [
        *(
            "--drop-callback-rate",
            "0.05",
            "--duplicate-callback-rate",
            "0.2",
            "--reorder-callback-rate",
            "0.1",
        ),
        *("--callback-delay-seconds", "2", "--create-429-rate", "0.1", "--create-5xx-rate", "0.05"),
        *("--create-5xx-after-create-rate", "0.05", "--callback-retry-attempts", "3", "--seed", "7"),
        *("--ring-seconds", "1", "2", "--no-validate-requests", "--port", "9000"),
    ]
    args, config = parse(argv, {"TWILIO_ACCOUNT_SID": SID, "TWILIO_AUTH_TOKEN": TOKEN})
    assert args.port == 9000
    assert (config.account_sid, config.auth_token) == (SID, TOKEN)
    assert config.drop_callback_rate == 0.05 and config.duplicate_callback_rate == 0.2
    assert config.reorder_callback_rate == 0.1 and config.callback_delay_seconds == 2.0
    assert (config.create_429_rate, config.create_5xx_rate, config.create_5xx_after_create_rate) == (
        0.1,
        0.05,
        0.05,
    )
    assert config.callback_retry_attempts == 3 and config.seed == 7
    assert config.ring_seconds == (1.0, 2.0) and config.validate_requests is False


def test_faults_from_the_environment_yield_to_flags() -> None:
    faults = {"drop_callback_rate": 0.05, "create_429_rate": 0.3, "outcomes_by_to": {TO: "busy"}}
    environ = {FAULTS_ENV: json.dumps(faults)}
    _, config = parse(["--create-429-rate", "0.1"], environ)
    assert config.drop_callback_rate == 0.05
    assert config.create_429_rate == 0.1
    assert config.outcomes_by_to == {TO: "busy"}
    assert parse([], {})[1] == SimulatorConfig()


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--drop-callback-rate", "2"], {}),
        ([], {FAULTS_ENV: "{not json"}),
        ([], {FAULTS_ENV: '{"drop_calback_rate": 0.1}'}),
    ],
)
def test_bad_fault_settings_stop_the_start(argv: list[str], environ: dict[str, str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse(argv, environ)
    assert exited.value.code == 2


async def _sim_calls(sim: Sim) -> dict[str, dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        return {c["sid"]: c for c in (await client.get(f"{sim.url}/_sim/calls")).json()["calls"]}


async def test_an_answered_call_runs_its_twiml_or_fetches_it_signed_from_its_url(
    sim: Sim, twilio: Client
) -> None:
    """As Twilio does once a call is answered: TwiML given with the create is run; a `Url` is
    fetched with a POST signed like a callback; a document that is not TwiML (12100) or a URL that
    does not answer 2xx (11200) ends the call."""
    sim.config.outcomes_by_to = {TO: "completed"}
    app = FastAPI()
    fetched: list[Received] = []

    @app.post("/voice")
    async def voice(request: Request) -> Response:
        form = {k: str(v) for k, v in (await request.form()).items()}
        fetched.append(Received(str(request.url), form, request.headers.get("X-Twilio-Signature", "")))
        return Response("<Response><Say>from the app</Say></Response>", media_type="text/xml")

    sids: list[str] = []

    async def all_ended() -> bool:
        calls = await _sim_calls(sim)
        return all(calls[sid]["ended_at"] for sid in sids)

    async for app_url in serve_app(app):
        for create in (
            {"url": f"{app_url}/voice?lead=7", "from_": FROM},
            {"url": f"{app_url}/nowhere", "from_": OTHER_FROM},
            {"twiml": "<Response><Say>hi</Response>", "from_": FROM},
        ):
            sids.append((await twilio.calls.create_async(to=TO, **create)).sid)
        await _wait_until(all_ended, "the three calls to end")
    calls = await _sim_calls(sim)
    from_app, missing, broken = (calls[sid] for sid in sids)
    assert from_app["answered_with"] == "<Response><Say>from the app</Say></Response>"
    assert from_app["answer_error"] is None
    [request] = fetched
    assert request.form["CallSid"] == sids[0] and request.form["CallStatus"] == "in-progress"
    assert RequestValidator(TOKEN).validate(request.url, request.form, request.signature)
    assert (missing["fetched_status"], missing["answer_error"]) == (404, 11200)
    assert broken["answer_error"] == 12100
