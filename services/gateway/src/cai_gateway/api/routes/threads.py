"""Threads: LangGraph Server's /threads routes."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Query, Response

from cai_gateway.api.openapi import ERRORS, json_ok
from cai_gateway.api.routing import OrjsonRoute
from cai_gateway.deps import OrchestratorClientDep, SettingsDep, WorkMeter, WorkMeterDep
from cai_gateway.limits import message_limit_violation
from cai_gateway.models import CheckpointConfig, Thread, ThreadState
from cai_gateway.orchestrator import OrchestratorClient
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
async def create_thread(body: ThreadCreate, orch: OrchestratorClientDep) -> Response:
    """Create a thread."""
    thread_id = str(body.thread_id) if body.thread_id else ""
    return _json(await orch.create_thread(thread_id, body.metadata, body.if_exists or ""))


@router.post("/threads/search", responses=json_ok(list[Thread]))
async def search_threads(
    body: ThreadSearch, orch: OrchestratorClientDep, meter: WorkMeterDep
) -> Response:
    """Search the caller's threads by metadata and status, newest first (or by ids)."""
    if body.values:
        raise Problem(422, "values: searching threads by state values is not supported")
    ids = [str(i) for i in dict.fromkeys(body.ids or [])]
    await meter.reserve(max(body.limit, len(ids)))
    threads, read = await orch.search_threads(
        metadata=body.metadata,
        status=body.status or "",
        limit=body.limit,
        offset=body.offset,
        thread_ids=ids,
    )
    await meter.settle(read)
    return _json(threads)


@router.get("/threads/{thread_id}", responses=json_ok(Thread))
async def get_thread(thread_id: UUID, orch: OrchestratorClientDep) -> Response:
    """Get a thread."""
    return _json(await orch.get_thread(str(thread_id)))


@router.patch("/threads/{thread_id}", responses=json_ok(Thread))
async def update_thread(
    thread_id: UUID,
    body: ThreadPatch,
    orch: OrchestratorClientDep,
) -> Response:
    """Merge metadata into a thread."""
    return _json(await orch.update_thread(str(thread_id), body.metadata))


@router.delete("/threads/{thread_id}", status_code=204, response_class=Response)
async def delete_thread(thread_id: UUID, orch: OrchestratorClientDep) -> Response:
    """Delete a thread with its state and runs (an active run is cancelled first)."""
    await orch.delete_thread(str(thread_id))
    return Response(status_code=204)


@router.get("/threads/{thread_id}/state", responses=json_ok(ThreadState))
async def get_thread_state(thread_id: UUID, orch: OrchestratorClientDep) -> Response:
    """Get a thread's latest state."""
    return _json(await orch.get_state(str(thread_id)))


@router.post("/threads/{thread_id}/state", responses=json_ok(CheckpointConfig))
async def update_thread_state(
    thread_id: UUID,
    body: ThreadStateUpdate,
    orch: OrchestratorClientDep,
    settings: SettingsDep,
) -> Response:
    """Write an update to a thread's state (optionally as a node, or forking a checkpoint)."""
    why = message_limit_violation(
        body.values_messages(), settings.max_messages, settings.max_message_chars
    )
    if why:
        raise Problem(422, f"values.messages: {why}")
    config = await orch.update_state(
        str(thread_id), body.values, body.as_node or "", body.target_checkpoint()
    )
    return _json(config)


@router.post("/threads/{thread_id}/state/checkpoint", responses=json_ok(ThreadState))
async def get_thread_state_at_checkpoint(
    thread_id: UUID,
    body: StateAtCheckpoint,
    orch: OrchestratorClientDep,
) -> Response:
    """Get a thread's state at a checkpoint given as an object."""
    return _json(await orch.get_state(str(thread_id), body.checkpoint.checkpoint_id or ""))


@router.get("/threads/{thread_id}/state/{checkpoint_id}", responses=json_ok(ThreadState))
async def get_thread_state_at(
    thread_id: UUID,
    checkpoint_id: CheckpointIdPath,
    orch: OrchestratorClientDep,
) -> Response:
    """Get a thread's state at a checkpoint."""
    return _json(await orch.get_state(str(thread_id), checkpoint_id))


async def _history(
    orch: OrchestratorClient,
    meter: WorkMeter,
    thread_id: UUID,
    limit: int,
    before: str,
    metadata: dict[str, Any] | None,
) -> Response:
    asked = 1000 if metadata or before else limit
    await meter.reserve(asked)  # checkpoints count as records
    history = await orch.history(str(thread_id), asked, before)
    if not metadata and not before:
        return _json(history)
    states: list[dict[str, Any]] = orjson.loads(history)
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
    orch: OrchestratorClientDep,
    meter: WorkMeterDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    before: CheckpointIdQuery = None,
) -> Response:
    """A thread's past states, newest first."""
    return await _history(orch, meter, thread_id, limit, before or "", None)


@router.post("/threads/{thread_id}/history", responses=json_ok(list[ThreadState]))
async def search_thread_history(
    thread_id: UUID,
    body: HistoryQuery,
    orch: OrchestratorClientDep,
    meter: WorkMeterDep,
) -> Response:
    """A thread's past states, newest first, optionally filtered by checkpoint metadata."""
    return await _history(orch, meter, thread_id, body.limit, body.before_id(), body.metadata)
