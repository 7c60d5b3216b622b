"""The API's Prometheus metrics: Twilio webhooks, runs started, run controls.

Each app has a registry of its own, so apps built side by side (as the tests build them) count
apart. Counting is in memory; the text is made only when /metrics is scraped.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.statuses import CALL_STATUSES

OTHER = "other"
WEBHOOK_ROUTE = "call_status"
# Twilio waits 15 s for an answer; the handler keeps trying a refused signal for up to 10 s.
WEBHOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)


class ApiMetrics:
    """The API's counters, in a registry of this app's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        webhooks = Counter(
            "dialer_webhooks_received",
            "Twilio status callbacks with a valid signature, by CallStatus.",
            ["status"],
            registry=self.registry,
        )
        self._webhooks = {status: webhooks.labels(status) for status in [*sorted(CALL_STATUSES), OTHER]}
        self.signature_failures = Counter(
            "dialer_webhook_signature_failures",
            "Status callbacks refused (403) because X-Twilio-Signature did not match.",
            registry=self.registry,
        )
        self.webhooks_undelivered = Counter(
            "dialer_webhooks_undelivered",
            "Status callbacks answered 503 because the run could not take them; Twilio may send again.",
            registry=self.registry,
        )
        self.webhook_seconds = Histogram(
            "dialer_webhook_seconds",
            "Time to handle a status callback, from request to response.",
            buckets=WEBHOOK_BUCKETS,
            registry=self.registry,
        )
        runs_started = Counter(
            "dialer_runs_started",
            "Runs started, by how the leads came: a JSON body or a streamed import.",
            ["source"],
            registry=self.registry,
        )
        run_controls = Counter(
            "dialer_run_controls",
            "Cancel, pause and resume requests accepted (202).",
            ["action"],
            registry=self.registry,
        )
        # Counted by route name when the route answers with success, so the route's code stays
        # free of metrics.
        self._on_success = {
            "create_run": runs_started.labels("json"),
            "import_run": runs_started.labels("import"),
            "cancel_run": run_controls.labels("cancel"),
            "pause_run": run_controls.labels("pause"),
            "resume_run": run_controls.labels("resume"),
        }

    def webhook_received(self, call_status: str | None) -> None:
        """Count an authentic callback; a status Twilio has not documented counts as `other`."""
        self._webhooks.get(call_status or OTHER, self._webhooks[OTHER]).inc()

    def succeeded(self, route_name: str) -> None:
        """Count what the route of this name counts when it succeeds: the dashboard's forms start
        and control runs by calling those routes, and answer with a redirect rather than 2xx."""
        self._on_success[route_name].inc()

    def request_done(self, route_name: str | None, status_code: int, seconds: float) -> None:
        if route_name == WEBHOOK_ROUTE:
            self.webhook_seconds.observe(seconds)
        elif status_code < 300 and route_name in self._on_success:
            self._on_success[route_name].inc()

    async def endpoint(self, request: Request) -> Response:
        """The metrics in Prometheus's text format."""
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)


class MetricsMiddleware:
    """Time and count POST requests by the route that answered them (pure ASGI: no extra task or
    copy of the body per request)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            route = scope.get("route")
            self.metrics.request_done(
                getattr(route, "name", None), status_code, time.perf_counter() - started
            )
