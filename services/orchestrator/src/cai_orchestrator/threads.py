"""ThreadService: threads, their records (store) and their state (checkpoints, via the graph)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cai_common.runs import TERMINAL_STATUSES
from cai_orchestrator.keys import ThreadKeys
from cai_orchestrator.records import StoreError, ThreadRecord, not_found, state_too_large
from cai_orchestrator.runs import RunService
from cai_orchestrator.state import ThreadState, json_size
from cai_orchestrator.store import RunStore
from cai_orchestrator.views import checkpoint_view, state_view, thread_view


@dataclass
class ThreadService:
    """Threads of a tenant: records, values, history and state updates."""

    store: RunStore
    state: ThreadState
    runs: RunService
    # The largest a thread's state may grow (JSON bytes of its values; 0: no limit).
    max_state_bytes: int = 0
    # How long a delete waits for the thread's active run to stop.
    delete_wait_s: float = 20.0

    async def get_record(self, tenant: str, thread_id: str) -> ThreadRecord:
        """The tenant's thread record, or not found (a request using it: its expiry restarts)."""
        thread = await self.store.use_thread(tenant, thread_id)
        if thread is None:
            raise not_found("Thread", thread_id)
        return thread

    async def create(
        self, tenant: str, thread_id: str, metadata: dict[str, Any], if_exists: str
    ) -> dict[str, Any]:
        """Create a thread (or return the existing one with `do_nothing`)."""
        thread = await self.store.create_thread(tenant, thread_id, metadata, if_exists)
        return thread_view(thread)

    async def get(self, tenant: str, thread_id: str) -> dict[str, Any]:
        """A thread with its current values and interrupts."""
        thread = await self.get_record(tenant, thread_id)
        values, interrupts = await self.state.values_and_interrupts(ThreadKeys(tenant, thread_id))
        return thread_view(thread, values, interrupts)

    async def search(
        self,
        tenant: str,
        metadata: dict[str, Any],
        status: str,
        limit: int,
        offset: int,
        thread_ids: list[str] | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        """The tenant's threads matching `metadata` and `status`, newest first (or those of
        `thread_ids`, in that order); and how many thread records were read."""
        if thread_ids:
            threads = await self.store.threads_by_ids(
                tenant, thread_ids, metadata, status, limit, offset
            )
            read = len(thread_ids)
        else:
            threads, read = await self.store.search_threads(tenant, metadata, status, limit, offset)
        return [thread_view(t) for t in threads], read

    async def update(self, tenant: str, thread_id: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """Merge metadata into a thread."""
        await self.get_record(tenant, thread_id)
        return thread_view(await self.store.update_thread_metadata(tenant, thread_id, metadata))

    async def delete(self, tenant: str, thread_id: str) -> dict[str, Any]:
        """Delete a thread, its checkpoints and its runs' data.

        The thread first refuses new runs and drops its parked ones; its active run is cancelled
        and waited for, so no checkpoint or record of it lands after the delete. A run that does
        not stop within `delete_wait_s` fails the delete (ABORTED); the thread keeps refusing
        runs, and a retried delete finishes the job.
        """
        await self.get_record(tenant, thread_id)  # not found, or a stateless run's thread
        active = await self.store.mark_deleting(tenant, thread_id)
        if active is None:
            raise not_found("Thread", thread_id)
        if active:
            try:
                run = await self.runs.cancel_and_wait(
                    tenant, thread_id, active, "interrupt", self.delete_wait_s
                )
            except StoreError as exc:
                if exc.code != "not_found":
                    raise
            else:
                if run.status not in TERMINAL_STATUSES:
                    raise StoreError(
                        "aborted",
                        f"Thread {thread_id}'s run {active} has not stopped yet; the thread "
                        "accepts no new runs, retry the delete to finish it",
                    )
        # Checkpoints first: if this fails, the thread is still there for a retried delete.
        await self.state.delete(ThreadKeys(tenant, thread_id))
        runs = await self.store.delete_thread_records(tenant, thread_id)
        return {"thread_id": thread_id, "deleted": True, "runs_deleted": runs}

    async def state_at(self, tenant: str, thread_id: str, checkpoint_id: str) -> dict[str, Any]:
        """The thread's state at its head (or a given checkpoint)."""
        await self.get_record(tenant, thread_id)
        return state_view(
            await self.state.snapshot(ThreadKeys(tenant, thread_id), checkpoint_id), thread_id
        )

    async def history(
        self, tenant: str, thread_id: str, before: str, limit: int
    ) -> list[dict[str, Any]]:
        """Past states, newest first."""
        await self.get_record(tenant, thread_id)
        snapshots = await self.state.history(ThreadKeys(tenant, thread_id), before, limit)
        return [state_view(s, thread_id) for s in snapshots]

    async def update_state(
        self, tenant: str, thread_id: str, values: Any, as_node: str, checkpoint_id: str
    ) -> dict[str, Any]:
        """Write an update as a new checkpoint (not while a run is active)."""
        thread = await self.get_record(tenant, thread_id)
        if thread.active_run:
            raise StoreError(
                "conflict", f"Thread {thread_id} has an active run; update it afterwards"
            )
        tk = ThreadKeys(tenant, thread_id)
        if self.max_state_bytes:
            current = await self.state.size(tk)
            too_large = state_too_large(thread_id, current, json_size(values), self.max_state_bytes)
            if too_large is not None:
                raise too_large
        config = await self.state.update(tk, values, as_node, checkpoint_id)
        await self.store.set_state_bytes(tenant, thread_id, await self.state.size(tk))
        return {"checkpoint": checkpoint_view(config, thread_id)}
