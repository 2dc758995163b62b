"""Prometheus helpers: a metrics HTTP server for gRPC services."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import Counter, Histogram, start_http_server

log = logging.getLogger(__name__)


def start_metrics_server(port: int, host: str = "0.0.0.0") -> None:
    """Expose the default registry on http://host:port/metrics (a daemon thread, not the loop)."""
    if port <= 0:
        return
    start_http_server(port, addr=host)
    log.info("metrics listening", extra={"port": port})


GRPC_REQUESTS = Counter(
    "cai_grpc_requests_total",
    "gRPC requests handled, by method and status code",
    ["method", "code"],
)
GRPC_DURATION = Histogram(
    "cai_grpc_request_duration_seconds",
    "gRPC handling time (for streams: until the stream ends)",
    ["method"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 300),
)


class GrpcMetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts and times every unary and server-streaming call (method = its short name)."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return handler
        method = details.method.rsplit("/", 1)[-1]
        if handler.unary_unary is not None:
            inner_unary = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                started = time.perf_counter()
                try:
                    return await inner_unary(request, context)
                finally:
                    _observe(method, context, started)

            return grpc.unary_unary_rpc_method_handler(
                unary, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                started = time.perf_counter()
                try:
                    async for reply in inner_stream(request, context):
                        yield reply
                finally:
                    _observe(method, context, started)

            return grpc.unary_stream_rpc_method_handler(
                stream, handler.request_deserializer, handler.response_serializer
            )
        if handler.unary_stream is not None:
            # A handler that writes with context.write() (grpc's health Watch) is a coroutine,
            # not an async generator: await it as it is.
            inner_writer = handler.unary_stream

            async def writer(request: Any, context: grpc.aio.ServicerContext) -> None:
                started = time.perf_counter()
                try:
                    await inner_writer(request, context)
                finally:
                    _observe(method, context, started)

            return grpc.unary_stream_rpc_method_handler(
                writer, handler.request_deserializer, handler.response_serializer
            )
        return handler  # client streaming (Ingest) is counted by the service itself


def _observe(method: str, context: grpc.aio.ServicerContext, started: float) -> None:
    code = context.code()
    name = code.name if isinstance(code, grpc.StatusCode) else "OK"
    GRPC_REQUESTS.labels(method, name).inc()
    GRPC_DURATION.labels(method).observe(time.perf_counter() - started)


# Both the gateway (where=edge) and the orchestrator (where=model) observe it: defined once, so a
# process that loads both (the tests) registers it once.
TIME_TO_FIRST_TOKEN = Histogram(
    "cai_time_to_first_token_seconds",
    "Time to first token: from the request reaching the gateway to the first token leaving it "
    "(where=edge), or from the model call to its first token (where=model).",
    ["where"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 20, 30, 60),
)
