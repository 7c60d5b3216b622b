"""Settings for every process, read from the environment (and an optional `.env` file)."""

from __future__ import annotations

import ipaddress
import json
import os
from functools import lru_cache
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from outbound_dialer.payload_codec import key_bytes

DEV_ACCOUNT_SID = "AC" + "0" * 32
DEV_AUTH_TOKEN = "dev-auth-token-not-secret"
DEV_ADMIN_TOKEN = "dev-admin-token"
_PLACEHOLDERS = {DEV_AUTH_TOKEN, DEV_ADMIN_TOKEN, "", "changeme", "changethis"}
# A Twilio auth token is 32 characters; an admin token should be no weaker.
MIN_SECRET_CHARS = 32


class PayloadKeys(BaseSettings):
    """The keys Temporal payloads are encrypted with: settings of every process, and all a codec
    server needs."""

    # A refusal names the setting, never the value it was given (secrets among them).
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", hide_input_in_errors=True)

    # A key (base64 of 32 bytes; `outbound codec key` makes one): when set, every payload sent to
    # Temporal is encrypted with it, and the Web UI shows payloads only through a codec server that
    # holds it (`outbound codec serve`). Every API and worker process must read with it (here or in
    # PAYLOAD_DECRYPTION_KEYS) before any encrypts with it: docs/DEPLOY.md gives the steps.
    PAYLOAD_ENCRYPTION_KEY: SecretStr | None = None
    # Keys (JSON list) payloads are read with but not encrypted with: a key being brought in, or
    # one rotated out that histories still hold.
    PAYLOAD_DECRYPTION_KEYS: list[SecretStr] = Field(default_factory=list)

    @field_validator("PAYLOAD_ENCRYPTION_KEY")
    @classmethod
    def _encryption_key(cls, key: SecretStr | None) -> SecretStr | None:
        if key is None or not key.get_secret_value():
            return None
        try:
            key_bytes(key.get_secret_value())
        except ValueError as error:
            raise ValueError(f"PAYLOAD_ENCRYPTION_KEY {error}") from None
        return key

    @field_validator("PAYLOAD_DECRYPTION_KEYS")
    @classmethod
    def _decryption_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for number, key in enumerate(keys, start=1):
            try:
                key_bytes(key.get_secret_value())
            except ValueError as error:
                raise ValueError(f"PAYLOAD_DECRYPTION_KEYS: key {number} {error}") from None
        return keys

    def payload_keys(self) -> list[bytes]:
        """Every payload key this process reads with, the one it encrypts with (if any) first."""
        keys = [self.PAYLOAD_ENCRYPTION_KEY] if self.PAYLOAD_ENCRYPTION_KEY is not None else []
        return [key_bytes(key.get_secret_value()) for key in (*keys, *self.PAYLOAD_DECRYPTION_KEYS)]


class Settings(PayloadKeys):
    """Typed settings; names are the contract in DESIGN.md section 5."""

    # Unset, it is production when calls go to the real Twilio (TWILIO_API_BASE_URL unset), and
    # development when they go to a simulator. Production refuses to start on placeholder or short
    # secrets, the development account and a plain-http public URL.
    ENVIRONMENT: Literal["development", "production"] | None = None
    DATABASE_URL: str = "sqlite+aiosqlite:///.data/outbound.db"
    TEMPORAL_ADDRESS: str = "127.0.0.1:7233"
    TEMPORAL_NAMESPACE: str = "default"
    TEMPORAL_API_KEY: SecretStr | None = None
    TEMPORAL_TASK_QUEUE: str = "outbound"
    TWILIO_ACCOUNT_SID: str = DEV_ACCOUNT_SID
    TWILIO_AUTH_TOKEN: SecretStr = SecretStr(DEV_AUTH_TOKEN)
    TWILIO_API_BASE_URL: str | None = None
    # The secret of Twilio's webhook signing key, for accounts that sign with it (HMAC-SHA256).
    TWILIO_WEBHOOK_SIGNING_KEY: SecretStr | None = None
    PUBLIC_BASE_URL: str = "http://127.0.0.1:8000"
    # The Temporal Web UI the dashboard links each run to (`make dev` serves it here).
    TEMPORAL_UI_URL: str = "http://127.0.0.1:8233"
    ADMIN_TOKEN: SecretStr = SecretStr(DEV_ADMIN_TOKEN)
    TWILIO_CALLS_PER_SECOND: float = 1.0
    # How long one request to Twilio may take: a create with no answer by then may have placed its
    # call, and is looked up before it is tried again.
    TWILIO_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0)
    # How long after a create that may have placed its call (a 5xx, no answer, a worker killed) the
    # call is looked for in Twilio's call lists: longer than the lists lag behind new calls and than
    # a call stays queued (Twilio documents neither bound).
    TWILIO_LOOKUP_DELAY_SECONDS: float = Field(default=15.0, ge=0)
    LOG_LEVEL: str = "INFO"
    # How often a business's line gate checks that the runs holding its lines are still running.
    GATE_REAP_SECONDS: float = 60.0
    # Events for businesses' webhooks: how long one delivery may take, and the wait before the first
    # retry of a failed one (doubling after each, up to an hour; an event is given up after 3 days).
    # Requests a second each business may make to the API (per API process), and its largest burst;
    # past them it gets 429 with Retry-After.
    BUSINESS_REQUESTS_PER_SECOND: float = Field(default=20.0, gt=0)
    BUSINESS_REQUEST_BURST: float = Field(default=40.0, ge=1)
    EVENT_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0)
    EVENT_RETRY_SECONDS: float = 5.0
    # Networks events may be sent to although they are not public (JSON list of CIDRs, such as
    # ["127.0.0.0/8"] while developing); every other loopback, private, link-local, CGNAT or
    # unspecified address is refused, checked on the address connected to at each delivery.
    EVENT_WEBHOOK_ALLOWED_NETWORKS: list[str] = Field(default_factory=list)
    # The API serves Prometheus metrics at /metrics on its own port: by default in development only
    # (the port is public); API_METRICS_ADDRESS (host:port) serves them apart, in any environment.
    METRICS_ENABLED: bool | None = None
    API_METRICS_ADDRESS: str | None = None
    # The interactive API docs (/docs, /redoc, /openapi.json): by default in development only.
    DOCS_ENABLED: bool | None = None
    # host:port where a worker serves its own Prometheus metrics (calls, outcomes, process); unset: none.
    WORKER_METRICS_ADDRESS: str | None = None
    # host:port where a worker's Temporal SDK serves its Prometheus metrics; unset: none.
    WORKER_SDK_METRICS_ADDRESS: str | None = None
    # The largest request body, in bytes, of a lead or do-not-call list: POST /v1/runs, /v1/runs/import,
    # /v1/dnc, /v1/dnc/import and the dashboard's forms for them. 20 MiB holds 100,000 leads with names
    # and a few fields of metadata (about 6 MiB as CSV), or a million bare numbers as CSV.
    MAX_UPLOAD_BYTES: int = 20 * 1024 * 1024
    # The largest request body, in bytes, of any other request.
    MAX_REQUEST_BYTES: int = 1024 * 1024
    # An OTLP/HTTP collector (e.g. http://127.0.0.1:4318): when set, workflows, activities and the
    # API's Temporal calls are traced there.
    OTEL_EXPORTER_OTLP_ENDPOINT: str | None = None

    @field_validator("DATABASE_URL")
    @classmethod
    def _async_driver(cls, url: str) -> str:
        """Accept the usual URL spellings and pick the async driver for each."""
        for plain, driver in (
            ("postgres://", "postgresql+asyncpg://"),
            ("postgresql://", "postgresql+asyncpg://"),
            ("postgresql+psycopg://", "postgresql+asyncpg://"),
            ("sqlite://", "sqlite+aiosqlite://"),
        ):
            if url.startswith(plain):
                return driver + url[len(plain) :]
        return url

    @field_validator("PUBLIC_BASE_URL", "TWILIO_API_BASE_URL", "TEMPORAL_UI_URL")
    @classmethod
    def _no_trailing_slash(cls, url: str | None) -> str | None:
        return url.rstrip("/") if url else None  # empty is unset: the real Twilio

    @field_validator("WORKER_METRICS_ADDRESS", "WORKER_SDK_METRICS_ADDRESS")
    @classmethod
    def _host_and_port(cls, address: str | None) -> str | None:
        if address:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"{address!r} is not host:port")
        return address or None

    @field_validator("TWILIO_CALLS_PER_SECOND")
    @classmethod
    def _positive_rate(cls, rate: float) -> float:
        if rate <= 0:
            raise ValueError("TWILIO_CALLS_PER_SECOND must be greater than 0")
        return rate

    @field_validator("EVENT_WEBHOOK_ALLOWED_NETWORKS")
    @classmethod
    def _networks(cls, networks: list[str]) -> list[str]:
        for network in networks:
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    f"EVENT_WEBHOOK_ALLOWED_NETWORKS: {network!r} is not a network such as 127.0.0.0/8"
                ) from None
        return networks

    @field_validator("MAX_UPLOAD_BYTES", "MAX_REQUEST_BYTES")
    @classmethod
    def _positive_size(cls, size: int) -> int:
        if size <= 0:
            raise ValueError("a request body limit must be a positive number of bytes")
        return size

    @model_validator(mode="after")
    def _real_secrets_in_production(self) -> Settings:
        if self.ENVIRONMENT is None:
            self.ENVIRONMENT = "production" if self.calls_real_twilio() else "development"
        development = self.ENVIRONMENT == "development"
        if self.METRICS_ENABLED is None:
            self.METRICS_ENABLED = development
        if self.DOCS_ENABLED is None:
            self.DOCS_ENABLED = development
        if self.ENVIRONMENT != "production":
            return self
        for name in ("TWILIO_AUTH_TOKEN", "ADMIN_TOKEN"):
            value = getattr(self, name).get_secret_value()
            if value in _PLACEHOLDERS:
                raise ValueError(
                    f"{name} is a placeholder; set a real secret in production (or ENVIRONMENT=development)"
                )
            if len(value) < MIN_SECRET_CHARS:
                raise ValueError(f"{name} must be at least {MIN_SECRET_CHARS} characters in production")
        if self.TWILIO_ACCOUNT_SID == DEV_ACCOUNT_SID:
            raise ValueError("TWILIO_ACCOUNT_SID is the development placeholder; set the account's SID")
        everywhere = [
            n
            for n in self.EVENT_WEBHOOK_ALLOWED_NETWORKS
            if ipaddress.ip_network(n, strict=False).prefixlen == 0
        ]
        if everywhere:
            raise ValueError(
                f"EVENT_WEBHOOK_ALLOWED_NETWORKS must not allow every address in production ({everywhere})"
            )
        if not self.PUBLIC_BASE_URL.startswith("https://"):
            raise ValueError(
                "PUBLIC_BASE_URL must be an https:// URL in production (Twilio posts callbacks to it)"
            )
        return self

    def calls_real_twilio(self) -> bool:
        """Whether calls go to Twilio itself (any of its hosts), not to a simulator."""
        if self.TWILIO_API_BASE_URL is None:
            return True
        host = (urlsplit(self.TWILIO_API_BASE_URL).hostname or "").lower()
        return host == "twilio.com" or host.endswith(".twilio.com")

    def environment(self) -> dict[str, str]:
        """This process's environment with every setting set from these (unset ones removed), for a
        child process that reads its settings from the environment: the worker a test or benchmark
        starts is configured exactly like the settings it was given."""
        env = dict(os.environ)
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                env.pop(name, None)
            elif isinstance(value, SecretStr):
                env[name] = value.get_secret_value()
            elif isinstance(value, list | dict):
                # As pydantic-settings reads a complex value.
                env[name] = json.dumps(value, default=SecretStr.get_secret_value)
            else:
                env[name] = str(value)
        return env

    def temporal_env(self) -> dict[str, str]:
        """Environment for `temporalio.envconfig`, with these settings taking precedence."""
        env = dict(os.environ)
        env["TEMPORAL_ADDRESS"] = self.TEMPORAL_ADDRESS
        env["TEMPORAL_NAMESPACE"] = self.TEMPORAL_NAMESPACE
        if self.TEMPORAL_API_KEY is not None:
            env["TEMPORAL_API_KEY"] = self.TEMPORAL_API_KEY.get_secret_value()
        return env


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings()
