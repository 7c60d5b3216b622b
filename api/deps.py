"""Dependencies: the request's session, the Temporal client, settings, metrics and who is calling."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import Client

from api.fairness import RequestLimiter, retry_after
from api.metrics import ApiMetrics
from db.models import Business
from outbound_dialer.settings import Settings
from service.dnc import DncService
from service.keys import Signed, business_for_key, same_secret
from service.runs import RunService

_bearer = HTTPBearer(auto_error=False)


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A session that commits when the route succeeds and rolls back when it fails.

    It is scoped to the route function, so the commit happens before the response is sent: a
    client told 201 or 204 reads its own write on the next request, and a commit that fails is
    answered as an error, never as a success."""
    async with request.app.state.sessions() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


# The small dependencies below are coroutines: FastAPI runs a plain function dependency on a worker
# thread, which costs a thread hop on every request for no blocking work.


async def get_temporal(request: Request) -> Client:
    """The Temporal client made at start-up."""
    client: Client = request.app.state.temporal
    return client


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> ApiMetrics:
    """The app's metrics."""
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
TemporalDep = Annotated[Client, Depends(get_temporal)]
SettingsDep = Annotated[Settings, Depends(get_app_settings)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]


async def get_runs(session: SessionDep, temporal: TemporalDep, settings: SettingsDep) -> RunService:
    """The runs service over the request's session."""
    return RunService(session, temporal, settings)


async def get_dnc(session: SessionDep) -> DncService:
    """The do-not-call service over the request's session."""
    return DncService(session)


RunsDep = Annotated[RunService, Depends(get_runs, scope="function")]
DncDep = Annotated[DncService, Depends(get_dnc, scope="function")]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail, headers={"WWW-Authenticate": "Bearer"})


async def require_admin(credentials: Credentials, settings: SettingsDep) -> None:
    """Only the admin token passes."""
    if credentials is None:
        raise _unauthorized("send the admin token as 'Authorization: Bearer <token>'")
    if not same_secret(credentials.credentials, settings.ADMIN_TOKEN.get_secret_value()):
        raise _unauthorized("invalid admin token")


async def current_key(request: Request, credentials: Credentials, session: SessionDep) -> Signed:
    """The business whose API key the request carries, and the key, within its share of requests."""
    if credentials is None:
        raise _unauthorized("send your business API key as 'Authorization: Bearer <api_key>'")
    signed = await business_for_key(session, credentials.credentials)
    if signed is None:
        raise _unauthorized("invalid API key (or one that was revoked or has expired)")
    within_share(request, signed.business.id)
    return signed


async def current_business(signed: Annotated[Signed, Depends(current_key)]) -> Business:
    """The business whose API key the request carries."""
    return signed.business


def within_share(request: Request, business_id: str) -> None:
    """A 429 with Retry-After for a business past its requests a second (BUSINESS_REQUESTS_PER_SECOND)."""
    limiter: RequestLimiter = request.app.state.limiter
    wait = limiter.wait_for(business_id)
    if wait > 0:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"more requests than {limiter.rate:g} a second; try again shortly",
            headers={"Retry-After": retry_after(wait)},
        )


AdminDep = Annotated[None, Depends(require_admin)]
BusinessDep = Annotated[Business, Depends(current_business)]
KeyDep = Annotated[Signed, Depends(current_key)]
