"""The route class of every API router: JSON bodies parsed by orjson."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

# Deepest nesting of a JSON body. orjson parses up to 1024 levels but serialises only 255, and the
# body is serialised again, wrapped, for the orchestrator: a body nested ~300 levels deep was a
# 500 there. No real request comes near this.
MAX_JSON_DEPTH = 64


def json_depth_exceeds(value: Any, limit: int) -> bool:
    """Whether objects and arrays in `value` nest deeper than `limit` (iterative: no recursion
    limit of its own)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


class OrjsonRequest(Request):
    """A request whose JSON body is parsed by orjson: strict UTF-8, so strings with lone
    surrogates (valid JSON escapes that no UTF-8 encoder accepts) are a 422 at the door, not an
    error later when the body is re-encoded for the orchestrator. So is a body nested deeper
    than MAX_JSON_DEPTH."""

    async def json(self) -> Any:
        """The parsed body (orjson.JSONDecodeError is a json.JSONDecodeError: FastAPI's 422).

        Raises:
            HTTPException: 422, the body nests deeper than MAX_JSON_DEPTH.
        """
        if not hasattr(self, "_json"):
            parsed = orjson.loads(await self.body())
            if json_depth_exceeds(parsed, MAX_JSON_DEPTH):
                raise HTTPException(
                    422, f"The JSON body is nested more than {MAX_JSON_DEPTH} levels deep"
                )
            self._json = parsed
        return self._json


class OrjsonRoute(APIRoute):
    """An APIRoute that hands its endpoint an `OrjsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler so the body is parsed by `OrjsonRequest.json`."""
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return route_handler
