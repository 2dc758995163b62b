"""Executes one run's graph and turns its stream into events."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from langchain_core.messages import AIMessageChunk
from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import Command

from cai_orchestrator import metrics
from cai_orchestrator.events import EventWriter, dumps
from cai_orchestrator.store import RunRecord
from cai_orchestrator.token_sink import TOKEN_SINK, Barrier, TokenSink

# LangGraph Server stream modes → graph stream modes. "messages-tuple" is the graph's "messages".
SUPPORTED_STREAM_MODES = {
    "values": "values",
    "updates": "updates",
    "messages-tuple": "messages",
    "custom": "custom",
}
# The recursion limit of a run whose assistant is gone (an assistant's own default is the same).
DEFAULT_RECURSION_LIMIT = 10
_INTERRUPT = "__interrupt__"


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a graph run ended, as its stream showed it (no state read needed afterwards)."""

    interrupted: bool  # it stopped at an interrupt (work is left: the thread waits)
    values: Any  # the thread's values at the end; None if the stream showed none


def graph_input(run: RunRecord, resume: bool = False) -> Any:
    """The input; a Command when the run resumes an interrupted thread; None to continue a
    retried run from its last checkpoint (its input is already in the thread's state)."""
    if resume:
        return None
    command = run.kwargs.get("command")
    if command:
        return Command(**command)
    return run.kwargs.get("input")


def run_config(run: RunRecord, run_settings: dict[str, Any]) -> RunnableConfig:
    """RunnableConfig for the run: request overrides, then the ids the graph relies on.

    `run_settings` carries what the worker resolved: the assistant's recursion limit and the
    thread's system prompt override.
    """
    requested = run.kwargs.get("config") or {}
    configurable = {
        **(requested.get("configurable") or {}),
        "thread_system_prompt": run_settings.get("thread_system_prompt"),
        "thread_id": run.ref.thread_keys.checkpoint_thread,  # the checkpointer's name for it
        "run_id": run.run_id,
        "assistant_id": run.assistant_id,
        "tenant_id": run.tenant,
    }
    # A client may lower the assistant's recursion limit, never raise it.
    limit = int(run_settings.get("recursion_limit") or DEFAULT_RECURSION_LIMIT)
    if requested.get("recursion_limit"):
        limit = min(limit, int(requested["recursion_limit"]))
    config: RunnableConfig = {
        "configurable": configurable,
        "recursion_limit": limit,
        "metadata": {**run.metadata, "run_id": run.run_id, "thread_id": run.thread_id},
        "run_id": uuid.UUID(run.run_id),
    }
    if requested.get("tags"):
        config["tags"] = list(requested["tags"])
    return config


async def execute(
    graph: CompiledStateGraph,
    run: RunRecord,
    writer: EventWriter,
    run_settings: dict[str, Any],
    resume: bool = False,
) -> Outcome:
    """Stream the graph for `run`, writing one event per streamed part; how it ended.

    With `resume` (a retried run that already checkpointed progress), the graph continues from
    the thread's last checkpoint, so nothing the run did (its input included) is applied twice.
    The graph's `values` stream is always read (its last part is the thread's state, with the
    interrupt if the graph stopped at one), and written as events only if the client asked.
    """
    requested = run.kwargs.get("stream_mode") or ["values"]
    modes = list(
        dict.fromkeys(SUPPORTED_STREAM_MODES[m] for m in requested if m in SUPPORTED_STREAM_MODES)
    )
    if not modes:
        modes = ["values"]
    config = run_config(run, run_settings)
    if resume:
        replayed = await _replay_finished_answer(graph, run, writer, modes)
        if replayed is not None:
            return replayed
    wants_custom = "custom" in modes
    if not wants_custom:
        modes.append("custom")  # status and retrieval events travel on the custom stream
    wants_values = "values" in modes
    if not wants_values:
        modes.append("values")  # how the run ended: the state and any interrupt
    values: Any = None
    interrupted = False
    sink = TokenSink(writer)
    token = TOKEN_SINK.set(sink)  # the model client writes content deltas through it
    try:
        stream = graph.astream(
            graph_input(run, resume),
            config,
            stream_mode=modes,  # type: ignore[arg-type]  # validated against SUPPORTED_STREAM_MODES
            durability=run_settings.get("durability"),
        )
        part: Any
        async for part in stream:
            mode, chunk = part  # with a list of modes, every part is (mode, chunk)
            if mode == "messages":
                await _message(sink, writer, *chunk)
            elif mode == "custom":
                if isinstance(chunk, dict) and chunk.get("status") == "generating":
                    sink.generating()
                if isinstance(chunk, dict) and "cai_event" in chunk:
                    event = {k: v for k, v in chunk.items() if k != "cai_event"}
                    await writer.emit(str(chunk["cai_event"]), dumps(event))
                elif wants_custom:
                    await writer.emit("custom", dumps(chunk))
            elif mode == "values":
                values = chunk
                if isinstance(chunk, dict) and _INTERRUPT in chunk:
                    interrupted = True
                    values = {k: v for k, v in chunk.items() if k != _INTERRUPT}
                if wants_values:
                    await writer.emit(mode, dumps(chunk))
            else:
                await writer.emit(mode, dumps(chunk))
    finally:
        TOKEN_SINK.reset(token)
    return Outcome(interrupted, values)


async def _message(sink: TokenSink, writer: EventWriter, message: Any, metadata: Any) -> None:
    """One part of LangGraph's messages stream: a message or chunk with its metadata."""
    if type(message) is Barrier:
        await sink.passed(message)
        return
    sink.replied()
    usage = getattr(message, "usage_metadata", None)
    if usage:
        metrics.TOKENS.labels("in").inc(usage.get("input_tokens", 0))
        metrics.TOKENS.labels("out").inc(usage.get("output_tokens", 0))
    meta = sink.meta_bytes(metadata)
    if (
        type(message) is AIMessageChunk
        and isinstance(message.content, str)
        and not message.tool_call_chunks
        # langchain-openai tags every chunk with the provider; that alone is no metadata
        and message.response_metadata.keys() <= {"model_provider"}
        and not message.usage_metadata
    ):
        if message.content:
            await sink.stream_delta(message.id or "", message.content, meta)
        return
    await writer.message(dumps(message), meta)


async def _replay_finished_answer(
    graph: CompiledStateGraph, run: RunRecord, writer: EventWriter, modes: list[str]
) -> Outcome | None:
    """A retried run whose graph already finished (its worker died before writing `end`).

    Clients drop what they were streamed when they see `retry`, so the answer the checkpoint
    holds is sent again as one message. Returns None when there is still work to run.
    """
    checkpoint_thread = run.ref.thread_keys.checkpoint_thread
    snapshot = await graph.aget_state({"configurable": {"thread_id": checkpoint_thread}})
    if snapshot.next:
        return None
    messages = (snapshot.values or {}).get("messages") or []
    if "messages" in modes and messages and messages[-1].type == "ai":
        await writer.emit("messages", b"[" + dumps(messages[-1]) + b',{"replayed":true}]')
    if "values" in modes:
        await writer.emit("values", dumps(snapshot.values))
    return Outcome(False, snapshot.values)
