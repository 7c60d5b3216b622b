"""Connecting to Temporal the same way everywhere, through `temporalio.envconfig`."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.envconfig import ClientConfig

from settings import Settings


async def connect_temporal(settings: Settings) -> Client:
    """Connect using TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE, TEMPORAL_API_KEY (and a config file or
    TLS settings when present)."""
    config = ClientConfig.load_client_connect_config(override_env_vars=settings.temporal_env())
    return await Client.connect(**config)
