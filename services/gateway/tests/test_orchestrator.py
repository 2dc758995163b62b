"""The OrchestratorClient over real gRPC: an in-process `cai.v1.Orchestrator` records every request
(and its deadline) and answers JSON or the error it was told to."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import grpc
import pytest

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub, add_OrchestratorServicer_to_server
from cai_common.runs import END
from cai_gateway.orchestrator import CANCEL_WAIT_SECONDS, OrchestratorClient
from cai_gateway.problems import Problem
from cai_gateway.runs import drain
from cai_gateway.schemas import RunCreate

PRINCIPAL = common_pb2.Principal(tenant_id="tenant-a", subject="key-a")
TIMEOUT = 7.0
THREAD = "6f1c1f3e-9c2b-4a52-9a51-2f9f7f0a6a11"
RUN = "0b6f9d3e-2d1c-4f0a-9a51-2f9f7f0a6a11"
REPLY = b'{"run_id":"%s","thread_id":"%s","values":{"x":1}}' % (RUN.encode(), THREAD.encode())


class RecordingOrchestrator:
    """Every unary RPC records (method, request, seconds left) and answers REPLY, or aborts with
    `fail`; StreamRun accepts the stream and sends one END event."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any, float | None]] = []
        self.fail: tuple[grpc.StatusCode, str] | None = None

    def __getattr__(self, method: str) -> Callable[..., Awaitable[pb.JsonReply]]:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> pb.JsonReply:
            self.calls.append((method, request, context.time_remaining()))
            if self.fail is not None:
                await context.abort(*self.fail)
            return pb.JsonReply(json=REPLY)

        return handle

    async def StreamRun(  # noqa: N802 (the generated servicer's name)
        self, request: pb.StreamRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamRunReply]:
        """Record the request, accept it, send END."""
        self.calls.append(("StreamRun", request, context.time_remaining()))
        yield pb.StreamRunReply()
        yield pb.StreamRunReply(events=[pb.RunEvent(id="1-0", event=END, data=b"null")])


@pytest.fixture
async def served() -> AsyncIterator[tuple[RecordingOrchestrator, OrchestratorClient]]:
    servicer = RecordingOrchestrator()
    server = grpc.aio.server()
    add_OrchestratorServicer_to_server(servicer, server)  # type: ignore[arg-type]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        stub = OrchestratorStub(channel)
        yield servicer, OrchestratorClient(stub, PRINCIPAL, TIMEOUT, anyio.Event())
    finally:
        await channel.close()
        await server.stop(None)


Call = Callable[[OrchestratorClient], Awaitable[object]]

# Every unary method of the client, with the RPC it must make.
UNARY: list[tuple[str, Call]] = [
    ("CreateThread", lambda c: c.create_thread(THREAD, {"a": 1}, "do_nothing")),
    ("SearchThreads", lambda c: c.search_threads(status="busy", limit=5)),
    ("GetThread", lambda c: c.get_thread(THREAD)),
    ("UpdateThread", lambda c: c.update_thread(THREAD, {"a": 2})),
    ("DeleteThread", lambda c: c.delete_thread(THREAD)),
    ("GetThreadState", lambda c: c.get_state(THREAD, "cp-1")),
    ("GetThreadState", lambda c: c.find_values(THREAD)),
    ("UpdateThreadState", lambda c: c.update_state(THREAD, {"x": 1}, "node", "")),
    ("GetThreadHistory", lambda c: c.history(THREAD, 10, "")),
    ("SearchAssistants", lambda c: c.search_assistants(graph_id="agent")),
    ("GetAssistant", lambda c: c.get_assistant("agent")),
    ("GetAssistantSchemas", lambda c: c.get_assistant("agent", schemas=True)),
    ("CreateRun", lambda c: c.create_run(THREAD, RunCreate(assistant_id="agent"), "key-1")),
    (
        "CreateRun",
        lambda c: c.create_message_run(
            thread_id="", assistant_id="agent", messages=[], stream_modes=[], metadata={}
        ),
    ),
    ("GetRun", lambda c: c.get_run(THREAD, RUN)),
    ("ListRuns", lambda c: c.list_runs(THREAD, status="running")),
    ("CancelRun", lambda c: c.cancel_run(THREAD, RUN, action="interrupt")),
    ("CancelRuns", lambda c: c.cancel_runs(THREAD, status="all", action="rollback")),
    ("DeleteRun", lambda c: c.delete_run(THREAD, RUN)),
]


@pytest.mark.parametrize(("rpc", "call"), UNARY, ids=[f"{r}-{i}" for i, (r, _) in enumerate(UNARY)])
async def test_every_call_carries_the_principal_and_the_deadline(
    served: tuple[RecordingOrchestrator, OrchestratorClient], rpc: str, call: Call
) -> None:
    servicer, client = served
    await call(client)
    [(method, request, left)] = servicer.calls
    assert method == rpc
    assert request.principal == PRINCIPAL
    assert left is not None and abs(left - TIMEOUT) < 1  # (the wire format rounds deadlines)


async def test_a_waiting_cancel_gets_a_longer_deadline(
    served: tuple[RecordingOrchestrator, OrchestratorClient],
) -> None:
    servicer, client = served
    await client.cancel_run("", RUN, wait=True)
    [(_, request, left)] = servicer.calls
    assert request.wait and request.thread_id == "" and request.run_id == RUN
    assert left is not None and abs(left - TIMEOUT - CANCEL_WAIT_SECONDS) < 1


async def test_replies_are_the_orchestrators_json_and_runs_their_ids(
    served: tuple[RecordingOrchestrator, OrchestratorClient],
) -> None:
    servicer, client = served
    assert await client.get_run(THREAD, RUN) == REPLY
    assert await client.find_values(THREAD) == b'{"x":1}'
    run = await client.create_run("", RunCreate(assistant_id="agent"), None, on_disconnect="cancel")
    assert (run.json, run.run_id, run.thread_id) == (REPLY, RUN, THREAD)
    sent = servicer.calls[-1][1]
    assert (sent.thread_id, sent.assistant_id, sent.on_disconnect) == ("", "agent", "cancel")


@pytest.mark.parametrize(
    ("code", "status", "detail", "headers"),
    [
        (grpc.StatusCode.NOT_FOUND, 404, "thread not found", None),
        (grpc.StatusCode.PERMISSION_DENIED, 404, "thread not found", None),
        (grpc.StatusCode.INVALID_ARGUMENT, 422, "thread not found", None),
        (grpc.StatusCode.FAILED_PRECONDITION, 409, "thread not found", None),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 413, "thread not found", None),
        (
            grpc.StatusCode.UNAVAILABLE,
            503,
            "The orchestrator is unavailable; try again shortly",
            {"Retry-After": "1"},
        ),
        (grpc.StatusCode.INTERNAL, 502, "The orchestrator failed to answer", None),
    ],
)
async def test_rpc_errors_become_the_same_problems_as_before(
    served: tuple[RecordingOrchestrator, OrchestratorClient],
    code: grpc.StatusCode,
    status: int,
    detail: str,
    headers: dict[str, str] | None,
) -> None:
    servicer, client = served
    servicer.fail = (code, "thread not found")
    for call in (client.get_thread(THREAD), client.create_run(THREAD, RunCreate(), None)):
        with pytest.raises(Problem) as caught:
            await call
        got = caught.value.detail
        if status == 502:  # details go to the log, under an id the problem names
            error_id = caught.value.extra["error_id"]
            assert got == f"{detail} (error id {error_id})" and "not found" not in got
            got = detail
        assert (caught.value.status, got, caught.value.headers) == (status, detail, headers)


async def test_only_not_found_means_missing(
    served: tuple[RecordingOrchestrator, OrchestratorClient],
) -> None:
    servicer, client = served
    servicer.fail = (grpc.StatusCode.NOT_FOUND, "gone")
    assert await client.find_values(THREAD) is None
    # Another tenant's thread stays an error (a 404 problem), never a silent "missing".
    servicer.fail = (grpc.StatusCode.PERMISSION_DENIED, "not yours")
    with pytest.raises(Problem) as caught:
        await client.find_values(THREAD)
    assert caught.value.status == 404


async def test_event_streams_carry_the_principal_and_the_position(
    served: tuple[RecordingOrchestrator, OrchestratorClient],
) -> None:
    servicer, client = served
    batches = await client.watch(THREAD, RUN, after_event_id="0-1", cancel_on_disconnect=True)
    assert (await drain(batches)).terminal == END
    frames = [chunk async for chunk in await client.sse(THREAD, RUN)]
    assert frames == [b"id: 1-0\nevent: end\ndata: null\n\n"]
    (_, watched, _), (_, relayed, _) = servicer.calls
    assert watched.principal == PRINCIPAL and relayed.principal == PRINCIPAL
    assert (watched.thread_id, watched.run_id, watched.after_event_id) == (THREAD, RUN, "0-1")
    assert watched.cancel_on_disconnect and not relayed.cancel_on_disconnect
