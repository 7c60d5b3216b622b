"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from temporalio.client import Client

from api.dashboard_session import SignInRequired, sign_in_redirect
from api.dashboard_views import STATIC_DIR
from api.metrics import ApiMetrics, MetricsMiddleware
from api.routes import businesses, dashboard, dnc, runs, webhooks
from db.engine import create_engine, create_sessionmaker
from settings import Settings, get_settings
from temporal_client import connect_temporal


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
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(
        title="Outbound dialer",
        version="1",
        summary="Outbound call campaigns on Temporal and Twilio.",
        lifespan=lifespan,
    )
    app.include_router(businesses.router)
    app.include_router(runs.router)
    app.include_router(dnc.router)
    app.include_router(webhooks.router)
    app.include_router(dashboard.router)
    app.mount("/ui/static", StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    app.add_exception_handler(SignInRequired, sign_in_redirect)  # type: ignore[arg-type]
    app.state.metrics = metrics = ApiMetrics()
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.METRICS_ENABLED:
        # Unauthenticated, as Prometheus scrapes it: keep /metrics off the public proxy, or turn it off.
        app.add_route("/metrics", metrics.endpoint, include_in_schema=False)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process is up."""
        return {"status": "ok"}

    return app
