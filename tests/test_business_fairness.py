"""One business cannot take the API from the others: past its request rate it gets 429 with
Retry-After, and the others are served as before."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import pytest

from support.stack import Stack

SLOW = {"BUSINESS_REQUESTS_PER_SECOND": 0.5, "BUSINESS_REQUEST_BURST": 3}


@pytest.fixture
async def fair_stack(
    stack_on: Callable[..., AbstractAsyncContextManager[Stack]], database_url: str
) -> AsyncIterator[Stack]:
    async with stack_on(database_url, settings=SLOW) as stack:
        yield stack


async def test_a_business_past_its_rate_waits_and_the_others_do_not(fair_stack: Stack) -> None:
    stack = fair_stack
    greedy, other = await stack.create_business(), await stack.create_business()
    answers = [await stack.http.get("/v1/runs", headers=greedy.headers) for _ in range(10)]
    codes = [a.status_code for a in answers]
    assert codes[:3] == [200, 200, 200] and 429 in codes, codes
    refused = next(a for a in answers if a.status_code == 429)
    assert int(refused.headers["Retry-After"]) >= 1
    assert "requests" in refused.json()["detail"]
    assert (await stack.http.get("/v1/runs", headers=other.headers)).status_code == 200
