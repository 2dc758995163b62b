"""The worker pool of a replica: takes runs from the Redis Streams queue and executes them.

Each job is held under a lease (a key with a TTL, renewed by heartbeat). A replica that dies stops
renewing; any other replica then claims the job (XPENDING + XCLAIM, guarded by taking the lease
with SET NX), writes a `retry` event and resumes the run from its last checkpoint. A worker that
loses its lease stops executing at once, so no run executes on two replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.graph.state import CompiledStateGraph
from opentelemetry import trace
from opentelemetry.trace import SpanKind
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from cai_common.logging import bind, log_context
from cai_common.telemetry import extract_context
from cai_orchestrator import keys, metrics
from cai_orchestrator.config import Settings
from cai_orchestrator.events import EventBatcher, EventWriter, dumps
from cai_orchestrator.runner import execute
from cai_orchestrator.store import TERMINAL_STATUSES, RunRecord, RunStore

log = logging.getLogger(__name__)
TRACER = trace.get_tracer("cai.orchestrator")

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Worker:
    """Takes jobs from the queue, bounded by `max_concurrent_runs`, and executes them."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        store: RunStore,
        graph: CompiledStateGraph,
        run_settings: Callable[[RunRecord], Awaitable[dict[str, Any]]],
        pubsub_redis: Redis | None = None,
        batcher: EventBatcher | None = None,
    ) -> None:
        self.settings = settings
        self.batcher = batcher
        self.redis = redis
        self.store = store
        self.graph = graph
        self.run_settings = run_settings
        self.pubsub_redis = pubsub_redis or redis
        self.consumer = settings.replica_id
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.entries: dict[str, bytes] = {}
        self.executing: set[str] = set()
        self.cancel_actions: dict[str, str] = {}
        self._slots = asyncio.Semaphore(settings.max_concurrent_runs)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self._accepting = True
        self._loops: list[asyncio.Task[None]] = []
        self.ready = asyncio.Event()

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if needed."""
        try:
            await self.redis.xgroup_create(keys.QUEUE, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self.ready.set()

    def start(self) -> None:
        """Start taking jobs, listening for cancels and reclaiming dead replicas' jobs."""
        self._loops = [
            asyncio.create_task(self._take_loop(), name="take-jobs"),
            asyncio.create_task(self._cancel_listener(), name="cancel-listener"),
            asyncio.create_task(self._reclaim_loop(), name="reclaim"),
        ]

    @property
    def in_flight(self) -> int:
        """Runs executing on this replica now."""
        return len(self.tasks)

    async def _take_loop(self) -> None:
        backoff = 0.1
        while self._accepting:
            await self._slots.acquire()
            if not self._accepting:
                self._slots.release()
                break
            free = self._slots._value + 1  # noqa: SLF001 - take as many as we have slots for
            try:
                reply = await self.redis.xreadgroup(
                    keys.GROUP, self.consumer, {keys.QUEUE: ">"}, count=free, block=1000
                )
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
            entries = [e for _, es in (reply or ()) for e in es]
            if not entries:
                self._slots.release()
                continue
            # One slot is held already; take one more per extra job.
            for i, (entry_id, fields) in enumerate(entries):
                if i > 0:
                    await self._slots.acquire()
                self._spawn(entry_id, fields, reclaimed=False)

    def _spawn(self, entry_id: bytes, fields: dict[bytes, bytes], reclaimed: bool) -> None:
        run_id = fields.get(b"run_id", b"").decode()
        task = asyncio.create_task(self._run_job(entry_id, run_id, reclaimed), name=f"run-{run_id}")
        self.tasks[run_id] = task
        self.entries[run_id] = entry_id

        def done(_: asyncio.Task[None]) -> None:
            self.tasks.pop(run_id, None)
            self.entries.pop(run_id, None)
            self.cancel_actions.pop(run_id, None)
            self._slots.release()

        task.add_done_callback(done)

    async def _ack(self, entry_id: bytes) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(keys.QUEUE, keys.GROUP, entry_id)
            pipe.xdel(keys.QUEUE, entry_id)
            await pipe.execute()

    async def _run_job(self, entry_id: bytes, run_id: str, reclaimed: bool) -> None:
        token = bind(run_id=run_id, replica=self.consumer)
        try:
            await self._run_job_inner(entry_id, run_id, reclaimed)
        except Exception:
            log.exception("run failed outside the graph")
        finally:
            log_context.reset(token)

    async def _run_job_inner(self, entry_id: bytes, run_id: str, reclaimed: bool) -> None:
        s = self.settings
        h = await self.redis.hgetall(keys.run(run_id))
        if not h:
            log.warning("job for an unknown or expired run; dropping it")
            await self._ack(entry_id)
            return
        run = RunRecord.from_hash(h)
        bind(thread_id=run.thread_id, tenant=run.tenant)
        if run.status in TERMINAL_STATUSES:
            await self._ack(entry_id)
            return
        lease_key = keys.lease(run_id)
        got = await self.redis.set(
            lease_key, self.consumer, nx=True, px=int(s.lease_seconds * 1000)
        )
        if not got:
            return  # another replica holds it; it stays pending until that lease lapses
        writer = EventWriter(
            self.redis,
            run_id,
            s.coalesce_ms / 1000,
            int(s.run_timeout_seconds * s.max_attempts) + s.event_log_ttl_seconds,
            self.batcher,
        )
        attempt = run.attempt + 1
        heartbeat = asyncio.create_task(self._heartbeat(lease_key, run_id))
        try:
            base = None
            if run.base_checkpoint is None and run.thread_id:
                base = run.base_checkpoint = await self._head_checkpoint(run.thread_id)
            await self.store.mark_running(run_id, self.consumer, attempt, base)
            if attempt > 1:
                metrics.RETRIES.inc()
                await writer.emit("retry", dumps({"attempt": attempt, "run_id": run_id}))
            else:
                created = datetime.fromisoformat(run.created_at).timestamp()
                metrics.QUEUE_WAIT.observe(max(0.0, time.time() - created))
            if attempt > s.max_attempts:
                await self._finish(
                    run,
                    writer,
                    "error",
                    "error",
                    {
                        "error": "MaxAttemptsExceeded",
                        "message": f"Run failed {s.max_attempts} times (its worker was lost)",
                    },
                )
                return
            action = await self.redis.get(keys.cancel(run_id))
            if action:
                await self._finish_cancelled(run, writer, action.decode())
                return
            await writer.emit("metadata", dumps({"run_id": run_id, "attempt": attempt}))
            await self._execute(run, writer)
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await heartbeat
            if (
                await self.redis.hget(keys.run(run_id), "status") or b""
            ).decode() in TERMINAL_STATUSES:
                await self._ack(entry_id)
            else:  # handed back or lease lost: the next attempt streams after its `retry`
                await writer.abandon()
            with contextlib.suppress(RedisError):
                await self._release(keys=[lease_key], args=[self.consumer])

    async def _execute(self, run: RunRecord, writer: EventWriter) -> None:
        started = time.monotonic()
        metrics.RUNS_IN_FLIGHT.inc()
        # The run span continues the trace of the request that created the run (carried in the
        # queued job), so one trace covers gateway → orchestrator → queue → worker → retriever.
        with TRACER.start_as_current_span(
            "run",
            context=extract_context(run.trace),
            kind=SpanKind.CONSUMER,
            attributes={
                "cai.run_id": run.run_id,
                "cai.thread_id": run.thread_id,
                "cai.assistant_id": run.assistant_id,
                "cai.attempt": run.attempt + 1,
                "messaging.system": "redis",
                "messaging.destination.name": keys.QUEUE,
                "gen_ai.conversation.id": run.thread_id,
            },
        ) as span:
            try:
                status = await self._execute_inner(run, writer)
            finally:
                metrics.RUNS_IN_FLIGHT.dec()
            span.set_attribute("cai.run_status", status)
        metrics.RUN_DURATION.labels(status).observe(time.monotonic() - started)

    async def _execute_inner(self, run: RunRecord, writer: EventWriter) -> str:
        self.executing.add(run.run_id)
        try:
            action = self.cancel_actions.get(run.run_id)
            if action is not None:  # cancelled while it was starting
                await self._finish_cancelled(run, writer, action)
                return "interrupted"
            return await self._execute_graph(run, writer)
        finally:
            self.executing.discard(run.run_id)

    async def _execute_graph(self, run: RunRecord, writer: EventWriter) -> str:
        s = self.settings
        started = time.monotonic()
        try:
            async with asyncio.timeout(s.run_timeout_seconds):
                await execute(
                    self.graph,
                    run,
                    writer,
                    await self.run_settings(run),
                    resume=run.attempt > 0
                    and run.base_checkpoint != await self._head_checkpoint(run.thread_id),
                )
        except TimeoutError:
            await self._finish(
                run,
                writer,
                "timeout",
                "idle",
                {
                    "error": "Timeout",
                    "message": f"Run exceeded its {s.run_timeout_seconds:g}s deadline",
                },
            )
            return "timeout"
        except asyncio.CancelledError:
            action = self.cancel_actions.get(run.run_id)
            if action is None:
                raise  # the replica is shutting down: the run is handed back, not finished
            await self._finish_cancelled(run, writer, action)
            return "interrupted"
        except Exception as exc:  # the graph failed: the run ends in a clear error event
            log.warning("run ended in error", extra={"error": repr(exc)})
            await self._finish(
                run, writer, "error", "error", {"error": type(exc).__name__, "message": str(exc)}
            )
            return "error"
        if run.run_id in self.cancel_actions:
            log.info("the cancel came after the graph had finished; the run succeeded")
        state = await self.graph.aget_state({"configurable": {"thread_id": run.thread_id}})
        thread_status = "interrupted" if state.next else "idle"
        await self._finish(run, writer, "success", thread_status, None, "end")
        log.info("run finished", extra={"seconds": round(time.monotonic() - started, 3)})
        return "success"

    async def _head_checkpoint(self, thread_id: str) -> str:
        """Id of the thread's newest checkpoint ("" when it has none)."""
        saver = self.graph.checkpointer
        config: RunnableConfig = {"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}}
        found = await saver.aget_tuple(config)  # type: ignore[union-attr]
        return str(found.config["configurable"]["checkpoint_id"]) if found else ""

    async def _rollback(self, run: RunRecord) -> None:
        """Make the thread's state what it was before the run (its steps are discarded).

        Neither the Redis nor the Postgres saver can delete single checkpoints, so the checkpoint
        the run started from becomes the head again (the run's steps stay only as an abandoned
        branch of the history); a run that was the thread's first empties the thread.
        """
        base = run.base_checkpoint
        if base is None or base == await self._head_checkpoint(run.thread_id):
            return  # the run wrote nothing
        if base == "":
            await self.graph.checkpointer.adelete_thread(run.thread_id)  # type: ignore[union-attr]
            return
        config: RunnableConfig = {
            "configurable": {"thread_id": run.thread_id, "checkpoint_ns": "", "checkpoint_id": base}
        }
        await self.graph.aupdate_state(config, None)

    async def _finish_cancelled(self, run: RunRecord, writer: EventWriter, action: str) -> None:
        if action == "rollback" and run.thread_id:
            await self._rollback(run)
        await self._finish(
            run,
            writer,
            "interrupted",
            "idle",
            {"action": action, "message": "Run was cancelled"},
            "cancelled",
        )

    async def _finish(
        self,
        run: RunRecord,
        writer: EventWriter,
        status: str,
        thread_status: str,
        payload: dict[str, Any] | None,
        event: str | None = None,
    ) -> None:
        await writer.finish()
        message = (payload or {}).get("message", "") if status != "success" else ""
        if run.temporary:
            await self._drop_temporary_thread(run)
        await self.store.finish_run(
            run,
            status,
            thread_status,
            message,
            (event or status, dumps(payload)),
            self.settings.event_log_ttl_seconds,
        )

    async def _drop_temporary_thread(self, run: RunRecord) -> None:
        """A stateless run's thread goes away with it; the run's record and events stay."""
        await self.graph.checkpointer.adelete_thread(run.thread_id)  # type: ignore[union-attr]
        await self.redis.delete(
            keys.thread(run.thread_id),
            keys.thread_pending(run.thread_id),
            keys.thread_runs(run.thread_id),
        )

    async def _heartbeat(self, lease_key: str, run_id: str) -> None:
        interval = self.settings.lease_seconds / 3
        ms = int(self.settings.lease_seconds * 1000)
        while True:
            await asyncio.sleep(interval)
            try:
                renewed = await self._renew(keys=[lease_key], args=[self.consumer, ms])
            except (RedisError, OSError):
                continue  # Redis blips: keep trying until the lease would have lapsed
            if not renewed:
                log.error("lease lost; stopping the run so it never runs twice")
                task = self.tasks.get(run_id)
                if task is not None:
                    task.cancel()
                return
            # A cancel published while the listener was reconnecting is not lost: the flag stays.
            with contextlib.suppress(RedisError, OSError):
                action = await self.redis.get(keys.cancel(run_id))
                if action:
                    self.cancel_local(run_id, action.decode())

    async def _cancel_listener(self) -> None:
        while True:
            try:
                pubsub = self.pubsub_redis.pubsub()
                await pubsub.subscribe(keys.CANCEL_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    run_id, _, action = message["data"].decode().partition(" ")
                    self.cancel_local(run_id, action or "interrupt")
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("cancel listener lost Redis; retrying", extra={"error": str(exc)})
                await asyncio.sleep(1.0)

    def cancel_local(self, run_id: str, action: str) -> bool:
        """Cancel a run executing on this replica; False if it is not here."""
        task = self.tasks.get(run_id)
        if task is None:
            return False
        if run_id in self.cancel_actions:
            return True  # already cancelling: never interrupt its own clean-up
        self.cancel_actions[run_id] = action
        # Only interrupt the graph itself; a run still starting honours the cancel on entry.
        executing = run_id in self.executing
        log.info(
            "cancelling the run", extra={"run_id": run_id, "action": action, "started": executing}
        )
        if executing:
            task.cancel()
        return True

    async def _reclaim_loop(self) -> None:
        interval = max(self.settings.lease_seconds / 2, 0.5)
        min_idle = int(self.settings.lease_seconds * 1000)
        while self._accepting:
            await asyncio.sleep(interval)
            try:
                await self.reclaim_once(min_idle)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("reclaim failed; retrying", extra={"error": str(exc)})

    async def reclaim_once(self, min_idle_ms: int) -> int:
        """Claim pending jobs whose lease lapsed (their replica died or handed them back)."""
        if self._slots.locked():
            return 0
        pending = await self.redis.xpending_range(
            keys.QUEUE, keys.GROUP, min="-", max="+", count=100, idle=min_idle_ms
        )
        claimed = 0
        for p in pending:
            if self._slots.locked():
                break
            entry_id = p["message_id"]
            entries = await self.redis.xrange(keys.QUEUE, entry_id, entry_id)
            if not entries:
                await self.redis.xack(keys.QUEUE, keys.GROUP, entry_id)
                continue
            run_id = entries[0][1].get(b"run_id", b"").decode()
            if run_id in self.tasks or await self.redis.exists(keys.lease(run_id)):
                continue  # alive somewhere
            got = await self.redis.xclaim(
                keys.QUEUE, keys.GROUP, self.consumer, min_idle_ms, [entry_id]
            )
            if not got:
                continue  # another replica claimed it first
            await self._slots.acquire()
            log.info("reclaimed run", extra={"run_id": run_id, "from": p["consumer"].decode()})
            metrics.RECLAIMS.inc()
            self._spawn(entry_id, got[0][1], reclaimed=True)
            claimed += 1
        return claimed

    async def shutdown(self, grace_s: float) -> None:
        """Stop taking jobs, let runs finish within `grace_s`, then hand the rest back."""
        self._accepting = False
        for loop_task in self._loops:
            loop_task.cancel()
        for loop_task in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task
        if self.tasks:
            log.info("draining runs", extra={"runs": len(self.tasks), "grace_s": grace_s})
            await asyncio.wait(list(self.tasks.values()), timeout=grace_s)
        leftover = [(run_id, task, self.entries[run_id]) for run_id, task in self.tasks.items()]
        for _, task, _ in leftover:
            task.cancel()
        for run_id, task, entry_id in leftover:
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # Hand back at once: a fresh queue entry that any replica takes now, instead of a
            # pending one that waits for the lease to lapse.
            with contextlib.suppress(RedisError):
                trace = await self.redis.hget(keys.run(run_id), "trace") or b"{}"
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.xadd(keys.QUEUE, {b"run_id": run_id.encode(), b"trace": trace})
                    pipe.xack(keys.QUEUE, keys.GROUP, entry_id)
                    pipe.xdel(keys.QUEUE, entry_id)
                    await pipe.execute()
            log.info("handed run back", extra={"run_id": run_id})
