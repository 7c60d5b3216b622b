"""The simulator's in-memory calls and how Twilio renders them."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import Any

import phonenumbers

API_VERSION = "2010-04-01"
TERMINAL = frozenset({"completed", "busy", "no-answer", "failed", "canceled"})
SUBRESOURCES = (
    "notifications",
    "recordings",
    "payments",
    "events",
    "siprec",
    "streams",
    "transcriptions",
    "user_defined_message_subscriptions",
    "user_defined_messages",
)


def new_call_sid() -> str:
    """A Twilio-shaped call SID: ``CA`` and 32 lowercase hex digits."""
    return "CA" + secrets.token_hex(16)


def rfc2822(timestamp: float) -> str:
    """A wall-clock time in the format Twilio uses in resources and callbacks."""
    return format_datetime(datetime.fromtimestamp(int(timestamp), UTC))


def _optional_rfc2822(timestamp: float | None) -> str | None:
    return None if timestamp is None else rfc2822(timestamp)


def national_format(number: str) -> str:
    """How Twilio shows a number in ``to_formatted``: national format, or as given."""
    try:
        return phonenumbers.format_number(phonenumbers.parse(number), phonenumbers.PhoneNumberFormat.NATIONAL)
    except phonenumbers.NumberParseException:
        return number


@dataclass
class DialedLeg:
    """The child leg a `<Dial>` called: its SID (`DialCallSid`), how it ended (`DialCallStatus`),
    its length in seconds (`DialCallDuration`), and what became of the action callback."""

    sid: str
    number: str
    action: str | None
    status: str = "ringing"
    duration: int | None = None
    callback_fate: str | None = None

    def summary(self) -> dict[str, Any]:
        """The leg as the simulator's control API reports it."""
        return asdict(self)


@dataclass
class Call:
    """One simulated outbound call and what the client asked for when creating it."""

    sid: str
    account_sid: str
    to: str
    from_: str
    status_callback: str | None
    status_callback_method: str
    callback_events: frozenset[str]
    machine_detection: bool
    outcome: str
    queue_seconds: float
    ring_seconds: float
    talk_seconds: float
    twiml: str | None = None
    url: str | None = None
    url_method: str = "POST"
    # Answering-machine detection: the mode asked for (`Enable`, `DetectMessageEnd`), its timeout,
    # and whether it runs in the background with its own callback (`AsyncAmd`).
    machine_detection_mode: str | None = None
    machine_detection_timeout: float = 30.0
    async_amd: bool = False
    async_amd_status_callback: str | None = None
    async_amd_status_callback_method: str = "POST"
    # What became of the AMD callback: pending (detection running), call-ended (the call ended first,
    # so none is sent), queued, sent, dropped or failed; None when none was asked for.
    amd_callback_fate: str | None = None
    # `Record=true` and where the recording's status goes.
    record: bool = False
    recording_status_callback: str | None = None
    recording_status_callback_method: str = "POST"
    recording_status_callback_events: frozenset[str] = frozenset({"completed"})
    recording_channels: str = "mono"
    recording_sid: str | None = None
    # What it ran when answered (its TwiML, or what its Url answered), and Twilio's error if that
    # could not run (11200: the Url did not answer 2xx; 12100: not TwiML).
    answered_with: str | None = None
    fetched_status: int | None = None
    answer_error: int | None = None
    # TwiML documents given by updates of the live call, in order, and Twilio's error if the last
    # could not run (11200, 12100).
    updated_with: list[str] = field(default_factory=list)
    update_error: int | None = None
    dialed: list[DialedLeg] = field(default_factory=list)
    status: str = "queued"
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    started_at: float | None = None
    answered_at: float | None = None
    ended_at: float | None = None
    duration: int | None = None
    answered_by: str | None = None
    initiated: bool = False
    sequence: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    detection: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def ended(self) -> bool:
        """Whether the call has reached a terminal status."""
        return self.status in TERMINAL

    def set_status(self, status: str) -> None:
        """Move to a new status and stamp the times Twilio reports."""
        now = time.time()
        self.status = status
        self.updated_at = now
        if status == "in-progress":
            self.answered_at = now
        if status in TERMINAL:
            self.ended_at = now

    def uri(self) -> str:
        """The call's path under the REST API."""
        return f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}.json"

    def resource(self) -> dict[str, Any]:
        """The call as Twilio's REST API returns it."""
        base = self.uri().removesuffix(".json")
        return {
            "sid": self.sid,
            "date_created": rfc2822(self.created_at),
            "date_updated": rfc2822(self.updated_at),
            "parent_call_sid": None,
            "account_sid": self.account_sid,
            "to": self.to,
            "to_formatted": national_format(self.to),
            "from": self.from_,
            "from_formatted": national_format(self.from_),
            "phone_number_sid": "PN" + self.sid[2:],
            "status": self.status,
            "start_time": _optional_rfc2822(self.started_at),
            "end_time": _optional_rfc2822(self.ended_at),
            "duration": None if self.duration is None else str(self.duration),
            "price": None,
            "price_unit": "USD",
            "direction": "outbound-api",
            "answered_by": self.answered_by,
            "api_version": API_VERSION,
            "annotation": None,
            "forwarded_from": None,
            "group_sid": None,
            "caller_name": None,
            "queue_time": str(int(((self.started_at or self.updated_at) - self.created_at) * 1000)),
            "trunk_sid": None,
            "uri": self.uri(),
            "subresource_uris": {name: f"{base}/{_camel(name)}.json" for name in SUBRESOURCES},
        }

    def summary(self) -> dict[str, Any]:
        """The call as the simulator's control API reports it."""
        return {
            "sid": self.sid,
            "to": self.to,
            "from": self.from_,
            "status": self.status,
            "created_at": self.created_at,
            "ended_at": self.ended_at,
            "status_callback": self.status_callback,
            "duration": self.duration,
            "answered_by": self.answered_by,
            "twiml": self.twiml,
            "url": self.url,
            "answered_with": self.answered_with,
            "fetched_status": self.fetched_status,
            "answer_error": self.answer_error,
            "machine_detection": self.machine_detection_mode,
            "async_amd": self.async_amd,
            "amd_callback_fate": self.amd_callback_fate,
            "updated_with": list(self.updated_with),
            "update_error": self.update_error,
            "recording_sid": self.recording_sid,
            "dialed": [leg.summary() for leg in self.dialed],
        }


def _camel(name: str) -> str:
    return "Siprec" if name == "siprec" else "".join(part.title() for part in name.split("_"))


@dataclass(frozen=True)
class TimeFilter:
    """Twilio's ``StartTime``, ``StartTime>`` and ``StartTime<`` filters: dates or datetimes in UTC."""

    on: str | None = None
    after: str | None = None
    before: str | None = None

    def unset(self) -> bool:
        """Whether no filter was given."""
        return self.on is None and self.after is None and self.before is None

    def matches(self, started: float) -> bool:
        """Whether a call started at this wall-clock time passes every filter given."""
        return (
            (self.on is None or _compare(started, self.on) == 0)
            and (self.after is None or _compare(started, self.after) >= 0)
            and (self.before is None or _compare(started, self.before) < 0)
        )


def _compare(started: float, raw: str) -> int:
    """-1, 0 or 1 as a start time falls before, on or after a bound, at the bound's resolution."""
    bound = parse_time(raw)
    if isinstance(bound, datetime):
        second, limit = int(started), int(bound.timestamp())
        return (second > limit) - (second < limit)
    day = datetime.fromtimestamp(started, UTC).date()
    return (day > bound) - (day < bound)


def parse_time(raw: str) -> date | datetime:
    """Parse ``YYYY-MM-DD`` or an ISO 8601 datetime (naive means UTC); raise ValueError otherwise."""
    if len(raw) == 10:
        return date.fromisoformat(raw)
    parsed = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class CallStore:
    """Every call the simulator has created, in creation order."""

    def __init__(self) -> None:
        self._calls: dict[str, Call] = {}

    def add(self, call: Call) -> None:
        """Remember a new call."""
        self._calls[call.sid] = call

    def get(self, sid: str) -> Call | None:
        """The call with this SID, if any."""
        return self._calls.get(sid)

    def all(self) -> list[Call]:
        """Every call, oldest first."""
        return list(self._calls.values())

    def clear(self) -> list[Call]:
        """Forget every call and return them."""
        calls = self.all()
        self._calls.clear()
        return calls

    def search(
        self,
        account_sid: str,
        to: str | None = None,
        from_: str | None = None,
        status: str | None = None,
        start: TimeFilter | None = None,
        created_before: float | None = None,
    ) -> list[Call]:
        """Calls matching Twilio's list filters, newest first.

        A call still queued has no start time ("Empty if the call has not yet been dialed", Twilio's
        Call resource), so no `StartTime` filter matches it; `Status=queued` finds it. With
        `created_before`, calls created later are left out, as Twilio's lists lag behind new calls.
        """
        found: Iterable[Call] = (
            c
            for c in reversed(self._calls.values())
            if c.account_sid == account_sid
            and (created_before is None or c.created_at <= created_before)
            and (to is None or c.to == to)
            and (from_ is None or c.from_ == from_)
            and (status is None or c.status == status)
            and (start is None or start.unset() or (c.started_at is not None and start.matches(c.started_at)))
        )
        return list(found)
