"""The llm-sim ASGI application: chat completions as raw ASGI, the rest on Starlette."""

from __future__ import annotations

import time
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llm_sim.chat import ChatCompletions, Receive, Scope, Send
from llm_sim.config import SimConfig
from llm_sim.embeddings import embeddings_response, parse_embedding_request
from llm_sim.errors import InvalidRequest, error_body
from llm_sim.recorder import RequestLog

CHAT_PATHS = frozenset({"/v1/chat/completions", "/chat/completions"})
_STARTED = int(time.time())


class JSONResponse(Response):
    """A JSON response serialised with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Serialise ``content``."""
        return orjson.dumps(content)


def openai_error(status: int, message: str, param: str | None = None) -> Response:
    """An OpenAI-shaped error response."""
    return Response(error_body(status, message, param), status, media_type="application/json")


def _model_object(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": _STARTED, "owned_by": "llm-sim"}


class SimApp:
    """Routes chat completions to the raw ASGI handler and everything else to Starlette."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.requests = RequestLog(config.history_size)
        self.chat = ChatCompletions(config, self.requests)
        self.starlette = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/v1/models", self.list_models, methods=["GET"]),
                Route("/models", self.list_models, methods=["GET"]),
                Route("/v1/models/{model_id:path}", self.get_model, methods=["GET"]),
                Route("/v1/embeddings", self.create_embeddings, methods=["POST"]),
                Route("/embeddings", self.create_embeddings, methods=["POST"]),
                Route("/v1/sim/requests", self.list_requests, methods=["GET"]),
                Route("/v1/sim/requests", self.clear_requests, methods=["DELETE"]),
            ],
            exception_handlers={HTTPException: self._http_error},  # type: ignore[dict-item]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """ASGI entry point."""
        if scope["type"] == "http" and scope["path"] in CHAT_PATHS:
            await self.chat(scope, receive, send)
        else:
            await self.starlette(scope, receive, send)

    def begin_shutdown(self) -> None:
        """Called when the server starts draining: release stalled streams."""
        self.chat.stopping.set()

    async def _http_error(self, request: Request, exc: HTTPException) -> Response:
        return openai_error(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}")

    async def health(self, request: Request) -> Response:
        """Liveness and readiness: the simulator has no dependencies."""
        return JSONResponse({"status": "ok", "simulator": True})

    async def list_models(self, request: Request) -> Response:
        """List the simulated model ids (any model name is accepted by the other endpoints)."""
        return JSONResponse(
            {"object": "list", "data": [_model_object(m) for m in self.config.models]}
        )

    async def get_model(self, request: Request) -> Response:
        """Describe a model: every id exists in the simulator."""
        return JSONResponse(_model_object(request.path_params["model_id"]))

    async def create_embeddings(self, request: Request) -> Response:
        """Deterministic hashed bag-of-words embeddings in OpenAI's response shape."""
        try:
            try:
                payload = orjson.loads(await request.body())
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(
                    f"We could not parse the JSON body of your request: {exc}"
                ) from exc
            parsed = parse_embedding_request(payload, self.config.embedding_dim)
        except InvalidRequest as exc:
            return openai_error(exc.status, exc.message, exc.param)
        return JSONResponse(embeddings_response(parsed))

    async def list_requests(self, request: Request) -> Response:
        """The last ``limit`` chat requests received, newest last."""
        raw_limit = request.query_params.get("limit")
        limit: int | None = None
        if raw_limit is not None:
            try:
                limit = int(raw_limit)
            except ValueError:
                limit = -1
            if limit < 0:
                return openai_error(400, "'limit' must be an integer >= 0", "limit")
        return JSONResponse({"object": "list", "data": self.requests.recent(limit)})

    async def clear_requests(self, request: Request) -> Response:
        """Forget the recorded chat requests."""
        self.requests.clear()
        return JSONResponse({"object": "list", "data": [], "cleared": True})


def create_app(config: SimConfig) -> SimApp:
    """Build the ASGI app for ``config``."""
    return SimApp(config)
