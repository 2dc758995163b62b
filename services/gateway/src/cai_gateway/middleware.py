"""Pure ASGI middleware: request body size limit, HTTP metrics and the access log (no buffering
of responses)."""

from __future__ import annotations

import logging
import time

from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cai_gateway.problems import problem_response

HTTP_REQUESTS = Counter(
    "cai_http_requests_total", "HTTP requests by route template, method and status.",
    ["route", "method", "status"],
)  # fmt: skip
HTTP_DURATION = Histogram(
    "cai_http_request_duration_seconds",
    "Time to the end of the response (whole stream for SSE), by route template.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)


class BodyTooLarge(HTTPException):
    """The request body passed the limit while it was being read (a 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"The request body is larger than {limit} bytes")


class BodyLimitMiddleware:
    """413 for bodies over `max_bytes`: at once when Content-Length says so, and while reading
    otherwise (chunked bodies or a Content-Length that lies are counted as they arrive)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await problem_response(400, "Content-Length is not a number")(scope, receive, send)
                return
            if int(declared) > self.max_bytes:
                await _too_large(self.max_bytes, scope, receive, send)
                return
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except BodyTooLarge:
            if started:
                raise
            await _too_large(self.max_bytes, scope, receive, send)


async def _too_large(limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    response = problem_response(
        413, f"The request body is larger than {limit} bytes", {"Connection": "close"}
    )
    await response(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1").strip())
    return None


class MetricsMiddleware:
    """Counts requests and times them by route template (never by raw path: ids are unbounded)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            if template not in ("/metrics", "/healthz", "/readyz"):
                method = scope.get("method", "")
                HTTP_REQUESTS.labels(template, method, str(status)).inc()
                HTTP_DURATION.labels(template, method).observe(time.perf_counter() - start)


ACCESS_LOG = logging.getLogger("cai_gateway.access")
# Probes and scrapes are not requests anyone needs to audit (and would drown the ones that are).
_UNLOGGED = frozenset({"/metrics", "/healthz", "/readyz"})


class AccessLogMiddleware:
    """One JSON log line per request when its response ends: who (API key id and subject, tenant;
    never the key itself), what (method, route template, path), the status and the duration.
    The audit trail of the API."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in _UNLOGGED:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        # `request.state` is this dict: created here, it is the one the routes see (they get
        # copies of the scope, which share it), so the authenticated caller shows up in it.
        state = scope.setdefault("state", {})

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            caller = state.get("caller")
            route = scope.get("route")
            ACCESS_LOG.info(
                "request",
                extra={
                    "method": scope.get("method", ""),
                    "path": scope.get("path", ""),
                    "route": getattr(route, "path", None) or "unmatched",
                    "status": status,
                    "duration_ms": round((time.perf_counter() - start) * 1000, 1),
                    # Set once the request is authenticated (absent on a 401).
                    "key_id": getattr(caller, "key_id", None),
                    "subject": getattr(caller, "subject", None),
                    "tenant": caller.principal.tenant_id if caller is not None else None,
                },
            )
