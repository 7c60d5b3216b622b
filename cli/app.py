"""The `outbound` command: create businesses, rotate or replace their API keys; start, watch, pause,
resume, cancel and export runs; send a business's events to its webhook."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
from rich.console import Console
from rich.text import Text

from cli.client import UPLOAD_TIMEOUT, Api, ApiError
from cli.codec import codec_app
from cli.render import events_table, run_summary, runs_table, show_error
from cli.watch import follow
from contracts.statuses import RunStatus

DEFAULT_API_URL = "http://127.0.0.1:8000"
JSON_LINES_SUFFIXES = (".jsonl", ".ndjson")
_STORE_THE_KEY = "Store the new key now: it is not shown again. Commands read it from OUTBOUND_API_KEY."

app = typer.Typer(
    name="outbound",
    help="Outbound call campaigns over the dialer's HTTP API.",
    no_args_is_help=True,
    # A traceback's locals would show the API key and the admin token.
    pretty_exceptions_show_locals=False,
)
business_app = typer.Typer(
    help="Businesses: made, and their keys replaced, with the admin token; a business rotates its own key.",
    no_args_is_help=True,
)
run_app = typer.Typer(help="Runs: with the business's API key.", no_args_is_help=True)
app.add_typer(business_app, name="business")
webhook_app = typer.Typer(
    help="The business's webhook: call.completed and run.completed events, signed.", no_args_is_help=True
)
answer_app = typer.Typer(
    help="What the business's answered calls do: a message said or an audio file played.",
    no_args_is_help=True,
)
app.add_typer(run_app, name="run")
app.add_typer(webhook_app, name="webhook")
app.add_typer(answer_app, name="answer")
app.add_typer(codec_app, name="codec")


@dataclass(frozen=True)
class Connection:
    """Where the API is, and the credentials given (either may be missing)."""

    api_url: str
    api_key: str | None
    admin_token: str | None


@app.callback()
def configure(
    ctx: typer.Context,
    api_url: Annotated[
        str, typer.Option(envvar="OUTBOUND_API_URL", help="The API's base URL.")
    ] = DEFAULT_API_URL,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="OUTBOUND_API_KEY", help="The business's API key.", show_default=False),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            envvar="OUTBOUND_ADMIN_TOKEN",
            help="The API's admin token; only `business create` and `business replace-keys` need it.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Outbound call campaigns over the dialer's HTTP API."""
    ctx.obj = Connection(api_url, api_key, admin_token)


def _stderr() -> Console:
    return Console(stderr=True)


@contextmanager
def _api(ctx: typer.Context, *, admin: bool = False) -> Iterator[Api]:
    """The API with the credential a command needs; an API error is shown and exits 1."""
    connection: Connection = ctx.obj
    token = connection.admin_token if admin else connection.api_key
    if not token:
        missing = (
            "no admin token: set OUTBOUND_ADMIN_TOKEN or pass --admin-token"
            if admin
            else "no API key: set OUTBOUND_API_KEY or pass --api-key"
        )
        show_error(_stderr(), missing)
        raise typer.Exit(1)
    try:
        with Api(connection.api_url, token) as api:
            yield api
    except ApiError as error:
        show_error(_stderr(), str(error), error.problems)
        raise typer.Exit(1) from None


def _run_path(run_id: str, *rest: str) -> str:
    return "/".join(["/v1/runs", quote(run_id, safe=""), *rest])


# Businesses


@business_app.command("create")
def create_business(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The business's name.")],
    caller_id: Annotated[
        str, typer.Option("--caller-id", help="The Twilio number its calls come from, E.164: +14155550199.")
    ],
    cap: Annotated[int, typer.Option(help="Calls in flight at once at most, across all its runs.")] = 3,
    timezone: Annotated[
        str | None,
        typer.Option(help="IANA time zone (America/New_York) for leads whose number does not tell theirs."),
    ] = None,
) -> None:
    """Create a business; its API key is shown this once."""
    body: dict[str, Any] = {"name": name, "caller_id": caller_id, "max_concurrent_calls": cap}
    if timezone is not None:
        body["timezone"] = timezone
    with _api(ctx, admin=True) as api:
        business = api.call("POST", "/v1/businesses", json=body)
    out = Console()
    out.print(Text.assemble("Created business ", (business["name"], "bold"), "."))
    for label, value in [
        ("id", business["id"]),
        ("caller ID", business["caller_id"]),
        ("line cap", str(business["max_concurrent_calls"])),
        ("API key", business["api_key"]),
    ]:
        # Never wrapped: the key must copy in one piece.
        out.print(Text(f"{label + ':':<11}{value}"), soft_wrap=True)
    out.print(
        Text(
            "Store the API key now: it is not shown again (the API keeps only its hash). "
            "Commands read it from OUTBOUND_API_KEY.",
            style="yellow",
        )
    )


@business_app.command("rotate-key")
def rotate_key(
    ctx: typer.Context,
    overlap_seconds: Annotated[
        int | None,
        typer.Option(
            "--overlap-seconds",
            metavar="SECONDS",
            help="How long the keys before the new one keep working (the API's default: an hour, at "
            "most a week); 0 stops them, and every dashboard session, at once.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Make a new API key for the business (with its newest key); the new key is printed alone.

    The keys before it keep working for the overlap, then stop. A business has at most five working
    keys: past that, a rotation stops the oldest at once."""
    body = {} if overlap_seconds is None else {"overlap_seconds": overlap_seconds}
    with _api(ctx) as api:
        issued = api.call("POST", "/v1/businesses/me/api-key", json=body)
    _print_key(issued["api_key"])
    if overlap_seconds == 0 or not issued["previous_keys_end_at"]:
        ended = "The keys before it have stopped working, and the business's dashboard sessions have ended."
    else:
        ended = (
            f"The keys before it keep working until {_utc_second(issued['previous_keys_end_at'])}, "
            "then stop (with the dashboard sessions opened with them): move to the new key before then."
        )
    _stderr().print(Text(ended), soft_wrap=True)
    _stderr().print(Text(_STORE_THE_KEY, style="yellow"), soft_wrap=True)


@business_app.command("replace-keys")
def replace_keys(
    ctx: typer.Context, business_id: Annotated[str, typer.Argument(help="The business's id.")]
) -> None:
    """Replace every key of a business at once (a leaked key); the new key is printed alone.

    Every earlier key stops now and the business's dashboard sessions end. Needs the admin token."""
    if business_id == "me":
        raise typer.BadParameter(
            "name the business by its id (a business rotates its own key with rotate-key)"
        )
    with _api(ctx, admin=True) as api:
        issued = api.call("POST", f"/v1/businesses/{quote(business_id, safe='')}/api-key")
    _print_key(issued["api_key"])
    _stderr().print(
        Text(
            f"Business {business_id}: every earlier API key has stopped working and every dashboard "
            "session has ended."
        ),
        soft_wrap=True,
    )
    _stderr().print(Text(_STORE_THE_KEY, style="yellow"), soft_wrap=True)


def _print_key(api_key: str) -> None:
    """The key alone on standard output, never wrapped, so `$(outbound business ...)` captures it."""
    Console(highlight=False).print(Text(api_key), soft_wrap=True)


def _utc_second(moment: str) -> str:
    """An ISO 8601 time as `YYYY-MM-DD HH:MM:SS UTC`."""
    return datetime.fromisoformat(moment).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# Runs


def _run_options(pairs: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--option")
        try:
            options[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            options[key.strip()] = raw
    return options


@run_app.command("start")
def start_run(
    ctx: typer.Context,
    leads: Annotated[
        Path,
        typer.Argument(
            exists=True,
            dir_okay=False,
            readable=True,
            help="The leads: CSV with a header row naming a phone column (name and timezone are read "
            "too), or JSON lines when the file ends in .jsonl or .ndjson.",
        ),
    ],
    name: Annotated[str | None, typer.Option(help="The run's name.")] = None,
    option: Annotated[
        list[str] | None,
        typer.Option(
            "--option",
            metavar="KEY=VALUE",
            help="A run option as key=value, its value read as JSON when it is JSON: "
            'max_attempts=2, calling_window=\'{"start": "09:00", "end": "17:00"}\'. Repeat for more.',
        ),
    ] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Follow the run live until it ends.")] = False,
) -> None:
    """Start a run from a lead file; prints the run's id.

    The file is streamed to the API. A bad list starts nothing, and each bad line is shown."""
    params: dict[str, str] = {}
    if name is not None:
        params["name"] = name
    options = _run_options(option or [])
    if options:
        params["options"] = json.dumps(options)
    media_type = "application/x-ndjson" if leads.suffix.lower() in JSON_LINES_SUFFIXES else "text/csv"
    with _api(ctx) as api:
        with leads.open("rb") as body:
            run = api.call(
                "POST",
                "/v1/runs/import",
                params=params,
                content=body,
                headers={"Content-Type": media_type},
                timeout=UPLOAD_TIMEOUT,
            )
        Console(highlight=False).print(run["id"])
        if watch:
            _follow(api, run["id"])
        else:
            _stderr().print(Text(f"Started. Follow it with: outbound run watch {run['id']}", style="dim"))


@run_app.command("watch")
def watch_run(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="The run's id.")]) -> None:
    """Follow a run with a live progress bar until it ends.

    Then its outcomes are shown. Exits 1 if the run failed."""
    with _api(ctx) as api:
        _follow(api, run_id)


def _follow(api: Api, run_id: str) -> None:
    out = Console()
    try:
        run = follow(lambda: api.call("GET", _run_path(run_id)), out)
    except KeyboardInterrupt:
        _stderr().print(f"Stopped watching; run {run_id} goes on.")
        raise typer.Exit(130) from None
    out.print(run_summary(run))
    if run["status"] == RunStatus.FAILED:
        raise typer.Exit(1)


@run_app.command("list")
def list_runs(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
) -> None:
    """The business's runs, newest first."""
    with _api(ctx) as api:
        runs = api.call("GET", "/v1/runs", params={"limit": limit})
    if runs:
        Console().print(runs_table(runs))
    else:
        _stderr().print("No runs yet.")


def _signal(ctx: typer.Context, run_id: str, action: str) -> None:
    with _api(ctx) as api:
        accepted = api.call("POST", _run_path(run_id, action))
    Console(highlight=False).print(Text(f"Run {accepted['id']}: {accepted['detail']}."))


@run_app.command("cancel")
def cancel_run(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="The run's id.")]) -> None:
    """Stop dialing now and hang up the calls in flight; the run ends cancelled."""
    _signal(ctx, run_id, "cancel")


@run_app.command("pause")
def pause_run(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="The run's id.")]) -> None:
    """Dial nothing new; calls in flight finish."""
    _signal(ctx, run_id, "pause")


@run_app.command("resume")
def resume_run(ctx: typer.Context, run_id: Annotated[str, typer.Argument(help="The run's id.")]) -> None:
    """Dial again after a pause."""
    _signal(ctx, run_id, "resume")


@run_app.command("export")
def export_run(
    ctx: typer.Context,
    run_id: Annotated[str, typer.Argument(help="The run's id.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", dir_okay=False, help="Write the CSV to this file, not to standard output."
        ),
    ] = None,
) -> None:
    """Every call attempt of the run as CSV, streamed as the API sends it."""
    with _api(ctx) as api, api.stream("GET", _run_path(run_id, "calls.csv")) as response:
        if output is None:
            sys.stdout.flush()
            for chunk in response.iter_bytes():
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return
        # Written beside the target and moved into place when complete: no half file on failure.
        partial = output.with_name(output.name + ".part")
        try:
            with partial.open("wb") as file:
                for chunk in response.iter_bytes():
                    file.write(chunk)
            partial.replace(output)
        except OSError as error:
            partial.unlink(missing_ok=True)
            show_error(_stderr(), f"cannot write {output}: {error.strerror or error}")
            raise typer.Exit(1) from None
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    _stderr().print(Text(f"Wrote the calls of run {run_id} to {output}."))


# The webhook


@webhook_app.command("set")
def set_webhook(
    ctx: typer.Context,
    url: Annotated[str, typer.Argument(help="Where events are POSTed: https://crm.example.com/hooks.")],
    rotate_secret: Annotated[
        bool, typer.Option("--rotate-secret", help="Make a new signing secret; the old one stops at once.")
    ] = False,
) -> None:
    """Send the business's events to URL; its signing secret is shown when it is made."""
    with _api(ctx) as api:
        webhook = api.call(
            "PUT", "/v1/businesses/me/webhook", json={"url": url, "rotate_secret": rotate_secret}
        )
    out = Console(highlight=False)
    out.print(Text(f"Events ({', '.join(webhook['events'])}) go to {webhook['url']}."), soft_wrap=True)
    if webhook["signing_secret"]:
        out.print(Text(f"Signing secret: {webhook['signing_secret']}"), soft_wrap=True)
        out.print(
            Text(
                "Store the secret now: it is not shown again. Verify each delivery with a Standard "
                "Webhooks library (headers webhook-id, webhook-timestamp, webhook-signature).",
                style="yellow",
            )
        )


@webhook_app.command("remove")
def remove_webhook(ctx: typer.Context) -> None:
    """Stop sending events; those not yet delivered are dropped."""
    with _api(ctx) as api:
        api.call("DELETE", "/v1/businesses/me/webhook")
    Console().print("Webhook removed: no more events are sent.")


@webhook_app.command("events")
def list_events(
    ctx: typer.Context,
    status: Annotated[
        str | None, typer.Option(help="Only events in this state: pending, delivered or failed.")
    ] = None,
    run: Annotated[str | None, typer.Option(help="Only this run's events.")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
) -> None:
    """The business's events, newest first, with how their delivery went."""
    params: dict[str, Any] = {"limit": limit}
    if status is not None:
        params["status"] = status
    if run is not None:
        params["run_id"] = run
    with _api(ctx) as api:
        events = api.call("GET", "/v1/businesses/me/events", params=params)
    if events:
        Console().print(events_table(events))
    else:
        _stderr().print("No events.")


@answer_app.command("show")
def show_answer(ctx: typer.Context) -> None:
    """What the business's answered calls do, unless a run says otherwise."""
    with _api(ctx) as api:
        answer = api.call("GET", "/v1/businesses/me/answer")
    Console(highlight=False).print(Text(_described(answer)), soft_wrap=True)


@answer_app.command("set")
def set_answer(
    ctx: typer.Context,
    say: Annotated[
        str | None,
        typer.Option(help="Text said to whoever answers; {name} and {metadata.<field>} are the lead's."),
    ] = None,
    play: Annotated[str | None, typer.Option(help="An https URL of audio to play instead.")] = None,
    voice: Annotated[
        str | None, typer.Option(help="The voice the text is said in, e.g. Polly.Joanna.")
    ] = None,
    language: Annotated[str | None, typer.Option(help="The text's language, e.g. en-US.")] = None,
    on_machine: Annotated[
        str | None,
        typer.Option(
            help="When an answering machine picks up: continue, hang_up, or voicemail (leave "
            "--voicemail-say or --voicemail-play after its beep)."
        ),
    ] = None,
    voicemail_say: Annotated[
        str | None, typer.Option(help="Text left on a machine; {name} and {metadata.<field>} are the lead's.")
    ] = None,
    voicemail_play: Annotated[
        str | None, typer.Option(help="An https URL of audio left on a machine instead.")
    ] = None,
) -> None:
    """Choose what the business's answered calls do from now on (runs under way keep theirs)."""
    body: dict[str, Any] = {"kind": "message", "say": say, "play": play, "voice": voice, "language": language}
    body["on_machine"] = on_machine
    if voicemail_say is not None or voicemail_play is not None:
        body["voicemail"] = {
            k: v for k, v in (("say", voicemail_say), ("play", voicemail_play)) if v is not None
        }
    with _api(ctx) as api:
        answer = api.call(
            "PUT", "/v1/businesses/me/answer", json={k: v for k, v in body.items() if v is not None}
        )
    Console(highlight=False).print(Text(f"From now on: {_described(answer)}"), soft_wrap=True)


@answer_app.command("test")
def test_call(
    ctx: typer.Context,
    phone: Annotated[str, typer.Argument(help="Your own number, E.164: +14155550100.")],
    watch: Annotated[bool, typer.Option("--watch", help="Follow the call until it ends.")] = False,
) -> None:
    """Call PHONE once with the business's answer, to hear it (under the line cap and the
    do-not-call list, at any hour)."""
    with _api(ctx) as api:
        run = api.call("POST", "/v1/businesses/me/test-call", json={"phone": phone})
        Console(highlight=False).print(
            Text(f"Calling {phone}: run {run['id']} (outbound run watch {run['id']})"), soft_wrap=True
        )
        if watch:
            _follow(api, run["id"])


def _described(answer: dict[str, Any]) -> str:
    kind = answer.get("kind", "message")
    if kind == "connect":
        said = f"answered calls are put through to {answer['number']}"
    elif kind == "voice_agent":
        said = f"answered calls are streamed to the voice agent at {answer['url']}"
    elif kind == "voice_app":
        said = f"answered calls run the voice app at {answer['url']}"
    else:
        said = _message(answer, "answered calls")
    on_machine = answer.get("on_machine")
    if on_machine == "voicemail":
        voicemail = answer["voicemail"]
        left = f"the audio at {voicemail['play']}" if voicemail.get("play") else repr(voicemail.get("say"))
        return f"{said}; machines are left {left} after the beep"
    if on_machine == "hang_up":
        return f"{said}; calls a machine answers are ended"
    if on_machine == "continue":
        return f"{said}; machines are told apart from people"
    return said


def _message(message: dict[str, Any], who: str) -> str:
    if message.get("play"):
        return f"{who} play {message['play']}"
    how = ", ".join(f"{key} {message[key]}" for key in ("voice", "language") if message.get(key))
    return f"{who} hear: {message.get('say')!r}" + (f" ({how})" if how else "")


def main() -> None:
    """The `outbound` console script."""
    app(prog_name="outbound")
