"""How one attempt of a run executes and ends: the graph under a deadline, then exactly one
terminal event (end, error, timeout or cancelled) written with the run's final status."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from langgraph.graph.state import CompiledStateGraph
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from cai_common.runs import CANCELLED, END, ERROR, INTERRUPTED, SUCCESS, TIMEOUT
from cai_common.telemetry import extract_context
from cai_orchestrator import keys, metrics
from cai_orchestrator.assistants import DEFAULT_DURABILITY, Assistants
from cai_orchestrator.cancel import CancelBus
from cai_orchestrator.config import Settings
from cai_orchestrator.events import EventWriter, dumps
from cai_orchestrator.failures import report
from cai_orchestrator.queue import RunQueue
from cai_orchestrator.records import RunRecord, RunRef, state_too_large
from cai_orchestrator.runner import DEFAULT_RECURSION_LIMIT, execute
from cai_orchestrator.scheduler import Scheduler
from cai_orchestrator.state import ThreadState, json_size
from cai_orchestrator.store import Claim, RunStore

log = logging.getLogger(__name__)
TRACER = trace.get_tracer("cai.orchestrator")


@dataclass
class RunControl:
    """What the worker knows of a job it executes: whether the graph runs, any cancel asked."""

    cancel_action: str | None = None
    executing: bool = False


@dataclass
class RunExecutor:
    """Executes runs' graphs and finishes them."""

    settings: Settings
    store: RunStore
    queue: RunQueue
    state: ThreadState
    graph: CompiledStateGraph
    assistants: Assistants
    bus: CancelBus
    # Releases a finished run from its tenant's quota (None: no quotas; tests only).
    scheduler: Scheduler | None = None

    def run_settings(self, run: RunRecord, thread_metadata: bytes) -> dict[str, Any]:
        """What a run needs beyond its record: limits, durability and the thread's prompt
        override (from `thread_metadata`, the thread's metadata as the claim read it)."""
        assistant = self.assistants.get(run.assistant_id)
        prompt = None
        # Only an assistant that allows it reads the override: the metadata is parsed for those.
        if assistant and assistant.allow_system_prompt_override and not run.temporary:
            prompt = orjson.loads(thread_metadata or b"{}").get("system_prompt")
        return {
            "recursion_limit": assistant.recursion_limit if assistant else DEFAULT_RECURSION_LIMIT,
            "thread_system_prompt": prompt,
            "durability": assistant.durability if assistant else DEFAULT_DURABILITY,
        }

    async def start_attempt(
        self, claim: Claim, writer: EventWriter, control: RunControl, head: str
    ) -> bool:
        """Go on with an attempt the worker claimed (`RunStore.claim_run` recorded it and wrote
        `retry`/`metadata`): give up past the attempt limit, honour a cancel asked before it
        started, refuse it if the thread grew too large while it waited, else execute it.

        `head` is the thread's head checkpoint read just before the claim. Returns True once the
        run's terminal event is written; an attempt that does not end (handed back, its lease
        lost) raises instead.
        """
        run = claim.run
        assert run is not None
        s = self.settings
        if run.attempt > 0:
            metrics.RETRIES.inc()
        else:
            created = datetime.fromisoformat(run.created_at).timestamp()
            metrics.QUEUE_WAIT.labels(run.tier).observe(max(0.0, time.time() - created))
        if claim.outcome == "exhausted":
            message = f"Run failed {s.max_attempts} times (its worker was lost)"
            payload = {"error": "MaxAttemptsExceeded", "message": message}
            await self.finish(run, writer, "error", "error", payload)
        elif claim.outcome == "cancel":
            await self.finish_cancelled(run, writer, claim.detail)
        elif claim.outcome == "too_large":
            current = int(claim.detail or 0)
            limit = s.max_thread_state_bytes
            too_large = state_too_large(run.thread_id, current, run.write_bytes or 0, limit)
            message = too_large.message if too_large else "The thread's state is too large"
            payload = {"error": "ThreadStateTooLarge", "message": message}
            await self.finish(run, writer, ERROR, "error", payload, state_bytes=current)
        else:
            await self.execute(run, writer, control, claim.thread_metadata, head)
        return True

    async def execute(
        self,
        run: RunRecord,
        writer: EventWriter,
        control: RunControl,
        thread_metadata: bytes = b"{}",
        head: str | None = None,
    ) -> None:
        """Execute the graph in a span that continues the trace of the request that created it."""
        started = time.monotonic()
        metrics.RUNS_IN_FLIGHT.inc()
        # One trace covers gateway → orchestrator → queue → worker → retriever.
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
                control.executing = True
                if control.cancel_action is not None:  # cancelled while it was starting
                    await self.finish_cancelled(run, writer, control.cancel_action)
                    status = INTERRUPTED
                else:
                    status = await self._execute_graph(run, writer, control, thread_metadata, head)
            finally:
                control.executing = False
                metrics.RUNS_IN_FLIGHT.dec()
            span.set_attribute("cai.run_status", status)
        metrics.RUN_DURATION.labels(status).observe(time.monotonic() - started)

    async def _execute_graph(
        self,
        run: RunRecord,
        writer: EventWriter,
        control: RunControl,
        thread_metadata: bytes,
        head: str | None,
    ) -> str:
        s = self.settings
        started = time.monotonic()
        try:
            async with asyncio.timeout(s.run_timeout_seconds):
                if run.attempt > 0 and head is None:
                    head = await self.state.head_id(run.ref.thread_keys)
                # A retried run whose thread moved on from where the run started had checkpointed
                # progress: it continues from there instead of applying its input again.
                resume = run.attempt > 0 and run.base_checkpoint != head
                settings = self.run_settings(run, thread_metadata)
                outcome = await execute(self.graph, run, writer, settings, resume)
        except TimeoutError:
            message = f"Run exceeded its {s.run_timeout_seconds:g}s deadline"
            await self.finish(
                run, writer, TIMEOUT, "idle", {"error": "Timeout", "message": message}
            )
            return TIMEOUT
        except asyncio.CancelledError:
            if control.cancel_action is None:
                raise  # the replica is shutting down: the run is handed back, not finished
            await self.finish_cancelled(run, writer, control.cancel_action)
            return INTERRUPTED
        except Exception as exc:  # the graph failed: the run ends in a clear error event
            # The client gets a kind, a fixed message and an error id; the details (upstream
            # bodies, addresses) only go to the log line with that id.
            failure = report(exc, "run ended in error")
            await self.finish(run, writer, ERROR, "error", failure.payload(), error=failure.summary)
            return ERROR
        if control.cancel_action is not None:
            log.info("the cancel came after the graph had finished; the run succeeded")
        if outcome.values is None:  # the stream showed no state: read it
            waiting, size = await self.state.waiting_and_size(run.ref.thread_keys)
        else:  # the stream's last values and its interrupt say it all (no state read)
            waiting, size = outcome.interrupted, json_size(outcome.values or None)
        thread_status = "interrupted" if waiting else "idle"
        await self.finish(run, writer, SUCCESS, thread_status, None, END, state_bytes=size)
        log.info("run finished", extra={"seconds": round(time.monotonic() - started, 3)})
        return SUCCESS

    async def finish_cancelled(self, run: RunRecord, writer: EventWriter, action: str) -> None:
        """End a cancelled run (a rollback first restores the thread's state)."""
        if action == "rollback" and run.thread_id:
            await self.state.rollback(run.ref.thread_keys, run.base_checkpoint)
        payload = {"action": action, "message": "Run was cancelled"}
        await self.finish(run, writer, INTERRUPTED, "idle", payload, CANCELLED)

    async def finish(
        self,
        run: RunRecord,
        writer: EventWriter,
        status: str,
        thread_status: str,
        payload: dict[str, Any] | None,
        event: str | None = None,
        state_bytes: int | None = None,
        error: str | None = None,
    ) -> None:
        """Write what is pending, then the terminal event with the final status (and the size
        the thread's state has now, for the state limit); queue the thread's next run. `error`
        is the run record's error (default: the payload's message)."""
        await writer.finish()
        message = (payload or {}).get("message", "") if status != SUCCESS else ""
        if error is not None:
            message = error
        if run.temporary:  # a stateless run's thread goes away with it
            await self.state.delete(run.ref.thread_keys)
            await self.store.drop_thread_keys(run.ref)
        elif run.thread_id and state_bytes is None:
            state_bytes = await self.state.size(run.ref.thread_keys)
        terminal = (event or status, dumps(payload))
        nxt = await self.store.finish_run(
            run,
            status,
            thread_status,
            message,
            terminal,
            self.settings.event_log_ttl_seconds,
            state_bytes,
            lease_owner=self.settings.replica_id,
        )
        if self.scheduler is not None:  # a second step: the quota is not the thread's slot
            await self.scheduler.release(run.ref)
        if nxt is not None:  # (the thread's next run: the same tenant, so the same tier)
            await self.queue.append(RunRef(run.tenant, run.thread_id, nxt[0]), nxt[1], run.tier)

    async def queue_successor(self, ref: RunRef) -> None:
        """A finished run's worker may have died before queueing the thread's next run."""
        nxt = await self.store.successor(ref)
        if nxt is not None:
            await self.queue.append(RunRef(ref.tenant, ref.thread_id, nxt[0]), nxt[1])
