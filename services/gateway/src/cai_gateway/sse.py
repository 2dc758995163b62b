"""Run event streams from the orchestrator: SSE framing (bytes in, bytes out, nothing re-parsed on
the LangGraph path), draining a run to its end for /wait and /join, and heartbeats."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass

import anyio
import grpc
from prometheus_client import Counter, Gauge, Histogram

from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_common.runs import END, TERMINAL_EVENTS
from cai_gateway.problems import Problem, from_rpc_error

log = logging.getLogger(__name__)

STREAMS_IN_FLIGHT = Gauge(
    "cai_sse_streams_in_flight", "Open event streams and waits on this gateway, by API dialect.",
    ["dialect"],
)  # fmt: skip
STREAM_RESUMES = Counter(
    "cai_sse_stream_resumes_total", "Event streams opened with Last-Event-ID (clients resuming)"
)
STREAM_DISCONNECTS = Counter(
    "cai_sse_stream_disconnects_total", "Event streams the client left before the run ended"
)
TIME_TO_FIRST_TOKEN = Histogram(
    "cai_time_to_first_token_seconds",
    "From the request reaching the gateway to the first token leaving it (where=edge).",
    ["where"],
    buckets=(0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60),
)


def frame(event_id: str, event: str, data: bytes) -> bytes:
    """One SSE message. `data` is single-line JSON, so one `data:` line suffices."""
    return (
        b"id: " + event_id.encode() + b"\nevent: " + event.encode() + b"\ndata: " + data + b"\n\n"
    )


# Sent when this gateway shuts down: reconnect (to any gateway) with Last-Event-ID.
RECONNECT = (
    b"retry: 250\nevent: reconnect\n"
    b'data: {"reason":"gateway shutting down","action":"reconnect with Last-Event-ID"}\n\n'
)


class StreamInterrupted(Exception):
    """The event stream broke (orchestrator gone, gateway shutting down) before the run ended."""


class EventFeed:
    """A run's event batches from StreamRun, stopping cleanly when the gateway shuts down.

    After iteration, `shutting_down` says the gateway stopped it and `interrupted` that the
    orchestrator went away; neither means the run ended.
    """

    def __init__(
        self, call: grpc.aio.UnaryStreamCall, first: object, shutdown: anyio.Event
    ) -> None:
        self.call = call
        self.first = first
        self.shutdown = shutdown
        self.shutting_down = False
        self.interrupted = False
        self.last_id = ""

    async def batches(self) -> AsyncIterator[Sequence[pb.RunEvent]]:
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
                    yield events
                reply = await self.call.read()
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


async def open_feed(
    stub: OrchestratorStub, request: pb.StreamRunRequest, shutdown: anyio.Event
) -> EventFeed:
    """Open a run's event stream; errors before it is accepted raise a Problem (an HTTP status).

    The orchestrator sends an empty reply once it has accepted the stream, so unknown runs and bad
    ids become 404/422 responses instead of a 200 stream that fails.
    """
    call = stub.StreamRun(request)
    try:
        first = await call.read()
    except grpc.aio.AioRpcError as exc:
        call.cancel()
        raise from_rpc_error(exc) from None
    return EventFeed(call, first, shutdown)


async def open_stream(
    stub: OrchestratorStub,
    request: pb.StreamRunRequest,
    shutdown: anyio.Event,
    started_at: float | None = None,
) -> AsyncIterator[bytes]:
    """A run's events as SSE bytes (LangGraph's framing), ending with `reconnect` on shutdown."""
    feed = await open_feed(stub, request, shutdown)
    if request.after_event_id:
        STREAM_RESUMES.inc()
    return relay(feed, started_at)


async def relay(feed: EventFeed, started_at: float | None = None) -> AsyncIterator[bytes]:
    """Frame every event as it comes; only the event name is looked at (for the TTFT metric)."""
    waiting_for_token = started_at is not None
    ended = False
    try:
        async for events in feed.batches():
            if waiting_for_token and any(e.event == "messages" for e in events):
                TIME_TO_FIRST_TOKEN.labels("edge").observe(time.perf_counter() - (started_at or 0))
                waiting_for_token = False
            ended = events[-1].event in TERMINAL_EVENTS
            yield b"".join(frame(e.id, e.event, e.data) for e in events)
    finally:
        if not ended and not feed.shutting_down and not feed.interrupted:
            STREAM_DISCONNECTS.inc()  # the client went away mid-run (it may resume later)
    if feed.shutting_down:
        yield RECONNECT


async def tracked(body: AsyncIterator[bytes], dialect: str) -> AsyncIterator[bytes]:
    """Count the stream in `cai_sse_streams_in_flight` while it is open."""
    gauge = STREAMS_IN_FLIGHT.labels(dialect)
    gauge.inc()
    try:
        async for chunk in body:
            yield chunk
    finally:
        gauge.dec()


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
                feed = await open_feed(stub, request, shutdown)
            except Problem as exc:
                if exc.status != 503 or failures >= attempts:
                    raise StreamInterrupted(exc.detail) from None
                failures += 1
                await asyncio.sleep(min(2.0, 0.2 * 2 ** (failures - 1)))
                continue
        async for events in feed.batches():
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


async def with_heartbeats(work: Awaitable[bytes], interval_s: float) -> AsyncIterator[bytes]:
    """Yield a newline every `interval_s` until `work` is done, then its bytes.

    JSON parsers skip leading whitespace, so a long /wait keeps idle proxies from closing the
    connection and still parses as one document. If `work` fails, the connection is dropped
    (the headers are out): the client reconnects to the Location it was given.
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=interval_s)
            if done:
                break
            yield b"\n"
        yield task.result()
    finally:
        task.cancel()
