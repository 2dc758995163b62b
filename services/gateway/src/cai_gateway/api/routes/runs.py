"""Runs on threads: create, stream, join, get, list, cancel (LangGraph Server's routes)."""

from __future__ import annotations

from typing import Annotated, Literal

import orjson
from fastapi import APIRouter, Header, Query, Request, Response
from sse_starlette import EventSourceResponse

from cai.v1 import orchestrator_pb2 as pb
from cai_gateway.convert import create_run_request
from cai_gateway.deps import OrchestratorDep, PrincipalDep, SettingsDep
from cai_gateway.schemas import RunCreate
from cai_gateway.sse import open_stream

router = APIRouter(tags=["runs"])

JSON = "application/json"
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", max_length=256)]
LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", max_length=64)]


def _sse(request: Request, body: object, headers: dict[str, str] | None = None) -> Response:
    settings = request.app.state.settings
    return EventSourceResponse(
        body,  # type: ignore[arg-type]
        ping=settings.sse_ping_seconds,
        headers=headers,
        shutdown_event=request.app.state.shutdown_event,
        shutdown_grace_period=settings.shutdown_grace_seconds,
    )


@router.post("/threads/{thread_id}/runs")
async def create_run(
    thread_id: str,
    body: RunCreate,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a background run."""
    reply = await orch.CreateRun(
        create_run_request(principal, thread_id, body, idempotency_key),
        timeout=settings.rpc_timeout_seconds,
    )
    run = orjson.loads(reply.json)
    location = f"/threads/{thread_id}/runs/{run['run_id']}"
    return Response(reply.json, media_type=JSON, headers={"Content-Location": location})


@router.post("/threads/{thread_id}/runs/stream")
async def create_and_stream_run(
    thread_id: str,
    body: RunCreate,
    request: Request,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a run and stream its events (SSE). Reconnect at the Location with Last-Event-ID."""
    reply = await orch.CreateRun(
        create_run_request(principal, thread_id, body, idempotency_key),
        timeout=settings.rpc_timeout_seconds,
    )
    run_id = orjson.loads(reply.json)["run_id"]
    stream = await open_stream(
        orch,
        pb.StreamRunRequest(
            principal=principal,
            thread_id=thread_id,
            run_id=run_id,
            cancel_on_disconnect=body.on_disconnect == "cancel",
        ),
        request.app.state.shutdown_event,
    )
    location = f"/threads/{thread_id}/runs/{run_id}"
    return _sse(request, stream, {"Location": f"{location}/stream", "Content-Location": location})


@router.get("/threads/{thread_id}/runs/{run_id}/stream")
async def join_run_stream(
    thread_id: str,
    run_id: str,
    request: Request,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    last_event_id: LastEventId = None,
    cancel_on_disconnect: bool = False,
) -> Response:
    """Join a run's event stream; with Last-Event-ID, resume right after that event."""
    stream = await open_stream(
        orch,
        pb.StreamRunRequest(
            principal=principal,
            thread_id=thread_id,
            run_id=run_id,
            after_event_id=last_event_id or "",
            cancel_on_disconnect=cancel_on_disconnect,
        ),
        request.app.state.shutdown_event,
    )
    return _sse(request, stream)


@router.get("/threads/{thread_id}/runs/{run_id}")
async def get_run(
    thread_id: str,
    run_id: str,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
) -> Response:
    """Get a run."""
    reply = await orch.GetRun(
        pb.GetRunRequest(principal=principal, thread_id=thread_id, run_id=run_id),
        timeout=settings.rpc_timeout_seconds,
    )
    return Response(reply.json, media_type=JSON)


@router.get("/threads/{thread_id}/runs")
async def list_runs(
    thread_id: str,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0)] = 0,
    status: Literal["pending", "running", "success", "error", "timeout", "interrupted"]
    | None = None,
) -> Response:
    """List a thread's runs, newest first."""
    reply = await orch.ListRuns(
        pb.ListRunsRequest(
            principal=principal,
            thread_id=thread_id,
            limit=limit,
            offset=offset,
            status=status or "",
        ),
        timeout=settings.rpc_timeout_seconds,
    )
    return Response(reply.json, media_type=JSON)


@router.post("/threads/{thread_id}/runs/{run_id}/cancel")
async def cancel_run(
    thread_id: str,
    run_id: str,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    wait: bool = False,
    action: Literal["interrupt", "rollback"] = "interrupt",
) -> Response:
    """Cancel a run (a no-op that reports the final status if it already ended)."""
    reply = await orch.CancelRun(
        pb.CancelRunRequest(
            principal=principal, thread_id=thread_id, run_id=run_id, action=action, wait=wait
        ),
        timeout=settings.rpc_timeout_seconds + (60 if wait else 0),
    )
    return Response(reply.json, media_type=JSON)
