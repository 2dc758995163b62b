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

While a run executes, the plain content deltas of a model call that LangGraph would stream do not
go through LangChain and LangGraph at all: they go straight to the run's `TokenSink`
(token_sink.py), and LangChain gets one content chunk per stretch of them, for the final message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx2
import openai
import orjson
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun
from langchain_core.language_models.chat_models import (
    _gen_info_and_msg_metadata,
    generate_from_stream,
)
from langchain_core.messages import AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.tracers._streaming import _StreamingCallbackHandler
from langchain_core.utils.utils import LC_ID_PREFIX
from langchain_openai import ChatOpenAI
from langchain_openai.chat_models.base import _handle_openai_api_error, _handle_openai_bad_request
from langgraph.pregel._messages import StreamMessagesHandler
from openai._constants import RAW_RESPONSE_HEADER
from openai._response import AsyncResponseContextManager

from cai_orchestrator.token_sink import TOKEN_SINK, TokenSink

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


class PlainDeltas:
    """Recognises a response's plain content deltas without parsing each in full.

    A provider sends every content delta of one response as the same JSON document but for the
    text (same id, model and field order). Once an event parsed in full is plain content, the
    bytes around its text are the template: an event with the same bytes around one JSON string
    is plain content with that text. Anything else (a role, a tool call, a finish reason, usage)
    misses and is parsed in full, as is every event of a provider whose chunks differ by more
    than the text (it stops trying after a few templates that never matched).
    """

    _GIVE_UP = 4  # templates learned that never matched

    def __init__(self) -> None:
        self._prefix: bytes | None = None
        self._suffix = b""
        self._hit = False
        self._unused = 0

    def text(self, event: bytes) -> str | None:
        """The text of a plain content delta that matches the template, else None."""
        prefix = self._prefix
        if prefix is None or not event.startswith(prefix) or not event.endswith(self._suffix):
            return None
        middle = event[len(prefix) : len(event) - len(self._suffix)]
        if not middle.startswith(b'"'):
            return None
        try:
            value = orjson.loads(middle)
        except orjson.JSONDecodeError:
            return None
        if type(value) is not str:
            return None
        self._hit = True
        return value

    def learn(self, event: bytes, text: str) -> None:
        """`event`, parsed in full, is a plain content delta of `text`: the new template."""
        if not self._hit and self._prefix is not None:
            self._unused += 1
        self._prefix, self._hit = None, False
        key = event.find(b'"content":')
        if self._unused >= self._GIVE_UP or key < 0 or event.find(b'"content":', key + 1) >= 0:
            return
        start = key + len(b'"content":')
        end = _json_string_end(event, start)
        if end is not None and orjson.loads(event[start:end]) == text:
            self._prefix, self._suffix = event[:start], event[end:]


def _json_string_end(data: bytes, start: int) -> int | None:
    """Where the JSON string that starts at `start` ends (after its closing quote), or None."""
    if data[start : start + 1] != b'"':
        return None
    i = start + 1
    while (i := data.find(b'"', i)) >= 0:
        j = i - 1
        while data[j] == 0x5C:  # a backslash: an odd run of them escapes the quote
            j -= 1
        if (i - 1 - j) % 2 == 0:
            return i + 1
        i += 1
    return None


class StreamingChatOpenAI(ChatOpenAI):  # type: ignore[misc]
    """`ChatOpenAI` whose Chat Completions stream coalesces what arrives in one read."""

    def _streams_itself(self, kwargs: dict[str, Any]) -> bool:
        """Whether this call's Chat Completions stream is read here (else langchain-openai's)."""
        merged = {**kwargs, **self.model_kwargs}
        return not (
            self._use_responses_api(merged)
            or "response_format" in merged
            or self.include_response_headers
            or self._uses_gateway
        )

    def _stream_payload(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        stream_usage = self._should_stream_usage(kwargs.pop("stream_usage", None), **kwargs)
        kwargs["stream"] = True
        if stream_usage:
            kwargs["stream_options"] = {"include_usage": True}
        payload: dict[str, Any] = self._get_request_payload(messages, stop=stop, **kwargs)
        return payload

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        if not self._streams_itself(kwargs):
            async for generation in super()._astream(messages, stop, run_manager, **kwargs):
                yield generation
            return
        payload = self._stream_payload(messages, stop, kwargs)
        try:
            async for generation in self._stream_chunks(payload):
                if run_manager:
                    await run_manager.on_llm_new_token(generation.text, chunk=generation)
                yield generation
        except openai.BadRequestError as exc:
            _handle_openai_bad_request(exc)
        except openai.APIError as exc:
            _handle_openai_api_error(exc)

    # -- content past LangGraph (token_sink.py) ----------------------------------------------

    def _direct(
        self, run_manager: Any, kwargs: dict[str, Any]
    ) -> tuple[TokenSink, StreamMessagesHandler, tuple[tuple[str, ...], dict[str, Any]]] | None:
        """The run's sink and LangGraph's messages handler for this call, when its content can
        go past LangGraph: a run is executing, LangGraph streams this call (its handler took
        the call's metadata: not `nostream`, messages mode on) and nothing else consumes its
        chunks."""
        sink = TOKEN_SINK.get()
        if sink is None or run_manager is None or self.output_version == "v1":
            return None
        if not self._streams_itself(kwargs):
            return None
        found = None
        for handler in run_manager.handlers:
            if isinstance(handler, StreamMessagesHandler):
                meta = handler.metadata.get(run_manager.run_id)
                if meta is None:
                    continue
                if found is not None or type(handler) is not StreamMessagesHandler:
                    return None
                found = (handler, meta)
            elif isinstance(handler, _StreamingCallbackHandler):
                return None  # astream_events/astream_log want every chunk
        if found is None:
            return None
        return sink, found[0], found[1]

    def _should_stream(
        self,
        *,
        async_api: bool,
        run_manager: Any = None,
        **kwargs: Any,
    ) -> bool:
        should: bool = super()._should_stream(
            async_api=async_api, run_manager=run_manager, **kwargs
        )
        if should and async_api and self._direct(run_manager, kwargs) is not None:
            return False  # _agenerate streams, past LangGraph
        return should

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        direct = self._direct(run_manager, kwargs)
        if (
            direct is None
            or run_manager is None
            or not super()._should_stream(async_api=True, run_manager=run_manager, **kwargs)
        ):
            result: ChatResult = await super()._agenerate(messages, stop, run_manager, **kwargs)
            return result
        try:
            return await self._generate_direct(messages, stop, run_manager, direct, kwargs)
        except openai.BadRequestError as exc:
            _handle_openai_bad_request(exc)
            raise
        except openai.APIError as exc:
            _handle_openai_api_error(exc)
            raise

    async def _generate_direct(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        run_manager: AsyncCallbackManagerForLLMRun,
        direct: tuple[TokenSink, StreamMessagesHandler, tuple[tuple[str, ...], dict[str, Any]]],
        kwargs: dict[str, Any],
    ) -> ChatResult:
        """LangChain's streaming generation (BaseChatModel._agenerate_with_cache), with the
        content deltas written to the sink instead of each becoming a chunk and a callback:
        the same chunks reach LangGraph but the content-only ones, and the same final message
        is built from content chunks that each hold a stretch of deltas."""
        sink, handler, (ns, meta) = direct
        message_id = "-".join((LC_ID_PREFIX, str(run_manager.run_id)))
        meta_bytes = sink.meta_bytes(meta)
        # LangGraph sends a message it has not streamed again when the call or node ends.
        handler.seen.add(message_id)

        def put_barrier() -> None:
            handler.stream((ns, "messages", (sink.barrier(), meta)))

        put_barrier()  # what LangGraph has queued so far goes first
        payload = self._stream_payload(messages, stop, kwargs)
        chunks: list[ChatGenerationChunk] = []
        text: list[str] = []
        barrier_due = False
        async for item in self._stream_items(payload):
            if isinstance(item, list):
                delta = "".join(item)  # what one network read brought: one delta, as before
                if delta:
                    if barrier_due:
                        put_barrier()
                        barrier_due = False
                    await sink.model_delta(message_id, delta, meta_bytes)
                text.extend(item)
                continue
            if text:
                chunks.append(_with_id(_content_chunk(text), message_id))
                text = []
            chunk = _with_id(item, message_id)
            await run_manager.on_llm_new_token(chunk.message.content, chunk=chunk)  # type: ignore[arg-type]
            chunks.append(chunk)
            barrier_due = True
        if text:
            chunks.append(_with_id(_content_chunk(text), message_id))
        last = chunks[-1].message if chunks else None
        if isinstance(last, AIMessageChunk) and not last.chunk_position:
            final = ChatGenerationChunk(
                message=AIMessageChunk(
                    content="" if isinstance(last.content, str) else [],
                    chunk_position="last",
                    id=message_id,
                )
            )
            await run_manager.on_llm_new_token("", chunk=final)
            chunks.append(final)
        return generate_from_stream(iter(chunks))

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
        async for item in self._stream_items(payload):
            yield _content_chunk(item) if isinstance(item, list) else item

    async def _stream_items(
        self, payload: dict[str, Any]
    ) -> AsyncIterator[list[str] | ChatGenerationChunk]:
        """The response as the plain content deltas of each network read (a list of their
        texts) and every other chunk (tool calls, finish reason, usage), in order."""
        async with self._request(payload) as raw:
            response: httpx2.Response = raw.http_response
            decoder = SSEDecoder()
            deltas = PlainDeltas()
            done = False
            try:
                async for data in response.aiter_bytes():
                    if done:
                        continue  # drain the body so the connection is reused
                    text: list[str] = []
                    for event in decoder.feed(data):
                        fast = deltas.text(event)
                        if fast is not None:
                            text.append(fast)
                            continue
                        if event.startswith(b"[DONE]"):
                            done = True
                            break
                        chunk = orjson.loads(event)
                        plain = _is_plain_content(chunk) if isinstance(chunk, dict) else None
                        if plain is not None:
                            text.append(plain)
                            deltas.learn(event, plain)
                            continue
                        if text:
                            yield text
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
                        yield text
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


def _with_id(chunk: ChatGenerationChunk, message_id: str) -> ChatGenerationChunk:
    """A chunk as LangChain passes it on: its response metadata, the call's message id."""
    chunk.message.response_metadata = _gen_info_and_msg_metadata(chunk)
    if chunk.message.id is None:
        chunk.message.id = message_id
    return chunk


def _stream_error(error: Any, request: httpx2.Request) -> openai.APIError:
    message = error.get("message") if isinstance(error, dict) else None
    if not message or not isinstance(message, str):
        message = "An error occurred during streaming"
    return openai.APIError(message, request, body=error)
