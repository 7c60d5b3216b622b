"""Request bodies past their limit are refused with 413, naming the limit, and change nothing; lists
of leads or numbers may be much larger than other requests. The limits are set small here
(`MAX_REQUEST_BYTES`, `MAX_UPLOAD_BYTES`), so the edges are cheap to reach."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import pytest
from sqlalchemy import func, select

from db.models import Business as BusinessRow
from db.models import Lead, Run
from outbound_dialer.settings import DEV_ADMIN_TOKEN, Settings
from support.drive import ALWAYS_OPEN, Business, new_number
from support.stack import Stack, signed_in

REQUEST_LIMIT = 4 * 1024
UPLOAD_LIMIT = 256 * 1024
ADMIN = {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}", "Content-Type": "application/json"}
OPEN_AROUND_THE_CLOCK = json.dumps({"calling_window": ALWAYS_OPEN})


@pytest.fixture
async def stack(
    monkeypatch: pytest.MonkeyPatch,
    stack_on: Callable[..., AbstractAsyncContextManager[Stack]],
    database_url: str,
) -> AsyncIterator[Stack]:
    """A stack whose API takes bodies of at most REQUEST_LIMIT bytes, and UPLOAD_LIMIT for lists."""
    monkeypatch.setenv("MAX_REQUEST_BYTES", str(REQUEST_LIMIT))
    monkeypatch.setenv("MAX_UPLOAD_BYTES", str(UPLOAD_LIMIT))
    async with stack_on(database_url) as stack:
        assert stack.settings.MAX_UPLOAD_BYTES == UPLOAD_LIMIT
        yield stack


def padded_json(value: object, size: int) -> bytes:
    """`value` as JSON, with trailing spaces to make it exactly `size` bytes."""
    body = json.dumps(value).encode()
    assert len(body) <= size
    return body + b" " * (size - len(body))


async def run_count(stack: Stack, business: Business) -> int:
    async with stack.sessions() as session:
        return int(await session.scalar(select(func.count()).where(Run.business_id == business.id)) or 0)


async def test_a_body_at_the_limit_is_taken_and_one_byte_more_is_refused_naming_the_limit(
    stack: Stack,
) -> None:
    # An ordinary request: creating a business.
    name = f"Limited {new_number()}"
    business = {"name": name, "caller_id": new_number()}
    over = await stack.http.post(
        "/v1/businesses", content=padded_json(business, REQUEST_LIMIT + 1), headers=ADMIN
    )
    assert over.status_code == 413
    assert over.json() == {
        "detail": "the request body is larger than 4,096 bytes (4 KiB), the most this endpoint takes"
    }
    async with stack.sessions() as session:
        assert await session.scalar(select(BusinessRow).where(BusinessRow.name == name)) is None
    at_limit = await stack.http.post(
        "/v1/businesses", content=padded_json(business, REQUEST_LIMIT), headers=ADMIN
    )
    assert at_limit.status_code == 201, at_limit.text

    # A list of leads may be larger.
    owner = await stack.create_business()
    run = {"leads": [{"phone": new_number()}], "options": {"calling_window": ALWAYS_OPEN}}
    headers = {**owner.headers, "Content-Type": "application/json"}
    over = await stack.http.post("/v1/runs", content=padded_json(run, UPLOAD_LIMIT + 1), headers=headers)
    assert over.status_code == 413
    assert "262,144 bytes (256 KiB)" in over.json()["detail"]
    assert await run_count(stack, owner) == 0
    at_limit = await stack.http.post("/v1/runs", content=padded_json(run, UPLOAD_LIMIT), headers=headers)
    assert at_limit.status_code == 201, at_limit.text
    assert await run_count(stack, owner) == 1


async def test_a_streamed_list_past_the_limit_is_refused_and_none_of_it_is_kept(stack: Stack) -> None:
    business = await stack.create_business()
    # Enough good leads that some are stored before the body passes the limit (they are inserted
    # 5,000 at a time as they arrive).
    phones = [new_number() for _ in range(UPLOAD_LIMIT // len("+14155550100\n") + 1_000)]

    async def body() -> AsyncIterator[bytes]:
        yield b"phone\n"
        for start in range(0, len(phones), 1_000):
            yield "".join(f"{phone}\n" for phone in phones[start : start + 1_000]).encode()

    response = await stack.http.post(
        "/v1/runs/import",
        params={"options": OPEN_AROUND_THE_CLOCK},
        content=body(),
        headers={**business.headers, "Content-Type": "text/csv"},
    )
    assert "content-length" not in response.request.headers  # sent chunked: only counting can stop it
    assert response.status_code == 413
    assert "262,144 bytes (256 KiB)" in response.json()["detail"]
    assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []
    async with stack.sessions() as session:
        assert await session.scalar(select(func.count()).where(Lead.phone.in_(phones[:5_000]))) == 0
    assert await stack.sim_calls(business.caller_id) == []


@asynccontextmanager
async def raw_request(
    port: int, head: str
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A connection to the API with a request's head sent; the body is up to the test."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode())
        yield reader, writer
    finally:
        writer.close()


async def response_head(reader: asyncio.StreamReader) -> str:
    """The status line and headers of the answer, or a failure if none comes within 10 s."""
    return (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)).decode()


async def test_the_api_answers_413_while_an_oversized_body_is_still_arriving(stack: Stack) -> None:
    business = await stack.create_business()
    head = (
        "POST /v1/runs/import HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{stack.api_port}\r\n"
        f"Authorization: Bearer {business.api_key}\r\n"
        "Content-Type: text/csv\r\n"
    )

    # Chunked: the body is refused once past the limit, without waiting for the rest of it.
    async with raw_request(stack.api_port, f"{head}Transfer-Encoding: chunked\r\n\r\n") as (reader, writer):
        chunk = b"phone\n" + b"+1 not a number\n" * 1_000
        for _ in range(UPLOAD_LIMIT // len(chunk) + 1):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()  # and the body never ends: no last chunk
        assert (await response_head(reader)).startswith("HTTP/1.1 413 ")

    # A Content-Length past the limit: refused before any of the body is sent.
    async with raw_request(stack.api_port, f"{head}Content-Length: {10**12}\r\n\r\n") as (reader, _):
        answer = await response_head(reader)
        assert answer.startswith("HTTP/1.1 413 ")
        length = re.search(r"content-length: (\d+)", answer, re.IGNORECASE)
        assert length, answer
        assert b"262,144 bytes" in await asyncio.wait_for(
            reader.readexactly(int(length.group(1))), timeout=10
        )
    assert (await stack.http.get("/v1/runs", headers=business.headers)).json() == []


async def test_every_list_upload_takes_more_than_other_requests(stack: Stack) -> None:
    business = await stack.create_business()
    blank_lines = "\n" * (2 * REQUEST_LIMIT)  # read as nothing, but counted
    lead = new_number()
    imported = await stack.http.post(
        "/v1/runs/import",
        params={"options": OPEN_AROUND_THE_CLOCK},
        content=f"phone\n{lead}\n{blank_lines}",
        headers={**business.headers, "Content-Type": "text/csv"},
    )
    assert imported.status_code == 201, imported.text
    numbers = [new_number() for _ in range(4)]
    added = await stack.http.post(
        "/v1/dnc",
        content=padded_json({"phones": numbers[:1]}, 2 * REQUEST_LIMIT),
        headers={**business.headers, "Content-Type": "application/json"},
    )
    assert added.status_code == 201, added.text
    imported_dnc = await stack.http.post(
        "/v1/dnc/import",
        content=f"phone\n{numbers[1]}\n{blank_lines}",
        headers={**business.headers, "Content-Type": "text/csv"},
    )
    assert imported_dnc.status_code == 201, imported_dnc.text

    async with signed_in(stack, business) as (browser, token):
        form: dict[str, str | list[str]] = {
            "csrf": token,
            "name": "from the dashboard",
            "max_attempts": "1",
            "retry_delay_minutes": "60",
        }
        form |= {"window_start": "00:00", "window_end": "24:00", "days": [str(day) for day in range(7)]}
        started = await browser.post(
            "/ui/runs/new",
            data=form,
            files={"leads": ("leads.csv", f"phone\n{new_number()}\n{blank_lines}", "text/csv")},
        )
        assert started.status_code == 303, started.text
        added_on_page = await browser.post(
            "/ui/dnc/add", data={"csrf": token, "phones": numbers[2] + blank_lines}
        )
        assert added_on_page.status_code == 303, added_on_page.text
        # The dashboard's other forms take what any request does.
        refused = await browser.post("/ui/logout", data={"csrf": token, "padding": blank_lines})
        assert refused.status_code == 413

    assert len((await stack.http.get("/v1/runs", headers=business.headers)).json()) == 2
    listed = (await stack.http.get("/v1/dnc", headers=business.headers)).json()
    assert [entry["phone"] for entry in listed] == numbers[:3]


def test_the_default_upload_limit_holds_100000_leads_with_names_and_a_few_fields() -> None:
    upload_limit = Settings.model_fields["MAX_UPLOAD_BYTES"].default
    rows = (
        f"+1415{2_000_000 + i:07d},Katherine Johnson,CRM-{i:06d},premium,call after 5pm"
        for i in range(100_000)
    )
    as_csv = "phone,name,crm_id,plan,note\n" + "\n".join(rows) + "\n"
    leads = [
        {
            "phone": f"+1415{2_000_000 + i:07d}",
            "name": "Katherine Johnson",
            "metadata": {"crm_id": f"CRM-{i:06d}"},
        }
        for i in range(100_000)
    ]
    assert len(as_csv.encode()) < upload_limit
    assert len(json.dumps({"leads": leads}).encode()) < upload_limit
    assert Settings.model_fields["MAX_REQUEST_BYTES"].default < upload_limit


async def test_a_list_upload_without_a_working_key_takes_only_what_any_request_does(stack: Stack) -> None:
    """The large limit of lists is for a business: a body sent with no key, or a bad one, is held
    to the ordinary limit before it is read, so nobody can make the API read and parse megabytes
    for nothing."""
    business = await stack.create_business()
    body = padded_json({"leads": [{"phone": new_number()}]}, 2 * REQUEST_LIMIT)
    for headers in ({}, {"Authorization": "Bearer obk_not-a-key"}):
        refused = await stack.http.post(
            "/v1/runs", content=body, headers={**headers, "Content-Type": "application/json"}
        )
        assert refused.status_code == 413, refused.text
    accepted = await stack.http.post(
        "/v1/runs", content=body, headers={**business.headers, "Content-Type": "application/json"}
    )
    assert accepted.status_code == 201, accepted.text
