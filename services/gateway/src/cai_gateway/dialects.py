"""Run events → the OpenAI and task-API dialects. Unlike the LangGraph path (relayed as bytes),
these dialects need the answer's text, so `messages` events are parsed here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from cai_common import runs

AI_TYPES = frozenset({"AIMessageChunk", "ai"})


def ai_text_and_usage(data: bytes) -> tuple[str, dict[str, Any] | None]:
    """The text and usage of a `messages` event ([message chunk, metadata]); ("", None) for
    anything that is not the assistant's text (tool calls, tool results, user messages)."""
    try:
        message = orjson.loads(data)[0]
    except (orjson.JSONDecodeError, IndexError, KeyError, TypeError):
        return "", None
    if not isinstance(message, dict) or message.get("type") not in AI_TYPES:
        return "", None
    content = message.get("content")
    if isinstance(content, list):
        content = "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"
        )
    usage = message.get("usage_metadata")
    return (content if isinstance(content, str) else ""), (
        usage if isinstance(usage, dict) else None
    )


@dataclass
class AnswerText:
    """The answer as it streams, with text repeated after a `retry` suppressed.

    A retried run regenerates its answer from the last checkpoint. A client of these dialects
    cannot take back text it was sent, so the regenerated text is held back while it repeats what
    was already sent, and only the new part goes out.
    """

    sent: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    _replay: str | None = None

    def retry(self) -> None:
        """A new attempt starts: its text is compared with what was sent."""
        self._replay = ""

    def add(self, text: str) -> str:
        """Take a delta; return what to send now."""
        if not text:
            return ""
        if self._replay is None:
            self.sent += text
            return text
        self._replay += text
        if self.sent.startswith(self._replay):
            return ""  # still repeating what the client has
        if self._replay.startswith(self.sent):
            delta = self._replay[len(self.sent) :]
        else:
            delta = text  # diverged: the client keeps its text, the new text follows it
        self.sent += delta
        self._replay = None
        return delta

    def add_usage(self, usage: dict[str, Any]) -> None:
        """Sum the model's token usage over the run's model calls."""
        for name in ("input_tokens", "output_tokens", "total_tokens"):
            value = usage.get(name)
            if isinstance(value, int):
                self.usage[name] = self.usage.get(name, 0) + value

    def openai_usage(self) -> dict[str, int]:
        """Usage in OpenAI's names."""
        prompt = self.usage.get("input_tokens", 0)
        completion = self.usage.get("output_tokens", 0)
        total = self.usage.get("total_tokens", prompt + completion)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


# What a run that ended without its own message went through, by terminal event.
ENDED_BECAUSE = {
    runs.CANCELLED: "The run was cancelled",
    runs.TIMEOUT: "The run passed its deadline",
}


def error_message(event: str, data: bytes) -> str:
    """A human-readable reason for a run's non-success terminal event."""
    try:
        payload = orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        payload = None
    if isinstance(payload, dict) and isinstance(payload.get("message"), str):
        return str(payload["message"])
    return ENDED_BECAUSE.get(event, "The run failed")


# -- OpenAI chunks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompletionIds:
    """What every chunk of one completion repeats."""

    id: str
    created: int
    model: str
    include_usage: bool


def chunk(ids: CompletionIds, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
    """One `chat.completion.chunk` as an SSE message."""
    body: dict[str, Any] = {
        "id": ids.id,
        "object": "chat.completion.chunk",
        "created": ids.created,
        "model": ids.model,
        "system_fingerprint": None,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    if ids.include_usage:
        body["usage"] = None
    return b"data: " + orjson.dumps(body) + b"\n\n"


def usage_chunk(ids: CompletionIds, usage: dict[str, int]) -> bytes:
    """The last chunk when `stream_options.include_usage` is set: no choices, the usage."""
    body = {
        "id": ids.id,
        "object": "chat.completion.chunk",
        "created": ids.created,
        "model": ids.model,
        "system_fingerprint": None,
        "choices": [],
        "usage": usage,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


def error_chunk(message: str, kind: str = "server_error") -> bytes:
    """An in-stream error, as OpenAI sends it (the SDK raises APIError on it)."""
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return b"data: " + orjson.dumps(body) + b"\n\n"


DONE = b"data: [DONE]\n\n"


# -- task API ------------------------------------------------------------------------------------


def task_event(event_id: str, kind: str, data: Any) -> bytes:
    """One task-API SSE message: `data: {"type": ..., "data": ...}` with the run event's id."""
    payload = orjson.dumps({"type": kind, "data": data})
    return b"id: " + event_id.encode() + b"\ndata: " + payload + b"\n\n"


TASK_STATUS = {
    runs.PENDING: "pending",
    runs.RUNNING: "running",
    runs.SUCCESS: "done",
    runs.INTERRUPTED: "stopped",
    runs.ERROR: "error",
    runs.TIMEOUT: "error",
}
