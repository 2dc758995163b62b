"""The orchestrator as routes see it: one client bound to the caller's principal and the RPC
timeout. Only this module (with `runs` and `sse`) builds protobuf requests; replies come back as
the orchestrator's JSON (relayed untouched) and gRPC errors as problem details."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import grpc
import orjson
from opentelemetry.propagate import inject

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_common.runs import WORK_TRAILER
from cai_gateway.problems import from_rpc_error
from cai_gateway.runs import CreatedRun, create_run, watch
from cai_gateway.schemas import RunCreate
from cai_gateway.sse import open_stream

T = TypeVar("T")

# A cancel with wait=true lasts as long as the run takes to stop.
CANCEL_WAIT_SECONDS = 60


def dumps(value: object) -> bytes:
    """JSON bytes; None becomes empty (the proto's "not given")."""
    return b"" if value is None else orjson.dumps(value)


def trace_context() -> dict[str, str]:
    """The caller's W3C trace context, to carry into the queued job."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


async def _mapped(call: Awaitable[T], missing_ok: bool = False) -> T | None:
    """Await an RPC; NOT_FOUND is None when `missing_ok`, other errors become a Problem."""
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        if missing_ok and exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise from_rpc_error(exc) from None


@dataclass(frozen=True)
class OrchestratorClient:
    """`cai.v1.Orchestrator` for one request: every call carries its principal and deadline."""

    stub: OrchestratorStub
    principal: common_pb2.Principal
    timeout: float
    # Set the moment the gateway is told to stop (SIGTERM): event streams end with `reconnect`,
    # and a stream ending then is no client leaving (its run is not cancelled for it).
    shutdown: anyio.Event

    async def _call(
        self, method: str, request: Any, *, extra_s: float = 0, missing_ok: bool = False
    ) -> bytes | None:
        call = getattr(self.stub, method)(request, timeout=self.timeout + extra_s)
        reply = await _mapped(call, missing_ok)
        return None if reply is None else bytes(reply.json)

    async def _json(self, method: str, request: Any, *, extra_s: float = 0) -> bytes:
        return await self._call(method, request, extra_s=extra_s) or b""

    async def _metered(self, method: str, request: Any) -> tuple[bytes, int]:
        """The reply's JSON and how many records the orchestrator read for it."""
        call = getattr(self.stub, method)(request, timeout=self.timeout)
        reply: pb.JsonReply = await _mapped(call)  # type: ignore[assignment]  # never None here
        trailer = await call.trailing_metadata()
        read = trailer.get(WORK_TRAILER) if trailer is not None else None
        return bytes(reply.json), int(read or 0)

    # -- threads ---------------------------------------------------------------------------------

    async def create_thread(self, thread_id: str, metadata: Any, if_exists: str) -> bytes:
        """CreateThread ("" thread id: the orchestrator picks one)."""
        return await self._json("CreateThread", pb.CreateThreadRequest(
            principal=self.principal, thread_id=thread_id,
            metadata_json=orjson.dumps(metadata or {}), if_exists=if_exists,
        ))  # fmt: skip

    async def search_threads(
        self, *, metadata: Any = None, status: str = "", limit: int = 10, offset: int = 0,
        thread_ids: Sequence[str] = (),
    ) -> tuple[bytes, int]:  # fmt: skip
        """SearchThreads, newest first (or the `thread_ids`, in order); and the records read."""
        return await self._metered("SearchThreads", pb.SearchThreadsRequest(
            principal=self.principal, metadata_json=dumps(metadata or {}), status=status,
            limit=limit, offset=offset, thread_ids=thread_ids,
        ))  # fmt: skip

    async def get_thread(self, thread_id: str) -> bytes:
        """GetThread."""
        return await self._json("GetThread", self._thread(thread_id))

    async def update_thread(self, thread_id: str, metadata: Any) -> bytes:
        """UpdateThread (merges metadata)."""
        return await self._json("UpdateThread", pb.UpdateThreadRequest(
            principal=self.principal, thread_id=thread_id, metadata_json=dumps(metadata)
        ))  # fmt: skip

    async def delete_thread(self, thread_id: str) -> None:
        """DeleteThread."""
        await self._json("DeleteThread", self._thread(thread_id))

    def _thread(self, thread_id: str) -> pb.GetThreadRequest:
        return pb.GetThreadRequest(principal=self.principal, thread_id=thread_id)

    async def get_state(self, thread_id: str, checkpoint_id: str = "") -> bytes:
        """GetThreadState (the latest, or at a checkpoint)."""
        return await self._json("GetThreadState", self._state(thread_id, checkpoint_id))

    async def find_values(self, thread_id: str) -> bytes | None:
        """The thread's current values as JSON; None when the thread is gone."""
        state = await self._call("GetThreadState", self._state(thread_id, ""), missing_ok=True)
        return None if state is None else orjson.dumps(orjson.loads(state).get("values"))

    def _state(self, thread_id: str, checkpoint_id: str) -> pb.GetThreadStateRequest:
        return pb.GetThreadStateRequest(
            principal=self.principal, thread_id=thread_id, checkpoint_id=checkpoint_id
        )

    async def update_state(
        self, thread_id: str, values: Any, as_node: str, checkpoint_id: str
    ) -> bytes:
        """UpdateThreadState."""
        return await self._json("UpdateThreadState", pb.UpdateThreadStateRequest(
            principal=self.principal, thread_id=thread_id, values_json=dumps(values),
            as_node=as_node, checkpoint_id=checkpoint_id,
        ))  # fmt: skip

    async def history(self, thread_id: str, limit: int, before: str) -> bytes:
        """GetThreadHistory, newest first."""
        return await self._json("GetThreadHistory", pb.GetThreadHistoryRequest(
            principal=self.principal, thread_id=thread_id, limit=limit,
            before_checkpoint_id=before,
        ))  # fmt: skip

    async def search_assistants(
        self, *, metadata: Any = None, graph_id: str = "", limit: int = 10, offset: int = 0
    ) -> bytes:
        """SearchAssistants."""
        return await self._json("SearchAssistants", pb.SearchAssistantsRequest(
            principal=self.principal, metadata_json=dumps(metadata or {}), graph_id=graph_id,
            limit=limit, offset=offset,
        ))  # fmt: skip

    async def get_assistant(self, assistant_id: str, *, schemas: bool = False) -> bytes:
        """GetAssistant, or with `schemas` GetAssistantSchemas."""
        request = pb.GetAssistantRequest(principal=self.principal, assistant_id=assistant_id)
        return await self._json("GetAssistantSchemas" if schemas else "GetAssistant", request)

    async def create_run(
        self, thread_id: str, body: RunCreate, idempotency_key: str | None, *,
        stream_modes: list[str] | None = None, on_disconnect: str | None = None,
    ) -> CreatedRun:  # fmt: skip
        """CreateRun from a LangGraph run body ("" thread id: a stateless run)."""
        return await self._created(pb.CreateRunRequest(
            principal=self.principal, thread_id=thread_id, assistant_id=body.assistant_id,
            input_json=dumps(body.input), command_json=dumps(body.command),
            config_json=dumps(body.merged_config()), metadata_json=dumps(body.metadata),
            stream_modes=stream_modes or body.modes(),
            multitask_strategy=body.multitask_strategy or "",
            idempotency_key=idempotency_key or "", if_not_exists=body.if_not_exists or "",
            on_disconnect=on_disconnect or body.on_disconnect or "",
            stream_resumable=bool(body.stream_resumable), trace_context=trace_context(),
        ))  # fmt: skip

    async def create_message_run(
        self, *, thread_id: str, assistant_id: str, messages: list[dict[str, Any]],
        stream_modes: list[str], metadata: dict[str, Any], on_disconnect: str = "",
    ) -> CreatedRun:  # fmt: skip
        """A run that adds `messages` to a thread (created if missing) or runs stateless ("")."""
        return await self._created(pb.CreateRunRequest(
            principal=self.principal, thread_id=thread_id, assistant_id=assistant_id,
            input_json=orjson.dumps({"messages": messages}), metadata_json=orjson.dumps(metadata),
            stream_modes=stream_modes, if_not_exists="create" if thread_id else "",
            on_disconnect=on_disconnect, stream_resumable=True, trace_context=trace_context(),
        ))  # fmt: skip

    async def _created(self, request: pb.CreateRunRequest) -> CreatedRun:
        return await _mapped(create_run(self.stub, request, self.timeout))  # type: ignore[return-value]

    async def get_run(self, thread_id: str, run_id: str) -> bytes:
        """GetRun ("" thread id: any of the caller's threads)."""
        return await self._json("GetRun", self._run(thread_id, run_id))

    async def list_runs(
        self, thread_id: str, *, limit: int = 10, offset: int = 0, status: str = ""
    ) -> tuple[bytes, int]:
        """ListRuns, newest first; and the records read."""
        return await self._metered("ListRuns", pb.ListRunsRequest(
            principal=self.principal, thread_id=thread_id, limit=limit, offset=offset,
            status=status,
        ))  # fmt: skip

    async def cancel_run(
        self, thread_id: str, run_id: str, *, action: str = "", wait: bool = False
    ) -> bytes:
        """CancelRun; with `wait`, until the run has stopped (a longer deadline)."""
        request = pb.CancelRunRequest(
            principal=self.principal, thread_id=thread_id, run_id=run_id, action=action,
            wait=wait,
        )  # fmt: skip
        return await self._json("CancelRun", request, extra_s=CANCEL_WAIT_SECONDS if wait else 0)

    async def cancel_runs(
        self, thread_id: str, *, run_ids: Sequence[str] = (), status: str = "", action: str = ""
    ) -> tuple[dict[str, Any], int]:
        """CancelRuns (by ids, or by status): `{run_ids: [found], more}` and the records read."""
        reply, read = await self._metered("CancelRuns", pb.CancelRunsRequest(
            principal=self.principal, thread_id=thread_id, run_ids=run_ids, status=status,
            action=action,
        ))  # fmt: skip
        return orjson.loads(reply), read

    async def delete_run(self, thread_id: str, run_id: str) -> None:
        """DeleteRun (a finished run)."""
        await self._json("DeleteRun", self._run(thread_id, run_id))

    def _run(self, thread_id: str, run_id: str) -> pb.GetRunRequest:
        return pb.GetRunRequest(principal=self.principal, thread_id=thread_id, run_id=run_id)

    # -- event streams (no deadline: they last as long as the run) -------------------------------

    def _stream(
        self, thread_id: str, run_id: str, after_event_id: str, cancel_on_disconnect: bool
    ) -> pb.StreamRunRequest:
        return pb.StreamRunRequest(
            principal=self.principal, thread_id=thread_id, run_id=run_id,
            after_event_id=after_event_id, cancel_on_disconnect=cancel_on_disconnect,
        )  # fmt: skip

    async def sse(
        self, thread_id: str, run_id: str, *, after_event_id: str = "",
        cancel_on_disconnect: bool = False, started_at: float | None = None,
    ) -> AsyncIterator[bytes]:  # fmt: skip
        """A run's events as LangGraph SSE bytes (see `sse.open_stream`)."""
        request = self._stream(thread_id, run_id, after_event_id, cancel_on_disconnect)
        return await open_stream(self.stub, request, self.shutdown, started_at)

    async def watch(
        self, thread_id: str, run_id: str, *, after_event_id: str = "",
        cancel_on_disconnect: bool = False, through_shutdown: bool = False,
    ) -> AsyncIterator[Sequence[pb.RunEvent]]:  # fmt: skip
        """A run's event batches to the end (see `runs.watch`); `through_shutdown` keeps going
        through the gateway's shutdown grace period (for clients that cannot resume)."""
        request = self._stream(thread_id, run_id, after_event_id, cancel_on_disconnect)
        shutdown = anyio.Event() if through_shutdown else self.shutdown
        return await watch(self.stub, request, shutdown, stopping=self.shutdown)
