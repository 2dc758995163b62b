"""SSE framing of run events: bytes in, bytes out, nothing re-parsed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import anyio
import grpc

from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_gateway.problems import from_rpc_error

log = logging.getLogger(__name__)


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
    stub: OrchestratorStub, request: pb.StreamRunRequest, shutdown: anyio.Event
) -> AsyncIterator[bytes]:
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
    return _relay(call, first, shutdown)


async def _relay(
    call: grpc.aio.UnaryStreamCall, first: object, shutdown: anyio.Event
) -> AsyncIterator[bytes]:
    stopping = False

    async def stop_on_shutdown() -> None:
        nonlocal stopping
        await shutdown.wait()
        stopping = True
        call.cancel()

    watcher = asyncio.create_task(stop_on_shutdown())
    try:
        reply = first
        while reply is not grpc.aio.EOF:
            events = reply.events  # type: ignore[attr-defined]
            if events:
                yield b"".join(frame(e.id, e.event, e.data) for e in events)
            reply = await call.read()
    except (grpc.aio.AioRpcError, asyncio.CancelledError) as exc:
        if not stopping:
            if isinstance(exc, asyncio.CancelledError):
                raise
            # The orchestrator went away mid-stream. Close without a terminal event: the client
            # (langgraph-sdk does this itself) reconnects with Last-Event-ID and loses nothing.
            log.warning("event stream interrupted", extra={"code": exc.code().name})
    finally:
        watcher.cancel()
        call.cancel()
    if stopping:
        yield RECONNECT
