"""Signed status callbacks, delivered in order per call unless a fault says otherwise."""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from dataclasses import asdict, dataclass
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


@dataclass(frozen=True)
class Callback:
    """One status callback: where it goes (without the URL's fragment), the form fields it
    carries, and how it is retried."""

    call_sid: str
    url: str
    method: str
    params: dict[str, str]
    idempotency_token: str
    retries: RetryPlan = RetryPlan()

    def signed_request(self, auth_token: str) -> tuple[str, dict[str, str] | None, str]:
        """The URL, the form body (None for GET) and the ``X-Twilio-Signature`` Twilio would send."""
        validator = RequestValidator(auth_token)
        if self.method == "GET":
            url = f"{self.url}{'&' if '?' in self.url else '?'}{urlencode(self.params)}"
            return url, None, validator.compute_signature(url, {})
        return self.url, self.params, validator.compute_signature(self.url, self.params)


class CallbackSender:
    """Sends callbacks in the background, one ordered chain per call, with the configured faults."""

    def __init__(self, config: SimulatorConfig, rng: random.Random) -> None:
        self._config = config
        self._rng = rng
        self._http: httpx.AsyncClient | None = None
        self._tails: dict[str, asyncio.Task[None]] = {}
        self._held: dict[str, Callback] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.counters = CallbackCounters()

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
        """Queue a callback behind the call's earlier ones, applying drop, duplicate and reorder faults."""
        config = self._config
        if self._chance(config.drop_callback_rate):
            self.counters.dropped += 1
            log.info("callback dropped call_sid=%s %s", callback.call_sid, _brief(callback))
        elif not final and callback.call_sid not in self._held and self._chance(config.reorder_callback_rate):
            self.counters.reordered += 1
            self._held[callback.call_sid] = callback
            return
        else:
            self._enqueue(callback)
            if self._chance(config.duplicate_callback_rate):
                self.counters.duplicated += 1
                self._enqueue(callback)
        held = self._held.pop(callback.call_sid, None)
        if held is not None:
            self._enqueue(held)

    def _chance(self, rate: float) -> bool:
        return rate > 0 and self._rng.random() < rate

    def _enqueue(self, callback: Callback) -> None:
        due = time.monotonic() + self._config.callback_delay_seconds
        previous = self._tails.get(callback.call_sid)
        task = asyncio.create_task(self._deliver(callback, due, previous))
        self._tails[callback.call_sid] = task
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._forget(callback.call_sid, t))

    def _forget(self, call_sid: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._tails.get(call_sid) is task:
            del self._tails[call_sid]

    async def _deliver(self, callback: Callback, due: float, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        forced = self._config.callback_retry_attempts
        retries = callback.retries.count if forced is None else forced
        for attempt in range(1 + retries):
            if attempt:
                self.counters.retried += 1
                await asyncio.sleep(self._config.callback_retry_backoff_seconds * 2 ** (attempt - 1))
            failure = await self._attempt(callback)
            if failure is None:
                self.counters.sent += 1
                return
            if forced is None and failure not in callback.retries.on:
                break
        self.counters.failed += 1
        log.warning("callback gave up call_sid=%s %s", callback.call_sid, _brief(callback))

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


async def fetch_twiml(sender: CallbackSender, url: str, params: dict[str, str]) -> tuple[int | None, str]:
    """Fetch an answered call's TwiML from its `Url` as Twilio does: a POST of the call's parameters,
    signed with `X-Twilio-Signature`. The HTTP status (None when nothing answered) and the body."""
    assert sender._http is not None, "CallbackSender.start() was not awaited"
    signature = RequestValidator(sender._config.auth_token).compute_signature(url, params)
    try:
        response = await sender._http.post(
            url,
            data=params,
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
    return f"status={params.get('CallStatus')} seq={params.get('SequenceNumber')}"
