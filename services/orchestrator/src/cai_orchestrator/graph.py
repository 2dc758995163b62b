"""The agent: retrieve → (summarise) → agent ⇄ tools, per assistant.

Every model call sees the assistant's system prompt, the passages retrieved for the current turn
and the thread's history trimmed to the assistant's token budget. That system prompt is the only
system message the model gets: a client's system messages are left out of the history, and replace
the persona prompt only where the assistant allows overrides. Tools run with a timeout; a
failing tool becomes a tool error message the model can react to, not a crash. Tools that require
approval pause the run with `interrupt()` until a person approves or rejects the call (`toolbox`).
"""

from __future__ import annotations

import logging
from typing import Any

from langchain_core.messages import (
    AnyMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    trim_messages,
)
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_stream_writer
from langgraph.constants import TAG_NOSTREAM
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from cai_orchestrator.assistants import DEFAULT, Assistant, Assistants
from cai_orchestrator.llm import ModelFactory
from cai_orchestrator.retrieval import RetrieverClient, RetrieverError
from cai_orchestrator.toolbox import Toolbox, status

log = logging.getLogger(__name__)
TRACER = trace.get_tracer("cai.orchestrator")

SUMMARY_PROMPT = (
    "Summarise the conversation below in a few sentences, keeping names, facts, decisions and "
    "open questions. Write only the summary."
)


class AgentState(MessagesState):
    """Messages, plus a running summary of turns trimmed away and this turn's passages."""

    summary: str
    context: list[dict[str, str]]


def tokens(messages: list[AnyMessage]) -> int:
    """Approximate token count (about four characters a token) of messages."""
    return int(count_tokens_approximately(messages)) if messages else 0


def is_instruction(message: BaseMessage) -> bool:
    """Whether a message would reach the model as a system (or developer) message.

    A generic chat message with such a role counts too: the OpenAI client sends its role as is.
    """
    if isinstance(message, SystemMessage):
        return True
    return isinstance(message, ChatMessage) and message.role in ("system", "developer")


def conversation(messages: list[AnyMessage]) -> list[AnyMessage]:
    """The turns of a history without the client's system messages.

    The model's only system message is the one the agent builds (`Agent._system_prompt`): a
    client's system message, wherever it stands in the history and whichever API it came
    through, is never sent as such. With the assistant's `allow_system_prompt_override`, the
    latest one replaces the persona prompt instead.
    """
    return [m for m in messages if not is_instruction(m)]


def client_system_prompt(messages: list[AnyMessage]) -> str | None:
    """The text of the latest client system message in the history, if any."""
    for message in reversed(messages):
        if is_instruction(message):
            return message.text
    return None


class Agent:
    """Builds the graph; its `Toolbox` loads and wraps the per-assistant tools."""

    def __init__(
        self, models: ModelFactory, assistants: Assistants, retriever: RetrieverClient
    ) -> None:
        self.models = models
        self.assistants = assistants
        self.retriever = retriever
        self.toolbox = Toolbox(assistants, retriever)

    def assistant(self, config: RunnableConfig) -> Assistant:
        """The run's assistant."""
        aid = str(config.get("configurable", {}).get("assistant_id", ""))
        return self.assistants.get(aid) or DEFAULT

    def tools_for(self, assistant: Assistant) -> list[BaseTool]:
        """The assistant's tools, loaded once.

        Raises:
            ToolLoadError: a tool cannot be loaded.
        """
        return self.toolbox.tools_for(assistant)

    def check_tools(self) -> None:
        """Load every assistant's tools now, so a bad tool fails start-up, not a run."""
        self.toolbox.check_tools()

    # -- nodes ------------------------------------------------------------------------------

    async def retrieve(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        """Fetch passages for the latest user turn, if the assistant retrieves."""
        assistant = self.assistant(config)
        last = state["messages"][-1] if state["messages"] else None
        if not assistant.retrieval.enabled or not isinstance(last, HumanMessage):
            return {"context": []}
        status("retrieving", "Searching the knowledge base…")
        tenant = str(config.get("configurable", {}).get("tenant_id", ""))
        r = assistant.retrieval
        try:
            passages = await self.retriever.search(
                tenant, last.text, r.collection, r.k, r.score_threshold
            )
        except RetrieverError as exc:
            log.warning("retrieval failed; answering without context", extra={"error": str(exc)})
            status("retrieval_failed", "The knowledge base is unavailable; answering without it")
            return {"context": []}
        get_stream_writer()({"cai_event": "retrieval", "sources": [p.citation() for p in passages]})
        return {
            "context": [
                {"source": p.source or p.document_id, "title": p.title, "text": p.text}
                for p in passages
            ]
        }

    # The routers are coroutines: LangGraph runs a plain function in a thread pool, a hop that
    # cost more than the routing itself.
    async def entry(self, state: AgentState, config: RunnableConfig) -> str:
        """Retrieve first when the assistant retrieves; otherwise skip that step (and its
        checkpoint) altogether."""
        if self.assistant(config).retrieval.enabled:
            return "retrieve"
        return await self.needs_summary(state, config)

    async def needs_summary(self, state: AgentState, config: RunnableConfig) -> str:
        """Summarise first when the history has grown past the assistant's threshold."""
        threshold = self.assistant(config).summary_threshold
        if threshold and tokens(state["messages"]) > threshold:
            return "summarize"
        return "agent"

    async def summarize(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        """Fold older turns into the running summary and drop them from the state."""
        assistant = self.assistant(config)
        # Client system messages stay in the state (an allowed override must outlive the
        # summary) and never enter the transcript the summariser reads.
        messages = conversation(state["messages"])
        keep = trim_messages(
            messages, max_tokens=assistant.token_budget // 2,
            token_counter=count_tokens_approximately, strategy="last", start_on="human",
        )  # fmt: skip
        keep_ids = {m.id for m in keep}
        older = [m for m in messages if m.id not in keep_ids]
        if not older:
            return {}
        status("summarizing", "Summarising earlier messages…")
        transcript = trim_messages(
            older, max_tokens=assistant.token_budget - 200,
            token_counter=count_tokens_approximately, strategy="last", allow_partial=True,
        )  # fmt: skip
        text = "\n".join(f"{m.type}: {m.text}" for m in transcript)
        previous = state.get("summary") or ""
        llm = self.models.chat_model(assistant.model, 0.0, assistant.model_headers)
        reply = await llm.ainvoke(
            [
                SystemMessage(SUMMARY_PROMPT),
                HumanMessage(f"Earlier summary: {previous}\n\n{text}" if previous else text),
            ],
            {**config, "tags": [*config.get("tags", []), TAG_NOSTREAM]},
        )
        return {
            "summary": reply.text,
            "messages": [RemoveMessage(id=m.id) for m in older if m.id],
        }

    def _system_prompt(
        self, assistant: Assistant, state: AgentState, config: RunnableConfig
    ) -> str:
        configurable = config.get("configurable", {})
        prompt = assistant.system_prompt
        if assistant.allow_system_prompt_override:
            # The request's own system message is the most specific, then the thread's.
            override = client_system_prompt(state["messages"]) or configurable.get(
                "thread_system_prompt"
            )
            if override:
                prompt = str(override)
        parts = [prompt]
        if state.get("summary"):
            parts.append(f"Summary of the earlier conversation: {state['summary']}")
        if assistant.retrieval.enabled and state.get("context"):  # never a stale one
            cited = "\n".join(f"[{c['source']}] {c['text']}" for c in state["context"])
            parts.append(f"Context passages (cite their [source]):\n{cited}")
        return "\n\n".join(parts)

    async def agent(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        """Call the model with the trimmed history and the assistant's tools."""
        assistant = self.assistant(config)
        system = SystemMessage(self._system_prompt(assistant, state, config))
        budget = max(assistant.token_budget - tokens([system]), 64)
        history = trim_messages(
            conversation(state["messages"]), max_tokens=budget,
            token_counter=count_tokens_approximately,
            strategy="last", start_on="human", allow_partial=True,
        )  # fmt: skip
        llm: Any = self.models.chat_model(
            assistant.model, assistant.temperature, assistant.model_headers
        )
        tools = self.tools_for(assistant)
        if tools:
            llm = llm.bind_tools(tools)
        status("generating", "Generating an answer…")
        model = assistant.model or self.models.settings.default_model
        with TRACER.start_as_current_span(
            f"chat {model}",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": model,
                "gen_ai.request.temperature": assistant.temperature,
                "gen_ai.conversation.id": str(config.get("metadata", {}).get("thread_id", "")),
            },
        ) as span:
            reply = await llm.ainvoke([system, *history], config)
            usage = getattr(reply, "usage_metadata", None) or {}
            span.set_attribute("gen_ai.usage.input_tokens", usage.get("input_tokens", 0))
            span.set_attribute("gen_ai.usage.output_tokens", usage.get("output_tokens", 0))
            model_name = (getattr(reply, "response_metadata", None) or {}).get("model_name")
            if model_name:
                span.set_attribute("gen_ai.response.model", str(model_name))
        return {"messages": [reply]}

    async def route_after_agent(self, state: AgentState) -> str:
        """Run tools when the model asked for any; otherwise the turn is over."""
        last = state["messages"][-1]
        return "tools" if getattr(last, "tool_calls", None) else END

    async def tools(self, state: AgentState, config: RunnableConfig) -> dict[str, Any]:
        """Execute the requested tool calls (ToolNode; errors become tool messages)."""
        node = self.toolbox.node_for(self.assistant(config))
        result: dict[str, Any] = await node.ainvoke(state, config)
        return result

    def build(self, checkpointer: BaseCheckpointSaver) -> CompiledStateGraph:
        """Compile the graph with the thread checkpointer."""
        builder = StateGraph(AgentState)
        builder.add_node("retrieve", self.retrieve)
        builder.add_node("summarize", self.summarize)
        builder.add_node("agent", self.agent)
        builder.add_node("tools", self.tools)
        builder.add_conditional_edges(START, self.entry, ["retrieve", "summarize", "agent"])
        builder.add_conditional_edges("retrieve", self.needs_summary, ["summarize", "agent"])
        builder.add_edge("summarize", "agent")
        builder.add_conditional_edges("agent", self.route_after_agent, ["tools", END])
        builder.add_edge("tools", "agent")
        return builder.compile(checkpointer=checkpointer)
