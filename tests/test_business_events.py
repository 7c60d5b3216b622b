"""A business's webhook gets every outcome once in effect: `call.completed` for each attempt and
`run.completed` at the end, signed per Standard Webhooks, retried with the same id until accepted,
and kept through an outage of the receiver."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest
from fastapi import FastAPI, Request, Response
from standardwebhooks.webhooks import Webhook
from temporalio.testing import ActivityEnvironment

from activities.events import EventActivities
from api.app import create_app
from contracts.activities import DeliverEventsInput
from contracts.names import events_workflow_id
from db.migrate import upgrade
from db.models import Event, Run
from db.outbox import event_id
from outbound_dialer.settings import DEV_ADMIN_TOKEN, DEV_AUTH_TOKEN, Settings
from support.drive import Business, new_number, serve, wait_for
from support.ports import free_port
from support.stack import Stack

FAST_RETRIES = {"EVENT_RETRY_SECONDS": 0.2, "EVENT_TIMEOUT_SECONDS": 5}


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


@dataclass
class Receiver:
    """A business's CRM endpoint: keeps every delivery; refuses the first try of each event when
    `refuse_first` is set."""

    refuse_first: bool = False
    deliveries: list[Delivery] = field(default_factory=list)

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/hooks/outbound")
        async def receive(request: Request) -> Response:
            event_id = request.headers.get("webhook-id", "")
            tried = any(d.headers.get("webhook-id") == event_id for d in self.deliveries)
            answer = 500 if self.refuse_first and not tried else 204
            self.deliveries.append(Delivery(dict(request.headers), await request.body(), answer))
            return Response(status_code=answer)

        return app

    def accepted(self) -> list[Delivery]:
        return [d for d in self.deliveries if d.answered < 300]


@asynccontextmanager
async def receiving(receiver: Receiver, port: int) -> AsyncIterator[str]:
    async with serve(receiver.app(), port) as url:
        yield f"{url}/hooks/outbound"


async def register(stack: Stack, business: Business, url: str) -> str:
    response = await stack.http.put("/v1/businesses/me/webhook", json={"url": url}, headers=business.headers)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["events"] == ["call.completed", "run.completed"]
    secret = body["signing_secret"]
    assert secret.startswith("whsec_")
    return str(secret)


def by_hand(secret: str, delivery: Delivery) -> str:
    """The Standard Webhooks signature, computed without the library: HMAC-SHA256 with the
    secret's bytes over `id.timestamp.body`, in base64."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = (
        f"{delivery.headers['webhook-id']}.{delivery.headers['webhook-timestamp']}.".encode() + delivery.body
    )
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


async def events_of(stack: Stack, business: Business, **params: str) -> list[dict[str, Any]]:
    response = await stack.http.get("/v1/businesses/me/events", params=params, headers=business.headers)
    assert response.status_code == 200, response.text
    return list(response.json())


@pytest.fixture
async def events_stack(
    stack_on: Callable[..., AbstractAsyncContextManager[Stack]], database_url: str
) -> AsyncIterator[Stack]:
    async with stack_on(database_url, settings=FAST_RETRIES) as stack:
        yield stack


@pytest.fixture
async def sqlite_events_stack(
    stack_on: Callable[..., AbstractAsyncContextManager[Stack]], tmp_path: Path
) -> AsyncIterator[Stack]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'outbound.db'}"
    await asyncio.to_thread(upgrade, url)
    async with stack_on(url, settings=FAST_RETRIES) as stack:
        yield stack


async def test_the_webhook_gets_each_outcome_once_in_effect_signed_and_retried_with_one_id(
    events_stack: Stack,
) -> None:
    await every_outcome_once_in_effect(events_stack)


async def test_events_on_the_embedded_database(sqlite_events_stack: Stack) -> None:
    await every_outcome_once_in_effect(sqlite_events_stack, save_as=None)


async def every_outcome_once_in_effect(stack: Stack, save_as: str | None = "events_delivered") -> None:
    receiver = Receiver(refuse_first=True)
    business = await stack.create_business(cap=2)
    answered, busy, unanswered, on_dnc = (new_number() for _ in range(4))
    await stack.force_outcomes({answered: "completed", busy: "busy", unanswered: "no-answer"})
    response = await stack.http.post("/v1/dnc", json={"phones": [on_dnc]}, headers=business.headers)
    assert response.status_code == 201, response.text

    async with receiving(receiver, free_port()) as url:
        secret = await register(stack, business, url)
        run_id = await stack.start_run(business, [answered, busy, unanswered, on_dnc])
        run = await stack.wait_run_ends(business, run_id)

        async def all_delivered() -> bool:
            events = await events_of(stack, business, run_id=run_id)
            return len(events) == 5 and all(e["status"] == "delivered" for e in events)

        await wait_for(all_delivered, within=30, what="every event delivered")
        if save_as:
            await stack.save_history(events_workflow_id(business.id), save_as)

    # Every delivery is signed with the business's secret, by the library and by hand.
    for delivery in receiver.deliveries:
        Webhook(secret).verify(delivery.body, delivery.headers)
        assert delivery.headers["webhook-signature"] == by_hand(secret, delivery)
    # Each event was refused once, then sent again with the same id and the same body.
    tries: dict[str, list[Delivery]] = {}
    for delivery in receiver.deliveries:
        tries.setdefault(delivery.headers["webhook-id"], []).append(delivery)
    assert all(len(t) == 2 and [d.answered for d in t] == [500, 204] for t in tries.values())
    assert all(t[0].body == t[1].body for t in tries.values())

    # Accepted: one `call.completed` per attempt in the attempts table, and one `run.completed`.
    accepted = [d.event for d in receiver.accepted()]
    assert [e["id"] for e in accepted] == list(dict.fromkeys(e["id"] for e in accepted))
    calls = {e["data"]["lead"]["phone"]: e["data"] for e in accepted if e["type"] == "call.completed"}
    attempts = {a.lead_id: a for a in await stack.attempts(run_id)}
    leads = {lead.id: lead.phone for lead in await stack.leads(run_id)}
    assert set(calls) == {leads[lead_id] for lead_id in attempts} == {answered, busy, unanswered, on_dnc}
    for lead_id, attempt in attempts.items():
        data = calls[leads[lead_id]]
        assert (data["call_status"], data["call_sid"], data["attempt"]) == (
            attempt.status,
            attempt.call_sid,
            attempt.attempt,
        )
        assert data["final"] is True and data["run_id"] == run_id
    assert {phone: calls[phone]["outcome"] for phone in calls} == {
        answered: "answered",
        busy: "busy",
        unanswered: "no_answer",
        on_dnc: "skipped_dnc",
    }
    assert calls[on_dnc]["call_sid"] is None
    (finished,) = [e["data"] for e in accepted if e["type"] == "run.completed"]
    assert finished["status"] == run["status"] == "completed"
    assert finished["outcomes"] == run["progress"]["outcomes"]
    assert finished["done"] == finished["total"] == 4

    # The business sees the same in its events list.
    listed = await events_of(stack, business, run_id=run_id)
    assert {e["id"] for e in listed} == set(tries)
    assert all(e["attempts"] == 2 and e["last_status_code"] == 204 for e in listed)


async def test_events_wait_out_a_receiver_that_is_down_and_none_is_lost(events_stack: Stack) -> None:
    stack = events_stack
    receiver = Receiver()
    business = await stack.create_business()
    port = free_port()
    secret = await register(stack, business, f"http://127.0.0.1:{port}/hooks/outbound")
    phones = [new_number() for _ in range(3)]
    await stack.force_outcomes({phone: "completed" for phone in phones})
    run_id = await stack.start_run(business, phones)
    await stack.wait_run_ends(business, run_id)

    async def tried_and_failed() -> bool:
        events = await events_of(stack, business, run_id=run_id)
        return len(events) == 4 and all(e["status"] == "pending" and e["attempts"] >= 1 for e in events)

    await wait_for(tried_and_failed, within=30, what="every event tried while the receiver is down")
    pending = await events_of(stack, business, status="pending")
    assert all(e["last_error"] == "ConnectError reaching 127.0.0.1" for e in pending)
    assert all(secret not in json.dumps(e) for e in pending)

    async with receiving(receiver, port):

        async def delivered() -> bool:
            events = await events_of(stack, business, run_id=run_id)
            return all(e["status"] == "delivered" for e in events)

        await wait_for(delivered, within=30, what="events delivered once the receiver is back")
    accepted = receiver.accepted()
    assert sorted(d.event["type"] for d in accepted) == ["call.completed"] * 3 + ["run.completed"]
    assert len({d.headers["webhook-id"] for d in accepted}) == 4
    for delivery in accepted:
        Webhook(secret).verify(delivery.body, delivery.headers)


async def test_a_removed_webhook_gets_nothing_more_and_its_secret_is_gone(events_stack: Stack) -> None:
    stack = events_stack
    receiver = Receiver()
    business = await stack.create_business()
    async with receiving(receiver, free_port()) as url:
        first = await register(stack, business, url)
        # A new URL keeps the secret (not shown again); rotating makes a new one.
        moved = await stack.http.put(
            "/v1/businesses/me/webhook", json={"url": url + "?v=2"}, headers=business.headers
        )
        assert moved.status_code == 200 and moved.json()["signing_secret"] is None
        rotated = await stack.http.put(
            "/v1/businesses/me/webhook", json={"url": url, "rotate_secret": True}, headers=business.headers
        )
        assert rotated.json()["signing_secret"] not in (None, first)
        shown = await stack.http.get("/v1/businesses/me/webhook", headers=business.headers)
        assert shown.json() == {"url": url, "events": ["call.completed", "run.completed"]}

        removed = await stack.http.delete("/v1/businesses/me/webhook", headers=business.headers)
        assert removed.status_code == 204
        assert (
            await stack.http.get("/v1/businesses/me/webhook", headers=business.headers)
        ).status_code == 404
        phone = new_number()
        await stack.force_outcomes({phone: "completed"})
        run_id = await stack.start_run(business, [phone])
        await stack.wait_run_ends(business, run_id)
    assert receiver.deliveries == []
    assert await events_of(stack, business) == []


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://crm.example.com/hooks", "must use https"),
        ("https://127.0.0.1/hooks", "127.0.0.1 is not a public address"),
        ("https://10.1.2.3/hooks", "10.1.2.3 is not a public address"),
        ("https://169.254.169.254/latest/meta-data", "169.254.169.254 is not a public address"),
        ("https://[::1]/hooks", "::1 is not a public address"),
        ("https://localhost:8443/hooks", "localhost is not a public name"),
        ("ftp://crm.example.com/hooks", "URL scheme should be 'http' or 'https'"),
    ],
)
async def test_in_production_a_webhook_must_be_https_at_a_public_address(
    events_stack: Stack, url: str, problem: str
) -> None:
    production = Settings.model_validate(
        {
            **events_stack.settings.model_dump(),
            "ENVIRONMENT": "production",
            "TWILIO_AUTH_TOKEN": DEV_AUTH_TOKEN[::-1] + "x" * 8,
            "ADMIN_TOKEN": "p" * 40,
            "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
            "PUBLIC_BASE_URL": "https://dialer.example.com",
        }
    )
    business = await events_stack.create_business()
    async with (
        serve(create_app(production, events_stack.temporal), free_port()) as base_url,
        httpx.AsyncClient(base_url=base_url, headers=business.headers) as api,
    ):
        refused = await api.put("/v1/businesses/me/webhook", json={"url": url})
        assert refused.status_code == 422, refused.text
        assert problem in refused.text
        accepted = await api.put("/v1/businesses/me/webhook", json={"url": "https://crm.example.com/hooks"})
        assert accepted.status_code == 200, accepted.text
    assert DEV_ADMIN_TOKEN not in refused.text


async def test_an_event_left_without_a_webhook_is_given_up_and_says_why(events_stack: Stack) -> None:
    """An outcome recorded just as the webhook is removed leaves an event with nowhere to go: the
    next pass marks it failed with the reason, and delivers nothing."""
    stack = events_stack
    business = await stack.create_business()
    async with stack.sessions() as session, session.begin():
        run = Run(id=uuid4().hex, business_id=business.id, status="completed", total_leads=0, options={})
        session.add(run)
        await session.flush()
        session.add(
            Event(
                id=event_id("run.completed", run.id),
                business_id=business.id,
                type="run.completed",
                run_id=run.id,
            )
        )
    async with httpx.AsyncClient() as http:
        activities = EventActivities(stack.sessions, http)
        done = await ActivityEnvironment().run(activities.deliver_events, DeliverEventsInput(business.id))
    assert (done.delivered, done.given_up, done.next_attempt_in) == (0, 1, None)
    (event,) = await events_of(stack, business)
    assert (event["status"], event["last_error"]) == ("failed", "the business has no webhook registered")
