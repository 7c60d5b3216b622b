"""A business's webhook cannot hurt the shared workers: a delivery reads a few KiB of the answer and
ends by a deadline however the receiver answers, and goes only to public addresses, checked on the
address connected to at every delivery."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from outbound_dialer.egress import Egress, EgressRefused
from support.drive import new_number, serve, wait_for
from support.ports import free_port
from support.stack import Stack
from tests.test_business_events import events_of, register

DEADLINE = {"EVENT_TIMEOUT_SECONDS": 2, "EVENT_RETRY_SECONDS": 60}


def _endless(pause: float) -> FastAPI:
    """A receiver that answers 200 and then never stops sending: fast, or a byte at a time."""
    app = FastAPI()

    @app.post("/hooks")
    async def hooks() -> StreamingResponse:
        async def body() -> AsyncIterator[bytes]:
            while True:
                yield b"x" * (65536 if pause == 0 else 1)
                await asyncio.sleep(pause)

        return StreamingResponse(body(), media_type="text/plain")

    return app


async def _one_event(stack: Stack, url: str) -> tuple[Any, str]:
    business = await stack.create_business()
    await register(stack, business, url)
    phone = new_number()
    await stack.force_outcomes({phone: "busy"})
    run_id = await stack.start_run(business, [phone])
    await stack.wait_run_ends(business, run_id)
    return business, run_id


@pytest.fixture
async def deadline_stack(
    stack_on: Callable[..., AbstractAsyncContextManager[Stack]], database_url: str
) -> AsyncIterator[Stack]:
    async with stack_on(database_url, settings=DEADLINE) as stack:
        yield stack


async def test_an_endless_answer_is_read_only_so_far_and_the_event_is_delivered(
    deadline_stack: Stack,
) -> None:
    stack = deadline_stack
    async with serve(_endless(pause=0), free_port()) as url:
        business, run_id = await _one_event(stack, f"{url}/hooks")

        async def delivered() -> list[dict[str, Any]] | None:
            events = await events_of(stack, business, run_id=run_id)
            return events if events and all(e["status"] == "delivered" for e in events) else None

        events = await wait_for(delivered, within=30, what="the events delivered despite the endless body")
    assert all(e["attempts"] == 1 and e["last_status_code"] == 200 for e in events)


async def test_a_receiver_that_drips_its_answer_is_cut_off_at_the_deadline_and_tried_later(
    deadline_stack: Stack,
) -> None:
    stack = deadline_stack
    async with serve(_endless(pause=0.5), free_port()) as url:
        business, run_id = await _one_event(stack, f"{url}/hooks")

        async def timed_out() -> list[dict[str, Any]] | None:
            events = await events_of(stack, business, run_id=run_id)
            return events if events and all(e["last_error"] for e in events) else None

        events = await wait_for(timed_out, within=30, what="the first try of every event to end")
    assert all(e["status"] == "pending" and e["next_attempt_at"] for e in events)
    assert all("2 s" in e["last_error"] for e in events), events


@pytest.fixture
async def production_egress_stack(
    stack_on: Callable[..., AbstractAsyncContextManager[Stack]], database_url: str
) -> AsyncIterator[Stack]:
    async with stack_on(database_url, settings={**DEADLINE, "EVENT_WEBHOOK_ALLOWED_NETWORKS": []}) as stack:
        yield stack


async def test_events_are_never_sent_to_a_private_address_whatever_the_name(
    production_egress_stack: Stack,
) -> None:
    stack = production_egress_stack
    received: list[bytes] = []
    app = FastAPI()

    @app.post("/hooks")
    async def hooks() -> dict[str, str]:
        received.append(b"1")
        return {}

    port = free_port()
    async with serve(app, port):
        business, run_id = await _one_event(stack, f"http://localhost:{port}/hooks")

        async def refused() -> list[dict[str, Any]] | None:
            events = await events_of(stack, business, run_id=run_id)
            return events if events and all(e["last_error"] for e in events) else None

        events = await wait_for(refused, within=30, what="the first try of every event")
    assert received == []
    assert all(e["last_error"] == "refused: localhost is not a public address" for e in events), events
    assert all(e["last_status_code"] is None for e in events)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "100.64.0.1",  # CGNAT
        "169.254.169.254",  # cloud metadata
        "0.0.0.0",
        "::",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "224.0.0.1",
        "::7f00:1",  # IPv4-compatible
        "::ffff:0:7f00:1",  # SIIT
        "fec0::1",  # site-local
        "64:ff9b:1::a00:1",  # local-use NAT64
    ],
)
def test_no_private_address_in_any_of_its_forms_is_permitted(address: str) -> None:
    assert not Egress().permits(ipaddress.ip_address(address))


def test_public_addresses_and_allowed_networks_are_permitted() -> None:
    assert Egress().permits(ipaddress.ip_address("93.184.216.34"))
    assert Egress().permits(ipaddress.ip_address("64:ff9b::5db8:d822"))  # NAT64 of a public one
    assert Egress.allowing(["127.0.0.0/8"]).permits(ipaddress.ip_address("127.0.0.1"))
    assert not Egress.allowing(["127.0.0.0/8"]).permits(ipaddress.ip_address("10.0.0.1"))


async def test_a_receiver_that_does_not_answer_costs_one_try_a_pass_not_one_per_event(
    deadline_stack: Stack,
) -> None:
    """A receiver that accepts connections and never answers would hold a worker's activity slot
    for the whole deadline once per event: after the first, the pass puts the rest off untried."""
    stack = deadline_stack
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        business = await stack.create_business(cap=3)
        await register(stack, business, f"http://127.0.0.1:{port}/hooks")
        phones = [new_number() for _ in range(3)]
        await stack.force_outcomes(dict.fromkeys(phones, "busy"))
        run_id = await stack.start_run(business, phones)
        await stack.wait_run_ends(business, run_id)

        async def all_had_a_pass() -> list[dict[str, Any]] | None:
            events = await events_of(stack, business, run_id=run_id)
            return events if len(events) == 4 and all(e["last_error"] for e in events) else None

        events = await wait_for(all_had_a_pass, within=60, what="every event to have had a pass")
    finally:
        silent.close()
    tried = [e for e in events if e["attempts"]]
    untried = [e for e in events if not e["attempts"]]
    assert all("no answer within 2 s" in e["last_error"] for e in tried), tried
    assert untried and all(e["last_error"].startswith("not tried:") for e in untried), events
    assert all(e["status"] == "pending" and e["next_attempt_at"] for e in events)


@pytest.fixture
def slow_dns(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, list[bool]]:
    """Names under .slow.example get no answer until the event is set (or for 10 s, the list
    saying for each lookup whether it ran out); other names resolve as ever."""
    released = threading.Event()
    ran_out: list[bool] = []
    real = socket.getaddrinfo

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith(".slow.example"):
            ran_out.append(not released.wait(timeout=10))
            raise socket.gaierror("no answer")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    return released, ran_out


async def test_webhook_names_that_resolve_slowly_do_not_hold_up_the_workers_other_lookups(
    slow_dns: tuple[threading.Event, list[bool]],
) -> None:
    """A webhook's name is looked up by the worker that also dials every business's calls. Names
    whose DNS never answers (a CRM's outage, or a business's own slow name server), tried pass
    after pass, must not take the threads the worker's other lookups (Twilio's API) need: the
    lookup below waits for the worker to resolve another name; it does not run out."""
    released, ran_out = slow_dns
    slow = [asyncio.create_task(Egress().resolve(f"crm{n}.slow.example", 443)) for n in range(40)]
    await asyncio.sleep(0)  # every slow lookup has been handed to a thread, or queued for one
    twilio = await asyncio.get_running_loop().getaddrinfo("localhost", 443)
    released.set()
    refused = await asyncio.gather(*slow, return_exceptions=True)
    assert twilio
    assert all(isinstance(r, EgressRefused) for r in refused)
    assert not any(ran_out)


async def test_a_webhook_name_that_never_answers_holds_one_lookup_however_often_it_is_tried(
    slow_dns: tuple[threading.Event, list[bool]],
) -> None:
    """Tried again and again while its DNS does not answer, one business's name must not take the
    threads other businesses' webhooks are looked up in: their lookups are answered meanwhile."""
    released, ran_out = slow_dns
    slow = [asyncio.create_task(Egress().resolve("crm.slow.example", 443)) for _ in range(10)]
    await asyncio.sleep(0)  # every lookup of the slow name has been asked for
    other = await Egress.allowing(["127.0.0.0/8", "::1/128"]).resolve("localhost", 443)
    released.set()
    refused = await asyncio.gather(*slow, return_exceptions=True)
    assert other.is_loopback
    assert all(isinstance(r, EgressRefused) for r in refused)
    assert not any(ran_out)


async def test_a_name_that_does_not_resolve_is_not_looked_up_again_for_a_minute(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[str] = []
    real = socket.getaddrinfo

    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith("nowhere.example"):
            asked.append(str(host))
            raise socket.gaierror("no such name")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    for spelling in ("crm.nowhere.example", "CRM.Nowhere.Example.", "crm.nowhere.example"):
        with pytest.raises(EgressRefused, match="does not resolve"):
            await Egress().resolve(spelling, 443)
    assert len(asked) == 1
