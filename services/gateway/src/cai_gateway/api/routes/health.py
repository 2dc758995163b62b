"""Liveness and readiness (metrics are served on their own port, GATEWAY_METRICS_PORT)."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Request, Response

from cai_gateway.problems import problem_response
from cai_gateway.readiness import SERVING

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Readiness: this gateway serves (503 only while it shuts down); the body says whether a
    dependency is degraded (`readiness.py` explains why that does not make it unready)."""
    state = request.app.state
    if state.shutdown_event.is_set():
        return problem_response(503, "Shutting down")
    orchestrator = await state.readiness.orchestrator()
    body = {
        "status": "ok" if orchestrator == SERVING else "degraded",
        "dependencies": {"orchestrator": orchestrator},
    }
    return Response(orjson.dumps(body), media_type="application/json")
