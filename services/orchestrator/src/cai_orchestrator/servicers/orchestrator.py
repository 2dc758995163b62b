"""cai.v1.Orchestrator: a thin adapter from gRPC to the thread and run services."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from langgraph.graph.state import CompiledStateGraph
from redis.exceptions import RedisError

from cai.v1 import orchestrator_pb2 as pb
from cai.v1 import orchestrator_pb2_grpc
from cai_common.runs import PENDING, RUNNING, WORK_TRAILER, parse_event_id
from cai_orchestrator.assistants import GRAPH_ID, Assistant, Assistants
from cai_orchestrator.convert import (
    InvalidRequest,
    check_ids,
    id_list,
    json_field,
    json_reply,
    new_run,
    page,
    run_events,
    tenant_of,
)
from cai_orchestrator.records import StoreError, not_found
from cai_orchestrator.runner import SUPPORTED_STREAM_MODES
from cai_orchestrator.runs import RunService
from cai_orchestrator.scheduler import QuotaExceeded
from cai_orchestrator.state import InvalidUpdate
from cai_orchestrator.tailer import SubscriptionFailed
from cai_orchestrator.threads import ThreadService
from cai_orchestrator.views import assistant_view, run_view, schemas_view

log = logging.getLogger(__name__)

_STORE_CODES = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "conflict": grpc.StatusCode.FAILED_PRECONDITION,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "aborted": grpc.StatusCode.ABORTED,
    "quota": grpc.StatusCode.RESOURCE_EXHAUSTED,
}
CANCEL_WAIT_S = 60.0
# Why a relay ends on drain; the gateway ends its SSE response and the client reconnects.
DRAINING = "Orchestrator shutting down; reconnect with Last-Event-ID"
# POST /runs/cancel's `status`: the run statuses it reaches.
BULK_CANCEL_STATUSES = {
    PENDING: {PENDING},
    RUNNING: {RUNNING},
    "all": {PENDING, RUNNING},
}

R = TypeVar("R")


async def _abort(context: grpc.aio.ServicerContext, exc: Exception) -> None:
    """Map a domain error onto a gRPC status with a message; never leak a traceback."""
    if isinstance(exc, InvalidRequest | InvalidUpdate | ValueError):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, QuotaExceeded):
        # The trailer tells the gateway this is a quota (429 + Retry-After), not a size limit.
        context.set_trailing_metadata((("retry-after", str(exc.retry_after_s)),))
    if isinstance(exc, StoreError):
        await context.abort(_STORE_CODES.get(exc.code, grpc.StatusCode.UNKNOWN), exc.message)
    log.warning("redis unavailable", extra={"error": str(exc)})
    await context.abort(grpc.StatusCode.UNAVAILABLE, "Run store (Redis) is unavailable")


_DOMAIN_ERRORS = (InvalidRequest, InvalidUpdate, StoreError, RedisError, OSError)


def unary(fn: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
    """Map domain errors onto gRPC status codes with a message."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            check_ids(request)
            return await fn(self, request, context)
        except _DOMAIN_ERRORS as exc:
            await _abort(context, exc)
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    return wrapper


def _report_work(context: grpc.aio.ServicerContext, records: int) -> None:
    """Tell the caller how many records the call read (the gateway charges by it)."""
    context.set_trailing_metadata(((WORK_TRAILER, str(records)),))


def _assistant(assistants: Assistants, request: pb.GetAssistantRequest) -> Assistant:
    """The requested assistant, or not found."""
    tenant_of(request.principal)
    assistant = assistants.get(request.assistant_id)
    if assistant is None:
        raise not_found("Assistant", request.assistant_id)
    return assistant


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServicer):
    """Threads, runs and assistants, translated to and from the services."""

    def __init__(
        self,
        threads: ThreadService,
        runs: RunService,
        assistants: Assistants,
        graph: CompiledStateGraph,
    ) -> None:
        self.threads = threads
        self.runs = runs
        self.assistants = assistants
        self.graph = graph
        # StreamRun relays open now (their handler tasks), ended by `end_relays` on drain.
        self._relays: set[asyncio.Task[Any]] = set()
        self._draining = False

    def end_relays(self) -> int:
        """End every open StreamRun with UNAVAILABLE, so its gateway's client reconnects (with
        Last-Event-ID) through a replica that stays; new ones are refused the same way. The
        runs go on: their events are in Redis, readable by any replica. How many were open."""
        self._draining = True
        for task in self._relays:
            task.cancel()
        return len(self._relays)

    @functools.cached_property
    def _schemas(self) -> dict[str, Any]:
        return schemas_view(self.graph)

    # -- threads ----------------------------------------------------------------------------

    @unary
    async def CreateThread(self, request: pb.CreateThreadRequest, context: Any) -> pb.JsonReply:
        """Create a thread."""
        tenant = tenant_of(request.principal)
        if request.if_exists not in ("", "raise", "do_nothing"):
            raise InvalidRequest("if_exists must be 'raise' or 'do_nothing'")
        metadata = json_field(request.metadata_json, "metadata", {})
        return json_reply(
            await self.threads.create(
                tenant, request.thread_id, metadata, request.if_exists or "raise"
            )
        )

    @unary
    async def GetThread(self, request: pb.GetThreadRequest, context: Any) -> pb.JsonReply:
        """Get a thread with its current values."""
        tenant = tenant_of(request.principal)
        return json_reply(await self.threads.get(tenant, request.thread_id))

    @unary
    async def GetThreadState(self, request: pb.GetThreadStateRequest, context: Any) -> pb.JsonReply:
        """Get a thread's state at its latest (or a given) checkpoint."""
        tenant = tenant_of(request.principal)
        state = await self.threads.state_at(tenant, request.thread_id, request.checkpoint_id)
        return json_reply(state)

    @unary
    async def SearchThreads(self, request: pb.SearchThreadsRequest, context: Any) -> pb.JsonReply:
        """Search the caller's threads by metadata and status, newest first (or by ids)."""
        tenant = tenant_of(request.principal)
        limit, offset = page(request.limit, request.offset)
        if request.status not in ("", "idle", "busy", "interrupted", "error"):
            raise InvalidRequest("status must be idle, busy, interrupted or error")
        metadata = json_field(request.metadata_json, "metadata", {})
        thread_ids = id_list(request.thread_ids, "thread_ids")
        found, read = await self.threads.search(
            tenant, metadata, request.status, limit, offset, thread_ids
        )
        _report_work(context, read)
        return json_reply(found)

    @unary
    async def UpdateThread(self, request: pb.UpdateThreadRequest, context: Any) -> pb.JsonReply:
        """Merge metadata into a thread."""
        tenant = tenant_of(request.principal)
        metadata = json_field(request.metadata_json, "metadata", {})
        return json_reply(await self.threads.update(tenant, request.thread_id, metadata))

    @unary
    async def DeleteThread(self, request: pb.GetThreadRequest, context: Any) -> pb.JsonReply:
        """Delete a thread with its checkpoints and its runs' data (after its active run stops)."""
        tenant = tenant_of(request.principal)
        return json_reply(await self.threads.delete(tenant, request.thread_id))

    @unary
    async def GetThreadHistory(
        self, request: pb.GetThreadHistoryRequest, context: Any
    ) -> pb.JsonReply:
        """A thread's past states, newest first."""
        tenant = tenant_of(request.principal)
        limit = request.limit or 10
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be 1..1000")
        states = await self.threads.history(
            tenant, request.thread_id, request.before_checkpoint_id, limit
        )
        return json_reply(states)

    @unary
    async def UpdateThreadState(
        self, request: pb.UpdateThreadStateRequest, context: Any
    ) -> pb.JsonReply:
        """Write an update to a thread's state as a new checkpoint (not while a run is active)."""
        tenant = tenant_of(request.principal)
        values = json_field(request.values_json, "values", None, kind=None)
        reply = await self.threads.update_state(
            tenant, request.thread_id, values, request.as_node, request.checkpoint_id
        )
        return json_reply(reply)

    # -- runs -------------------------------------------------------------------------------

    @unary
    async def CreateRun(self, request: pb.CreateRunRequest, context: Any) -> pb.JsonReply:
        """Create a run and queue it (or park it behind the thread's active run)."""
        modes = list(request.stream_modes) or ["values"]
        bad = [m for m in modes if m not in SUPPORTED_STREAM_MODES]
        if bad:
            raise InvalidRequest(
                f"stream_mode {bad} not supported; supported: {sorted(SUPPORTED_STREAM_MODES)}"
            )
        return json_reply(run_view(await self.runs.create(new_run(request, modes))))

    @unary
    async def GetRun(self, request: pb.GetRunRequest, context: Any) -> pb.JsonReply:
        """Get a run (with its place in the queue while it is pending)."""
        tenant = tenant_of(request.principal)
        run = await self.runs.get(tenant, request.thread_id, request.run_id)
        place = await self.runs.queue_place(run) if run.status == "pending" else None
        return json_reply(run_view(run, place))

    @unary
    async def ListRuns(self, request: pb.ListRunsRequest, context: Any) -> pb.JsonReply:
        """List a thread's runs, newest first."""
        tenant = tenant_of(request.principal)
        limit, offset = page(request.limit, request.offset)
        runs, read = await self.runs.list(tenant, request.thread_id, limit, offset, request.status)
        _report_work(context, read)
        return json_reply([run_view(r) for r in runs])

    async def StreamRun(
        self, request: pb.StreamRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamRunReply]:
        """Replay the run's events after `after_event_id`, then follow them to the end."""
        try:
            tenant = tenant_of(request.principal)
            check_ids(request)
            after = parse_event_id(request.after_event_id)
            stream = await self.runs.open_stream(tenant, request.thread_id, request.run_id, after)
        except (*_DOMAIN_ERRORS, ValueError) as exc:
            await _abort(context, exc)
            return
        if stream is None:
            return  # ended long ago; its log has expired
        relay = asyncio.current_task()
        assert relay is not None
        ended_by_drain = self._draining
        if ended_by_drain:
            await stream.close(cancel_unfinished=request.cancel_on_disconnect)
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING)
        self._relays.add(relay)
        try:
            yield pb.StreamRunReply()  # accepted: the gateway may start its response now
            async for batch in stream.batches():
                # An empty reply keeps idle proxies and the gateway informed.
                yield pb.StreamRunReply() if batch is None else run_events(batch)
        except SubscriptionFailed as exc:
            await context.abort(grpc.StatusCode.INTERNAL, str(exc))
        except asyncio.CancelledError:
            if not self._draining:
                raise  # the client left
            relay.uncancel()  # handled: what follows may await (and time out) normally
            ended_by_drain = True
        finally:
            self._relays.discard(relay)
            # Ended by the drain, a cancel-on-disconnect run's cancel is parked, not done: the
            # client re-joins through another replica within REATTACH_GRACE_SECONDS.
            await stream.close(cancel_unfinished=request.cancel_on_disconnect)
        if ended_by_drain:
            await context.abort(grpc.StatusCode.UNAVAILABLE, DRAINING)

    @unary
    async def CancelRun(self, request: pb.CancelRunRequest, context: Any) -> pb.JsonReply:
        """Cancel a run: interrupt keeps completed steps, rollback discards the run's steps."""
        tenant = tenant_of(request.principal)
        action = request.action or "interrupt"
        wait_s = CANCEL_WAIT_S if request.wait else 0.0
        run = await self.runs.cancel_and_wait(
            tenant, request.thread_id, request.run_id, action, wait_s
        )
        return json_reply(run_view(run))

    @unary
    async def CancelRuns(self, request: pb.CancelRunsRequest, context: Any) -> pb.JsonReply:
        """Cancel runs by id, or the caller's pending/running runs (of a thread, or of all)."""
        tenant = tenant_of(request.principal)
        run_ids = id_list(request.run_ids, "run_ids")
        if bool(run_ids) == bool(request.status):
            raise InvalidRequest("give either run_ids or a status (pending, running or all)")
        statuses = BULK_CANCEL_STATUSES.get(request.status, set())
        if request.status and not statuses:
            raise InvalidRequest("status must be pending, running or all")
        found, more, read = await self.runs.cancel_many(
            tenant, request.thread_id, run_ids, statuses, request.action or "interrupt"
        )
        _report_work(context, read)
        return json_reply({"run_ids": found, "more": more})

    @unary
    async def DeleteRun(self, request: pb.GetRunRequest, context: Any) -> pb.JsonReply:
        """Delete a finished run's record and event log."""
        tenant = tenant_of(request.principal)
        run = await self.runs.delete(tenant, request.thread_id, request.run_id)
        return json_reply({"run_id": run.run_id, "deleted": True})

    # -- assistants -------------------------------------------------------------------------

    @unary
    async def SearchAssistants(
        self, request: pb.SearchAssistantsRequest, context: Any
    ) -> pb.JsonReply:
        """List assistants, filtered by metadata and graph id."""
        tenant_of(request.principal)
        limit, offset = page(request.limit, request.offset)
        metadata = json_field(request.metadata_json, "metadata", {})
        found = [
            assistant_view(a)
            for a in self.assistants.by_id.values()
            if (not request.graph_id or request.graph_id == GRAPH_ID)
            and all(a.metadata.get(k) == v for k, v in metadata.items())
        ]
        return json_reply(found[offset : offset + limit])

    @unary
    async def GetAssistant(self, request: pb.GetAssistantRequest, context: Any) -> pb.JsonReply:
        """Get an assistant."""
        return json_reply(assistant_view(_assistant(self.assistants, request)))

    @unary
    async def GetAssistantSchemas(
        self, request: pb.GetAssistantRequest, context: Any
    ) -> pb.JsonReply:
        """JSON schemas of the assistant's graph input, output, state and config."""
        _assistant(self.assistants, request)
        return json_reply(self._schemas)
