"""The FastAPI application: create_app() and its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI

from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_common.grpc_server import client_channel
from cai_gateway import problems
from cai_gateway.api.routes import health, runs, threads
from cai_gateway.config import Settings
from cai_gateway.readiness import Readiness

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway app."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        channel = client_channel(settings.orchestrator_addr)
        app.state.orchestrator = OrchestratorStub(channel)
        app.state.readiness = Readiness(channel)
        if settings.allow_anonymous:
            log.warning(
                "anonymous access is enabled: every caller acts as tenant %r; never do this "
                "outside local development",
                settings.anonymous_tenant,
            )
        try:
            yield
        finally:
            app.state.shutdown_event.set()
            await channel.close()

    app = FastAPI(
        title="Cai gateway",
        version="0.1.0",
        description=(
            "LangGraph-Server-compatible API for Cai: threads, runs and resumable SSE streams."
        ),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.shutdown_event = anyio.Event()
    problems.install(app)
    app.include_router(health.router)
    app.include_router(threads.router)
    app.include_router(runs.router)
    return app
