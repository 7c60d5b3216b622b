"""Request and response bodies of HTTP API v1, separate from the database models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from api.phones import InvalidPhone, to_e164


def _e164(value: str) -> str:
    try:
        return to_e164(value)
    except InvalidPhone as error:
        raise ValueError(str(error)) from None


def _zone(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"{value!r} is not an IANA time zone such as America/New_York") from None
    return value


class BusinessCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)
    caller_id: Annotated[str, AfterValidator(_e164)] = Field(description="The Twilio `From` number, E.164.")
    max_concurrent_calls: int = Field(default=3, ge=1, le=100)
    timezone: Annotated[str | None, AfterValidator(_zone)] = None


class BusinessPublic(BaseModel):
    id: str
    name: str
    caller_id: str
    max_concurrent_calls: int
    timezone: str | None


class BusinessCreated(BusinessPublic):
    api_key: str = Field(description="Shown once; keep it. Send as `Authorization: Bearer <api_key>`.")


class LeadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str = Field(max_length=40)
    name: str | None = Field(default=None, max_length=200)


class RunOptionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_attempts: int = Field(default=1, ge=1, le=1, description="Attempts per lead; retries come later.")
    ring_timeout_seconds: int = Field(default=30, ge=5, le=600)
    call_time_limit_seconds: int = Field(default=3600, ge=10, le=14400)
    hang_up_on_cancel: bool = True
    machine_detection: bool = False
    twiml: str | None = Field(default=None, max_length=4000)
    reconcile_margin_seconds: int = Field(default=60, ge=5, le=3600)


class RunCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200)
    leads: list[LeadIn] = Field(min_length=1, max_length=100_000)
    options: RunOptionsIn = Field(default_factory=RunOptionsIn)


class RunCreated(BaseModel):
    id: str
    status: str
    workflow_id: str


class Progress(BaseModel):
    total: int
    queued: int
    dialing: int
    in_flight: int
    done: int
    outcomes: dict[str, int]


class RunPublic(BaseModel):
    id: str
    name: str | None
    status: str
    status_reason: str | None
    workflow_id: str
    progress: Progress
    created_at: datetime
    finished_at: datetime | None


class CallPublic(BaseModel):
    lead: int
    phone: str
    attempt: int
    call_sid: str | None
    status: str
    duration: int | None
    answered_by: str | None
    error_code: int | None
    error_message: str | None
    created_at: datetime
    updated_at: datetime


class Accepted(BaseModel):
    id: str
    status: str
    detail: str
