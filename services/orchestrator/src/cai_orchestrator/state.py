"""LangGraph StateSnapshot → LangGraph Server's ThreadState JSON shape."""

from __future__ import annotations

from typing import Any

from langgraph.types import StateSnapshot


def _checkpoint(config: Any) -> dict[str, Any] | None:
    if not config:
        return None
    c = config.get("configurable", {})
    return {
        "thread_id": c.get("thread_id"),
        "checkpoint_ns": c.get("checkpoint_ns", ""),
        "checkpoint_id": c.get("checkpoint_id"),
    }


def _interrupt(i: Any) -> dict[str, Any]:
    return {"value": getattr(i, "value", None), "id": getattr(i, "id", None)}


def snapshot_to_api(snapshot: StateSnapshot, thread_id: str) -> dict[str, Any]:
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
        "checkpoint": _checkpoint(snapshot.config) or {"thread_id": thread_id},
        "parent_checkpoint": _checkpoint(snapshot.parent_config),
        "interrupts": [_interrupt(i) for i in getattr(snapshot, "interrupts", ())],
    }
