"""What the simulator replies: tool calls, or an answer quoting the context it was given."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from itertools import cycle, islice
from typing import Any

import orjson

from llm_sim.chat_request import ChatRequest, Tool
from llm_sim.errors import InvalidRequest
from llm_sim.text import passages_from, rank_sentences, word_count

# `[[tool:NAME]]` or `[[tool:NAME {"json": "args"}]]` in the latest user message.
DIRECTIVE_RE = re.compile(r"\[\[tool:([A-Za-z0-9_.\-]{1,64})\s*(\{.*?\})?\s*\]\]", re.DOTALL)
DEFAULT_SEARCH_TOOL = "search_knowledge_base"
# A natural-length answer quotes at most this many sentences.
ANSWER_SENTENCES = 3
# The no-match sentence echoes at most this many words of the question.
ECHO_WORDS = 40
CONTEXT_ROLES = frozenset({"system", "developer", "user", "tool", "function"})


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call the simulated model makes."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The planned completion: content tokens, or tool calls."""

    tokens: list[str]
    tool_calls: list[ToolCall]
    finish_reason: str

    @property
    def completion_tokens(self) -> int:
        """Tokens this reply costs: content words, or one per tool call plus its argument pieces."""
        if self.tool_calls:
            return sum(1 + len(argument_fragments(c.arguments)) for c in self.tool_calls)
        return len(self.tokens)


def new_call_id() -> str:
    """A fresh OpenAI-style tool call id."""
    return "call_" + secrets.token_hex(12)


_FRAGMENT_RE = re.compile(r"\s*\w+|[^\w\s]+|\s+")


def argument_fragments(arguments: str) -> list[str]:
    """Split a JSON arguments string into streamed pieces as models do: words and punctuation."""
    return _FRAGMENT_RE.findall(arguments) or [arguments]


def strip_directives(text: str) -> str:
    """Remove ``[[tool:…]]`` directives and normalise whitespace."""
    return " ".join(DIRECTIVE_RE.sub(" ", text).split())


def parse_directives(text: str) -> list[tuple[str, str]]:
    """Return (tool name, JSON arguments) for every ``[[tool:NAME {args}]]`` in ``text``.

    Raises:
        InvalidRequest: a directive's arguments are not a JSON object.
    """
    calls: list[tuple[str, str]] = []
    for match in DIRECTIVE_RE.finditer(text):
        name, raw_args = match.group(1), match.group(2)
        args: Any = {}
        if raw_args:
            try:
                args = orjson.loads(raw_args)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(
                    f"Invalid JSON arguments in llm-sim directive for tool {name!r}: {exc}",
                    "messages",
                ) from exc
            if not isinstance(args, dict):
                raise InvalidRequest(
                    f"llm-sim directive arguments for tool {name!r} must be a JSON object",
                    "messages",
                )
        calls.append((name, orjson.dumps(args).decode()))
    return calls


def prompt_token_count(request: ChatRequest) -> int:
    """Approximate prompt tokens: whitespace-delimited words over all message contents."""
    return sum(word_count(m.text) for m in request.messages)


def _pick_tool(tools: tuple[Tool, ...], *, any_tool: bool) -> Tool | None:
    """The search tool the simulator prefers; with ``any_tool``, else the first tool."""
    for tool in tools:
        if tool.name == DEFAULT_SEARCH_TOOL:
            return tool
    for tool in tools:
        if "search" in tool.name.lower():
            return tool
    if any_tool and tools:
        return tools[0]
    return None


def _default_arguments(tool: Tool | None, question: str) -> str:
    """Arguments for a call the simulator chooses itself: the question as ``query``.

    If the tool's schema names no ``query`` property, its required properties are filled with
    placeholders of the declared type (strings get the question).
    """
    properties = (tool.parameters.get("properties") if tool else None) or {}
    if not isinstance(properties, dict) or not properties or "query" in properties:
        return orjson.dumps({"query": question}).decode()
    required = tool.parameters.get("required") if tool else None
    names = [
        n
        for n in (required if isinstance(required, list) else [])
        if isinstance(n, str) and n in properties
    ]
    placeholders: dict[str, Any] = {
        "integer": 1,
        "number": 1,
        "boolean": True,
        "array": [],
        "object": {},
    }
    args: dict[str, Any] = {}
    for name in names:
        spec = properties[name]
        kind = spec.get("type") if isinstance(spec, dict) else None
        args[name] = placeholders.get(kind, question) if isinstance(kind, str) else question
    return orjson.dumps(args).decode()


def _no_match_sentence(question: str) -> str:
    echoed = question.split()
    if not echoed:
        return "There is no question to answer and no context to quote."
    shown = " ".join(echoed[:ECHO_WORDS]) + (" …" if len(echoed) > ECHO_WORDS else "")
    return f'I found nothing in the given context about "{shown}".'


def _tokens_from(sentences: list[str], limit: int | None) -> list[str]:
    """Whitespace tokens of the sentences (each after the first with its leading space).

    With ``limit``, exactly that many tokens, cycling through the sentences to fill.
    """
    if limit is None:
        source = " ".join(sentences).split()
    else:
        source = list(islice(cycle(" ".join(sentences).split()), limit))
    if not source:
        return []
    return [source[0], *(" " + w for w in source[1:])]


def plan_reply(
    request: ChatRequest, tool_mode: str, reply_tokens: int | None, max_tokens: int | None
) -> Reply:
    """Decide the reply: tool calls (directive, tool_choice, tool mode) or a quoting answer."""
    messages = request.messages
    last_user = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    raw_question = messages[last_user].text if last_user >= 0 else ""
    question = strip_directives(raw_question)
    fresh_results = any(m.role in ("tool", "function") for m in messages[last_user + 1 :])

    calls = _plan_tool_calls(request, tool_mode, raw_question, question, fresh_results)
    if calls:
        return Reply([], calls, "tool_calls")

    # Tier 0: tool results after the latest user message; tier 1: the rest of the context.
    sources: list[tuple[str, int]] = []
    for i, message in enumerate(messages):
        if i == last_user or message.role not in CONTEXT_ROLES:
            continue
        fresh = i > last_user and message.role in ("tool", "function")
        text = strip_directives(message.text) if message.role == "user" else message.text
        sources.append((text, 0 if fresh else 1))
    ranked = rank_sentences(question, passages_from(sources))
    if not ranked:
        ranked = [_no_match_sentence(question)]
    elif reply_tokens is None:
        ranked = ranked[:ANSWER_SENTENCES]
    tokens = _tokens_from(ranked, reply_tokens)
    if max_tokens is not None and len(tokens) > max_tokens:
        return Reply(tokens[:max_tokens], [], "length")
    return Reply(tokens, [], "stop")


def _plan_tool_calls(
    request: ChatRequest, tool_mode: str, raw_question: str, question: str, fresh_results: bool
) -> list[ToolCall]:
    """Tool calls for this turn; precedence: tool_choice none > forced > directive > mode."""
    if request.tool_choice == "none":
        return []
    if request.forced_tool is not None:
        tool = next((t for t in request.tools if t.name == request.forced_tool), None)
        return [ToolCall(new_call_id(), request.forced_tool, _default_arguments(tool, question))]
    directives = parse_directives(raw_question)
    if directives and (not fresh_results or tool_mode == "always"):
        return [ToolCall(new_call_id(), name, args) for name, args in directives]
    always = tool_mode == "always" or request.tool_choice == "required"
    if always or (tool_mode == "auto" and not fresh_results):
        tool = _pick_tool(request.tools, any_tool=always)
        if tool is not None:
            return [ToolCall(new_call_id(), tool.name, _default_arguments(tool, question))]
    return []
