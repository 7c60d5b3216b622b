"""What the command line shows: errors, runs and their outcomes, as rich text and tables.

Text from the API is never read as rich markup: a message may well contain square brackets."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from contracts.statuses import FINAL_RUN_STATUSES

FINAL_STATUSES = FINAL_RUN_STATUSES


def show_error(console: Console, message: str, problems: list[dict[str, Any]] | None = None) -> None:
    """`error: message`, then the API's itemised problems as a table."""
    console.print(Text.assemble(("error: ", "bold red"), message), soft_wrap=True)
    if problems:
        console.print(problems_table(problems))


def problems_table(problems: list[dict[str, Any]]) -> Table:
    """One row per problem: where it is (a file's line, or a field), what is wrong, the value."""
    table = Table("Where", "Problem", "Value")
    for problem in problems:
        where, message = _place(problem)
        value = problem.get("input")
        table.add_row(Text(where), Text(message), Text("" if value is None else str(value)))
    return table


def _place(problem: dict[str, Any]) -> tuple[str, str]:
    loc = [str(part) for part in problem.get("loc") or []]
    message = str(problem.get("msg", ""))
    if len(loc) == 3 and loc[:2] == ["body", "line"]:
        where = f"line {loc[2]}"
        return where, message.removeprefix(f"{where}: ")
    return ".".join(part for part in loc if part != "body") or "request", message


def runs_table(runs: list[dict[str, Any]]) -> Table:
    """The business's runs, newest first."""
    table = Table("Run", "Status", "Workflow")
    for run in runs:
        table.add_row(Text(run["id"]), Text(run["status"]), Text(run["workflow_id"]))
    return table


def events_table(events: list[dict[str, Any]]) -> Table:
    """Events and their delivery: state, tries, the webhook's last answer or error."""
    table = Table("Event", "Type", "Run", "Lead", "Status", "Tries", "Last answer")
    for event in events:
        last = event["last_error"] or (str(event["last_status_code"]) if event["last_status_code"] else "")
        table.add_row(
            Text(event["id"]),
            Text(event["type"]),
            Text(event["run_id"]),
            Text("" if event["lead_id"] is None else f"{event['lead_id']}/{event['attempt']}"),
            Text(event["status"]),
            Text(str(event["attempts"])),
            Text(last),
        )
    return table


def run_summary(run: dict[str, Any]) -> RenderableType:
    """How a run stands or ended: its status, why, and how many leads ended with each outcome."""
    progress = run["progress"]
    headline = Text.assemble(
        ("Run ", "bold"),
        (run["id"], "bold"),
        " ",
        (run["status"], _status_style(run["status"])),
        f": {progress['done']} of {progress['total']} leads done",
    )
    if run.get("status_reason"):
        headline.append(f" ({run['status_reason']})")
    outcomes = Table("Outcome", "Leads")
    for outcome, count in progress["outcomes"].items():
        outcomes.add_row(Text(outcome), Text(str(count)))
    return Group(headline, outcomes)


def live_counts(progress: dict[str, Any]) -> str:
    """Where the leads not done are, and the outcomes so far, on one line."""
    waiting = progress.get("retry_waiting", 0) + progress.get("window_waiting", 0)
    parts = [
        f"in flight {progress['in_flight']}",
        f"dialing {progress['dialing']}",
        f"queued {progress['queued']}",
        f"waiting {waiting}",
    ]
    parts += [f"{outcome} {count}" for outcome, count in progress["outcomes"].items() if count]
    if progress.get("window_waiting") and progress.get("window_opens_at"):
        parts.append(f"calling window opens {_utc_minute(progress['window_opens_at'])} UTC")
    return " · ".join(parts)


def _utc_minute(moment: str) -> str:
    """An ISO 8601 time as `YYYY-MM-DD HH:MM`."""
    return moment[:16].replace("T", " ")


def _status_style(status: str) -> str:
    return {"completed": "green", "cancelled": "yellow", "failed": "bold red", "paused": "yellow"}.get(
        status, "cyan"
    )
