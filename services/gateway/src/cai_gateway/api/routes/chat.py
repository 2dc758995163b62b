"""The task API: start a chat task, stream it, stop it, ask its status. A task is a run."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_gateway.api.openapi import ERRORS, json_ok, sse_ok
from cai_gateway.api.routing import OrjsonRoute
from cai_gateway.config import Settings
from cai_gateway.convert import message_run_request
from cai_gateway.deps import (
    LastEventIdDep,
    OrchestratorDep,
    PrincipalDep,
    SettingsDep,
    StreamSlotDep,
)
from cai_gateway.dialects import TASK_STATUS, task_events
from cai_gateway.limits import message_limit_violation
from cai_gateway.models import TaskCreated, TaskStatus
from cai_gateway.problems import Problem
from cai_gateway.runs import create_run, watch
from cai_gateway.schemas import ChatTaskCreate
from cai_gateway.sse import tracked

router = APIRouter(tags=["chat tasks"], responses=ERRORS, route_class=OrjsonRoute)

JSON = "application/json"
STREAM_DOC = (
    'SSE messages `data: {"type": "token"|"status"|"done"|"stopped"|"error", "data": ...}`, each '
    "with an `id:`; reconnect with `Last-Event-ID` to resume. `token` data is text; the stream "
    "ends after `done`, `stopped` or `error`."
)


def _status(run: dict[str, Any]) -> dict[str, Any]:
    run_id = run["run_id"]
    thread_id = run.get("thread_id")
    return {
        "task_id": run_id,
        "status": TASK_STATUS.get(run.get("status", ""), "error"),
        # A stateless task's temporary thread has the task's id and is gone when it ends.
        "thread_id": thread_id if thread_id and thread_id != run_id else None,
        "created_at": run.get("created_at"),
        "updated_at": run.get("updated_at"),
        "error": run.get("error") or None,
    }


async def _get_run(
    orch: OrchestratorStub, principal: common_pb2.Principal, task_id: str, settings: Settings
) -> dict[str, Any]:
    reply = await orch.GetRun(
        pb.GetRunRequest(principal=principal, run_id=task_id),
        timeout=settings.rpc_timeout_seconds,
    )
    run: dict[str, Any] = orjson.loads(reply.json)
    return run


@router.post("/chat", responses=json_ok(TaskCreated))
async def start_chat_task(
    body: ChatTaskCreate, principal: PrincipalDep, orch: OrchestratorDep, settings: SettingsDep
) -> Response:
    """Start answering a message; stream the answer from /chat/{task_id}/stream."""
    messages = [m.model_dump() for m in body.conversation_history or []]
    messages.append({"role": "user", "content": body.message})
    why = message_limit_violation(messages, settings.max_messages, settings.max_message_chars)
    if why:
        raise Problem(422, f"message: {why}")
    thread_id = str(body.thread_id) if body.thread_id else ""
    run = await create_run(
        orch,
        message_run_request(
            principal,
            thread_id=thread_id,
            assistant_id=body.assistant_id,
            messages=messages,
            stream_modes=["messages-tuple"],
            metadata={"api": "task"},
        ),
        settings.rpc_timeout_seconds,
    )
    created = {"task_id": run.run_id, "status": "started", "thread_id": thread_id or None}
    return Response(
        orjson.dumps(created), media_type=JSON, headers={"Location": f"/chat/{run.run_id}/stream"}
    )


@router.get(
    "/chat/{task_id}/stream", response_class=EventSourceResponse, responses=sse_ok(STREAM_DOC)
)
async def stream_chat_task(
    task_id: UUID,
    request: Request,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    slot: StreamSlotDep,
    last_event_id: LastEventIdDep = None,
) -> Response:
    """Stream a task's answer token by token, then how it ended."""
    shutdown = request.app.state.shutdown_event
    batches = await watch(
        orch,
        pb.StreamRunRequest(
            principal=principal, run_id=str(task_id), after_event_id=last_event_id or ""
        ),
        shutdown,
    )

    async def status_when_expired() -> str:
        run = await _get_run(orch, principal, str(task_id), settings)
        return str(_status(run)["status"])

    events = task_events(str(task_id), batches, status_when_expired)
    return EventSourceResponse(
        slot.wrap(tracked(events, "task")),
        ping=settings.sse_ping_seconds,
        shutdown_event=shutdown,
        shutdown_grace_period=settings.shutdown_grace_seconds,
    )


@router.post("/chat/{task_id}/stop", responses=json_ok(TaskStatus))
async def stop_chat_task(
    task_id: UUID, principal: PrincipalDep, orch: OrchestratorDep, settings: SettingsDep
) -> Response:
    """Stop a task (its stream ends with `stopped`); a finished task keeps its status."""
    reply = await orch.CancelRun(
        pb.CancelRunRequest(principal=principal, run_id=str(task_id), wait=True),
        timeout=settings.rpc_timeout_seconds + 60,
    )
    return Response(orjson.dumps(_status(orjson.loads(reply.json))), media_type=JSON)


@router.get("/chat/{task_id}/status", responses=json_ok(TaskStatus))
async def get_chat_task_status(
    task_id: UUID, principal: PrincipalDep, orch: OrchestratorDep, settings: SettingsDep
) -> Response:
    """A task's status: pending, running, done, stopped or error."""
    run = await _get_run(orch, principal, str(task_id), settings)
    return Response(orjson.dumps(_status(run)), media_type=JSON)
