"""The worker pool of a replica: slots, the life of each job, and shutdown.

Each job is held under a lease (lease.py). A replica that dies stops renewing; any other replica
then claims the job (queue.py: stale + claim, guarded by taking the lease), writes a `retry` event
and resumes the run from its last checkpoint. A worker that loses its lease stops executing at
once, so no run executes on two replicas. Executing and finishing a run is execution.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from cai_common.logging import bind, log_context
from cai_orchestrator import metrics
from cai_orchestrator.cancel import CancelBus
from cai_orchestrator.config import Settings
from cai_orchestrator.events import EventLogs
from cai_orchestrator.execution import RunControl, RunExecutor
from cai_orchestrator.lease import Leases
from cai_orchestrator.queue import Job, RunQueue
from cai_orchestrator.runs import RunService
from cai_orchestrator.state import ThreadState

log = logging.getLogger(__name__)
# A run taken for fair dispatch but not in the queue after this long: its replica died between
# the two steps, and any replica appends it (scheduler.FairQueue).
FEED_STALE_S = 10.0


@dataclass
class _Running:
    task: asyncio.Task[None]
    job: Job
    control: RunControl = field(default_factory=RunControl)


class Worker:
    """Takes jobs from the queue, bounded by `max_concurrent_runs`, and executes them."""

    def __init__(
        self,
        settings: Settings,
        runs: RunService,
        executor: RunExecutor,
        leases: Leases,
        logs: EventLogs,
        state: ThreadState,
    ) -> None:
        self.settings = settings
        self.runs = runs
        self.queue: RunQueue = runs.queue
        self.bus: CancelBus = runs.bus
        self.store = runs.store
        self.executor = executor
        self.leases = leases
        self.logs = logs
        self.state = state
        self.running: dict[str, _Running] = {}
        self._slots = asyncio.Semaphore(settings.max_concurrent_runs)
        self._accepting = True
        self._loops: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()
        self.bus.local = self.cancel_local

    async def ensure_group(self) -> None:
        """Create the queue's consumer group if needed."""
        await self.queue.ensure_group()
        self.ready.set()

    def start(self) -> None:
        """Start taking jobs, listening for cancels and reclaiming dead replicas' jobs."""
        self._loops = [
            asyncio.create_task(self._take_loop(), name="take-jobs"),
            asyncio.create_task(self.bus.listen(), name="cancel-listener"),
            asyncio.create_task(Reclaimer(self).loop(), name="reclaim"),
            asyncio.create_task(self._cancel_abandoned_loop(), name="reattach-grace"),
        ]

    async def _cancel_abandoned_loop(self) -> None:
        """Cancel the runs whose client did not re-join them within the reattach grace."""
        interval = min(1.0, max(self.settings.reattach_grace_seconds / 2, 0.05))
        while self._accepting:
            await asyncio.sleep(interval)
            try:
                await self.runs.cancel_abandoned()
            except (RedisError, OSError) as exc:
                log.warning("reattach sweep failed; retrying", extra={"error": str(exc)})

    @property
    def in_flight(self) -> int:
        """Runs executing on this replica now."""
        return len(self.running)

    async def _take_loop(self) -> None:
        backoff = 0.1
        while self._accepting:
            await self._slots.acquire()
            if not self._accepting:
                self._slots.release()
                break
            free = self._slots._value + 1  # noqa: SLF001 - take as many as we have slots for
            try:
                jobs = await self.queue.take(free, block_ms=1000)
                self.ready.set()
                backoff = 0.1
            except asyncio.CancelledError:
                self._slots.release()
                raise
            except (RedisError, OSError) as exc:
                self._slots.release()
                self.ready.clear()
                log.warning("queue read failed; retrying", extra={"error": str(exc)})
                if "NOGROUP" in str(exc):  # Redis came back empty: recreate the group
                    with contextlib.suppress(RedisError, OSError):
                        await self.ensure_group()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if not jobs:
                self._slots.release()
                continue
            for i, job in enumerate(jobs):  # one slot is held already; one more per extra job
                if i > 0:
                    await self._slots.acquire()
                self._spawn(job)

    def _spawn(self, job: Job) -> None:
        run_id = job.ref.run_id
        task = asyncio.create_task(self._run_job(job), name=f"run-{run_id}")
        self.running[run_id] = _Running(task, job)

        def done(_: asyncio.Task[None]) -> None:
            self.running.pop(run_id, None)
            self._slots.release()

        task.add_done_callback(done)

    async def _run_job(self, job: Job) -> None:
        token = bind(run_id=job.ref.run_id, replica=self.settings.replica_id)
        try:
            await self._attempt(job)
        except Exception:
            log.exception("run failed outside the graph")
        finally:
            log_context.reset(token)

    async def _attempt(self, job: Job) -> None:
        """One attempt at a job: claim it (lease, record, cancel flag: one round trip), execute
        it, then acknowledge it or let it go."""
        ref = job.ref
        s = self.settings
        bind(thread_id=ref.thread_id, tenant=ref.tenant)
        # The thread's head before the claim: the run's base if this is its first attempt (the
        # claim keeps a base recorded before), and what a retry resumes from.
        head = await self.state.head_id(ref.thread_keys)
        claim = await self.store.claim_run(
            ref,
            self.leases.owner,
            self.leases.ttl_ms,
            head,
            s.max_attempts,
            s.max_thread_state_bytes,
            self.logs.safety_ttl_s,
        )
        if claim.outcome == "missing":
            log.warning("job for an unknown or expired run; dropping it")
            await self.queue.ack(job)
            return
        if claim.outcome == "finished":
            await self.executor.queue_successor(ref)  # in case its worker died before
            await self.queue.ack(job)
            return
        if claim.outcome == "parked":
            log.info("job for a run that waits behind its thread's active run; dropping it")
            await self.queue.ack(job)  # the run is queued again when its turn comes
            return
        if claim.outcome == "leased":
            return  # another replica holds it; it stays pending until that lease lapses
        # The claim wrote the log's first event (and started its expiry).
        writer = self.logs.writer(ref.keys.events, expiry_set=True)
        running = self.running[ref.run_id]
        heartbeat = asyncio.create_task(
            self.leases.keep(
                ref,
                lambda: running.task.cancel(),
                lambda action: self.cancel_local(ref.run_id, action),
            )
        )
        finished = False
        try:
            finished = await self.executor.start_attempt(claim, writer, running.control, head)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await heartbeat
            if finished:  # the terminal event is written, and the lease went with it
                await self.queue.ack(job)
            else:  # handed back or lease lost: the next attempt streams after its `retry`
                await writer.abandon()
                with contextlib.suppress(RedisError):
                    await self.leases.release(ref)

    def cancel_local(self, run_id: str, action: str) -> bool:
        """Cancel a run executing on this replica; False if it is not here."""
        running = self.running.get(run_id)
        if running is None:
            return False
        control = running.control
        if control.cancel_action is not None:
            return True  # already cancelling: never interrupt its own clean-up
        control.cancel_action = action
        # Only interrupt the graph itself; a run still starting honours the cancel on entry.
        log.info(
            "cancelling the run",
            extra={"run_id": run_id, "action": action, "started": control.executing},
        )
        if control.executing:
            running.task.cancel()
        return True

    async def shutdown(self, grace_s: float, handback_s: float | None = None) -> None:
        """Stop taking jobs, let runs finish within `grace_s`, then hand the rest back, all
        within `handback_s` (default `grace_s`) of now: the caller's whole budget."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(grace_s, handback_s or 0.0)
        self._accepting = False
        for loop_task in self._loops:
            loop_task.cancel()
        for loop_task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
        if self.running:
            log.info("draining runs", extra={"runs": len(self.running), "grace_s": grace_s})
            await asyncio.wait([r.task for r in self.running.values()], timeout=grace_s)
        leftover = list(self.running.values())
        for r in leftover:
            r.task.cancel()
        if leftover:
            # Cancelled runs unwind (their checkpoints stay) and release their leases. One that
            # has not in half the time left is handed back anyway: a replica that takes it while
            # the lease is held leaves the entry pending, reclaimed once the lease lapses.
            await asyncio.wait(
                [r.task for r in leftover], timeout=max(deadline - loop.time(), 0.0) / 2
            )
        # A fresh queue entry that any replica takes now, not a pending one that waits for
        # the lease to lapse.
        await asyncio.gather(*(self._hand_back(r.job) for r in leftover))

    async def _hand_back(self, job: Job) -> None:
        with contextlib.suppress(RedisError):
            await self.queue.hand_back(job)
            log.info("handed run back", extra={"run_id": job.ref.run_id})


class Reclaimer:
    """Takes over the jobs of dead replicas, and re-queues runs whose queue append was lost."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    async def loop(self) -> None:
        interval = max(self.worker.settings.lease_seconds / 2, 0.5)
        min_idle = int(self.worker.settings.lease_seconds * 1000)
        while self.worker._accepting:
            await asyncio.sleep(interval)
            try:
                await self.reclaim_once(min_idle)
                await self.worker.runs.requeue_lost()
                await self.worker.queue.refeed_stale(FEED_STALE_S)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("reclaim failed; retrying", extra={"error": str(exc)})

    async def reclaim_once(self, min_idle_ms: int) -> int:
        """Claim pending jobs whose lease lapsed (their replica died or handed them back)."""
        if self.worker._slots.locked():
            return 0
        claimed = 0
        for stale in await self.worker.queue.stale(min_idle_ms):
            if self.worker._slots.locked():
                break
            if stale.job is None:
                await self.worker.queue.drop_entry(stale.entry_id)
                continue
            ref = stale.job.ref
            if ref.run_id in self.worker.running or await self.worker.leases.held(ref):
                continue  # alive somewhere
            job = await self.worker.queue.claim(stale.entry_id, min_idle_ms)
            if job is None:
                continue  # another replica claimed it first
            await self.worker._slots.acquire()
            log.info("reclaimed run", extra={"run_id": ref.run_id, "from": stale.consumer})
            metrics.RECLAIMS.inc()
            self.worker._spawn(job)
            claimed += 1
        return claimed
