"""The simulated carrier: creates calls, plays each one out in its own task, counts what happened."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

import phonenumbers

from telephony.simulator.callbacks import (
    Callback,
    CallbackCounters,
    CallbackSender,
    fetch_twiml,
    new_idempotency_token,
    split_overrides,
)
from telephony.simulator.calls import API_VERSION, Call, CallStore, new_call_sid, rfc2822
from telephony.simulator.config import SimulatorConfig
from telephony.simulator.errors import TwilioApiError, internal_error, too_many_requests

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
    machine_detection: bool = False
    timeout: float = 60.0
    time_limit: float | None = None
    # What the call runs when answered: TwiML given with the create, or the URL Twilio fetches it from.
    twiml: str | None = None
    url: str | None = None
    # When the request reached the carrier, before the carrier's own checks of it.
    received_at: float = field(default_factory=time.time)


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
        self.callbacks = CallbackSender(config, self.rng)
        self._init_counters()

    def _init_counters(self) -> None:
        self.faults = FaultCounters()
        self.callbacks.counters = CallbackCounters()
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
        self.rng.seed(self.config.seed)
        self._init_counters()

    async def _cancel_playback(self) -> None:
        tasks = [c.task for c in self.calls.all() if c.task is not None and not c.task.done()]
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
        )

    def update_call(self, call: Call, status: str | None) -> Call:
        """Apply ``Status=canceled`` or ``Status=completed`` as Twilio does; other updates change nothing."""
        if call.ended:
            raise TwilioApiError(400, 21220, "Call is not in-progress. Cannot redirect.")
        if status == "completed":
            self._finish(call, "completed" if call.status == "in-progress" else "canceled")
        elif status == "canceled":
            if call.status in ("queued", "ringing"):
                self._finish(call, "canceled")
        elif status is not None:
            raise TwilioApiError(400, 21218, f"Invalid Status: {status}")
        return call

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self.rng.random() < rate

    async def _play(self, call: Call) -> None:
        try:
            await asyncio.sleep(call.queue_seconds)
            call.started_at = time.time()
            call.initiated = True
            self._emit(call, "initiated", "initiated")
            if call.outcome != "failed":
                call.set_status("ringing")
                self._emit(call, "ringing", "ringing")
            await asyncio.sleep(call.ring_seconds)
            if call.outcome != "completed":
                self._finish(call, call.outcome)
                return
            if call.machine_detection:
                call.answered_by = self.rng.choice(("human", "machine_start"))
            call.set_status("in-progress")
            self._emit(call, "answered", "in-progress")
            if not await self._answer(call):
                # Twilio says "an application error has occurred" and hangs up.
                self._finish(call, "completed")
                return
            await asyncio.sleep(call.talk_seconds)
            self._finish(call, "completed")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("call playback failed call_sid=%s", call.sid)
            self._finish(call, "failed")

    async def _answer(self, call: Call) -> bool:
        """Run what the call was created with, as Twilio does once it is answered: its TwiML, or the
        TwiML its `Url` answers (fetched, signed as Twilio signs). A document that is not TwiML
        (error 12100), or a URL that does not answer 2xx (11200), ends the call; `call.answer_error`
        says which."""
        twiml = call.twiml
        if call.url is not None:
            params = {
                "AccountSid": call.account_sid,
                "ApiVersion": API_VERSION,
                "CallSid": call.sid,
                "CallStatus": "in-progress",
                "Direction": "outbound-api",
                "From": call.from_,
                "To": call.to,
            }
            status, twiml = await fetch_twiml(self.callbacks, call.url, params)
            call.fetched_status = status
            if status is None or not 200 <= status < 300:
                call.answer_error = 11200
                return False
        call.answered_with = twiml
        if twiml is None or not _is_twiml(twiml):
            call.answer_error = 12100
            return False
        return True

    def _finish(self, call: Call, status: str) -> None:
        """End a call once: stop its playback, free its line, send the terminal callback."""
        if call.ended:
            return
        if call.task is not None and call.task is not asyncio.current_task():
            call.task.cancel()
        call.duration = math.ceil(time.time() - call.answered_at) if call.answered_at is not None else 0
        call.set_status(status)
        self._in_flight[call.from_] -= 1
        log.info("call ended call_sid=%s status=%s duration=%s", call.sid, status, call.duration)
        # Twilio says nothing about a call cancelled before it left the queue.
        if call.initiated:
            self._emit(call, "completed", status)

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
        if call.machine_detection and (final or event == "answered"):
            params["AnsweredBy"] = call.answered_by or "unknown"
        call.sequence += 1
        url, retries = split_overrides(call.status_callback)
        callback = Callback(
            call_sid=call.sid,
            url=url,
            method=call.status_callback_method,
            params=params,
            idempotency_token=new_idempotency_token(call.sid),
            retries=retries,
        )
        self.callbacks.emit(callback, final)

    def stats(self) -> dict[str, Any]:
        """Creates per (To, From), concurrency per From, callback and fault counters."""
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
            "faults": vars(self.faults).copy(),
            # When each create request arrived (placed or refused), per caller ID: the call rate seen.
            "create_requests": dict(self._create_requests),
        }


def _region(number: str) -> str:
    with contextlib.suppress(phonenumbers.NumberParseException):
        return phonenumbers.region_code_for_number(phonenumbers.parse(number)) or ""
    return ""


def _is_twiml(document: str) -> bool:
    """Whether a document is TwiML Twilio can run: XML whose root is `<Response>`."""
    try:
        return ElementTree.fromstring(document.strip()).tag == "Response"
    except ElementTree.ParseError:
        return False
