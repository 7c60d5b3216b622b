"""The `outbound` command against the real stack. The API it calls is served in the test's event
loop, so the command runs on a thread."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

from typer.testing import CliRunner, Result

from cli.app import app
from outbound_dialer.settings import DEV_ADMIN_TOKEN
from support.drive import ALWAYS_OPEN, new_number, wait_for
from support.ports import free_port
from support.stack import Stack, signed_in

OPEN_AROUND_THE_CLOCK = f"calling_window={json.dumps(ALWAYS_OPEN)}"


async def outbound(stack: Stack, *args: str, api_key: str | None = None, admin: bool = False) -> Result:
    """Run `outbound ARGS` against the stack's API with only the credentials given."""
    env = {
        "OUTBOUND_API_URL": stack.settings.PUBLIC_BASE_URL,
        "OUTBOUND_API_KEY": api_key,
        "OUTBOUND_ADMIN_TOKEN": DEV_ADMIN_TOKEN if admin else None,
        "COLUMNS": "200",
    }
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


async def works(stack: Stack, key: str) -> bool:
    """Whether the API takes `key` (a key it refuses is answered 401)."""
    me = await stack.http.get("/v1/businesses/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code in (200, 401), me.text
    return me.status_code == 200


def printed_key(result: Result) -> str:
    """The new API key: the one thing a key command writes to standard output."""
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("obk_"), result.stdout
    return lines[0]


def lead_file(folder: Path, phones: list[str]) -> Path:
    path = folder / "leads.csv"
    path.write_text("name,phone\n" + "".join(f"Lead {i},{phone}\n" for i, phone in enumerate(phones)))
    return path


async def test_business_create_prints_an_api_key_that_works(stack: Stack) -> None:
    caller_id = new_number()
    result = await outbound(
        stack,
        *("business", "create", "Acme Roofing", "--caller-id", caller_id),
        *("--cap", "2", "--timezone", "America/Chicago"),
        admin=True,
    )
    assert result.exit_code == 0, result.output
    assert "not shown again" in result.output
    match = re.search(r"API key:\s+(\S+)", result.output)
    assert match, result.output
    key = match.group(1)

    me = await stack.http.get("/v1/businesses/me", headers={"Authorization": f"Bearer {key}"})
    assert me.status_code == 200, me.text
    assert me.json()["caller_id"] == caller_id
    assert (me.json()["max_concurrent_calls"], me.json()["timezone"]) == (2, "America/Chicago")
    listed = await outbound(stack, "run", "list", api_key=key)
    assert (listed.exit_code, listed.output.strip()) == (0, "No runs yet.")

    without_token = await outbound(stack, "business", "create", "Acme", "--caller-id", new_number())
    assert without_token.exit_code == 1
    assert "no admin token" in without_token.output


async def test_a_run_started_from_a_csv_is_watched_until_it_completes(stack: Stack, tmp_path: Path) -> None:
    business = await stack.create_business()
    phones = [new_number() for _ in range(3)]
    await stack.force_outcomes({phones[0]: "completed", phones[1]: "busy", phones[2]: "completed"})

    result = await outbound(
        stack,
        *("run", "start", str(lead_file(tmp_path, phones)), "--name", "from the cli"),
        *("--option", OPEN_AROUND_THE_CLOCK, "--option", "max_attempts=1", "--watch"),
        api_key=business.api_key,
    )
    assert result.exit_code == 0, result.output
    run_id = result.stdout.splitlines()[0]
    run = await stack.run(business, run_id)
    assert (run["name"], run["status"]) == ("from the cli", "completed")
    assert "3/3" in result.output  # the progress bar, as it last stood
    assert f"Run {run_id} completed: 3 of 3 leads done" in result.output
    assert re.search(r"answered\W+2\b", result.output), result.output
    assert re.search(r"busy\W+1\b", result.output), result.output


async def test_a_running_run_is_paused_resumed_and_cancelled(stack: Stack, tmp_path: Path) -> None:
    business = await stack.create_business(cap=1)
    phones = [new_number() for _ in range(20)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    started = await outbound(
        stack,
        *("run", "start", str(lead_file(tmp_path, phones)), "--option", OPEN_AROUND_THE_CLOCK),
        api_key=business.api_key,
    )
    assert started.exit_code == 0, started.output
    run_id = started.stdout.strip()

    listed = await outbound(stack, "run", "list", api_key=business.api_key)
    assert re.search(rf"{run_id}\W+running", listed.output), listed.output
    for action in ("pause", "resume", "cancel"):
        result = await outbound(stack, "run", action, run_id, api_key=business.api_key)
        assert result.exit_code == 0, result.output
        assert f"{action} accepted" in result.output

    watched = await outbound(stack, "run", "watch", run_id, api_key=business.api_key)
    assert watched.exit_code == 0, watched.output
    run = await stack.run(business, run_id)
    assert run["status"] == "cancelled"
    assert run["progress"]["outcomes"]["cancelled"] > 0
    assert f"Run {run_id} cancelled: 20 of 20 leads done" in watched.output

    again = await outbound(stack, "run", "cancel", run_id, api_key=business.api_key)
    assert again.exit_code == 1
    assert f"run {run_id} is already cancelled (409)" in again.output


async def test_errors_print_the_apis_message_and_exit_1(stack: Stack, tmp_path: Path) -> None:
    business = await stack.create_business()
    wrong_key = await outbound(stack, "run", "list", api_key="obk_not-a-key")
    assert wrong_key.exit_code == 1
    assert "invalid API key (or one that was revoked or has expired) (401)" in wrong_key.output
    assert "obk_not-a-key" not in wrong_key.output

    leads = tmp_path / "bad.csv"
    leads.write_text(f"phone,name\n{new_number()},Ada\n4155550100,Grace\n")
    bad_list = await outbound(stack, "run", "start", str(leads), api_key=business.api_key)
    assert bad_list.exit_code == 1
    assert re.search(r"line 3\W+'4155550100' has no country code", bad_list.output), bad_list.output
    assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []

    unknown = await outbound(stack, "run", "watch", "no-such-run", api_key=business.api_key)
    assert unknown.exit_code == 1
    assert "run no-such-run not found (404)" in unknown.output


def test_an_api_that_cannot_be_reached_is_named() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(app, ["--api-url", url, "run", "list"], env={"OUTBOUND_API_KEY": "obk_x"})
    assert result.exit_code == 1
    assert f"could not reach the API at {url}" in result.output


async def test_export_writes_the_runs_calls_as_csv(stack: Stack, tmp_path: Path) -> None:
    business = await stack.create_business()
    phones = [new_number() for _ in range(2)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    run_id = await stack.start_run(business, phones)
    await stack.wait_run_ends(business, run_id)

    target = tmp_path / "calls.csv"
    to_file = await outbound(stack, "run", "export", run_id, "-o", str(target), api_key=business.api_key)
    assert to_file.exit_code == 0, to_file.output
    written = target.read_text()
    assert all(phone in written for phone in phones)
    to_stdout = await outbound(stack, "run", "export", run_id, api_key=business.api_key)
    assert to_stdout.exit_code == 0
    assert to_stdout.stdout == written

    missing = tmp_path / "missing.csv"
    unknown = await outbound(
        stack, "run", "export", "no-such-run", "-o", str(missing), api_key=business.api_key
    )
    assert unknown.exit_code == 1
    assert "not found (404)" in unknown.output
    assert not missing.exists()


async def test_a_webhook_is_set_its_events_listed_and_removed(stack: Stack, tmp_path: Path) -> None:
    business = await stack.create_business()
    port = free_port()
    # Nobody listens on the port: the events are tried, fail, and wait for their retry.
    set_ = await outbound(stack, "webhook", "set", f"http://127.0.0.1:{port}/hooks", api_key=business.api_key)
    assert set_.exit_code == 0, set_.output
    secret = re.search(r"Signing secret: (whsec_\S+)", set_.output)
    assert secret, set_.output
    phone = new_number()
    await stack.force_outcomes({phone: "completed"})
    run_id = await stack.start_run(business, [phone])
    await stack.wait_run_ends(business, run_id)

    async def both_tried() -> str | None:
        listed = await outbound(stack, "webhook", "events", "--run", run_id, api_key=business.api_key)
        tried = listed.output.count("ConnectError reaching 127.0.0.1")
        return listed.output if tried == 2 else None

    output = await wait_for(both_tried, within=30, what="both events tried")
    assert "call.completed" in output and "run.completed" in output and "pending" in output
    assert secret.group(1) not in output

    removed = await outbound(stack, "webhook", "remove", api_key=business.api_key)
    assert removed.exit_code == 0, removed.output
    dropped = await outbound(stack, "webhook", "events", "--status", "failed", api_key=business.api_key)
    assert dropped.output.count("the webhook was removed") == 2, dropped.output
    again = await outbound(stack, "webhook", "set", "ftp://crm.example.com", api_key=business.api_key)
    assert again.exit_code == 1 and "URL scheme should be 'http' or 'https'" in again.output


async def test_a_businesss_answer_is_shown_and_set(stack: Stack) -> None:
    business = await stack.create_business()
    shown = await outbound(stack, "answer", "show", api_key=business.api_key)
    assert shown.exit_code == 0 and "outbound campaign" in shown.output, shown.output
    set_ = await outbound(
        stack, "answer", "set", "--say", "Hello {name}", "--voice", "alice", api_key=business.api_key
    )
    assert set_.exit_code == 0 and "'Hello {name}' (voice alice)" in set_.output, set_.output
    again = await outbound(stack, "answer", "show", api_key=business.api_key)
    assert "'Hello {name}'" in again.output
    bad = await outbound(stack, "answer", "set", "--say", "Hello {nmae}", api_key=business.api_key)
    assert bad.exit_code == 1 and "{name} or {metadata.<field>}" in bad.output, bad.output
    machines = await outbound(
        stack,
        "answer",
        "set",
        "--say",
        "Hello",
        "--on-machine",
        "voicemail",
        "--voicemail-say",
        "Call us back, {name}",
        api_key=business.api_key,
    )
    assert "machines are left 'Call us back, {name}' after the beep" in machines.output, machines.output
    half = await outbound(
        stack, "answer", "set", "--say", "Hi", "--on-machine", "voicemail", api_key=business.api_key
    )
    assert half.exit_code == 1 and "give both or neither" in half.output, half.output


async def test_a_test_call_is_placed_and_followed(stack: Stack) -> None:
    business = await stack.create_business()
    phone = new_number()
    await stack.force_outcomes({phone: "completed"})
    called = await outbound(stack, "answer", "test", phone, "--watch", api_key=business.api_key)
    assert called.exit_code == 0 and f"Calling {phone}: run " in called.output, called.output
    assert [c["to"] for c in await stack.sim_calls(business.caller_id)] == [phone]


async def test_a_business_rotates_its_key_and_the_old_one_works_for_the_overlap(stack: Stack) -> None:
    business = await stack.create_business()
    rotated = await outbound(stack, "business", "rotate-key", api_key=business.api_key)
    second = printed_key(rotated)
    assert re.search(r"keep working until \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", rotated.stderr), rotated.stderr
    assert await works(stack, second) and await works(stack, business.api_key)

    # The old key, in its overlap, may be the one that leaked: it cannot make keys.
    by_old = await outbound(stack, "business", "rotate-key", api_key=business.api_key)
    assert by_old.exit_code == 1 and by_old.stdout == ""
    assert "only the business's newest API key can make a new one (403)" in by_old.output

    negative = await outbound(stack, "business", "rotate-key", "--overlap-seconds", "-5", api_key=second)
    assert negative.exit_code == 1 and negative.stdout == ""
    assert re.search(r"overlap_seconds\W+Input should be greater than or equal to 0", negative.output)
    assert await works(stack, second) and await works(stack, business.api_key)  # nothing changed

    at_once = await outbound(stack, "business", "rotate-key", "--overlap-seconds", "0", api_key=second)
    third = printed_key(at_once)
    assert "have stopped working" in at_once.stderr, at_once.stderr
    assert not await works(stack, business.api_key)
    assert not await works(stack, second)
    assert await works(stack, third)


async def test_rotate_key_with_a_key_the_api_refuses_prints_its_message_and_exits_1(stack: Stack) -> None:
    wrong = await outbound(stack, "business", "rotate-key", api_key="obk_not-a-key")
    assert wrong.exit_code == 1 and wrong.stdout == ""
    assert "invalid API key (or one that was revoked or has expired) (401)" in wrong.output
    without = await outbound(stack, "business", "rotate-key")
    assert without.exit_code == 1 and "no API key" in without.output


async def test_an_operator_replaces_every_key_of_a_business(stack: Stack) -> None:
    business = await stack.create_business()
    async with signed_in(stack, business) as (browser, _token):
        replaced = await outbound(stack, "business", "replace-keys", business.id, admin=True)
        after = await browser.get("/ui/runs")
    new_key = printed_key(replaced)
    assert "every earlier API key" in replaced.stderr and "dashboard session" in replaced.stderr
    assert after.status_code == 303 and after.headers["location"].startswith("/ui/login")
    assert not await works(stack, business.api_key)
    assert await works(stack, new_key)

    unknown = await outbound(stack, "business", "replace-keys", "no-such-business", admin=True)
    assert unknown.exit_code == 1 and "no such business (404)" in unknown.output
    without_token = await outbound(stack, "business", "replace-keys", business.id, api_key=new_key)
    assert without_token.exit_code == 1 and "no admin token" in without_token.output
    assert await works(stack, new_key)
