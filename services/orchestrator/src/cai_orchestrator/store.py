"""Run and thread records in Redis, and the atomic scripts that decide who runs when.

A thread has at most one *active* run. Creating a run on a busy thread follows the run's
multitask strategy: `reject` refuses it, `enqueue` parks it in the thread's pending list, and
`interrupt`/`rollback` ask the active run to stop and park the new run first in line.
Finishing a run dispatches the next pending one. Both decisions happen inside one Lua script each,
so two gateways racing on one thread cannot both start a run.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from cai_orchestrator import keys

TERMINAL_STATUSES = frozenset({"success", "error", "timeout", "interrupted"})
STRATEGIES = frozenset({"reject", "enqueue", "interrupt", "rollback"})

_CREATE_RUN = """
-- KEYS: 1 thread, 2 pending, 3 thread_runs, 4 run, 5 queue, 6 idempotency (or a dummy)
-- ARGV: 1 run_id, 2 tenant, 3 strategy, 4 now_iso, 5 score, 6 if_not_exists, 7 run fields (json),
--       8 idempotency ttl (0: none), 9 job fields (json), 10 temporary thread (1) or not (0)
if ARGV[8] ~= '0' then
  local existing = redis.call('GET', KEYS[6])
  if existing then return {'existing', existing} end
end
local owner = redis.call('HGET', KEYS[1], 'tenant')
if not owner then
  if ARGV[6] ~= 'create' then return {'no_thread', ''} end
  redis.call('HSET', KEYS[1], 'thread_id', string.sub(KEYS[1], 12), 'tenant', ARGV[2],
    'created_at', ARGV[4], 'updated_at', ARGV[4], 'metadata', '{}', 'status', 'idle',
    'active_run', '')
  if ARGV[10] == '0' then
    redis.call('ZADD', 'cai:tenant:' .. ARGV[2] .. ':threads', ARGV[5], string.sub(KEYS[1], 12))
  end
elseif owner ~= ARGV[2] then
  return {'no_thread', ''}
end
local active = redis.call('HGET', KEYS[1], 'active_run')
local outcome = 'dispatched'
if active and active ~= '' then
  local active_status = redis.call('HGET', 'cai:run:' .. active, 'status')
  if active_status == 'pending' or active_status == 'running' then
    if ARGV[3] == 'reject' then return {'conflict', active} end
    if ARGV[3] == 'enqueue' then
      redis.call('RPUSH', KEYS[2], ARGV[1])
    else
      redis.call('SET', 'cai:run:' .. active .. ':cancel', ARGV[3], 'EX', 86400)
      redis.call('PUBLISH', 'cai:cancel', active .. ' ' .. ARGV[3])
      redis.call('LPUSH', KEYS[2], ARGV[1])
    end
    outcome = 'queued'
  end
end
local fields = cjson.decode(ARGV[7])
for k, v in pairs(fields) do redis.call('HSET', KEYS[4], k, v) end
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'busy', 'updated_at', ARGV[4])
if outcome == 'dispatched' then
  redis.call('HSET', KEYS[1], 'active_run', ARGV[1])
  local job = cjson.decode(ARGV[9])
  redis.call('XADD', KEYS[5], '*', 'run_id', job['run_id'], 'trace', job['trace'])
end
if ARGV[8] ~= '0' then redis.call('SET', KEYS[6], ARGV[1], 'EX', tonumber(ARGV[8])) end
return {outcome, ARGV[1]}
"""

_FINISH_RUN = """
-- KEYS: 1 thread, 2 pending, 3 run, 4 queue, 5 event log
-- ARGV: 1 run_id, 2 status, 3 now_iso, 4 thread status when nothing follows, 5 run ttl, 6 error,
--       7 terminal event name, 8 terminal event data, 9 event log ttl
-- The terminal event and the final status land together: whoever sees one sees the other.
redis.call('XADD', KEYS[5], '*', 'e', ARGV[7], 'd', ARGV[8])
redis.call('EXPIRE', KEYS[5], tonumber(ARGV[9]))
redis.call('HSET', KEYS[3], 'status', ARGV[2], 'updated_at', ARGV[3], 'error', ARGV[6])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[5]))
if KEYS[1] == 'cai:thread:' then return 'no_thread' end
if redis.call('HGET', KEYS[1], 'active_run') ~= ARGV[1] then return 'not_active' end
while true do
  local nxt = redis.call('LPOP', KEYS[2])
  if not nxt then break end
  if redis.call('HGET', 'cai:run:' .. nxt, 'status') == 'pending' then
    redis.call('HSET', KEYS[1], 'active_run', nxt, 'status', 'busy', 'updated_at', ARGV[3])
    local trace = redis.call('HGET', 'cai:run:' .. nxt, 'trace') or '{}'
    redis.call('XADD', KEYS[4], '*', 'run_id', nxt, 'trace', trace)
    return 'next:' .. nxt
  end
end
redis.call('HSET', KEYS[1], 'active_run', '', 'status', ARGV[4], 'updated_at', ARGV[3])
return 'idle'
"""


def now_iso() -> str:
    """UTC timestamp in LangGraph Server's format."""
    return datetime.now(UTC).isoformat()


class StoreError(Exception):
    """A request the store refuses; `code` maps onto gRPC status codes."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class RunRecord:
    """A run as stored in Redis."""

    run_id: str
    thread_id: str
    tenant: str
    assistant_id: str
    status: str
    created_at: str
    updated_at: str
    multitask_strategy: str
    kwargs: dict[str, Any]
    metadata: dict[str, Any]
    attempt: int = 0
    replica: str = ""
    error: str = ""
    temporary: bool = False
    trace: dict[str, str] = field(default_factory=dict)
    # The thread's head checkpoint when the run first started ("" = none; None = not started).
    base_checkpoint: str | None = None

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> RunRecord:
        """Decode the Redis hash."""
        s = {k.decode(): v.decode() for k, v in h.items()}
        return cls(
            run_id=s["run_id"],
            thread_id=s.get("thread_id", ""),
            tenant=s["tenant"],
            assistant_id=s.get("assistant_id", ""),
            status=s.get("status", "pending"),
            created_at=s.get("created_at", ""),
            updated_at=s.get("updated_at", ""),
            multitask_strategy=s.get("multitask_strategy", "enqueue"),
            kwargs=orjson.loads(s.get("kwargs") or "{}"),
            metadata=orjson.loads(s.get("metadata") or "{}"),
            attempt=int(s.get("attempt") or 0),
            replica=s.get("replica", ""),
            error=s.get("error", ""),
            temporary=s.get("temporary") == "1",
            trace=orjson.loads(s.get("trace") or "{}"),
            base_checkpoint=s.get("base_checkpoint"),
        )

    def to_api(self) -> dict[str, Any]:
        """LangGraph Server's Run object."""
        return {
            "run_id": self.run_id,
            "thread_id": self.thread_id,
            "assistant_id": self.assistant_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "status": self.status,
            "metadata": self.metadata,
            "kwargs": self.kwargs,
            "multitask_strategy": self.multitask_strategy,
            "attempt": self.attempt,
            "executor": self.replica or None,
            "error": self.error or None,
        }


@dataclass
class ThreadRecord:
    """A thread as stored in Redis (its state lives in the checkpointer)."""

    thread_id: str
    tenant: str
    created_at: str
    updated_at: str
    metadata: dict[str, Any]
    status: str
    active_run: str

    @classmethod
    def from_hash(cls, h: dict[bytes, bytes]) -> ThreadRecord:
        """Decode the Redis hash."""
        s = {k.decode(): v.decode() for k, v in h.items()}
        return cls(
            thread_id=s["thread_id"],
            tenant=s["tenant"],
            created_at=s.get("created_at", ""),
            updated_at=s.get("updated_at", ""),
            metadata=orjson.loads(s.get("metadata") or "{}"),
            status=s.get("status", "idle"),
            active_run=s.get("active_run", ""),
        )

    def to_api(
        self, values: Any = None, interrupts: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """LangGraph Server's Thread object."""
        return {
            "thread_id": self.thread_id,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "metadata": self.metadata,
            "status": self.status,
            "config": {},
            "values": values,
            "interrupts": interrupts or {},
        }


@dataclass
class NewRun:
    """What CreateRun asks for, already validated."""

    tenant: str
    thread_id: str
    assistant_id: str
    kwargs: dict[str, Any]
    metadata: dict[str, Any]
    multitask_strategy: str = "enqueue"
    if_not_exists: str = "reject"
    idempotency_key: str = ""
    temporary: bool = False
    trace: dict[str, str] = field(default_factory=dict)


class RunStore:
    """Threads and runs in Redis; the queue's producer side."""

    def __init__(self, redis: Redis, settings_ttl_run: int, idempotency_ttl: int = 86400) -> None:
        self.redis = redis
        self.run_ttl = settings_ttl_run
        self.idempotency_ttl = idempotency_ttl
        self._create = redis.register_script(_CREATE_RUN)
        self._finish = redis.register_script(_FINISH_RUN)

    async def create_thread(
        self, tenant: str, thread_id: str, metadata: dict[str, Any], if_exists: str
    ) -> ThreadRecord:
        """Create a thread; ALREADY_EXISTS (or the existing one with do_nothing)."""
        thread_id = thread_id or str(uuid.uuid4())
        ts = now_iso()
        created = await self.redis.hsetnx(keys.thread(thread_id), "tenant", tenant)
        if not created:
            existing = await self.get_thread(tenant, thread_id)
            if existing is not None and if_exists == "do_nothing":
                return existing
            # Another tenant's id answers as if it were taken: we never reveal ownership.
            raise StoreError("already_exists", f"Thread {thread_id} already exists")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                keys.thread(thread_id),
                mapping={
                    "thread_id": thread_id,
                    "created_at": ts,
                    "updated_at": ts,
                    "metadata": orjson.dumps(metadata),
                    "status": "idle",
                    "active_run": "",
                },
            )
            pipe.zadd(keys.tenant_threads(tenant), {thread_id: time.time()})
            await pipe.execute()
        return ThreadRecord(thread_id, tenant, ts, ts, metadata, "idle", "")

    async def search_threads(
        self, tenant: str, metadata: dict[str, Any], status: str, limit: int, offset: int
    ) -> list[ThreadRecord]:
        """The tenant's threads, newest first, whose metadata contains `metadata`."""
        ids = await self.redis.zrevrange(keys.tenant_threads(tenant), 0, -1)
        found: list[ThreadRecord] = []
        for start in range(0, len(ids), 500):
            async with self.redis.pipeline(transaction=False) as pipe:
                for tid in ids[start : start + 500]:
                    pipe.hgetall(keys.thread(tid.decode()))
                hashes = await pipe.execute()
            for h in hashes:
                if not h or h.get(b"tenant", b"").decode() != tenant or b"thread_id" not in h:
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
            raise StoreError("not_found", f"Thread {thread_id} not found")
        thread.metadata = {**thread.metadata, **metadata}
        thread.updated_at = now_iso()
        await self.redis.hset(
            keys.thread(thread_id),
            mapping={"metadata": orjson.dumps(thread.metadata), "updated_at": thread.updated_at},
        )
        return thread

    async def delete_thread_records(self, tenant: str, thread_id: str) -> int:
        """Delete the thread's record, its runs' records and event logs; returns runs deleted."""
        run_ids = [r.decode() for r in await self.redis.zrange(keys.thread_runs(thread_id), 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in run_ids:
                pipe.delete(keys.run(rid), keys.events(rid), keys.cancel(rid))
            pipe.delete(
                keys.thread(thread_id), keys.thread_runs(thread_id), keys.thread_pending(thread_id)
            )
            pipe.zrem(keys.tenant_threads(tenant), thread_id)
            await pipe.execute()
        return len(run_ids)

    async def delete_run_records(self, run: RunRecord) -> None:
        """Delete a finished run's record and event log."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(keys.run(run.run_id), keys.events(run.run_id), keys.cancel(run.run_id))
            pipe.zrem(keys.thread_runs(run.thread_id), run.run_id)
            await pipe.execute()

    async def get_thread(self, tenant: str, thread_id: str) -> ThreadRecord | None:
        """The tenant's thread, or None (also for another tenant's thread)."""
        h = await self.redis.hgetall(keys.thread(thread_id))
        if not h or h.get(b"tenant", b"").decode() != tenant or b"thread_id" not in h:
            return None
        return ThreadRecord.from_hash(h)

    async def create_run(self, new: NewRun) -> tuple[RunRecord, bool]:
        """Create a run atomically under the thread's strategy; returns (run, existed_before)."""
        if new.multitask_strategy not in STRATEGIES:
            raise StoreError("invalid", f"multitask_strategy must be one of {sorted(STRATEGIES)}")
        run_id = str(uuid.uuid4())
        ts = now_iso()
        thread_id = new.thread_id or run_id
        record = RunRecord(
            run_id=run_id,
            thread_id=thread_id,
            tenant=new.tenant,
            assistant_id=new.assistant_id,
            status="pending",
            created_at=ts,
            updated_at=ts,
            multitask_strategy=new.multitask_strategy,
            kwargs=new.kwargs,
            metadata=new.metadata,
            temporary=new.temporary,
            trace=new.trace,
        )
        fields = {
            "run_id": run_id,
            "thread_id": thread_id,
            "tenant": new.tenant,
            "assistant_id": new.assistant_id,
            "status": "pending",
            "created_at": ts,
            "updated_at": ts,
            "multitask_strategy": new.multitask_strategy,
            "kwargs": orjson.dumps(new.kwargs).decode(),
            "metadata": orjson.dumps(new.metadata).decode(),
            "attempt": "0",
            "temporary": "1" if new.temporary else "0",
            "trace": orjson.dumps(new.trace).decode(),
        }
        trace = fields["trace"]
        idem_key = keys.idempotency(new.tenant, new.idempotency_key) if new.idempotency_key else "x"
        outcome, value = await self._create(
            keys=[
                keys.thread(thread_id),
                keys.thread_pending(thread_id),
                keys.thread_runs(thread_id),
                keys.run(run_id),
                keys.QUEUE,
                idem_key,
            ],
            args=[
                run_id,
                new.tenant,
                new.multitask_strategy,
                ts,
                time.time(),
                "create" if (new.temporary or new.if_not_exists == "create") else "reject",
                orjson.dumps(fields),
                self.idempotency_ttl if new.idempotency_key else 0,
                orjson.dumps({"run_id": run_id, "trace": trace}),
                "1" if new.temporary else "0",
            ],
        )
        outcome = outcome.decode()
        value = value.decode()
        if outcome == "existing":
            existing = await self.get_run(new.tenant, value)
            if existing is None:
                raise StoreError("not_found", f"Run {value} for this idempotency key expired")
            return existing, True
        if outcome == "no_thread":
            raise StoreError("not_found", f"Thread {thread_id} not found")
        if outcome == "conflict":
            raise StoreError(
                "conflict",
                f"Thread {thread_id} is busy with run {value}; multitask_strategy is 'reject'",
            )
        return record, False

    async def get_run(self, tenant: str, run_id: str, thread_id: str = "") -> RunRecord | None:
        """The tenant's run, or None (unknown, expired, another tenant's or another thread's)."""
        h = await self.redis.hgetall(keys.run(run_id))
        if not h or h.get(b"tenant", b"").decode() != tenant:
            return None
        record = RunRecord.from_hash(h)
        if thread_id and record.thread_id != thread_id:
            return None
        return record

    async def list_runs(
        self, tenant: str, thread_id: str, limit: int, offset: int, status: str = ""
    ) -> list[RunRecord]:
        """The thread's runs, newest first."""
        ids = await self.redis.zrevrange(keys.thread_runs(thread_id), 0, -1)
        runs: list[RunRecord] = []
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in ids:
                pipe.hgetall(keys.run(rid.decode()))
            hashes = await pipe.execute()
        for h in hashes:
            if not h or h.get(b"tenant", b"").decode() != tenant:
                continue
            rec = RunRecord.from_hash(h)
            if status and rec.status != status:
                continue
            runs.append(rec)
        return runs[offset : offset + limit]

    async def queue_position(self, run: RunRecord) -> dict[str, Any]:
        """Where a pending run waits: in the shared queue (1 = next) or behind its thread's run."""
        age = max(0.0, time.time() - datetime.fromisoformat(run.created_at).timestamp())
        where: dict[str, Any] = {"age_seconds": round(age, 3)}
        waiting = await self.redis.lrange(keys.thread_pending(run.thread_id), 0, -1)
        if run.run_id.encode() in waiting:
            where["waiting_for_thread"] = True
            where["position"] = waiting.index(run.run_id.encode()) + 1
            return where
        groups = await self.redis.xinfo_groups(keys.QUEUE)
        last = next(
            (g["last-delivered-id"] for g in groups if g["name"] == keys.GROUP.encode()), b"0"
        )
        entries = await self.redis.xrange(keys.QUEUE, min=b"(" + last, max="+", count=10_000)
        for i, (_, fields) in enumerate(entries):
            if fields.get(b"run_id") == run.run_id.encode():
                where["position"] = i + 1
                break
        return where

    async def mark_running(
        self, run_id: str, replica: str, attempt: int, base_checkpoint: str | None = None
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
        await self.redis.hset(keys.run(run_id), mapping=fields)

    async def finish_run(
        self,
        run: RunRecord,
        status: str,
        thread_status: str,
        error: str = "",
        terminal: tuple[str, bytes] = ("end", b"null"),
        log_ttl: int = 3600,
    ) -> str:
        """Append the terminal event, set the final status, hand the thread to its next run."""
        # A stateless run's thread is already gone: skip the thread bookkeeping.
        has_thread = run.thread_id and not run.temporary
        thread_key = keys.thread(run.thread_id) if has_thread else "cai:thread:"
        result = await self._finish(
            keys=[
                thread_key,
                keys.thread_pending(run.thread_id),
                keys.run(run.run_id),
                keys.QUEUE,
                keys.events(run.run_id),
            ],
            args=[
                run.run_id,
                status,
                now_iso(),
                thread_status,
                self.run_ttl,
                error,
                terminal[0],
                terminal[1],
                log_ttl,
            ],
        )
        return result.decode() if isinstance(result, bytes) else str(result)
