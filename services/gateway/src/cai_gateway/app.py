"""The FastAPI application: create_app() and its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_common.grpc_server import client_channel
from cai_common.settings import redact_url
from cai_common.telemetry import tracing_enabled
from cai_gateway import problems
from cai_gateway.api import openapi
from cai_gateway.api.routes import assistants, chat, health, openai, runs, threads
from cai_gateway.api.routes.openai import THREAD_HEADER
from cai_gateway.auth import KeyRing
from cai_gateway.config import Settings
from cai_gateway.limits import Limiter
from cai_gateway.middleware import AccessLogMiddleware, BodyLimitMiddleware, MetricsMiddleware
from cai_gateway.readiness import Readiness

log = logging.getLogger(__name__)

DESCRIPTION = """
Cai's HTTP API, in three dialects over the same durable runs:

* **LangGraph Server** (`/threads`, `/runs`, `/assistants`): the official `langgraph-sdk` works
  unchanged. Streams are resumable: every event has a unique, increasing `id`; reconnect at the
  `Location` header with `Last-Event-ID`.
* **OpenAI** (`/v1/chat/completions`, `/v1/models`): `model` is an assistant id; stateless unless
  `X-Cai-Thread-Id` (or `metadata.thread_id`) names a thread.
* **Tasks** (`/chat`): start a task, stream it as `{"type", "data"}` events, stop it.

Authenticate with `Authorization: Bearer <key>` or `X-Api-Key: <key>`. Errors are RFC 9457
problem details (`application/problem+json`). Limits per key: requests per second (429 with
`Retry-After`), concurrent streams (429), body size (413), message length and count (422).
"""

TAGS = [
    {"name": "threads", "description": "Conversations and their state (LangGraph Server)."},
    {"name": "runs", "description": "Runs on threads or stateless (LangGraph Server)."},
    {"name": "assistants", "description": "Personas from the assistants file (read-only)."},
    {"name": "openai", "description": "OpenAI-compatible chat completions and models."},
    {"name": "chat tasks", "description": "The simple task API."},
    {"name": "health", "description": "Probes."},
]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the gateway app."""
    settings = settings or Settings()
    keyring = KeyRing(settings.api_keys_file, settings.api_keys_reload_seconds)
    keyring.load()  # a missing or invalid keys file stops the gateway here, with the reason
    tls = settings.grpc_tls()  # so do incomplete or unreadable TLS files

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        channel = client_channel(
            settings.orchestrator_addr, tls=tls, server_name=settings.grpc_tls_server_name
        )
        app.state.orchestrator = OrchestratorStub(channel)
        app.state.readiness = Readiness(channel)
        limiter: Limiter | None = None
        if settings.redis_url:
            limiter = Limiter(
                settings.redis_url,
                timeout_s=settings.limits_redis_timeout_seconds,
                retry_s=settings.limits_redis_retry_seconds,
                fail_open=settings.limits_fail_open,
                slot_ttl_s=settings.stream_slot_ttl_seconds,
            )
            log.info(
                "limits in Redis",
                extra={
                    "redis": redact_url(settings.redis_url),
                    "rate_per_second": settings.rate_limit_per_second,
                    "burst": settings.rate_limit_burst,
                    "max_concurrent_streams": settings.max_concurrent_streams,
                },
            )
        else:
            log.warning("REDIS_URL is empty: rate limits and stream caps are off")
        app.state.limiter = limiter
        if settings.allow_anonymous:
            log.warning(
                "anonymous access is enabled: every caller without a valid key acts as tenant "
                "%r; never do this outside local development",
                settings.anonymous_tenant,
            )
        elif not keyring.keys:
            log.warning("no API keys are configured (API_KEYS_FILE): every request gets 401")
        try:
            yield
        finally:
            app.state.shutdown_event.set()
            if limiter is not None:
                await limiter.close()
            await channel.close()

    app = FastAPI(
        title="Cai gateway",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        # The API's map is public only when asked for (PUBLIC_DOCS); app.openapi() always works.
        openapi_url="/openapi.json" if settings.public_docs else None,
        docs_url="/docs" if settings.public_docs else None,
        redoc_url="/redoc" if settings.public_docs else None,
    )
    app.state.settings = settings
    app.state.keyring = keyring
    app.state.limiter = None
    app.state.shutdown_event = anyio.Event()
    problems.install(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    origins = settings.cors_origin_list()
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "X-Api-Key",
                "Content-Type",
                "Last-Event-ID",
                "Idempotency-Key",
                THREAD_HEADER,
            ],
            expose_headers=["Location", "Content-Location", "Retry-After", THREAD_HEADER],
            max_age=600,
        )
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(AccessLogMiddleware)
    for module in (health, threads, runs, assistants, openai, chat):
        app.include_router(module.router)
    openapi.install(app)
    if tracing_enabled():
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        # Server spans continue a caller's W3C traceparent; health and metrics are not traced,
        # and no span per ASGI send/receive (an SSE stream sends once per event batch).
        FastAPIInstrumentor.instrument_app(
            app, excluded_urls="healthz,readyz,metrics", exclude_spans=["receive", "send"]
        )
    return app
