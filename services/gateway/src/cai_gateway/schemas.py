"""Request bodies, as LangGraph Server accepts them. Unknown fields are accepted and ignored."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

StreamMode = Literal["values", "updates", "messages-tuple", "custom"]
KNOWN_UNSUPPORTED = {"messages", "events", "debug", "tasks", "checkpoints"}


class ThreadCreate(BaseModel):
    """POST /threads."""

    model_config = ConfigDict(extra="ignore")

    thread_id: UUID | None = None
    metadata: dict[str, Any] | None = None
    if_exists: Literal["raise", "do_nothing"] | None = None


class RunCreate(BaseModel):
    """POST /threads/{thread_id}/runs[/stream|/wait] and POST /runs[/stream|/wait]."""

    model_config = ConfigDict(extra="ignore")

    assistant_id: str = Field(default="chat", min_length=1, max_length=128)
    input: dict[str, Any] | None = None
    command: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None
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
