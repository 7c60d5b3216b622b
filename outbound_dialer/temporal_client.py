"""Connecting to Temporal the same way everywhere, through `temporalio.envconfig`."""

from __future__ import annotations

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime
from temporalio.service import RPCError, RPCStatusCode

from outbound_dialer.observability import tracing_interceptors
from outbound_dialer.payload_codec import EncryptionCodec
from outbound_dialer.settings import Settings


async def connect_temporal(
    settings: Settings, runtime: Runtime | None = None, service: str = "api"
) -> Client:
    """Connect using TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY (and a config file or
    TLS settings when present). `runtime` is the SDK runtime (the worker passes one that serves
    metrics); with OTEL_EXPORTER_OTLP_ENDPOINT set, calls, workflows and activities are traced as
    `outbound-dialer-{service}`."""
    config = ClientConfig.load_client_connect_config(override_env_vars=settings.temporal_env())
    interceptors = tracing_interceptors(settings, f"outbound-dialer-{service}")
    return await Client.connect(
        **config, runtime=runtime, interceptors=interceptors, data_converter=data_converter(settings)
    )


def data_converter(settings: Settings) -> DataConverter:
    """How payloads go to Temporal: as JSON; with payload keys, read with any of them, and with
    PAYLOAD_ENCRYPTION_KEY encrypted (with failures' messages and stack traces)."""
    keys = settings.payload_keys()
    if not keys:
        return DataConverter.default
    seal = settings.PAYLOAD_ENCRYPTION_KEY is not None
    return DataConverter(
        payload_codec=EncryptionCodec(keys, seal=seal),
        failure_converter_class=(
            DefaultFailureConverterWithEncodedAttributes
            if seal
            else DataConverter.default.failure_converter_class
        ),
    )


def with_settings_converter(client: Client, settings: Settings) -> Client:
    """`client` on the same connection, converting payloads as `settings` say."""
    config = client.config()
    config["data_converter"] = data_converter(settings)
    return Client(**config)


async def workflow_status(client: Client, workflow_id: str) -> WorkflowExecutionStatus | None:
    """The status of the workflow's latest execution; None if Temporal has no such workflow."""
    try:
        description = await client.get_workflow_handle(workflow_id).describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return description.status
