"""The agent: retrieve → (summarise) → agent ⇄ tools, per assistant.

Every model call sees the assistant's system prompt, the passages retrieved for the current turn
and the thread's history trimmed to the assistant's token budget. Tools run with a timeout; a
failing tool becomes a tool error message the model can react to, not a crash. Tools that require
approval pause the run with `interrupt()` until a person approves or rejects the call.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from langchain_core.messages import (
    AnyMessage,
    HumanMessage,
    RemoveMessage,
    SystemMessage,
    trim_messages,
)
from langchain_core.messages.utils import count_tokens_approximately
from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.config import get_stream_writer
from langgraph.constants import TAG_NOSTREAM
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from langgraph.prebuilt import ToolNode
from langgraph.types import interrupt
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from cai_orchestrator import metrics
from cai_orchestrator.assistants import DEFAULT, Assistant, Assistants, ToolSpec
from cai_orchestrator.llm import ModelFactory
from cai_orchestrator.retrieval import RetrieverClient, RetrieverError
from cai_orchestrator.tools import (
    BUILTINS,
    STATUS_MESSAGES,
    ToolLoadError,
    load_import_path,
    with_timeout,
)

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


def status(kind: str, message: str, **extra: Any) -> None:
    """Emit a `status` event so a UI never sits on a silent spinner."""
    get_stream_writer()({"cai_event": "status", "status": kind, "message": message, **extra})


def tokens(messages: list[AnyMessage]) -> int:
    """Approximate token count (about four characters a token) of messages."""
    return int(count_tokens_approximately(messages)) if messages else 0


def approval_decision(value: Any) -> tuple[bool, str]:
    """Read a resume value: True/"approve"/{"approved": true}/{"action": "approve"} approve."""
    if isinstance(value, dict):
        reason = str(value.get("reason", ""))
        if "approved" in value:
            return bool(value["approved"]), reason
        value = value.get("action", "")
    if isinstance(value, bool):
        return value, ""
    return str(value).lower() in ("approve", "approved", "yes", "accept"), ""


class Agent:
    """Builds the graph and the per-assistant tools."""

    def __init__(
        self, models: ModelFactory, assistants: Assistants, retriever: RetrieverClient
    ) -> None:
        self.models = models
        self.assistants = assistants
        self.retriever = retriever
        self._tools: dict[str, list[BaseTool]] = {}
        self._tool_nodes: dict[str, ToolNode] = {}

    def assistant(self, config: RunnableConfig) -> Assistant:
        """The run's assistant."""
        aid = str(config.get("configurable", {}).get("assistant_id", ""))
        return self.assistants.get(aid) or DEFAULT

    def tools_for(self, assistant: Assistant) -> list[BaseTool]:
        """The assistant's tools, loaded once.

        Raises:
            ToolLoadError: a tool cannot be loaded.
        """
        if assistant.id not in self._tools:
            self._tools[assistant.id] = [self._load(assistant, spec) for spec in assistant.tools]
        return self._tools[assistant.id]

    def check_tools(self) -> None:
        """Load every assistant's tools now, so a bad tool fails start-up, not a run."""
        for assistant in self.assistants.by_id.values():
            self.tools_for(assistant)

    def _load(self, assistant: Assistant, spec: ToolSpec) -> BaseTool:
        if spec.import_path:
            base = load_import_path(spec.import_path)
        elif spec.name in BUILTINS:
            r = assistant.retrieval
            base = BUILTINS[spec.name](self.retriever, r.collection, r.k, r.score_threshold)
        else:
            raise ToolLoadError(
                f"assistant {assistant.id}: unknown built-in tool {spec.name!r} "
                f"(built-ins: {sorted(BUILTINS)}; other tools need an import path)"
            )
        timed = with_timeout(base, spec.timeout_seconds)
        return self._announced(timed, spec)

    @staticmethod
    def _announced(inner: BaseTool, spec: ToolSpec) -> BaseTool:
        """Status events around the call, and the approval pause where required."""
        name = inner.name

        async def run(config: RunnableConfig, **kwargs: Any) -> Any:
            if spec.requires_approval:
                decision = interrupt(
                    {"type": "tool_approval", "tool": name, "args": kwargs,
                     "message": f"Approve calling {name}?"}
                )  # fmt: skip
                approved, reason = approval_decision(decision)
                if not approved:
                    status("tool_rejected", f"{name} was not approved", tool=name)
                    return f"The user rejected this call to {name}. {reason}".strip()
            status("tool_start", STATUS_MESSAGES.get(name, f"Calling tool {name}…"), tool=name)
            started = time.monotonic()
            outcome = "error"
            span = TRACER.start_span(
                f"execute_tool {name}",
                kind=SpanKind.INTERNAL,
                attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name},
            )
            try:
                with trace.use_span(span, end_on_exit=False):
                    result = await inner.ainvoke(kwargs, config)
                outcome = "ok"
                return result
            except TimeoutError:
                outcome = "timeout"
                raise
            finally:
                span.set_attribute("cai.tool_outcome", outcome)
                span.end()
                metrics.TOOL_CALLS.labels(name, outcome).inc()
                metrics.TOOL_DURATION.labels(name).observe(time.monotonic() - started)
                status("tool_end", f"{name} finished", tool=name, outcome=outcome)

        return StructuredTool.from_function(
            coroutine=run, name=name, description=inner.description,
            args_schema=inner.args_schema,  # type: ignore[arg-type]
        )  # fmt: skip

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
        messages = state["messages"]
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
        override = configurable.get("thread_system_prompt")
        if override and assistant.allow_system_prompt_override:
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
            state["messages"], max_tokens=budget, token_counter=count_tokens_approximately,
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
                "gen_ai.conversation.id": str(config.get("configurable", {}).get("thread_id", "")),
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
        assistant = self.assistant(config)
        node = self._tool_nodes.get(assistant.id)
        if node is None:
            node = self._tool_nodes[assistant.id] = ToolNode(
                self.tools_for(assistant), handle_tool_errors=_tool_error
            )
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


def _tool_error(exc: Exception) -> str:
    """What the model reads when a tool fails (the run goes on)."""
    return f"Error: the tool failed: {type(exc).__name__}: {exc}"
