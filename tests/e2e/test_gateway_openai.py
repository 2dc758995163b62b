"""The OpenAI-compatible API through the official `openai` SDK, against real processes."""

from __future__ import annotations

import uuid

import openai
import pytest
from langgraph_sdk import get_client
from openai import AsyncOpenAI

from tests.e2e.support import GATEWAY_REPLY_TOKENS, KEYS, client

HELLO = [{"role": "user", "content": "How does Cai resume a stream?"}]


@pytest.fixture
def oai(gw: str) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=f"{gw}/v1", api_key=KEYS.alpha, max_retries=0)


async def test_models_are_the_assistants(oai: AsyncOpenAI) -> None:
    models = await oai.models.list()
    assert [m.id for m in models.data] == ["chat", "slow", "broken"]
    assert {m.owned_by for m in models.data} == {"cai"}
    assert (await oai.models.retrieve("slow")).id == "slow"
    with pytest.raises(openai.NotFoundError):
        await oai.models.retrieve("nobody")


async def test_completion_not_streamed(oai: AsyncOpenAI) -> None:
    reply = await oai.chat.completions.create(model="chat", messages=HELLO)  # type: ignore[arg-type]
    assert reply.object == "chat.completion" and reply.model == "chat"
    content = reply.choices[0].message.content or ""
    assert len(content.split()) == GATEWAY_REPLY_TOKENS and reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == GATEWAY_REPLY_TOKENS
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


async def test_streaming_with_usage(oai: AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="chat",
        messages=HELLO,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(text.split()) == GATEWAY_REPLY_TOKENS
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and finishes.count("stop") == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == GATEWAY_REPLY_TOKENS
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1


async def test_streaming_without_usage_has_no_usage_chunk(oai: AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(model="chat", messages=HELLO, stream=True)  # type: ignore[arg-type]
    chunks = [c async for c in stream]
    assert all(c.choices for c in chunks) and chunks[-1].choices[0].finish_reason == "stop"


async def test_stateless_by_default(oai: AsyncOpenAI, gw: str) -> None:
    sdk = get_client(url=gw, api_key=KEYS.alpha)
    before = len(await sdk.threads.search(limit=1000))
    reply = await oai.chat.completions.with_raw_response.create(model="chat", messages=HELLO)  # type: ignore[arg-type]
    assert "x-cai-thread-id" not in reply.headers
    assert len(await sdk.threads.search(limit=1000)) == before  # no thread was kept


@pytest.mark.parametrize("via", ["header", "metadata"])
async def test_a_thread_id_makes_it_stateful(oai: AsyncOpenAI, gw: str, via: str) -> None:
    tid = str(uuid.uuid4())
    options: dict[str, object] = (
        {"extra_headers": {"X-Cai-Thread-Id": tid}}
        if via == "header"
        else {"metadata": {"thread_id": tid}}
    )
    first = await oai.chat.completions.create(model="chat", messages=HELLO, **options)  # type: ignore[call-overload]
    answer = first.choices[0].message.content
    # The client sends the whole conversation, as OpenAI clients do; the thread has the history,
    # so only the new turn is added.
    follow_up = [
        *HELLO,
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "And after a crash?"},
    ]
    await oai.chat.completions.create(model="chat", messages=follow_up, **options)  # type: ignore[call-overload]
    state = await get_client(url=gw, api_key=KEYS.alpha).threads.get_state(tid)
    messages = state["values"]["messages"]
    assert [m["type"] for m in messages] == ["human", "ai", "human", "ai"]
    assert messages[2]["content"] == "And after a crash?"


async def test_errors_in_openai_shape(oai: AsyncOpenAI, gw: str) -> None:
    with pytest.raises(openai.NotFoundError):
        await oai.chat.completions.create(model="nobody", messages=HELLO)  # type: ignore[arg-type]
    with pytest.raises(openai.UnprocessableEntityError) as err:
        await oai.chat.completions.create(model="chat", messages=[])
    assert "messages" in err.value.message
    with pytest.raises(openai.UnprocessableEntityError):
        await oai.chat.completions.create(
            model="chat",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
            ],  # type: ignore[list-item]
        )
    bad = AsyncOpenAI(base_url=f"{gw}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as auth_err:
        await bad.models.list()
    assert auth_err.value.body["type"] == "authentication_error"  # type: ignore[index]
    async with client(gw) as http:
        raw = await http.post("/v1/chat/completions", json={"model": "chat", "messages": "x"})
    assert raw.headers["content-type"].startswith("application/problem+json")
    assert raw.json()["error"]["type"] == "invalid_request_error"


async def test_a_failing_model_is_an_error_streamed_or_not(oai: AsyncOpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as err:
        await oai.chat.completions.create(model="broken", messages=HELLO)  # type: ignore[arg-type]
    assert err.value.status_code == 502
    stream = await oai.chat.completions.create(model="broken", messages=HELLO, stream=True)  # type: ignore[arg-type]
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
