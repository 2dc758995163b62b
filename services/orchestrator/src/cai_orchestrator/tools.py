"""Agent tools: built-ins and tools added by import path, with timeouts and approval."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable
from typing import Any

from langchain_core.runnables import RunnableConfig
from langchain_core.tools import BaseTool, StructuredTool, tool

from cai_orchestrator.failures import report
from cai_orchestrator.retrieval import RetrieverClient, RetrieverError

log = logging.getLogger(__name__)

# What a UI shows while a tool runs.
STATUS_MESSAGES = {"search_knowledge_base": "Searching the knowledge base…"}


class ToolTimeout(TimeoutError):
    """A tool ran past its timeout; the message is ours (safe to show the model and clients)."""


class ToolLoadError(ValueError):
    """A tool named in an assistant cannot be loaded; the message says why."""


def search_tool(retriever: RetrieverClient, collection: str, k: int, threshold: float) -> BaseTool:
    """The built-in `search_knowledge_base` tool over the caller's tenant's documents."""

    @tool("search_knowledge_base")
    async def search_knowledge_base(query: str, config: RunnableConfig) -> str:
        """Search the knowledge base for passages relevant to the query. Returns cited passages."""
        tenant = str(config.get("configurable", {}).get("tenant_id", ""))
        try:
            passages = await retriever.search(tenant, query, collection, k, threshold)
        except RetrieverError as exc:
            # The model and the thread's state see no addresses or upstream text: an error id.
            failure = report(exc, "knowledge base search failed", kind="retrieval_failed")
            return f"The knowledge base is unavailable right now (error id {failure.error_id})."
        if not passages:
            return "No relevant passages found."
        return "\n\n".join(f"[{p.source or p.document_id}] {p.text}" for p in passages)

    return search_knowledge_base


BUILTINS: dict[str, Callable[..., BaseTool]] = {"search_knowledge_base": search_tool}


def load_import_path(path: str) -> BaseTool:
    """Load `package.module:attribute` as a tool (a BaseTool, or a function made into one).

    Raises:
        ToolLoadError: the module or attribute is missing, or it is not usable as a tool.
    """
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ToolLoadError(f"tool import path {path!r} must look like 'package.module:name'")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ToolLoadError(f"cannot import tool {path!r}: {exc}") from exc
    if isinstance(obj, BaseTool):
        return obj
    if callable(obj):
        return StructuredTool.from_function(
            func=None if asyncio.iscoroutinefunction(obj) else obj,
            coroutine=obj if asyncio.iscoroutinefunction(obj) else None,
            name=attr,
        )
    raise ToolLoadError(f"tool {path!r} is neither a LangChain tool nor a function")


def with_timeout(inner: BaseTool, timeout_s: float) -> BaseTool:
    """The same tool, failing with a clear message when it runs longer than `timeout_s`."""

    async def run(config: RunnableConfig, **kwargs: Any) -> Any:
        try:
            # Not asyncio.wait_for: on Python 3.11 it can swallow the run's cancellation.
            async with asyncio.timeout(timeout_s):
                return await inner.ainvoke(kwargs, config)
        except TimeoutError as exc:
            raise ToolTimeout(f"tool {inner.name} timed out after {timeout_s:g}s") from exc

    return StructuredTool.from_function(
        coroutine=run,
        name=inner.name,
        description=inner.description,
        args_schema=inner.args_schema,  # type: ignore[arg-type]
    )
