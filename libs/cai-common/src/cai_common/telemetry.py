"""OpenTelemetry tracing, configured only by the standard OTEL_* variables (a no-op when unset).

Set `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) to export spans over
OTLP; `OTEL_EXPORTER_OTLP_PROTOCOL` picks `grpc` or `http/protobuf` (the default);
`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` name the service; `OTEL_SDK_DISABLED=true`
turns everything off. Batching follows `OTEL_BSP_*`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from opentelemetry import context, propagate, trace

log = logging.getLogger(__name__)

_provider: Any = None


def tracing_enabled() -> bool:
    """Whether spans are exported (an OTLP endpoint is configured and the SDK is not disabled)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return False
    return bool(
        os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def setup_tracing(service: str) -> None:
    """Install a TracerProvider exporting over OTLP, if configured (idempotent)."""
    global _provider
    if _provider is not None or not tracing_enabled():
        return
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": service}).merge(OTELResourceDetector().detect())
    if os.environ.get("OTEL_SERVICE_NAME"):
        resource = resource.merge(Resource({"service.name": os.environ["OTEL_SERVICE_NAME"]}))
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    exporter: Any
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        exporter = HttpExporter()
    _provider = TracerProvider(resource=resource)
    _provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(_provider)
    log.info("tracing to OTLP", extra={"protocol": protocol or "http/protobuf"})


def shutdown_tracing() -> None:
    """Flush and stop the exporter (call at process exit)."""
    if _provider is not None:
        _provider.shutdown()


def grpc_server_interceptors() -> list[Any]:
    """OpenTelemetry's aio server interceptor when tracing is on (continues callers' traces)."""
    if not tracing_enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def grpc_client_interceptors() -> list[Any]:
    """OpenTelemetry's aio client interceptors when tracing is on (propagate the context)."""
    if not tracing_enabled():
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


def inject_context() -> dict[str, str]:
    """The current W3C trace context as a carrier dict (to put into a queued job)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def extract_context(carrier: Mapping[str, str]) -> context.Context:
    """A context continuing the trace in `carrier` (from a queued job)."""
    return propagate.extract(dict(carrier))
