"""Request bodies: LangGraph Server's (unknown fields accepted and ignored), OpenAI's chat
completions and the task API's."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, field_validator

StreamMode = Literal["values", "updates", "messages-tuple", "custom"]
KNOWN_UNSUPPORTED = {"messages", "events", "debug", "tasks", "checkpoints"}
# Assistant ids as the orchestrator's assistants file allows them.
ASSISTANT_ID = r"^[A-Za-z0-9_.-]+$"
AssistantId = Annotated[
    str, Field(min_length=1, max_length=128, pattern=ASSISTANT_ID, examples=["chat"])
]
AssistantIdPath = Annotated[str, Path(min_length=1, max_length=128, pattern=ASSISTANT_ID)]
# LangGraph checkpoint ids (UUIDs, in practice).
CHECKPOINT_ID = r"^[A-Za-z0-9_.:-]+$"
CheckpointId = Annotated[str, Field(min_length=1, max_length=64, pattern=CHECKPOINT_ID)]
CheckpointIdPath = Annotated[str, Path(min_length=1, max_length=64, pattern=CHECKPOINT_ID)]
CheckpointIdQuery = Annotated[str | None, Query(min_length=1, max_length=64, pattern=CHECKPOINT_ID)]
Metadata = dict[str, Any]


def update_messages(update: Any) -> Any:
    """The messages a state update writes (for the message limits): `{"messages": …}`, or the
    `messages` entries of LangGraph's `[["messages", …], …]` form."""
    if isinstance(update, dict):
        return update.get("messages")
    if not isinstance(update, list):
        return None
    found: list[Any] = []
    for item in update:
        if isinstance(item, list | tuple) and len(item) == 2 and item[0] == "messages":
            found.extend(item[1] if isinstance(item[1], list) else [item[1]])
    return found or None


class ThreadCreate(BaseModel):
    """POST /threads."""

    model_config = ConfigDict(extra="ignore")

    thread_id: UUID | None = None
    metadata: Metadata | None = None
    if_exists: Literal["raise", "do_nothing"] | None = None


class ThreadPatch(BaseModel):
    """PATCH /threads/{thread_id}: metadata merged into the thread's."""

    model_config = ConfigDict(extra="ignore")

    metadata: Metadata = Field(default_factory=dict)


class ThreadSearch(BaseModel):
    """POST /threads/search. Results are newest first; `sort_by`/`sort_order` are accepted and
    ignored."""

    model_config = ConfigDict(extra="ignore")

    metadata: Metadata | None = None
    status: Literal["idle", "busy", "interrupted", "error"] | None = None
    ids: list[UUID] | None = Field(default=None, max_length=1000)
    values: dict[str, Any] | None = None
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=1_000_000)
    sort_by: str | None = None
    sort_order: Literal["asc", "desc"] | None = None


class CheckpointRef(BaseModel):
    """A checkpoint of a thread, as LangGraph names it."""

    model_config = ConfigDict(extra="ignore")

    checkpoint_id: CheckpointId | None = None
    checkpoint_ns: str | None = Field(default=None, max_length=256)
    thread_id: str | None = Field(default=None, max_length=64)


class ThreadStateUpdate(BaseModel):
    """POST /threads/{thread_id}/state."""

    model_config = ConfigDict(extra="ignore")

    values: dict[str, Any] | list[Any] | None = None
    as_node: str | None = Field(default=None, min_length=1, max_length=128)
    checkpoint_id: CheckpointId | None = None
    checkpoint: CheckpointRef | None = None

    def values_messages(self) -> Any:
        """The messages `values` writes, if any (for the message limits)."""
        return update_messages(self.values)

    def target_checkpoint(self) -> str:
        """The checkpoint to fork from ("" = the latest)."""
        if self.checkpoint_id:
            return self.checkpoint_id
        return (self.checkpoint.checkpoint_id or "") if self.checkpoint else ""


class StateAtCheckpoint(BaseModel):
    """POST /threads/{thread_id}/state/checkpoint."""

    model_config = ConfigDict(extra="ignore")

    checkpoint: CheckpointRef
    subgraphs: bool = False


class HistoryQuery(BaseModel):
    """POST /threads/{thread_id}/history."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(default=10, ge=1, le=1000)
    before: CheckpointId | CheckpointRef | None = None
    metadata: Metadata | None = None
    checkpoint: CheckpointRef | None = None

    def before_id(self) -> str:
        """The checkpoint id to page before ("" = from the latest)."""
        if isinstance(self.before, CheckpointRef):
            return self.before.checkpoint_id or ""
        return self.before or ""


class RunCreate(BaseModel):
    """POST /threads/{thread_id}/runs[/stream|/wait] and POST /runs[/stream|/wait]."""

    model_config = ConfigDict(extra="ignore")

    assistant_id: AssistantId = "chat"
    input: dict[str, Any] | None = None
    command: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    metadata: Metadata | None = None
    stream_mode: list[StreamMode] | StreamMode | None = None
    stream_resumable: bool | None = None
    multitask_strategy: Literal["reject", "enqueue", "interrupt", "rollback"] | None = None
    if_not_exists: Literal["create", "reject"] | None = None
    on_disconnect: Literal["cancel", "continue"] | None = None

    @field_validator("stream_mode", mode="before")
    @classmethod
    def _explain_unsupported(cls, value: Any) -> Any:
        modes = [value] if isinstance(value, str) else (value or [])
        bad = [m for m in modes if isinstance(m, str) and m in KNOWN_UNSUPPORTED]
        if bad:
            raise ValueError(
                f"stream mode(s) {bad} are not supported; use values, updates, messages-tuple "
                "or custom"
            )
        return value

    def modes(self) -> list[str]:
        """The stream modes as a list (default: values)."""
        if self.stream_mode is None:
            return ["values"]
        if isinstance(self.stream_mode, str):
            return [self.stream_mode]
        return list(dict.fromkeys(self.stream_mode)) or ["values"]

    def merged_config(self) -> dict[str, Any]:
        """`config` with `context` (LangGraph's runtime context) folded into `configurable`."""
        config = dict(self.config or {})
        if self.context:
            config["configurable"] = {**(config.get("configurable") or {}), **self.context}
        return config

    def input_messages(self) -> Any:
        """`input.messages`, if any (for the message limits)."""
        return (self.input or {}).get("messages")

    def command_messages(self) -> Any:
        """The messages `command.update` writes, if any (for the message limits)."""
        return update_messages((self.command or {}).get("update"))


class RunsCancel(BaseModel):
    """POST /runs/cancel: by run ids (optionally on one thread), or every run of a status."""

    model_config = ConfigDict(extra="ignore")

    thread_id: UUID | None = None
    run_ids: list[UUID] | None = Field(default=None, max_length=1000)
    status: Literal["pending", "running", "all"] | None = None


class AssistantSearch(BaseModel):
    """POST /assistants/search."""

    model_config = ConfigDict(extra="ignore")

    metadata: Metadata | None = None
    graph_id: str | None = Field(default=None, max_length=128)
    name: str | None = Field(default=None, max_length=256)
    limit: int = Field(default=10, ge=1, le=1000)
    offset: int = Field(default=0, ge=0, le=1_000_000)
    sort_by: str | None = None
    sort_order: Literal["asc", "desc"] | None = None


# -- OpenAI-compatible ---------------------------------------------------------------------------


class ContentPart(BaseModel):
    """A part of a message's content; only text parts are supported."""

    model_config = ConfigDict(extra="ignore")

    type: str = Field(max_length=64)
    text: str | None = None


class ChatMessage(BaseModel):
    """One message of a chat completion request."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart] | None = None
    name: str | None = Field(default=None, max_length=128)

    def text(self) -> str:
        """The message's text (text parts joined).

        Raises:
            ValueError: a content part is not text.
        """
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"content parts of type {part.type!r} are not supported")
            parts.append(part.text)
        return "".join(parts)


class StreamOptions(BaseModel):
    """`stream_options`."""

    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. `model` is an assistant id; sampling parameters are the
    assistant's and are accepted but ignored. Stateful with `X-Cai-Thread-Id` or
    `metadata.thread_id`."""

    model_config = ConfigDict(extra="ignore")

    model: AssistantId
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    user: str | None = Field(default=None, max_length=256)
    metadata: dict[str, str] | None = None
    temperature: float | None = None
    top_p: float | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None


# -- task API ------------------------------------------------------------------------------------


class HistoryMessage(BaseModel):
    """A turn of `conversation_history`."""

    model_config = ConfigDict(extra="ignore")

    role: Literal["user", "assistant", "system"]
    content: str


class ChatTaskCreate(BaseModel):
    """POST /chat. Without `thread_id` the task is stateless (`conversation_history` gives the
    context); with it, the message is added to that thread (created on first use)."""

    model_config = ConfigDict(extra="ignore")

    message: str = Field(min_length=1)
    thread_id: UUID | None = None
    conversation_history: list[HistoryMessage] | None = None
    assistant_id: AssistantId = "chat"
