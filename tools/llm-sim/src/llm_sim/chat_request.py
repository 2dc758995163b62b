"""Validation of ``POST /v1/chat/completions`` bodies into a small typed request."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from llm_sim.errors import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message reduced to its role and plain text."""

    role: str
    text: str


@dataclass(frozen=True, slots=True)
class Tool:
    """A function tool offered to the model."""

    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A validated chat completion request."""

    model: str
    messages: tuple[Message, ...]
    raw_messages: list[Any]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    tools: tuple[Tool, ...]
    raw_tools: list[Any] | None
    tool_choice: str | None
    forced_tool: str | None
    temperature: float | None
    metadata: dict[str, Any] | None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _content_text(content: object, param: str) -> str:
    """Plain text of a message ``content`` (a string or a list of content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise InvalidRequest(
                    "Each content part must be an object with a 'type'", f"{param}[{i}]"
                )
            if part["type"] in ("text", "input_text"):
                text = part.get("text")
                if not isinstance(text, str):
                    raise InvalidRequest("A text part needs a string 'text'", f"{param}[{i}].text")
                texts.append(text)
        return "\n".join(texts)
    raise InvalidRequest("'content' must be a string, an array of parts or null", param)


def _parse_messages(raw: object) -> tuple[Message, ...]:
    if raw is None:
        raise InvalidRequest("Missing required parameter: 'messages'.", "messages")
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("'messages' must be a non-empty array", "messages")
    out: list[Message] = []
    for i, item in enumerate(raw):
        param = f"messages[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest("Each message must be an object", param)
        role = item.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidRequest(
                f"Invalid role {role!r}; expected one of {', '.join(sorted(ROLES))}",
                f"{param}.role",
            )
        if "content" not in item and role != "assistant":
            raise InvalidRequest(f"Missing required parameter: '{param}.content'.", param)
        if item.get("content") is None and role not in ("assistant", "function"):
            raise InvalidRequest(f"'{param}.content' must not be null", f"{param}.content")
        text = _content_text(item.get("content"), f"{param}.content")
        if role == "tool" and not isinstance(item.get("tool_call_id"), str):
            raise InvalidRequest(
                f"Missing required parameter: '{param}.tool_call_id'.", f"{param}.tool_call_id"
            )
        tool_calls = item.get("tool_calls")
        if tool_calls is not None and not isinstance(tool_calls, list):
            raise InvalidRequest("'tool_calls' must be an array", f"{param}.tool_calls")
        out.append(Message(role, text))
    return tuple(out)


def _parse_tools(raw: object) -> tuple[Tool, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest("'tools' must be an array", "tools")
    tools: list[Tool] = []
    for i, item in enumerate(raw):
        param = f"tools[{i}]"
        if not isinstance(item, dict) or item.get("type") != "function":
            raise InvalidRequest("Each tool must be an object with type 'function'", param)
        function = item.get("function")
        if not isinstance(function, dict):
            raise InvalidRequest("Missing required parameter: 'function'.", f"{param}.function")
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME_RE.match(name):
            raise InvalidRequest(
                "Tool names must be 1-64 letters, digits, '_', '-' or '.'", f"{param}.function.name"
            )
        parameters = function.get("parameters", {})
        if parameters is None:
            parameters = {}
        if not isinstance(parameters, dict):
            raise InvalidRequest(
                "'parameters' must be a JSON schema object", f"{param}.function.parameters"
            )
        tools.append(Tool(name, parameters))
    return tuple(tools)


def _parse_tool_choice(raw: object) -> tuple[str | None, str | None]:
    """Return (mode, forced tool name) for ``tool_choice``."""
    if raw is None:
        return None, None
    if raw in ("none", "auto", "required"):
        return str(raw), None
    if isinstance(raw, dict) and raw.get("type") == "function":
        function = raw.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            return "function", function["name"]
    raise InvalidRequest(
        "'tool_choice' must be 'none', 'auto', 'required' or "
        '{"type": "function", "function": {"name": ...}}',
        "tool_choice",
    )


def _optional_int(payload: dict[str, Any], key: str, minimum: int) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise InvalidRequest(f"'{key}' must be an integer >= {minimum}", key)
    return value


def _optional_number(payload: dict[str, Any], key: str, low: float, high: float) -> float | None:
    value = payload.get(key)
    if value is None:
        return None
    if not _is_number(value) or not low <= value <= high:
        raise InvalidRequest(f"'{key}' must be a number between {low:g} and {high:g}", key)
    return float(value)


def parse_chat_request(payload: object) -> ChatRequest:
    """Validate a decoded JSON body.

    Raises:
        InvalidRequest: the body is not a valid chat completion request.
    """
    if not isinstance(payload, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    model = payload.get("model")
    if model is None:
        raise InvalidRequest("Missing required parameter: 'model'.", "model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", "model")
    messages = _parse_messages(payload.get("messages"))

    stream = payload.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", "stream")
    stream_options = payload.get("stream_options")
    include_usage = False
    if stream_options is not None:
        if not isinstance(stream_options, dict):
            raise InvalidRequest("'stream_options' must be an object", "stream_options")
        usage_flag = stream_options.get("include_usage", False)
        if not isinstance(usage_flag, bool):
            raise InvalidRequest(
                "'stream_options.include_usage' must be a boolean", "stream_options.include_usage"
            )
        include_usage = usage_flag

    max_tokens = _optional_int(payload, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _optional_int(payload, "max_tokens", 1)
    n = _optional_int(payload, "n", 1)
    if n is not None and n != 1:
        raise InvalidRequest("llm-sim only supports n=1", "n")
    temperature = _optional_number(payload, "temperature", 0.0, 2.0)
    _optional_number(payload, "top_p", 0.0, 1.0)

    tools = _parse_tools(payload.get("tools"))
    tool_choice, forced_tool = _parse_tool_choice(payload.get("tool_choice"))
    metadata = payload.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be an object", "metadata")
    raw_tools = payload.get("tools")

    return ChatRequest(
        model=model,
        messages=messages,
        raw_messages=payload["messages"],
        stream=bool(stream),
        include_usage=include_usage and bool(stream),
        max_tokens=max_tokens,
        tools=tools,
        raw_tools=raw_tools if isinstance(raw_tools, list) else None,
        tool_choice=tool_choice,
        forced_tool=forced_tool,
        temperature=temperature,
        metadata=metadata,
    )
