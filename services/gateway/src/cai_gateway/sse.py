"""SSE for run event streams: framing (bytes in, bytes out, nothing re-parsed on the LangGraph
path), the stream metrics, and heartbeats for /wait. Reading the events is `cai_gateway.runs`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing

import anyio
from prometheus_client import Counter, Gauge

from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_common.metrics import TIME_TO_FIRST_TOKEN
from cai_gateway.runs import EventFeed, open_feed

log = logging.getLogger(__name__)

STREAMS_IN_FLIGHT = Gauge(
    "cai_sse_streams_in_flight", "Open event streams and waits on this gateway, by API dialect.",
    ["dialect"], multiprocess_mode="livesum",
)  # fmt: skip
STREAM_RESUMES = Counter(
    "cai_sse_stream_resumes_total", "Event streams opened with Last-Event-ID (clients resuming)"
)
STREAM_DISCONNECTS = Counter(
    "cai_sse_stream_disconnects_total", "Event streams the client left before the run ended"
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
    try:
        # aclosing: when the client leaves, the feed learns it now, not when it is collected.
        async with aclosing(feed.batches()) as batches:
            async for events in batches:
                if waiting_for_token and any(e.event == "messages" for e in events):
                    TIME_TO_FIRST_TOKEN.labels("edge").observe(
                        time.perf_counter() - (started_at or 0)
                    )
                    waiting_for_token = False
                yield b"".join(frame(e.id, e.event, e.data) for e in events)
    finally:
        if feed.client_left:
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
