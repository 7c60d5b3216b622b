"""A leaked key need not work for ever: a business rotates its key (the old one works for a short
overlap), an operator revokes them all at once, and signing out of the dashboard ends the session
on the server, so a copied cookie is worth nothing after."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import replace

import httpx
from sqlalchemy import func, select

from api.dashboard_session import SESSION_COOKIE as SESSION_COOKIE_NAME
from db.models import ApiKey, DashboardSession
from outbound_dialer.settings import DEV_ADMIN_TOKEN
from service.keys import KEPT_ENDED_KEYS, MAX_LIVE_SESSIONS, MAX_WORKING_KEYS
from support.drive import Business
from support.stack import Stack, form_token, signed_in


def _as(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _works(stack: Stack, key: str) -> bool:
    answer = await stack.http.get("/v1/businesses/me", headers=_as(key))
    assert answer.status_code in (200, 401), answer.text
    return answer.status_code == 200


async def test_a_rotated_key_works_for_its_overlap_and_a_rotation_without_one_stops_it(stack: Stack) -> None:
    business = await stack.create_business()
    rotated = await stack.http.post("/v1/businesses/me/api-key", json={}, headers=business.headers)
    assert rotated.status_code == 201, rotated.text
    second = rotated.json()["api_key"]
    assert rotated.json()["previous_keys_end_at"] is not None
    assert await _works(stack, business.api_key) and await _works(stack, second)  # the overlap

    third = await stack.http.post(
        "/v1/businesses/me/api-key", json={"overlap_seconds": 0}, headers=_as(second)
    )
    assert third.status_code == 201, third.text
    assert not await _works(stack, business.api_key)
    assert not await _works(stack, second)
    assert await _works(stack, third.json()["api_key"])


async def test_an_operator_revokes_every_key_and_dashboard_session_of_a_business(stack: Stack) -> None:
    business = await stack.create_business()
    async with signed_in(stack, business) as (browser, _token):
        assert (await browser.get("/ui/runs")).status_code == 200
        replaced = await stack.http.post(
            f"/v1/businesses/{business.id}/api-key", headers=_as(DEV_ADMIN_TOKEN)
        )
        assert replaced.status_code == 201, replaced.text
        after = await browser.get("/ui/runs")
    assert after.status_code == 303 and after.headers["location"].startswith("/ui/login")
    assert not await _works(stack, business.api_key)
    assert await _works(stack, replaced.json()["api_key"])
    refused = await stack.http.post(f"/v1/businesses/{business.id}/api-key", headers=business.headers)
    assert refused.status_code == 401  # only the operator


async def test_signing_out_ends_the_session_on_the_server_and_the_cookie_is_not_the_key(stack: Stack) -> None:
    business: Business = await stack.create_business()
    async with signed_in(stack, business) as (browser, token):
        cookie = browser.cookies[SESSION_COOKIE_NAME]
        assert business.api_key not in cookie
        out = await browser.post("/ui/logout", data={"csrf": token})
        assert out.status_code == 303
    async with httpx.AsyncClient(base_url=stack.settings.PUBLIC_BASE_URL) as thief:
        thief.cookies.set(SESSION_COOKIE_NAME, cookie, path="/ui")
        stolen = await thief.get("/ui/runs")
    assert stolen.status_code == 303 and stolen.headers["location"].startswith("/ui/login")


async def test_a_key_in_its_overlap_cannot_make_keys(stack: Stack) -> None:
    """A leaked key the business has rotated away from must not mint a key of its own, nor end the
    business's new one."""
    business = await stack.create_business()
    rotated = await stack.http.post("/v1/businesses/me/api-key", json={}, headers=business.headers)
    current = rotated.json()["api_key"]
    taken = await stack.http.post(
        "/v1/businesses/me/api-key", json={"overlap_seconds": 0}, headers=business.headers
    )
    assert taken.status_code == 403, taken.text
    assert "newest" in taken.json()["detail"]
    assert await _works(stack, current)


async def _rows(stack: Stack, business: Business) -> tuple[int, int]:
    """How many key rows and dashboard session rows the business has in the database."""
    async with stack.sessions() as session:
        keys = await session.scalar(select(func.count()).where(ApiKey.business_id == business.id))
        sessions = await session.scalar(
            select(func.count()).where(DashboardSession.business_id == business.id)
        )
    return int(keys or 0), int(sessions or 0)


async def test_signing_in_over_and_over_keeps_a_bounded_number_of_sessions(stack: Stack) -> None:
    """Each sign-in is a row: a business (or a script with its key) signing in without end must
    not grow the table without end. Its oldest sessions end, and ended ones are removed."""
    business = await stack.create_business()
    async with signed_in(stack, business) as (first, _token):
        for _ in range(MAX_LIVE_SESSIONS + 5):
            async with signed_in(stack, business) as (latest, _):
                assert (await latest.get("/ui/runs")).status_code == 200
        oldest = await first.get("/ui/runs")
    assert oldest.status_code == 303  # ended to make room for newer ones
    _keys, sessions = await _rows(stack, business)
    assert sessions <= MAX_LIVE_SESSIONS + 1


async def test_rotating_over_and_over_keeps_a_bounded_number_of_keys(stack: Stack) -> None:
    business = await stack.create_business()
    key = business.api_key
    for _ in range(KEPT_ENDED_KEYS + 10):
        rotated = await stack.http.post(
            "/v1/businesses/me/api-key", json={"overlap_seconds": 0}, headers=_as(key)
        )
        assert rotated.status_code == 201, rotated.text
        key = rotated.json()["api_key"]
    assert await _works(stack, key) and not await _works(stack, business.api_key)
    keys, _sessions = await _rows(stack, business)
    assert keys <= KEPT_ENDED_KEYS + 1


async def test_many_rotations_with_an_overlap_leave_a_bounded_number_of_keys_working(stack: Stack) -> None:
    business = await stack.create_business()
    issued = [business.api_key]
    for _ in range(MAX_WORKING_KEYS + 3):
        rotated = await stack.http.post(
            "/v1/businesses/me/api-key", json={"overlap_seconds": 3600}, headers=_as(issued[-1])
        )
        assert rotated.status_code == 201, rotated.text
        issued.append(rotated.json()["api_key"])
    working = [await _works(stack, key) for key in issued]
    assert working == [False] * (len(issued) - MAX_WORKING_KEYS) + [True] * MAX_WORKING_KEYS


async def test_a_leaked_key_in_its_overlap_cannot_sign_the_owner_out(stack: Stack) -> None:
    """Signing in again and again with the old key ends only sessions of that key (or older), never
    those the owner opened with the newest key; and when the owner's team signs in, the old key's
    sessions end first, not the team's."""
    business = await stack.create_business()
    rotated = await stack.http.post("/v1/businesses/me/api-key", json={}, headers=business.headers)
    newest = replace(business, api_key=rotated.json()["api_key"])
    async with AsyncExitStack() as open_sessions:
        owner, _ = await open_sessions.enter_async_context(signed_in(stack, newest))
        for _ in range(MAX_LIVE_SESSIONS + 5):
            await open_sessions.enter_async_context(signed_in(stack, business))
        assert (await owner.get("/ui/runs")).status_code == 200
        teammate, _ = await open_sessions.enter_async_context(signed_in(stack, newest))
        assert (await owner.get("/ui/runs")).status_code == 200
        assert (await teammate.get("/ui/runs")).status_code == 200
    _keys, sessions = await _rows(stack, business)
    assert sessions <= MAX_LIVE_SESSIONS


async def test_sessions_of_newer_keys_are_never_ended_for_an_older_one(stack: Stack) -> None:
    business = await stack.create_business()
    rotated = await stack.http.post("/v1/businesses/me/api-key", json={}, headers=business.headers)
    newest = replace(business, api_key=rotated.json()["api_key"])
    async with AsyncExitStack() as sessions:
        browsers = [
            await sessions.enter_async_context(signed_in(stack, newest)) for _ in range(MAX_LIVE_SESSIONS)
        ]
        login = await stack.http.get("/ui/login")
        refused = await stack.http.post(
            "/ui/login", data={"api_key": business.api_key, "csrf": form_token(login.text)}
        )
        assert refused.status_code == 409 and "sign out" in refused.text
        still = [(await browser.get("/ui/runs")).status_code for browser, _ in browsers]
        assert still == [200] * MAX_LIVE_SESSIONS
