"""Run and thread records in Redis: the one module that reads and writes them.

A thread has at most one *active* run. Creating a run on a busy thread follows the run's
multitask strategy: `reject` refuses it, `enqueue` parks it in the thread's pending list, and
`interrupt`/`rollback` park it first in line (the caller then asks the active run to stop).
Finishing a run hands the thread to the next pending one. Both decisions happen inside one Lua
script each (lua.py), so two gateways racing on one thread cannot both start a run. Queueing a
dispatched run is the caller's job (queue.py), a second step that a crash cannot lose.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from cai_orchestrator import keys, lua
from cai_orchestrator.records import (
    STRATEGIES,
    Created,
    NewRun,
    RunRecord,
    RunRef,
    StoreError,
    ThreadRecord,
    not_found,
    now_iso,
)

# Stateless runs with an Idempotency-Key get a run id derived from it, so the retried request
# finds the run it created (a stateless run's thread is new each time, so the key cannot live
# with a thread the caller names).
_IDEMPOTENT_RUN_IDS = uuid.UUID("6f1c2a86-55d5-4c0e-9a57-3a4bd0d5e0f1")
# How long the run-id → thread index outlives an unfinished run (finishing shortens it to the
# record's TTL).
_INDEX_TTL_S = 30 * 24 * 3600


def _decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class ThreadStore:
    """Thread records in Redis (a thread's state lives in the checkpointer)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    async def create_thread(
        self, tenant: str, thread_id: str, metadata: dict[str, Any], if_exists: str
    ) -> ThreadRecord:
        """Create a thread; ALREADY_EXISTS (or the existing one with do_nothing)."""
        thread_id = thread_id or str(uuid.uuid4())
        tk = keys.ThreadKeys(tenant, thread_id)
        ts = now_iso()
        if not await self.redis.hsetnx(tk.record, "tenant", tenant):
            existing = await self.get_thread(tenant, thread_id)
            if existing is not None and if_exists == "do_nothing":
                return existing
            raise StoreError("already_exists", f"Thread {thread_id} already exists")
        fields = {
            "thread_id": thread_id,
            "created_at": ts,
            "updated_at": ts,
            "metadata": orjson.dumps(metadata),
            "status": "idle",
            "active_run": "",
        }
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(tk.record, mapping=fields)
            pipe.zadd(keys.tenant_threads(tenant), {thread_id: time.time()})
            await pipe.execute()
        return ThreadRecord(thread_id, tenant, ts, ts, metadata, "idle", "")

    async def get_thread(self, tenant: str, thread_id: str) -> ThreadRecord | None:
        """The tenant's thread, or None."""
        h = await self.redis.hgetall(keys.ThreadKeys(tenant, thread_id).record)
        if not h or b"thread_id" not in h:
            return None
        return ThreadRecord.from_hash(h)

    async def search_threads(
        self, tenant: str, metadata: dict[str, Any], status: str, limit: int, offset: int
    ) -> list[ThreadRecord]:
        """The tenant's threads, newest first, whose metadata contains `metadata`."""
        ids = await self.redis.zrevrange(keys.tenant_threads(tenant), 0, -1)
        found: list[ThreadRecord] = []
        for start in range(0, len(ids), 500):
            async with self.redis.pipeline(transaction=False) as pipe:
                for tid in ids[start : start + 500]:
                    pipe.hgetall(keys.ThreadKeys(tenant, tid.decode()).record)
                hashes = await pipe.execute()
            for h in hashes:
                if not h or b"thread_id" not in h:
                    continue
                t = ThreadRecord.from_hash(h)
                if status and t.status != status:
                    continue
                if any(t.metadata.get(k) != v for k, v in metadata.items()):
                    continue
                found.append(t)
            if len(found) >= offset + limit:
                break
        return found[offset : offset + limit]

    async def update_thread_metadata(
        self, tenant: str, thread_id: str, metadata: dict[str, Any]
    ) -> ThreadRecord:
        """Merge `metadata` into the thread's metadata."""
        thread = await self.get_thread(tenant, thread_id)
        if thread is None:
            raise not_found("Thread", thread_id)
        thread.metadata = {**thread.metadata, **metadata}
        thread.updated_at = now_iso()
        await self.redis.hset(
            keys.ThreadKeys(tenant, thread_id).record,
            mapping={"metadata": orjson.dumps(thread.metadata), "updated_at": thread.updated_at},
        )
        return thread

    async def delete_thread_records(self, tenant: str, thread_id: str) -> int:
        """Delete the thread's record, its runs' records and event logs; returns runs deleted."""
        tk = keys.ThreadKeys(tenant, thread_id)
        run_ids = [r.decode() for r in await self.redis.zrange(tk.runs, 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in run_ids:
                rk = tk.run(rid)
                pipe.delete(rk.record, rk.events, rk.cancel)
                pipe.delete(keys.run_thread(tenant, rid))
            pipe.delete(tk.record, tk.runs, tk.pending)
            pipe.zrem(keys.tenant_threads(tenant), thread_id)
            await pipe.execute()
        return len(run_ids)

    async def drop_thread_keys(self, ref: RunRef) -> None:
        """A stateless run's temporary thread goes; the run's own record and events stay."""
        tk = ref.thread_keys
        await self.redis.delete(tk.record, tk.pending, tk.runs)

    async def list_runs(
        self, tenant: str, thread_id: str, limit: int, offset: int, status: str = ""
    ) -> list[RunRecord]:
        """The thread's runs, newest first."""
        tk = keys.ThreadKeys(tenant, thread_id)
        ids = await self.redis.zrevrange(tk.runs, 0, -1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in ids:
                pipe.hgetall(tk.run(rid.decode()).record)
            hashes = await pipe.execute()
        runs = [RunRecord.from_hash(h) for h in hashes if h and b"run_id" in h]
        if status:
            runs = [r for r in runs if r.status == status]
        return runs[offset : offset + limit]

    async def parked_position(self, ref: RunRef) -> int | None:
        """1-based place of a run parked behind its thread's active run, or None."""
        waiting = await self.redis.lrange(ref.thread_keys.pending, 0, -1)
        run_id = ref.run_id.encode()
        return waiting.index(run_id) + 1 if run_id in waiting else None

    async def is_active(self, ref: RunRef) -> bool:
        """Whether the run is its thread's active run (dispatched, not parked)."""
        active = await self.redis.hget(ref.thread_keys.record, "active_run")
        return _decoded(active or b"") == ref.run_id

    async def successor(self, ref: RunRef) -> tuple[str, str] | None:
        """The thread's active run (id, trace) if it is another one still waiting to start."""
        active = _decoded(await self.redis.hget(ref.thread_keys.record, "active_run") or b"")
        if not active or active == ref.run_id:
            return None
        nxt = ref.thread_keys.run(active).record
        status, trace = await self.redis.hmget(nxt, ["status", "trace"])
        if status != b"pending":
            return None
        return active, _decoded(trace or b"{}")


class RunStore(ThreadStore):
    """Runs in Redis, with their threads' records (ThreadStore)."""

    def __init__(self, redis: Redis, run_ttl_s: int, idempotency_ttl_s: int = 86400) -> None:
        super().__init__(redis)
        self.run_ttl = run_ttl_s
        self.idempotency_ttl = idempotency_ttl_s
        self._create = redis.register_script(lua.CREATE_RUN)
        self._finish = redis.register_script(lua.FINISH_RUN)
        self._cancel_parked = redis.register_script(lua.CANCEL_PARKED)

    async def ping(self) -> bool:
        """True while Redis answers."""
        return bool(await self.redis.ping())

    # -- runs -------------------------------------------------------------------------------

    async def resolve(self, tenant: str, thread_id: str, run_id: str) -> RunRef:
        """Where a run lives; a caller that knows only the run id gets its thread from the index.

        A run without an index entry is a stateless run: its temporary thread's id is its own.
        """
        if not thread_id:
            found = await self.redis.get(keys.run_thread(tenant, run_id))
            thread_id = found.decode() if found else run_id
        return RunRef(tenant, thread_id, run_id)

    async def create_run(
        self, new: NewRun, first: Callable[[Pipeline, RunRef], None] | None = None
    ) -> Created:
        """Record a run under the thread's multitask strategy (atomically).

        `first` adds commands to the same round trip, sent before the script (the queue's
        dispatch intent).
        """
        if new.multitask_strategy not in STRATEGIES:
            raise StoreError("invalid", f"multitask_strategy must be one of {sorted(STRATEGIES)}")
        if new.temporary and new.idempotency_key:
            # Unambiguous: a tenant name has no newline (cai_common.tenants).
            name = f"{new.tenant}\n{new.idempotency_key}"
            run_id = str(uuid.uuid5(_IDEMPOTENT_RUN_IDS, name))
        else:
            run_id = str(uuid.uuid4())
        ts = now_iso()
        thread_id = new.thread_id or run_id
        record = RunRecord.pending(new, run_id, thread_id, ts)
        tk = keys.ThreadKeys(new.tenant, thread_id)
        create_thread = new.temporary or new.if_not_exists == "create"
        async with self.redis.pipeline(transaction=False) as pipe:
            if first is not None:
                first(pipe, RunRef(new.tenant, thread_id, run_id))
            if not new.temporary:
                # Indexes outside the thread's slot are written first: a crash before the
                # script leaves an entry that points at nothing, which readers skip.
                pipe.set(keys.run_thread(new.tenant, run_id), thread_id, ex=_INDEX_TTL_S)
                if create_thread:
                    pipe.zadd(keys.tenant_threads(new.tenant), {thread_id: time.time()}, nx=True)
            await self._create(
                keys=[
                    tk.record,
                    tk.pending,
                    tk.runs,
                    tk.run(run_id).record,
                    tk.idempotency(new.idempotency_key),
                ],
                args=[
                    run_id,
                    new.tenant,
                    new.multitask_strategy,
                    ts,
                    time.time(),
                    "create" if create_thread else "reject",
                    orjson.dumps(record.to_hash()),
                    self.idempotency_ttl if new.idempotency_key else 0,
                    tk.run_prefix,
                    thread_id,
                ],
                client=pipe,
            )
            *_, reply = await pipe.execute()
        outcome, value, interrupts = (_decoded(v) for v in reply)
        if outcome == "existing":
            existing = await self.get_run(new.tenant, value, thread_id)
            if existing is None:
                raise StoreError("not_found", f"Run {value} for this idempotency key expired")
            return Created(existing, existed=True)
        if outcome == "no_thread":
            raise not_found("Thread", thread_id)
        if outcome == "conflict":
            raise StoreError(
                "conflict",
                f"Thread {thread_id} is busy with run {value}; multitask_strategy is 'reject'",
            )
        return Created(record, dispatched=outcome == "dispatched", interrupts=interrupts)

    async def load_run(self, ref: RunRef) -> RunRecord | None:
        """The run at `ref`, or None (unknown or expired)."""
        h = await self.redis.hgetall(ref.keys.record)
        if not h or b"run_id" not in h:
            return None
        return RunRecord.from_hash(h)

    async def get_run(self, tenant: str, run_id: str, thread_id: str = "") -> RunRecord | None:
        """The tenant's run, or None (unknown, expired, another tenant's or another thread's)."""
        return await self.load_run(await self.resolve(tenant, thread_id, run_id))

    async def run_status(self, ref: RunRef) -> str:
        """The run's status ("" when it has no record)."""
        return _decoded(await self.redis.hget(ref.keys.record, "status") or b"")

    async def mark_running(
        self, ref: RunRef, replica: str, attempt: int, base_checkpoint: str | None = None
    ) -> None:
        """Record who executes the run, which attempt this is and (first time) its base."""
        fields: dict[str, Any] = {
            "status": "running",
            "replica": replica,
            "attempt": attempt,
            "updated_at": now_iso(),
        }
        if base_checkpoint is not None:
            fields["base_checkpoint"] = base_checkpoint
        await self.redis.hset(ref.keys.record, mapping=fields)

    async def finish_run(
        self,
        run: RunRecord,
        status: str,
        thread_status: str,
        error: str,
        terminal: tuple[str, bytes],
        log_ttl_s: int,
    ) -> tuple[str, str] | None:
        """Append the terminal event, set the final status, hand the thread to its next run.

        Returns the next run (id, trace) that the caller must queue, if one follows.
        """
        ref = run.ref
        tk = ref.thread_keys
        rk = ref.keys
        has_thread = bool(run.thread_id) and not run.temporary
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._finish(
                keys=[tk.record, tk.pending, rk.record, rk.events],
                args=[
                    run.run_id,
                    status,
                    now_iso(),
                    thread_status,
                    self.run_ttl,
                    error,
                    terminal[0],
                    terminal[1],
                    log_ttl_s,
                    "1" if has_thread else "0",
                    tk.run_prefix,
                ],
                client=pipe,
            )
            if has_thread:
                pipe.expire(keys.run_thread(run.tenant, run.run_id), self.run_ttl)
            result = (await pipe.execute())[0]
        if _decoded(result[0]) == "next":
            return _decoded(result[1]), _decoded(result[2])
        return None

    async def cancel_parked(self, ref: RunRef) -> bool:
        """Cancel a run still parked behind its thread's active run; False if it is not."""
        parked = await self._cancel_parked(
            keys=[ref.thread_keys.pending, ref.keys.record],
            args=[ref.run_id, now_iso(), self.run_ttl],
        )
        return bool(parked)

    async def delete_run_records(self, run: RunRecord) -> None:
        """Delete a finished run's record and event log."""
        rk = run.ref.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(rk.record, rk.events, rk.cancel)
            pipe.zrem(run.ref.thread_keys.runs, run.run_id)
            pipe.delete(keys.run_thread(run.tenant, run.run_id))
            await pipe.execute()

    async def log_exists(self, ref: RunRef) -> bool:
        """Whether the run's event log is still there (it expires after the run)."""
        return bool(await self.redis.exists(ref.keys.events))
