"""The task API: start a chat task, stream it, stop it, ask its status. A task is a run."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any
from uuid import UUID

import orjson
from fastapi import APIRouter, Request, Response
from sse_starlette import EventSourceResponse

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_common.runs import CANCELLED, END, ERROR, RETRY, TERMINAL_EVENTS, TIMEOUT
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
from cai_gateway.dialects import TASK_STATUS, AnswerText, ai_text_and_usage, task_event
from cai_gateway.limits import message_limit_violation
from cai_gateway.models import TaskCreated, TaskStatus
from cai_gateway.problems import Problem
from cai_gateway.runs import StreamInterrupted, create_run, watch
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
    events = _task_events(str(task_id), batches, orch, principal, settings)
    return EventSourceResponse(
        slot.wrap(tracked(events, "task")),
        ping=settings.sse_ping_seconds,
        shutdown_event=shutdown,
        shutdown_grace_period=settings.shutdown_grace_seconds,
    )


async def _task_events(
    task_id: str,
    batches: AsyncIterator[Sequence[pb.RunEvent]],
    orch: OrchestratorStub,
    principal: common_pb2.Principal,
    settings: Settings,
) -> AsyncIterator[bytes]:
    answer = AnswerText()
    ended = False
    try:
        async for events in batches:
            out: list[bytes] = []
            for e in events:
                frame = _translate(task_id, e, answer)
                if frame is not None:
                    out.append(frame)
                if e.event in TERMINAL_EVENTS:
                    ended = True
            if out:
                yield b"".join(out)
    except StreamInterrupted:
        # The gateway is going away (or no orchestrator answers): the client reconnects with
        # Last-Event-ID, to this or another gateway, and loses nothing.
        yield b"retry: 250\n\n"
        return
    if not ended:
        # The run's log has expired: tell how it ended from its record.
        run = _status(await _get_run(orch, principal, task_id, settings))
        kind = {"done": "done", "stopped": "stopped"}.get(run["status"], "error")
        yield task_event("0", kind, {"task_id": task_id, "status": run["status"]})


def _translate(task_id: str, e: pb.RunEvent, answer: AnswerText) -> bytes | None:
    """One run event as a task event (None: nothing the task client needs)."""
    if e.event == "messages":
        text, _ = ai_text_and_usage(e.data)
        delta = answer.add(text)
        return task_event(e.id, "token", delta) if delta else None
    if e.event == "status":
        return task_event(e.id, "status", _loads(e.data))
    if e.event == RETRY:
        answer.retry()
        attempt = _object(e.data).get("attempt")
        return task_event(e.id, "status", {"status": "retrying", "attempt": attempt})
    if e.event == END:
        return task_event(e.id, "done", {"task_id": task_id, "status": "done"})
    if e.event == CANCELLED:
        return task_event(
            e.id, "stopped", {"task_id": task_id, "status": "stopped", **_object(e.data)}
        )
    if e.event in (ERROR, TIMEOUT):
        detail = _object(e.data)
        return task_event(
            e.id,
            "error",
            {
                "task_id": task_id,
                "status": "error",
                "error": detail.get("error", e.event),
                "message": detail.get("message", "The task failed"),
            },
        )
    return None


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        return None


def _object(data: bytes) -> dict[str, Any]:
    value = _loads(data)
    return value if isinstance(value, dict) else {}


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
