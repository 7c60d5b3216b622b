"""When a lead may be called: a daily window in the called party's local time.

A number whose country or area spans several time zones may be called only when the window is open
in every one of them (the most restrictive reading); when that never happens, the lead is not called.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from contracts.messages import CallingWindow


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


@dataclass(frozen=True)
class WindowCheck:
    """Whether a lead may be called now: open now, opening at `opens_at` (epoch seconds), or never
    (`never` says why, for the lead's outcome)."""

    opens_at: float | None = None
    never: str | None = None

    @property
    def open_now(self) -> bool:
        return self.opens_at is None and self.never is None


def window_check(window: CallingWindow, zones: list[str], now: datetime, exact: bool = True) -> WindowCheck:
    """When the window is next open in every one of the zones, from `now` on. Never raises: a window
    that cannot open in all the zones at once, or a zone this machine does not know, is a reason.

    `exact=False` is how runs started before windows were read to the second decide: `now` rounded
    up to the next whole minute (07:59:01 counted as 08:00)."""
    zones = zones or ["UTC"]
    try:
        tzs = [ZoneInfo(zone) for zone in zones]
    except (ZoneInfoNotFoundError, ValueError) as error:
        return WindowCheck(never=f"unknown time zone among {', '.join(zones)} ({error})")
    if not exact:
        now = now.replace(second=0, microsecond=0) + (
            timedelta(minutes=1) if now.second or now.microsecond else timedelta()
        )
    now = now.astimezone(UTC)

    def open_everywhere(instant: datetime) -> bool:
        return all(is_open(window, instant.astimezone(tz)) for tz in tzs)

    if open_everywhere(now):
        return WindowCheck()
    # The window opens everywhere at the moment the last zone opens: some zone's local start time.
    # Weekly at most, so a week of candidates decides.
    try:
        start = time.fromisoformat(window.start)
    except ValueError:
        return WindowCheck(never=f"the calling window's start {window.start!r} is not a time of day")
    candidates = set()
    for tz in tzs:
        local_now = now.astimezone(tz)
        for day in range(8):
            date = (local_now + timedelta(days=day)).date()
            candidate = datetime.combine(date, start, tzinfo=tz).astimezone(UTC)
            if candidate > now:
                candidates.add(candidate)
    for candidate in sorted(candidates):
        if open_everywhere(candidate):
            return WindowCheck(opens_at=candidate.timestamp())
    where = f"all {len(zones)} time zones" if len(zones) > 1 else f"time zone {zones[0]}"
    return WindowCheck(
        never=(
            f"the calling window {window.start}-{window.end} is never open at once in {where} "
            "the number may be in; give the lead its timezone"
        )
    )
