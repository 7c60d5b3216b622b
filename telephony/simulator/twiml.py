"""What the simulator reads of TwiML: whether a document is TwiML, and a `<Dial>` it asks for."""

from __future__ import annotations

from dataclasses import dataclass
from xml.etree import ElementTree


@dataclass(frozen=True)
class Dial:
    """A `<Dial>` verb calling one number: where Twilio reports the end of the dialed leg (`action`,
    absolute URLs only) and with which HTTP `method` (default POST)."""

    number: str
    action: str | None = None
    method: str = "POST"


def _root(document: str) -> ElementTree.Element | None:
    try:
        return ElementTree.fromstring(document.strip())
    except ElementTree.ParseError:
        return None


def is_twiml(document: str) -> bool:
    """Whether a document is TwiML Twilio can run: XML whose root is `<Response>`."""
    root = _root(document)
    return root is not None and root.tag == "Response"


def dial_of(document: str) -> Dial | None:
    """The first `<Dial>` of a `<Response>` that calls a number (`<Number>` or the number as text).

    Twilio requests `action` when the dialed leg ends, with the `method` attribute (GET or POST,
    default POST); verbs after a `<Dial>` with an action never run. A relative action is left out.
    """
    root = _root(document)
    if root is None or root.tag != "Response":
        return None
    for verb in root:
        if verb.tag != "Dial":
            continue
        number_noun = verb.find("Number")
        number = (number_noun.text if number_noun is not None else verb.text) or ""
        if not number.strip():
            continue
        action = verb.get("action")
        if action is not None and not action.startswith(("http://", "https://")):
            action = None
        method = "GET" if (verb.get("method") or "").upper() == "GET" else "POST"
        return Dial(number.strip(), action, method)
    return None
