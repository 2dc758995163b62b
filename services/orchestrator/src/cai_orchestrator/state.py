"""Thread state: what the checkpointer holds for a thread, read and written through the graph."""

from __future__ import annotations

from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from langgraph.types import StateSnapshot

from cai_orchestrator.checkpoint import DELETE_PAGE, delete_checkpoints, head_checkpoint_id
from cai_orchestrator.events import dumps
from cai_orchestrator.keys import ThreadKeys


class InvalidUpdate(ValueError):
    """A state update LangGraph refuses; the message says why."""


def json_size(value: Any) -> int:
    """Bytes of `value` as JSON: how the state limit measures states and what is written."""
    return 0 if value is None else len(dumps(value))


def run_write_size(kwargs: dict[str, Any]) -> int:
    """What a run writes into its thread's state before the graph runs: its input and its
    command's `update`, in JSON bytes."""
    command = kwargs.get("command") or {}
    return json_size(kwargs.get("input")) + json_size(command.get("update"))


def _configurable(thread: ThreadKeys, **extra: Any) -> dict[str, Any]:
    return {"thread_id": thread.checkpoint_thread, **extra}


class ThreadState:
    """A thread's checkpoints: current values, history, updates, rollback, deletion.

    Threads are named by their keys (tenant and id): the checkpointer stores each under
    `ThreadKeys.checkpoint_thread`, never under the bare id a client chose.
    """

    def __init__(self, graph: CompiledStateGraph, delete_page: int = DELETE_PAGE) -> None:
        self.graph = graph
        self.delete_page = delete_page

    @property
    def _saver(self) -> Any:
        return self.graph.checkpointer

    async def snapshot(self, thread: ThreadKeys, checkpoint_id: str = "") -> StateSnapshot:
        """The thread's state at its head (or at `checkpoint_id`)."""
        configurable = _configurable(thread)
        if checkpoint_id:
            configurable["checkpoint_id"] = checkpoint_id
        return await self.graph.aget_state({"configurable": configurable})

    async def values_and_interrupts(self, thread: ThreadKeys) -> tuple[Any, dict[str, Any]]:
        """The thread's current values and its pending interrupts by task id."""
        snapshot = await self.snapshot(thread)
        interrupts = {
            t.id: [{"value": i.value, "id": i.id} for i in t.interrupts]
            for t in snapshot.tasks
            if t.interrupts
        }
        return snapshot.values or None, interrupts

    async def waiting_and_size(self, thread: ThreadKeys) -> tuple[bool, int]:
        """Whether the graph stopped with work left (an interrupt), and the JSON size of the
        thread's values, from one read."""
        snapshot = await self.snapshot(thread)
        return bool(snapshot.next), json_size(snapshot.values or None)

    async def size(self, thread: ThreadKeys) -> int:
        """The JSON size of the thread's current values."""
        return (await self.waiting_and_size(thread))[1]

    async def history(self, thread: ThreadKeys, before: str, limit: int) -> list[StateSnapshot]:
        """Past states, newest first, after the checkpoint `before` (if given)."""
        config: RunnableConfig = {"configurable": _configurable(thread)}
        # Reading the head restarts the expiry of the thread's checkpoints (the Redis saver
        # refreshes TTLs on get, not on list).
        await self.head_checkpoint(thread)
        # The Redis saver ignores `before` (an upstream conformance failure), so page past the
        # named checkpoint here, which works the same on every saver.
        found: list[StateSnapshot] = []
        seen_before = not before
        async for snapshot in self.graph.aget_state_history(config):
            if not seen_before:
                seen_before = snapshot.config.get("configurable", {}).get("checkpoint_id") == before
                continue
            found.append(snapshot)
            if len(found) >= limit:
                break
        return found

    async def update(
        self, thread: ThreadKeys, values: Any, as_node: str, checkpoint_id: str
    ) -> dict[str, Any]:
        """Write `values` as a new checkpoint (as if `as_node` had run); its config."""
        if as_node and as_node not in self.graph.nodes:
            raise InvalidUpdate(f"as_node {as_node!r} is not a node of the graph")
        configurable = _configurable(thread, checkpoint_ns="")
        if checkpoint_id:
            configurable["checkpoint_id"] = checkpoint_id
        try:
            new_config = await self.graph.aupdate_state(
                {"configurable": configurable}, values, as_node=as_node or None
            )
        except (ValueError, KeyError, TypeError) as exc:  # LangGraph's own validation
            raise InvalidUpdate(f"cannot apply this update: {exc}") from exc
        return dict(new_config)

    async def head_id(self, thread: ThreadKeys) -> str:
        """Id of the thread's newest checkpoint ("" when it has none), read as cheaply as the
        checkpointer allows (on Redis without restarting the checkpoints' expiry)."""
        return await head_checkpoint_id(self._saver, thread.checkpoint_thread)

    async def head_checkpoint(self, thread: ThreadKeys) -> str:
        """Id of the thread's newest checkpoint ("" when it has none); on Redis, reading it
        restarts the expiry of the thread's checkpoints."""
        config: RunnableConfig = {"configurable": _configurable(thread, checkpoint_ns="")}
        found = await self._saver.aget_tuple(config)
        return str(found.config["configurable"]["checkpoint_id"]) if found else ""

    async def rollback(self, thread: ThreadKeys, base: str | None) -> None:
        """Make the thread's state what it was at `base` (the run's steps are discarded).

        Neither the Redis nor the Postgres saver can delete single checkpoints, so the checkpoint
        the run started from becomes the head again (the run's steps stay only as an abandoned
        branch of the history); a run that was the thread's first empties the thread.
        """
        if base is None or base == await self.head_id(thread):
            return  # the run wrote nothing
        if base == "":
            await self.delete(thread)
            return
        config: RunnableConfig = {
            "configurable": _configurable(thread, checkpoint_ns="", checkpoint_id=base)
        }
        await self.graph.aupdate_state(config, None)

    async def delete(self, thread: ThreadKeys) -> None:
        """Delete every checkpoint of the thread (page by page: there may be many)."""
        await delete_checkpoints(self._saver, thread.checkpoint_thread, self.delete_page)
