"""Run events → the OpenAI and task-API dialects. Unlike the LangGraph path (relayed as bytes),
these dialects need the answer's text, so `messages` events are parsed here."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from cai.v1 import orchestrator_pb2 as pb
from cai_common import runs
from cai_common.runs import CANCELLED, END, ERROR, RETRY, TERMINAL_EVENTS, TIMEOUT
from cai_gateway.problems import Problem
from cai_gateway.runs import StreamInterrupted
from cai_gateway.sse import TIME_TO_FIRST_TOKEN

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
    """A human-readable reason for a run's non-success terminal event (with its error id, the
    key to the orchestrator's log line about it, when it has one)."""
    payload = _object(data)
    message = payload.get("message")
    if not isinstance(message, str):
        message = ENDED_BECAUSE.get(event, "The run failed")
    error_id = payload.get("error_id")
    return f"{message} (error id {error_id})" if isinstance(error_id, str) else message


def error_id_of(data: bytes) -> str | None:
    """The `error_id` of a terminal event's data, if it has one."""
    error_id = _object(data).get("error_id")
    return error_id if isinstance(error_id, str) else None


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


async def openai_chunks(
    batches: AsyncIterator[Sequence[pb.RunEvent]], ids: CompletionIds, started: float
) -> AsyncIterator[bytes]:
    """A run's event batches as `chat.completion.chunk` SSE messages, ending with [DONE] (or an
    in-stream error); `started` is when the request arrived, for the edge TTFT metric."""
    answer = AnswerText()
    first_token = True
    yield chunk(ids, {"role": "assistant", "content": ""})
    try:
        async for events in batches:
            out: list[bytes] = []
            for e in events:
                if e.event == "messages":
                    text, usage = ai_text_and_usage(e.data)
                    if usage:
                        answer.add_usage(usage)
                    delta = answer.add(text)
                    if delta:
                        if first_token:
                            TIME_TO_FIRST_TOKEN.labels("edge").observe(
                                time.perf_counter() - started
                            )
                            first_token = False
                        out.append(chunk(ids, {"content": delta}))
                elif e.event == RETRY:
                    answer.retry()
                elif e.event == END:
                    out.append(chunk(ids, {}, "stop"))
                    if ids.include_usage:
                        out.append(usage_chunk(ids, answer.openai_usage()))
                    out.append(DONE)
                elif e.event in TERMINAL_EVENTS:
                    out.append(error_chunk(error_message(e.event, e.data)))
            if out:
                yield b"".join(out)
    except StreamInterrupted as exc:
        yield error_chunk(f"The answer was interrupted: {exc}; retry the request")


async def openai_completion(
    batches: AsyncIterator[Sequence[pb.RunEvent]], ids: CompletionIds
) -> bytes:
    """A run's event batches as one `chat.completion` body.

    Raises:
        Problem: the run did not succeed (504 timeout, 409 cancelled, 502 error), or its stream
            was interrupted (503).
    """
    answer = AnswerText()
    terminal, data = "", b""
    try:
        async for events in batches:
            for e in events:
                if e.event == "messages":
                    text, usage = ai_text_and_usage(e.data)
                    if usage:
                        answer.add_usage(usage)
                    answer.add(text)
                elif e.event == RETRY:
                    answer.retry()
                elif e.event in TERMINAL_EVENTS:
                    terminal, data = e.event, e.data
    except StreamInterrupted as exc:
        raise Problem(503, f"The answer was interrupted: {exc}", {"Retry-After": "1"}) from None
    if terminal not in (END, ""):
        status = {TIMEOUT: 504, CANCELLED: 409}.get(terminal, 502)
        error_id = error_id_of(data)
        extra: dict[str, Any] = {"error_id": error_id} if error_id else {}
        raise Problem(status, error_message(terminal, data), None, **extra)
    body = {
        "id": ids.id,
        "object": "chat.completion",
        "created": ids.created,
        "model": ids.model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer.sent, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": answer.openai_usage(),
    }
    return orjson.dumps(body)


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


async def task_events(
    task_id: str,
    batches: AsyncIterator[Sequence[pb.RunEvent]],
    status_when_expired: Callable[[], Awaitable[str]],
) -> AsyncIterator[bytes]:
    """A run's event batches as task-API SSE messages (`status_when_expired`: the task's status
    from its record, asked only when the log ended without a terminal event)."""
    answer = AnswerText()
    ended = False
    try:
        async for events in batches:
            out: list[bytes] = []
            for e in events:
                frame = task_event_of(task_id, e, answer)
                if frame is not None:
                    out.append(frame)
                if e.event in TERMINAL_EVENTS:
                    ended = True
            if out:
                yield b"".join(out)
    except StreamInterrupted:
        # The gateway is going away (or no orchestrator answers): the client reconnects with
        # Last-Event-ID, to this or another gateway, and loses nothing.
        yield b"retry: 250\n\n"
        return
    if not ended:
        # The run's log has expired: tell how it ended from its record.
        status = await status_when_expired()
        kind = {"done": "done", "stopped": "stopped"}.get(status, "error")
        yield task_event("0", kind, {"task_id": task_id, "status": status})


def task_event_of(task_id: str, e: pb.RunEvent, answer: AnswerText) -> bytes | None:
    """One run event as a task event (None: nothing the task client needs)."""
    if e.event == "messages":
        text, _ = ai_text_and_usage(e.data)
        delta = answer.add(text)
        return task_event(e.id, "token", delta) if delta else None
    if e.event == "status":
        return task_event(e.id, "status", _loads(e.data))
    if e.event == RETRY:
        answer.retry()
        attempt = _object(e.data).get("attempt")
        return task_event(e.id, "status", {"status": "retrying", "attempt": attempt})
    if e.event == END:
        return task_event(e.id, "done", {"task_id": task_id, "status": "done"})
    if e.event == CANCELLED:
        return task_event(
            e.id, "stopped", {"task_id": task_id, "status": "stopped", **_object(e.data)}
        )
    if e.event in (ERROR, TIMEOUT):
        detail = _object(e.data)
        error = {
            "task_id": task_id,
            "status": "error",
            "error": detail.get("error", e.event),
            "message": detail.get("message", "The task failed"),
        }
        if "error_id" in detail:
            error["error_id"] = detail["error_id"]
        return task_event(e.id, "error", error)
    return None


def _loads(data: bytes) -> Any:
    try:
        return orjson.loads(data) if data else None
    except orjson.JSONDecodeError:
        return None


def _object(data: bytes) -> dict[str, Any]:
    value = _loads(data)
    return value if isinstance(value, dict) else {}
