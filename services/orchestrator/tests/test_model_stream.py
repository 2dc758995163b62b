"""The lean model stream: same messages as langchain-openai's, fewer chunks, same errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from cai_devstack.procs import Proc, free_port, http_ready, python_module
from cai_orchestrator.model_stream import (
    PlainDeltas,
    SSEDecoder,
    StreamingChatOpenAI,
    _is_plain_content,
)

REPLY = 60


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = Proc(
        "llm-sim",
        python_module("llm_sim", "--port", str(port), "--reply-tokens", str(REPLY)),
        Path(tmp_path_factory.mktemp("sim")) / "llm-sim.log",
        ready=http_ready(f"http://127.0.0.1:{port}/health"),
    ).start()
    try:
        proc.wait_ready(30)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.stop()


def models(
    base_url: str, headers: dict[str, str] | None = None, read_timeout: float = 30
) -> tuple[ChatOpenAI, StreamingChatOpenAI]:
    args = {
        "model": "llm-sim",
        "base_url": base_url,
        "api_key": "sim-key",
        "streaming": True,
        "stream_usage": True,
        "max_retries": 1,
        "default_headers": headers,
        "timeout": httpx.Timeout(read_timeout, connect=5),
        "stream_chunk_timeout": None,
    }
    return ChatOpenAI(**args), StreamingChatOpenAI(**args)


# -- the SSE decoder -------------------------------------------------------------------------

WIRE = (
    b": keep-alive comment\n\n"
    b'data: {"a":1}\n\n'
    b'data:{"b":2}\r\n\r\n'
    b"event: message\ndata: line one\ndata: line two\n\n"
    b"id: 7\nretry: 10\n\n"  # no data: not an event to deliver
    b"data: [DONE]\r\r"
)
EVENTS = [b'{"a":1}', b'{"b":2}', b"line one\nline two", b"[DONE]"]


def test_decoder_reads_every_sse_line_form() -> None:
    assert SSEDecoder().feed(WIRE) == EVENTS


@given(st.lists(st.integers(min_value=0, max_value=len(WIRE)), max_size=12))
def test_decoder_gives_the_same_events_however_the_bytes_are_split(cuts: list[int]) -> None:
    decoder = SSEDecoder()
    points = [0, *sorted(cuts), len(WIRE)]
    got = [e for a, b in zip(points, points[1:], strict=False) for e in decoder.feed(WIRE[a:b])]
    assert got == EVENTS


def test_decoder_holds_an_incomplete_event() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a"') == []
    assert decoder.feed(b":1}\n") == []
    assert decoder.feed(b"\n") == [b'{"a":1}']


# -- plain content deltas recognised by their template ----------------------------------------


def chunk_event(delta: dict[str, object], finish: str | None = None, **extra: object) -> bytes:
    """A Chat Completions chunk as OpenAI (and llm-sim) send it."""
    return orjson.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1764450000,
            "model": "cai-sim",
            "system_fingerprint": "fp",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            **extra,
        }
    )


OTHER_EVENTS = [
    chunk_event({"role": "assistant", "content": ""}),
    chunk_event({}, "stop"),
    chunk_event({"content": "x"}, "length"),
    chunk_event({"content": None}),
    chunk_event({"content": "x", "refusal": "no"}),
    chunk_event({"tool_calls": [{"index": 0, "function": {"arguments": '{"content":"x"}'}}]}),
    chunk_event({"content": "x"}, usage={"prompt_tokens": 1}),
    orjson.dumps({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
]


def full_parse(event: bytes) -> str | None:
    chunk = orjson.loads(event)
    return _is_plain_content(chunk) if isinstance(chunk, dict) else None


@given(st.lists(st.text(), min_size=1, max_size=8))
def test_a_delta_recognised_by_its_template_is_what_a_full_parse_reads(texts: list[str]) -> None:
    deltas = PlainDeltas()
    events = [chunk_event({"role": "assistant", "content": ""})]
    events += [chunk_event({"content": t}) for t in texts] + OTHER_EVENTS
    for event in events:
        fast = deltas.text(event)
        want = full_parse(event)
        if fast is None:
            if want is not None:
                deltas.learn(event, want)
            continue
        assert fast == want
    # After the first content event, every later one is recognised without a full parse.
    deltas = PlainDeltas()
    deltas.learn(events[1], texts[0])
    assert [deltas.text(e) for e in events[1 : 1 + len(texts)]] == texts
    assert [deltas.text(e) for e in OTHER_EVENTS] == [None] * len(OTHER_EVENTS)


def test_a_provider_whose_chunks_differ_by_more_than_the_text_is_parsed_in_full() -> None:
    deltas = PlainDeltas()
    for i in range(10):  # per-chunk padding, as some providers add
        event = chunk_event({"content": "x"}, obfuscation="p" * i)
        assert deltas.text(event) is None
        deltas.learn(event, "x")
    assert deltas._prefix is None  # it gave up learning


# -- against llm-sim -------------------------------------------------------------------------


async def test_the_final_message_is_the_one_langchain_openai_builds(sim: str) -> None:
    reference, lean = models(sim)
    prompt = [HumanMessage("What is Cai?")]
    want = await reference.ainvoke(prompt)
    got = await lean.ainvoke(prompt)
    assert isinstance(got, AIMessage) and got.content == want.content
    assert len(str(got.content).split()) == REPLY
    assert got.usage_metadata == want.usage_metadata and got.usage_metadata
    assert got.response_metadata["finish_reason"] == want.response_metadata["finish_reason"]
    assert got.response_metadata["model_name"] == want.response_metadata["model_name"]
    assert got.response_metadata["model_provider"] == "openai"


async def test_tokens_that_arrived_together_become_one_chunk(sim: str) -> None:
    _, lean = models(sim)
    chunks: list[AIMessageChunk] = []
    async for chunk in lean.astream([HumanMessage("Tell me more")]):
        if not chunks:
            await asyncio.sleep(0.3)  # let the rest of the reply land in the socket meanwhile
        chunks.append(chunk)  # type: ignore[arg-type]
    text = "".join(str(c.content) for c in chunks)
    assert len(text.split()) == REPLY
    content_chunks = [c for c in chunks if c.content]
    assert len(content_chunks) < REPLY / 4, len(content_chunks)


async def test_tool_calls_stream_like_langchain_openai(sim: str) -> None:
    @tool
    def lookup(query: str) -> str:
        """Look something up."""
        return query

    reference, lean = models(sim, {"X-Sim-Tool-Mode": "always"})
    prompt = [HumanMessage("Look up Cai")]
    want = await reference.bind_tools([lookup]).ainvoke(prompt)
    got = await lean.bind_tools([lookup]).ainvoke(prompt)
    assert got.tool_calls and [c["name"] for c in got.tool_calls] == ["lookup"]
    assert [c["args"] for c in got.tool_calls] == [c["args"] for c in want.tool_calls]


@pytest.mark.parametrize(
    ("headers", "error", "text"),
    [
        ({"X-Sim-Fail-Status": "500"}, openai.InternalServerError, "Error code: 500"),
        ({"X-Sim-Fail-Status": "429"}, openai.RateLimitError, "Error code: 429"),
        ({"X-Sim-Cut-After": "3"}, openai.APIConnectionError, "Connection error"),
        (
            {"X-Sim-Stall-After": "3", "X-Sim-Stall-Seconds": "5"},
            openai.APITimeoutError,
            "timed out",
        ),
    ],
)
async def test_model_faults_raise_the_sdks_typed_errors(
    sim: str, headers: dict[str, str], error: type[Exception], text: str
) -> None:
    _, lean = models(sim, headers, read_timeout=0.5)
    with pytest.raises(error) as caught:
        await lean.ainvoke([HumanMessage("hello")])
    assert text in str(caught.value)


async def test_extra_body_reaches_the_endpoint(sim: str) -> None:
    _, lean = models(sim)
    lean.extra_body = {"metadata": {"sim_reply_tokens": "5"}}  # an llm-sim knob in the body
    reply = await lean.ainvoke([HumanMessage("hello")])
    assert len(str(reply.content).split()) == 5
