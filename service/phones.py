"""Phone numbers to E.164, with a reason when a number cannot be one."""

from __future__ import annotations

import phonenumbers


class InvalidPhone(ValueError):
    """A number that is not a valid E.164 phone number; the message says why."""


def to_e164(raw: str) -> str:
    """Normalise a number written with a leading + and country code to E.164. A refusal quotes at
    most the first 40 characters of what was given."""
    text = raw.strip()
    raw = raw if len(raw) <= 40 else raw[:40] + "..."
    if not text.startswith("+"):
        raise InvalidPhone(f"{raw!r} has no country code: write it in E.164 form, like +14155550100")
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as error:
        raise InvalidPhone(f"{raw!r} is not a phone number ({error})") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone(f"{raw!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
