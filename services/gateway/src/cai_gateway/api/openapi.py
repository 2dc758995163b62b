"""OpenAPI helpers: documented error responses, SSE media types, problem+json content types."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from cai_gateway.models import Problem

_ERROR_DESCRIPTIONS = {
    401: "No API key, or an unknown one",
    404: "Not found (also: another tenant's id)",
    409: "Conflict (e.g. multitask_strategy=reject on a busy thread, a run still active)",
    413: "Request body too large, or a thread's state would pass MAX_THREAD_STATE_BYTES",
    422: "Invalid request (validation, message limits, unsupported stream modes)",
    429: "Rate limit, concurrent-stream cap or tenant run quota reached (see Retry-After)",
    502: "The orchestrator failed to answer",
    503: "The orchestrator (or the limiter, when failing closed) is unavailable",
    504: "The orchestrator did not answer in time",
}

# Every authenticated route may answer these.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": description}
    for status, description in _ERROR_DESCRIPTIONS.items()
}


def json_ok(model: type, description: str = "Success") -> dict[int | str, dict[str, Any]]:
    """A documented 200 JSON response."""
    return {200: {"model": model, "description": description}}


# One server-sent event, as SSE clients (and schemathesis) parse it; comments (heartbeats) are
# not events. `data` is one line of JSON.
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "A server-sent event",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


def sse_ok(description: str) -> dict[int | str, dict[str, Any]]:
    """A documented 200 `text/event-stream` response."""
    return {
        200: {
            "description": description,
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        }
    }


def install(app: FastAPI) -> None:
    """Generate the schema once, with errors as `application/problem+json` and streaming
    responses documented with their real media type only."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
            tags=app.openapi_tags,
        )
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                for status, response in operation.get("responses", {}).items():
                    content = response.get("content")
                    if not content:
                        continue
                    if status[:1] in ("4", "5") and "application/json" in content:
                        content["application/problem+json"] = content.pop("application/json")
                    elif "text/event-stream" in content:
                        # FastAPI adds an untyped JSON body to every route; drop it on SSE routes.
                        for other in [k for k in content if k != "text/event-stream"]:
                            if not content[other].get("schema"):
                                del content[other]
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
