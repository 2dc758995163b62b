"""Threads: LangGraph Server's /threads routes."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any
from uuid import UUID

import grpc
import orjson
from fastapi import APIRouter, Query, Response

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_gateway.api.openapi import ERRORS, json_ok
from cai_gateway.api.routing import OrjsonRoute
from cai_gateway.config import Settings
from cai_gateway.convert import dumps
from cai_gateway.deps import OrchestratorDep, PrincipalDep, SettingsDep
from cai_gateway.models import CheckpointConfig, Thread, ThreadState
from cai_gateway.problems import Problem
from cai_gateway.schemas import (
    CheckpointIdPath,
    CheckpointIdQuery,
    HistoryQuery,
    StateAtCheckpoint,
    ThreadCreate,
    ThreadPatch,
    ThreadSearch,
    ThreadStateUpdate,
)

router = APIRouter(tags=["threads"], responses=ERRORS, route_class=OrjsonRoute)

JSON = "application/json"


def _json(raw: bytes) -> Response:
    return Response(raw, media_type=JSON)


@router.post("/threads", responses=json_ok(Thread))
async def create_thread(
    body: ThreadCreate, principal: PrincipalDep, orch: OrchestratorDep, settings: SettingsDep
) -> Response:
    """Create a thread."""
    reply = await orch.CreateThread(
        pb.CreateThreadRequest(
            principal=principal,
            thread_id=str(body.thread_id) if body.thread_id else "",
            metadata_json=orjson.dumps(body.metadata or {}),
            if_exists=body.if_exists or "",
        ),
        timeout=settings.rpc_timeout_seconds,
    )
    return _json(reply.json)


@router.post("/threads/search", responses=json_ok(list[Thread]))
async def search_threads(
    body: ThreadSearch, principal: PrincipalDep, orch: OrchestratorDep, settings: SettingsDep
) -> Response:
    """Search the caller's threads by metadata and status, newest first."""
    if body.values:
        raise Problem(422, "values: searching threads by state values is not supported")
    if body.ids is not None:
        return _json(orjson.dumps(await _threads_by_id(body, principal, orch, settings)))
    reply = await orch.SearchThreads(
        pb.SearchThreadsRequest(
            principal=principal,
            metadata_json=dumps(body.metadata or {}),
            status=body.status or "",
            limit=body.limit,
            offset=body.offset,
        ),
        timeout=settings.rpc_timeout_seconds,
    )
    return _json(reply.json)


async def _threads_by_id(
    body: ThreadSearch,
    principal: common_pb2.Principal,
    orch: OrchestratorStub,
    settings: Settings,
) -> list[dict[str, Any]]:
    async def one(thread_id: UUID) -> dict[str, Any] | None:
        try:
            reply = await orch.GetThread(
                pb.GetThreadRequest(principal=principal, thread_id=str(thread_id)),
                timeout=settings.rpc_timeout_seconds,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        thread: dict[str, Any] = orjson.loads(reply.json)
        return thread

    ids = list(dict.fromkeys(body.ids or []))
    found = [t for t in await asyncio.gather(*(one(i) for i in ids)) if t is not None]
    metadata = body.metadata or {}
    found = [
        t
        for t in found
        if all(t.get("metadata", {}).get(k) == v for k, v in metadata.items())
        and (body.status is None or t.get("status") == body.status)
    ]
    return found[body.offset : body.offset + body.limit]


@router.get("/threads/{thread_id}", responses=json_ok(Thread))
async def get_thread(
    thread_id: UUID, principal: PrincipalDep, orch: OrchestratorDep, settings: SettingsDep
) -> Response:
    """Get a thread."""
    reply = await orch.GetThread(
        pb.GetThreadRequest(principal=principal, thread_id=str(thread_id)),
        timeout=settings.rpc_timeout_seconds,
    )
    return _json(reply.json)


@router.patch("/threads/{thread_id}", responses=json_ok(Thread))
async def update_thread(
    thread_id: UUID,
    body: ThreadPatch,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
) -> Response:
    """Merge metadata into a thread."""
    reply = await orch.UpdateThread(
        pb.UpdateThreadRequest(
            principal=principal, thread_id=str(thread_id), metadata_json=dumps(body.metadata)
        ),
        timeout=settings.rpc_timeout_seconds,
    )
    return _json(reply.json)


@router.delete("/threads/{thread_id}", status_code=204, response_class=Response)
async def delete_thread(
    thread_id: UUID, principal: PrincipalDep, orch: OrchestratorDep, settings: SettingsDep
) -> Response:
    """Delete a thread with its state and runs (an active run is cancelled first)."""
    await orch.DeleteThread(
        pb.GetThreadRequest(principal=principal, thread_id=str(thread_id)),
        timeout=settings.rpc_timeout_seconds,
    )
    return Response(status_code=204)


@router.get("/threads/{thread_id}/state", responses=json_ok(ThreadState))
async def get_thread_state(
    thread_id: UUID, principal: PrincipalDep, orch: OrchestratorDep, settings: SettingsDep
) -> Response:
    """Get a thread's latest state."""
    reply = await orch.GetThreadState(
        pb.GetThreadStateRequest(principal=principal, thread_id=str(thread_id)),
        timeout=settings.rpc_timeout_seconds,
    )
    return _json(reply.json)


@router.post("/threads/{thread_id}/state", responses=json_ok(CheckpointConfig))
async def update_thread_state(
    thread_id: UUID,
    body: ThreadStateUpdate,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
) -> Response:
    """Write an update to a thread's state (optionally as a node, or forking a checkpoint)."""
    reply = await orch.UpdateThreadState(
        pb.UpdateThreadStateRequest(
            principal=principal,
            thread_id=str(thread_id),
            values_json=dumps(body.values),
            as_node=body.as_node or "",
            checkpoint_id=body.target_checkpoint(),
        ),
        timeout=settings.rpc_timeout_seconds,
    )
    return _json(reply.json)


@router.post("/threads/{thread_id}/state/checkpoint", responses=json_ok(ThreadState))
async def get_thread_state_at_checkpoint(
    thread_id: UUID,
    body: StateAtCheckpoint,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
) -> Response:
    """Get a thread's state at a checkpoint given as an object."""
    reply = await orch.GetThreadState(
        pb.GetThreadStateRequest(
            principal=principal,
            thread_id=str(thread_id),
            checkpoint_id=body.checkpoint.checkpoint_id or "",
        ),
        timeout=settings.rpc_timeout_seconds,
    )
    return _json(reply.json)


@router.get("/threads/{thread_id}/state/{checkpoint_id}", responses=json_ok(ThreadState))
async def get_thread_state_at(
    thread_id: UUID,
    checkpoint_id: CheckpointIdPath,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
) -> Response:
    """Get a thread's state at a checkpoint."""
    reply = await orch.GetThreadState(
        pb.GetThreadStateRequest(
            principal=principal, thread_id=str(thread_id), checkpoint_id=checkpoint_id
        ),
        timeout=settings.rpc_timeout_seconds,
    )
    return _json(reply.json)


async def _history(
    orch: OrchestratorStub,
    principal: common_pb2.Principal,
    settings: Settings,
    thread_id: UUID,
    limit: int,
    before: str,
    metadata: dict[str, Any] | None,
) -> Response:
    reply = await orch.GetThreadHistory(
        pb.GetThreadHistoryRequest(
            principal=principal,
            thread_id=str(thread_id),
            limit=1000 if metadata or before else limit,
            before_checkpoint_id=before,
        ),
        timeout=settings.rpc_timeout_seconds,
    )
    if not metadata and not before:
        return _json(reply.json)
    states: list[dict[str, Any]] = orjson.loads(reply.json)
    ids = [(s.get("checkpoint") or {}).get("checkpoint_id") for s in states]
    if before in ids:
        # The checkpointer ignored `before` (the Redis saver does): page here instead.
        states = states[ids.index(before) + 1 :]
    if metadata:
        states = [
            s
            for s in states
            if all((s.get("metadata") or {}).get(k) == v for k, v in metadata.items())
        ]
    return _json(orjson.dumps(states[:limit]))


@router.get("/threads/{thread_id}/history", responses=json_ok(list[ThreadState]))
async def get_thread_history(
    thread_id: UUID,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    before: CheckpointIdQuery = None,
) -> Response:
    """A thread's past states, newest first."""
    return await _history(orch, principal, settings, thread_id, limit, before or "", None)


@router.post("/threads/{thread_id}/history", responses=json_ok(list[ThreadState]))
async def search_thread_history(
    thread_id: UUID,
    body: HistoryQuery,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
) -> Response:
    """A thread's past states, newest first, optionally filtered by checkpoint metadata."""
    return await _history(
        orch, principal, settings, thread_id, body.limit, body.before_id(), body.metadata
    )
