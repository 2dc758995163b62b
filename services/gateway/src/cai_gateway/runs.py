"""The gateway's one client for a run's life: create it, then watch its events from the
orchestrator (StreamRun), reopening the stream when an orchestrator goes away. Routes translate;
they do not call CreateRun or StreamRun themselves."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import anyio
import grpc
import orjson

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_common.runs import END, TERMINAL_EVENTS
from cai_gateway.problems import Problem, from_rpc_error

log = logging.getLogger(__name__)

# Deadline of the CancelRun sent when a cancel-on-disconnect stream's client leaves.
CANCEL_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class CreatedRun:
    """A run the orchestrator accepted: its JSON as sent (relayed untouched) and its ids."""

    json: bytes
    run_id: str
    thread_id: str

    @property
    def path(self) -> str:
        """The run's URL path (stateless runs too: their temporary thread id)."""
        return f"/threads/{self.thread_id}/runs/{self.run_id}"

    def stream_request(
        self, principal: common_pb2.Principal, *, cancel_on_disconnect: bool = False
    ) -> pb.StreamRunRequest:
        """The request that streams this run from its first event."""
        return pb.StreamRunRequest(
            principal=principal,
            thread_id=self.thread_id,
            run_id=self.run_id,
            cancel_on_disconnect=cancel_on_disconnect,
        )


async def create_run(
    orch: OrchestratorStub, request: pb.CreateRunRequest, timeout: float
) -> CreatedRun:
    """CreateRun; RPC errors propagate (the app turns them into problem details)."""
    reply = await orch.CreateRun(request, timeout=timeout)
    run: dict[str, Any] = orjson.loads(reply.json)
    return CreatedRun(reply.json, run["run_id"], run["thread_id"])


class StreamInterrupted(Exception):
    """The event stream broke (orchestrator gone, gateway shutting down) before the run ended."""


class EventFeed:
    """A run's event batches from StreamRun, stopping cleanly when the gateway shuts down.

    After iteration, `shutting_down` says the gateway stopped it and `interrupted` that the
    orchestrator went away; neither means the run ended.

    A cancel-on-disconnect stream the client leaves before the run's end cancels the run here, at
    once (CancelRun). Ending for any other reason — this gateway stopping (`stopping`), an
    orchestrator going away — does not: the orchestrator then holds the cancel for its reattach
    grace, and a client that reconnects in time keeps the run going.
    """

    def __init__(
        self,
        stub: OrchestratorStub,
        request: pb.StreamRunRequest,
        call: grpc.aio.UnaryStreamCall,
        first: object,
        shutdown: anyio.Event,
        stopping: anyio.Event | None = None,
    ) -> None:
        self.stub = stub
        self.request = request
        self.call = call
        self.first = first
        self.shutdown = shutdown
        self.stopping = shutdown if stopping is None else stopping
        self.shutting_down = False
        self.interrupted = False
        self.ended = False  # the run's terminal event (or the end of its log) was read
        self.last_id = ""

    @property
    def client_left(self) -> bool:
        """Iteration stopped before the run ended, and neither a server nor shutdown ended it."""
        return not (self.ended or self.shutting_down or self.interrupted or self.stopping.is_set())

    async def batches(self) -> AsyncGenerator[Sequence[pb.RunEvent], None]:
        """Non-empty batches of events, in log order (heartbeat replies are skipped)."""

        async def stop_on_shutdown() -> None:
            await self.shutdown.wait()
            self.shutting_down = True
            self.call.cancel()

        watcher = asyncio.create_task(stop_on_shutdown())
        try:
            reply = self.first
            while reply is not grpc.aio.EOF:
                events = reply.events  # type: ignore[attr-defined]
                if events:
                    self.last_id = events[-1].id
                    self.ended = events[-1].event in TERMINAL_EVENTS
                    yield events
                reply = await self.call.read()
            self.ended = True
        except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
            if not self.shutting_down:
                if isinstance(exc, asyncio.CancelledError):
                    raise
                # The orchestrator went away mid-stream. The client reconnects with
                # Last-Event-ID (langgraph-sdk does it itself) and loses nothing.
                self.interrupted = True
                log.warning("event stream interrupted", extra={"code": exc.code().name})
        finally:
            watcher.cancel()
            self.call.cancel()
            if self.request.cancel_on_disconnect and self.client_left:
                cancel_in_background(self.stub, self.request)


# Cancels sent for clients that left, kept until done (the event loop holds tasks weakly).
_CANCELS: set[asyncio.Task[None]] = set()


def cancel_in_background(stub: OrchestratorStub, stream: pb.StreamRunRequest) -> None:
    """CancelRun the stream's run, outside the request: the request is being torn down."""

    async def cancel() -> None:
        request = pb.CancelRunRequest(
            principal=stream.principal, thread_id=stream.thread_id, run_id=stream.run_id
        )
        try:
            await stub.CancelRun(request, timeout=CANCEL_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            # The orchestrator still cancels it when its reattach grace has passed.
            log.warning(
                "could not cancel the run its client left",
                extra={"run_id": stream.run_id, "code": exc.code().name},
            )

    task = asyncio.create_task(cancel(), name=f"cancel-{stream.run_id}")
    _CANCELS.add(task)
    task.add_done_callback(_CANCELS.discard)


async def open_feed(
    stub: OrchestratorStub,
    request: pb.StreamRunRequest,
    shutdown: anyio.Event,
    stopping: anyio.Event | None = None,
) -> EventFeed:
    """Open a run's event stream; errors before it is accepted raise a Problem (an HTTP status).

    The orchestrator sends an empty reply once it has accepted the stream, so unknown runs and bad
    ids become 404/422 responses instead of a 200 stream that fails. `shutdown` ends the stream;
    `stopping` (default: `shutdown`) says the gateway is stopping, which is no client leaving.
    """
    call = stub.StreamRun(request)
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as exc:
        call.cancel()
        raise from_rpc_error(exc) from None
    return EventFeed(stub, request, call, first, shutdown, stopping)


async def watch(
    stub: OrchestratorStub,
    request: pb.StreamRunRequest,
    shutdown: anyio.Event,
    stopping: anyio.Event | None = None,
) -> AsyncIterator[Sequence[pb.RunEvent]]:
    """Open a run's event stream now (so a bad run id is an HTTP error, not a broken 200), and
    return its batches to the end, reopened after the last event seen if an orchestrator goes."""
    feed = await open_feed(stub, request, shutdown, stopping)
    return follow(stub, request, shutdown, feed, stopping=stopping)


@dataclass
class Outcome:
    """How a run ended, as seen in its event log."""

    terminal: str
    data: bytes
    # The last `values` event (the graph state after the last step), if the run streamed any.
    last_values: bytes | None


async def follow(
    stub: OrchestratorStub,
    request: pb.StreamRunRequest,
    shutdown: anyio.Event,
    feed: EventFeed | None = None,
    attempts: int = 5,
    stopping: anyio.Event | None = None,
) -> AsyncIterator[Sequence[pb.RunEvent]]:
    """A run's event batches to the end, reopening the stream after the last event seen when an
    orchestrator goes away (for dialects whose clients cannot resume by themselves).

    Raises:
        StreamInterrupted: the gateway is shutting down, or no orchestrator took the stream back
            after `attempts` tries.
    """
    failures = 0
    while True:
        if feed is None:
            try:
                feed = await open_feed(stub, request, shutdown, stopping)
            except Problem as exc:
                if exc.status != 503 or failures >= attempts:
                    raise StreamInterrupted(exc.detail) from None
                failures += 1
                await asyncio.sleep(min(2.0, 0.2 * 2 ** (failures - 1)))
                continue
        async with aclosing(feed.batches()) as batches:  # a client leaving is seen at once
            async for events in batches:
                failures = 0
                yield events
        if feed.shutting_down:
            raise StreamInterrupted("the gateway is shutting down")
        if not feed.interrupted:
            return
        failures += 1
        if failures > attempts:
            raise StreamInterrupted("the event stream broke and could not be reopened")
        if feed.last_id:
            request.after_event_id = feed.last_id
        feed = None
        await asyncio.sleep(min(2.0, 0.2 * 2 ** (failures - 1)))


async def drain(batches: AsyncIterator[Sequence[pb.RunEvent]]) -> Outcome:
    """Follow the batches to the run's terminal event.

    Raises:
        StreamInterrupted: the stream ended first (orchestrator gone or gateway shutting down).
    """
    last_values: bytes | None = None
    outcome: Outcome | None = None
    # Read to the end of the stream (the orchestrator closes it right after the terminal event)
    # so the call completes instead of being cancelled: its trace span and metrics stay whole.
    async for events in batches:
        for e in events:
            if outcome is not None:
                break
            if e.event == "values":
                last_values = e.data
            elif e.event in TERMINAL_EVENTS:
                outcome = Outcome(e.event, e.data, last_values)
    # No terminal event: the run ended long ago and its log has expired.
    return outcome or Outcome(END, b"null", last_values)
