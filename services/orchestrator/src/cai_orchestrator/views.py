"""Every LangGraph-Server JSON shape the orchestrator answers with, built in one place."""

from __future__ import annotations

from typing import Any

from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StateSnapshot

from cai_orchestrator.assistants import GRAPH_ID, Assistant
from cai_orchestrator.records import RunRecord, ThreadRecord


def run_view(run: RunRecord, queue: dict[str, Any] | None = None) -> dict[str, Any]:
    """LangGraph Server's Run object (with where it waits, for a pending run)."""
    body = {
        "run_id": run.run_id,
        "thread_id": run.thread_id,
        "assistant_id": run.assistant_id,
        "created_at": run.created_at,
        "updated_at": run.updated_at,
        "status": run.status,
        "metadata": run.metadata,
        "kwargs": run.kwargs,
        "multitask_strategy": run.multitask_strategy,
        "attempt": run.attempt,
        "executor": run.replica or None,
        "error": run.error or None,
    }
    if queue is not None:
        body["queue"] = queue
    return body


def thread_view(
    thread: ThreadRecord, values: Any = None, interrupts: dict[str, Any] | None = None
) -> dict[str, Any]:
    """LangGraph Server's Thread object."""
    return {
        "thread_id": thread.thread_id,
        "created_at": thread.created_at,
        "updated_at": thread.updated_at,
        "metadata": thread.metadata,
        "status": thread.status,
        "config": {},
        "values": values,
        "interrupts": interrupts or {},
    }


def checkpoint_view(config: Any, thread_id: str) -> dict[str, Any] | None:
    """A checkpoint reference from a RunnableConfig, named by the client's thread id (the
    checkpointer's own name for the thread is internal)."""
    if not config:
        return None
    c = config.get("configurable", {})
    return {
        "thread_id": thread_id,
        "checkpoint_ns": c.get("checkpoint_ns", ""),
        "checkpoint_id": c.get("checkpoint_id"),
    }


def _interrupt(i: Any) -> dict[str, Any]:
    return {"value": getattr(i, "value", None), "id": getattr(i, "id", None)}


def state_view(snapshot: StateSnapshot, thread_id: str) -> dict[str, Any]:
    """The ThreadState object LangGraph Server returns for GET /threads/{id}/state."""
    return {
        "values": snapshot.values or {},
        "next": list(snapshot.next),
        "tasks": [
            {
                "id": t.id,
                "name": t.name,
                "error": t.error,
                "interrupts": [_interrupt(i) for i in t.interrupts],
                "checkpoint": None,
                "state": None,
                "result": getattr(t, "result", None),
            }
            for t in snapshot.tasks
        ],
        "metadata": snapshot.metadata or {},
        "created_at": snapshot.created_at,
        "checkpoint": checkpoint_view(snapshot.config, thread_id) or {"thread_id": thread_id},
        "parent_checkpoint": checkpoint_view(snapshot.parent_config, thread_id),
        "interrupts": [_interrupt(i) for i in getattr(snapshot, "interrupts", ())],
    }


def assistant_view(assistant: Assistant) -> dict[str, Any]:
    """LangGraph Server's Assistant object (the prompt is shown: personas are not secrets)."""
    return {
        "assistant_id": assistant.id,
        "graph_id": GRAPH_ID,
        "name": assistant.name or assistant.id,
        "description": assistant.description or None,
        "config": {"configurable": assistant.configurable()},
        "context": {},
        "metadata": assistant.metadata,
        "version": 1,
        "created_at": assistant.loaded_at,
        "updated_at": assistant.loaded_at,
    }


def schemas_view(graph: CompiledStateGraph) -> dict[str, Any]:
    """JSON schemas of the graph's input, output, state and config."""
    return {
        "graph_id": GRAPH_ID,
        "input_schema": graph.get_input_jsonschema(),
        "output_schema": graph.get_output_jsonschema(),
        "state_schema": graph.get_output_jsonschema(),
        "config_schema": graph.config_schema().model_json_schema(),
        "context_schema": None,
    }
