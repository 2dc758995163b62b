"""The agent graph."""

from __future__ import annotations

from typing import Any

from langchain_core.messages import SystemMessage
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph

from cai_orchestrator.llm import ModelFactory

DEFAULT_SYSTEM_PROMPT = (
    "You are Cai, a helpful assistant. Answer from the context you are given and say so when "
    "you do not know."
)


def build_graph(models: ModelFactory, checkpointer: BaseCheckpointSaver) -> CompiledStateGraph:
    """One agent node calling the chat model with the thread's history."""

    async def agent(state: MessagesState, config: RunnableConfig) -> dict[str, Any]:
        configurable = config.get("configurable", {})
        llm = models.chat_model(
            configurable.get("model", ""),
            float(configurable.get("temperature", 0.0)),
            configurable.get("model_headers"),
        )
        system = SystemMessage(configurable.get("system_prompt") or DEFAULT_SYSTEM_PROMPT)
        reply = await llm.ainvoke([system, *state["messages"]], config)
        return {"messages": [reply]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    return builder.compile(checkpointer=checkpointer)
