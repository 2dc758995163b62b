"""RFC 9457 problem details for every error the gateway returns."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

PROBLEM_TYPE = "https://cai.dev/problems/"

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    416: "Range Not Satisfiable",
    406: "Not Acceptable",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

GRPC_TO_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.PERMISSION_DENIED: 404,  # never reveal that another tenant's id exists
    grpc.StatusCode.UNAUTHENTICATED: 401,
    # The orchestrator's size limits (a thread's state); rate limits are the gateway's own.
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.CANCELLED: 503,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.OUT_OF_RANGE: 422,
}


class Problem(Exception):
    """An error response in problem-details form."""

    def __init__(
        self, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers
        self.extra = extra


def problem_body(status: int, detail: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of a problem."""
    title = _TITLES.get(status, "Error")
    return {
        "type": PROBLEM_TYPE + title.lower().replace(" ", "-"),
        "title": title,
        "status": status,
        "detail": detail,
        **extra,
    }


def problem_response(
    status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """A problem+json response."""
    return JSONResponse(
        problem_body(status, detail, **extra),
        status_code=status,
        headers=headers,
        media_type="application/problem+json",
    )


def from_rpc_error(exc: grpc.aio.AioRpcError) -> Problem:
    """Map an orchestrator/retriever gRPC error onto an HTTP problem."""
    code = exc.code()
    status = GRPC_TO_HTTP.get(code, 502)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED):
        detail = "The orchestrator is unavailable; try again shortly"
        return Problem(status, detail, headers={"Retry-After": "1"})
    if status == 502:
        error_id = str(uuid.uuid4())
        log.warning(
            "upstream error",
            extra={"code": code.name, "detail": exc.details(), "error_id": error_id},
        )
        return Problem(
            502, f"The orchestrator failed to answer (error id {error_id})", error_id=error_id
        )
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        retry_after = _trailer(exc, "retry-after")
        if retry_after:  # a tenant quota, not a size limit
            return Problem(
                429,
                exc.details() or code.name,
                headers={"Retry-After": retry_after},
                retry_after=int(retry_after),
            )
    return Problem(status, exc.details() or code.name)


def _trailer(exc: grpc.aio.AioRpcError, name: str) -> str:
    for key, value in exc.trailing_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode()
    return ""


OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


def openai_error(status: int, detail: str) -> dict[str, Any]:
    """OpenAI's error object, added to problems on /v1 routes so OpenAI clients show the detail."""
    kind = OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "api_error")
    return {"message": detail, "type": kind, "param": None, "code": str(status)}


def respond(
    request: Request,
    status: int,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A problem response; on the OpenAI-compatible routes it also carries `error`."""
    if request.url.path.startswith("/v1/"):
        extra.setdefault("error", openai_error(status, detail))
    return problem_response(status, detail, headers, **extra)


def install(app: FastAPI) -> None:
    """Register handlers so no error escapes as a traceback or a bare 500."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return respond(request, exc.status, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(grpc.aio.AioRpcError)
    async def _rpc(request: Request, exc: grpc.aio.AioRpcError) -> JSONResponse:
        p = from_rpc_error(exc)
        return respond(request, p.status, p.detail, p.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"])
        return respond(request, 422, f"{where}: {first['msg']}", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return respond(request, exc.status_code, str(exc.detail), headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        error_id = str(uuid.uuid4())
        log.exception("unhandled error", extra={"error_id": error_id})
        detail = f"An unexpected error occurred; it has been logged (error id {error_id})"
        return respond(request, 500, detail, error_id=error_id)
