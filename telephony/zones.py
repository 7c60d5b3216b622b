"""Which time zones a phone number may be in."""

from __future__ import annotations

import functools
from collections import defaultdict
from importlib import resources
from pathlib import Path

import phonenumbers
from phonenumbers import timezone as number_timezones

UNKNOWN = "Etc/Unknown"
SYSTEM_ZONE_TABLE = Path("/usr/share/zoneinfo/zone.tab")


def lead_zones(phone: str, override: str | None, fallback: str | None) -> list[str]:
    """The lead's own zone if the uploader gave one; else every zone the number could be in; else
    the business's zone; else none (the window is then read in UTC).

    `phonenumbers` gives some numbers every zone of their calling code (a Kazakh mobile number
    all sixteen zones of +7, Moscow to Kamchatka); those of the number's own country are kept."""
    if override:
        return [override]
    try:
        number = phonenumbers.parse(phone)
        zones = {z for z in number_timezones.time_zones_for_number(number) if z != UNKNOWN}
        region = phonenumbers.region_code_for_number(number)
    except phonenumbers.NumberParseException:
        zones, region = set(), None
    in_region = zones & zones_of_country().get(region or "", frozenset())
    if in_region:
        zones = in_region
    if zones:
        return sorted(zones)
    return [fallback] if fallback else []


@functools.cache
def zones_of_country() -> dict[str, frozenset[str]]:
    """Each ISO 3166 country's time zones, from the tz database's zone.tab (the `tzdata` package's
    copy, which zoneinfo falls back to, else the system's)."""
    try:
        text = resources.files("tzdata.zoneinfo").joinpath("zone.tab").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        text = SYSTEM_ZONE_TABLE.read_text(encoding="utf-8") if SYSTEM_ZONE_TABLE.exists() else ""
    table: defaultdict[str, set[str]] = defaultdict(set)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            country, _coordinates, zone, *_ = line.split("\t")
            table[country].add(zone)
    return {country: frozenset(zones) for country, zones in table.items()}
