"""Liveness and readiness (metrics are served on their own port, GATEWAY_METRICS_PORT)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from cai_gateway.problems import problem_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Readiness: the orchestrator answers its health check and we are not shutting down."""
    state = request.app.state
    if state.shutdown_event.is_set():
        return problem_response(503, "Shutting down")
    if not await state.readiness.ready():
        return problem_response(503, "The orchestrator is not ready", {"Retry-After": "1"})
    return Response(b'{"status":"ok"}', media_type="application/json")
