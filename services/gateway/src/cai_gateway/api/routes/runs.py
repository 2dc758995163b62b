"""Runs: create, stream, wait, join, get, list, cancel and delete (LangGraph Server's routes),
on a thread or stateless (a temporary thread the orchestrator drops when the run ends)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse

from cai_common.runs import END, ERROR
from cai_gateway.api.openapi import ERRORS, json_ok, sse_ok
from cai_gateway.api.routing import OrjsonRoute
from cai_gateway.api.scope import RunScope, on_thread_or_stateless
from cai_gateway.config import Settings
from cai_gateway.deps import (
    LastEventIdDep,
    OrchestratorClientDep,
    SettingsDep,
    StreamSlotDep,
    WorkMeterDep,
)
from cai_gateway.dialects import ENDED_BECAUSE
from cai_gateway.limits import CANCEL_RECORDS, StreamSlot, message_limit_violation
from cai_gateway.models import Run
from cai_gateway.orchestrator import OrchestratorClient
from cai_gateway.problems import Problem
from cai_gateway.runs import Outcome, drain
from cai_gateway.schemas import RunCreate, RunsCancel
from cai_gateway.sse import tracked, with_heartbeats

router = APIRouter(tags=["runs"], responses=ERRORS, route_class=OrjsonRoute)

JSON = "application/json"
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=256,
        description="Retrying a create with the same key returns the same run.",
    ),
]

SSE_DOC = (
    "Server-sent events: `id:` (unique, increasing; send it back as `Last-Event-ID` to resume), "
    "`event:` (metadata, values, updates, messages, custom, status, retry, then one of end, "
    "error, cancelled, timeout) and `data:` (JSON). `reconnect` asks the client to reconnect "
    "(the gateway is shutting down). The `Location` header is where to reconnect."
)
WAIT_DOC = (
    "The thread's final values (JSON). Whitespace is sent while the run is going, to keep the "
    'connection alive. A run that failed answers `{"__error__": {error, message}}`. If the '
    "connection drops, GET the `Location` (…/join) to get the result."
)


def sse_response(
    request: Request, body: Any, slot: StreamSlot, headers: dict[str, str] | None = None
) -> Response:
    """An SSE response holding `slot` until the stream ends (heartbeats, graceful shutdown)."""
    settings: Settings = request.app.state.settings
    return EventSourceResponse(
        slot.wrap(tracked(body, "langgraph")),
        ping=settings.sse_ping_seconds,
        headers=headers,
        shutdown_event=request.app.state.shutdown_event,
        shutdown_grace_period=settings.shutdown_grace_seconds,
    )


def rejoin_query(on_disconnect: str) -> str:
    """The query a `Location` to re-join a run carries: a run that stops when its client leaves
    keeps doing so after the client reconnects (a gateway shutdown is no leaving: docs/api.md)."""
    return "?cancel_on_disconnect=true" if on_disconnect == "cancel" else ""


def check_input(body: RunCreate, settings: Settings) -> None:
    """Enforce the message limits on `input.messages` and `command.update`'s messages (422)."""
    for where, messages in (
        ("input.messages", body.input_messages()),
        ("command.update.messages", body.command_messages()),
    ):
        why = message_limit_violation(messages, settings.max_messages, settings.max_message_chars)
        if why:
            raise Problem(422, f"{where}: {why}")


# -- create and stream -------------------------------------------------------------------------


@on_thread_or_stateless(
    router,
    "/runs",
    thread=("create_thread_run", "Create a background run on a thread."),
    stateless=(
        "create_stateless_run",
        "Create a background run on a temporary thread (deleted when the run ends).",
    ),
    responses=json_ok(Run),
)
async def create_background_run(
    scope: RunScope,
    body: RunCreate,
    orch: OrchestratorClientDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a background run."""
    check_input(body, settings)
    run = await orch.create_run(scope.thread_id, body, idempotency_key)
    return Response(run.json, media_type=JSON, headers={"Content-Location": run.path})


@on_thread_or_stateless(
    router,
    "/runs/stream",
    thread=(
        "create_and_stream_thread_run",
        "Create a run on a thread and stream its events. Reconnect at `Location` with\n"
        "Last-Event-ID.",
    ),
    stateless=(
        "create_and_stream_stateless_run",
        "Create a stateless run and stream its events (cancelled on disconnect unless\n"
        "on_disconnect=continue).",
    ),
    response_class=EventSourceResponse,
    responses=sse_ok(SSE_DOC),
)
async def create_and_stream_run(
    scope: RunScope,
    body: RunCreate,
    request: Request,
    orch: OrchestratorClientDep,
    settings: SettingsDep,
    slot: StreamSlotDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a run and stream its events."""
    started = time.perf_counter()
    check_input(body, settings)
    on_disconnect = body.on_disconnect or scope.on_disconnect
    run = await orch.create_run(scope.thread_id, body, idempotency_key, on_disconnect=on_disconnect)
    stream = await orch.sse(
        run.thread_id,
        run.run_id,
        cancel_on_disconnect=on_disconnect == "cancel",
        started_at=started,
    )
    location = f"{run.path}/stream{rejoin_query(on_disconnect)}"
    return sse_response(request, stream, slot, {"Location": location, "Content-Location": run.path})


@router.get(
    "/threads/{thread_id}/runs/{run_id}/stream",
    response_class=EventSourceResponse,
    responses=sse_ok(SSE_DOC),
)
async def join_run_stream(
    thread_id: UUID,
    run_id: UUID,
    request: Request,
    orch: OrchestratorClientDep,
    slot: StreamSlotDep,
    last_event_id: LastEventIdDep = None,
    cancel_on_disconnect: bool = False,
) -> Response:
    """Join a run's event stream from the start; with Last-Event-ID, right after that event."""
    stream = await orch.sse(
        str(thread_id),
        str(run_id),
        after_event_id=last_event_id or "",
        cancel_on_disconnect=cancel_on_disconnect,
    )
    return sse_response(request, stream, slot)


# -- wait and join -----------------------------------------------------------------------------


def error_body(outcome: Outcome) -> bytes:
    """LangGraph Server's body for a run that did not succeed."""
    if outcome.terminal == ERROR:
        return b'{"__error__":' + outcome.data + b"}"
    message = ENDED_BECAUSE.get(outcome.terminal, "The run did not finish")
    return orjson.dumps({"__error__": {"error": outcome.terminal, "message": message}})


async def _result(
    orch: OrchestratorClient, thread_id: str, outcome: Outcome, prefer_state: bool
) -> bytes:
    if outcome.terminal != END:
        return error_body(outcome)
    if prefer_state or outcome.last_values is None:
        values = await orch.find_values(thread_id)
        if values is not None:
            return values
    return outcome.last_values or b"null"


def _wait_response(
    request: Request, work: Any, slot: StreamSlot, headers: dict[str, str]
) -> Response:
    settings: Settings = request.app.state.settings
    body = with_heartbeats(work, settings.sse_ping_seconds)
    return StreamingResponse(slot.wrap(tracked(body, "wait")), media_type=JSON, headers=headers)


@on_thread_or_stateless(
    router,
    "/runs/wait",
    thread=(
        "create_and_wait_thread_run",
        "Create a run on a thread, wait for it and return the thread's final values.",
    ),
    stateless=(
        "create_and_wait_stateless_run",
        "Create a stateless run, wait for it and return its final values.",
    ),
    responses=json_ok(dict[str, Any], WAIT_DOC),
)
async def create_and_wait_run(
    scope: RunScope,
    body: RunCreate,
    request: Request,
    orch: OrchestratorClientDep,
    settings: SettingsDep,
    slot: StreamSlotDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a run, wait for it and return the final values."""
    check_input(body, settings)
    on_disconnect = body.on_disconnect or scope.on_disconnect
    modes = list(dict.fromkeys([*body.modes(), "values"]))
    run = await orch.create_run(
        scope.thread_id, body, idempotency_key, stream_modes=modes, on_disconnect=on_disconnect
    )
    batches = await orch.watch(
        run.thread_id, run.run_id, cancel_on_disconnect=on_disconnect == "cancel"
    )

    async def result() -> bytes:
        return await _result(orch, run.thread_id, await drain(batches), False)

    location = f"{run.path}/join{rejoin_query(on_disconnect)}"
    return _wait_response(
        request, result(), slot, {"Location": location, "Content-Location": run.path}
    )


@router.get("/threads/{thread_id}/runs/{run_id}/join", responses=json_ok(dict[str, Any], WAIT_DOC))
async def join_run(
    thread_id: UUID,
    run_id: UUID,
    request: Request,
    orch: OrchestratorClientDep,
    slot: StreamSlotDep,
    cancel_on_disconnect: bool = False,
) -> Response:
    """Wait for a run to end and return the thread's final values."""
    batches = await orch.watch(
        str(thread_id), str(run_id), cancel_on_disconnect=cancel_on_disconnect
    )

    async def result() -> bytes:
        return await _result(orch, str(thread_id), await drain(batches), True)

    return _wait_response(request, result(), slot, {})


# -- read, cancel, delete ----------------------------------------------------------------------


@router.get("/threads/{thread_id}/runs/{run_id}", responses=json_ok(Run))
async def get_run(thread_id: UUID, run_id: UUID, orch: OrchestratorClientDep) -> Response:
    """Get a run (a pending run shows its queue position)."""
    return Response(await orch.get_run(str(thread_id), str(run_id)), media_type=JSON)


RunStatus = Literal["pending", "running", "success", "error", "timeout", "interrupted"]


@router.get("/threads/{thread_id}/runs", responses=json_ok(list[Run]))
async def list_runs(
    thread_id: UUID,
    orch: OrchestratorClientDep,
    meter: WorkMeterDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    status: RunStatus | None = None,
) -> Response:
    """List a thread's runs, newest first."""
    await meter.reserve(limit)
    runs, read = await orch.list_runs(
        str(thread_id), limit=limit, offset=offset, status=status or ""
    )
    await meter.settle(read)
    return Response(runs, media_type=JSON)


@router.post("/threads/{thread_id}/runs/{run_id}/cancel", responses=json_ok(Run))
async def cancel_run(
    thread_id: UUID,
    run_id: UUID,
    orch: OrchestratorClientDep,
    wait: bool = False,
    action: Literal["interrupt", "rollback"] = "interrupt",
) -> Response:
    """Cancel a run (a no-op that reports the final status if it already ended)."""
    run = await orch.cancel_run(str(thread_id), str(run_id), action=action, wait=wait)
    return Response(run, media_type=JSON)


@router.delete("/threads/{thread_id}/runs/{run_id}", status_code=204, response_class=Response)
async def delete_run(thread_id: UUID, run_id: UUID, orch: OrchestratorClientDep) -> Response:
    """Delete a finished run (409 while it is pending or running)."""
    await orch.delete_run(str(thread_id), str(run_id))
    return Response(status_code=204)


@router.post("/runs/cancel", status_code=204, response_class=Response)
async def cancel_runs(
    body: RunsCancel,
    orch: OrchestratorClientDep,
    meter: WorkMeterDep,
    action: Literal["interrupt", "rollback"] = "interrupt",
) -> Response:
    """Cancel runs by id (on a thread or not), or up to 1000 pending/running runs of a thread
    or of the caller's threads, oldest first."""
    if not body.run_ids and not body.status:
        raise Problem(422, "give run_ids, or a status (pending, running or all)")
    if body.run_ids and body.status:
        raise Problem(422, "give either run_ids or status, not both")
    run_ids = [str(r) for r in dict.fromkeys(body.run_ids or [])]
    await meter.reserve(len(run_ids) * CANCEL_RECORDS)
    reply, read = await orch.cancel_runs(
        str(body.thread_id) if body.thread_id else "",
        run_ids=run_ids,
        status=body.status or "",
        action=action,
    )
    await meter.settle(max(read, len(reply["run_ids"]) * CANCEL_RECORDS))
    if run_ids and not reply["run_ids"]:
        raise Problem(404, "None of the runs was found")
    return Response(status_code=204)
