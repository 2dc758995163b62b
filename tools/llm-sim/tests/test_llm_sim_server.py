"""llm-sim over real HTTP: the openai SDK, LangChain's ChatOpenAI and raw httpx as clients."""

from __future__ import annotations

import json
import math
import random
import time
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

if TYPE_CHECKING:  # conftest is not importable at run time under --import-mode=importlib
    from conftest import SimServer

PERSONA = (
    "You are Ada, the travel assistant of Example Corp. "
    "Bananas are rich in potassium. "
    "The Rhine flows through Basel and Rotterdam. "
    "Mount Kilimanjaro is the highest mountain in Africa. "
    "Our office closes at six on Fridays."
)
MOUNTAIN = "Mount Kilimanjaro is the highest mountain in Africa."


def client(sim: SimServer, **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=sim.v1, api_key="sim", max_retries=0, **kwargs)


def chat_model(sim: SimServer, **kwargs: Any) -> ChatOpenAI:
    return ChatOpenAI(model="llm-sim", base_url=sim.v1, api_key="sim", max_retries=0, **kwargs)  # type: ignore[call-arg]


def persona_messages(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": PERSONA}, {"role": "user", "content": question}]


@tool
def search_knowledge_base(query: str) -> str:
    """Search the knowledge base."""
    return "unused"


@tool
def get_weather(city: str) -> str:
    """Get the weather for a city."""
    return "unused"


async def sse_events(sim: SimServer, body: dict[str, Any], headers: dict[str, str] | None = None):
    """Raw SSE `data:` payloads of a streamed completion."""
    async with httpx.AsyncClient(timeout=10) as http:
        async with http.stream(
            "POST", sim.v1 + "/chat/completions", json=body, headers=headers
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            raw = (await response.aread()).decode()
    assert raw.endswith("\n\n")
    events = raw.split("\n\n")[:-1]
    assert all(e.startswith("data: ") for e in events), events
    return [e.removeprefix("data: ") for e in events]


# --- basics -------------------------------------------------------------------------------------


async def test_health_and_models(sim: SimServer) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.get(sim.url + "/health")).status_code == 200
    models = await client(sim).models.list()
    assert "llm-sim" in [m.id for m in models.data]
    assert (await client(sim).models.retrieve("any-name-at-all")).id == "any-name-at-all"


async def test_streaming_with_openai_sdk(sim: SimServer) -> None:
    oai = client(sim)
    question = "Which is the highest mountain in Africa?"
    stream = await oai.chat.completions.create(
        model="my-model",
        messages=persona_messages(question),  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    first, usage_chunk = chunks[0], chunks[-1]
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    content_chunks = [c for c in chunks if c.choices and c.choices[0].delta.content]
    text = "".join(c.choices[0].delta.content or "" for c in content_chunks)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == len(content_chunks) == len(text.split())
    assert all(c.model == "my-model" and c.id == first.id for c in chunks)

    whole = await oai.chat.completions.create(
        model="my-model",
        messages=persona_messages(question),  # type: ignore[arg-type]
    )
    assert whole.choices[0].message.content == text
    assert text.startswith(MOUNTAIN)


async def test_raw_chunk_format(sim: SimServer) -> None:
    body = {
        "model": "m",
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": persona_messages("Where does the Rhine flow?"),
    }
    events = await sse_events(sim, body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        assert chunk["object"] == "chat.completion.chunk"
        assert chunk["id"].startswith("chatcmpl-")
        assert list(chunk)[:5] == ["id", "object", "created", "model", "system_fingerprint"]
    *token_chunks, finish, usage = chunks
    assert token_chunks[0]["choices"][0]["delta"] == {
        "role": "assistant",
        "content": "",
        "refusal": None,
    }
    for chunk in token_chunks[1:]:
        choice = chunk["choices"][0]
        assert chunk["usage"] is None
        assert choice["finish_reason"] is None and choice["logprobs"] is None
        assert list(choice["delta"]) == ["content"]
        assert len(choice["delta"]["content"].split()) == 1  # one word per chunk
    assert token_chunks[2]["choices"][0]["delta"]["content"].startswith(" ")
    assert finish["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(token_chunks) - 1

    body.pop("stream_options")
    plain = [json.loads(e) for e in (await sse_events(sim, body))[:-1]]
    assert all("usage" not in chunk for chunk in plain)


async def test_non_streaming(sim: SimServer) -> None:
    messages = persona_messages("When does the office close on Fridays?")
    response = await client(sim).chat.completions.create(model="custom-name", messages=messages)  # type: ignore[arg-type]
    assert response.object == "chat.completion" and response.model == "custom-name"
    choice = response.choices[0]
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    content = choice.message.content or ""
    assert content.startswith("Our office closes at six on Fridays.")
    assert response.usage is not None
    assert response.usage.completion_tokens == len(content.split())
    assert response.usage.prompt_tokens == sum(len(m["content"].split()) for m in messages)
    assert response.usage.total_tokens == response.usage.prompt_tokens + len(content.split())


# --- LangChain ----------------------------------------------------------------------------------


async def test_langchain_astream_and_ainvoke(sim: SimServer) -> None:
    model = chat_model(sim, streaming=True, stream_usage=True)
    messages = [SystemMessage(PERSONA), HumanMessage("Which mountain is the highest in Africa?")]
    chunks = [chunk async for chunk in model.astream(messages)]
    streamed = "".join(str(c.content) for c in chunks)
    assert streamed.startswith(MOUNTAIN)
    assert len([c for c in chunks if c.content]) == len(streamed.split())
    usage = [c.usage_metadata for c in chunks if c.usage_metadata]
    assert usage and usage[-1]["output_tokens"] == len(streamed.split())

    result = await model.ainvoke(messages)
    assert result.content == streamed


async def test_langchain_auto_search_tool_call(sim: SimServer) -> None:
    model = chat_model(sim, streaming=True).bind_tools([get_weather, search_knowledge_base])
    question = "How do I reset my password?"
    result = await model.ainvoke([SystemMessage(PERSONA), HumanMessage(question)])
    assert isinstance(result, AIMessage)
    assert [(c["name"], c["args"]) for c in result.tool_calls] == [
        ("search_knowledge_base", {"query": question})
    ]
    assert result.tool_calls[0]["id"].startswith("call_")
    assert result.response_metadata["finish_reason"] == "tool_calls"

    whole = await chat_model(sim).bind_tools([search_knowledge_base]).ainvoke(question)
    assert [c["name"] for c in whole.tool_calls] == ["search_knowledge_base"]


async def test_langchain_tool_directive_and_parallel_calls(sim: SimServer) -> None:
    model = chat_model(sim, streaming=True).bind_tools([get_weather, search_knowledge_base])
    one = await model.ainvoke('Weather please [[tool:get_weather {"city": "Paris"}]]')
    assert [(c["name"], c["args"]) for c in one.tool_calls] == [("get_weather", {"city": "Paris"})]

    two = await model.ainvoke(
        '[[tool:get_weather {"city": "Oslo"}]] and [[tool:search_knowledge_base '
        '{"query": "fjords", "top_k": 3}]]'
    )
    assert [(c["name"], c["args"]) for c in two.tool_calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("search_knowledge_base", {"query": "fjords", "top_k": 3}),
    ]
    assert len({c["id"] for c in two.tool_calls}) == 2


async def test_answer_after_tool_result_quotes_it(sim: SimServer) -> None:
    model = chat_model(sim, streaming=True).bind_tools([get_weather])
    result_text = "Paris is sunny with 24 degrees. A light breeze comes from the west."
    history = [
        SystemMessage(PERSONA),
        HumanMessage('What is the weather? [[tool:get_weather {"city": "Paris"}]]'),
        AIMessage(
            "", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "call_1"}]
        ),
        ToolMessage(result_text, tool_call_id="call_1"),
    ]
    answer = await model.ainvoke(history)
    assert not answer.tool_calls
    assert "Paris is sunny with 24 degrees." in str(answer.content)
    assert "Bananas" not in str(answer.content)


async def test_tool_modes_never_and_always(sim: SimServer) -> None:
    question = "Search for the refund policy"
    never = chat_model(sim, default_headers={"X-Sim-Tool-Mode": "never"})
    result = await never.bind_tools([search_knowledge_base]).ainvoke(question)
    assert not result.tool_calls and result.content

    always = chat_model(sim, streaming=True, default_headers={"X-Sim-Tool-Mode": "always"})
    history = [
        HumanMessage(question),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "X"}, "id": "c1"}]),
        ToolMessage("Refunds take five days.", tool_call_id="c1"),
    ]
    again = await always.bind_tools([get_weather]).ainvoke(history)
    assert [c["name"] for c in again.tool_calls] == ["get_weather"]
    assert again.tool_calls[0]["args"] == {"city": question}


# --- answers ------------------------------------------------------------------------------------


async def test_answer_quotes_the_relevant_context_sentence(sim: SimServer) -> None:
    oai = client(sim)
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {
            "role": "user",
            "content": "Context:\nBananas are rich in potassium.\n"
            "The Rhine flows through Basel and Rotterdam.\n" + MOUNTAIN,
        },
        {"role": "assistant", "content": "Thanks, noted."},
        {"role": "user", "content": "Through which cities does the Rhine flow?"},
    ]
    response = await oai.chat.completions.create(model="m", messages=messages)  # type: ignore[arg-type]
    content = response.choices[0].message.content or ""
    assert content.startswith("The Rhine flows through Basel and Rotterdam.")
    assert "Bananas" not in content and "Kilimanjaro" not in content

    nothing = await oai.chat.completions.create(
        model="m",
        messages=persona_messages("Explain quasar redshift"),  # type: ignore[arg-type]
    )
    assert nothing.choices[0].message.content == (
        'I found nothing in the given context about "Explain quasar redshift".'
    )


async def test_reply_length_is_exact_and_max_tokens_caps_it(sim: SimServer) -> None:
    oai = client(sim)
    messages = persona_messages("Tell me about the Rhine")
    stream = await oai.chat.completions.create(
        model="m",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"X-Sim-Reply-Tokens": "57"},
    )
    chunks = [c async for c in stream]
    content = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(content) == 57 and len("".join(content).split()) == 57
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 57

    capped = await oai.chat.completions.create(
        model="m",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=10,
        extra_headers={"X-Sim-Reply-Tokens": "57"},
    )
    assert capped.choices[0].finish_reason == "length"
    assert len((capped.choices[0].message.content or "").split()) == 10

    by_metadata = await oai.chat.completions.create(
        model="m",
        messages=messages,  # type: ignore[arg-type]
        metadata={"sim_reply_tokens": "12"},
    )
    assert len((by_metadata.choices[0].message.content or "").split()) == 12


# --- timing -------------------------------------------------------------------------------------


async def test_ttft_and_token_delay(sim: SimServer) -> None:
    oai = client(sim)
    started = time.monotonic()
    stream = await oai.chat.completions.create(
        model="m",
        messages=persona_messages("Tell me about the Rhine"),  # type: ignore[arg-type]
        stream=True,
        extra_headers={"X-Sim-TTFT-Ms": "300", "X-Sim-Token-Delay-Ms": "20"},
        extra_body={"metadata": {"sim_reply_tokens": "6"}},
    )
    arrivals = [
        time.monotonic() - started async for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert len(arrivals) == 6
    assert arrivals[0] >= 0.3
    assert arrivals[-1] >= 0.3 + 5 * 0.02


# --- faults -------------------------------------------------------------------------------------


async def test_injected_500_and_429(sim: SimServer) -> None:
    oai = client(sim)
    messages = persona_messages("hi")
    with pytest.raises(openai.InternalServerError) as server_error:
        await oai.chat.completions.create(
            model="m",
            messages=messages,  # type: ignore[arg-type]
            extra_headers={"X-Sim-Fail-Status": "500"},
        )
    assert server_error.value.status_code == 500
    with pytest.raises(openai.RateLimitError) as rate_limited:
        await oai.chat.completions.create(
            model="m",
            messages=messages,  # type: ignore[arg-type]
            stream=True,
            extra_headers={"X-Sim-Fail-Status": "429"},
        )
    assert rate_limited.value.response.headers["retry-after"] == "1"
    assert set(rate_limited.value.response.json()["error"]) == {"message", "type", "param", "code"}


async def test_stall_trips_the_client_read_timeout(sim: SimServer) -> None:
    oai = client(sim, timeout=httpx.Timeout(5.0, read=0.5))
    stream = await oai.chat.completions.create(
        model="m",
        messages=persona_messages("Tell me about the Rhine"),  # type: ignore[arg-type]
        stream=True,
        extra_headers={"X-Sim-Stall-After": "2", "X-Sim-Reply-Tokens": "20"},
    )
    received: list[str] = []
    started = time.monotonic()
    with pytest.raises((httpx.ReadTimeout, openai.APITimeoutError)):
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert len(received) == 2
    assert time.monotonic() - started >= 0.5
    async with httpx.AsyncClient() as http:  # the server is still serving
        assert (await http.get(sim.url + "/health")).status_code == 200


async def test_cut_aborts_the_stream_without_done(sim: SimServer) -> None:
    oai = client(sim)
    stream = await oai.chat.completions.create(
        model="m",
        messages=persona_messages("Tell me about the Rhine"),  # type: ignore[arg-type]
        stream=True,
        extra_headers={"X-Sim-Cut-After": "3", "X-Sim-Reply-Tokens": "20"},
    )
    received: list[str] = []
    with pytest.raises((httpx.TransportError, openai.APIError)):
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert len(received) == 3

    raw: list[bytes] = []
    body = {"model": "m", "stream": True, "messages": persona_messages("Rhine")}
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.TransportError):
            async with http.stream(
                "POST", sim.v1 + "/chat/completions", json=body, headers={"X-Sim-Cut-After": "1"}
            ) as response:
                async for piece in response.aiter_raw():
                    raw.append(piece)
    assert b"[DONE]" not in b"".join(raw)

    with pytest.raises(openai.APIConnectionError):
        await oai.chat.completions.create(
            model="m",
            messages=persona_messages("Rhine"),  # type: ignore[arg-type]
            extra_headers={"X-Sim-Cut-After": "0"},
        )


# --- validation ---------------------------------------------------------------------------------

GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("body", "headers", "param"),
    [
        (b"{not json", {}, None),
        (b"[1, 2]", {}, None),
        ({"messages": GOOD["messages"]}, {}, "model"),
        ({"model": "m"}, {}, "messages"),
        ({"model": "m", "messages": []}, {}, "messages"),
        ({"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, {}, "messages[0].role"),
        ({"model": "m", "messages": [{"role": "user", "content": 5}]}, {}, "messages[0].content"),
        ({**GOOD, "max_tokens": "ten"}, {}, "max_tokens"),
        ({**GOOD, "stream": "yes"}, {}, "stream"),
        ({**GOOD, "temperature": 7}, {}, "temperature"),
        ({**GOOD, "tools": [{"type": "function"}]}, {}, "tools[0].function"),
        ({**GOOD, "n": 2}, {}, "n"),
        (GOOD, {"X-Sim-Reply-Tokens": "lots"}, "x-sim-reply-tokens"),
        (GOOD, {"X-Sim-Tool-Mode": "sometimes"}, "x-sim-tool-mode"),
        ({**GOOD, "metadata": {"sim_ttft_ms": "-5"}}, {}, "metadata.sim_ttft_ms"),
        (
            {"model": "m", "messages": [{"role": "user", "content": "[[tool:x {broken}]]"}]},
            {},
            "messages",
        ),
    ],
)
async def test_bad_input_is_a_400_with_openai_error_json(
    sim: SimServer, body: Any, headers: dict[str, str], param: str | None
) -> None:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with httpx.AsyncClient() as http:
        response = await http.post(sim.v1 + "/chat/completions", content=content, headers=headers)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert error["message"]


async def test_openai_sdk_sees_bad_request(sim: SimServer) -> None:
    with pytest.raises(openai.BadRequestError):
        await client(sim).chat.completions.create(model="m", messages=[])


# --- embeddings ---------------------------------------------------------------------------------


async def test_embeddings_are_deterministic_and_normalised(sim: SimServer) -> None:
    oai = client(sim)
    texts = ["The Rhine flows through Basel.", "Basel lies on the Rhine river.", "Bananas!"]
    first = await oai.embeddings.create(model="llm-sim-embedding", input=texts)  # base64 on wire
    again = await oai.embeddings.create(model="llm-sim-embedding", input=texts)
    vectors = [d.embedding for d in first.data]
    assert vectors == [d.embedding for d in again.data]
    assert [len(v) for v in vectors] == [384] * 3
    for vector in vectors:
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-5)

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])
    assert first.usage.prompt_tokens == sum(len(t.split()) for t in texts)

    async with httpx.AsyncClient() as http:
        response = await http.post(
            sim.v1 + "/embeddings",
            json={"model": "e", "input": texts[0], "dimensions": 64, "encoding_format": "float"},
        )
        small = response.json()
        assert small["object"] == "list" and small["model"] == "e"
        assert len(small["data"][0]["embedding"]) == 64
        bad = await http.post(sim.v1 + "/embeddings", json={"model": "e", "input": 3})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "input"


# --- introspection ------------------------------------------------------------------------------


async def test_introspection_records_what_reached_the_model(sim: SimServer) -> None:
    async with httpx.AsyncClient() as http:
        assert (await http.delete(sim.url + "/v1/sim/requests")).status_code == 200
        model = chat_model(sim, temperature=0.3, default_headers={"X-Sim-Reply-Tokens": "4"})
        await model.ainvoke([SystemMessage(PERSONA), HumanMessage("first question")])
        await model.ainvoke([SystemMessage("Another persona."), HumanMessage("second one")])

        everything = (await http.get(sim.url + "/v1/sim/requests")).json()["data"]
        assert len(everything) == 2
        last = (await http.get(sim.url + "/v1/sim/requests", params={"limit": 1})).json()["data"]
        assert last == everything[-1:]
        record = last[0]
        assert record["messages"][0] == {"role": "system", "content": "Another persona."}
        assert record["model"] == "llm-sim" and record["temperature"] == 0.3
        assert record["headers"]["x-sim-reply-tokens"] == "4"
        assert record["headers"]["authorization"] == "present"
        assert record["prompt_tokens"] == 4
        assert everything[0]["messages"][0]["content"] == PERSONA

        bad = await http.get(sim.url + "/v1/sim/requests", params={"limit": "x"})
        assert bad.status_code == 400


# --- server-wide knobs from flags and environment -------------------------------------------------


async def test_flags_env_and_seeded_fault_sampling(faulty_sim: SimServer) -> None:
    rng = random.Random(11)
    expected = [rng.random() < 0.5 for _ in range(20)]
    observed: list[bool] = []
    async with httpx.AsyncClient() as http:
        for _ in range(20):
            response = await http.post(faulty_sim.v1 + "/chat/completions", json=GOOD)
            observed.append(response.status_code == 429)
            if response.status_code == 429:
                assert response.headers["retry-after"] == "2"
            else:
                assert response.status_code == 200
                content = response.json()["choices"][0]["message"]["content"]
                assert len(content.split()) == 7  # LLM_SIM_REPLY_TOKENS
    assert observed == expected
    assert any(observed) and not all(observed)
