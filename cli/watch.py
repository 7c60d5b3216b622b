"""A run followed live: a progress bar polled from `GET /v1/runs/{id}` until the run ends."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cli.render import FINAL_STATUSES, live_counts

POLL_SECONDS = 1.0


def follow(
    read_run: Callable[[], dict[str, Any]], console: Console, poll_seconds: float = POLL_SECONDS
) -> dict[str, Any]:
    """Show the run's progress until its status is final; the run as last read."""
    run = read_run()
    bar = Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}", markup=False),
        TimeElapsedColumn(),
        console=console,
        refresh_per_second=4,
    )
    with bar:
        task = bar.add_task(_title(run), **_state(run))
        while run["status"] not in FINAL_STATUSES:
            time.sleep(poll_seconds)
            run = read_run()
            bar.update(task, description=_title(run), **_state(run))
    return run


def _title(run: dict[str, Any]) -> str:
    title = f"{run.get('name') or run['id']}: {run['status']}"
    if run["status"] == "paused" and run.get("status_reason"):
        title += f" ({run['status_reason']})"
    return title


def _state(run: dict[str, Any]) -> dict[str, Any]:
    progress = run["progress"]
    return {"total": progress["total"], "completed": progress["done"], "counts": live_counts(progress)}
