"""Threads: LangGraph Server's /threads routes."""

from __future__ import annotations

from fastapi import APIRouter, Response

from cai.v1 import orchestrator_pb2 as pb
from cai_gateway.deps import OrchestratorDep, PrincipalDep, SettingsDep
from cai_gateway.schemas import ThreadCreate

router = APIRouter(tags=["threads"])

JSON = "application/json"


@router.post("/threads")
async def create_thread(
    body: ThreadCreate, principal: PrincipalDep, orch: OrchestratorDep, settings: SettingsDep
) -> Response:
    """Create a thread."""
    import orjson

    reply = await orch.CreateThread(
        pb.CreateThreadRequest(
            principal=principal,
            thread_id=str(body.thread_id) if body.thread_id else "",
            metadata_json=orjson.dumps(body.metadata or {}),
            if_exists=body.if_exists or "",
        ),
        timeout=settings.rpc_timeout_seconds,
    )
    return Response(reply.json, media_type=JSON)


@router.get("/threads/{thread_id}")
async def get_thread(
    thread_id: str, principal: PrincipalDep, orch: OrchestratorDep, settings: SettingsDep
) -> Response:
    """Get a thread."""
    reply = await orch.GetThread(
        pb.GetThreadRequest(principal=principal, thread_id=thread_id),
        timeout=settings.rpc_timeout_seconds,
    )
    return Response(reply.json, media_type=JSON)


@router.get("/threads/{thread_id}/state")
async def get_thread_state(
    thread_id: str, principal: PrincipalDep, orch: OrchestratorDep, settings: SettingsDep
) -> Response:
    """Get a thread's latest state."""
    reply = await orch.GetThreadState(
        pb.GetThreadStateRequest(principal=principal, thread_id=thread_id),
        timeout=settings.rpc_timeout_seconds,
    )
    return Response(reply.json, media_type=JSON)


@router.get("/threads/{thread_id}/state/{checkpoint_id}")
async def get_thread_state_at(
    thread_id: str,
    checkpoint_id: str,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
) -> Response:
    """Get a thread's state at a checkpoint."""
    reply = await orch.GetThreadState(
        pb.GetThreadStateRequest(
            principal=principal, thread_id=thread_id, checkpoint_id=checkpoint_id
        ),
        timeout=settings.rpc_timeout_seconds,
    )
    return Response(reply.json, media_type=JSON)
