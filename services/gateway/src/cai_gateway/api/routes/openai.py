"""OpenAI-compatible chat completions and models: `model` is an assistant id.

Stateless by default (the request's messages are the whole conversation). With a thread id, in
the `X-Cai-Thread-Id` header or `metadata.thread_id`, the thread keeps the history: only the
messages after the last assistant message of the request are added to it (created on first use).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import anyio
import orjson
from fastapi import APIRouter, Header, Request, Response
from sse_starlette import EventSourceResponse

from cai_gateway.api.openapi import ERRORS, SSE_EVENT_SCHEMA, json_ok
from cai_gateway.api.routing import OrjsonRoute
from cai_gateway.deps import OrchestratorClientDep, SettingsDep, StreamSlotDep
from cai_gateway.dialects import CompletionIds, openai_chunks, openai_completion
from cai_gateway.limits import message_limit_violation
from cai_gateway.models import ChatCompletion, OpenAIModel, OpenAIModelList
from cai_gateway.orchestrator import OrchestratorClient
from cai_gateway.problems import Problem
from cai_gateway.schemas import AssistantIdPath, ChatCompletionRequest
from cai_gateway.sse import tracked

router = APIRouter(prefix="/v1", tags=["openai"], responses=ERRORS, route_class=OrjsonRoute)

THREAD_HEADER = "X-Cai-Thread-Id"
ThreadHeader = Annotated[
    UUID | None,
    Header(
        alias=THREAD_HEADER,
        description="Make the completion stateful: the thread keeps the conversation.",
    ),
]
STREAM_DOC = (
    "With `stream: true`: `text/event-stream` of `chat.completion.chunk` objects, then "
    '`data: [DONE]`. An error after the stream started arrives as `data: {"error": {...}}`.'
)


def _thread_id(header: UUID | None, body: ChatCompletionRequest) -> str:
    if header is not None:
        return str(header)
    raw = (body.metadata or {}).get("thread_id")
    if raw is None:
        return ""
    try:
        return str(UUID(raw))
    except ValueError:
        raise Problem(422, "metadata.thread_id: not a UUID") from None


def _input_messages(body: ChatCompletionRequest, stateful: bool) -> list[dict[str, Any]]:
    """LangGraph input messages; with a thread, only those after the last assistant turn."""
    messages = body.messages
    if stateful:
        last_ai = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
        messages = messages[last_ai + 1 :]
        if not messages:
            raise Problem(422, "messages: nothing new after the last assistant message")
    out = []
    for i, m in enumerate(messages):
        try:
            text = m.text()
        except ValueError as exc:
            raise Problem(422, f"messages[{i}].content: {exc}") from None
        role = "system" if m.role == "developer" else m.role
        out.append({"role": role, "content": text})
    return out


async def _models(orch: OrchestratorClient) -> list[dict[str, Any]]:
    return [_model(a) for a in orjson.loads(await orch.search_assistants(limit=1000))]


def _model(assistant: dict[str, Any]) -> dict[str, Any]:
    created = assistant.get("created_at") or ""
    try:
        stamp = int(datetime.fromisoformat(created).timestamp())
    except ValueError:
        stamp = 0
    return {"id": assistant["assistant_id"], "object": "model", "created": stamp, "owned_by": "cai"}


@router.get("/models", responses=json_ok(OpenAIModelList))
async def list_models(
    orch: OrchestratorClientDep,
) -> Response:
    """The assistants, as OpenAI models."""
    data = await _models(orch)
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


@router.get("/models/{model}", responses=json_ok(OpenAIModel))
async def get_model(model: AssistantIdPath, orch: OrchestratorClientDep) -> Response:
    """One assistant, as an OpenAI model."""
    assistant = orjson.loads(await orch.get_assistant(model))
    return Response(orjson.dumps(_model(assistant)), media_type="application/json")


@router.post(
    "/chat/completions",
    responses={
        200: {
            "model": ChatCompletion,
            "description": "The completion (`stream: false`), or its chunks as SSE. " + STREAM_DOC,
            "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}},
        }
    },
)
async def create_chat_completion(
    body: ChatCompletionRequest,
    request: Request,
    orch: OrchestratorClientDep,
    settings: SettingsDep,
    slot: StreamSlotDep,
    thread_header: ThreadHeader = None,
) -> Response:
    """Chat with an assistant (`model`), streamed or not; stateful with X-Cai-Thread-Id."""
    started = time.perf_counter()
    thread_id = _thread_id(thread_header, body)
    messages = _input_messages(body, bool(thread_id))
    why = message_limit_violation(messages, settings.max_messages, settings.max_message_chars)
    if why:
        raise Problem(422, f"messages: {why}")
    run = await orch.create_message_run(
        thread_id=thread_id,
        assistant_id=body.model,
        messages=messages,
        stream_modes=["messages-tuple"],
        metadata={"api": "openai", **({"user": body.user} if body.user else {})},
        # An OpenAI client cannot resume a stream: when it goes, the run stops.
        on_disconnect="cancel",
    )
    # An OpenAI client cannot resume: on shutdown the answer goes on through the grace period
    # instead of being cut short like resumable streams.
    batches = await orch.watch(
        run.thread_id, run.run_id, cancel_on_disconnect=True, through_shutdown=True
    )
    ids = CompletionIds(
        id=f"chatcmpl-{run.run_id}",
        created=int(time.time()),
        model=body.model,
        include_usage=bool(body.stream_options and body.stream_options.include_usage),
    )
    headers = {THREAD_HEADER: thread_id} if thread_id else {}
    if body.stream:
        # Where the run can be re-joined (LangGraph stream, with Last-Event-ID) if this stream
        # is cut by a gateway shutting down: the run waits REATTACH_GRACE_SECONDS for that.
        headers["Content-Location"] = run.path
        return EventSourceResponse(
            slot.wrap(tracked(openai_chunks(batches, ids, started), "openai")),
            ping=settings.sse_ping_seconds,
            headers=headers,
            shutdown_event=anyio.Event(),  # sse-starlette's signal, unused: keep streaming
            shutdown_grace_period=settings.shutdown_grace_seconds,
        )
    body_json = await openai_completion(batches, ids)  # the slot is released after it
    return Response(body_json, media_type="application/json", headers=headers)
