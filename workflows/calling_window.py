"""When a lead may be called: a daily window in the called party's local time.

A number whose country or area spans several time zones may be called only when the window is open
in every one of them (the most restrictive reading).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

ALL_DAYS = [0, 1, 2, 3, 4, 5, 6]  # Monday is 0


@dataclass
class CallingWindow:
    """Local hours ("HH:MM", end exclusive; "24:00" is midnight) on the given weekdays."""

    start: str = "08:00"
    end: str = "21:00"
    days: list[int] = field(default_factory=lambda: list(ALL_DAYS))


def _minutes(hhmm: str) -> int:
    hours, minutes = hhmm.split(":")
    return int(hours) * 60 + int(minutes)


def is_open(window: CallingWindow, local: datetime) -> bool:
    """Whether the window is open at this local time."""
    minute = local.hour * 60 + local.minute
    return local.weekday() in window.days and _minutes(window.start) <= minute < _minutes(window.end)


def opens_ever(window: CallingWindow) -> bool:
    """Whether the window opens at all."""
    return bool(window.days) and _minutes(window.start) < _minutes(window.end)


def next_open(window: CallingWindow, zones: list[str], now: datetime) -> datetime | None:
    """The first moment at or after `now` when the window is open in every zone; None if it is
    open now. Steps a minute at a time over candidate instants: window edges in each zone."""
    if not zones:
        zones = ["UTC"]
    tzs = [ZoneInfo(zone) for zone in zones]

    def open_everywhere(instant: datetime) -> bool:
        return all(is_open(window, instant.astimezone(tz)) for tz in tzs)

    now = now.astimezone(UTC).replace(second=0, microsecond=0) + (
        timedelta(minutes=1) if now.second or now.microsecond else timedelta()
    )
    if open_everywhere(now):
        return None
    # The window next opens at some zone's local start time; try each in order over a week.
    candidates = set()
    for tz in tzs:
        local_now = now.astimezone(tz)
        for day in range(8):
            date = (local_now + timedelta(days=day)).date()
            start = datetime.combine(date, time.fromisoformat(window.start), tzinfo=tz)
            if start.astimezone(UTC) > now:
                candidates.add(start.astimezone(UTC))
    for candidate in sorted(candidates):
        if open_everywhere(candidate):
            return candidate
    raise ValueError(f"the calling window {window} never opens in all of {zones}")
