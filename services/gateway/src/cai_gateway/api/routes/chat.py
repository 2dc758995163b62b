"""The task API: start a chat task, stream it, stop it, ask its status. A task is a run."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from cai_gateway.api.openapi import ERRORS, json_ok, sse_ok
from cai_gateway.api.routing import OrjsonRoute
from cai_gateway.deps import LastEventIdDep, OrchestratorClientDep, SettingsDep, StreamSlotDep
from cai_gateway.dialects import TASK_STATUS, task_events
from cai_gateway.limits import message_limit_violation
from cai_gateway.models import TaskCreated, TaskStatus
from cai_gateway.orchestrator import OrchestratorClient
from cai_gateway.problems import Problem
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


async def _get_run(orch: OrchestratorClient, task_id: str) -> dict[str, Any]:
    run: dict[str, Any] = orjson.loads(await orch.get_run("", task_id))
    return run


@router.post("/chat", responses=json_ok(TaskCreated))
async def start_chat_task(
    body: ChatTaskCreate, orch: OrchestratorClientDep, settings: SettingsDep
) -> Response:
    """Start answering a message; stream the answer from /chat/{task_id}/stream."""
    messages = [m.model_dump() for m in body.conversation_history or []]
    messages.append({"role": "user", "content": body.message})
    why = message_limit_violation(messages, settings.max_messages, settings.max_message_chars)
    if why:
        raise Problem(422, f"message: {why}")
    thread_id = str(body.thread_id) if body.thread_id else ""
    run = await orch.create_message_run(
        thread_id=thread_id,
        assistant_id=body.assistant_id,
        messages=messages,
        stream_modes=["messages-tuple"],
        metadata={"api": "task"},
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
    orch: OrchestratorClientDep,
    settings: SettingsDep,
    slot: StreamSlotDep,
    last_event_id: LastEventIdDep = None,
) -> Response:
    """Stream a task's answer token by token, then how it ended."""
    batches = await orch.watch("", str(task_id), after_event_id=last_event_id or "")

    async def status_when_expired() -> str:
        run = await _get_run(orch, str(task_id))
        return str(_status(run)["status"])

    events = task_events(str(task_id), batches, status_when_expired)
    return EventSourceResponse(
        slot.wrap(tracked(events, "task")),
        ping=settings.sse_ping_seconds,
        shutdown_event=orch.shutdown,
        shutdown_grace_period=settings.shutdown_grace_seconds,
    )


@router.post("/chat/{task_id}/stop", responses=json_ok(TaskStatus))
async def stop_chat_task(task_id: UUID, orch: OrchestratorClientDep) -> Response:
    """Stop a task (its stream ends with `stopped`); a finished task keeps its status."""
    run = await orch.cancel_run("", str(task_id), wait=True)
    return Response(orjson.dumps(_status(orjson.loads(run))), media_type=JSON)


@router.get("/chat/{task_id}/status", responses=json_ok(TaskStatus))
async def get_chat_task_status(task_id: UUID, orch: OrchestratorClientDep) -> Response:
    """A task's status: pending, running, done, stopped or error."""
    run = await _get_run(orch, str(task_id))
    return Response(orjson.dumps(_status(run)), media_type=JSON)
