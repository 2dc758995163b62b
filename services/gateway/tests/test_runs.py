"""The gateway's run client over real gRPC: a scripted orchestrator serves StreamRun and
CreateRun, the gateway's `create_run`, `watch` and `drain` talk to it through a real channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import grpc
import pytest

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import (
    OrchestratorServicer,
    OrchestratorStub,
    add_OrchestratorServicer_to_server,
)
from cai_common.runs import END, METADATA, RETRY
from cai_gateway import runs as runs_module
from cai_gateway.problems import Problem
from cai_gateway.runs import StreamInterrupted, create_run, drain, watch

PRINCIPAL = common_pb2.Principal(tenant_id="tenant-a", subject="a")
RUN = "0b6f9d3e-2d1c-4f0a-9a51-2f9f7f0a6a11"
THREAD = "6f1c1f3e-9c2b-4a52-9a51-2f9f7f0a6a11"


def ev(event_id: str, event: str, data: bytes = b"{}") -> pb.RunEvent:
    return pb.RunEvent(id=event_id, event=event, data=data)


LOG = [
    ev("1-0", METADATA),
    ev("2-0", "messages", b'[{"type":"AIMessageChunk","content":"Hel"},{}]'),
    ev("3-0", "values", b'{"messages":[1]}'),
    ev("4-0", "messages", b'[{"type":"AIMessageChunk","content":"lo"},{}]'),
    ev("5-0", "values", b'{"messages":[1,2]}'),
    ev("6-0", END, b"null"),
]

# One StreamRun call: (the request, the servicer context) → replies to send, or an abort.
Script = Callable[[pb.StreamRunRequest, grpc.aio.ServicerContext], AsyncIterator[pb.StreamRunReply]]


class ScriptedOrchestrator(OrchestratorServicer):
    """Answers each StreamRun with the next script; records every request it was sent."""

    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self.requests: list[pb.StreamRunRequest] = []
        self.cancelled: list[str] = []  # run ids CancelRun was called for

    async def StreamRun(  # noqa: N802 (the generated servicer's name)
        self, request: pb.StreamRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamRunReply]:
        """Play the next script."""
        self.requests.append(pb.StreamRunRequest.FromString(request.SerializeToString()))
        async for reply in self.scripts.pop(0)(request, context):
            yield reply

    async def CancelRun(  # noqa: N802
        self, request: pb.CancelRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.JsonReply:
        """Record the cancel."""
        self.cancelled.append(request.run_id)
        return pb.JsonReply(json=b"{}")

    async def CreateRun(  # noqa: N802
        self, request: pb.CreateRunRequest, context: grpc.aio.ServicerContext
    ) -> pb.JsonReply:
        """Accept the run on the requested thread."""
        return pb.JsonReply(
            json=b'{"run_id":"%s","thread_id":"%s","status":"pending"}'
            % (RUN.encode(), request.thread_id.encode())
        )


def serve_log(
    after: str | None = None, until: str | None = None, then_fail: bool = False
) -> Script:
    """Accept the stream, send LOG's events after `after` up to `until`, then end or break."""

    async def script(
        request: pb.StreamRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamRunReply]:
        yield pb.StreamRunReply()  # accepted
        ids = [e.id for e in LOG]
        start = ids.index(after) + 1 if after else 0
        stop = ids.index(until) + 1 if until else len(LOG)
        for event in LOG[start:stop]:
            yield pb.StreamRunReply(events=[event])
        if then_fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "orchestrator going away")

    return script


@pytest.fixture
async def orchestrator() -> AsyncIterator[tuple[ScriptedOrchestrator, OrchestratorStub]]:
    servicer = ScriptedOrchestrator()
    server = grpc.aio.server()
    add_OrchestratorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield servicer, OrchestratorStub(channel)
    finally:
        await channel.close()
        await server.stop(None)


def stream_request(after: str = "") -> pb.StreamRunRequest:
    return pb.StreamRunRequest(
        principal=PRINCIPAL, thread_id=THREAD, run_id=RUN, after_event_id=after
    )


async def all_events(batches: AsyncIterator[Any]) -> list[str]:
    return [e.id async for events in batches for e in events]


async def test_create_run_gives_the_ids_the_path_and_the_json_untouched(
    orchestrator: tuple[ScriptedOrchestrator, OrchestratorStub],
) -> None:
    _, stub = orchestrator
    run = await create_run(stub, pb.CreateRunRequest(principal=PRINCIPAL, thread_id=THREAD), 5)
    assert (run.run_id, run.thread_id) == (RUN, THREAD)
    assert run.path == f"/threads/{THREAD}/runs/{RUN}"
    assert run.json.startswith(b'{"run_id":"' + RUN.encode())
    request = run.stream_request(PRINCIPAL, cancel_on_disconnect=True)
    assert (request.run_id, request.thread_id, request.cancel_on_disconnect) == (RUN, THREAD, True)


async def test_a_broken_stream_is_reopened_after_the_last_event_seen_and_nothing_repeats(
    orchestrator: tuple[ScriptedOrchestrator, OrchestratorStub],
) -> None:
    servicer, stub = orchestrator
    servicer.scripts = [serve_log(until="3-0", then_fail=True), serve_log(after="3-0")]
    ids = await all_events(await watch(stub, stream_request(), anyio.Event()))
    assert ids == [e.id for e in LOG]
    assert [r.after_event_id for r in servicer.requests] == ["", "3-0"]


async def test_drain_gives_the_terminal_event_and_the_last_values_across_a_reopen(
    orchestrator: tuple[ScriptedOrchestrator, OrchestratorStub],
) -> None:
    servicer, stub = orchestrator
    servicer.scripts = [serve_log(until="4-0", then_fail=True), serve_log(after="4-0")]
    outcome = await drain(await watch(stub, stream_request(), anyio.Event()))
    assert (outcome.terminal, outcome.data) == (END, b"null")
    assert outcome.last_values == b'{"messages":[1,2]}'


async def test_an_unknown_run_is_an_http_error_before_any_event(
    orchestrator: tuple[ScriptedOrchestrator, OrchestratorStub],
) -> None:
    servicer, stub = orchestrator

    async def not_found(
        request: pb.StreamRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamRunReply]:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"Run {request.run_id} not found")
        yield pb.StreamRunReply()  # never reached: makes this a generator

    servicer.scripts = [not_found]
    with pytest.raises(Problem) as caught:
        await watch(stub, stream_request(), anyio.Event())
    assert caught.value.status == 404 and RUN in caught.value.detail


async def test_an_orchestrator_that_never_comes_back_ends_in_stream_interrupted(
    orchestrator: tuple[ScriptedOrchestrator, OrchestratorStub],
) -> None:
    servicer, stub = orchestrator

    async def unavailable(
        request: pb.StreamRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamRunReply]:
        await context.abort(grpc.StatusCode.UNAVAILABLE, "no orchestrator")
        yield pb.StreamRunReply()

    # The first stream breaks after two events; every reopen is refused (503) until `follow`
    # gives up after its 5 attempts.
    servicer.scripts = [serve_log(until="2-0", then_fail=True)] + [unavailable] * 6
    seen: list[str] = []
    with pytest.raises(StreamInterrupted):
        async for events in await watch(stub, stream_request(), anyio.Event()):
            seen += [e.id for e in events]
    assert seen == ["1-0", "2-0"]
    assert {r.after_event_id for r in servicer.requests[1:]} == {"2-0"}


async def test_gateway_shutdown_stops_the_watch_with_stream_interrupted(
    orchestrator: tuple[ScriptedOrchestrator, OrchestratorStub],
) -> None:
    servicer, stub = orchestrator

    async def slow_run(
        request: pb.StreamRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamRunReply]:
        yield pb.StreamRunReply()
        yield pb.StreamRunReply(events=[LOG[0], ev("1-1", RETRY, b'{"attempt":2}')])
        await asyncio.Event().wait()  # the run goes on; only the gateway's shutdown ends this

    servicer.scripts = [slow_run]
    shutdown = anyio.Event()
    batches = await watch(stub, stream_request(), shutdown)
    seen: list[str] = []
    received = asyncio.Event()

    async def consume() -> None:
        async for events in batches:
            seen.extend(e.id for e in events)
            received.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(received.wait(), 5)
    shutdown.set()
    with pytest.raises(StreamInterrupted, match="shutting down"):
        await asyncio.wait_for(task, 5)
    assert seen == ["1-0", "1-1"]
    assert len(servicer.requests) == 1  # a shutting-down gateway does not reopen


async def endless_run(
    request: pb.StreamRunRequest, context: grpc.aio.ServicerContext
) -> AsyncIterator[pb.StreamRunReply]:
    """A run that streams its first events and then goes on (until the stream is ended)."""
    yield pb.StreamRunReply()
    yield pb.StreamRunReply(events=LOG[:2])
    await asyncio.Event().wait()


async def leave_after_first_batch(batches: AsyncIterator[Any]) -> None:
    """Read like a client, which leaves (its request is cancelled) after the first batch."""
    received = asyncio.Event()

    async def consume() -> None:
        async for _ in batches:
            received.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(received.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_client_leaving_a_cancel_on_disconnect_stream_cancels_its_run_at_once(
    orchestrator: tuple[ScriptedOrchestrator, OrchestratorStub],
) -> None:
    servicer, stub = orchestrator
    servicer.scripts = [endless_run]
    request = stream_request()
    request.cancel_on_disconnect = True
    await leave_after_first_batch(await watch(stub, request, anyio.Event()))
    await asyncio.wait_for(_wait_for(lambda: servicer.cancelled == [RUN]), 5)


async def test_a_stream_ended_by_the_gateway_stopping_leaves_the_run_to_the_reattach_grace(
    orchestrator: tuple[ScriptedOrchestrator, OrchestratorStub],
) -> None:
    """The OpenAI path streams through the shutdown (its own `shutdown` is never set) and is cut
    when uvicorn's grace ends: that is the gateway stopping, not the client leaving."""
    servicer, stub = orchestrator
    servicer.scripts = [endless_run]
    request = stream_request()
    request.cancel_on_disconnect = True
    stopping = anyio.Event()
    batches = await watch(stub, request, anyio.Event(), stopping=stopping)
    stopping.set()
    await leave_after_first_batch(batches)
    assert not runs_module._CANCELS and servicer.cancelled == []  # no cancel was even sent


async def test_leaving_after_the_end_or_without_cancel_on_disconnect_cancels_nothing(
    orchestrator: tuple[ScriptedOrchestrator, OrchestratorStub],
) -> None:
    servicer, stub = orchestrator

    async def ended_run(
        request: pb.StreamRunRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamRunReply]:
        yield pb.StreamRunReply()
        yield pb.StreamRunReply(events=LOG)  # ends with the terminal event
        await asyncio.Event().wait()  # (the orchestrator has not closed the call yet)

    servicer.scripts = [ended_run, endless_run]
    ended = stream_request()
    ended.cancel_on_disconnect = True
    await leave_after_first_batch(await watch(stub, ended, anyio.Event()))
    await leave_after_first_batch(await watch(stub, stream_request(), anyio.Event()))
    assert not runs_module._CANCELS and servicer.cancelled == []


async def _wait_for(check: Callable[[], bool]) -> None:
    while not check():
        await asyncio.sleep(0.01)
