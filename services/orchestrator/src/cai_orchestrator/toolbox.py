"""The assistants' tools as the agent runs them: loaded once, timed, announced, approved.

Each tool gets a timeout, `status` events and a span around every call, and, where the assistant
requires it, an approval pause with `interrupt()`. A failing tool becomes a tool error message the
model can react to, not a crash.
"""

from __future__ import annotations

import time
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool
from langgraph.config import get_stream_writer
from langgraph.prebuilt import ToolNode
from langgraph.types import interrupt
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from cai_orchestrator import metrics
from cai_orchestrator.assistants import Assistant, Assistants, ToolSpec
from cai_orchestrator.failures import report
from cai_orchestrator.retrieval import RetrieverClient
from cai_orchestrator.tools import (
    BUILTINS,
    STATUS_MESSAGES,
    ToolLoadError,
    ToolTimeout,
    load_import_path,
    with_timeout,
)

TRACER = trace.get_tracer("cai.orchestrator")


def status(kind: str, message: str, **extra: Any) -> None:
    """Emit a `status` event so a UI never sits on a silent spinner."""
    get_stream_writer()({"cai_event": "status", "status": kind, "message": message, **extra})


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


class Toolbox:
    """Every assistant's tools, loaded once, and the ToolNode that runs them."""

    def __init__(self, assistants: Assistants, retriever: RetrieverClient) -> None:
        self.assistants = assistants
        self.retriever = retriever
        self._tools: dict[str, list[BaseTool]] = {}
        self._tool_nodes: dict[str, ToolNode] = {}

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

    def node_for(self, assistant: Assistant) -> ToolNode:
        """The ToolNode running the assistant's tools (errors become tool messages), built once."""
        node = self._tool_nodes.get(assistant.id)
        if node is None:
            node = self._tool_nodes[assistant.id] = ToolNode(
                self.tools_for(assistant), handle_tool_errors=_tool_error
            )
        return node

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
        return announced(timed, spec)


def announced(inner: BaseTool, spec: ToolSpec) -> BaseTool:
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


def _tool_error(exc: Exception) -> str:
    """What the model reads when a tool fails (the run goes on). The message stays in the
    thread's state, which clients read: a timeout is told as such, anything else by an error id
    whose log line has the details."""
    if isinstance(exc, ToolTimeout):
        return f"Error: {exc}"
    failure = report(exc, "tool failed", kind="tool_error")
    return f"Error: the tool failed (error id {failure.error_id})"
