"""The time as a run's history keeps it: an activity whose answer is recorded, so a replay reads the
same time the run read."""

from __future__ import annotations

import time

from temporalio import activity

from contracts.activities import READ_CLOCK


@activity.defn(name=READ_CLOCK)
async def read_clock() -> float:
    """Now, in epoch seconds, by this worker's clock."""
    return time.time()
