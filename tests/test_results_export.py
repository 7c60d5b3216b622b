"""Leads in with their own columns, results out as CSV: the run's calls.csv download."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

from contracts.statuses import FINAL_ATTEMPT_STATUSES
from support.drive import ALWAYS_OPEN, Business, new_number, wait_for
from support.stack import Stack
from tests.conftest import SimulatorKnobs

OPTIONS = json.dumps({"calling_window": ALWAYS_OPEN})
CALL_COLUMNS = [
    "lead_id",
    "phone",
    "name",
    "attempt",
    "status",
    "call_sid",
    "duration_seconds",
    "answered_by",
    "error_code",
    "error_message",
    "started_at",
    "ended_at",
    "outcome",
    "bridged_status",
    "bridged_seconds",
    "recording_sid",
    "recording_seconds",
    "recording_url",
    "lead_status",
]


def _csv(rows: list[list[str]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue()


async def _import(stack: Stack, business: Business, body: str, content_type: str) -> Any:
    return await stack.http.post(
        "/v1/runs/import",
        params={"options": OPTIONS},
        content=body,
        headers={**business.headers, "Content-Type": content_type},
    )


async def _export(stack: Stack, business: Business, run_id: str) -> tuple[list[str], list[dict[str, str]]]:
    response = await stack.http.get(f"/v1/runs/{run_id}/calls.csv", headers=business.headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == f'attachment; filename="run-{run_id}-calls.csv"'
    reader = csv.DictReader(io.StringIO(response.text))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


async def test_a_csv_upload_comes_back_with_its_outcomes_and_its_own_columns(stack: Stack) -> None:
    business = await stack.create_business()
    phones = [new_number() for _ in range(3)]
    played = dict(zip(phones, ["completed", "busy", "no-answer"], strict=True))
    await stack.force_outcomes(played)
    upload = _csv(
        [
            ["phone", "name", "crm_id", "status", "notes"],
            [phones[0], "Ada", "crm-1", "vip", '=HYPERLINK("http://evil.example","click")'],
            [phones[1], "=cmd|' /C calc'!A0", "crm-2", "", "@SUM(1+1)"],
            [phones[2], "-Grace", "crm-3", "lapsed", ""],
        ]
    )
    response = await _import(stack, business, upload, "text/csv")
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    assert (await stack.wait_run_ends(business, run_id))["status"] == "completed"

    columns, rows = await _export(stack, business, run_id)
    # A column named like one of the export's own keeps its values apart under another name.
    assert columns == [*CALL_COLUMNS, "crm_id", "metadata.status", "notes"]
    leads = await stack.leads(run_id)
    sids = {a.lead_id: a.call_sid for a in await stack.attempts(run_id)}
    assert [(r["lead_id"], r["phone"], r["attempt"], r["status"], r["call_sid"]) for r in rows] == [
        (str(lead.id), lead.phone, "1", played[lead.phone], sids[lead.id]) for lead in leads
    ]
    assert [r["lead_status"] for r in rows] == ["answered", "busy", "no_answer"]
    # Free text cannot run as a formula in a spreadsheet; a phone number's + is left alone.
    assert [r["name"] for r in rows] == ["Ada", "'=cmd|' /C calc'!A0", "'-Grace"]
    assert [(r["crm_id"], r["metadata.status"], r["notes"]) for r in rows] == [
        ("crm-1", "vip", '\'=HYPERLINK("http://evil.example","click")'),
        ("crm-2", "", "'@SUM(1+1)"),
        ("crm-3", "lapsed", ""),
    ]
    assert [lead.extra for lead in leads][1] == {"crm_id": "crm-2", "notes": "@SUM(1+1)"}
    for row in rows:
        started, ended = datetime.fromisoformat(row["started_at"]), datetime.fromisoformat(row["ended_at"])
        assert started.utcoffset() is not None and started <= ended
    assert rows[0]["duration_seconds"].isdigit()

    intruder = await stack.create_business()
    other = await stack.http.get(f"/v1/runs/{run_id}/calls.csv", headers=intruder.headers)
    assert other.status_code == 404 and other.headers["content-type"] == "application/json"
    assert (await stack.http.get(f"/v1/runs/{run_id}/calls.csv")).status_code == 401


async def test_a_cancelled_run_lists_every_lead_dialed_or_not(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    await sim_knobs(talk_seconds=(30, 30))  # the first call is still on when the cancel comes
    business = await stack.create_business(cap=1)
    phones = [new_number() for _ in range(4)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    lines = [
        {"phone": phones[0], "tier": "gold", "score": 5},
        {"phone": phones[1], "metadata": {"vip": True}},
        {"phone": phones[2], "name": "Lin", "tier": "silver"},
        {"phone": phones[3]},
    ]
    response = await _import(stack, business, "\n".join(map(json.dumps, lines)), "application/x-ndjson")
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]

    async def first_call_placed() -> bool:
        return len(await stack.sim_calls(business.caller_id)) == 1

    await wait_for(first_call_placed, within=30, what="the first call")
    cancel = await stack.http.post(f"/v1/runs/{run_id}/cancel", headers=business.headers)
    assert cancel.status_code == 202, cancel.text
    assert (await stack.wait_run_ends(business, run_id))["status"] == "cancelled"

    columns, rows = await _export(stack, business, run_id)
    assert columns == [*CALL_COLUMNS, "tier", "score", "vip"]
    assert [r["phone"] for r in rows] == phones
    dialed, *never_dialed = rows
    assert [c["to"] for c in await stack.sim_calls(business.caller_id)] == [phones[0]]
    assert dialed["attempt"] == "1" and dialed["status"] in FINAL_ATTEMPT_STATUSES
    assert dialed["call_sid"] and dialed["ended_at"] and dialed["lead_status"] in ("answered", "cancelled")
    for row in never_dialed:
        assert all(row[column] == "" for column in CALL_COLUMNS[3:12]), row
        assert row["lead_status"] == "cancelled"
    assert [(r["name"], r["tier"], r["score"], r["vip"]) for r in rows] == [
        ("", "gold", "5", ""),
        ("", "", "", "true"),
        ("Lin", "silver", "", ""),
        ("", "", "", ""),
    ]


async def test_metadata_past_its_limits_is_refused_naming_the_line(stack: Stack) -> None:
    business = await stack.create_business()
    longest = _csv(
        [
            ["phone", "note"],
            [new_number(), "x" * 1000],
            [new_number(), "x" * 1001],
        ]
    )
    response = await _import(stack, business, longest, "text/csv")
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "line", 3]
    assert error["msg"].startswith("line 3:") and "'note' is 1001 characters; at most 1000" in error["msg"]

    too_many = {"phone": new_number(), **{f"field_{i}": i for i in range(51)}}
    body = "\n".join([json.dumps({"phone": new_number(), "a": 1}), json.dumps(too_many)])
    response = await _import(stack, business, body, "application/x-ndjson")
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "line", 2] and "at most 50" in error["msg"]

    wide_header = _csv([["phone", "c" * 101], [new_number(), "x"]])
    response = await _import(stack, business, wide_header, "text/csv")
    assert response.status_code == 422
    assert response.json()["detail"].startswith("line 1:") and "at most 100" in response.json()["detail"]

    response = await stack.http.post(
        "/v1/runs",
        json={"leads": [{"phone": new_number(), "metadata": {"note": "x" * 1001}}]},
        headers=business.headers,
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "leads", 0, "metadata"]

    assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []
    assert await stack.sim_calls(business.caller_id) == []
