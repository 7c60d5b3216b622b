"""The one telephony code path: the real `twilio` SDK, pointed at Twilio or at the simulator."""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from hashlib import sha256
from typing import Any
from urllib.parse import urlencode

from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from contracts.names import CALL_STATUS_WEBHOOK, DIAL_WEBHOOK, MACHINE_WEBHOOK, RECORDING_WEBHOOK
from outbound_dialer.settings import Settings

# Twilio's error codes for a create-call, by what they mean for a run
# (https://www.twilio.com/docs/api/errors/<code>).
# The number called: this account cannot call it as it stands; that lead fails. 21211 invalid 'To',
# 21214 'To' cannot be reached, 21215 no geo permission for the destination, 21217 not a valid
# phone number, 21219 a trial account's number that is not verified.
NUMBER_ERROR_CODES = frozenset({21211, 21214, 21215, 21217, 21219})
# The account: no call can be placed until it is fixed; the run pauses with Twilio's reason. 10001
# and 20005 not active (suspended, out of funds), 10002 not on a trial account, 20003
# authentication, 20006 access denied, 21210 caller ID not verified, 21212 invalid caller ID.
ACCOUNT_ERROR_CODES = frozenset({10001, 10002, 20003, 20005, 20006, 21210, 21212})
# Not processed, and worth trying again after a wait: 10004 the account's concurrent-call limit.
RETRY_LATER_CODES = frozenset({10004})
# Anything else Twilio refuses with a 4xx could be the number or the account: 21216 "call blocked
# by Twilio" is a high-risk destination, or any +1 call from an account without a Primary Customer
# Profile. The run tells them apart by what comes next (see RunBook.dial_refused_unsure).
NOT_IN_PROGRESS = 21220
TOO_MANY_REQUESTS = 20429


# The Retry-After of the last 429 seen by the current task (each activity runs in its own task).
_retry_after: ContextVar[float | None] = ContextVar("twilio_retry_after", default=None)


class RateAwareHttpClient(AsyncTwilioHttpClient):
    """The SDK's async HTTP client, remembering Retry-After from a 429 for the caller's backoff, and
    applying the timeout it is built with (the SDK's passes each request's own, None, to aiohttp,
    which then waits without limit)."""

    async def request(self, *args: Any, **kwargs: Any) -> Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        response: Response = await super().request(*args, **kwargs)
        if response.status_code == 429:
            _retry_after.set(_seconds(response.headers.get("Retry-After") if response.headers else None))
        return response


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def last_retry_after() -> float | None:
    """Seconds Twilio asked us to wait after the last 429 in this task, if it said."""
    return _retry_after.get()


def create_twilio_client(settings: Settings) -> Client:
    """An async Twilio client. Call it inside a running event loop (aiohttp wants one).

    `max_retries` stays unset: the SDK's retrying client re-sends any request on a 5xx, and a
    re-sent POST to Calls can place the same call twice.
    """
    http_client = RateAwareHttpClient(timeout=settings.TWILIO_TIMEOUT_SECONDS)
    client = Client(
        settings.TWILIO_ACCOUNT_SID,
        settings.TWILIO_AUTH_TOKEN.get_secret_value(),
        http_client=http_client,
    )
    if settings.TWILIO_API_BASE_URL:
        client.api.base_url = settings.TWILIO_API_BASE_URL
    return client


async def close_twilio_client(client: Client) -> None:
    """Close the client's HTTP session."""
    http_client = client.http_client
    if isinstance(http_client, AsyncTwilioHttpClient):
        await http_client.close()


# Twilio's webhook connection overrides, in the callback URL's fragment (never sent, not signed;
# https://www.twilio.com/docs/usage/webhooks/webhooks-connection-overrides): retry a callback up to
# five times when it could not connect, got no answer in time, or got a 5xx (the API restarting, a
# run closing for continue-as-new). Without them Twilio retries once, on a refused connection only.
CALLBACK_RETRIES = "rc=5&rp=ct,rt,5xx"


@dataclass(frozen=True)
class CallbackUrls:
    """The URLs Twilio reports a call's news to (its status, who answered, the agent's leg, the
    recording). Each names the attempt, so a callback for a call whose create response was lost
    still finds it, and carries a token (`t`) only this deployment can make. Twilio signs every
    request it sends, also to a URL a business's own TwiML gave it (`<Number statusCallback=...>`
    in a voice app): the signature says the request came from Twilio, the token that the URL is
    one we made, for that attempt and that callback."""

    public_base_url: str
    key: bytes

    @classmethod
    def of(cls, settings: Settings) -> CallbackUrls:
        """The deployment's callback URLs; their key derives from the Twilio auth token."""
        token = settings.TWILIO_AUTH_TOKEN.get_secret_value().encode()
        return cls(
            settings.PUBLIC_BASE_URL, hmac.new(token, b"outbound-dialer callback url", sha256).digest()
        )

    def status(self, run_id: str, lead_id: int, attempt: int) -> str:
        """Where Twilio reports a call's progress (StatusCallback)."""
        return self.url(CALL_STATUS_WEBHOOK, run_id, lead_id, attempt)

    def machine(self, run_id: str, lead_id: int, attempt: int) -> str:
        """Where Twilio reports who answered (AsyncAmdStatusCallback)."""
        return self.url(MACHINE_WEBHOOK, run_id, lead_id, attempt)

    def dial(self, run_id: str, lead_id: int, attempt: int) -> str:
        """Where Twilio reports how the leg a connect answer bridged to went (the <Dial> action)."""
        return self.url(DIAL_WEBHOOK, run_id, lead_id, attempt)

    def recording(self, run_id: str, lead_id: int, attempt: int) -> str:
        """Where Twilio reports a call's recording (RecordingStatusCallback)."""
        return self.url(RECORDING_WEBHOOK, run_id, lead_id, attempt)

    def ours(self, path: str, query: Mapping[str, str]) -> bool:
        """Whether a callback's query is one this deployment made for `path`."""
        try:
            expected = self._token(path, query["run"], int(query["lead"]), int(query["attempt"]))
        except (KeyError, ValueError):
            return False
        return hmac.compare_digest(query.get("t", "").encode(), expected.encode())

    def url(self, path: str, run_id: str, lead_id: int, attempt: int) -> str:
        """The URL of the callback at `path` for one attempt."""
        token = self._token(path, run_id, lead_id, attempt)
        query = urlencode({"run": run_id, "lead": lead_id, "attempt": attempt, "t": token})
        return f"{self.public_base_url}{path}?{query}#{CALLBACK_RETRIES}"

    def _token(self, path: str, run_id: str, lead_id: int, attempt: int) -> str:
        return hmac.new(self.key, f"{path}|{run_id}|{lead_id}|{attempt}".encode(), sha256).hexdigest()[:32]
