"""The route class of every API router: JSON bodies parsed by orjson."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import Request, Response
from fastapi.routing import APIRoute


class OrjsonRequest(Request):
    """A request whose JSON body is parsed by orjson: strict UTF-8, so strings with lone
    surrogates (valid JSON escapes that no UTF-8 encoder accepts) are a 422 at the door, not an
    error later when the body is re-encoded for the orchestrator."""

    async def json(self) -> Any:
        """The parsed body (orjson.JSONDecodeError is a json.JSONDecodeError: FastAPI's 422)."""
        if not hasattr(self, "_json"):
            self._json = orjson.loads(await self.body())
        return self._json


class OrjsonRoute(APIRoute):
    """An APIRoute that hands its endpoint an `OrjsonRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        """Wrap FastAPI's handler so the body is parsed by `OrjsonRequest.json`."""
        handler = super().get_route_handler()

        async def route_handler(request: Request) -> Response:
            return await handler(OrjsonRequest(request.scope, request.receive))

        return route_handler
