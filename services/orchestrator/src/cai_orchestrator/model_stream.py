"""The chat model's streaming hot path: raw SSE bytes in, as few message chunks as possible out.

`ChatOpenAI` turns every streamed token into an openai SDK pydantic object, a dict, a LangChain
chunk, a callback and a LangGraph stream part: about half of the orchestrator's CPU per token
(docs/performance.md). `StreamingChatOpenAI` keeps langchain-openai for everything that is not
per token (building the request from messages and tools, the SDK's retries and typed errors,
tool-call and usage chunks) and reads the response body itself: every server-sent event that
arrived in one network read is parsed with orjson, and consecutive plain content deltas become
one chunk. A model that streams slower than Cai reads sees one chunk per token, as before; when
tokens arrive faster than they are handled (a fast model, a busy replica) the work per token falls
instead of piling up. Nothing is held back waiting for more: a read is handled as soon as it lands.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import orjson
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_openai import ChatOpenAI
from langchain_openai.chat_models.base import _handle_openai_api_error, _handle_openai_bad_request
from openai._constants import RAW_RESPONSE_HEADER
from openai._response import AsyncResponseContextManager

_PLAIN_DELTA_KEYS = frozenset({"role", "content", "refusal"})
# Arguments of the SDK's create() that are not part of the request body.
_SDK_ONLY_KEYS = ("extra_body", "extra_headers", "extra_query", "timeout")


class SSEDecoder:
    """Splits a byte stream into server-sent events; returns the `data` of each complete one.

    Follows the SSE rules that matter for model endpoints: `\\n`, `\\r\\n` or `\\r` line ends,
    comment lines (`:`), several `data:` lines joined by newlines, other fields ignored (an
    `event: error` is recognised by its data, as the OpenAI SDK does).
    """

    def __init__(self) -> None:
        self._buf = b""
        self._skip_lf = False  # the last read ended in "\r": a "\n" that follows is its pair

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes; return the data of every event they completed, in order."""
        if self._skip_lf and data.startswith(b"\n"):
            data = data[1:]
        self._skip_lf = False
        if b"\r" in data:
            self._skip_lf = data.endswith(b"\r")
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *events, self._buf = (self._buf + data).split(b"\n\n")
        out: list[bytes] = []
        for event in events:
            if event.startswith(b"data: ") and b"\n" not in event:  # the usual shape
                out.append(event[6:])
                continue
            lines = [
                line[5:].removeprefix(b" ")
                for line in event.split(b"\n")
                if line.startswith(b"data:")
            ]
            if lines:
                out.append(b"\n".join(lines))
        return out


def _is_plain_content(chunk: dict[str, Any]) -> str | None:
    """The text of a chunk that carries nothing but a content delta, else None."""
    choices = chunk.get("choices")
    if not choices or len(choices) != 1 or chunk.get("usage"):
        return None
    choice = choices[0]
    delta = choice.get("delta")
    if (
        not isinstance(delta, dict)
        or choice.get("finish_reason")
        or choice.get("logprobs")
        or not delta.keys() <= _PLAIN_DELTA_KEYS
        or delta.get("refusal")
        or delta.get("role") not in (None, "assistant")
    ):
        return None
    content = delta.get("content")
    if content is None:
        return ""
    return content if isinstance(content, str) else None


class StreamingChatOpenAI(ChatOpenAI):  # type: ignore[misc]
    """`ChatOpenAI` whose Chat Completions stream coalesces what arrives in one read."""

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        merged = {**kwargs, **self.model_kwargs}
        if (
            self._use_responses_api(merged)
            or "response_format" in merged
            or self.include_response_headers
            or self._uses_gateway
        ):
            async for generation in super()._astream(messages, stop, run_manager, **kwargs):
                yield generation
            return
        stream_usage = self._should_stream_usage(kwargs.pop("stream_usage", None), **kwargs)
        kwargs["stream"] = True
        if stream_usage:
            kwargs["stream_options"] = {"include_usage": True}
        payload = self._get_request_payload(messages, stop=stop, **kwargs)
        try:
            async for generation in self._stream_chunks(payload):
                if run_manager:
                    await run_manager.on_llm_new_token(generation.text, chunk=generation)
                yield generation
        except openai.BadRequestError as exc:
            _handle_openai_bad_request(exc)
        except openai.APIError as exc:
            _handle_openai_api_error(exc)

    def _request(self, payload: dict[str, Any]) -> AsyncResponseContextManager[Any]:
        """The SDK's request (its retries with backoff on 429/5xx/connection errors, its typed
        errors), with the body left unread. The payload goes as it is: `create()` would first
        walk it against the SDK's TypedDicts, about a tenth of a short run's CPU."""
        extra = {k: payload[k] for k in _SDK_ONLY_KEYS if k in payload}
        if extra.keys() - {"extra_body"}:
            return self.async_client.with_streaming_response.create(**payload)
        body = {k: v for k, v in payload.items() if k != "extra_body"}
        body.update(extra.get("extra_body") or {})
        return AsyncResponseContextManager(
            self.root_async_client.post(
                "/chat/completions",
                cast_to=object,
                body=body,
                options={"headers": {RAW_RESPONSE_HEADER: "stream"}},
                stream=True,
                stream_cls=openai.AsyncStream[Any],
            )
        )

    async def _stream_chunks(self, payload: dict[str, Any]) -> AsyncIterator[ChatGenerationChunk]:
        async with self._request(payload) as raw:
            response: httpx2.Response = raw.http_response
            decoder = SSEDecoder()
            done = False
            try:
                async for data in response.aiter_bytes():
                    if done:
                        continue  # drain the body so the connection is reused
                    text: list[str] = []
                    for event in decoder.feed(data):
                        if event.startswith(b"[DONE]"):
                            done = True
                            break
                        chunk = orjson.loads(event)
                        plain = _is_plain_content(chunk) if isinstance(chunk, dict) else None
                        if plain is not None:
                            text.append(plain)
                            continue
                        if text:
                            yield _content_chunk(text)
                            text = []
                        if not isinstance(chunk, dict):
                            continue
                        if chunk.get("error"):
                            raise _stream_error(chunk["error"], response.request)
                        generation = self._convert_chunk_to_generation_chunk(
                            chunk, AIMessageChunk, None
                        )
                        if generation is not None:
                            yield generation
                    if text:
                        yield _content_chunk(text)
            except httpx2.TimeoutException as exc:
                raise openai.APITimeoutError(request=response.request) from exc
            except httpx2.TransportError as exc:
                raise openai.APIConnectionError(request=response.request) from exc
            except orjson.JSONDecodeError as exc:
                raise openai.APIError(
                    f"The model sent a malformed stream event: {exc}", response.request, body=None
                ) from exc


def _content_chunk(parts: list[str]) -> ChatGenerationChunk:
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content="".join(parts), response_metadata={"model_provider": "openai"}
        )
    )


def _stream_error(error: Any, request: httpx2.Request) -> openai.APIError:
    message = error.get("message") if isinstance(error, dict) else None
    if not message or not isinstance(message, str):
        message = "An error occurred during streaming"
    return openai.APIError(message, request, body=error)
