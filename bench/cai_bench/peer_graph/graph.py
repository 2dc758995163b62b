"""The graph the peers serve (bench/cai_bench/peers.py): the turn Cai's `bench-plain` assistant
takes — the same system prompt, the conversation, one streamed call to llm-sim — written as a
LangGraph user would write it. It runs in the peer's own environment, not the bench's."""

from __future__ import annotations

import os
from typing import Any

from langchain_core.messages import SystemMessage
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph

# As in cai_bench.loadgen.DEFAULT_SYSTEM_PROMPT (Cai's default assistant's prompt).
SYSTEM_PROMPT = (
    "You are Cai, a helpful assistant. Answer from the context you are given and say so when "
    "you do not know."
)

model = ChatOpenAI(
    model="cai-sim",
    base_url=os.environ["PEER_LLM_URL"],
    api_key="sim-key",  # type: ignore[arg-type]
    temperature=0.0,
    streaming=True,
    stream_usage=True,
)


async def agent(state: MessagesState) -> dict[str, Any]:
    """One model call over the conversation."""
    reply = await model.ainvoke([SystemMessage(SYSTEM_PROMPT), *state["messages"]])
    return {"messages": [reply]}


graph = StateGraph(MessagesState).add_node("agent", agent).add_edge(START, "agent").compile()
