"""The load generator: SSE streams against Cai's gateway and straight against llm-sim (the floor).

It shares two cores with what it measures, so it does as little as it can while streams are
open: SSE is split on raw bytes, the first token is found with a byte search, and payloads are
kept as raw bytes. JSON is parsed only after the measured window (`finish()`), to count tokens
and check the text against what Cai stored.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from dataclasses import dataclass, field

import httpx
import orjson

from cai_common.runs import END, METADATA, RETRY, TERMINAL_EVENTS_BYTES

DEFAULT_SYSTEM_PROMPT = (
    "You are Cai, a helpful assistant. Answer from the context you are given and say so when "
    "you do not know."
)
_END = END.encode()
_METADATA = METADATA.encode()
_RETRY = RETRY.encode()

# perf_counter() of the last bytes any stream received (the harness cuts phases that stall).
PROGRESS = [time.perf_counter()]

_EMPTY_CAI_CONTENT = b'[{"content":"",'
_FLOOR_CONTENT = b'"delta":{"content":"'
_FLOOR_EMPTY_CONTENT = b'"delta":{"content":"",'


_SSL: ssl.SSLContext | None = None


def make_client(timeout_s: float = 30.0) -> httpx.AsyncClient:
    """An HTTP/1.1 client with no connection cap.

    Give each concurrent worker its own client: httpcore's pool scans every connection it holds
    on each request (O(connections) per request), which at 100+ streams made the load generator
    the bottleneck of the floor. Clients share one SSL context (building one costs ~10 ms).
    """
    global _SSL
    if _SSL is None:
        _SSL = ssl.create_default_context()
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        timeout=httpx.Timeout(timeout_s, connect=10.0, read=None),
        verify=_SSL,
    )


@dataclass(slots=True)
class StreamResult:
    """One stream as the client saw it. Times are time.perf_counter() seconds."""

    kind: str  # "cai", "floor" or "peer"
    thread_id: str = ""
    t_start: float = 0.0
    t_first: float = 0.0  # first non-empty token
    t_end: float = 0.0
    status: int = 0
    terminal: str = ""  # cai: end / error / cancelled / timeout; floor: "done"
    error: str = ""
    run_id: str = ""
    ids: list[bytes] = field(default_factory=list)  # SSE id: lines (cai)
    payloads: list[bytes] = field(default_factory=list)  # raw data of token events
    events: int = 0
    started: bool = False  # the run's metadata event arrived (a worker took it)
    retries: int = 0  # `retry` events: the run restarted on another worker
    retry_cut: int = 0  # payloads before the last retry belong to a dropped partial message
    # Filled by finish():
    text: str = ""
    message_id: str = ""
    tokens: int = 0
    ids_repeated: int = 0  # ids seen twice or out of order

    @property
    def ttft(self) -> float | None:
        """Seconds from sending the request to the first non-empty token."""
        return self.t_first - self.t_start if self.t_first else None

    @property
    def ok(self) -> bool:
        """Completed normally."""
        return not self.error and self.terminal in (END, "done")

    def finish(self) -> None:
        """Parse what was kept raw (after the measured window): text, tokens, id order."""
        parts: list[str] = []
        if self.kind in ("cai", "peer"):
            # After a `retry` event a client drops the partial message (DESIGN.md, runs 5).
            for data in self.payloads[self.retry_cut :]:
                chunk = orjson.loads(data)[0]
                if chunk.get("type") == "AIMessageChunk" and isinstance(chunk.get("content"), str):
                    parts.append(chunk["content"])
                    if not self.message_id and chunk.get("id"):
                        self.message_id = chunk["id"]
            last = (-1, -1)
            for raw in self.ids if self.kind == "cai" else ():
                ms, _, seq = raw.partition(b"-")
                key = (int(ms), int(seq or 0))
                if key <= last:
                    self.ids_repeated += 1
                last = max(last, key)
        else:
            for data in self.payloads:
                for line in data.split(b"\n"):
                    if not line.startswith(b"data: {"):
                        continue
                    choices = orjson.loads(line[6:]).get("choices") or ()
                    for choice in choices:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            parts.append(content)
        self.text = "".join(parts)
        self.tokens = len(self.text.split())
        self.payloads = []


def _blocks(buf: bytearray, chunk: bytes) -> list[bytes]:
    """Append `chunk` to `buf` and cut off the complete SSE blocks (CRs dropped)."""
    buf += chunk.replace(b"\r", b"")
    end = buf.rfind(b"\n\n")
    if end < 0:
        return []
    done = bytes(buf[:end])
    del buf[: end + 2]
    return done.split(b"\n\n")


def run_body(prompt: str, assistant_id: str = "chat") -> dict[str, object]:
    """A LangGraph run on a thread that the run itself creates."""
    return {
        "assistant_id": assistant_id,
        "input": {"messages": [{"role": "user", "content": prompt}]},
        "stream_mode": "messages-tuple",
        "if_not_exists": "create",
    }


async def cai_stream(
    client: httpx.AsyncClient,
    base_url: str,
    prompt: str,
    res: StreamResult | None = None,
    opened: asyncio.Event | None = None,
    assistant_id: str = "chat",
) -> StreamResult:
    """POST /threads/{id}/runs/stream on a new thread; read SSE to the terminal event.

    Pass `res` to watch the stream while it is open (its run id is set from the response headers);
    `opened` is set once the response has started.
    """
    if res is None:
        res = StreamResult("cai")
    if not res.thread_id:
        res.thread_id = str(uuid.uuid4())
    url = f"{base_url}/threads/{res.thread_id}/runs/stream"
    buf = bytearray()
    res.t_start = time.perf_counter()
    try:
        async with client.stream("POST", url, json=run_body(prompt, assistant_id)) as resp:
            res.status = resp.status_code
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return res
            # Location: /threads/{thread_id}/runs/{run_id}/stream
            parts = resp.headers.get("location", "").split("/")
            res.run_id = parts[-2] if len(parts) >= 3 else ""
            if opened is not None:
                opened.set()
            async for chunk in resp.aiter_raw():
                PROGRESS[0] = time.perf_counter()
                for block in _blocks(buf, chunk):
                    if not block.startswith(b"id: "):
                        continue  # a heartbeat comment (": ping") or blank
                    eid, event, data = block.split(b"\n", 2)
                    event = event[7:]
                    res.ids.append(eid[4:])
                    res.events += 1
                    if event == b"messages":
                        if not res.t_first and not data.startswith(b"data: " + _EMPTY_CAI_CONTENT):
                            res.t_first = time.perf_counter()
                        res.payloads.append(data[6:])
                    elif event in TERMINAL_EVENTS_BYTES:
                        res.terminal = event.decode()
                        if event != _END:
                            res.error = f"{res.terminal}: {data[6:206].decode(errors='replace')}"
                    elif event == _METADATA:
                        res.started = True
                    elif event == _RETRY:
                        res.retries += 1
                        res.retry_cut = len(res.payloads)
            if not res.terminal:
                res.error = "stream closed without a terminal event"
    except (httpx.HTTPError, OSError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        res.t_end = time.perf_counter()
    return res


async def peer_stream(
    client: httpx.AsyncClient, base_url: str, prompt: str, assistant_id: str
) -> StreamResult:
    """The same run against a peer's LangGraph API (cai_bench.peers): POST
    /threads/{new id}/runs/stream; the stream ends when the server closes it (LangGraph's servers
    send no `end` event) or with an `error` event. Event ids, when sent, are the peer's own."""
    res = StreamResult("peer", thread_id=str(uuid.uuid4()))
    url = f"{base_url}/threads/{res.thread_id}/runs/stream"
    buf = bytearray()
    res.t_start = time.perf_counter()
    try:
        async with client.stream("POST", url, json=run_body(prompt, assistant_id)) as resp:
            res.status = resp.status_code
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return res
            async for chunk in resp.aiter_raw():
                PROGRESS[0] = time.perf_counter()
                for block in _blocks(buf, chunk):
                    event = data = b""
                    for line in block.split(b"\n"):
                        if line.startswith(b"event: "):
                            event = line[7:]
                        elif line.startswith(b"data: "):
                            data = line[6:]
                    if not event:
                        continue  # a heartbeat comment
                    res.events += 1
                    if event == b"messages":
                        if not res.t_first and not data.startswith(_EMPTY_CAI_CONTENT):
                            res.t_first = time.perf_counter()
                        res.payloads.append(data)
                    elif event == b"error":
                        res.terminal = "error"
                        res.error = f"error: {data[:200].decode(errors='replace')}"
                    elif event == _METADATA:
                        res.started = True
            if not res.terminal:
                res.terminal = END  # closed by the server after the last event
    except (httpx.HTTPError, OSError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        res.t_end = time.perf_counter()
    return res


def floor_body(prompt: str) -> dict[str, object]:
    """The request ChatOpenAI sends for the same turn (streaming, usage on)."""
    return {
        "model": "cai-sim",
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.0,
        "messages": [
            {"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ],
    }


async def floor_stream(client: httpx.AsyncClient, llm_url: str, prompt: str) -> StreamResult:
    """The same turn straight against llm-sim's streaming endpoint."""
    res = StreamResult("floor")
    buf = bytearray()
    res.t_start = time.perf_counter()
    try:
        async with client.stream(
            "POST", f"{llm_url}/v1/chat/completions", json=floor_body(prompt)
        ) as resp:
            res.status = resp.status_code
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return res
            async for chunk in resp.aiter_raw():
                PROGRESS[0] = time.perf_counter()
                for block in _blocks(buf, chunk):
                    res.events += 1
                    if block == b"data: [DONE]":
                        res.terminal = "done"
                        continue
                    if (
                        not res.t_first
                        and _FLOOR_CONTENT in block
                        and _FLOOR_EMPTY_CONTENT not in block
                    ):
                        res.t_first = time.perf_counter()
                    res.payloads.append(block)
            if not res.terminal:
                res.error = "stream closed without [DONE]"
    except (httpx.HTTPError, OSError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        res.t_end = time.perf_counter()
    return res


async def stored_reply(client: httpx.AsyncClient, base_url: str, thread_id: str) -> tuple[str, str]:
    """(message id, text) of the last AI message Cai stored on the thread."""
    resp = await client.get(f"{base_url}/threads/{thread_id}/state")
    resp.raise_for_status()
    messages = (resp.json().get("values") or {}).get("messages") or []
    for message in reversed(messages):
        if message.get("type") == "ai":
            content = message.get("content")
            return message.get("id") or "", content if isinstance(content, str) else ""
    return "", ""
