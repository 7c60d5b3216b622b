"""What runs, businesses and lead lists are made of as the service takes and gives them: the bodies of
HTTP API v1, separate from the database models."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AnyHttpUrl,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    TypeAdapter,
    UrlConstraints,
    field_validator,
    model_validator,
)

from contracts.messages import (
    ALL_DAYS,
    ON_MACHINE_VOICEMAIL,
    Answer,
    CallingWindow,
    Message,
    RunOptions,
)
from contracts.statuses import LeadOutcome
from service.phones import InvalidPhone, to_e164
from telephony.answers import MAX_TWIML_CHARS, LeadFields, not_xml, placeholders, twiml_for
from workflows.calling_window import opens_ever

RETRYABLE_OUTCOMES = (
    LeadOutcome.BUSY,
    LeadOutcome.NO_ANSWER,
    LeadOutcome.FAILED,
    LeadOutcome.ANSWERED,
    LeadOutcome.VOICEMAIL,
    LeadOutcome.MACHINE,
)
# Past the end of any list; a larger offset would overflow the database's 64-bit OFFSET.
MAX_OFFSET = 1_000_000_000


def _e164(value: str) -> str:
    try:
        return to_e164(value)
    except InvalidPhone as error:
        raise ValueError(str(error)) from None


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000), which cannot be stored")
    return value


# Text kept in the database, which cannot hold the NUL character in text.
StoredText = Annotated[str, AfterValidator(_storable)]


def _not_true_or_false(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("must be a number, not true or false")
    return value


# A number in a request: JSON's true and false are refused, not read as 1 and 0 (a rotation's
# `"overlap_seconds": false` would otherwise revoke every key at once).
Number = BeforeValidator(_not_true_or_false)


def _zone(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone such as America/New_York") from None
    return value


class CallingWindowIn(BaseModel):
    """Local hours when a lead may be called, in the called party's time zone."""

    model_config = ConfigDict(extra="forbid")

    start: str = Field(default="08:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
    end: str = Field(default="21:00", pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$|^24:00$")
    days: list[int] = Field(
        default_factory=lambda: list(ALL_DAYS), max_length=7, description="0 is Monday, 6 is Sunday."
    )

    @model_validator(mode="after")
    def _opens(self) -> CallingWindowIn:
        if any(day not in ALL_DAYS for day in self.days):
            raise ValueError(f"days must be between 0 (Monday) and 6 (Sunday), got {self.days}")
        if not opens_ever(CallingWindow(self.start, self.end, self.days)):
            raise ValueError(f"the calling window {self.start}-{self.end} on days {self.days} never opens")
        return self


class BusinessCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StoredText = Field(min_length=1, max_length=200)
    caller_id: Annotated[str, AfterValidator(_e164)] = Field(
        max_length=40, description="The Twilio `From` number, E.164."
    )
    max_concurrent_calls: Annotated[int, Number] = Field(default=3, ge=1, le=100)
    timezone: Annotated[str | None, AfterValidator(_zone)] = Field(default=None, max_length=64)
    calling_window: CallingWindowIn | None = Field(
        default=None, description="Default window for the business's runs (08:00-21:00 every day if unset)."
    )


class BusinessPublic(BaseModel):
    id: str
    name: str
    caller_id: str
    max_concurrent_calls: int
    timezone: str | None


class BusinessCreated(BusinessPublic):
    api_key: str = Field(description="Shown once; keep it. Send as `Authorization: Bearer <api_key>`.")


MetadataValue = str | int | float | bool | None
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_CHARS = 100
MAX_METADATA_VALUE_CHARS = 1000
# Different field names across a run's leads: each is a column of the run's calls.csv.
MAX_RUN_METADATA_KEYS = 200


def check_metadata_keys(keys: Iterable[str]) -> None:
    """Refuse more keys than a lead may carry, and keys that are empty or too long."""
    keys = list(keys)
    if len(keys) > MAX_METADATA_KEYS:
        raise ValueError(f"{len(keys)} metadata fields; a lead may carry at most {MAX_METADATA_KEYS}")
    for key in keys:
        if not key.strip():
            raise ValueError("a metadata field needs a name")
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise ValueError(
                f"the metadata field name {key[:20]!r}... is {len(key)} characters; "
                f"at most {MAX_METADATA_KEY_CHARS}"
            )


def _metadata(value: object) -> object:
    """One clear error for a bad metadata object, rather than one per type a value is not."""
    if value is None or not isinstance(value, dict):
        return value  # null, or the type error pydantic reports
    check_metadata_keys(value)
    for key, item in value.items():
        if isinstance(item, dict | list):
            raise ValueError(
                f"metadata {key!r} is {type(item).__name__}; values are text, numbers, true/false or null"
            )
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"metadata {key!r} is not a finite number")
        if isinstance(item, str) and len(item) > MAX_METADATA_VALUE_CHARS:
            raise ValueError(
                f"metadata {key!r} is {len(item)} characters; at most {MAX_METADATA_VALUE_CHARS}"
            )
    return value


class LeadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str = Field(max_length=40)
    name: StoredText | None = Field(default=None, max_length=200)
    timezone: Annotated[str | None, AfterValidator(_zone)] = Field(
        default=None, max_length=64, description="The lead's time zone, when the number does not tell it."
    )
    metadata: Annotated[dict[str, MetadataValue] | None, BeforeValidator(_metadata)] = Field(
        default=None,
        description=(
            f"Anything else to keep with the lead and see in the run's calls.csv: at most "
            f"{MAX_METADATA_KEYS} fields, names up to {MAX_METADATA_KEY_CHARS} characters, "
            f"text up to {MAX_METADATA_VALUE_CHARS}."
        ),
    )


# Twilio's `<Say>` voices: its basic ones, and the Amazon Polly and Google voices it names
# (https://www.twilio.com/docs/voice/twiml/say/text-speech).
VOICE = (
    r"^(man|woman|alice|Polly\.[A-Za-z]+(-(Neural|Generative))?|Google\.[a-z]{2,3}-[A-Z]{2}-[A-Za-z0-9-]+)$"
)
LANGUAGE = r"^[a-z]{2,3}(-[A-Z]{2})?$"
MAX_SAY_CHARS = 1000


def _spoken(text: str | None) -> str | None:
    if text is not None:
        _xml_only(text)
        placeholders(text)
    return text


def _xml_only(text: str) -> None:
    bad = not_xml(text)
    if bad is not None:
        raise ValueError(f"the character U+{ord(bad):04X} cannot be said or sent to Twilio")


_URL = TypeAdapter(AnyHttpUrl)


def _https(url: str | None) -> str | None:
    if url is None:
        return None
    _xml_only(url)
    parsed = _URL.validate_python(url)
    if parsed.scheme != "https":
        raise ValueError("Twilio fetches the audio: give an https:// URL")
    return url


def _field_name(name: str) -> str:
    _xml_only(name)
    return name


FieldName = Annotated[
    str, Field(min_length=1, max_length=MAX_METADATA_KEY_CHARS), AfterValidator(_field_name)
]


def _check_message(say: str | None, play: str | None, voice: str | None, language: str | None) -> None:
    """A message says a text or plays audio (one of them), within Twilio's TwiML size."""
    if (say is None) == (play is None):
        raise ValueError("a message either says a text (`say`) or plays audio (`play`): give one")
    if play is not None and (voice or language):
        raise ValueError("`voice` and `language` are for a text that is said, not for `play`")
    try:
        twiml_for(Message(say=say, voice=voice, language=language, play=play), LeadFields())
    except ValueError:
        raise ValueError(
            f"said as TwiML the message is longer than Twilio takes ({MAX_TWIML_CHARS} characters): "
            "shorten it (each &, < and > counts as four or five)"
        ) from None


class VoicemailIn(BaseModel):
    """What is left on an answering machine, after its beep: a text said (`say`, in a `voice` and
    `language`; `{name}` and `{metadata.<field>}` are the lead's) or audio played (`play`)."""

    model_config = ConfigDict(extra="forbid")

    say: Annotated[StoredText | None, AfterValidator(_spoken)] = Field(
        default=None, min_length=1, max_length=MAX_SAY_CHARS, examples=["Hi {name}, please call us back."]
    )
    voice: str | None = Field(default=None, pattern=VOICE)
    language: str | None = Field(default=None, pattern=LANGUAGE)
    play: Annotated[str | None, AfterValidator(_https)] = Field(
        default=None, max_length=2000, description="An https URL of the audio to play."
    )

    @model_validator(mode="after")
    def _a_message(self) -> VoicemailIn:
        _check_message(self.say, self.play, self.voice, self.language)
        return self

    def to_message(self) -> Message:
        return Message(say=self.say, voice=self.voice, language=self.language, play=self.play)


class AnswerIn(BaseModel):
    """What an answered call does.

    - `message`: say a text (`say`, in a `voice` and `language`) or play an audio file (`play`, an
      https URL). The text may name the lead's fields as `{name}` and `{metadata.<field>}`; whatever
      they hold is said as text.
    - `connect`: put the person who answers through to `number`, one of the business's registered
      agent numbers (`PUT /v1/businesses/me/agent-numbers/{phone}`).
    - `voice_agent`: stream the call to the business's AI voice agent at `url` (`wss://`), with
      `<Parameter>`s naming who it talks to: `run_id`, `lead_id`, `attempt`, `phone`, `name`, and
      `metadata.<field>` for each of `metadata_fields`.
    - `voice_app`: Twilio fetches the call's TwiML from the business's own app at `url` (`https://`)
      when the call is answered, with `run`, `lead` and `attempt` in the query and a signature made
      with the business's own secret (see the README, "When someone answers").

    `on_machine` has Twilio tell people from answering machines, in the background (the person who
    answers hears the answer at once): `continue` only tells (the outcome is `machine`), `hang_up`
    ends a machine's call, `voicemail` waits for its beep and leaves `voicemail` (the outcome is
    `voicemail`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["message", "connect", "voice_agent", "voice_app"] = "message"
    say: Annotated[StoredText | None, AfterValidator(_spoken)] = Field(
        default=None, min_length=1, max_length=MAX_SAY_CHARS, examples=["Hello {name}, this is Acme."]
    )
    voice: str | None = Field(default=None, pattern=VOICE, examples=["Polly.Joanna"])
    language: str | None = Field(default=None, pattern=LANGUAGE, examples=["en-US"])
    play: Annotated[str | None, AfterValidator(_https)] = Field(
        default=None, max_length=2000, description="An https URL of the audio to play."
    )
    number: Annotated[str | None, AfterValidator(lambda n: _e164(n) if n is not None else None)] = Field(
        default=None, max_length=40, description="`connect`: the registered agent number, E.164."
    )
    url: Annotated[str | None, AfterValidator(_plain_url)] = Field(
        default=None,
        max_length=2000,
        description="`voice_agent`: the agent's wss:// media endpoint; `voice_app`: the app's https:// URL.",
    )
    metadata_fields: list[FieldName] | None = Field(
        default=None, max_length=10, description="`voice_agent`: the lead's metadata fields passed on."
    )
    on_machine: Literal["continue", "hang_up", "voicemail"] | None = Field(
        default=None, description="What to do when a machine answers; machines are not told apart if unset."
    )
    voicemail: VoicemailIn | None = Field(
        default=None, description='What to leave on a machine, with `"on_machine": "voicemail"`.'
    )
    record: StrictBool | None = Field(
        default=None,
        description="Record each answered call; the recording is kept on its attempt (see `recording_retention_days`).",
    )

    @model_validator(mode="after")
    def _voicemail_when_asked(self) -> AnswerIn:
        if (self.on_machine == ON_MACHINE_VOICEMAIL) != (self.voicemail is not None):
            raise ValueError('`voicemail` is what `"on_machine": "voicemail"` leaves: give both or neither')
        return self

    @model_validator(mode="after")
    def _one_thing_to_do(self) -> AnswerIn:
        message_fields = (self.say, self.play, self.voice, self.language)
        if self.kind == "voice_agent":
            if self.url is None or not self.url.startswith("wss://") or self.number or any(message_fields):
                raise ValueError(
                    "a voice agent answer takes a `url` (wss://) and `metadata_fields`, nothing else"
                )
            return self
        if self.kind == "voice_app":
            if self.url is None or self.url.startswith("wss://") or self.number or any(message_fields):
                raise ValueError(
                    "a voice app answer takes a `url` (https://; http://127.0.0.1 or localhost while "
                    "developing against the simulator), nothing else"
                )
            if self.metadata_fields:
                raise ValueError("`metadata_fields` are for a voice agent answer")
            return self
        if self.url is not None or self.metadata_fields:
            raise ValueError("`url` and `metadata_fields` are for a voice agent or voice app answer")
        if self.kind == "connect":
            if self.number is None or any(message_fields):
                raise ValueError(
                    "a connect answer takes a `number` (a registered agent number) and nothing else"
                )
            return self
        if self.number is not None:
            raise ValueError('`number` is for a connect answer (`"kind": "connect"`)')
        _check_message(self.say, self.play, self.voice, self.language)
        return self

    def to_answer(self) -> Answer:
        return Answer(
            kind=self.kind,
            say=self.say,
            voice=self.voice,
            language=self.language,
            play=self.play,
            number=self.number,
            url=self.url,
            metadata_fields=list(self.metadata_fields or ()),
            on_machine=self.on_machine,
            voicemail=self.voicemail.to_message() if self.voicemail is not None else None,
            record=bool(self.record),
        )


class AnswerSaved(AnswerIn):
    signing_secret: str | None = Field(
        default=None,
        description="A voice app's signing secret (`whsec_...`): in the answer only when it is made.",
    )


class TestCallIn(BaseModel):
    """A call to a number of the business's own, to hear what its answered calls do."""

    model_config = ConfigDict(extra="forbid")

    phone: Annotated[str, AfterValidator(_e164)] = Field(max_length=40, description="Where to call, E.164.")
    answer: AnswerIn | None = Field(default=None, description="Try this answer; the business's if unset.")


class AgentNumberIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: StoredText | None = Field(default=None, max_length=200, description="Who answers there.")


class AgentNumber(BaseModel):
    phone: str
    label: str | None


def _plain_url(url: str | None) -> str | None:
    if url is None:
        return None
    if not re.fullmatch(
        r"((wss|https)://[A-Za-z0-9.-]+|http://(127\.0\.0\.1|localhost))(:[0-9]{1,5})?"
        r"(/[A-Za-z0-9._~:/?#@!$&()*+,;=%-]*)?",
        url,
    ):
        raise ValueError(
            "give a wss:// URL for a voice agent (wss://agent.example.com/media) or an https:// URL for a "
            "voice app (https://app.example.com/answer)"
        )
    return url


# A run's option defaults are the workflow's (RunOptions): defined once, shown in the API's schema.
_DEFAULT = RunOptions()
TWIML_GONE = (
    "the twiml option is no longer taken: say what an answered call does with `answer`, e.g. "
    '{"answer": {"kind": "message", "say": "Hello {name}"}} (README, "When someone answers")'
)


def _no_twiml(value: object) -> None:
    if value is not None:
        raise ValueError(TWIML_GONE)


class RunOptionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: Annotated[int, Number] = Field(
        default=_DEFAULT.max_attempts, ge=1, le=10, description="Calls per lead at most."
    )
    retry_delay_seconds: Annotated[int, Number] = Field(
        default=_DEFAULT.retry_delay_seconds, ge=60, le=7 * 86400
    )
    retry_backoff: Annotated[float, Number] = Field(
        default=_DEFAULT.retry_backoff, ge=1.0, le=10.0, description="Each retry waits this much longer."
    )
    retry_on: list[str] = Field(
        default_factory=lambda: list(_DEFAULT.retry_on),
        max_length=len(RETRYABLE_OUTCOMES),
        description="Outcomes that retry.",
    )
    calling_window: CallingWindowIn | None = Field(
        default=None, description="The business's window if unset."
    )
    ring_timeout_seconds: Annotated[int, Number] = Field(default=_DEFAULT.ring_timeout_seconds, ge=5, le=600)
    call_time_limit_seconds: Annotated[int, Number] = Field(
        default=_DEFAULT.call_time_limit_seconds, ge=10, le=14400
    )
    # Strict: the schema says true or false, so "yes" or 1 is a mistake to name, not a guess to make.
    hang_up_on_cancel: StrictBool = _DEFAULT.hang_up_on_cancel
    machine_detection: StrictBool = _DEFAULT.machine_detection
    answer: AnswerIn | None = Field(
        default=None, description="What an answered call does; the business's answer if unset."
    )
    twiml: Annotated[None, BeforeValidator(_no_twiml)] = Field(
        default=None, deprecated=True, description="No longer taken: use `answer`."
    )
    reconcile_margin_seconds: Annotated[int, Number] = Field(
        default=_DEFAULT.reconcile_margin_seconds, ge=5, le=3600
    )

    @field_validator("retry_on")
    @classmethod
    def _known_outcomes(cls, names: list[str]) -> list[str]:
        unknown = [name for name in names if name not in RETRYABLE_OUTCOMES]
        if unknown:
            raise ValueError(f"unknown outcomes {unknown}; choose from {list(RETRYABLE_OUTCOMES)}")
        return names


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: StoredText | None = Field(default=None, max_length=200)
    leads: list[LeadIn] = Field(min_length=1, max_length=100_000)
    options: RunOptionsIn = Field(default_factory=RunOptionsIn)


class RunCreated(BaseModel):
    id: str
    status: str
    workflow_id: str


class Progress(BaseModel):
    total: int
    queued: int
    dialing: int
    in_flight: int
    retry_waiting: int = 0
    window_waiting: int = 0
    done: int
    outcomes: dict[str, int]
    window_opens_at: datetime | None = Field(
        default=None,
        description="While leads wait for their calling window: when the first of them may be called (UTC).",
    )


class RunPublic(BaseModel):
    id: str
    name: str | None
    status: str
    status_reason: str | None
    workflow_id: str
    progress: Progress
    created_at: datetime
    finished_at: datetime | None


class RecordingPublic(BaseModel):
    """A call's recording, once Twilio has reported it."""

    sid: str | None
    status: str = Field(description="pending, completed, absent (no audio) or deleted (past its retention).")
    seconds: int | None
    url: str | None = Field(description="Twilio's URL of the recording (its account's credentials fetch it).")


class RecordingsIn(BaseModel):
    """How long a business keeps its calls' recordings at Twilio."""

    model_config = ConfigDict(extra="forbid")

    retention_days: Annotated[int | None, Number] = Field(
        ge=1,
        le=3650,
        description="Delete each recording at Twilio this many days after it was made; keep them if null.",
    )


class CallPublic(BaseModel):
    lead: int
    phone: str
    attempt: int
    call_sid: str | None
    status: str
    duration: int | None
    answered_by: str | None
    error_code: int | None
    error_message: str | None
    outcome: str | None = Field(
        description="What the attempt's ending means for its lead, once it has ended."
    )
    bridged_status: str | None = Field(
        default=None, description="A connect answer's leg to the agent number: Twilio's DialCallStatus."
    )
    bridged_seconds: int | None = None
    recording: RecordingPublic | None = None
    created_at: datetime
    updated_at: datetime


class Accepted(BaseModel):
    id: str
    status: str
    detail: str


class WebhookIn(BaseModel):
    """Where the business's events are POSTed."""

    model_config = ConfigDict(extra="forbid")

    url: Annotated[AnyHttpUrl, UrlConstraints(max_length=2000)] = Field(
        description="An http(s) URL to a public address; https in production."
    )
    rotate_secret: StrictBool = Field(
        default=False, description="Make a new signing secret; the old one stops signing at once."
    )


class WebhookPublic(BaseModel):
    url: str
    events: list[str] = Field(description="The event types POSTed to the URL.")


class WebhookRegistered(WebhookPublic):
    signing_secret: str | None = Field(
        description="The Standard Webhooks secret (`whsec_...`) events are signed with; returned when it "
        "is made (first registration, or `rotate_secret`), null otherwise."
    )


class EventPublic(BaseModel):
    id: str = Field(description="Also the `webhook-id` header of every delivery of the event.")
    type: str
    run_id: str
    lead_id: int | None
    attempt: int | None
    status: str = Field(description="pending, delivered or failed (given up after 3 days of retries).")
    attempts: int = Field(description="Deliveries tried so far.")
    last_status_code: int | None
    last_error: str | None
    created_at: datetime
    next_attempt_at: datetime | None
    delivered_at: datetime | None


MAX_NUMBERS_PER_REQUEST = 100_000


class DncAdd(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phones: list[Annotated[str, Field(max_length=40)]] = Field(
        min_length=1, max_length=MAX_NUMBERS_PER_REQUEST
    )


class DncChange(BaseModel):
    added: int = Field(description="Numbers new to the list (ones already on it are not counted).")
    total: int


class DncEntry(BaseModel):
    phone: str


class KeyRotation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_seconds: Annotated[int, Number] = Field(
        default=3600,
        ge=0,
        le=7 * 86400,
        description="How long the keys before the new one keep working; 0 stops them at once.",
    )


class KeyIssued(BaseModel):
    api_key: str = Field(description="Shown once; keep it. Send as `Authorization: Bearer <api_key>`.")
    previous_keys_end_at: datetime | None = Field(description="When the keys before it stop working.")
