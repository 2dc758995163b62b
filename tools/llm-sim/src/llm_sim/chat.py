"""``POST /v1/chat/completions`` as a raw ASGI app: every streamed token crosses this code."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from llm_sim.answer import Reply, plan_reply, prompt_token_count
from llm_sim.chat_request import ChatRequest, parse_chat_request
from llm_sim.chunks import DONE, ChunkRenderer, completion_body
from llm_sim.config import SimConfig
from llm_sim.errors import InvalidRequest, error_body
from llm_sim.faults import FaultSampler
from llm_sim.knobs import Knobs, apply_overrides, server_knobs
from llm_sim.recorder import RequestLog, headers_of_interest

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

logger = logging.getLogger(__name__)

# Scope extension set by llm_sim.server's HTTP protocol: a callable that resets the connection.
ABORT_EXTENSION = "llm_sim.abort_connection"
# At 0 ms inter-token delay, at most this many tokens go into one ASGI send before yielding.
MAX_BATCH_TOKENS = 64
MAX_BODY_BYTES = 32 * 1024 * 1024

_SSE_START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ],
}
_JSON_HEADERS = [(b"content-type", b"application/json")]


async def send_json(
    send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a complete JSON response."""
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def read_body(receive: Receive) -> bytes:
    """The whole request body.

    Raises:
        InvalidRequest: the body exceeds MAX_BODY_BYTES (413).
    """
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ConnectionAbortedError("client disconnected while sending the body")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise InvalidRequest("Request body too large", status=413)
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def _wait_for_disconnect(watcher: asyncio.Future[Message], seconds: float) -> bool:
    """Sleep up to ``seconds``; return True as soon as the client disconnects."""
    if watcher.done():
        return True
    done, _ = await asyncio.wait((watcher,), timeout=seconds)
    return bool(done)


async def _stall(watcher: asyncio.Future[Message], seconds: float, stopping: asyncio.Event) -> bool:
    """Hold the stream up to ``seconds`` or until shutdown; True if the client disconnected."""
    if watcher.done():
        return True
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait((watcher, stop), timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    return watcher.done()


def _abort_connection(scope: Scope) -> None:
    """Reset the TCP connection mid-response (no terminating chunk, no [DONE])."""
    abort = scope.get("extensions", {}).get(ABORT_EXTENSION)
    if abort is not None:
        abort()
    # Otherwise returning without completing the response makes the server close the connection
    # mid-body, which clients also see as an incomplete stream.


class ChatCompletions:
    """The chat completions endpoint."""

    def __init__(self, config: SimConfig, log: RequestLog) -> None:
        self._config = config
        self._log = log
        self._base_knobs = server_knobs(config)
        self._faults = FaultSampler(config)
        # Set when the server begins shutting down: stalled streams are cut at once, not held.
        self.stopping = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Create a chat completion, streamed or whole, or an OpenAI error."""
        if scope["method"] != "POST":
            body = error_body(405, f"Method {scope['method']} not allowed; use POST")
            await send_json(send, 405, body, [(b"allow", b"POST")])
            return
        try:
            raw = await read_body(receive)
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest(
                    f"We could not parse the JSON body of your request: {exc}"
                ) from exc
            request = parse_chat_request(payload)
            headers = dict(scope["headers"])
            knobs = apply_overrides(
                self._faults.sample(self._base_knobs), headers, request.metadata
            )
            reply = plan_reply(request, knobs.tool_mode, knobs.reply_tokens, request.max_tokens)
        except InvalidRequest as exc:
            await send_json(send, exc.status, error_body(exc.status, exc.message, exc.param))
            return
        except ConnectionAbortedError:
            return

        prompt_tokens = prompt_token_count(request)
        self._record(request, headers, knobs, prompt_tokens)
        if knobs.fail_status is not None:
            await self._send_fault(send, knobs.fail_status)
            return
        completion_id = "chatcmpl-" + secrets.token_hex(12)
        created = int(time.time())
        if request.stream:
            await self._stream(
                scope, receive, send, request, reply, knobs, prompt_tokens, completion_id, created
            )
        else:
            await self._respond(
                scope, receive, send, request, reply, knobs, prompt_tokens, completion_id, created
            )

    def _record(
        self, request: ChatRequest, headers: dict[bytes, bytes], knobs: Knobs, prompt_tokens: int
    ) -> None:
        fault = None
        if knobs.fail_status is not None:
            fault = f"status {knobs.fail_status}"
        elif knobs.cut_after is not None:
            fault = f"cut after {knobs.cut_after}"
        elif knobs.stall_after is not None:
            fault = f"stall after {knobs.stall_after}"
        self._log.add(
            {
                "time": time.time(),
                "model": request.model,
                "stream": request.stream,
                "messages": request.raw_messages,
                "tools": request.raw_tools,
                "tool_choice": request.tool_choice,
                "temperature": request.temperature,
                "max_tokens": request.max_tokens,
                "metadata": request.metadata,
                "headers": headers_of_interest(headers),
                "prompt_tokens": prompt_tokens,
                "fault": fault,
            }
        )

    async def _send_fault(self, send: Send, status: int) -> None:
        extra: list[tuple[bytes, bytes]] = []
        if status == 429:
            message = "llm-sim: injected rate limit (429). Retry after the Retry-After delay."
            code = "rate_limit_exceeded"
            extra.append((b"retry-after", str(self._config.retry_after_s).encode()))
        else:
            message = f"llm-sim: injected fault (HTTP {status})."
            code = "llm_sim_injected_fault"
        await send_json(send, status, error_body(status, message, None, code), extra)

    async def _respond(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: ChatRequest,
        reply: Reply,
        knobs: Knobs,
        prompt_tokens: int,
        completion_id: str,
        created: int,
    ) -> None:
        """Non-streamed reply after the time a stream of it would take; faults ignore ``k``."""
        n_tokens = reply.completion_tokens
        wait = (knobs.ttft_ms + knobs.token_delay_ms * max(n_tokens - 1, 0)) / 1000.0
        stall = knobs.stall_after is not None
        watcher = asyncio.ensure_future(receive()) if wait > 0 or stall else None
        try:
            if watcher is not None and wait > 0 and await _wait_for_disconnect(watcher, wait):
                return
            if knobs.cut_after is not None:
                _abort_connection(scope)
                return
            if watcher is not None and stall:
                if not await _stall(watcher, knobs.stall_seconds, self.stopping):
                    _abort_connection(scope)
                return
            body = completion_body(completion_id, created, request.model, reply, prompt_tokens)
            await send_json(send, 200, body)
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()

    async def _stream(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: ChatRequest,
        reply: Reply,
        knobs: Knobs,
        prompt_tokens: int,
        completion_id: str,
        created: int,
    ) -> None:
        """Stream the reply as SSE chunks on the token schedule, applying stall/cut faults."""
        renderer = ChunkRenderer(completion_id, created, request.model, request.include_usage)
        tokens = reply.tokens
        tool_chunks = renderer.tool_call_chunks(reply.tool_calls) if reply.tool_calls else None
        # Content replies open with a role chunk; tool-call chunk 0 already carries the role.
        opening = b"" if tool_chunks is not None else renderer.role()
        total = len(tool_chunks) if tool_chunks is not None else len(tokens)

        fault_at = min(
            (k for k in (knobs.cut_after, knobs.stall_after) if k is not None), default=None
        )
        limit = total if fault_at is None else min(fault_at, total)
        closing = renderer.finish(reply.finish_reason)
        if request.include_usage:
            closing += renderer.usage(prompt_tokens, reply.completion_tokens)
        closing += DONE

        delay = knobs.token_delay_ms / 1000.0
        ttft = knobs.ttft_ms / 1000.0
        # A stall that comes first holds the connection, then cuts it; otherwise the cut is at once.
        stalls = knobs.stall_after is not None and (
            knobs.cut_after is None or knobs.stall_after < knobs.cut_after
        )
        watcher = asyncio.ensure_future(receive()) if ttft > 0 or delay > 0 or stalls else None
        loop = asyncio.get_running_loop()
        await send(_SSE_START)
        try:
            if watcher is not None and ttft > 0 and await _wait_for_disconnect(watcher, ttft):
                return
            start = loop.time()
            sent = 0
            while sent < limit or (sent == 0 and fault_at is None):
                if delay > 0:
                    due = int((loop.time() - start) / delay) + 1
                    upto = min(limit, max(due, sent + 1), sent + MAX_BATCH_TOKENS)
                else:
                    upto = min(limit, sent + MAX_BATCH_TOKENS)
                if tool_chunks is not None:
                    body = b"".join(tool_chunks[sent:upto])
                else:
                    body = renderer.content(tokens[sent:upto]) if upto > sent else b""
                if sent == 0:
                    body = opening + body
                sent = upto
                if sent == total and fault_at is None:
                    await send({"type": "http.response.body", "body": body + closing})
                    return
                await send({"type": "http.response.body", "body": body, "more_body": True})
                if watcher is not None and watcher.done():
                    return
                if sent < limit:
                    pause = start + sent * delay - loop.time() if delay > 0 else 0.0
                    await asyncio.sleep(max(pause, 0.0))
            # The reply stopped at the fault point.
            if stalls and watcher is not None:
                logger.debug("stalling %s after %d tokens", completion_id, sent)
                if await _stall(watcher, knobs.stall_seconds, self.stopping):
                    logger.debug("client left stalled stream %s", completion_id)
                    return
            logger.debug("cutting %s after %d tokens", completion_id, sent)
            _abort_connection(scope)
        finally:
            if watcher is not None and not watcher.done():
                watcher.cancel()
