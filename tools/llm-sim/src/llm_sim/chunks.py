"""Byte-level rendering of OpenAI ``chat.completion.chunk`` SSE events and completion bodies.

The constant parts of a chunk are serialised once per request; a content chunk is then
``prefix + orjson.dumps(token) + suffix``, and a batch of them is one ``bytes.join``.
"""

from __future__ import annotations

import orjson

from llm_sim.answer import Reply, ToolCall, argument_fragments

SYSTEM_FINGERPRINT = "fp_llm_sim"
DONE = b"data: [DONE]\n\n"
_dumps = orjson.dumps


def usage_object(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI ``usage`` counts."""
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


class ChunkRenderer:
    """Renders the SSE events of one streamed completion."""

    __slots__ = ("_head", "_tail", "_content_open", "_content_close", "_separator", "_usage_head")

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        envelope = (
            b'{"id":' + _dumps(completion_id) + b',"object":"chat.completion.chunk","created":'
            + str(created).encode()
            + b',"model":' + _dumps(model)
            + b',"system_fingerprint":"' + SYSTEM_FINGERPRINT.encode() + b'"'
        )  # fmt: skip
        self._head = b"data: " + envelope + b',"choices":[{"index":0,"delta":'
        self._tail = b"}]" + (b',"usage":null' if include_usage else b"") + b"}\n\n"
        self._content_open = self._head + b'{"content":'
        self._content_close = b'},"logprobs":null,"finish_reason":null' + self._tail
        self._separator = self._content_close + self._content_open
        self._usage_head = b"data: " + envelope + b',"choices":[],"usage":'

    def delta(self, delta: bytes, finish_reason: str | None = None) -> bytes:
        """One chunk with a pre-serialised ``delta`` object."""
        reason = b"null" if finish_reason is None else b'"' + finish_reason.encode() + b'"'
        return self._head + delta + b',"logprobs":null,"finish_reason":' + reason + self._tail

    def role(self) -> bytes:
        """The opening chunk of a content reply."""
        return self.delta(b'{"role":"assistant","content":"","refusal":null}')

    def content(self, tokens: list[str]) -> bytes:
        """Consecutive content chunks, one per token."""
        return self._content_open + self._separator.join(map(_dumps, tokens)) + self._content_close

    def finish(self, reason: str) -> bytes:
        """The chunk carrying ``finish_reason`` with an empty delta."""
        return self.delta(b"{}", reason)

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        """The ``include_usage`` chunk: no choices, only usage."""
        return self._usage_head + _dumps(usage_object(prompt_tokens, completion_tokens)) + b"}\n\n"

    def tool_call_chunks(self, calls: list[ToolCall]) -> list[bytes]:
        """Chunks of streamed tool calls: a header per call, then argument fragments.

        As OpenAI does, the first chunk also carries ``role`` (with ``content: null``).
        """
        chunks: list[bytes] = []
        for index, call in enumerate(calls):
            header: dict[str, object] = {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": ""},
                    }
                ]
            }
            if index == 0:
                header = {"role": "assistant", "content": None, **header, "refusal": None}
            chunks.append(self.delta(_dumps(header)))
            for fragment in argument_fragments(call.arguments):
                piece = {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
                chunks.append(self.delta(_dumps(piece)))
        return chunks


def completion_body(
    completion_id: str, created: int, model: str, reply: Reply, prompt_tokens: int
) -> bytes:
    """A whole non-streamed ``chat.completion`` object."""
    message: dict[str, object] = {"role": "assistant", "refusal": None}
    if reply.tool_calls:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in reply.tool_calls
        ]
    else:
        message["content"] = "".join(reply.tokens)
    return _dumps(
        {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": reply.finish_reason,
                }
            ],
            "usage": usage_object(prompt_tokens, reply.completion_tokens),
        }
    )
