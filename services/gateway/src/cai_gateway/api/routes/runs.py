"""Runs: create, stream, wait, join, get, list, cancel and delete (LangGraph Server's routes),
on a thread or stateless (a temporary thread the orchestrator drops when the run ends)."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any, Literal
from uuid import UUID

import grpc
import orjson
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import StreamingResponse
from sse_starlette import EventSourceResponse

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_common.runs import END, ERROR, PENDING, RUNNING
from cai_gateway.api.openapi import ERRORS, json_ok, sse_ok
from cai_gateway.api.routing import OrjsonRoute
from cai_gateway.config import Settings
from cai_gateway.convert import create_run_request
from cai_gateway.deps import (
    LastEventIdDep,
    OrchestratorDep,
    PrincipalDep,
    SettingsDep,
    StreamSlotDep,
)
from cai_gateway.dialects import ENDED_BECAUSE
from cai_gateway.limits import StreamSlot, message_limit_violation
from cai_gateway.models import Run
from cai_gateway.problems import Problem, from_rpc_error
from cai_gateway.runs import Outcome, create_run, drain, watch
from cai_gateway.schemas import RunCreate, RunsCancel
from cai_gateway.sse import open_stream, tracked, with_heartbeats

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


def check_input(body: RunCreate, settings: Settings) -> None:
    """Enforce the message limits on `input.messages` (422)."""
    why = message_limit_violation(
        body.input_messages(), settings.max_messages, settings.max_message_chars
    )
    if why:
        raise Problem(422, f"input.messages: {why}")


# -- create ------------------------------------------------------------------------------------


async def _create_background(
    thread_id: str,
    body: RunCreate,
    principal: common_pb2.Principal,
    orch: OrchestratorStub,
    settings: Settings,
    idempotency_key: str | None,
) -> Response:
    check_input(body, settings)
    run = await create_run(
        orch,
        create_run_request(principal, thread_id, body, idempotency_key),
        settings.rpc_timeout_seconds,
    )
    return Response(run.json, media_type=JSON, headers={"Content-Location": run.path})


@router.post("/threads/{thread_id}/runs", responses=json_ok(Run))
async def create_thread_run(
    thread_id: UUID,
    body: RunCreate,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a background run on a thread."""
    return await _create_background(
        str(thread_id), body, principal, orch, settings, idempotency_key
    )


@router.post("/runs", responses=json_ok(Run))
async def create_stateless_run(
    body: RunCreate,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a background run on a temporary thread (deleted when the run ends)."""
    return await _create_background("", body, principal, orch, settings, idempotency_key)


# -- stream ------------------------------------------------------------------------------------


async def _create_and_stream(
    thread_id: str,
    body: RunCreate,
    request: Request,
    principal: common_pb2.Principal,
    orch: OrchestratorStub,
    settings: Settings,
    slot: StreamSlot,
    idempotency_key: str | None,
) -> Response:
    started = time.perf_counter()
    check_input(body, settings)
    # Stateless runs are cancelled when their client goes (LangGraph Server's default).
    on_disconnect = body.on_disconnect or ("cancel" if not thread_id else "continue")
    run = await create_run(
        orch,
        create_run_request(
            principal, thread_id, body, idempotency_key, on_disconnect=on_disconnect
        ),
        settings.rpc_timeout_seconds,
    )
    stream = await open_stream(
        orch,
        run.stream_request(principal, cancel_on_disconnect=on_disconnect == "cancel"),
        request.app.state.shutdown_event,
        started,
    )
    return sse_response(
        request, stream, slot, {"Location": f"{run.path}/stream", "Content-Location": run.path}
    )


@router.post(
    "/threads/{thread_id}/runs/stream",
    response_class=EventSourceResponse,
    responses=sse_ok(SSE_DOC),
)
async def create_and_stream_thread_run(
    thread_id: UUID,
    body: RunCreate,
    request: Request,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    slot: StreamSlotDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a run on a thread and stream its events. Reconnect at `Location` with
    Last-Event-ID."""
    return await _create_and_stream(
        str(thread_id), body, request, principal, orch, settings, slot, idempotency_key
    )


@router.post("/runs/stream", response_class=EventSourceResponse, responses=sse_ok(SSE_DOC))
async def create_and_stream_stateless_run(
    body: RunCreate,
    request: Request,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    slot: StreamSlotDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a stateless run and stream its events (cancelled on disconnect unless
    on_disconnect=continue)."""
    return await _create_and_stream(
        "", body, request, principal, orch, settings, slot, idempotency_key
    )


@router.get(
    "/threads/{thread_id}/runs/{run_id}/stream",
    response_class=EventSourceResponse,
    responses=sse_ok(SSE_DOC),
)
async def join_run_stream(
    thread_id: UUID,
    run_id: UUID,
    request: Request,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    slot: StreamSlotDep,
    last_event_id: LastEventIdDep = None,
    cancel_on_disconnect: bool = False,
) -> Response:
    """Join a run's event stream from the start; with Last-Event-ID, right after that event."""
    stream = await open_stream(
        orch,
        pb.StreamRunRequest(
            principal=principal,
            thread_id=str(thread_id),
            run_id=str(run_id),
            after_event_id=last_event_id or "",
            cancel_on_disconnect=cancel_on_disconnect,
        ),
        request.app.state.shutdown_event,
    )
    return sse_response(request, stream, slot)


# -- wait and join -----------------------------------------------------------------------------


def error_body(outcome: Outcome) -> bytes:
    """LangGraph Server's body for a run that did not succeed."""
    if outcome.terminal == ERROR:
        return b'{"__error__":' + outcome.data + b"}"
    message = ENDED_BECAUSE.get(outcome.terminal, "The run did not finish")
    return orjson.dumps({"__error__": {"error": outcome.terminal, "message": message}})


async def _thread_values(
    orch: OrchestratorStub, principal: common_pb2.Principal, thread_id: str, settings: Settings
) -> bytes | None:
    """The thread's current values; None when the thread is gone (stateless runs)."""
    try:
        reply = await orch.GetThreadState(
            pb.GetThreadStateRequest(principal=principal, thread_id=thread_id),
            timeout=settings.rpc_timeout_seconds,
        )
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return orjson.dumps(orjson.loads(reply.json).get("values"))


async def _result(
    orch: OrchestratorStub,
    principal: common_pb2.Principal,
    settings: Settings,
    thread_id: str,
    outcome: Outcome,
    prefer_state: bool,
) -> bytes:
    if outcome.terminal != END:
        return error_body(outcome)
    if prefer_state or outcome.last_values is None:
        values = await _thread_values(orch, principal, thread_id, settings)
        if values is not None:
            return values
    return outcome.last_values or b"null"


def _wait_response(
    request: Request, work: Any, slot: StreamSlot, headers: dict[str, str]
) -> Response:
    settings: Settings = request.app.state.settings
    body = with_heartbeats(work, settings.sse_ping_seconds)
    return StreamingResponse(slot.wrap(tracked(body, "wait")), media_type=JSON, headers=headers)


async def _create_and_wait(
    thread_id: str,
    body: RunCreate,
    request: Request,
    principal: common_pb2.Principal,
    orch: OrchestratorStub,
    settings: Settings,
    slot: StreamSlot,
    idempotency_key: str | None,
) -> Response:
    check_input(body, settings)
    on_disconnect = body.on_disconnect or ("cancel" if not thread_id else "continue")
    modes = list(dict.fromkeys([*body.modes(), "values"]))
    run = await create_run(
        orch,
        create_run_request(
            principal,
            thread_id,
            body,
            idempotency_key,
            stream_modes=modes,
            on_disconnect=on_disconnect,
        ),
        settings.rpc_timeout_seconds,
    )
    batches = await watch(
        orch,
        run.stream_request(principal, cancel_on_disconnect=on_disconnect == "cancel"),
        request.app.state.shutdown_event,
    )

    async def result() -> bytes:
        outcome = await drain(batches)
        return await _result(orch, principal, settings, run.thread_id, outcome, False)

    return _wait_response(
        request, result(), slot, {"Location": f"{run.path}/join", "Content-Location": run.path}
    )


@router.post("/threads/{thread_id}/runs/wait", responses=json_ok(dict[str, Any], WAIT_DOC))
async def create_and_wait_thread_run(
    thread_id: UUID,
    body: RunCreate,
    request: Request,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    slot: StreamSlotDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a run on a thread, wait for it and return the thread's final values."""
    return await _create_and_wait(
        str(thread_id), body, request, principal, orch, settings, slot, idempotency_key
    )


@router.post("/runs/wait", responses=json_ok(dict[str, Any], WAIT_DOC))
async def create_and_wait_stateless_run(
    body: RunCreate,
    request: Request,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    slot: StreamSlotDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Create a stateless run, wait for it and return its final values."""
    return await _create_and_wait(
        "", body, request, principal, orch, settings, slot, idempotency_key
    )


@router.get("/threads/{thread_id}/runs/{run_id}/join", responses=json_ok(dict[str, Any], WAIT_DOC))
async def join_run(
    thread_id: UUID,
    run_id: UUID,
    request: Request,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    slot: StreamSlotDep,
) -> Response:
    """Wait for a run to end and return the thread's final values."""
    batches = await watch(
        orch,
        pb.StreamRunRequest(principal=principal, thread_id=str(thread_id), run_id=str(run_id)),
        request.app.state.shutdown_event,
    )

    async def result() -> bytes:
        outcome = await drain(batches)
        return await _result(orch, principal, settings, str(thread_id), outcome, True)

    return _wait_response(request, result(), slot, {})


# -- read, cancel, delete ----------------------------------------------------------------------


@router.get("/threads/{thread_id}/runs/{run_id}", responses=json_ok(Run))
async def get_run(
    thread_id: UUID,
    run_id: UUID,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
) -> Response:
    """Get a run (a pending run shows its queue position)."""
    reply = await orch.GetRun(
        pb.GetRunRequest(principal=principal, thread_id=str(thread_id), run_id=str(run_id)),
        timeout=settings.rpc_timeout_seconds,
    )
    return Response(reply.json, media_type=JSON)


RunStatus = Literal["pending", "running", "success", "error", "timeout", "interrupted"]


@router.get("/threads/{thread_id}/runs", responses=json_ok(list[Run]))
async def list_runs(
    thread_id: UUID,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 10,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    status: RunStatus | None = None,
) -> Response:
    """List a thread's runs, newest first."""
    reply = await orch.ListRuns(
        pb.ListRunsRequest(
            principal=principal,
            thread_id=str(thread_id),
            limit=limit,
            offset=offset,
            status=status or "",
        ),
        timeout=settings.rpc_timeout_seconds,
    )
    return Response(reply.json, media_type=JSON)


@router.post("/threads/{thread_id}/runs/{run_id}/cancel", responses=json_ok(Run))
async def cancel_run(
    thread_id: UUID,
    run_id: UUID,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    wait: bool = False,
    action: Literal["interrupt", "rollback"] = "interrupt",
) -> Response:
    """Cancel a run (a no-op that reports the final status if it already ended)."""
    reply = await orch.CancelRun(
        pb.CancelRunRequest(
            principal=principal,
            thread_id=str(thread_id),
            run_id=str(run_id),
            action=action,
            wait=wait,
        ),
        timeout=settings.rpc_timeout_seconds + (60 if wait else 0),
    )
    return Response(reply.json, media_type=JSON)


@router.delete("/threads/{thread_id}/runs/{run_id}", status_code=204, response_class=Response)
async def delete_run(
    thread_id: UUID,
    run_id: UUID,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
) -> Response:
    """Delete a finished run (409 while it is pending or running)."""
    await orch.DeleteRun(
        pb.GetRunRequest(principal=principal, thread_id=str(thread_id), run_id=str(run_id)),
        timeout=settings.rpc_timeout_seconds,
    )
    return Response(status_code=204)


async def _runs_to_cancel(
    body: RunsCancel,
    principal: common_pb2.Principal,
    orch: OrchestratorStub,
    settings: Settings,
) -> list[tuple[str, str]]:
    """(thread id, run id) of the runs a bulk cancel names or selects by status."""
    thread_id = str(body.thread_id) if body.thread_id else ""
    if body.run_ids:
        return [(thread_id, str(r)) for r in dict.fromkeys(body.run_ids)]
    wanted = {PENDING, RUNNING} if body.status == "all" else {body.status or ""}
    if thread_id:
        threads = [thread_id]
    else:
        reply = await orch.SearchThreads(
            pb.SearchThreadsRequest(principal=principal, status="busy", limit=1000),
            timeout=settings.rpc_timeout_seconds,
        )
        threads = [t["thread_id"] for t in orjson.loads(reply.json)]
    found: list[tuple[str, str]] = []
    for tid in threads:
        for status in sorted(wanted):
            reply = await orch.ListRuns(
                pb.ListRunsRequest(principal=principal, thread_id=tid, limit=1000, status=status),
                timeout=settings.rpc_timeout_seconds,
            )
            found += [(tid, r["run_id"]) for r in orjson.loads(reply.json)]
    return found


@router.post("/runs/cancel", status_code=204, response_class=Response)
async def cancel_runs(
    body: RunsCancel,
    principal: PrincipalDep,
    orch: OrchestratorDep,
    settings: SettingsDep,
    action: Literal["interrupt", "rollback"] = "interrupt",
) -> Response:
    """Cancel runs by id (on a thread or not), or every pending/running run of a thread or of
    the caller's threads."""
    if not body.run_ids and not body.status:
        raise Problem(422, "give run_ids, or a status (pending, running or all)")
    if body.run_ids and body.status:
        raise Problem(422, "give either run_ids or status, not both")
    targets = await _runs_to_cancel(body, principal, orch, settings)
    limit = asyncio.Semaphore(16)

    async def cancel(thread_id: str, run_id: str) -> bool:
        async with limit:
            try:
                await orch.CancelRun(
                    pb.CancelRunRequest(
                        principal=principal, thread_id=thread_id, run_id=run_id, action=action
                    ),
                    timeout=settings.rpc_timeout_seconds,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False
                raise from_rpc_error(exc) from None
            return True

    done = await asyncio.gather(*(cancel(t, r) for t, r in targets))
    if body.run_ids and not any(done):
        raise Problem(404, "None of the runs was found")
    return Response(status_code=204)
