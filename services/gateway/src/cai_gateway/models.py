"""Response shapes, for the OpenAPI document. Routes relay the orchestrator's JSON as bytes; these
models describe it (extra fields allowed) and are never used to re-serialise it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Open = ConfigDict(extra="allow")


class Problem(BaseModel):
    """RFC 9457 problem details (`application/problem+json`). On /v1 routes `error` carries the
    same message in OpenAI's error shape."""

    model_config = Open

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = None
    retry_after: int | None = None
    error: dict[str, Any] | None = None


class Thread(BaseModel):
    """LangGraph Server's Thread."""

    model_config = Open

    thread_id: str
    created_at: str
    updated_at: str
    metadata: dict[str, Any]
    status: str
    values: Any = None
    interrupts: Any = None


class ThreadState(BaseModel):
    """A thread's state at a checkpoint."""

    model_config = Open

    values: Any = None
    next: list[str] = []
    checkpoint: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
    created_at: str | None = None
    parent_checkpoint: dict[str, Any] | None = None
    tasks: list[Any] = []


class CheckpointConfig(BaseModel):
    """The checkpoint a state update wrote."""

    model_config = Open

    checkpoint: dict[str, Any]


class Run(BaseModel):
    """LangGraph Server's Run (`queue` while pending: position and age)."""

    model_config = Open

    run_id: str
    thread_id: str
    assistant_id: str
    created_at: str
    updated_at: str
    status: str
    metadata: dict[str, Any]
    multitask_strategy: str | None = None
    kwargs: dict[str, Any] | None = None
    queue: dict[str, Any] | None = None


class Assistant(BaseModel):
    """LangGraph Server's Assistant (a persona from the assistants file)."""

    model_config = Open

    assistant_id: str
    graph_id: str
    name: str
    description: str | None = None
    config: dict[str, Any]
    metadata: dict[str, Any]
    version: int
    created_at: str
    updated_at: str


class AssistantSchemas(BaseModel):
    """JSON schemas of the assistant's graph."""

    model_config = Open

    graph_id: str
    input_schema: Any = None
    output_schema: Any = None
    state_schema: Any = None
    config_schema: Any = None
    context_schema: Any = None


class OpenAIModel(BaseModel):
    """An assistant shown as an OpenAI model."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class OpenAIModelList(BaseModel):
    """GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class ChatCompletionMessage(BaseModel):
    """The assistant's reply."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(BaseModel):
    """One choice (there is always exactly one)."""

    index: int
    message: ChatCompletionMessage
    finish_reason: str


class Usage(BaseModel):
    """Token usage reported by the model."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    """A non-streamed chat completion (`stream: false`)."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage


class TaskCreated(BaseModel):
    """POST /chat."""

    task_id: str
    status: Literal["started"] = "started"
    thread_id: str | None = None


class TaskStatus(BaseModel):
    """A task's status: pending, running, done, stopped or error."""

    task_id: str
    status: Literal["pending", "running", "done", "stopped", "error"]
    thread_id: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    error: str | None = None
