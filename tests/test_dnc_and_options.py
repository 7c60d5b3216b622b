"""Do-not-call lists and run options, through the API and a real run."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.app import create_app
from service import dnc
from support.drive import new_number, wait_for
from support.stack import Stack
from tests.conftest import SimulatorKnobs


async def test_dnc_added_mid_run_suppresses_leads_not_yet_dialed_only(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    await sim_knobs(ring_seconds=(1.0, 1.0))  # the second call rings while the list changes
    business = await stack.create_business(cap=1)
    first, second, third, fourth = (new_number() for _ in range(4))
    await stack.force_outcomes(dict.fromkeys([first, second, third, fourth], "completed"))
    run_id = await stack.start_run(business, [first, second, third, fourth])

    async def first_done() -> bool:
        return (await stack.run(business, run_id))["progress"]["done"] >= 1

    await wait_for(first_done, within=30, what="the first lead to finish")
    # The first lead is finished and the second is ringing; the third has not been dialed.
    response = await stack.http.post("/v1/dnc", json={"phones": [first, third]}, headers=business.headers)
    assert response.status_code == 201, response.text
    assert response.json() == {"added": 2, "total": 2}

    run = await stack.wait_run_ends(business, run_id)
    assert run["status"] == "completed"
    statuses = {lead.phone: lead.status for lead in await stack.leads(run_id)}
    assert statuses == {first: "answered", second: "answered", third: "skipped_dnc", fourth: "answered"}
    assert third not in {c["to"] for c in await stack.sim_calls(business.caller_id)}
    assert run["progress"]["outcomes"]["skipped_dnc"] == 1


async def test_the_dnc_list_is_kept_per_business_in_e164(stack: Stack) -> None:
    business, other = await stack.create_business(), await stack.create_business()
    number = new_number()
    spaced = f"{number[:2]} {number[2:5]} {number[5:8]} {number[8:]}"
    added = await stack.http.post("/v1/dnc", json={"phones": [spaced, number]}, headers=business.headers)
    assert added.json() == {"added": 1, "total": 1}
    csv_body = f"name,phone\nAda,{new_number()}\nBob,{number}\n"
    imported = await stack.http.post(
        "/v1/dnc/import", content=csv_body, headers={**business.headers, "Content-Type": "text/csv"}
    )
    assert imported.status_code == 201 and imported.json() == {"added": 1, "total": 2}
    bad = await stack.http.post("/v1/dnc/import", content="phone\n12345\n", headers=business.headers)
    assert bad.status_code == 422 and bad.json()["detail"][0]["msg"].startswith("line 2: ")

    listed = (await stack.http.get("/v1/dnc", headers=business.headers)).json()
    assert number in [entry["phone"] for entry in listed] and len(listed) == 2
    assert (await stack.http.get("/v1/dnc", headers=other.headers)).json() == []
    assert (await stack.http.delete(f"/v1/dnc/{number}", headers=other.headers)).status_code == 404
    assert (await stack.http.delete(f"/v1/dnc/{number}", headers=business.headers)).status_code == 204
    assert len((await stack.http.get("/v1/dnc", headers=business.headers)).json()) == 1


class _CommitRefused(AsyncSession):
    async def commit(self) -> None:
        raise OperationalError("COMMIT", None, ConnectionResetError("the database went away"))


async def test_a_write_the_database_did_not_commit_is_not_answered_as_done(stack: Stack) -> None:
    business = await stack.create_business()
    app = create_app(stack.settings, stack.temporal)
    app.state.settings = stack.settings
    app.state.temporal = stack.temporal
    app.state.sessions = async_sessionmaker(stack.engine, class_=_CommitRefused, expire_on_commit=False)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        response = await client.post("/v1/dnc", json={"phones": [new_number()]}, headers=business.headers)
    assert response.status_code == 500, response.text
    assert (await stack.http.get("/v1/dnc", headers=business.headers)).json() == []


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"retry_on": ["busy", "hung_up"]}, "unknown outcomes ['hung_up']"),
        ({"calling_window": {"start": "21:00", "end": "08:00"}}, "never opens"),
        ({"calling_window": {"days": []}}, "never opens"),
        ({"calling_window": {"start": "8am"}}, "string should match pattern"),
        ({"max_attempts": 11}, "less than or equal to 10"),
        ({"max_attempts": 0}, "greater than or equal to 1"),
        ({"retries": 3}, "extra inputs are not permitted"),
    ],
)
async def test_bad_run_options_are_refused_with_a_reason(stack: Stack, options: dict, complaint: str) -> None:
    business = await stack.create_business()
    response = await stack.http.post(
        "/v1/runs", json={"leads": [{"phone": new_number()}], "options": options}, headers=business.headers
    )
    assert response.status_code == 422
    assert complaint in response.text.lower()
    assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []


async def test_a_do_not_call_upload_of_many_bad_numbers_lists_the_first_hundred(stack: Stack) -> None:
    """Every bad number was listed (about 530 bytes each: a 20 MiB upload of bad lines was gigabytes
    of answer). Now a do-not-call upload is held to the lead lists' rules: the first hundred listed
    by line, the rest counted, nothing added."""
    business = await stack.create_business()
    body = "phone\n" + f"{new_number()}\n" + "not a number\n" * 300
    response = await stack.http.post(
        "/v1/dnc/import", content=body, headers={**business.headers, "Content-Type": "text/csv"}
    )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert len(detail) == 101 and detail[0]["loc"] == ["body", "line", 3]
    assert detail[-1]["msg"] == "200 more errors not listed"
    assert (await stack.http.get("/v1/dnc", headers=business.headers)).json() == []


async def test_numbers_are_checked_off_the_event_loop(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    """Checking a long list is seconds of CPU: done on the event loop it would hold up every
    business's requests and Twilio's callbacks, so it runs in a thread of its own."""
    checked_on: list[bool] = []
    real = dnc.phones_in_e164

    def recording(*args: Any) -> list[str]:
        checked_on.append(threading.current_thread() is threading.main_thread())
        return real(*args)

    monkeypatch.setattr(dnc, "phones_in_e164", recording)
    business = await stack.create_business()
    upload = await stack.http.post(
        "/v1/dnc/import",
        content="phone\n+14155550111\n",
        headers={**business.headers, "Content-Type": "text/csv"},
    )
    listed = await stack.http.post("/v1/dnc", json={"phones": ["+14155550112"]}, headers=business.headers)
    assert upload.status_code == 201 and listed.status_code == 201, (upload.text, listed.text)
    assert checked_on == [False, False]
