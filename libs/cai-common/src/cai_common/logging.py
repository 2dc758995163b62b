"""JSON logging to stdout with trace and run context."""

from __future__ import annotations

import contextvars
import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter

# Run-scoped ids set by the code that handles a run or request; added to every log record.
log_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "cai_log_context", default=None
)


class _ContextFilter(logging.Filter):
    """Adds service name, the current log context and the OpenTelemetry ids to each record."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        ctx = log_context.get()
        if ctx:
            for key, value in ctx.items():
                setattr(record, key, value)
        span_ctx = _current_span_context()
        if span_ctx is not None:
            record.trace_id, record.span_id = span_ctx
        return True


def _current_span_context() -> tuple[str, str] | None:
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - opentelemetry is a dependency
        return None
    span_ctx = trace.get_current_span().get_span_context()
    if not span_ctx.is_valid:
        return None
    return format(span_ctx.trace_id, "032x"), format(span_ctx.span_id, "016x")


def bind(**ids: Any) -> contextvars.Token:
    """Add ids (run_id, thread_id, tenant) to log records in the current context."""
    merged = dict(log_context.get() or {})
    merged.update({k: str(v) for k, v in ids.items() if v is not None and v != ""})
    return log_context.set(merged)


def setup_logging(service: str, level: str = "INFO") -> None:
    """Send JSON lines to stdout for the whole process (idempotent)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        )
    )
    handler.addFilter(_ContextFilter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Chatty libraries stay at WARNING unless debugging.
    for noisy in ("httpx", "httpx2", "httpcore", "openai", "grpc", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
