"""Runs started from a streamed lead list: CSV or JSON lines, read a chunk at a time."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from typing import Any

import pytest

from api import bodies
from service.errors import UploadUnreadable
from service.lead_files import Record, csv_records, json_lines_records
from service.leads import MAX_LISTED_PROBLEMS, LeadList
from support.drive import ALWAYS_OPEN, Business, new_number, wait_for
from support.stack import Stack

OPEN_AROUND_THE_CLOCK = json.dumps({"calling_window": ALWAYS_OPEN})


async def _in_chunks(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def _read(records: AsyncIterator[Record]) -> list[Record]:
    return [record async for record in records]


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 4096])
async def test_a_csv_split_anywhere_reads_the_same(chunk_size: int) -> None:
    body = (
        '\ufeffName,Phone,Notes\r\n"Zoë ""Z"" Ng",+14155550100,x\r\n'
        '"Ada,\nLovelace",+14155550101,\r\n\r\n'
        "Grace,+14155550102\n"
    ).encode()
    records = await _read(csv_records(_in_chunks(body, chunk_size)))
    assert [(r.line, r.fields) for r in records] == [
        (2, {"name": 'Zoë "Z" Ng', "phone": "+14155550100", "metadata": {"Notes": "x"}}),
        (3, {"name": "Ada,\nLovelace", "phone": "+14155550101"}),
        (6, {"name": "Grace", "phone": "+14155550102"}),
    ]


async def test_a_csv_that_cannot_be_a_lead_list_says_why() -> None:
    with pytest.raises(UploadUnreadable, match="no 'phone' column"):
        await _read(csv_records(_in_chunks(b"name,number\nAda,+14155550100\n", 5)))
    with pytest.raises(UploadUnreadable, match="line 2: a quoted field is never closed"):
        await _read(csv_records(_in_chunks(b'phone,name\n+14155550100,"Ada\n', 5)))
    with pytest.raises(UploadUnreadable, match="not UTF-8"):
        await _read(csv_records(_in_chunks(b"phone\n\xff\xfe\n", 5)))


async def test_json_lines_name_the_line_of_each_bad_record() -> None:
    body = b'{"phone": "+14155550100"}\n\n[1, 2]\n{"phone": \n{"phone": "+14155550101", "name": "Ada"}'
    records = await _read(json_lines_records(_in_chunks(body, 4)))
    assert [(r.line, r.fields, r.problem is not None) for r in records] == [
        (1, {"phone": "+14155550100"}, False),
        (3, None, True),
        (4, None, True),
        (5, {"phone": "+14155550101", "name": "Ada"}, False),
    ]
    assert "expected a JSON object" in (records[1].problem or "")


async def test_a_run_uploaded_as_csv_calls_every_lead_in_the_list(stack: Stack) -> None:
    business = await stack.create_business()
    phones = [new_number() for _ in range(4)]
    await stack.force_outcomes(dict.fromkeys(phones, "completed"))
    rows = "".join(f'"Lead, {i}",{phone},crm-{i}\r\n' for i, phone in enumerate(phones))

    async def body() -> AsyncIterator[bytes]:
        data = f"name,phone,crm_id\r\n{rows}".encode()
        for start in range(0, len(data), 10):
            yield data[start : start + 10]

    response = await stack.http.post(
        "/v1/runs/import",
        params={"name": "from csv", "options": OPEN_AROUND_THE_CLOCK},
        content=body(),
        headers={**business.headers, "Content-Type": "text/csv"},
    )
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]
    run = await stack.wait_run_ends(business, run_id)
    assert run["status"] == "completed" and run["name"] == "from csv"
    assert run["progress"]["total"] == 4 and run["progress"]["outcomes"]["answered"] == 4
    leads = await stack.leads(run_id)
    assert [(lead.phone, lead.name, lead.extra) for lead in leads] == [
        (p, f"Lead, {i}", {"crm_id": f"crm-{i}"}) for i, p in enumerate(phones)
    ]


async def test_a_bad_streamed_list_names_each_bad_line_and_nothing_starts(stack: Stack) -> None:
    business = await stack.create_business()
    good = new_number()
    lines = [
        json.dumps({"phone": good}),
        json.dumps({"phone": "4155550100"}),
        "not json",
        json.dumps({"phone": good}),
        json.dumps({"phone": new_number(), "timezone": "Mars/Olympus"}),
    ]
    response = await stack.http.post(
        "/v1/runs/import",
        params={"options": OPEN_AROUND_THE_CLOCK},
        content="\n".join(lines),
        headers={**business.headers, "Content-Type": "application/x-ndjson"},
    )
    assert response.status_code == 422
    errors = response.json()["detail"]
    assert [(e["loc"][2], e["type"]) for e in errors] == [
        (2, "invalid_phone"),
        (3, "unreadable_lead"),
        (4, "duplicate_phone"),
        (5, "value_error"),
    ]
    assert "also on line 1" in errors[2]["msg"] and "IANA time zone" in errors[3]["msg"]
    assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []
    assert await stack.sim_calls(business.caller_id) == []


async def test_the_import_refuses_what_it_cannot_read(stack: Stack) -> None:
    business = await stack.create_business()
    lead = f"phone\n{new_number()}\n"
    wrong_type = await stack.http.post(
        "/v1/runs/import", content=lead, headers={**business.headers, "Content-Type": "text/plain"}
    )
    assert wrong_type.status_code == 415 and "text/csv" in wrong_type.json()["detail"]
    bad_options = await stack.http.post(
        "/v1/runs/import",
        params={"options": json.dumps({"max_attempts": 99})},
        content=lead,
        headers={**business.headers, "Content-Type": "text/csv"},
    )
    assert bad_options.status_code == 422
    assert bad_options.json()["detail"][0]["loc"] == ["query", "options", "max_attempts"]
    empty = await stack.http.post(
        "/v1/runs/import", content="phone\n", headers={**business.headers, "Content-Type": "text/csv"}
    )
    assert empty.status_code == 422 and "no leads" in empty.json()["detail"]
    assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []


async def test_lines_may_end_in_a_lone_carriage_return_even_across_chunks() -> None:
    """As the csv module reads lines (the do-not-call import read them so before it streamed)."""
    body = b"phone,name\r+14155550100,Ada\r\n+14155550101,Grace\r+14155550102,Edsger\r"
    for size in (1, 2, 5, 64):
        records = await _read(csv_records(_in_chunks(body, size)))
        assert [(r.line, r.fields["phone"] if r.fields else None) for r in records] == [
            (2, "+14155550100"),
            (3, "+14155550101"),
            (4, "+14155550102"),
        ], size


async def test_json_lines_with_nan_or_deep_nesting_are_unreadable_leads_not_errors() -> None:
    """Found in review: NaN became a 500 (it cannot be echoed as JSON), deep nesting a RecursionError."""
    body = b'{"phone": NaN}\n' + b"[" * 60_000 + b"\n" + b'{"phone": "+14155550100"}\n'
    records = await _read(json_lines_records(_in_chunks(body, 4096)))
    assert [(r.line, r.fields is None) for r in records] == [(1, True), (2, True), (3, False)]
    assert "NaN is not a JSON number" in (records[0].problem or "")


class HeldWhileAnswering:
    """Holds the first call of what it patches until the API has answered another request. Were
    that call made on the API's event loop, no other request could be answered while it waits, and
    its wait would run out."""

    def __init__(self) -> None:
        self.began, self.answered = threading.Event(), threading.Event()
        self.waits: list[bool] = []

    def hold(self) -> None:
        if not self.waits:
            self.began.set()
            self.waits.append(self.answered.wait(timeout=10))

    async def another_request(self, stack: Stack, business: Business) -> int:
        """Once the held call has begun, another request's status; then the call goes on."""

        async def began() -> bool:
            return self.began.is_set()

        await wait_for(began, within=30, what="the held call to begin")
        other = await stack.http.get("/v1/runs", headers=business.headers)
        self.answered.set()
        return other.status_code


@pytest.mark.parametrize("how", ["csv", "json"])
async def test_other_requests_are_answered_while_a_list_is_checked(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """Checking a long list is seconds of CPU (a million numbers to parse and validate)."""
    held, real = HeldWhileAnswering(), LeadList.add

    def checking(self: LeadList, number: int, lead: Any) -> dict[str, Any] | None:
        held.hold()
        return real(self, number, lead)

    monkeypatch.setattr(LeadList, "add", checking)
    business = await stack.create_business()
    phones = [new_number() for _ in range(3)]
    if how == "csv":
        started = stack.http.post(
            "/v1/runs/import",
            content="phone\n" + "".join(f"{p}\n" for p in phones),
            headers={**business.headers, "Content-Type": "text/csv"},
        )
    else:
        started = stack.http.post("/v1/runs", json=_run_of(phones), headers=business.headers)
    upload = asyncio.create_task(started)
    assert await held.another_request(stack, business) == 200
    assert (await upload).status_code == 201
    assert held.waits == [True]


async def test_other_requests_are_answered_while_a_json_list_is_parsed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parsing and validating a JSON list of 100,000 leads is about a second of CPU."""
    held, real = HeldWhileAnswering(), bodies.from_json

    def parsing(data: Any, **options: Any) -> Any:
        held.hold()
        return real(data, **options)

    monkeypatch.setattr(bodies, "from_json", parsing)
    business = await stack.create_business()
    upload = asyncio.create_task(
        stack.http.post("/v1/runs", json=_run_of([new_number()]), headers=business.headers)
    )
    assert await held.another_request(stack, business) == 200
    assert (await upload).status_code == 201
    assert held.waits == [True]


def _run_of(phones: list[str]) -> dict[str, Any]:
    return {"leads": [{"phone": p} for p in phones], "options": {"calling_window": ALWAYS_OPEN}}


async def test_a_list_without_a_working_key_is_refused_before_it_is_parsed(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[int] = []
    real = bodies.from_json

    def parsing(data: Any, **options: Any) -> Any:
        parsed.append(len(data))
        return real(data, **options)

    monkeypatch.setattr(bodies, "from_json", parsing)
    refused = await stack.http.post(
        "/v1/runs", json={"leads": "not a list"}, headers={"Authorization": "Bearer obk_not-a-key"}
    )
    assert refused.status_code == 401, refused.text
    assert parsed == []


async def test_a_json_list_with_many_bad_leads_lists_the_first_hundred_and_counts_the_rest(
    stack: Stack,
) -> None:
    """Every bad field of every lead listed was tens of MB of answer, and seconds of the API's
    time, for a list a few MB long."""
    business = await stack.create_business()
    leads = [{"phone": 5, "k1": 0, "k2": 0} for _ in range(2_000)]  # three problems each
    refused = await stack.http.post("/v1/runs", json={"leads": leads}, headers=business.headers)
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert len(detail) == MAX_LISTED_PROBLEMS + 1
    assert detail[0]["loc"] == ["body", "leads", 0, "phone"]
    assert detail[-1]["type"] == "more_errors"
    assert detail[-1]["msg"] == f"{3 * 2_000 - MAX_LISTED_PROBLEMS} more errors not listed"


async def test_a_json_list_is_read_only_as_json(stack: Stack) -> None:
    business = await stack.create_business()
    sent = await stack.http.post(
        "/v1/runs",
        content=json.dumps(_run_of([new_number()])),
        headers={**business.headers, "Content-Type": "text/plain"},
    )
    assert sent.status_code == 415 and "application/json" in sent.text


@pytest.mark.parametrize(
    ("body", "where", "kind"),
    [
        (
            {"leads": [{"phone": "+14155550100"}], "options": {"max_attempts": 99}},
            ["options", "max_attempts"],
            None,
        ),
        ({"leads": 5}, ["leads"], None),
        (
            {"leads": [{"phone": "+14155550100", **{f"k{n}": 0 for n in range(100_000)}}]},
            ["leads", 0],
            "too_many_fields",
        ),
        (
            {"leads": [{"phone": "+14155550100"}], **{f"k{n}": 0 for n in range(100_000)}},
            [],
            "too_many_fields",
        ),
    ],
)
async def test_a_bad_body_is_refused_once_where_it_is_bad(
    stack: Stack, body: dict[str, Any], where: list[Any], kind: str | None
) -> None:
    """Each problem where it is, as FastAPI names one; an object of a hundred thousand fields no
    model has is one problem, not a hundred thousand held at once."""
    business = await stack.create_business()
    refused = await stack.http.post("/v1/runs", json=body, headers=business.headers)
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert [d["loc"] for d in detail] == [["body", *where]], detail
    assert kind is None or detail[0]["type"] == kind
