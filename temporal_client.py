"""Connecting to Temporal the same way everywhere, through `temporalio.envconfig`."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime

from observability import tracing_interceptors
from settings import Settings


async def connect_temporal(
    settings: Settings, runtime: Runtime | None = None, service: str = "api"
) -> Client:
    """Connect using TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY (and a config file or
    TLS settings when present). `runtime` is the SDK runtime (the worker passes one that serves
    metrics); with OTEL_EXPORTER_OTLP_ENDPOINT set, calls, workflows and activities are traced as
    `outbound-dialer-{service}`."""
    config = ClientConfig.load_client_connect_config(override_env_vars=settings.temporal_env())
    interceptors = tracing_interceptors(settings, f"outbound-dialer-{service}")
    return await Client.connect(**config, runtime=runtime, interceptors=interceptors)
