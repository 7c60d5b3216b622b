"""The worker's Prometheus metrics, the Temporal SDK's own metrics, and optional tracing.

The worker's counters live in prometheus_client's process-wide registry (with the process's CPU,
memory and garbage-collector metrics) and are served on WORKER_METRICS_ADDRESS. The SDK's metrics
(workflow and activity task latencies, slots, polls, RPCs) are served by its Rust core on
WORKER_SDK_METRICS_ADDRESS: that server cannot show Python metrics, hence two addresses.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry, Counter, start_http_server
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

from contracts.statuses import FINAL_ATTEMPT_STATUSES
from outbound_dialer.settings import Settings

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from temporalio.client import Interceptor

log = logging.getLogger(__name__)
OTHER = "other"

CALLS_PLACED = Counter("dialer_calls_placed", "Calls created at Twilio.")
CALLS_ADOPTED = Counter(
    "dialer_calls_adopted",
    "Dials that found the call an earlier try of the same dial had placed, instead of dialing again.",
)
LINES_BUSY = Counter(
    "dialer_dials_line_busy",
    "Dials that found every line of their business leased (the hard cap) and placed no call; the run "
    "tries again later. Steady growth means a line gate out of step with the leases.",
)
LINES_REAPED = Counter(
    "dialer_lines_reaped",
    "Line leases released by the reaper for runs whose workflows are gone (terminated, reset away).",
)
_DIAL_FAILURES = Counter(
    "dialer_dial_failures",
    "Call creates that failed, by the error the dial fails with (InvalidNumber, TwilioAccountError, "
    "TwilioHttp429, TwilioHttp503, ...; the exception's name when Twilio gave no answer).",
    ["kind"],
)
_OUTCOMES_WRITTEN = Counter(
    "dialer_outcomes_written",
    "Attempt outcomes written to the database, by the attempt's final status.",
    ["status"],
)
EVENTS_DELIVERED = Counter(
    "dialer_events_delivered", "Events a business's webhook accepted (answered 2xx), by type.", ["type"]
)
EVENT_DELIVERY_FAILURES = Counter(
    "dialer_event_delivery_failures",
    "Deliveries of events that failed and will be retried (a non-2xx answer or no answer), by type.",
    ["type"],
)
EVENTS_GIVEN_UP = Counter(
    "dialer_events_given_up", "Events given up after their last delivery failed, by type.", ["type"]
)
_OUTCOME_COUNTERS = {status: _OUTCOMES_WRITTEN.labels(status) for status in [*FINAL_ATTEMPT_STATUSES, OTHER]}


def dial_failed(kind: str) -> None:
    """Count a create-call request that placed no call (or none we know of)."""
    _DIAL_FAILURES.labels(kind).inc()


def outcomes_written(statuses: Iterable[str]) -> None:
    """Count outcomes written; a status outside Twilio's final ones counts as `other`."""
    for status in statuses:
        _OUTCOME_COUNTERS.get(status, _OUTCOME_COUNTERS[OTHER]).inc()


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def serve_worker_metrics(address: str) -> WSGIServer:
    """Serve the worker's metrics at http://{address}/metrics from a thread of its own; the
    caller shuts the server down."""
    return serve_metrics(address)


def serve_metrics(address: str, registry: CollectorRegistry = REGISTRY) -> WSGIServer:
    """Serve a registry's metrics at http://{address}/metrics from a thread of its own, apart from
    any public port; the caller shuts the server down."""
    host, port = _host_port(address)
    server, _thread = start_http_server(port, host, registry=registry)
    log.info("metrics served", extra={"address": address})
    return server


def worker_runtime(settings: Settings) -> Runtime | None:
    """A Temporal runtime whose SDK metrics are served on WORKER_SDK_METRICS_ADDRESS, or None for
    the SDK's default runtime (no metrics server). One per process: the server binds its port."""
    if not settings.WORKER_SDK_METRICS_ADDRESS:
        return None
    prometheus = PrometheusConfig(
        bind_address=settings.WORKER_SDK_METRICS_ADDRESS,
        counters_total_suffix=True,
        durations_as_seconds=True,
    )
    return Runtime(telemetry=TelemetryConfig(metrics=prometheus))


_tracer_provider_set = False


def tracing_interceptors(settings: Settings, service_name: str) -> Sequence[Interceptor]:
    """With OTEL_EXPORTER_OTLP_ENDPOINT set, Temporal's tracing interceptor, with spans sent there
    over OTLP/HTTP; otherwise nothing (and OpenTelemetry is not even imported)."""
    global _tracer_provider_set
    if not settings.OTEL_EXPORTER_OTLP_ENDPOINT:
        return []
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from temporalio.contrib.opentelemetry import TracingInterceptor

    if not _tracer_provider_set:
        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the process's default name.
        resource = Resource.create({SERVICE_NAME: service_name}).merge(OTELResourceDetector().detect())
        provider = TracerProvider(resource=resource)
        endpoint = settings.OTEL_EXPORTER_OTLP_ENDPOINT.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        trace.set_tracer_provider(provider)
        _tracer_provider_set = True
    return [TracingInterceptor()]
