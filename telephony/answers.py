"""What an answered call does, as TwiML: built with the `twilio` library's `VoiceResponse` from the
business's chosen answer, never by putting strings together, so whatever a lead's name or metadata
holds (`<`, `&`, quotes) is text and never markup."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

from standardwebhooks.webhooks import Webhook
from twilio.twiml.voice_response import Connect, VoiceResponse

from contracts.messages import Answer, Message

# Twilio takes at most this much TwiML in a create's `Twiml` parameter.
MAX_TWIML_CHARS = 4000
# A lead field said in a message is cut to this length: a message says a name, not a document.
MAX_FIELD_CHARS = 200
# `{name}`, or `{metadata.<field>}`; `{{` and `}}` are a brace.
PLACEHOLDER = re.compile(r"\{\{|\}\}|\{(name|metadata\.[^{}]+)\}")
ANY_BRACE = re.compile(r"[{}]")
# Characters XML 1.0 cannot carry (control characters, lone surrogates, U+FFFE and U+FFFF): a lead's
# field loses them; a business's text with them is refused (`not_xml`).
NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True)
class LeadFields:
    """What an answer may say or pass on of the lead it calls, and of the call."""

    name: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)
    phone: str = ""
    run_id: str = ""
    lead_id: int = 0
    attempt: int = 0


def placeholders(text: str) -> list[str]:
    """The lead fields a message names; ValueError for a brace that is neither a placeholder nor
    doubled."""
    named = [m.group(1) for m in PLACEHOLDER.finditer(text) if m.group(1)]
    if ANY_BRACE.search(PLACEHOLDER.sub("", text)):
        raise ValueError(
            "a message names lead fields as {name} or {metadata.<field>}; write a brace itself as {{ or }}"
        )
    return named


def says_lead_fields(answer: Answer | Message) -> bool:
    """Whether the answer (or message) says or passes on fields of the lead (so the dial reads the
    lead)."""
    if isinstance(answer, Answer) and answer.kind == "voice_agent":
        return True
    return bool(answer.say and placeholders(answer.say))


def fill(text: str, lead: LeadFields, limit: int = MAX_FIELD_CHARS) -> str:
    """The message with the lead's fields in it (a field the lead does not have is said as nothing)."""

    def value(match: re.Match[str]) -> str:
        token = match.group(0)
        if match.group(1) is None:
            return token[0]
        if match.group(1) == "name":
            found: Any = lead.name
        else:
            found = lead.metadata.get(match.group(1).removeprefix("metadata."))
        return "" if found is None else _xml_text(str(found), limit)

    return PLACEHOLDER.sub(value, text)


def not_xml(text: str) -> str | None:
    """A character of `text` that TwiML cannot carry, if any."""
    found = NOT_XML.search(text)
    return found.group(0) if found else None


def _xml_text(value: str, limit: int) -> str:
    return NOT_XML.sub("", value)[:limit]


def twiml_for(answer: Answer | Message, lead: LeadFields, dial_action: str | None = None) -> str:
    """The TwiML an answered call runs (or a voicemail left on a machine), within Twilio's size for
    it: lead fields are cut shorter if the message would not fit, then left out. A connect answer's
    `<Dial>` reports the bridged leg to `dial_action`."""
    for limit in (MAX_FIELD_CHARS, 40, 0):
        if isinstance(answer, Answer):
            response = _response(answer, lead, limit, dial_action)
        else:
            response = _message(VoiceResponse(), answer, lead, limit)
        twiml = str(response)
        if len(twiml) <= MAX_TWIML_CHARS:
            return twiml
    raise ValueError(f"the answer's TwiML is longer than {MAX_TWIML_CHARS} characters")


def _response(answer: Answer, lead: LeadFields, limit: int, dial_action: str | None) -> VoiceResponse:
    response = VoiceResponse()
    if answer.kind == "connect":
        if not answer.number:
            raise ValueError("a connect answer needs a number")
        dial = response.dial(action=dial_action, method="POST") if dial_action else response.dial()
        dial.number(answer.number)
        return response
    if answer.kind == "voice_agent":
        if not answer.url:
            raise ValueError("a voice agent answer needs its wss:// url")
        connect = Connect()
        stream = connect.stream(url=answer.url)
        for name, value in _stream_parameters(answer, lead, limit):
            stream.parameter(name=name, value=value)
        response.append(connect)
        return response
    if answer.kind != "message":
        raise ValueError(f"unknown answer kind {answer.kind!r}")
    return _message(response, answer, lead, limit)


def _message(
    response: VoiceResponse, message: Answer | Message, lead: LeadFields, limit: int
) -> VoiceResponse:
    if message.play:
        response.play(message.play)
    elif message.say:
        attributes = {k: v for k, v in (("voice", message.voice), ("language", message.language)) if v}
        response.say(fill(message.say, lead, limit), **attributes)
    return response


def _stream_parameters(answer: Answer, lead: LeadFields, limit: int) -> list[tuple[str, str]]:
    """Who the voice agent is talking to: the run, lead and attempt, the lead's phone and name, and
    the metadata fields the business chose (a field the lead does not have is passed empty)."""
    known = [
        ("run_id", lead.run_id),
        ("lead_id", str(lead.lead_id)),
        ("attempt", str(lead.attempt)),
        ("phone", lead.phone),
        ("name", _xml_text(lead.name or "", limit)),
    ]
    chosen = [
        (
            f"metadata.{key}",
            "" if lead.metadata.get(key) is None else _xml_text(str(lead.metadata[key]), limit),
        )
        for key in answer.metadata_fields
    ]
    return known + chosen


def voice_app_url(answer: Answer, secret: str, run_id: str, lead_id: int, attempt: int, at: datetime) -> str:
    """The URL Twilio fetches a voice app's TwiML from: the business's URL with the call's `run`,
    `lead` and `attempt` in its query, signed in the Standard Webhooks form with the business's own
    secret (Twilio's `X-Twilio-Signature` is made with the operator's token, which the business does
    not hold). The signed content is `run.lead.attempt`; `webhook-id`, `webhook-timestamp` and
    `webhook-signature` are the headers a Standard Webhooks library verifies it with."""
    assert answer.url is not None
    message_id = f"call_{run_id}_{lead_id}_{attempt}"
    signature = Webhook(secret).sign(message_id, at, f"{run_id}.{lead_id}.{attempt}")
    query = {
        "run": run_id,
        "lead": str(lead_id),
        "attempt": str(attempt),
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }
    split = urlsplit(answer.url)
    joined = "&".join(part for part in (split.query, urlencode(query)) if part)
    return urlunsplit((split.scheme, split.netloc, split.path, joined, ""))
