"""The simulated carrier: creates calls, plays each one out in its own task, counts what happened."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import phonenumbers

from telephony.simulator.callbacks import (
    AMD,
    DIAL_ACTION,
    RECORDING,
    STATUS,
    Callback,
    CallbackSender,
    fetch_twiml,
    new_idempotency_token,
    split_overrides,
)
from telephony.simulator.calls import API_VERSION, Call, CallStore, DialedLeg, new_call_sid, rfc2822
from telephony.simulator.config import SimulatorConfig
from telephony.simulator.detection import DEFAULT_TIMEOUT_SECONDS, ENABLE, Verdict, detect
from telephony.simulator.errors import TwilioApiError, internal_error, too_many_requests
from telephony.simulator.recordings import Recording, RecordingStore, new_recording_sid
from telephony.simulator.twiml import Dial, dial_of, is_twiml

log = logging.getLogger(__name__)

# Fields real Twilio sends blank for numbers it has no location data for; they are part of the signature.
_BLANK_FIELDS = (
    "CalledCity",
    "CalledState",
    "CalledZip",
    "CallerCity",
    "CallerState",
    "CallerZip",
    "ToCity",
    "ToState",
    "ToZip",
    "FromCity",
    "FromState",
    "FromZip",
    "ForwardedFrom",
)


@dataclass(frozen=True)
class CallRequest:
    """A validated create-call request."""

    account_sid: str
    to: str
    from_: str
    status_callback: str | None = None
    status_callback_method: str = "POST"
    callback_events: frozenset[str] = frozenset()
    # Whether answering-machine detection is on (`MachineDetection` given), and how it runs.
    machine_detection: bool = False
    machine_detection_mode: str = ENABLE
    machine_detection_timeout: float = DEFAULT_TIMEOUT_SECONDS
    async_amd: bool = False
    async_amd_status_callback: str | None = None
    async_amd_status_callback_method: str = "POST"
    timeout: float = 60.0
    time_limit: float | None = None
    # What the call runs when answered: TwiML given with the create, or the URL Twilio fetches it
    # from, with `Method`.
    twiml: str | None = None
    url: str | None = None
    url_method: str = "POST"
    # `Record=true`: the answered call is recorded, and the recording's status goes to this callback.
    record: bool = False
    recording_status_callback: str | None = None
    recording_status_callback_method: str = "POST"
    recording_status_callback_events: frozenset[str] = frozenset({"completed"})
    recording_channels: str = "mono"
    # When the request reached the carrier, before the carrier's own checks of it.
    received_at: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Instructions:
    """TwiML a call was given to run, and Twilio's error if it cannot run: 11200 (its URL did not
    answer 2xx; `http_status` says what it answered, None for nothing) or 12100 (not TwiML)."""

    document: str | None
    http_status: int | None = None
    error: int | None = None


@dataclass
class FaultCounters:
    """Create-call faults injected so far."""

    create_429: int = 0
    create_5xx: int = 0
    create_5xx_after_create: int = 0


class Simulator:
    """A fake Twilio: the calls it knows, how they play out, and the faults it injects."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.calls = CallStore()
        self.recordings = RecordingStore()
        self.callbacks = CallbackSender(config, self.rng)
        self._init_counters()

    def _init_counters(self) -> None:
        self.faults = FaultCounters()
        self.callbacks.reset_counters()
        self._creates: Counter[tuple[str, str]] = Counter()
        self._in_flight: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()
        self._peak_total = 0
        self._create_requests: defaultdict[str, list[float]] = defaultdict(list)

    async def start(self) -> None:
        """Get ready to send callbacks."""
        await self.callbacks.start()

    async def stop(self) -> None:
        """Stop every call's playback and every pending callback."""
        await self._cancel_playback()
        await self.callbacks.stop()

    async def reset(self) -> None:
        """Forget every call and counter; the random sequence restarts from the configured seed."""
        await self._cancel_playback()
        await self.callbacks.cancel_all()
        self.calls.clear()
        self.recordings.clear()
        self.rng.seed(self.config.seed)
        self._init_counters()

    async def _cancel_playback(self) -> None:
        tasks = [
            task
            for c in self.calls.all()
            for task in (c.task, c.detection)
            if task is not None and not task.done()
        ]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def create_call(self, request: CallRequest) -> Call:
        """Place a call, or raise the fault the configuration asks for.

        With ``create_5xx_after_create_rate`` the call is placed and plays out, yet the client gets a 500.
        """
        config = self.config
        self._create_requests[request.from_].append(request.received_at)
        refused = config.errors_by_from.get(request.from_)
        if refused is not None:
            raise TwilioApiError(
                400, refused, f"The caller ID {request.from_} cannot place calls (error {refused})"
            )
        refused = config.errors_by_to.get(request.to)
        if refused is not None:
            raise TwilioApiError(400, refused, f"The number {request.to} cannot be called (error {refused})")
        if self._chance(config.create_429_rate):
            self.faults.create_429 += 1
            raise too_many_requests(config.retry_after_seconds)
        if self._chance(config.create_5xx_rate):
            self.faults.create_5xx += 1
            raise internal_error()
        call = self._new_call(request)
        self.calls.add(call)
        self._creates[(call.to, call.from_)] += 1
        self._in_flight[call.from_] += 1
        self._peak[call.from_] = max(self._peak[call.from_], self._in_flight[call.from_])
        self._peak_total = max(self._peak_total, sum(self._in_flight.values()))
        call.task = asyncio.create_task(self._play(call), name=f"call-{call.sid}")
        log.info(
            "call created call_sid=%s to=%s from=%s outcome=%s status_callback=%s",
            call.sid,
            call.to,
            call.from_,
            call.outcome,
            call.status_callback,
        )
        if self._chance(config.create_5xx_after_create_rate):
            self.faults.create_5xx_after_create += 1
            log.info("call created but answering 500 call_sid=%s", call.sid)
            raise internal_error()
        return call

    def _new_call(self, request: CallRequest) -> Call:
        config = self.config
        outcome = config.outcomes_by_to.get(request.to)
        if outcome is None:
            statuses = list(config.outcome_weights)
            outcome = self.rng.choices(statuses, weights=[config.outcome_weights[s] for s in statuses])[0]
        ring = self.rng.uniform(*config.ring_seconds)
        if outcome == "no-answer":
            ring = min(ring, request.timeout)
        talk = config.talk_seconds_by_to.get(request.to, self.rng.uniform(*config.talk_seconds))
        if request.time_limit is not None:
            talk = min(talk, request.time_limit)
        return Call(
            sid=new_call_sid(),
            account_sid=request.account_sid,
            to=request.to,
            from_=request.from_,
            status_callback=request.status_callback,
            status_callback_method=request.status_callback_method,
            callback_events=request.callback_events,
            machine_detection=request.machine_detection,
            outcome=outcome,
            queue_seconds=self.rng.uniform(*config.queue_seconds),
            ring_seconds=ring,
            talk_seconds=talk,
            twiml=request.twiml,
            url=request.url,
            url_method=request.url_method,
            machine_detection_mode=request.machine_detection_mode if request.machine_detection else None,
            machine_detection_timeout=request.machine_detection_timeout,
            async_amd=request.machine_detection and request.async_amd,
            async_amd_status_callback=request.async_amd_status_callback,
            async_amd_status_callback_method=request.async_amd_status_callback_method,
            record=request.record,
            recording_status_callback=request.recording_status_callback,
            recording_status_callback_method=request.recording_status_callback_method,
            recording_status_callback_events=request.recording_status_callback_events,
            recording_channels=request.recording_channels,
        )

    def update_call(
        self,
        call: Call,
        status: str | None = None,
        twiml: str | None = None,
        url: str | None = None,
        method: str = "POST",
    ) -> Call:
        """Update a call as Twilio's UpdateCall does (twilio_api_v2010.json): `Status=completed` hangs
        up (or cancels a call not yet answered), `Status=canceled` cancels a queued or ringing call;
        otherwise `Url` (fetched with `Method`) or `Twiml` gives the call new instructions, a `Url`
        winning over `Twiml` as in a create. A call that has ended cannot be updated (21220)."""
        if call.ended:
            raise TwilioApiError(400, 21220, "Call is not in-progress. Cannot redirect.")
        if status == "completed":
            self._finish(call, "completed" if call.status == "in-progress" else "canceled")
        elif status == "canceled":
            if call.status in ("queued", "ringing"):
                self._finish(call, "canceled")
        elif status is not None:
            raise TwilioApiError(400, 21218, f"Invalid Status: {status}")
        elif url is not None or twiml is not None:
            self._redirect(call, None if url is not None else twiml, url, method)
        return call

    def _redirect(self, call: Call, twiml: str | None, url: str | None, method: str) -> None:
        """New instructions for a live call. One not yet answered runs them once answered; an
        answered one drops what it was running (a bridged `<Dial>` leg included) and runs them at
        once, then hangs up after `update_play_seconds`, as when a short message has played."""
        if call.status != "in-progress":
            call.twiml, call.url, call.url_method = twiml, url, method
            return
        if call.task is not None:
            call.task.cancel()
        call.task = asyncio.create_task(
            self._play_update(call, twiml, url, method), name=f"update-{call.sid}"
        )

    async def _play_update(self, call: Call, twiml: str | None, url: str | None, method: str) -> None:
        try:
            given = await self._instructions(call, twiml, url, method)
            if given.document is not None:
                call.updated_with.append(given.document)
            call.update_error = given.error
            if given.error is None and given.document is not None:
                await self._run(call, given.document, self.config.update_play_seconds)
            self._finish(call, "completed")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call update failed call_sid=%s", call.sid)
            self._finish(call, "failed")

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    async def _play(self, call: Call) -> None:
        try:
            await self._ring(call)
            if call.outcome != "completed":
                self._finish(call, call.outcome)
                return
            self._pick_up(call)
            document = await self._answer(call)
            # Without TwiML to run Twilio says "an application error has occurred" and hangs up.
            if document is not None:
                await self._run(call, document, call.talk_seconds)
            self._finish(call, "completed")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call playback failed call_sid=%s", call.sid)
            self._finish(call, "failed")

    async def _ring(self, call: Call) -> None:
        await asyncio.sleep(call.queue_seconds)
        call.started_at = time.time()
        call.initiated = True
        self._emit(call, "initiated", "initiated")
        if call.outcome != "failed":
            call.set_status("ringing")
            self._emit(call, "ringing", "ringing")
        await asyncio.sleep(call.ring_seconds)

    def _pick_up(self, call: Call) -> None:
        """The call is answered. Detection without `AsyncAmd` has decided by now: Twilio holds the
        TwiML until it has, and reports `AnsweredBy` in the status callbacks. With `AsyncAmd` it runs
        in the background while the TwiML plays."""
        verdict: Verdict | None = None
        if call.machine_detection_mode is not None:
            forced = self.config.answered_by_by_to.get(call.to)
            verdict = detect(
                call.machine_detection_mode, forced, self.rng, self.config, call.machine_detection_timeout
            )
            if not call.async_amd:
                call.answered_by = verdict.answered_by
        call.set_status("in-progress")
        self._emit(call, "answered", "in-progress")
        if verdict is not None and call.async_amd:
            call.amd_callback_fate = "pending" if call.async_amd_status_callback else None
            call.detection = asyncio.create_task(self._detect(call, verdict), name=f"amd-{call.sid}")

    async def _detect(self, call: Call, verdict: Verdict) -> None:
        """Asynchronous detection (CreateCall `AsyncAmd`, `AsyncAmdStatusCallback`,
        `AsyncAmdStatusCallbackMethod` in twilio_api_v2010.json): when it ends, `AnsweredBy` is on the
        call and goes, with `MachineDetectionDuration` in milliseconds, in one signed callback "to
        notify customer application whether the call was answered by human, machine or fax". A call
        that ends first is told nothing (`_finish` cancels this)."""
        await asyncio.sleep(verdict.after_seconds)
        if call.ended:
            return
        call.answered_by = verdict.answered_by
        if call.async_amd_status_callback is None:
            return
        params = {
            "AccountSid": call.account_sid,
            "CallSid": call.sid,
            "AnsweredBy": verdict.answered_by,
            "MachineDetectionDuration": verdict.duration_ms,
        }

        def settle(fate: str) -> None:
            call.amd_callback_fate = fate

        call.amd_callback_fate = "queued"
        self._send(
            call, AMD, call.async_amd_status_callback, call.async_amd_status_callback_method, params, settle
        )

    async def _answer(self, call: Call) -> str | None:
        """What the call was created with, as Twilio runs it once answered: its TwiML, or the TwiML
        its `Url` answers. None, with `call.answer_error` saying why, when it cannot run."""
        given = await self._instructions(call, call.twiml, call.url, call.url_method)
        if call.url is not None:
            call.fetched_status = given.http_status
        call.answered_with = given.document
        call.answer_error = given.error
        return given.document if given.error is None else None

    async def _instructions(
        self, call: Call, twiml: str | None, url: str | None, method: str
    ) -> Instructions:
        """TwiML to run: `twiml` itself, or what `url` answers when fetched as Twilio fetches it
        (signed, with `method`). A URL that does not answer 2xx is error 11200; a document that is
        not TwiML, 12100."""
        status: int | None = None
        if url is not None:
            status, twiml = await fetch_twiml(self.callbacks, url, self._request_params(call), method)
            if status is None or not 200 <= status < 300:
                return Instructions(None, status, 11200)
        if twiml is None or not is_twiml(twiml):
            return Instructions(twiml, status, 12100)
        return Instructions(twiml, status)

    async def _run(self, call: Call, document: str, seconds: float) -> None:
        """Play a TwiML document for `seconds`, or, if it dials a number with an action URL, for as
        long as the dialed leg lasts."""
        dial = dial_of(document)
        if dial is not None and dial.action is not None:
            await self._bridge(call, dial, dial.action)
        else:
            await asyncio.sleep(seconds)

    async def _bridge(self, call: Call, dial: Dial, action: str) -> None:
        """`<Dial action="...">` calls the number as a child leg, which ends as
        `dial_outcomes_by_number` says (completed after the call's talk time, otherwise unanswered
        after its ring time). Twilio then requests the action URL with the Dial's `method`, adding
        `DialCallSid`, `DialCallStatus`, `DialCallDuration` and `DialBridged` to the call's
        parameters, and runs what it answers; the simulator hangs up once it has answered."""
        outcome = self.config.dial_outcomes_by_number.get(dial.number, "completed")
        bridged = outcome == "completed"
        leg = DialedLeg(sid=new_call_sid(), number=dial.number, action=action)
        call.dialed.append(leg)
        await asyncio.sleep(call.talk_seconds if bridged else call.ring_seconds)
        leg.status, leg.duration = outcome, math.ceil(call.talk_seconds) if bridged else 0
        params = {
            **self._request_params(call),
            "DialCallSid": leg.sid,
            "DialCallStatus": outcome,
            "DialCallDuration": str(leg.duration),
            "DialBridged": "true" if bridged else "false",
        }
        answered = asyncio.Event()

        def settle(fate: str) -> None:
            leg.callback_fate = fate
            answered.set()

        leg.callback_fate = "queued"
        self._send(call, DIAL_ACTION, action, dial.method, params, settle)
        await answered.wait()

    def _request_params(self, call: Call) -> dict[str, str]:
        """The parameters Twilio sends with every request about a live call it makes to the app."""
        return {
            "AccountSid": call.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": "in-progress",
            "Direction": "outbound-api",
            "From": call.from_,
            "To": call.to,
        }

    def _finish(self, call: Call, status: str) -> None:
        """End a call once: stop its playback and detection, free its line, send the terminal
        callback, and make its recording if it was recorded and answered."""
        if call.ended:
            return
        for task in (call.task, call.detection):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if call.amd_callback_fate == "pending":
            call.amd_callback_fate = "call-ended"
        call.duration = math.ceil(time.time() - call.answered_at) if call.answered_at is not None else 0
        call.set_status(status)
        self._in_flight[call.from_] -= 1
        log.info("call ended call_sid=%s status=%s duration=%s", call.sid, status, call.duration)
        # Twilio says nothing about a call cancelled before it left the queue.
        if call.initiated:
            self._emit(call, "completed", status)
        if call.record and call.answered_at is not None:
            self._record(call, call.answered_at)

    def _record(self, call: Call, started: float) -> None:
        """The recording `Record=true` asked for (CreateCall in twilio_api_v2010.json), with its
        `RecordingChannels` (`mono` 1, `dual` 2). Its status goes to `RecordingStatusCallback` with
        `RecordingStatusCallbackMethod` when `RecordingStatusCallbackEvent` names `completed`, the
        default; `in-progress` and `absent` are accepted and never sent."""
        recording = Recording(
            sid=new_recording_sid(),
            account_sid=call.account_sid,
            call_sid=call.sid,
            duration=call.duration or 0,
            channels=2 if call.recording_channels == "dual" else 1,
            start_time=started,
        )
        self.recordings.add(recording)
        call.recording_sid = recording.sid
        url = call.recording_status_callback
        if url is None or "completed" not in call.recording_status_callback_events:
            return

        def settle(fate: str) -> None:
            recording.callback_fate = fate

        recording.callback_fate = "queued"
        self._send(
            call, RECORDING, url, call.recording_status_callback_method, recording.callback_params(), settle
        )

    def _send(
        self,
        call: Call,
        kind: str,
        url: str,
        method: str,
        params: dict[str, str],
        on_fate: Callable[[str], None] | None = None,
        final: bool = True,
    ) -> None:
        """Sign and send a callback about a call, retried as the URL's connection overrides say."""
        target, retries = split_overrides(url)
        callback = Callback(
            call_sid=call.sid,
            url=target,
            method=method,
            params=params,
            idempotency_token=new_idempotency_token(call.sid),
            retries=retries,
            kind=kind,
            on_fate=on_fate,
        )
        self.callbacks.emit(callback, final)

    def _emit(self, call: Call, event: str, call_status: str) -> None:
        if call.status_callback is None:
            return
        final = event == "completed"
        if not final and event not in call.callback_events:
            return
        params = {
            "AccountSid": call.account_sid,
            "ApiVersion": API_VERSION,
            "CallSid": call.sid,
            "CallStatus": call_status,
            "Called": call.to,
            "Caller": call.from_,
            "Direction": "outbound-api",
            "From": call.from_,
            "To": call.to,
            "Timestamp": rfc2822(time.time()),
            "SequenceNumber": str(call.sequence),
            "CallbackSource": "call-progress-events",
            "CalledCountry": _region(call.to),
            "CallerCountry": _region(call.from_),
            "ToCountry": _region(call.to),
            "FromCountry": _region(call.from_),
            **dict.fromkeys(_BLANK_FIELDS, ""),
        }
        if final:
            params["CallDuration"] = params["Duration"] = str(call.duration or 0)
        # With AsyncAmd the verdict has its own callback, and status callbacks do not carry it.
        if call.machine_detection and not call.async_amd and (final or event == "answered"):
            params["AnsweredBy"] = call.answered_by or "unknown"
        call.sequence += 1
        self._send(call, STATUS, call.status_callback, call.status_callback_method, params, final=final)

    def stats(self) -> dict[str, Any]:
        """Creates per (To, From), concurrency per From, callback counters (`callbacks` for status
        callbacks, one entry per other kind), recordings and fault counters."""
        return {
            "calls": len(self.calls.all()),
            "creates": [{"to": to, "from": from_, "count": n} for (to, from_), n in self._creates.items()],
            "concurrency": [
                {"from": from_, "current": self._in_flight[from_], "peak": peak}
                for from_, peak in self._peak.items()
            ],
            "in_flight": sum(self._in_flight.values()),
            "peak_in_flight": self._peak_total,
            "callbacks": self.callbacks.counters.as_dict(),
            "amd_callbacks": self.callbacks.counters_of(AMD).as_dict(),
            "recording_callbacks": self.callbacks.counters_of(RECORDING).as_dict(),
            "dial_callbacks": self.callbacks.counters_of(DIAL_ACTION).as_dict(),
            "recordings": len(self.recordings.all()),
            "faults": vars(self.faults).copy(),
            # When each create request arrived (placed or refused), per caller ID: the call rate seen.
            "create_requests": dict(self._create_requests),
        }


def _region(number: str) -> str:
    with contextlib.suppress(phonenumbers.NumberParseException):
        return phonenumbers.region_code_for_number(phonenumbers.parse(number)) or ""
    return ""
