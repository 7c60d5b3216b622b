"""Businesses: created by the operator with the admin token."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit
from uuid import uuid4

from fastapi import APIRouter, HTTPException, Query, Response, status
from sqlalchemy import select, update

from api.deps import AdminDep, BusinessDep, KeyDep, RunsDep, SessionDep, SettingsDep
from api.problems import problems
from contracts.statuses import EventStatus
from db.models import ApiKey, Business, Event
from db.outbox import EVENT_TYPES
from service.answers import (
    agent_numbers,
    business_answer,
    register_agent_number,
    remove_agent_number,
)
from service.answers import set_answer as save_answer
from service.keys import Signed, hash_api_key, issue_key, new_api_key
from service.schemas import (
    AgentNumber,
    AgentNumberIn,
    AnswerIn,
    AnswerSaved,
    BusinessCreate,
    BusinessCreated,
    BusinessPublic,
    EventPublic,
    KeyIssued,
    KeyRotation,
    RecordingsIn,
    RunCreated,
    TestCallIn,
    WebhookIn,
    WebhookPublic,
    WebhookRegistered,
)
from service.signing import new_signing_secret

router = APIRouter(prefix="/v1/businesses", tags=["businesses"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BusinessCreated)
async def create_business(body: BusinessCreate, session: SessionDep, _admin: AdminDep) -> BusinessCreated:
    """Create a business and its API key (returned once, stored hashed)."""
    api_key = new_api_key()
    business = Business(
        id=uuid4().hex,
        name=body.name,
        caller_id=body.caller_id,
        max_concurrent_calls=body.max_concurrent_calls,
        timezone=body.timezone,
        calling_window=body.calling_window.model_dump() if body.calling_window else None,
        api_key_hash=hash_api_key(api_key),
    )
    session.add(business)
    await session.flush()
    session.add(ApiKey(business_id=business.id, key_hash=business.api_key_hash))
    await session.flush()
    return BusinessCreated(**_public(business).model_dump(), api_key=api_key)


@router.post(
    "/me/api-key", status_code=status.HTTP_201_CREATED, response_model=KeyIssued, responses=problems(403)
)
async def rotate_key(body: KeyRotation, signed: KeyDep, session: SessionDep) -> KeyIssued:
    """A new API key, shown once. The keys before it keep working for `overlap_seconds` (so the
    systems that use them can move over), then stop; 0 stops them at once, and ends every
    dashboard session. Only the business's newest key may make one: a key in its overlap, which
    may be the one that leaked, cannot."""
    overlap = timedelta(seconds=body.overlap_seconds) if body.overlap_seconds else None
    api_key, ends = await issue_key(session, signed, overlap)
    return KeyIssued(api_key=api_key, previous_keys_end_at=ends)


@router.post(
    "/{business_id}/api-key",
    status_code=status.HTTP_201_CREATED,
    response_model=KeyIssued,
    responses=problems(404),
)
async def replace_keys(business_id: str, session: SessionDep, _admin: AdminDep) -> KeyIssued:
    """For the operator, when a key has leaked: every key of the business stops now, its dashboard
    sessions end, and a new key is made (shown once)."""
    business = await session.get(Business, business_id)
    if business is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such business")
    api_key, ends = await issue_key(session, Signed(business, 0), None)
    return KeyIssued(api_key=api_key, previous_keys_end_at=ends)


@router.get("/me", response_model=BusinessPublic)
async def read_my_business(business: BusinessDep) -> BusinessPublic:
    """The business the API key belongs to."""
    return _public(business)


@router.get("/me/answer", response_model=AnswerIn, response_model_exclude_none=True)
async def read_answer(business: BusinessDep) -> AnswerIn:
    """What the business's answered calls do, unless a run says otherwise (`options.answer`)."""
    return business_answer(business)


@router.put("/me/answer", response_model=AnswerSaved, response_model_exclude_none=True)
async def set_answer(body: AnswerIn, business: BusinessDep, session: SessionDep) -> AnswerSaved:
    """Choose what the business's answered calls do from now on: runs started after this take it,
    runs under way keep theirs. A `connect` answer's number must be a registered agent number."""
    secret = await save_answer(session, business, body)
    return AnswerSaved(**body.model_dump(), signing_secret=secret)


@router.get("/me/recordings", response_model=RecordingsIn)
async def read_recordings(business: BusinessDep) -> RecordingsIn:
    """How long the business keeps its calls' recordings (an answer with `"record": true` makes them)."""
    return RecordingsIn(retention_days=business.recording_retention_days)


@router.put("/me/recordings", response_model=RecordingsIn)
async def set_recordings(body: RecordingsIn, business: BusinessDep, session: SessionDep) -> RecordingsIn:
    """Keep recordings for `retention_days` (then they are deleted at Twilio, hourly), or for good
    (null). It applies to every recording the business has, made before or after."""
    business.recording_retention_days = body.retention_days
    session.add(business)
    return body


@router.post("/me/test-call", status_code=status.HTTP_201_CREATED, response_model=RunCreated)
async def test_call(body: TestCallIn, business: BusinessDep, runs: RunsDep) -> RunCreated:
    """Call a number (yours) to hear what the business's answered calls do, or what `answer` would
    do: one call, as a run of one lead, so under the line cap and the do-not-call list like any
    other, at any hour. Follow it as a run."""
    return await runs.start_test_call(business, body.phone, body.answer)


@router.get("/me/agent-numbers", response_model=list[AgentNumber])
async def list_agent_numbers(business: BusinessDep, session: SessionDep) -> list[AgentNumber]:
    """The numbers the business's answers may connect calls to."""
    return await agent_numbers(session, business)


@router.put("/me/agent-numbers/{phone}", response_model=AgentNumber)
async def put_agent_number(
    phone: str, body: AgentNumberIn, business: BusinessDep, session: SessionDep
) -> AgentNumber:
    """Register a number (E.164) that answers may connect calls to: an agent, a desk, an IVR."""
    return await register_agent_number(session, business, phone, body.label)


@router.delete("/me/agent-numbers/{phone}", status_code=status.HTTP_204_NO_CONTENT, responses=problems(404))
async def delete_agent_number(phone: str, business: BusinessDep, session: SessionDep) -> Response:
    """Take a number off the agent numbers: calls of runs that connect to it are no longer placed."""
    await remove_agent_number(session, business, phone)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.put("/me/webhook", response_model=WebhookRegistered)
async def set_webhook(
    body: WebhookIn, business: BusinessDep, session: SessionDep, settings: SettingsDep
) -> WebhookRegistered:
    """Send the business's events (`call.completed` for every attempt's outcome, `run.completed`
    when a run ends) to this URL, signed per the Standard Webhooks specification. The signing secret
    is made on first registration and kept when the URL changes, unless `rotate_secret`; it is in
    the answer only when it is made."""
    url = str(body.url)
    if settings.ENVIRONMENT == "production":
        _public_https_only(url)
    secret = None
    if business.webhook_secret is None or body.rotate_secret:
        secret = new_signing_secret()
        business.webhook_secret = secret
    business.webhook_url = url
    await session.flush()
    return WebhookRegistered(url=url, events=list(EVENT_TYPES), signing_secret=secret)


@router.get(
    "/me/webhook",
    response_model=WebhookPublic,
    responses={404: {"description": "No webhook is registered."}},
)
async def read_webhook(business: BusinessDep) -> WebhookPublic:
    """The registered webhook (its secret is shown only when it is made)."""
    if business.webhook_url is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no webhook is registered")
    return WebhookPublic(url=business.webhook_url, events=list(EVENT_TYPES))


@router.delete("/me/webhook", status_code=status.HTTP_204_NO_CONTENT)
async def delete_webhook(business: BusinessDep, session: SessionDep) -> Response:
    """Stop sending events: none are recorded from now on, and those not yet delivered are dropped
    (listed as `failed`). The signing secret is forgotten."""
    business.webhook_url = None
    business.webhook_secret = None
    await session.execute(
        update(Event)
        .where(Event.business_id == business.id, Event.status == EventStatus.PENDING)
        .values(status=EventStatus.FAILED, last_error="the webhook was removed")
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/me/events", response_model=list[EventPublic])
async def list_events(
    business: BusinessDep,
    session: SessionDep,
    event_status: Annotated[EventStatus | None, Query(alias="status")] = None,
    run_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[EventPublic]:
    """The business's events, newest first, with how their delivery went."""
    query = select(Event).where(Event.business_id == business.id)
    if event_status is not None:
        query = query.where(Event.status == event_status)
    if run_id is not None:
        query = query.where(Event.run_id == run_id)
    events = await session.scalars(query.order_by(Event.created_at.desc(), Event.id).limit(limit))
    return [
        EventPublic(
            id=e.id,
            type=e.type,
            run_id=e.run_id,
            lead_id=e.lead_id,
            attempt=e.attempt,
            status=e.status,
            attempts=e.attempts,
            last_status_code=e.last_status_code,
            last_error=e.last_error,
            created_at=e.created_at,
            next_attempt_at=e.next_attempt_at if e.status == EventStatus.PENDING else None,
            delivered_at=e.delivered_at,
        )
        for e in events
    ]


def _public_https_only(url: str) -> None:
    """In production a webhook is https and not at a loopback, private or link-local address
    named literally (a business must not aim our workers at our own network)."""
    parts = urlsplit(url)
    if parts.scheme != "https":
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the webhook URL must use https")
    host = (parts.hostname or "").lower()
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or host.endswith((".localhost", ".local", ".internal")):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, f"the webhook host {host} is not a public name"
            ) from None
        return
    if not address.is_global:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"the webhook address {host} is not a public address"
        )


def _public(business: Business) -> BusinessPublic:
    return BusinessPublic(
        id=business.id,
        name=business.name,
        caller_id=business.caller_id,
        max_concurrent_calls=business.max_concurrent_calls,
        timezone=business.timezone,
    )
