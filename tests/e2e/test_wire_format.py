"""What clients see of a streamed run, byte for byte, in every dialect.

The expected frames were captured from the gateway before token deltas bypassed LangGraph's
stream and before token events were stored once per message (docs/performance.md); any change
to an event's bytes, to the order of events or to the message's id fails here. What differs
from run to run (ids, the task id in the checkpoint namespace, package versions) is replaced by
a placeholder, and a run of token events by one `<tokens>` frame: how many tokens one event
carries depends on timing (coalescing), what each carries around its text does not.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import httpx
import orjson

from cai_common.runs import parse_event_id
from tests.e2e.support import REPLY_TOKENS

QUESTION = {"messages": [{"role": "user", "content": "How does Cai resume a stream?"}]}
# A token event: content-only deltas of an AI message (finish and usage chunks are not).
TOKEN_FRAME = re.compile(
    rb'^\[\{"content":("(?:[^"\\]|\\.)*"),"additional_kwargs":\{\},"response_metadata":\{\},'
    rb'"type":"AIMessageChunk","name":null,"id":"[^"]*","tool_calls":\[\],'
    rb'"invalid_tool_calls":\[\],"usage_metadata":null,"tool_call_chunks":\[\]\},'
)
GOLDEN = Path(__file__).parent / "wire"
UUID = rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def golden(dialect: str) -> list[str]:
    """The pinned frames of a dialect, one a line (captured at commit fdd2ebe)."""
    return (GOLDEN / f"{dialect}.txt").read_text(encoding="utf-8").splitlines()


def sse_frames(raw: bytes) -> list[tuple[bytes, bytes, bytes]]:
    """(id, event, data) of every event in a raw SSE body (heartbeat comments skipped)."""
    frames = []
    for block in re.sub(rb"(?m)^:[^\r\n]*\r\n\r\n", b"", raw).split(b"\n\n"):
        if not block:
            continue
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        assert set(fields) == {b"id", b"event", b"data"}, block
        frames.append((fields[b"id"], fields[b"event"], fields[b"data"]))
    return frames


def versions(data: bytes) -> bytes:
    """The installed LangChain versions in the metadata as placeholders."""
    for package in ("langchain-core", "langchain-openai"):
        installed = importlib.metadata.version(package).encode()
        data = data.replace(b'"' + package.encode() + b'":"' + installed + b'"', package.encode())
    return data


def normalised(
    frames: list[tuple[bytes, bytes, bytes]], run_id: str, thread_id: str
) -> tuple[list[str], str]:
    """The frames with run-specific values as placeholders (consecutive token frames as one),
    and the text the token frames spell."""
    message_ids = {m for _, _, d in frames for m in re.findall(rb"lc_run--" + UUID, d)}
    assert len(message_ids) == 1, message_ids  # one AI message, under one id everywhere
    message_id = message_ids.pop()
    human_ids = set(
        re.findall(rb'"type":"human","name":null,"id":"(' + UUID + rb')"', frames[1][2])
    )
    out: list[str] = []
    text = ""
    for _, event, data in frames:
        token = TOKEN_FRAME.match(data) if event == b"messages" else None
        if token:
            text += orjson.loads(token.group(1))
            data = b'[{"content":<tokens>' + data[token.end(1) :]
        data = data.replace(run_id.encode(), b"<run>").replace(thread_id.encode(), b"<thread>")
        data = data.replace(message_id, b"<msg>")
        for human in human_ids:
            data = data.replace(human, b"<human>")
        data = re.sub(rb"agent:" + UUID, b"agent:<task>", data)
        line = f"{event.decode()} {versions(data).decode()}"
        if token and out and out[-1] == line:
            continue
        out.append(line)
    return out, text


async def test_langgraph_sse_frames_are_exactly_the_pinned_ones(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as http:
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        body = {
            "assistant_id": "chat",
            "input": QUESTION,
            "stream_mode": ["messages-tuple", "values", "updates"],
        }
        async with http.stream("POST", f"/threads/{tid}/runs/stream", json=body) as response:
            run_url = response.headers["content-location"]
            raw = b"".join([chunk async for chunk in response.aiter_bytes()])
        replay = (await http.get(f"{run_url}/stream")).content
        state = (await http.get(f"/threads/{tid}/state")).json()
    run_id = run_url.rsplit("/", 1)[1]
    frames = sse_frames(raw)
    got, text = normalised(frames, run_id, tid)
    assert got == golden("langgraph")
    # The stream spells the stored message, and a replay of the finished log is the same bytes.
    assert text == state["values"]["messages"][-1]["content"]
    assert len(text.split()) == REPLY_TOKENS
    assert sse_frames(replay) == frames
    ids = [parse_event_id(i) for i, _, _ in frames]
    assert ids == sorted(set(ids))
    # Resuming anywhere (in the middle of the message too) gives exactly the rest, as bytes.
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as http:
        for k in (2, 3, 4, len(frames) // 2, len(frames) - 4):
            headers = {"Last-Event-ID": frames[k][0].decode()}
            resumed = (await http.get(f"{run_url}/stream", headers=headers)).content
            assert sse_frames(resumed) == frames[k + 1 :], k


def data_lines(raw: bytes) -> list[bytes]:
    """The `data:` payloads of an SSE body, in order (the OpenAI dialect has no ids or names)."""
    return [line[6:] for line in raw.split(b"\n") if line.startswith(b"data: ")]


async def test_openai_chunks_are_exactly_the_pinned_ones(gateway: str) -> None:
    body = {
        "model": "chat",
        "messages": QUESTION["messages"],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as http:
        raw = (await http.post("/v1/chat/completions", json=body)).content
    lines = data_lines(raw)
    first = orjson.loads(lines[0])
    got: list[str] = []
    text = ""
    for line in lines:
        if line != b"[DONE]":
            chunk = orjson.loads(line)
            delta = (chunk["choices"] or [{}])[0].get("delta", {})
            if delta.get("content"):
                text += delta["content"]
                line = line.replace(orjson.dumps(delta["content"]), b"<tokens>")
        line = line.replace(first["id"].encode(), b"<id>")
        line = line.replace(b'"created":' + str(first["created"]).encode(), b'"created":<t>')
        if got and got[-1] == line.decode() and b"<tokens>" in line:
            continue
        got.append(line.decode())
    assert got == golden("openai")
    assert len(text.split()) == REPLY_TOKENS


async def test_task_events_are_exactly_the_pinned_ones(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway, timeout=60) as http:
        task_id = (
            await http.post("/chat", json={"message": QUESTION["messages"][0]["content"]})
        ).json()["task_id"]
        raw = (await http.get(f"/chat/{task_id}/stream")).content
    blocks = [b for b in re.sub(rb"(?m)^:[^\r\n]*\r\n\r\n", b"", raw).split(b"\n\n") if b]
    got: list[str] = []
    text = ""
    ids = []
    for block in blocks:
        fields = dict(line.split(b": ", 1) for line in block.split(b"\n"))
        ids.append(parse_event_id(fields[b"id"]))
        event = orjson.loads(fields[b"data"])
        data = fields[b"data"].replace(task_id.encode(), b"<task>")
        if event["type"] == "token":
            text += event["data"]
            data = b'{"type":"token","data":<tokens>}'
        line = data.decode()
        if got and got[-1] == line and event["type"] == "token":
            continue
        got.append(line)
    assert got == golden("task")
    assert ids == sorted(set(ids))
    assert len(text.split()) == REPLY_TOKENS
