"""Which time zones a phone number may be in."""

from __future__ import annotations

import phonenumbers
from phonenumbers import timezone as number_timezones

UNKNOWN = "Etc/Unknown"


def lead_zones(phone: str, override: str | None, fallback: str | None) -> list[str]:
    """The lead's own zone if the uploader gave one; else every zone the number could be in; else
    the business's zone; else none (the window is then read in UTC)."""
    if override:
        return [override]
    try:
        zones = [z for z in number_timezones.time_zones_for_number(phonenumbers.parse(phone)) if z != UNKNOWN]
    except phonenumbers.NumberParseException:
        zones = []
    if zones:
        return sorted(zones)
    return [fallback] if fallback else []
