"""The carrier simulator's answered calls, driven through the real twilio SDK: answering-machine
detection in the background, live updates with new TwiML, recordings, and `<Dial>` actions.

Each callback goes to a small local app standing in for the customer's, and each is checked for the
`X-Twilio-Signature` Twilio would put on it."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from pydantic import ValidationError
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from telephony.simulator import SimulatorConfig, create_app
from telephony.simulator.config import FinalStatus
from telephony.simulator.detection import DETECT_MESSAGE_END, ENABLE, detect
from tests.test_simulator import FROM, SID, TO, TOKEN, TWIML, Sim, serve_app

CHILD = "+14155550144"
VOICEMAIL = "<Response><Say>Sorry we missed you</Say></Response>"
ALL_EVENTS = ["initiated", "ringing", "answered", "completed"]
AMD_FIELDS = {"AccountSid", "CallSid", "AnsweredBy", "MachineDetectionDuration"}

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:twilio.*")


@dataclass
class Hook:
    """One request the simulator made to the customer's app."""

    path: str
    method: str
    url: str
    form: dict[str, str]
    signature: str
    at: float = field(default_factory=time.monotonic)

    def signed(self) -> bool:
        """Whether `X-Twilio-Signature` is right: over the URL and the form (GET: the full URL)."""
        return RequestValidator(TOKEN).validate(
            self.url, {} if self.method == "GET" else self.form, self.signature
        )


@dataclass
class CustomerApp:
    """The customer's app: its base URL, what it was sent, and the TwiML it answers per path."""

    url: str
    hooks: list[Hook]
    documents: dict[str, str]

    def at(self, path: str) -> list[Hook]:
        """The requests to one path, in arrival order."""
        return [h for h in self.hooks if h.path == path]

    def terminal(self, call_sid: str) -> Hook | None:
        """The call's terminal status callback, once it has come."""
        return next(
            (h for h in self.at("status") if h.form["CallSid"] == call_sid and "CallDuration" in h.form), None
        )


@pytest.fixture
async def app() -> AsyncIterator[CustomerApp]:
    """Records every request; answers TwiML for the paths in `documents`, 404 for paths starting
    with `missing`, and 204 for the rest."""
    hooks: list[Hook] = []
    documents: dict[str, str] = {}
    server = FastAPI()

    @server.api_route("/{path:path}", methods=["GET", "POST"])
    async def anything(path: str, request: Request) -> Response:
        fields = request.query_params if request.method == "GET" else await request.form()
        form = {k: str(v) for k, v in fields.items()}
        signature = request.headers.get("X-Twilio-Signature", "")
        hooks.append(Hook(path, request.method, str(request.url), form, signature))
        if path in documents:
            return Response(documents[path], media_type="text/xml")
        return Response(status_code=404 if path.startswith("missing") else 204)

    async for url in serve_app(server):
        yield CustomerApp(url, hooks, documents)


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    """A simulator whose calls are answered quickly and talk for a second unless a test says otherwise."""
    config = SimulatorConfig(
        account_sid=SID,
        auth_token=TOKEN,
        seed=11,
        queue_seconds=(0.0, 0.02),
        ring_seconds=(0.05, 0.1),
        talk_seconds=(1.0, 1.0),
        outcomes_by_to={TO: "completed"},
    )
    async for url in serve_app(create_app(config)):
        yield Sim(url, config)


async def wait_for(condition: Callable[[], bool | Awaitable[bool]], what: str, within: float = 5) -> None:
    try:
        async with asyncio.timeout(within):
            while True:
                met = condition()
                if met if isinstance(met, bool) else await met:
                    return
                await asyncio.sleep(0.01)
    except TimeoutError as exc:
        raise AssertionError(f"timed out waiting for {what}") from exc


async def sim_get(sim: Sim, path: str) -> Any:
    async with httpx.AsyncClient(base_url=sim.url) as http:
        response = await http.get(path)
        response.raise_for_status()
        return response.json()


async def sim_call(sim: Sim, sid: str) -> dict[str, Any]:
    calls: list[dict[str, Any]] = (await sim_get(sim, "/_sim/calls"))["calls"]
    return next(c for c in calls if c["sid"] == sid)


async def wait_answered(sim: Sim, sid: str) -> None:
    async def answered() -> bool:
        return (await sim_call(sim, sid))["status"] == "in-progress"

    await wait_for(answered, "the call to be answered")


# Answering-machine detection


class _Picks(random.Random):
    """A random source whose `choice` always takes the item at one index."""

    def __init__(self, index: int) -> None:
        super().__init__(0)
        self.index = index

    def choice(self, seq: Any) -> Any:
        return seq[self.index]


@pytest.mark.parametrize(
    ("mode", "forced", "pick", "timeout", "expected"),
    [
        (ENABLE, None, 0, 30.0, ("human", 0.2)),
        (ENABLE, None, 1, 30.0, ("machine_start", 0.2)),
        (DETECT_MESSAGE_END, None, 0, 30.0, ("human", 0.2)),
        (DETECT_MESSAGE_END, None, 1, 30.0, ("machine_end_beep", 1.5)),
        (DETECT_MESSAGE_END, "machine_end_silence", 0, 30.0, ("machine_end_silence", 1.5)),
        (DETECT_MESSAGE_END, "fax", 1, 30.0, ("fax", 0.2)),
        (ENABLE, "machine_end_other", 0, 30.0, ("machine_end_other", 0.2)),
        (DETECT_MESSAGE_END, None, 1, 1.0, ("unknown", 1.0)),
    ],
)
def test_the_verdict_follows_the_mode_the_forced_answer_and_the_timeout(
    mode: str, forced: str | None, pick: int, timeout: float, expected: tuple[str, float]
) -> None:
    """`Enable` reports a machine at its start, `DetectMessageEnd` at the beep after its greeting;
    people and faxes are told at once; detection longer than `MachineDetectionTimeout` is `unknown`."""
    config = SimulatorConfig(machine_detection_seconds=0.2, machine_greeting_seconds=1.5)
    verdict = detect(mode, forced, _Picks(pick), config, timeout)
    assert (verdict.answered_by, verdict.after_seconds) == expected
    assert verdict.duration_ms == str(round(expected[1] * 1000))


async def test_async_amd_sends_one_signed_callback_and_status_callbacks_carry_no_answered_by(
    sim: Sim, twilio: Client, app: CustomerApp
) -> None:
    sim.config.answered_by_by_to = {TO: "machine_start"}
    call = await twilio.calls.create_async(
        to=TO,
        from_=FROM,
        twiml=TWIML,
        status_callback=f"{app.url}/status",
        status_callback_event=ALL_EVENTS,
        machine_detection="Enable",
        async_amd="true",
        # The connection overrides are Twilio's, neither sent nor signed.
        async_amd_status_callback=f"{app.url}/amd?lead=7#rc=2&rp=5xx",
    )

    await wait_for(lambda: app.terminal(call.sid) is not None, "the terminal status callback")
    [amd] = app.at("amd")
    assert amd.method == "POST" and amd.url == f"{app.url}/amd?lead=7"
    assert amd.signed()
    assert set(amd.form) == AMD_FIELDS
    assert amd.form["AccountSid"] == SID and amd.form["CallSid"] == call.sid
    assert (amd.form["AnsweredBy"], amd.form["MachineDetectionDuration"]) == ("machine_start", "200")
    statuses = app.at("status")
    assert [h.form["CallStatus"] for h in statuses] == ["initiated", "ringing", "in-progress", "completed"]
    assert all("AnsweredBy" not in h.form for h in statuses)
    assert statuses[2].at < amd.at < statuses[3].at

    assert (await twilio.calls(call.sid).fetch_async()).answered_by == "machine_start"
    seen = await sim_call(sim, call.sid)
    assert (seen["answered_by"], seen["amd_callback_fate"], seen["async_amd"]) == (
        "machine_start",
        "sent",
        True,
    )
    assert seen["machine_detection"] == "Enable" and seen["answered_with"] == TWIML
    stats = await sim_get(sim, "/_sim/stats")
    assert stats["amd_callbacks"]["sent"] == 1 and stats["callbacks"]["sent"] == 4


async def test_detect_message_end_runs_the_twiml_at_once_and_reports_at_the_beep(
    sim: Sim, twilio: Client, app: CustomerApp
) -> None:
    """With `AsyncAmd` the call's `Url` is fetched on answer; the verdict comes after the greeting."""
    sim.config.answered_by_by_to = {TO: "machine_end_beep"}
    sim.config.machine_greeting_seconds = 0.6
    app.documents["voice"] = TWIML
    call = await twilio.calls.create_async(
        to=TO,
        from_=FROM,
        url=f"{app.url}/voice",
        machine_detection="DetectMessageEnd",
        async_amd="true",
        async_amd_status_callback=f"{app.url}/amd",
        async_amd_status_callback_method="GET",
    )

    await wait_for(lambda: bool(app.at("amd")), "the AMD callback")
    [voice], [amd] = app.at("voice"), app.at("amd")
    assert amd.at - voice.at >= 0.5
    assert amd.method == "GET" and amd.url.startswith(f"{app.url}/amd?") and amd.signed()
    assert (amd.form["AnsweredBy"], amd.form["MachineDetectionDuration"]) == ("machine_end_beep", "600")
    assert (await twilio.calls(call.sid).fetch_async()).answered_by == "machine_end_beep"


async def test_detection_longer_than_its_timeout_reports_unknown(
    sim: Sim, twilio: Client, app: CustomerApp
) -> None:
    sim.config.answered_by_by_to = {TO: "machine_end_beep"}
    sim.config.machine_greeting_seconds = 3.0
    sim.config.talk_seconds = (2.0, 2.0)
    await twilio.calls.create_async(
        to=TO,
        from_=FROM,
        twiml=TWIML,
        machine_detection="DetectMessageEnd",
        machine_detection_timeout=1,
        async_amd="true",
        async_amd_status_callback=f"{app.url}/amd",
    )

    await wait_for(lambda: bool(app.at("amd")), "the AMD callback")
    [amd] = app.at("amd")
    assert (amd.form["AnsweredBy"], amd.form["MachineDetectionDuration"]) == ("unknown", "1000")


async def test_a_call_that_ends_before_detection_gets_no_amd_callback(
    sim: Sim, twilio: Client, app: CustomerApp
) -> None:
    sim.config.answered_by_by_to = {TO: "machine_end_beep"}
    sim.config.machine_greeting_seconds = 0.5
    sim.config.talk_seconds = (0.1, 0.1)
    call = await twilio.calls.create_async(
        to=TO,
        from_=FROM,
        twiml=TWIML,
        status_callback=f"{app.url}/status",
        machine_detection="DetectMessageEnd",
        async_amd="true",
        async_amd_status_callback=f"{app.url}/amd",
    )

    await wait_for(lambda: app.terminal(call.sid) is not None, "the terminal status callback")
    await asyncio.sleep(0.7)  # past the greeting: the verdict would have come by now
    assert app.at("amd") == []
    seen = await sim_call(sim, call.sid)
    assert (seen["answered_by"], seen["amd_callback_fate"]) == (None, "call-ended")
    assert (await sim_get(sim, "/_sim/stats"))["amd_callbacks"]["sent"] == 0


async def test_synchronous_detection_reports_in_the_status_callbacks_only(
    sim: Sim, twilio: Client, app: CustomerApp
) -> None:
    """Without `AsyncAmd`, `AnsweredBy` is in the answered and final status callbacks, and there is no
    AMD callback even if a URL for one was given."""
    sim.config.answered_by_by_to = {TO: "fax"}
    call = await twilio.calls.create_async(
        to=TO,
        from_=FROM,
        twiml=TWIML,
        status_callback=f"{app.url}/status",
        status_callback_event=ALL_EVENTS,
        machine_detection="Enable",
        async_amd_status_callback=f"{app.url}/amd",
    )

    await wait_for(lambda: app.terminal(call.sid) is not None, "the terminal status callback")
    by_status = {h.form["CallStatus"]: h.form.get("AnsweredBy") for h in app.at("status")}
    assert by_status == {"initiated": None, "ringing": None, "in-progress": "fax", "completed": "fax"}
    assert app.at("amd") == []
    assert (await sim_call(sim, call.sid))["amd_callback_fate"] is None


async def test_forced_answers_must_be_twilios_values(sim: Sim) -> None:
    with pytest.raises(ValidationError):
        SimulatorConfig.model_validate({"answered_by_by_to": {TO: "robot"}})
    async with httpx.AsyncClient(base_url=sim.url) as http:
        assert (await http.post("/_sim/config", json={"answered_by_by_to": {TO: "robot"}})).status_code == 422
        accepted = await http.post("/_sim/config", json={"answered_by_by_to": {TO: "machine_end_other"}})
        assert accepted.status_code == 200
    assert sim.config.answered_by_by_to == {TO: "machine_end_other"}


# Updating a live call


async def test_an_update_with_twiml_plays_it_and_hangs_up(sim: Sim, twilio: Client, app: CustomerApp) -> None:
    """As a voicemail left on a machine: the call plays the new TwiML, then ends `completed` after
    `update_play_seconds` instead of its talk time. An ended call cannot be updated (21220)."""
    sim.config.talk_seconds = (30.0, 30.0)
    sim.config.update_play_seconds = 0.4
    call = await twilio.calls.create_async(
        to=TO, from_=FROM, twiml=TWIML, status_callback=f"{app.url}/status"
    )
    await wait_answered(sim, call.sid)

    updated_at = time.monotonic()
    updated = await twilio.calls(call.sid).update_async(twiml=VOICEMAIL)
    assert updated.status == "in-progress"
    await wait_for(lambda: app.terminal(call.sid) is not None, "the terminal status callback")
    terminal = app.terminal(call.sid)
    assert terminal is not None and terminal.form["CallStatus"] == "completed"
    assert 0.35 <= terminal.at - updated_at < 3
    seen = await sim_call(sim, call.sid)
    assert (seen["updated_with"], seen["update_error"]) == ([VOICEMAIL], None)

    with pytest.raises(TwilioRestException) as caught:
        await twilio.calls(call.sid).update_async(twiml=VOICEMAIL)
    assert (caught.value.status, caught.value.code) == (400, 21220)


async def test_an_update_with_a_url_fetches_it_and_what_is_not_twiml_ends_the_call(
    sim: Sim, twilio: Client, app: CustomerApp
) -> None:
    sim.config.talk_seconds = (30.0, 30.0)
    sim.config.update_play_seconds = 0.2
    app.documents["voicemail"] = VOICEMAIL
    updates: list[dict[str, str]] = [
        {"url": f"{app.url}/voicemail?lead=3"},
        {"url": f"{app.url}/voicemail", "method": "GET"},
        {"twiml": "just words"},
        {"url": f"{app.url}/missing"},
    ]
    sids = [(await twilio.calls.create_async(to=TO, from_=FROM, twiml=TWIML)).sid for _ in updates]
    for sid, update in zip(sids, updates, strict=True):
        await wait_answered(sim, sid)
        await twilio.calls(sid).update_async(**update)

    async def all_ended() -> bool:
        return all([(await sim_call(sim, sid))["status"] == "completed" for sid in sids])

    await wait_for(all_ended, "every updated call to end")
    seen = [await sim_call(sim, sid) for sid in sids]
    assert [(s["updated_with"], s["update_error"]) for s in seen] == [
        ([VOICEMAIL], None),
        ([VOICEMAIL], None),
        (["just words"], 12100),
        ([], 11200),
    ]
    posted, got = app.at("voicemail")
    assert (posted.method, posted.form["CallSid"], posted.form["CallStatus"]) == (
        "POST",
        sids[0],
        "in-progress",
    )
    assert got.method == "GET" and got.form["CallSid"] == sids[1]
    assert posted.signed() and got.signed()


async def test_an_update_of_a_ringing_call_runs_once_it_is_answered(
    sim: Sim, twilio: Client, app: CustomerApp
) -> None:
    sim.config.ring_seconds = (3.0, 3.0)  # long enough for the update to come while it rings
    call = await twilio.calls.create_async(
        to=TO, from_=FROM, twiml=TWIML, status_callback=f"{app.url}/status"
    )

    async def ringing() -> bool:
        return (await sim_call(sim, call.sid))["status"] == "ringing"

    await wait_for(ringing, "the call to ring")
    await twilio.calls(call.sid).update_async(twiml=VOICEMAIL)
    await wait_for(lambda: app.terminal(call.sid) is not None, "the terminal status callback")
    seen = await sim_call(sim, call.sid)
    assert (seen["answered_with"], seen["updated_with"]) == (VOICEMAIL, [])


# Recordings


async def test_a_recorded_call_has_a_recording_that_can_be_fetched_and_deleted(
    sim: Sim, twilio: Client, app: CustomerApp
) -> None:
    call = await twilio.calls.create_async(
        to=TO,
        from_=FROM,
        twiml=TWIML,
        status_callback=f"{app.url}/status",
        record=True,
        recording_channels="dual",
        recording_status_callback=f"{app.url}/recording?lead=9",
        recording_status_callback_event=["completed"],
    )

    await wait_for(lambda: bool(app.at("recording")), "the recording status callback")
    [hook] = app.at("recording")
    terminal = app.terminal(call.sid)
    assert terminal is not None and hook.signed() and hook.method == "POST"
    form = hook.form
    sid = form["RecordingSid"]
    assert sid.startswith("RE") and len(sid) == 34
    assert form == {
        "AccountSid": SID,
        "CallSid": call.sid,
        "RecordingSid": sid,
        "RecordingUrl": f"https://api.twilio.com/2010-04-01/Accounts/{SID}/Recordings/{sid}",
        "RecordingStatus": "completed",
        "RecordingDuration": terminal.form["CallDuration"],
        "RecordingChannels": "2",
        "RecordingSource": "OutboundAPI",
        "RecordingStartTime": form["RecordingStartTime"],
    }
    started = parsedate_to_datetime(form["RecordingStartTime"]).timestamp()
    assert abs(started - time.time()) < 10

    recording = await twilio.recordings(sid).fetch_async()
    assert (recording.sid, recording.call_sid, recording.account_sid) == (sid, call.sid, SID)
    assert (recording.duration, recording.channels, recording.status) == (
        form["RecordingDuration"],
        2,
        "completed",
    )
    assert recording.source == "OutboundAPI" and recording.start_time is not None
    assert recording.uri == f"/2010-04-01/Accounts/{SID}/Recordings/{sid}.json"
    assert (await sim_call(sim, call.sid))["recording_sid"] == sid
    listed = (await sim_get(sim, "/_sim/recordings"))["recordings"]
    assert [(r["sid"], r["call_sid"], r["deleted"], r["callback_fate"]) for r in listed] == [
        (sid, call.sid, False, "sent")
    ]

    assert await twilio.recordings(sid).delete_async() is True
    for gone in (twilio.recordings(sid).fetch_async(), twilio.recordings(sid).delete_async()):
        with pytest.raises(TwilioRestException) as caught:
            await gone
        assert (caught.value.status, caught.value.code) == (404, 20404)
    assert (await twilio.recordings(sid).fetch_async(include_soft_deleted=True)).status == "deleted"
    assert [r["deleted"] for r in (await sim_get(sim, "/_sim/recordings"))["recordings"]] == [True]
    stats = await sim_get(sim, "/_sim/stats")
    assert stats["recording_callbacks"]["sent"] == 1 and stats["recordings"] == 1


async def test_only_answered_recorded_calls_are_recorded_and_reported_as_asked(
    sim: Sim, twilio: Client, app: CustomerApp
) -> None:
    """A busy call has nothing to record; a call not asked to record is not; a recording whose
    callback was asked only for `in-progress` sends no `completed` callback."""
    busy = "+14155550155"
    sim.config.outcomes_by_to = {TO: "completed", busy: "busy"}
    sim.config.talk_seconds = (0.1, 0.1)
    recorded = {"record": True, "recording_status_callback": f"{app.url}/recording"}
    creates: list[dict[str, Any]] = [
        {"to": busy, **recorded},
        {"to": TO},
        {"to": TO, **recorded, "recording_status_callback_event": ["in-progress"]},
    ]
    sids = [
        (
            await twilio.calls.create_async(from_=FROM, twiml=TWIML, status_callback=f"{app.url}/status", **c)
        ).sid
        for c in creates
    ]

    await wait_for(lambda: all(app.terminal(sid) for sid in sids), "every call to end")
    await asyncio.sleep(0.2)
    assert app.at("recording") == []
    listed = (await sim_get(sim, "/_sim/recordings"))["recordings"]
    assert [(r["call_sid"], r["callback_fate"]) for r in listed] == [(sids[2], None)]


async def test_an_unknown_or_malformed_recording_is_404(sim: Sim) -> None:
    async with httpx.AsyncClient(base_url=sim.url, auth=(SID, TOKEN)) as http:
        for sid in ("RE" + "0" * 32, "RE123"):
            response = await http.get(f"/2010-04-01/Accounts/{SID}/Recordings/{sid}.json")
            assert (response.status_code, response.json()["code"]) == (404, 20404)


# <Dial> with an action


def dial_twiml(action: str, method: str | None = None, number: str = CHILD) -> str:
    method_attribute = f' method="{method}"' if method else ""
    return f'<Response><Dial action="{action}"{method_attribute}><Number>{number}</Number></Dial></Response>'


@pytest.mark.parametrize(
    ("outcome", "method"), [("completed", None), ("busy", "POST"), ("no-answer", "GET"), ("failed", None)]
)
async def test_a_dial_with_an_action_reports_the_dialed_leg_then_the_call_ends(
    sim: Sim, twilio: Client, app: CustomerApp, outcome: FinalStatus, method: str | None
) -> None:
    sim.config.dial_outcomes_by_number = {CHILD: outcome}
    sim.config.talk_seconds = (1.2, 1.2)
    call = await twilio.calls.create_async(
        to=TO,
        from_=FROM,
        twiml=dial_twiml(f"{app.url}/dialed?lead=5", method),
        status_callback=f"{app.url}/status",
    )

    await wait_for(lambda: app.terminal(call.sid) is not None, "the terminal status callback")
    [action] = app.at("dialed")
    terminal = app.terminal(call.sid)
    assert terminal is not None and action.at < terminal.at
    assert terminal.form["CallStatus"] == "completed"
    assert action.method == (method or "POST") and action.signed()
    assert action.url.startswith(f"{app.url}/dialed?lead=5")
    form = action.form
    assert (form["AccountSid"], form["CallSid"], form["To"], form["From"]) == (SID, call.sid, TO, FROM)
    child = form["DialCallSid"]
    assert child.startswith("CA") and len(child) == 34 and child != call.sid
    bridged = outcome == "completed"
    expected_duration = str(math.ceil(1.2)) if bridged else "0"
    assert (form["DialCallStatus"], form["DialCallDuration"], form["DialBridged"]) == (
        outcome,
        expected_duration,
        "true" if bridged else "false",
    )
    [leg] = (await sim_call(sim, call.sid))["dialed"]
    assert leg == {
        "sid": child,
        "number": CHILD,
        "action": f"{app.url}/dialed?lead=5",
        "status": outcome,
        "duration": int(expected_duration),
        "callback_fate": "sent",
    }
    assert (await sim_get(sim, "/_sim/stats"))["dial_callbacks"]["sent"] == 1


async def test_a_dial_without_an_action_just_talks(sim: Sim, twilio: Client, app: CustomerApp) -> None:
    sim.config.talk_seconds = (0.2, 0.2)
    dial = f"<Response><Dial><Number>{CHILD}</Number></Dial></Response>"
    call = await twilio.calls.create_async(to=TO, from_=FROM, twiml=dial, status_callback=f"{app.url}/status")

    await wait_for(lambda: app.terminal(call.sid) is not None, "the terminal status callback")
    await asyncio.sleep(0.1)
    assert [h.path for h in app.hooks] == ["status"]
    assert (await sim_call(sim, call.sid))["dialed"] == []


async def test_an_update_that_dials_bridges_the_live_call(sim: Sim, twilio: Client, app: CustomerApp) -> None:
    """Dial TwiML given by an update (here fetched from a `Url`) bridges like TwiML given at create."""
    sim.config.talk_seconds = (30.0, 30.0)
    sim.config.dial_outcomes_by_number = {CHILD: "busy"}
    app.documents["transfer"] = dial_twiml(f"{app.url}/dialed")
    call = await twilio.calls.create_async(
        to=TO, from_=FROM, twiml=TWIML, status_callback=f"{app.url}/status"
    )
    await wait_answered(sim, call.sid)

    await twilio.calls(call.sid).update_async(url=f"{app.url}/transfer")
    await wait_for(lambda: app.terminal(call.sid) is not None, "the terminal status callback")
    [action] = app.at("dialed")
    assert (action.form["CallSid"], action.form["DialCallStatus"]) == (call.sid, "busy")
    assert (await sim_call(sim, call.sid))["updated_with"] == [app.documents["transfer"]]


# What Twilio's description accepts


async def test_the_new_create_parameters_pass_the_description_and_bad_values_do_not(sim: Sim) -> None:
    calls = f"/2010-04-01/Accounts/{SID}/Calls.json"
    valid = {"To": TO, "From": FROM, "Twiml": TWIML}
    given = {
        **valid,
        "MachineDetection": "DetectMessageEnd",
        "MachineDetectionTimeout": "10",
        "AsyncAmd": "true",
        "AsyncAmdStatusCallback": "https://example.com/amd",
        "AsyncAmdStatusCallbackMethod": "GET",
        "Record": "true",
        "RecordingChannels": "mono",
        "RecordingStatusCallback": "https://example.com/recording",
        "RecordingStatusCallbackMethod": "POST",
        "RecordingStatusCallbackEvent": ["in-progress", "completed"],
    }
    async with httpx.AsyncClient(base_url=sim.url, auth=(SID, TOKEN)) as http:
        assert (await http.post(calls, data=given)).status_code == 201
        for name, value in (
            ("AsyncAmd", "maybe"),
            ("RecordingChannels", "stereo"),
            ("AsyncAmdStatusCallbackMethod", "PUT"),
            ("MachineDetectionTimeout", "soon"),
            ("RecordingStatusCallbackEvent", "paused"),
        ):
            refused = await http.post(calls, data={**valid, name: value})
            assert (refused.status_code, refused.json()["code"]) == (400, 20001), (name, refused.text)
            assert name in refused.json()["message"]
