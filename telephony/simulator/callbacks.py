"""Signed callbacks (call status, answering-machine detection, recording status, `<Dial>` action),
delivered in order per call and kind unless a fault says otherwise."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from urllib.parse import parse_qsl, urlencode

import httpx
from twilio.request_validator import RequestValidator

from telephony.simulator.config import SimulatorConfig

log = logging.getLogger(__name__)


@dataclass
class CallbackCounters:
    """What happened to the callbacks the simulator meant to send."""

    sent: int = 0
    dropped: int = 0
    duplicated: int = 0
    reordered: int = 0
    retried: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as JSON."""
        return asdict(self)


# Twilio's webhook connection overrides (https://www.twilio.com/docs/usage/webhooks/webhooks-connection-overrides):
# a fragment on the URL, never sent, that sets how a failed request is retried. Without one, Twilio
# retries once, and only a request that could not connect.
MAX_RETRIES = 5
FAILURE_CLASSES = frozenset({"ct", "rt", "4xx", "5xx"})


@dataclass(frozen=True)
class RetryPlan:
    """How many times a failed callback is retried, and after which failures: `ct` (could not
    connect), `rt` (no answer in time), `4xx`, `5xx`."""

    count: int = 1
    on: frozenset[str] = frozenset({"ct"})


def split_overrides(url: str) -> tuple[str, RetryPlan]:
    """The URL Twilio requests (and signs), without its fragment, and the retries the fragment asks for."""
    base, _, fragment = url.partition("#")
    params = dict(parse_qsl(fragment))
    plan = RetryPlan()
    if "rc" in params and params["rc"].isdigit():
        plan = RetryPlan(min(int(params["rc"]), MAX_RETRIES), plan.on)
    if "rp" in params:
        named = {part.strip() for part in params["rp"].split(",")}
        plan = RetryPlan(
            plan.count, FAILURE_CLASSES if "all" in named else frozenset(named & FAILURE_CLASSES)
        )
    return base, plan


# What a callback reports. Each kind is its own ordered chain per call and has its own counters:
# Twilio sends them as separate requests, and status callbacks keep their own sequence.
STATUS = "status"
AMD = "amd"
RECORDING = "recording"
DIAL_ACTION = "dial_action"
KINDS = (STATUS, AMD, RECORDING, DIAL_ACTION)


@dataclass(frozen=True)
class Callback:
    """One callback: where it goes (without the URL's fragment), the form fields it carries, how it
    is retried, what it reports (`kind`), and who wants to hear what became of it (`on_fate`, told
    `sent`, `dropped` or `failed`)."""

    call_sid: str
    url: str
    method: str
    params: dict[str, str]
    idempotency_token: str
    retries: RetryPlan = RetryPlan()
    kind: str = STATUS
    on_fate: Callable[[str], None] | None = field(default=None, compare=False, repr=False)

    @property
    def chain(self) -> str:
        """The ordered chain this callback joins: one per call and kind."""
        return self.call_sid if self.kind == STATUS else f"{self.kind}:{self.call_sid}"

    def report(self, fate: str) -> None:
        """Tell whoever asked what became of this callback."""
        if self.on_fate is not None:
            self.on_fate(fate)

    def signed_request(self, auth_token: str) -> tuple[str, dict[str, str] | None, str]:
        """The URL, the form body (None for GET) and the ``X-Twilio-Signature`` Twilio would send."""
        validator = RequestValidator(auth_token)
        if self.method == "GET":
            url = f"{self.url}{'&' if '?' in self.url else '?'}{urlencode(self.params)}"
            return url, None, validator.compute_signature(url, {})
        return self.url, self.params, validator.compute_signature(self.url, self.params)


class CallbackSender:
    """Sends callbacks in the background, one ordered chain per call and kind, with the configured
    faults. `counters` counts status callbacks; `other_counters` the other kinds, each apart."""

    def __init__(self, config: SimulatorConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        self._http: httpx.AsyncClient | None = None
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._held: dict[str, Callback] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters = CallbackCounters()
        self.other_counters = {kind: CallbackCounters() for kind in KINDS if kind != STATUS}

    def reset_counters(self) -> None:
        """Start every kind's counters from zero."""
        self.counters = CallbackCounters()
        self.other_counters = {kind: CallbackCounters() for kind in self.other_counters}

    def counters_of(self, kind: str) -> CallbackCounters:
        """The counters of one kind of callback."""
        return self.counters if kind == STATUS else self.other_counters[kind]

    async def start(self) -> None:
        """Open the HTTP client used for deliveries."""
        self._http = httpx.AsyncClient()

    async def stop(self) -> None:
        """Abandon pending deliveries and close the HTTP client."""
        await self.cancel_all()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def cancel_all(self) -> None:
        """Abandon every pending delivery and held-back callback."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tails.clear()
        self._held.clear()

    def emit(self, callback: Callback, final: bool) -> None:
        """Queue a callback behind the earlier ones of its chain, applying drop, duplicate and reorder
        faults. A `final` callback is never held back, having no later one to follow."""
        config = self._config
        counters = self.counters_of(callback.kind)
        if self._chance(config.drop_callback_rate):
            counters.dropped += 1
            log.info("callback dropped call_sid=%s %s", callback.call_sid, _brief(callback))
            callback.report("dropped")
        elif not final and callback.chain not in self._held and self._chance(config.reorder_callback_rate):
            counters.reordered += 1
            self._held[callback.chain] = callback
            return
        else:
            self._enqueue(callback)
            if self._chance(config.duplicate_callback_rate):
                counters.duplicated += 1
                self._enqueue(callback)
        held = self._held.pop(callback.chain, None)
        if held is not None:
            self._enqueue(held)

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def _enqueue(self, callback: Callback) -> None:
        due = time.monotonic() + self._config.callback_delay_seconds
        previous = self._tails.get(callback.chain)
        task = asyncio.create_task(self._deliver(callback, due, previous))
        self._tails[callback.chain] = task
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._forget(callback.chain, t))

    def _forget(self, chain: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._tails.get(chain) is task:
            del self._tails[chain]

    async def _deliver(self, callback: Callback, due: float, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        forced = self._config.callback_retry_attempts
        retries = callback.retries.count if forced is None else forced
        counters = self.counters_of(callback.kind)
        for attempt in range(1 + retries):
            if attempt:
                counters.retried += 1
                await asyncio.sleep(self._config.callback_retry_backoff_seconds * 2 ** (attempt - 1))
            failure = await self._attempt(callback)
            if failure is None:
                counters.sent += 1
                callback.report("sent")
                return
            if forced is None and failure not in callback.retries.on:
                break
        counters.failed += 1
        log.warning("callback gave up call_sid=%s %s", callback.call_sid, _brief(callback))
        callback.report("failed")

    async def _attempt(self, callback: Callback) -> str | None:
        """Deliver once; None on a 2xx, else the class of failure (`ct`, `rt`, `4xx`, `5xx`)."""
        config = self._config
        if config.webhooks_unreachable_until is not None and time.time() < config.webhooks_unreachable_until:
            log.info("callback unreachable call_sid=%s %s", callback.call_sid, _brief(callback))
            return "ct"
        assert self._http is not None, "CallbackSender.start() was not awaited"
        url, form, signature = callback.signed_request(config.auth_token)
        headers = {
            "X-Twilio-Signature": signature,
            "I-Twilio-Idempotency-Token": callback.idempotency_token,
            "User-Agent": "TwilioProxy/1.1",
        }
        try:
            response = await self._http.request(
                callback.method, url, data=form, headers=headers, timeout=config.callback_timeout_seconds
            )
        except httpx.TimeoutException as exc:
            log.info("callback timed out call_sid=%s %s error=%r", callback.call_sid, _brief(callback), exc)
            return "ct" if isinstance(exc, httpx.ConnectTimeout) else "rt"
        except httpx.HTTPError as exc:
            log.info("callback failed call_sid=%s %s error=%r", callback.call_sid, _brief(callback), exc)
            return "ct"
        log.info(
            "callback sent call_sid=%s %s http_status=%s",
            callback.call_sid,
            _brief(callback),
            response.status_code,
        )
        if response.is_success:
            return None
        return "5xx" if response.status_code >= 500 else "4xx"


async def fetch_twiml(
    sender: CallbackSender, url: str, params: dict[str, str], method: str = "POST"
) -> tuple[int | None, str]:
    """Fetch a call's TwiML from a `Url` as Twilio does: the call's parameters sent with `Method`
    (POST, or GET in the query string), signed with `X-Twilio-Signature`. The HTTP status (None when
    nothing answered) and the body."""
    assert sender._http is not None, "CallbackSender.start() was not awaited"
    request = Callback(
        call_sid=params.get("CallSid", ""), url=url, method=method, params=params, idempotency_token=""
    )
    target, form, signature = request.signed_request(sender._config.auth_token)
    try:
        response = await sender._http.request(
            method,
            target,
            data=form,
            headers={"X-Twilio-Signature": signature, "User-Agent": "TwilioProxy/1.1"},
            timeout=sender._config.callback_timeout_seconds,
        )
    except httpx.HTTPError:
        return None, ""
    return response.status_code, response.text


def new_idempotency_token(call_sid: str) -> str:
    """A token like Twilio's ``I-Twilio-Idempotency-Token``: the same for every copy of one callback."""
    return f"{call_sid}-{secrets.token_hex(8)}"


def _brief(callback: Callback) -> str:
    params = callback.params
    if callback.kind == AMD:
        return f"kind=amd answered_by={params.get('AnsweredBy')}"
    if callback.kind == RECORDING:
        return f"kind=recording recording_sid={params.get('RecordingSid')}"
    if callback.kind == DIAL_ACTION:
        return f"kind=dial_action dial_call_status={params.get('DialCallStatus')}"
    return f"status={params.get('CallStatus')} seq={params.get('SequenceNumber')}"
