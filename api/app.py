"""The FastAPI application factory."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI, Request, Response, status
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DBAPIError
from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import Scope
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from api.bodies import add_thread_parsed_schemas
from api.dashboard_session import SESSION_COOKIE, SignInRequired, sign_in_redirect
from api.dashboard_views import STATIC_DIR
from api.fairness import RequestLimiter
from api.metrics import ApiMetrics, MetricsMiddleware
from api.problems import problems
from api.request_guards import BodyLimitMiddleware, NulInUrlMiddleware
from api.routes import businesses, dashboard, dnc, runs, webhooks
from db.engine import create_engine, create_sessionmaker
from outbound_dialer.observability import serve_metrics
from outbound_dialer.settings import Settings, get_settings
from outbound_dialer.temporal_client import connect_temporal
from service.errors import (
    ListInvalid,
    NotNewestKey,
    NumberNotRegistered,
    PhoneNotListed,
    RunNotFound,
    RunNotLive,
    ServiceError,
    TooManySessions,
    UploadUnreadable,
    VoiceAppUnsigned,
)
from service.keys import business_for_key, business_for_session
from telephony.twilio_client import CallbackUrls

log = logging.getLogger(__name__)

# How long a client is asked to wait before trying again while the database cannot be reached.
DATABASE_RETRY_AFTER_SECONDS = 5
# What reaching the database raises when it is away: the driver's socket error on connect (the API
# makes no other connections of its own: the Temporal client raises RPCError), a server that is
# starting up or shutting down, or a connection lost during a statement (a DBAPIError that
# invalidated its connection).
_DATABASE_AWAY = (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError)

# Lists of leads or numbers: their bodies may be MAX_UPLOAD_BYTES, every other one MAX_REQUEST_BYTES.
LIST_UPLOADS = (
    ("POST", "/v1/runs"),
    ("POST", "/v1/runs/import"),
    ("POST", "/v1/dnc"),
    ("POST", "/v1/dnc/import"),
    ("POST", "/ui/runs/new"),
    ("POST", "/ui/dnc/add"),
)


def create_app(settings: Settings | None = None, temporal: Client | None = None) -> FastAPI:
    """Build the API. Clients are made in the lifespan and closed after; tests may pass their own
    Temporal client."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings.DATABASE_URL)
        app.state.settings = settings
        app.state.sessions = create_sessionmaker(engine)
        app.state.temporal = temporal or await connect_temporal(settings)
        apart = (
            serve_metrics(settings.API_METRICS_ADDRESS, metrics.registry)
            if settings.API_METRICS_ADDRESS
            else None
        )
        try:
            yield
        finally:
            if apart is not None:
                apart.shutdown()
                apart.server_close()
            await engine.dispose()

    app = FastAPI(
        title="Outbound dialer",
        version="1",
        summary="Outbound call campaigns on Temporal and Twilio.",
        lifespan=lifespan,
        responses=problems(400, 413),
        docs_url="/docs" if settings.DOCS_ENABLED else None,
        redoc_url="/redoc" if settings.DOCS_ENABLED else None,
        openapi_url="/openapi.json" if settings.DOCS_ENABLED else None,
    )
    app.include_router(businesses.router, responses=problems(401, 429))
    app.include_router(runs.router, responses=problems(401, 429))
    app.include_router(dnc.router, responses=problems(401, 429))
    app.include_router(webhooks.router)
    app.include_router(dashboard.router)
    add_thread_parsed_schemas(app)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    app.add_exception_handler(SignInRequired, sign_in_redirect)  # type: ignore[arg-type]
    app.add_exception_handler(ServiceError, refused)
    for error_type in (*_DATABASE_AWAY, DBAPIError):
        app.add_exception_handler(error_type, database_unavailable)
    app.add_exception_handler(RPCError, temporal_unavailable)
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.MAX_REQUEST_BYTES,
        upload_limit=settings.MAX_UPLOAD_BYTES,
        upload_routes=LIST_UPLOADS,
        may_upload=_from_a_business,
    )
    app.add_middleware(NulInUrlMiddleware)
    app.state.metrics = metrics = ApiMetrics()
    # Made once: its key is derived from the auth token.
    app.state.callback_urls = CallbackUrls.of(settings)
    app.state.limiter = RequestLimiter(settings.BUSINESS_REQUESTS_PER_SECOND, settings.BUSINESS_REQUEST_BURST)
    # Added after the guards, so outside them: the requests they refuse are counted too.
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.METRICS_ENABLED:
        # Unauthenticated, as Prometheus scrapes it: keep /metrics off the public proxy, or turn it off.
        app.add_route("/metrics", metrics.endpoint, include_in_schema=False)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process is up."""
        return {"status": "ok"}

    return app


# What each refusal of the service is in HTTP.
REFUSALS: tuple[tuple[type[ServiceError], int], ...] = (
    (RunNotFound, status.HTTP_404_NOT_FOUND),
    (PhoneNotListed, status.HTTP_404_NOT_FOUND),
    (RunNotLive, status.HTTP_409_CONFLICT),
    (NotNewestKey, status.HTTP_403_FORBIDDEN),
    (TooManySessions, status.HTTP_409_CONFLICT),
    (ListInvalid, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (UploadUnreadable, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (NumberNotRegistered, status.HTTP_422_UNPROCESSABLE_CONTENT),
    (VoiceAppUnsigned, status.HTTP_422_UNPROCESSABLE_CONTENT),
)


async def _from_a_business(scope: Scope) -> bool:
    """Whether a request carries a working business API key or dashboard session: only then is a
    list's large body read."""
    headers = Headers(scope=scope)
    authorization = headers.get("authorization", "")
    token = cookie_parser(headers.get("cookie", "")).get(SESSION_COOKIE)
    try:
        async with scope["app"].state.sessions() as session:
            if authorization.lower().startswith("bearer "):
                return await business_for_key(session, authorization[7:].strip()) is not None
            if token:
                return await business_for_session(session, token) is not None
    except (*_DATABASE_AWAY, DBAPIError):
        return True  # the route itself answers 503 when it reaches the database
    return False


async def refused(request: Request, error: Exception) -> Response:
    """The service's refusal as an HTTP answer: the status its kind maps to, and the problem in
    words, or, for a list, each bad entry where it is (as FastAPI names a request's own errors)."""
    code = next((code for kind, code in REFUSALS if isinstance(error, kind)), None)
    if code is None:
        raise error
    detail = error.as_detail() if isinstance(error, ListInvalid) else str(error)
    return JSONResponse({"detail": detail}, status_code=code)


def _temporal_away(error: RPCError) -> bool:
    """Whether Temporal could not be reached (the client has tried again for a while by then):
    unavailable, out of time, or a connection that failed (reported as UNKNOWN "transport error")."""
    if error.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
        return True
    return error.status == RPCStatusCode.UNKNOWN and "transport error" in error.message


async def temporal_unavailable(request: Request, error: Exception) -> Response:
    """A 503 with Retry-After, rather than a 500, for a request that failed because Temporal could
    not be reached; any other refusal of Temporal's stays a 500."""
    if not isinstance(error, RPCError) or not _temporal_away(error):
        raise error
    log.warning("temporal unavailable", extra={"path": request.url.path, "status": error.status.name})
    return JSONResponse(
        {"detail": "Temporal is unavailable; try again shortly"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )


async def database_unavailable(request: Request, error: Exception) -> Response:
    """A 503 with Retry-After, rather than a 500, for a request that failed because the database
    could not be reached: nothing is wrong with the request, and asking again later will do."""
    if isinstance(error, DBAPIError) and not error.connection_invalidated:
        raise error  # a database error that is not an outage stays a 500
    log.warning("database unavailable", extra={"path": request.url.path, "error": repr(error)})
    return JSONResponse(
        {"detail": "the database is unavailable; try again shortly"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_SECONDS)},
    )
