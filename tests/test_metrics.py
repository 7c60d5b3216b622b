"""Prometheus metrics: what the API and the worker count is what happened, and no secret shows."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

import httpx
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client.parser import text_string_to_metric_families
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.dialing import DialingActivities
from api.app import create_app
from contracts.activities import DialInput
from contracts.names import CALL_STATUS_WEBHOOK
from outbound_dialer.observability import serve_worker_metrics
from outbound_dialer.settings import DEV_ACCOUNT_SID, DEV_ADMIN_TOKEN, DEV_AUTH_TOKEN, Settings
from outbound_dialer.temporal_client import connect_temporal
from support.drive import new_number, serve, twilio_callback
from support.ports import free_port
from support.stack import Stack
from telephony.twilio_client import CallbackUrls, close_twilio_client, create_twilio_client
from tests.conftest import SimulatorKnobs

INVALID_NUMBER = 21211


def value(text: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus text; 0 when the series is absent."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def status_callback(settings: Settings, query: dict[str, Any], status: str, token: str) -> dict[str, Any]:
    """A Twilio status callback for a call, signed with `token`."""
    params = {
        "CallSid": "CA" + "1" * 32,
        "CallStatus": status,
        "SequenceNumber": "3",
        "AccountSid": DEV_ACCOUNT_SID,
    }
    return twilio_callback(settings, CALL_STATUS_WEBHOOK, query, params, token=token)


@asynccontextmanager
async def worker_metrics() -> AsyncIterator[httpx.AsyncClient]:
    """The worker's metrics server, as `worker.py` starts it with WORKER_METRICS_ADDRESS."""
    port = free_port()
    server = serve_worker_metrics(f"127.0.0.1:{port}")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            yield client
    finally:
        await asyncio.to_thread(server.shutdown)
        server.server_close()


def assert_no_secrets(text: str, *secrets: str) -> None:
    for secret in (DEV_AUTH_TOKEN, DEV_ADMIN_TOKEN, *secrets):
        assert secret not in text


async def test_a_run_is_counted_by_the_api_and_the_worker(stack: Stack, sim_knobs: SimulatorKnobs) -> None:
    business = await stack.create_business(cap=3)
    answered, busy, bad = new_number(), new_number(), new_number()
    await stack.force_outcomes({answered: "completed", busy: "busy"})
    await sim_knobs(errors_by_to={bad: INVALID_NUMBER})
    async with worker_metrics() as worker:
        before = (await worker.get("/metrics")).text
        run_id = await stack.start_run(business, [answered, busy, bad])
        run = await stack.wait_run_ends(business, run_id)
        assert run["status"] == "completed"

        # A retry of a dial whose call is already recorded finds it: adopted, not placed again.
        placed = next(a for a in await stack.attempts(run_id) if a.call_sid)
        phone = answered if placed.status == "completed" else busy
        twilio = create_twilio_client(stack.settings)
        try:
            dialing = DialingActivities(stack.sessions, twilio, CallbackUrls.of(stack.settings))
            retry = DialInput(
                run_id,
                placed.lead_id,
                placed.attempt,
                phone,
                business.caller_id,
                "<Response/>",
                business_id=business.id,
            )
            assert (await ActivityEnvironment().run(dialing.place_call, retry)).call_sid == placed.call_sid
        finally:
            await close_twilio_client(twilio)
        after = (await worker.get("/metrics")).text

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("dialer_calls_placed_total") == 2
    assert grew("dialer_calls_adopted_total") == 1
    assert grew("dialer_dial_failures_total", kind="InvalidNumber") == 1
    assert grew("dialer_outcomes_written_total", status="completed") == 1
    assert grew("dialer_outcomes_written_total", status="busy") == 1
    assert grew("dialer_outcomes_written_total", status="failed") == 1
    assert value(after, "process_resident_memory_bytes") > 0

    response = await stack.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    api = response.text
    assert value(api, "dialer_runs_started_total", source="json") == 1
    assert value(api, "dialer_runs_started_total", source="import") == 0
    # The answered call reports in-progress, then completed; the busy one only busy.
    assert value(api, "dialer_webhooks_received_total", status="in-progress") == 1
    assert value(api, "dialer_webhooks_received_total", status="completed") == 1
    assert value(api, "dialer_webhooks_received_total", status="busy") == 1
    assert value(api, "dialer_webhook_seconds_count") == 3
    assert value(api, "dialer_webhook_signature_failures_total") == 0
    assert_no_secrets(api, business.api_key)
    assert_no_secrets(after, business.api_key)


async def test_a_forged_callback_and_run_controls_are_counted(
    stack: Stack, sim_knobs: SimulatorKnobs
) -> None:
    await sim_knobs(ring_seconds=(20.0, 20.0))  # the run stays live while the test drives it
    business = await stack.create_business(cap=1)
    run_id = await stack.start_run(business, [new_number()])

    forged = status_callback(stack.settings, {"run": run_id, "lead": 1, "attempt": 1}, "busy", token="forged")
    assert (await stack.http.post(**forged)).status_code == 403
    for action in ("pause", "resume", "cancel"):
        response = await stack.http.post(f"/v1/runs/{run_id}/{action}", headers=business.headers)
        assert response.status_code == 202, response.text
    assert (await stack.wait_run_ends(business, run_id))["status"] == "cancelled"
    # A refused control is not counted.
    assert (await stack.http.post(f"/v1/runs/{run_id}/pause", headers=business.headers)).status_code == 409

    api = (await stack.http.get("/metrics")).text
    assert value(api, "dialer_webhook_signature_failures_total") == 1
    assert value(api, "dialer_webhooks_received_total", status="busy") == 0
    for action in ("pause", "resume", "cancel"):
        assert value(api, "dialer_run_controls_total", action=action) == 1
    assert value(api, "dialer_runs_started_total", source="json") == 1
    assert_no_secrets(api, business.api_key)


class _TemporalDown:
    """A Temporal client whose every signal fails as when the service cannot be reached."""

    def get_workflow_handle(self, workflow_id: str) -> _TemporalDown:
        return self

    async def signal(self, name: str, arg: Any) -> None:
        raise RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")


async def test_an_undelivered_callback_is_counted_and_metrics_can_be_turned_off() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    app = create_app(settings)
    app.state.settings = settings
    app.state.temporal = _TemporalDown()
    callback = status_callback(settings, {"run": "r1", "lead": 1, "attempt": 1}, "no-answer", DEV_AUTH_TOKEN)
    callback["url"] = callback["url"].replace(settings.PUBLIC_BASE_URL, "http://api")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        assert (await client.post(**callback)).status_code == 503
        text = (await client.get("/metrics")).text
    assert value(text, "dialer_webhooks_undelivered_total") == 1
    assert value(text, "dialer_webhooks_received_total", status="no-answer") == 1

    quiet = create_app(Settings(_env_file=None, METRICS_ENABLED=False))  # type: ignore[call-arg]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=quiet), base_url="http://api") as client:
        assert (await client.get("/metrics")).status_code == 404


class _Collector(BaseHTTPRequestHandler):
    """An OpenTelemetry collector's OTLP/HTTP traces endpoint, keeping what it is sent."""

    received: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/traces":
            self.received.append(ExportTraceServiceRequest.FromString(body))
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def test_with_an_otlp_endpoint_a_run_is_traced_there(
    temporal_env: WorkflowEnvironment, database_url: str, simulator: str
) -> None:
    collector = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    threading.Thread(target=collector.serve_forever, daemon=True).start()
    try:
        settings = Settings(
            _env_file=None,  # type: ignore[call-arg]
            TEMPORAL_ADDRESS=temporal_env.client.service_client.config.target_host,
            OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector.server_address[1]}",
        )
        traced = await connect_temporal(settings)
        async with Stack.start(
            temporal=traced,
            database_url=database_url,
            simulator_url=simulator,
            api_port=free_port(),
            task_queue=f"test-{uuid.uuid4().hex[:8]}",
        ) as stack:
            business = await stack.create_business(cap=1)
            run_id = await stack.start_run(business, [new_number()])
            await stack.wait_run_ends(business, run_id)
        provider = trace.get_tracer_provider()
        assert isinstance(provider, TracerProvider)
        # Sends what is left, and nothing is sent after the collector has gone.
        await asyncio.to_thread(provider.shutdown)
    finally:
        collector.shutdown()
        collector.server_close()
    received = _Collector.received

    spans = [
        (span.name, span.trace_id, dict((a.key, a.value.string_value) for a in span.attributes))
        for request in received
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    services = {
        a.value.string_value
        for request in received
        for resource_spans in request.resource_spans
        for a in resource_spans.resource.attributes
        if a.key == "service.name"
    }
    assert services == {"outbound-dialer-api"}
    started = [s for s in spans if s[0] == "StartWorkflow:OutboundRunWorkflow"]
    assert len(started) == 1 and started[0][2]["temporalWorkflowID"] == f"outbound-run-{run_id}"
    # The run's dial hangs under the same trace as the request that started the run.
    assert any(name == "RunActivity:place_call" and trace_id == started[0][1] for name, trace_id, _ in spans)


PRODUCTION = {
    "ENVIRONMENT": "production",
    "TWILIO_ACCOUNT_SID": "AC" + "1" * 32,
    "TWILIO_AUTH_TOKEN": "a" * 32,
    "ADMIN_TOKEN": "b" * 40,
    "PUBLIC_BASE_URL": "https://dialer.example.com",
}


async def test_production_serves_no_docs_and_no_metrics_on_the_public_port_but_on_their_own() -> None:
    port = free_port()
    production = Settings.model_validate({**PRODUCTION, "API_METRICS_ADDRESS": f"127.0.0.1:{port}"})
    async with serve(create_app(production, _TemporalDown()), free_port()) as url:  # type: ignore[arg-type]
        async with httpx.AsyncClient(base_url=url) as public:
            for path in ("/docs", "/redoc", "/openapi.json", "/metrics"):
                assert (await public.get(path)).status_code == 404, path
            assert (await public.get("/healthz")).status_code == 200
        async with httpx.AsyncClient() as scraper:
            apart = await scraper.get(f"http://127.0.0.1:{port}/metrics")
    assert apart.status_code == 200 and "dialer_webhooks_received_total" in apart.text

    development = Settings(_env_file=None, ENVIRONMENT="development")  # type: ignore[call-arg]
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=create_app(development)), base_url="http://api"
    ) as client:
        for path in ("/docs", "/openapi.json", "/metrics"):
            assert (await client.get(path)).status_code == 200, path
