"""The HTTP API fuzzed from its own OpenAPI description with schemathesis, against a live API on the
real Temporal dev server and PostgreSQL: whatever a client sends, valid or not, no answer is a
server error and every answer is one the description promises."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis import checks as schema_checks
from schemathesis.generation.stateful import run_state_machine_as_test
from temporalio.testing import WorkflowEnvironment

from api.app import create_app
from outbound_dialer.settings import DEV_ADMIN_TOKEN, Settings
from service.schemas import MAX_OFFSET
from support.drive import new_number
from support.ports import free_port
from support.stack import Stack

OPERATIONS = [
    f"{method.upper()} {path}"
    for path, methods in create_app(Settings()).openapi()["paths"].items()
    for method in methods
]
ADMIN_OPERATIONS = {"POST /v1/businesses", "POST /v1/businesses/{business_id}/api-key"}
# A new key for the business the fuzzer uses would end the key the other operations send: this one
# runs on a business of its own.
OWN_BUSINESS_OPERATIONS = {"POST /v1/businesses/me/api-key"}
STATEFUL_STEPS = 8
STATEFUL_SCENARIOS = 40
EXAMPLES_PER_OPERATION = 50

# Whether an answer is right by the schema. Not `positive_data_acceptance`: a request the schema
# allows may still be refused, rightly, for what no schema says (a number that is not a real phone
# number, a calling window that never opens, a run that has ended).
CHECKS = [
    schema_checks.not_a_server_error,
    schema_checks.status_code_conformance,
    schema_checks.content_type_conformance,
    schema_checks.response_headers_conformance,
    schema_checks.response_schema_conformance,
    schema_checks.negative_data_rejection,
    schema_checks.missing_required_header,
    schema_checks.ignored_auth,
    schema_checks.unsupported_method,
]


@dataclass
class Target:
    """The live API, a business with a run of its own, and the API's OpenAPI description."""

    base_url: str
    api_key: str
    run_id: str
    openapi: dict[str, Any]


@pytest.fixture(scope="module")
async def target(
    temporal_env: WorkflowEnvironment, database_url: str, simulator: str, temporal_ui_port: int
) -> AsyncIterator[Target]:
    async with Stack.start(
        temporal=temporal_env.client,
        database_url=database_url,
        simulator_url=simulator,
        api_port=free_port(),
        task_queue=f"test-{uuid.uuid4().hex[:8]}",
        temporal_ui_url=f"http://127.0.0.1:{temporal_ui_port}",
    ) as stack:
        business = await stack.create_business()
        run_id = await stack.start_run(business, [new_number() for _ in range(3)])
        openapi = (await stack.http.get("/openapi.json")).json()
        yield Target(stack.settings.PUBLIC_BASE_URL, business.api_key, run_id, openapi)


def _fuzz(target: Target, label: str) -> None:
    """Send the operation valid and invalid requests (half of them about the business's own run,
    where the path names a run) and check every answer; the first wrong one fails the test."""
    token = DEV_ADMIN_TOKEN if label in ADMIN_OPERATIONS else target.api_key
    if label in OWN_BUSINESS_OPERATIONS:
        token = _new_business_key(target)
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"HTTPBearer": {"bearer": token}}}})
    method, path = label.split(" ", 1)
    operation = schemathesis.openapi.from_dict(target.openapi, config=config)[path][method]
    strategies = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategies.append(operation.as_strategy(mode))
        if "{run_id}" in path:
            strategies.append(operation.as_strategy(mode, path_parameters={"run_id": target.run_id}))

    with requests.Session() as session:

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            phases=[Phase.generate],
            # Some operations have nothing to make invalid (no parameters, no body): those
            # strategies come up empty, and the valid ones are drawn instead.
            suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
        )
        @given(case=st.one_of(strategies))
        def answers_by_the_schema(case: schemathesis.Case) -> None:
            case.call_and_validate(base_url=target.base_url, session=session, checks=CHECKS)

        answers_by_the_schema()


def _new_business_key(target: Target) -> str:
    made = requests.post(
        f"{target.base_url}/v1/businesses",
        json={"name": "fuzzed keys", "caller_id": new_number()},
        headers={"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"},
        timeout=30,
    )
    made.raise_for_status()
    return str(made.json()["api_key"])


def _stateful(target: Target) -> None:
    """Scenarios of calls where each may use what an earlier one answered (a run it started, its
    calls, its controls), as schemathesis links the operations; every answer is checked."""
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"HTTPBearer": {"bearer": target.api_key}}}})
    schema = (
        schemathesis.openapi.from_dict(target.openapi, config=config)
        .exclude(path_regex="^/v1/businesses(/[^/]+)?/api-key$")
        .exclude(method="POST", path="/v1/businesses")
    )
    base_url = target.base_url

    class Scenario(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            return {"base_url": base_url}

        def validate_response(self, response: Any, case: schemathesis.Case, **kwargs: Any) -> None:
            case.validate_response(response, checks=CHECKS)

    run_state_machine_as_test(
        Scenario,
        settings=settings(
            max_examples=STATEFUL_SCENARIOS,
            stateful_step_count=STATEFUL_STEPS,
            deadline=None,
            database=None,
            # The API's state changes under the scenarios: a replayed one may go another way.
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        ),
    )


async def test_scenarios_across_the_api_answer_by_the_schema(target: Target) -> None:
    await asyncio.to_thread(_stateful, target)


@pytest.mark.parametrize("label", OPERATIONS)
async def test_every_answer_is_in_the_schema_and_none_is_a_server_error(target: Target, label: str) -> None:
    # Hypothesis drives a blocking HTTP client: run it on a thread, so the API it calls, served in
    # this event loop, keeps answering.
    await asyncio.to_thread(_fuzz, target, label)


async def test_a_page_offset_past_any_list_is_refused_by_name(target: Target) -> None:
    """Found by the fuzzer: an offset past 64 bits overflowed the database's OFFSET, a 500."""
    headers = {"Authorization": f"Bearer {target.api_key}"}
    async with httpx.AsyncClient(base_url=target.base_url, headers=headers) as http:
        for path in (f"/v1/runs/{target.run_id}/calls", "/v1/dnc"):
            response = await http.get(path, params={"offset": 2**63})
            assert response.status_code == 422, response.text
            assert [error["loc"] for error in response.json()["detail"]] == [["query", "offset"]]
            assert (await http.get(path, params={"offset": MAX_OFFSET})).json() == []
