"""Zone lists stored once per payload: a toll-free number may be in a dozen zones, and a page of
leads or a run's continue-as-new input holds thousands of leads with the same few lists."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class HasZones(Protocol):
    zones: list[str]
    zone_set: int


def pack_zones(items: Iterable[HasZones], table: list[list[str]]) -> None:
    """Replace each item's zones by an index into `table`, adding the lists it lacks. A single zone
    stays where it is: it costs no more than the index, and workflow code from before the tables
    (a worker not yet upgraded) still reads it."""
    index = {tuple(zones): i for i, zones in enumerate(table)}
    for item in items:
        if len(item.zones) < 2:
            continue
        key = tuple(item.zones)
        if key not in index:
            index[key] = len(table)
            table.append(list(key))
        item.zone_set, item.zones = index[key], []


def unpack_zones(items: Iterable[HasZones], table: list[list[str]]) -> None:
    """Give each item its zones back from `table` (the lists are shared, and never changed)."""
    for item in items:
        if 0 <= item.zone_set < len(table):
            item.zones, item.zone_set = table[item.zone_set], -1
