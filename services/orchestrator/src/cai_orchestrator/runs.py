"""RunService: the run engine's domain layer — create, look up, stream, cancel and delete runs.

It composes the owners of each Redis concern (store: records; queue; cancel bus; event logs and
their tailer) and holds the rules between them; the gRPC servicer only translates to and from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence, Set
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.exceptions import RedisError

from cai_common.runs import CANCELLED, TERMINAL_EVENTS_BYTES, TERMINAL_STATUSES
from cai_orchestrator import metrics
from cai_orchestrator.assistants import Assistants
from cai_orchestrator.cancel import CancelBus
from cai_orchestrator.events import EventLogs, dumps
from cai_orchestrator.queue import RunQueue
from cai_orchestrator.reattach import PendingCancels
from cai_orchestrator.records import (
    CANCEL_ACTIONS,
    NewRun,
    RunRecord,
    RunRef,
    StoreError,
    not_found,
)
from cai_orchestrator.scheduler import Quota, Scheduler
from cai_orchestrator.state import run_write_size
from cai_orchestrator.store import RunStore
from cai_orchestrator.tailer import Entry, LogTailer, Subscription, SubscriptionFailed

log = logging.getLogger(__name__)
# How long after creation a run's queue append counts as lost (its creator died mid-way).
DISPATCH_CHECK_S = 10.0
# Runs one bulk cancel reaches at most, and asks to stop at once.
BULK_CANCEL_MAX = 1000
BULK_CANCEL_CONCURRENCY = 16
# A tenant at its quota has its oldest admitted runs (this many) checked for runs that ended
# without being released (a crash between the two steps).
QUOTA_REPAIR_SCAN = 100


def has_terminal(batch: list[Entry]) -> bool:
    """Whether a batch of log entries holds the run's terminal event."""
    return any(event in TERMINAL_EVENTS_BYTES for _, event, _ in batch)


@dataclass
class RunService:
    """Runs over the store, the queue, the cancel bus and the event logs."""

    store: RunStore
    queue: RunQueue
    bus: CancelBus
    logs: EventLogs
    tailer: LogTailer
    assistants: Assistants
    heartbeat_s: float
    # The largest a thread's state may grow (JSON bytes of its values; 0: no limit).
    max_state_bytes: int = 0
    # None: a stream that ends early cancels its run at once, whoever ended it (tests only).
    pending_cancels: PendingCancels | None = None
    # Tenants' quotas (None: no quotas; tests only), and the quotas of a caller whose key sets none.
    scheduler: Scheduler | None = None
    default_quota: Quota = Quota("standard", 50, 1000)

    def quota_of(self, new: NewRun) -> Quota:
        """The tier and quotas `new` is admitted under: its key's, else the defaults."""
        d = self.default_quota
        return Quota(
            new.tier or d.tier,
            new.max_running_runs or d.max_running_runs,
            new.max_queued_runs or d.max_queued_runs,
        )

    async def create(self, new: NewRun) -> RunRecord:
        """Admit a run under its tenant's quota, record it, then queue it (or leave it parked
        behind its thread's active run).

        The thread's own checks (its pinned assistant, its state limit) are made by the same
        script that records the run (`RunStore.create_run`): one round trip, no read before it.

        Raises:
            QuotaExceeded: the tenant has as many runs not yet ended as its quotas allow.
        """
        if self.assistants.get(new.assistant_id) is None:
            raise not_found("Assistant", new.assistant_id)
        quota = self.quota_of(new)
        run_id = self.store.new_run_id(new)
        admitted = RunRef(new.tenant, new.thread_id or run_id, run_id)
        await self._admit(admitted, quota)
        try:
            created = await self.store.create_run(
                new,
                first=lambda pipe, ref: self.queue.intend(pipe, ref, DISPATCH_CHECK_S),
                write_bytes=run_write_size(new.kwargs),
                max_state_bytes=self.max_state_bytes,
                run_id=run_id,
            )
        except StoreError:
            await self._release(admitted)  # refused: it never counted
            raise
        run = created.run
        if created.existed:
            # The earlier run is counted already, or (the same stateless run) has ended.
            if run.run_id != run_id or run.status in TERMINAL_STATUSES:
                await self._release(admitted)
            return run
        metrics.RUNS_ADMITTED.labels(quota.tier).inc()
        if created.dispatched:
            await self.queue.append(run.ref, dumps(run.trace), run.tier)
        else:
            await self.queue.forget_intent(run.ref)
        if created.interrupts:
            active = RunRef(run.tenant, run.thread_id, created.interrupts)
            await self.bus.request(active, new.multitask_strategy)
        return run

    async def _admit(self, ref: RunRef, quota: Quota) -> None:
        """Count the run against its tenant's quota, or refuse it (QuotaExceeded)."""
        if self.scheduler is None:
            return
        if await self.scheduler.admit(ref, quota):
            return
        # At the quota: drop runs that ended without being released (a crash between the two
        # steps), then try once more.
        if await self.repair_admitted(ref.tenant) and await self.scheduler.admit(ref, quota):
            return
        metrics.RUNS_REJECTED_QUOTA.labels(quota.tier).inc()
        raise self.scheduler.refusal(quota)

    async def _release(self, ref: RunRef) -> None:
        if self.scheduler is not None:
            await self.scheduler.release(ref)

    async def repair_admitted(self, tenant: str) -> int:
        """Stop counting the tenant's admitted runs that ended or were never recorded; how many."""
        if self.scheduler is None:
            return 0
        refs = await self.scheduler.stale_candidates(tenant, DISPATCH_CHECK_S, QUOTA_REPAIR_SCAN)
        if not refs:
            return 0
        alive = {
            r.run_id for r in await self.store.load_runs(refs) if r.status not in TERMINAL_STATUSES
        }
        gone = [r for r in refs if r.run_id not in alive]
        await self.scheduler.forget(tenant, gone)
        return len(gone)

    async def requeue_lost(self) -> int:
        """Queue runs whose creator died between recording and queueing them; how many."""
        requeued = 0
        for ref in await self.queue.overdue_intents():
            run = await self.store.load_run(ref)
            if run is not None and run.status == "pending" and await self.store.is_active(ref):
                log.warning(
                    "re-queueing a run whose dispatch was lost", extra={"run_id": ref.run_id}
                )
                await self.queue.append(ref, dumps(run.trace), run.tier)
                requeued += 1
                continue
            await self.queue.forget_intent(ref)
        return requeued

    async def get(self, tenant: str, thread_id: str, run_id: str) -> RunRecord:
        """The tenant's run, or not found."""
        run = await self.store.get_run(tenant, run_id, thread_id)
        if run is None:
            raise not_found("Run", run_id)
        return run

    async def queue_place(self, run: RunRecord) -> dict[str, Any]:
        """Where a pending run waits: in the shared queue (1 = next) or behind its thread's run."""
        age = max(0.0, time.time() - datetime.fromisoformat(run.created_at).timestamp())
        where: dict[str, Any] = {"age_seconds": round(age, 3)}
        parked = await self.store.parked_position(run.ref)
        if parked is not None:
            where["waiting_for_thread"] = True
            where["position"] = parked
            return where
        position = await self.queue.position(run.ref)
        if position is not None:
            where["position"] = position
        return where

    async def list(
        self, tenant: str, thread_id: str, limit: int, offset: int, status: str
    ) -> tuple[list[RunRecord], int]:
        """A thread's runs, newest first; and how many records were read."""
        if await self.store.get_thread(tenant, thread_id) is None:
            raise not_found("Thread", thread_id)
        return await self.store.list_runs(tenant, thread_id, limit, offset, status)

    async def cancel(self, tenant: str, thread_id: str, run_id: str, action: str) -> RunRecord:
        """Ask a run to stop; a finished run is returned as it is (a no-op)."""
        if action not in CANCEL_ACTIONS:
            raise StoreError("invalid", "action must be 'interrupt' or 'rollback'")
        run = await self.get(tenant, thread_id, run_id)
        await self._stop(run, action)
        return run

    async def _stop(self, run: RunRecord, action: str) -> None:
        """Ask a run that has not ended to stop."""
        if run.status in TERMINAL_STATUSES:
            return
        if await self.store.cancel_parked(run.ref):
            # It never started: its log gets its terminal event here.
            data = dumps({"action": action, "message": "Run was cancelled before it started"})
            await self.logs.close_unstarted(run.ref.keys.events, CANCELLED, data)
            await self._release(run.ref)
        else:
            await self.bus.request(run.ref, action)

    async def cancel_many(
        self, tenant: str, thread_id: str, run_ids: Sequence[str], statuses: Set[str], action: str
    ) -> tuple[Sequence[str], bool, int]:
        """Cancel the runs named by `run_ids`, or up to BULK_CANCEL_MAX of the tenant's runs
        with one of `statuses` (only the thread's, with `thread_id`), oldest first.

        Returns the runs found (named runs that exist, or the runs asked to stop), whether more
        runs of those statuses remain, and how many records were read.
        """
        if action not in CANCEL_ACTIONS:
            raise StoreError("invalid", "action must be 'interrupt' or 'rollback'")
        more = False
        if run_ids:
            named = [*run_ids[:BULK_CANCEL_MAX]]
            refs = await self.store.resolve_many(tenant, thread_id, named)
            runs = await self.store.load_runs(refs)
            read = len(refs) * (1 if thread_id else 2)  # (and each run's thread)
        else:
            if thread_id and await self.store.get_thread(tenant, thread_id) is None:
                raise not_found("Thread", thread_id)
            runs, more, read = await self.store.unfinished_runs(tenant, thread_id, BULK_CANCEL_MAX)
            runs = [r for r in runs if r.status in statuses]
        slots = asyncio.Semaphore(BULK_CANCEL_CONCURRENCY)

        async def stop(run: RunRecord) -> None:
            async with slots:
                await self._stop(run, action)

        await asyncio.gather(*(stop(r) for r in runs))
        return [r.run_id for r in runs], more, read

    async def cancel_and_wait(
        self, tenant: str, thread_id: str, run_id: str, action: str, wait_s: float
    ) -> RunRecord:
        """Cancel, then wait (up to `wait_s`) for the run's terminal event; its final record."""
        run = await self.cancel(tenant, thread_id, run_id, action)
        if run.status not in TERMINAL_STATUSES and wait_s > 0:
            sub = await self.tailer.subscribe(run.ref.keys.events, (0, 0))
            try:
                async with asyncio.timeout(wait_s):
                    while not has_terminal(await sub.get()):
                        pass
            except (TimeoutError, SubscriptionFailed):
                pass  # the final record says how far it got
            finally:
                self.tailer.unsubscribe(sub)
        return await self.store.load_run(run.ref) or run

    async def delete(self, tenant: str, thread_id: str, run_id: str) -> RunRecord:
        """Delete a finished run's record and event log."""
        run = await self.get(tenant, thread_id, run_id)
        if run.status not in TERMINAL_STATUSES:
            raise StoreError("conflict", f"Run {run.run_id} is {run.status}; cancel it first")
        await self.store.delete_run_records(run)
        return run

    async def open_stream(
        self, tenant: str, thread_id: str, run_id: str, after: tuple[int, int]
    ) -> RunStream | None:
        """Follow a run's log after `after`; None when the run ended so long ago its log expired."""
        run = await self.get(tenant, thread_id, run_id)
        ended = run.status in TERMINAL_STATUSES
        if ended and not await self.store.log_exists(run.ref):
            return None
        if ended and not run.temporary:
            # (A thread with a run that has not ended has no expiry to start again.)
            await self.store.touch_thread(run.tenant, run.thread_id)
        if self.pending_cancels is not None and not ended and run.reattach:
            await self.pending_cancels.withdraw(run.ref)  # a client re-joined in time
            await self.store.set_reattach(run.ref, False)
        sub = await self.tailer.subscribe(run.ref.keys.events, after)
        return RunStream(self, run, sub)

    async def cancel_unless_rejoined(self, run: RunRecord) -> None:
        """A cancel-on-disconnect run's stream ended, not by its client: cancel the run when the
        reattach grace has passed, unless a stream re-joins it first (reattach.py)."""
        if self.pending_cancels is None:
            await self.cancel(run.tenant, run.thread_id, run.run_id, "interrupt")
            return
        # The record says so first: a stream that opens the run withdraws the cancel only then
        # (one command less for every other stream).
        await self.store.set_reattach(run.ref, True)
        await self.pending_cancels.defer(run.ref)

    async def cancel_abandoned(self) -> int:
        """Cancel the runs no stream re-joined within the reattach grace; how many."""
        if self.pending_cancels is None:
            return 0
        cancelled = 0
        for ref in await self.pending_cancels.take_overdue():
            log.info(
                "cancelling a run its client did not come back to", extra={"run_id": ref.run_id}
            )
            with contextlib.suppress(StoreError):  # deleted meanwhile
                await self.cancel(ref.tenant, ref.thread_id, ref.run_id, "interrupt")
                cancelled += 1
        return cancelled


class RunStream:
    """One client's follow of one run's log: batches of entries, None for a quiet period."""

    def __init__(self, service: RunService, run: RunRecord, sub: Subscription) -> None:
        self.service = service
        self.run = run
        self.sub = sub
        self.finished = False

    async def batches(self) -> AsyncIterator[list[Entry] | None]:
        """Entries in order until the terminal event; None after each quiet heartbeat period.

        Raises:
            SubscriptionFailed: the run's log cannot be read (this stream ends, no other).
        """
        while True:
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation (the client leaving) that lands as the queue yields.
                async with asyncio.timeout(self.service.heartbeat_s):
                    batch = await self.sub.get()
            except TimeoutError:
                if await self.service.store.load_run(self.run.ref) is None:
                    self.finished = True  # deleted or expired while we watched
                    return
                yield None
                continue
            yield batch
            if has_terminal(batch):
                self.finished = True
                return

    async def close(self, cancel_unfinished: bool) -> None:
        """Stop following; with `cancel_unfinished`, a run left before its end is cancelled
        unless a stream re-joins it within the reattach grace.

        The gateway cancels at once when its client leaves (CancelRun); a stream that ends here
        without that was ended by a server going away, and its client was told to reconnect.
        """
        self.service.tailer.unsubscribe(self.sub)
        if not self.finished and cancel_unfinished:
            with contextlib.suppress(RedisError, StoreError):
                await self.service.cancel_unless_rejoined(self.run)
