"""cai.v1.Orchestrator: threads and runs."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from redis.exceptions import RedisError

from cai.v1 import orchestrator_pb2 as pb
from cai.v1 import orchestrator_pb2_grpc
from cai_orchestrator import keys
from cai_orchestrator.assistants import GRAPH_ID, Assistants
from cai_orchestrator.convert import InvalidRequest, json_field, json_reply, new_run, tenant_of
from cai_orchestrator.events import TERMINAL_EVENTS, EventWriter, LogTailer, dumps, parse_event_id
from cai_orchestrator.runner import SUPPORTED_STREAM_MODES
from cai_orchestrator.state import snapshot_to_api
from cai_orchestrator.store import TERMINAL_STATUSES, RunStore, StoreError

log = logging.getLogger(__name__)

_STORE_CODES = {
    "not_found": grpc.StatusCode.NOT_FOUND,
    "already_exists": grpc.StatusCode.ALREADY_EXISTS,
    "conflict": grpc.StatusCode.FAILED_PRECONDITION,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
}

_CANCEL_PENDING = """
if redis.call('LREM', KEYS[1], 0, ARGV[1]) > 0 then
  redis.call('HSET', KEYS[2], 'status', 'interrupted', 'updated_at', ARGV[2])
  return 1
end
return 0
"""

R = TypeVar("R")


def unary(
    fn: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    """Map domain errors onto gRPC status codes with a message; never leak a traceback."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> R:
        try:
            return await fn(self, request, context)
        except InvalidRequest as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except StoreError as exc:
            await context.abort(_STORE_CODES.get(exc.code, grpc.StatusCode.UNKNOWN), exc.message)
        except (RedisError, OSError) as exc:
            log.warning("redis unavailable", extra={"error": str(exc)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Run store (Redis) is unavailable")
        raise AssertionError("unreachable")  # pragma: no cover - abort raises

    return wrapper


class OrchestratorServicer(orchestrator_pb2_grpc.OrchestratorServicer):
    """Threads and runs over the run store, the queue and the event logs."""

    def __init__(
        self,
        store: RunStore,
        tailer: LogTailer,
        graph: CompiledStateGraph,
        assistants: Assistants,
        cancel_local: Callable[[str, str], bool],
        event_log_ttl_s: int,
        heartbeat_s: float,
    ) -> None:
        self.store = store
        self.tailer = tailer
        self.graph = graph
        self.assistants = assistants
        self.cancel_local = cancel_local
        self.event_log_ttl_s = event_log_ttl_s
        self.heartbeat_s = heartbeat_s
        self._cancel_pending = store.redis.register_script(_CANCEL_PENDING)

    async def _thread_values(self, thread_id: str) -> tuple[Any, dict[str, Any]]:
        """The thread's current values and its pending interrupts by task id."""
        snapshot = await self.graph.aget_state({"configurable": {"thread_id": thread_id}})
        interrupts = {
            t.id: [{"value": i.value, "id": i.id} for i in t.interrupts]
            for t in snapshot.tasks
            if t.interrupts
        }
        return snapshot.values or None, interrupts

    @unary
    async def CreateThread(self, request: pb.CreateThreadRequest, context: Any) -> pb.JsonReply:
        """Create a thread."""
        tenant = tenant_of(request.principal)
        if request.if_exists not in ("", "raise", "do_nothing"):
            raise InvalidRequest("if_exists must be 'raise' or 'do_nothing'")
        metadata = json_field(request.metadata_json, "metadata", {})
        thread = await self.store.create_thread(
            tenant, request.thread_id, metadata, request.if_exists or "raise"
        )
        return json_reply(thread.to_api())

    @unary
    async def GetThread(self, request: pb.GetThreadRequest, context: Any) -> pb.JsonReply:
        """Get a thread with its current values."""
        thread = await self.store.get_thread(tenant_of(request.principal), request.thread_id)
        if thread is None:
            raise StoreError("not_found", f"Thread {request.thread_id} not found")
        values, interrupts = await self._thread_values(thread.thread_id)
        return json_reply(thread.to_api(values, interrupts))

    @unary
    async def GetThreadState(self, request: pb.GetThreadStateRequest, context: Any) -> pb.JsonReply:
        """Get a thread's state at its latest (or a given) checkpoint."""
        thread = await self.store.get_thread(tenant_of(request.principal), request.thread_id)
        if thread is None:
            raise StoreError("not_found", f"Thread {request.thread_id} not found")
        configurable: dict[str, Any] = {"thread_id": thread.thread_id}
        if request.checkpoint_id:
            configurable["checkpoint_id"] = request.checkpoint_id
        snapshot = await self.graph.aget_state({"configurable": configurable})
        return json_reply(snapshot_to_api(snapshot, thread.thread_id))

    @unary
    async def CreateRun(self, request: pb.CreateRunRequest, context: Any) -> pb.JsonReply:
        """Create a run and queue it (or park it behind the thread's active run)."""
        modes = list(request.stream_modes) or ["values"]
        bad = [m for m in modes if m not in SUPPORTED_STREAM_MODES]
        if bad:
            raise InvalidRequest(
                f"stream_mode {bad} not supported; supported: {sorted(SUPPORTED_STREAM_MODES)}"
            )
        new = new_run(request, modes)
        if self.assistants.get(new.assistant_id) is None:
            raise StoreError("not_found", f"Assistant {new.assistant_id} not found")
        if new.thread_id:
            thread = await self.store.get_thread(new.tenant, new.thread_id)
            pinned = thread.metadata.get("assistant_id") if thread else None
            if pinned and pinned != new.assistant_id:
                raise StoreError(
                    "conflict",
                    f"Thread {new.thread_id} is pinned to assistant {pinned!r} by its metadata",
                )
        run, _ = await self.store.create_run(new)
        return json_reply(run.to_api())

    @unary
    async def GetRun(self, request: pb.GetRunRequest, context: Any) -> pb.JsonReply:
        """Get a run."""
        run = await self.store.get_run(
            tenant_of(request.principal), request.run_id, request.thread_id
        )
        if run is None:
            raise StoreError("not_found", f"Run {request.run_id} not found")
        body = run.to_api()
        if run.status == "pending":
            body["queue"] = await self.store.queue_position(run)
        return json_reply(body)

    @unary
    async def ListRuns(self, request: pb.ListRunsRequest, context: Any) -> pb.JsonReply:
        """List a thread's runs, newest first."""
        tenant = tenant_of(request.principal)
        if await self.store.get_thread(tenant, request.thread_id) is None:
            raise StoreError("not_found", f"Thread {request.thread_id} not found")
        limit = request.limit or 10
        if not 1 <= limit <= 1000 or request.offset < 0:
            raise InvalidRequest("limit must be 1..1000 and offset >= 0")
        runs = await self.store.list_runs(
            tenant, request.thread_id, limit, request.offset, request.status
        )
        return json_reply([r.to_api() for r in runs])

    async def StreamRun(
        self, request: pb.StreamRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamRunReply]:
        """Replay the run's events after `after_event_id`, then follow them to the end."""
        try:
            tenant = tenant_of(request.principal)
            after = parse_event_id(request.after_event_id)
            run = await self.store.get_run(tenant, request.run_id, request.thread_id)
            if run is None:
                raise StoreError("not_found", f"Run {request.run_id} not found")
            if run.status in TERMINAL_STATUSES and not await self.store.redis.exists(
                keys.events(run.run_id)
            ):
                return  # ended long ago; its log has expired
            sub = await self.tailer.subscribe(run.run_id, after)
        except (InvalidRequest, ValueError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            return
        except StoreError as exc:
            await context.abort(_STORE_CODES[exc.code], exc.message)
            return
        except (RedisError, OSError):
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Run store (Redis) is unavailable")
            return
        finished = False
        try:
            yield pb.StreamRunReply()  # accepted: the gateway may start its response now
            while True:
                try:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                    # cancellation (the client leaving) that lands as the queue yields.
                    async with asyncio.timeout(self.heartbeat_s):
                        batch = await sub.queue.get()
                except TimeoutError:
                    current = await self.store.get_run(tenant, run.run_id)
                    if current is None:
                        finished = True
                        return
                    yield pb.StreamRunReply()  # keeps idle proxies and the gateway informed
                    continue
                yield pb.StreamRunReply(
                    events=[
                        pb.RunEvent(id=i.decode(), event=e.decode(), data=d) for i, e, d in batch
                    ]
                )
                if any(e.decode() in TERMINAL_EVENTS for _, e, _ in batch):
                    finished = True
                    return
        finally:
            self.tailer.unsubscribe(sub)
            if not finished and request.cancel_on_disconnect:
                with contextlib.suppress(RedisError, StoreError):
                    await self._cancel(run.tenant, run.thread_id, run.run_id, "interrupt")

    async def _cancel(self, tenant: str, thread_id: str, run_id: str, action: str) -> Any:
        run = await self.store.get_run(tenant, run_id, thread_id)
        if run is None:
            raise StoreError("not_found", f"Run {run_id} not found")
        if run.status in TERMINAL_STATUSES:
            return run  # a no-op: report its final status
        redis = self.store.redis
        await redis.set(keys.cancel(run_id), action, ex=86400)
        from cai_orchestrator.store import now_iso

        parked = await self._cancel_pending(
            keys=[keys.thread_pending(run.thread_id), keys.run(run_id)], args=[run_id, now_iso()]
        )
        if parked:
            writer = EventWriter(redis, run_id, 0, self.event_log_ttl_s)
            await writer.close(
                "cancelled",
                dumps({"action": action, "message": "Run was cancelled before it started"}),
                self.event_log_ttl_s,
            )
        elif not self.cancel_local(run_id, action):
            await redis.publish(keys.CANCEL_CHANNEL, f"{run_id} {action}")
        return run

    @unary
    async def CancelRun(self, request: pb.CancelRunRequest, context: Any) -> pb.JsonReply:
        """Cancel a run: interrupt keeps completed steps, rollback discards the run's steps."""
        tenant = tenant_of(request.principal)
        action = request.action or "interrupt"
        if action not in ("interrupt", "rollback"):
            raise InvalidRequest("action must be 'interrupt' or 'rollback'")
        run = await self._cancel(tenant, request.thread_id, request.run_id, action)
        if request.wait and run.status not in TERMINAL_STATUSES:
            sub = await self.tailer.subscribe(run.run_id, (0, 0))
            try:
                async with asyncio.timeout(60):
                    while not any(
                        e.decode() in TERMINAL_EVENTS for _, e, _ in await sub.queue.get()
                    ):
                        pass
            except TimeoutError:
                pass
            finally:
                self.tailer.unsubscribe(sub)
        final = await self.store.get_run(tenant, request.run_id)
        return json_reply((final or run).to_api())

    # -- run and thread management ----------------------------------------------------------

    @unary
    async def DeleteRun(self, request: pb.GetRunRequest, context: Any) -> pb.JsonReply:
        """Delete a finished run's record and event log."""
        run = await self.store.get_run(
            tenant_of(request.principal), request.run_id, request.thread_id
        )
        if run is None:
            raise StoreError("not_found", f"Run {request.run_id} not found")
        if run.status not in TERMINAL_STATUSES:
            raise StoreError("conflict", f"Run {run.run_id} is {run.status}; cancel it first")
        await self.store.delete_run_records(run)
        return json_reply({"run_id": run.run_id, "deleted": True})

    @unary
    async def SearchThreads(self, request: pb.SearchThreadsRequest, context: Any) -> pb.JsonReply:
        """Search the caller's threads by metadata and status, newest first."""
        tenant = tenant_of(request.principal)
        limit = request.limit or 10
        if not 1 <= limit <= 1000 or request.offset < 0:
            raise InvalidRequest("limit must be 1..1000 and offset >= 0")
        if request.status not in ("", "idle", "busy", "interrupted", "error"):
            raise InvalidRequest("status must be idle, busy, interrupted or error")
        metadata = json_field(request.metadata_json, "metadata", {})
        threads = await self.store.search_threads(
            tenant, metadata, request.status, limit, request.offset
        )
        return json_reply([t.to_api() for t in threads])

    @unary
    async def UpdateThread(self, request: pb.UpdateThreadRequest, context: Any) -> pb.JsonReply:
        """Merge metadata into a thread."""
        metadata = json_field(request.metadata_json, "metadata", {})
        thread = await self.store.update_thread_metadata(
            tenant_of(request.principal), request.thread_id, metadata
        )
        return json_reply(thread.to_api())

    @unary
    async def DeleteThread(self, request: pb.GetThreadRequest, context: Any) -> pb.JsonReply:
        """Delete a thread with its checkpoints and its runs' data (an active run is cancelled)."""
        tenant = tenant_of(request.principal)
        thread = await self.store.get_thread(tenant, request.thread_id)
        if thread is None:
            raise StoreError("not_found", f"Thread {request.thread_id} not found")
        if thread.active_run:
            with contextlib.suppress(StoreError):
                await self._cancel(tenant, thread.thread_id, thread.active_run, "interrupt")
        runs = await self.store.delete_thread_records(tenant, thread.thread_id)
        await self.graph.checkpointer.adelete_thread(thread.thread_id)  # type: ignore[union-attr]
        return json_reply({"thread_id": thread.thread_id, "deleted": True, "runs_deleted": runs})

    @unary
    async def GetThreadHistory(
        self, request: pb.GetThreadHistoryRequest, context: Any
    ) -> pb.JsonReply:
        """A thread's past states, newest first."""
        thread = await self.store.get_thread(tenant_of(request.principal), request.thread_id)
        if thread is None:
            raise StoreError("not_found", f"Thread {request.thread_id} not found")
        limit = request.limit or 10
        if not 1 <= limit <= 1000:
            raise InvalidRequest("limit must be 1..1000")
        config: RunnableConfig = {"configurable": {"thread_id": thread.thread_id}}
        # The Redis saver ignores `before` (an upstream conformance failure), so page past the
        # named checkpoint here, which works the same on every saver.
        before = request.before_checkpoint_id
        states: list[dict[str, Any]] = []
        seen_before = not before
        async for snapshot in self.graph.aget_state_history(config):
            if not seen_before:
                checkpoint_id = snapshot.config.get("configurable", {}).get("checkpoint_id")
                seen_before = checkpoint_id == before
                continue
            states.append(snapshot_to_api(snapshot, thread.thread_id))
            if len(states) >= limit:
                break
        return json_reply(states)

    @unary
    async def UpdateThreadState(
        self, request: pb.UpdateThreadStateRequest, context: Any
    ) -> pb.JsonReply:
        """Write an update to a thread's state as a new checkpoint (not while a run is active)."""
        thread = await self.store.get_thread(tenant_of(request.principal), request.thread_id)
        if thread is None:
            raise StoreError("not_found", f"Thread {request.thread_id} not found")
        if thread.active_run:
            raise StoreError(
                "conflict", f"Thread {thread.thread_id} has an active run; update it afterwards"
            )
        values = json_field(request.values_json, "values", None, kind=None)
        if request.as_node and request.as_node not in self.graph.nodes:
            raise InvalidRequest(f"as_node {request.as_node!r} is not a node of the graph")
        configurable: dict[str, Any] = {"thread_id": thread.thread_id, "checkpoint_ns": ""}
        if request.checkpoint_id:
            configurable["checkpoint_id"] = request.checkpoint_id
        try:
            new_config = await self.graph.aupdate_state(
                {"configurable": configurable}, values, as_node=request.as_node or None
            )
        except (ValueError, KeyError, TypeError) as exc:  # LangGraph's own validation
            raise InvalidRequest(f"cannot apply this update: {exc}") from exc
        c = new_config["configurable"]
        return json_reply(
            {
                "checkpoint": {
                    "thread_id": c.get("thread_id"),
                    "checkpoint_ns": c.get("checkpoint_ns", ""),
                    "checkpoint_id": c.get("checkpoint_id"),
                }
            }
        )

    # -- assistants -------------------------------------------------------------------------

    @unary
    async def SearchAssistants(
        self, request: pb.SearchAssistantsRequest, context: Any
    ) -> pb.JsonReply:
        """List assistants, filtered by metadata and graph id."""
        tenant_of(request.principal)
        limit = request.limit or 10
        if not 1 <= limit <= 1000 or request.offset < 0:
            raise InvalidRequest("limit must be 1..1000 and offset >= 0")
        metadata = json_field(request.metadata_json, "metadata", {})
        found = [
            a.to_api()
            for a in self.assistants.by_id.values()
            if (not request.graph_id or request.graph_id == GRAPH_ID)
            and all(a.metadata.get(k) == v for k, v in metadata.items())
        ]
        return json_reply(found[request.offset : request.offset + limit])

    @unary
    async def GetAssistant(self, request: pb.GetAssistantRequest, context: Any) -> pb.JsonReply:
        """Get an assistant."""
        tenant_of(request.principal)
        assistant = self.assistants.get(request.assistant_id)
        if assistant is None:
            raise StoreError("not_found", f"Assistant {request.assistant_id} not found")
        return json_reply(assistant.to_api())

    @unary
    async def GetAssistantSchemas(
        self, request: pb.GetAssistantRequest, context: Any
    ) -> pb.JsonReply:
        """JSON schemas of the assistant's graph input, output, state and config."""
        tenant_of(request.principal)
        if self.assistants.get(request.assistant_id) is None:
            raise StoreError("not_found", f"Assistant {request.assistant_id} not found")
        return json_reply(self._schemas())

    @functools.cache  # noqa: B019 - one servicer per process; the graph never changes
    def _schemas(self) -> dict[str, Any]:
        return {
            "graph_id": GRAPH_ID,
            "input_schema": self.graph.get_input_jsonschema(),
            "output_schema": self.graph.get_output_jsonschema(),
            "state_schema": self.graph.get_output_jsonschema(),
            "config_schema": self.graph.config_schema().model_json_schema(),
            "context_schema": None,
        }
