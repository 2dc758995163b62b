"""The run engine, composed: one object per Redis concern, the services over them, the worker.

server.py builds it for the process; tests build it around a graph of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from langgraph.graph.state import CompiledStateGraph
from redis.asyncio import Redis

from cai_orchestrator.assistants import Assistants
from cai_orchestrator.cancel import CancelBus
from cai_orchestrator.config import Settings
from cai_orchestrator.events import EventBatcher, EventLogs
from cai_orchestrator.execution import RunExecutor
from cai_orchestrator.lease import Leases
from cai_orchestrator.queue import RunQueue
from cai_orchestrator.reattach import PendingCancels
from cai_orchestrator.runs import RunService
from cai_orchestrator.scheduler import FairQueue, Quota, Scheduler
from cai_orchestrator.state import ThreadState
from cai_orchestrator.store import RunStore
from cai_orchestrator.tailer import LogTailer
from cai_orchestrator.threads import ThreadService
from cai_orchestrator.worker import Worker

TAIL_BLOCK_MS = 2000


@dataclass
class Engine:
    """Everything a replica runs runs with."""

    store: RunStore
    queue: RunQueue
    bus: CancelBus
    batcher: EventBatcher
    tailer: LogTailer
    runs: RunService
    threads: ThreadService
    worker: Worker

    @classmethod
    def build(
        cls,
        settings: Settings,
        redis: Redis,
        tail_redis: Redis,
        pubsub_redis: Redis,
        graph: CompiledStateGraph,
        assistants: Assistants,
    ) -> Engine:
        """Compose the engine over three Redis clients (shared, tailer's, pub/sub's)."""
        s = settings
        store = RunStore(
            redis,
            s.run_record_ttl_seconds,
            runs_per_thread=s.runs_per_thread_index,
            thread_ttl_s=s.thread_ttl_seconds,
        )
        weights = {
            "premium": s.weight_premium,
            "standard": s.weight_standard,
            "batch": s.weight_batch,
        }
        queue = RunQueue(redis, s.replica_id, FairQueue(redis, weights, s.default_tier))
        bus = CancelBus(redis, pubsub_redis)
        batcher = EventBatcher(redis)  # every run's events, one pipeline at a time
        logs = EventLogs(
            redis,
            s.coalesce_ms / 1000,
            int(s.run_timeout_seconds * s.max_attempts) + s.event_log_ttl_seconds,
            s.within_thread_ttl(s.event_log_ttl_seconds),
            batcher,
            compact=s.compact_event_logs,
        )
        tailer = LogTailer(tail_redis, redis, s.replica_id, block_ms=TAIL_BLOCK_MS)
        state = ThreadState(graph)
        scheduler = Scheduler(redis, s.quota_retry_after_seconds, s.quota_repair_interval_seconds)
        pending_cancels = PendingCancels(redis, s.reattach_grace_seconds)
        runs = RunService(
            store,
            queue,
            bus,
            logs,
            tailer,
            assistants,
            s.stream_heartbeat_seconds,
            s.max_thread_state_bytes,
            pending_cancels,
            scheduler,
            Quota(s.default_tier, s.tenant_max_running_runs, s.tenant_max_queued_runs),
        )
        threads = ThreadService(store, state, runs, s.max_thread_state_bytes)
        executor = RunExecutor(s, store, queue, state, graph, assistants, bus, scheduler)
        leases = Leases(redis, s.replica_id, s.lease_seconds)
        worker = Worker(s, runs, executor, leases, logs, state)
        return cls(store, queue, bus, batcher, tailer, runs, threads, worker)

    async def start(self) -> None:
        """Create the queue's group, then start the tailer, the batcher and the worker."""
        await self.worker.ensure_group()
        self.tailer.start()
        self.batcher.start()
        self.worker.start()

    async def stop(self, grace_s: float) -> None:
        """Drain the worker within `grace_s`, then stop the loops."""
        await self.worker.shutdown(grace_s)
        await self.tailer.stop()
        await self.batcher.stop()
