"""Content deltas past LangGraph's stream (token_sink.py): taken, in order, the same events."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from langchain_core.callbacks import AsyncCallbackHandler
from langchain_core.messages import AnyMessage
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import tool
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from redis.asyncio import Redis

from cai_common.runs import parse_event_id
from cai_devstack.procs import Proc, free_port, http_ready, python_module
from cai_orchestrator import runner
from cai_orchestrator.assistants import Assistant, Assistants
from cai_orchestrator.config import Settings
from cai_orchestrator.events import EventBatcher, EventWriter
from cai_orchestrator.frames import LogReader
from cai_orchestrator.graph import Agent
from cai_orchestrator.llm import ModelFactory
from cai_orchestrator.model_stream import StreamingChatOpenAI
from cai_orchestrator.records import RunRecord, now_iso
from cai_orchestrator.retrieval import RetrieverClient
from cai_orchestrator.token_sink import TokenSink

REPLY = 60
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"

# -- the sink's order, with a writer that records -------------------------------------------


class Recorder:
    """Stands in for the EventWriter: records what reaches the log, may pause on each write."""

    def __init__(self, pause: bool = False) -> None:
        self.log: list[str] = []
        self.pause = pause

    async def token(self, message_id: str, text: str, meta: bytes) -> None:
        self.log.append(text)
        if self.pause:
            await asyncio.sleep(0)  # as the unbatched writer does when it flushes

    async def message(self, message: bytes, meta: bytes) -> None:
        self.log.append(message.decode())


def sink_of(recorder: Recorder) -> TokenSink:
    return TokenSink(recorder)  # type: ignore[arg-type]


async def test_deltas_wait_for_the_barrier_and_what_was_queued_before_it_goes_first() -> None:
    log = Recorder()
    sink = sink_of(log)
    barrier = sink.barrier()  # the model call put it on LangGraph's stream
    await sink.model_delta("m", "a", b"{}")  # arrives before the runner reached the barrier
    await sink.stream_delta("m", "queued before", b"{}")  # the runner reads what was ahead
    assert log.log == ["queued before"]
    await sink.passed(barrier)
    await sink.model_delta("m", "b", b"{}")  # the way is clear: written at once
    assert log.log == ["queued before", "a", "b"]
    assert sink.direct == 2


async def test_a_chunk_sent_through_langgraph_is_not_overtaken() -> None:
    """Content, then a chunk through LangGraph (a tool call), then content again."""
    log = Recorder()
    sink = sink_of(log)
    first = sink.barrier()
    await sink.model_delta("m", "a", b"{}")
    second = sink.barrier()  # after the tool-call chunk went to LangGraph
    await sink.model_delta("m", "b", b"{}")
    await sink.passed(first)  # the runner reaches the first barrier: "a" only
    assert log.log == ["a"]
    await log.message(b"tool call", b"{}")  # the runner writes the chunk it read next
    await sink.passed(second)
    assert log.log == ["a", "tool call", "b"]


async def test_deltas_that_come_while_held_ones_are_written_wait_their_turn() -> None:
    log = Recorder(pause=True)
    sink = sink_of(log)
    barrier = sink.barrier()
    for text in "abc":
        await sink.model_delta("m", text, b"{}")
    release = asyncio.create_task(sink.passed(barrier))
    await asyncio.sleep(0)  # the release is under way, paused in its first write
    await sink.model_delta("m", "d", b"{}")
    await release
    await sink.model_delta("m", "e", b"{}")
    assert log.log == ["a", "b", "c", "d", "e"]


async def test_a_barrier_of_another_attempt_is_ignored() -> None:
    log = Recorder()
    sink = sink_of(log)
    await sink.passed(TokenSink(log).barrier())  # type: ignore[arg-type]
    await sink.model_delta("m", "a", b"{}")
    assert log.log == ["a"]


# -- against llm-sim, through Cai's graph and the runner -----------------------------------


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    proc = Proc(
        "llm-sim",
        python_module(
            "llm_sim", "--port", str(port), "--reply-tokens", str(REPLY), "--token-delay-ms", "2"
        ),
        Path(tmp_path_factory.mktemp("sim")) / "llm-sim.log",
        ready=http_ready(f"http://127.0.0.1:{port}/health"),
    ).start()
    try:
        proc.wait_ready(30)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.stop()


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def batcher(redis: Redis) -> AsyncIterator[EventBatcher]:
    b = EventBatcher(redis)
    b.start()
    yield b
    await b.stop()


class TokenCallbacks(AsyncCallbackHandler):
    """Counts the chunks LangChain hands its callbacks (LangGraph's messages stream is one)."""

    def __init__(self) -> None:
        self.chunks = 0

    async def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.chunks += 1


class Taken:
    """What one run went through: its sinks, the messages parts the runner read."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sinks: list[TokenSink] = []
        self.parts: list[Any] = []
        taken = self

        class CountingSink(TokenSink):
            def __init__(self, writer: EventWriter) -> None:
                super().__init__(writer)
                taken.sinks.append(self)

        read = runner._message

        async def message(sink: TokenSink, writer: EventWriter, msg: Any, meta: Any) -> None:
            taken.parts.append(msg)
            await read(sink, writer, msg, meta)

        monkeypatch.setattr(runner, "TokenSink", CountingSink)
        monkeypatch.setattr(runner, "_message", message)

    @property
    def content_parts(self) -> list[Any]:
        """Parts that carried content through LangGraph's stream."""
        return [p for p in self.parts if isinstance(getattr(p, "content", None), str) and p.content]


def agent_graph(sim: str, headers: dict[str, str] | None = None) -> CompiledStateGraph:
    assistants = Assistants([Assistant(id="chat", model_headers=headers or {})])
    agent = Agent(
        ModelFactory(Settings(openai_base_url=sim)), assistants, RetrieverClient("127.0.0.1:1")
    )
    return agent.build(InMemorySaver())


def run_record(stream_mode: list[str]) -> RunRecord:
    run_id = str(uuid.uuid4())
    return RunRecord(
        run_id=run_id,
        thread_id=str(uuid.uuid4()),
        tenant="tenant",
        assistant_id="chat",
        status="running",
        created_at=now_iso(),
        updated_at=now_iso(),
        multitask_strategy="reject",
        kwargs={
            "input": {"messages": [{"role": "user", "content": "How does Cai stream?"}]},
            "stream_mode": stream_mode,
        },
        metadata={},
    )


async def execute(
    graph: CompiledStateGraph,
    redis: Redis,
    batcher: EventBatcher,
    stream_mode: list[str],
    coalesce_s: float = 0.025,
) -> tuple[RunRecord, list[tuple[bytes, bytes]], list[AnyMessage]]:
    """Execute one run as the worker does; its log as clients get it, and its messages."""
    run = run_record(stream_mode)
    writer = EventWriter(redis, run.ref.keys.events, coalesce_s, 600, batcher)
    await runner.execute(graph, run, writer, {"recursion_limit": 10})
    await writer.finish()
    reader = LogReader()
    events = [
        reader.decode(parse_event_id(i), f[b"e"], f[b"d"])
        for i, f in await redis.xrange(run.ref.keys.events)
    ]
    config: RunnableConfig = {"configurable": {"thread_id": run.ref.thread_keys.checkpoint_thread}}
    state = await graph.aget_state(config)
    return run, [e for e in events if e is not None], state.values["messages"]


def comparable(run: RunRecord, events: list[tuple[bytes, bytes]]) -> tuple[list[str], str]:
    """The events with the run's own values as placeholders and each stretch of token events
    as one (how many deltas one event holds depends on timing); the text they spell."""
    out: list[str] = []
    text = ""
    for event, data in events:
        line = data.decode()
        for value, name in ((run.run_id, "<run>"), (run.thread_id, "<thread>")):
            line = line.replace(value, name)
        line = re.sub(f"lc_run--{UUID}", "<msg>", line)
        line = re.sub(f"(agent|model):{UUID}", r"\1:<task>", line)
        line = re.sub(UUID, "<uuid>", line)  # the user's message
        line = re.sub("call_[0-9a-f]+", "<call>", line)  # the model's tool calls
        if (
            event == b"messages"
            and '"response_metadata":{},' in line
            and 'usage_metadata":null' in line
        ):
            chunk = orjson.loads(data)[0]
            text += chunk["content"]
            line = line.replace(orjson.dumps(chunk["content"]).decode(), "<tokens>", 1)
            if out and out[-1] == f"messages {line}":
                continue
        out.append(f"{event.decode()} {line}")
    return out, text


async def test_content_goes_past_langgraph_and_the_log_is_the_same(
    sim: str, redis: Redis, batcher: EventBatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    callbacks = TokenCallbacks()
    graph = agent_graph(sim).with_config(callbacks=[callbacks])
    modes = ["messages-tuple", "values"]
    taken = Taken(monkeypatch)
    run, events, messages = await execute(graph, redis, batcher, modes)
    # Taken: every delta went to the sink, none through LangChain's callbacks or LangGraph's
    # stream; what did is the finish and usage chunks, the last (empty) one and a barrier.
    assert 0 < taken.sinks[0].direct <= REPLY and not taken.content_parts
    assert callbacks.chunks <= 3 and len(taken.parts) <= 4, (callbacks.chunks, taken.parts)
    got, text = comparable(run, events)
    assert text == messages[-1].content and len(text.split()) == REPLY
    assert [line.split(" ", 1)[0] for line in got] == [
        "values", "status", "messages", "messages", "messages", "values",
    ]  # fmt: skip
    assert all(messages[-1].id in data.decode() for e, data in events if e == b"messages")

    # The same run through LangGraph's stream (the way every delta went before) logs the same.
    monkeypatch.setattr(StreamingChatOpenAI, "_direct", lambda *_: None)
    before = TokenCallbacks()
    taken = Taken(monkeypatch)
    graph = agent_graph(sim).with_config(callbacks=[before])
    run_before, events_before, messages_before = await execute(graph, redis, batcher, modes)
    assert taken.sinks[0].direct == 0 and taken.content_parts and before.chunks > callbacks.chunks
    assert comparable(run_before, events_before) == (got, text)
    assert messages_before[-1].content == messages[-1].content


async def test_without_the_messages_mode_nothing_is_streamed(
    sim: str, redis: Redis, batcher: EventBatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = Taken(monkeypatch)
    _, events, messages = await execute(agent_graph(sim), redis, batcher, ["values"])
    assert taken.sinks[0].direct == 0 and not taken.parts
    assert [e for e, _ in events] == [b"values", b"status", b"values"]
    assert len(str(messages[-1].content).split()) == REPLY


@tool
def lookup(query: str) -> str:
    """Look something up."""
    return query


def tool_calling_graph(sim: str) -> CompiledStateGraph:
    """One node that asks the model with a tool bound (llm-sim always calls it)."""
    model = ModelFactory(Settings(openai_base_url=sim)).chat_model(
        "", 0.0, {"X-Sim-Tool-Mode": "always"}
    )

    async def ask(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        return {"messages": [await model.bind_tools([lookup]).ainvoke(state["messages"], config)]}

    builder = StateGraph(MessagesState)
    builder.add_node("model", ask)
    builder.add_edge(START, "model")
    return builder.compile(checkpointer=InMemorySaver())


async def test_tool_call_chunks_keep_langgraphs_path(
    sim: str, redis: Redis, batcher: EventBatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    modes = ["messages-tuple", "updates"]
    taken = Taken(monkeypatch)
    run, events, messages = await execute(tool_calling_graph(sim), redis, batcher, modes, 0)
    tool_chunks = [p for p in taken.parts if getattr(p, "tool_call_chunks", None)]
    assert tool_chunks and messages[-1].tool_calls[0]["name"] == "lookup"  # type: ignore[union-attr]
    monkeypatch.setattr(StreamingChatOpenAI, "_direct", lambda *_: None)
    before, events_before, _ = await execute(tool_calling_graph(sim), redis, batcher, modes, 0)
    assert comparable(before, events_before) == comparable(run, events)


async def test_a_reply_at_20ms_a_token_costs_its_log_little(
    sim: str, redis: Redis, batcher: EventBatcher
) -> None:
    """A 200-token reply at 20 ms between tokens: ~160 token events. Stored in full they took
    ~170 KB of Redis (~1.1 KB each); once per message, ~9 KB."""
    headers = {"X-Sim-Reply-Tokens": "200", "X-Sim-Token-Delay-Ms": "20"}
    run, events, messages = await execute(
        agent_graph(sim, headers), redis, batcher, ["messages-tuple"]
    )
    assert len(str(messages[-1].content).split()) == 200
    token_events = sum(1 for e, _ in events if e == b"messages") - 2
    assert token_events > 50  # the deltas came (nearly) one by one
    # ~30 bytes an entry, and Redis preallocates 4 KB stream nodes of 100 entries: even one
    # event per token (~200 entries, 3 nodes) stays under 16 KB.
    used = await redis.memory_usage(run.ref.keys.events, samples=0)
    assert used is not None and used < 16_000, used
    # Rebuilt, the same events are as large as ever: it is the storage that shrank.
    assert sum(len(d) for _, d in events) > 100_000
