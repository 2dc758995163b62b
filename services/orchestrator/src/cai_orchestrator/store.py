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
from dataclasses import dataclass
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from cai_common.runs import PENDING, RUNNING, TERMINAL_STATUSES_BYTES
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
    state_too_large,
)

# Stateless runs with an Idempotency-Key get a run id derived from it, so the retried request
# finds the run it created (a stateless run's thread is new each time, so the key cannot live
# with a thread the caller names).
_IDEMPOTENT_RUN_IDS = uuid.UUID("6f1c2a86-55d5-4c0e-9a57-3a4bd0d5e0f1")
# How long the run-id → thread index outlives an unfinished run (finishing shortens it to the
# record's TTL).
_INDEX_TTL_S = 30 * 24 * 3600
# A filtered thread search (status, metadata: nothing indexes them) reads the tenant's threads
# newest first, this many per round trip, and at most `search_scan_max` of them per request.
SEARCH_BATCH = 200
SEARCH_SCAN_MAX = 10_000
# A thread's run index keeps its newest runs: older finished runs go, records and all.
RUNS_PER_THREAD_INDEX = 1000
# Index entries examined for trimming per run created (an oversized old index shrinks gradually).
_TRIM_BATCH = 1000
_UNFINISHED = (PENDING.encode(), RUNNING.encode())
# The tenant's unfinished-runs index is trimmed of entries older than any run lives (and its
# expiry restarted) at most this often per tenant and process, not on every run created.
_INDEX_TRIM_EVERY_S = 60.0
_INDEX_TRIM_TENANTS = 10_000  # tenants remembered; past that the memory starts over


@dataclass(frozen=True, slots=True)
class Claim:
    """How an attempt of a run starts (RunStore.claim_run).

    `outcome`: missing (no such run), finished (it has ended), parked (it waits behind its
    thread's active run), leased (another replica holds it): the worker does not execute it.
    Otherwise the lease is ours and the run is marked running, and `outcome` says what the
    attempt does: run; exhausted (past the attempt limit); cancel (`detail`: the action asked
    before it started); too_large (`detail`: the thread's state bytes, which with the run's input
    would pass the limit).
    """

    outcome: str
    detail: str = ""
    run: RunRecord | None = None  # as it was before this attempt (attempt: the attempts before)
    thread_metadata: bytes = b"{}"  # the thread's metadata, JSON (not parsed here)


def _flat(fields: dict[str, str]) -> list[str]:
    return [x for kv in fields.items() for x in kv]


def _decoded(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _matches(thread: ThreadRecord, metadata: dict[str, Any], status: str) -> bool:
    """Whether the thread has `status` (if given) and its metadata contains `metadata`."""
    if status and thread.status != status:
        return False
    return all(thread.metadata.get(k) == v for k, v in metadata.items())


def _thread_or_none(h: dict[bytes, bytes]) -> ThreadRecord | None:
    if not h or b"thread_id" not in h or h.get(b"temporary") == b"1":
        return None
    return ThreadRecord.from_hash(h)


class ThreadStore:
    """Thread records in Redis (a thread's state lives in the checkpointer).

    An idle thread's keys expire `thread_ttl_s` after its last use (0: never); a thread with an
    active run has no TTL (lua.CREATE_RUN removes it, lua.FINISH_RUN sets it again).
    """

    def __init__(
        self, redis: Redis, thread_ttl_s: int = 0, *, search_scan_max: int = SEARCH_SCAN_MAX
    ) -> None:
        self.redis = redis
        self.thread_ttl = thread_ttl_s
        self.search_scan_max = search_scan_max
        self._set_fields = redis.register_script(lua.SET_THREAD_FIELDS)
        self._mark_deleting = redis.register_script(lua.MARK_DELETING)

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
            if self.thread_ttl:
                pipe.expire(tk.record, self.thread_ttl)
            pipe.zadd(keys.tenant_threads(tenant), {thread_id: time.time()})
            await pipe.execute()
        return ThreadRecord(thread_id, tenant, ts, ts, metadata, "idle", "")

    async def get_thread(self, tenant: str, thread_id: str) -> ThreadRecord | None:
        """The tenant's thread, or None (a stateless run's temporary thread is none)."""
        h = await self.redis.hgetall(keys.ThreadKeys(tenant, thread_id).record)
        return _thread_or_none(h)

    async def use_thread(self, tenant: str, thread_id: str) -> ThreadRecord | None:
        """`get_thread` for a request that uses the thread: its expiry starts again."""
        tk = keys.ThreadKeys(tenant, thread_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(tk.record)
            self._touch(pipe, tk)
            h, *_ = await pipe.execute()
        return _thread_or_none(h)

    async def touch_thread(self, tenant: str, thread_id: str) -> None:
        """The thread was used: an idle thread's expiry starts again."""
        if self.thread_ttl:
            async with self.redis.pipeline(transaction=False) as pipe:
                self._touch(pipe, keys.ThreadKeys(tenant, thread_id))
                await pipe.execute()

    def _touch(self, pipe: Pipeline, tk: keys.ThreadKeys) -> None:
        # XX: only keys that have a TTL. A busy thread has none, and must not get one mid-run.
        if self.thread_ttl:
            for key in (tk.record, tk.runs, tk.pending):
                pipe.expire(key, self.thread_ttl, xx=True)

    async def set_state_bytes(self, tenant: str, thread_id: str, size: int) -> None:
        """Record the size of the thread's state (if the thread still exists)."""
        record = keys.ThreadKeys(tenant, thread_id).record
        await self._set_fields(keys=[record], args=["state_bytes", size])

    async def mark_deleting(self, tenant: str, thread_id: str) -> str | None:
        """Refuse new runs on the thread and drop its parked ones; its active run id ("" = none),
        None when there is no such thread."""
        tk = keys.ThreadKeys(tenant, thread_id)
        active = await self._mark_deleting(keys=[tk.record, tk.pending])
        return None if active is None else _decoded(active)

    async def _threads(self, tenant: str, thread_ids: list[Any]) -> list[ThreadRecord]:
        """The records of these threads of the tenant that exist, in order (one round trip)."""
        if not thread_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for tid in thread_ids:
                pipe.hgetall(keys.ThreadKeys(tenant, _decoded(tid)).record)
            hashes = await pipe.execute()
        return [t for t in map(_thread_or_none, hashes) if t is not None]

    async def search_threads(
        self, tenant: str, metadata: dict[str, Any], status: str, limit: int, offset: int
    ) -> tuple[list[ThreadRecord], int]:
        """The tenant's threads, newest first, with `status` and whose metadata contains
        `metadata`; and how many thread records were read.

        Without a filter the page is read by rank: `limit` records. A filter is applied to the
        tenant's newest `search_scan_max` threads at most (status and metadata are not indexed).
        """
        index = keys.tenant_threads(tenant)
        if not metadata and not status:
            page = await self.redis.zrevrange(index, offset, offset + limit - 1)
            return await self._threads(tenant, page), len(page)
        wanted = offset + limit
        found: dict[str, ThreadRecord] = {}
        scanned = 0
        while len(found) < wanted and scanned < self.search_scan_max:
            batch = min(SEARCH_BATCH, self.search_scan_max - scanned)
            ids = await self.redis.zrevrange(index, scanned, scanned + batch - 1)
            scanned += len(ids)
            for thread in await self._threads(tenant, ids):
                if _matches(thread, metadata, status):
                    found.setdefault(thread.thread_id, thread)  # ranks shift as threads arrive
            if len(ids) < batch:
                break
        return list(found.values())[offset:wanted], scanned

    async def threads_by_ids(
        self,
        tenant: str,
        thread_ids: list[str],
        metadata: dict[str, Any],
        status: str,
        limit: int,
        offset: int,
    ) -> list[ThreadRecord]:
        """Those of the tenant's threads named by `thread_ids` that match, in that order."""
        threads = await self._threads(tenant, thread_ids)
        return [t for t in threads if _matches(t, metadata, status)][offset : offset + limit]

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

    async def load_runs(self, refs: list[RunRef]) -> list[RunRecord]:
        """The runs at `refs` that exist, in order (one round trip)."""
        if not refs:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for ref in refs:
                pipe.hgetall(ref.keys.record)
            hashes = await pipe.execute()
        return [RunRecord.from_hash(h) for h in hashes if h and b"run_id" in h]

    async def list_runs(
        self, tenant: str, thread_id: str, limit: int, offset: int, status: str = ""
    ) -> tuple[list[RunRecord], int]:
        """The thread's runs, newest first; and how many run records were read.

        Without `status` the page is read by rank. With it, the statuses of the thread's run
        index (bounded: `RunStore.runs_per_thread`) are read first, then the page's records.
        """
        tk = keys.ThreadKeys(tenant, thread_id)
        read = 0
        if not status:
            page = await self.redis.zrevrange(tk.runs, offset, offset + limit - 1)
        else:
            ids = await self.redis.zrevrange(tk.runs, 0, -1)
            async with self.redis.pipeline(transaction=False) as pipe:
                for rid in ids:
                    pipe.hget(tk.run(rid.decode()).record, "status")
                statuses = await pipe.execute()
            wanted = status.encode()
            matching = [rid for rid, st in zip(ids, statuses, strict=True) if st == wanted]
            page, read = matching[offset : offset + limit], len(ids)
        runs = await self.load_runs([RunRef(tenant, thread_id, rid.decode()) for rid in page])
        return runs, read + len(page)

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

    def __init__(
        self,
        redis: Redis,
        run_ttl_s: int,
        idempotency_ttl_s: int = 86400,
        thread_ttl_s: int = 0,
        *,
        runs_per_thread: int = RUNS_PER_THREAD_INDEX,
        search_scan_max: int = SEARCH_SCAN_MAX,
    ) -> None:
        super().__init__(redis, thread_ttl_s, search_scan_max=search_scan_max)
        # A finished run's record never outlives its thread.
        self.run_ttl = min(run_ttl_s, thread_ttl_s) if thread_ttl_s else run_ttl_s
        self.idempotency_ttl = idempotency_ttl_s
        self.runs_per_thread = runs_per_thread
        self._create = redis.register_script(lua.CREATE_RUN)
        self._finish = redis.register_script(lua.FINISH_RUN)
        self._claim = redis.register_script(lua.CLAIM_RUN)
        self._cancel_parked = redis.register_script(lua.CANCEL_PARKED)
        self._trimmed: dict[str, float] = {}  # tenant -> when its unfinished index was trimmed

    async def _pipeline(self, fill: Callable[[Pipeline], None]) -> list[Any]:
        """Send the commands `fill` queues in one round trip and return their replies.

        Scripts go in by hash (`_evalsha`): redis-py would otherwise ask `SCRIPT EXISTS` first, a
        round trip of its own on every call. If Redis lost its scripts (a restart), they are
        loaded and the round trip is sent again; the commands that go with scripts here are
        idempotent, so running them twice is harmless.
        """
        for attempt in (1, 2):
            async with self.redis.pipeline(transaction=False) as pipe:
                fill(pipe)
                try:
                    return await pipe.execute()
                except NoScriptError:
                    if attempt == 2:
                        raise
            for script in (self._create, self._finish):
                await self.redis.script_load(script.script)
        raise AssertionError("unreachable")

    @staticmethod
    def _evalsha(pipe: Pipeline, script: AsyncScript, keys: list[str], args: list[Any]) -> None:
        pipe.evalsha(script.sha, len(keys), *keys, *args)

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

    @staticmethod
    def new_run_id(new: NewRun) -> str:
        """The id a new run gets: derived from (tenant, key) for a stateless run with an
        Idempotency-Key (a retried request finds it), else random."""
        if new.temporary and new.idempotency_key:
            # Unambiguous: a tenant name has no newline (cai_common.tenants).
            name = f"{new.tenant}\n{new.idempotency_key}"
            return str(uuid.uuid5(_IDEMPOTENT_RUN_IDS, name))
        return str(uuid.uuid4())

    async def create_run(
        self,
        new: NewRun,
        first: Callable[[Pipeline, RunRef], None] | None = None,
        *,
        write_bytes: int = 0,
        max_state_bytes: int = 0,
        run_id: str = "",
    ) -> Created:
        """Record a run under the thread's multitask strategy (atomically), unless the thread is
        pinned to another assistant or the run's input (`write_bytes`) would grow the thread's
        state past `max_state_bytes` (0: no limit).

        `first` adds commands to the same round trip, sent before the script (the queue's
        dispatch intent). `run_id`: the id `new_run_id` chose (empty: choose one now).
        """
        if new.multitask_strategy not in STRATEGIES:
            raise StoreError("invalid", f"multitask_strategy must be one of {sorted(STRATEGIES)}")
        run_id = run_id or self.new_run_id(new)
        ts = now_iso()
        thread_id = new.thread_id or run_id
        record = RunRecord.pending(new, run_id, thread_id, ts, write_bytes)
        tk = keys.ThreadKeys(new.tenant, thread_id)
        create_thread = new.temporary or new.if_not_exists == "create"
        script_keys = [
            tk.record,
            tk.pending,
            tk.runs,
            tk.run(run_id).record,
            tk.idempotency(new.idempotency_key),
        ]
        args = [
            run_id,
            new.tenant,
            new.multitask_strategy,
            ts,
            time.time(),
            "create" if create_thread else "reject",
            self.idempotency_ttl if new.idempotency_key else 0,
            tk.run_prefix,
            thread_id,
            "1" if new.temporary else "0",
            new.assistant_id,
            write_bytes,
            max_state_bytes,
            *_flat(record.to_hash()),
        ]

        def fill(pipe: Pipeline) -> None:
            if first is not None:
                first(pipe, RunRef(new.tenant, thread_id, run_id))
            if not new.temporary:
                # Indexes outside the thread's slot are written first: a crash before the
                # script leaves an entry that points at nothing, which readers skip.
                pipe.set(keys.run_thread(new.tenant, run_id), thread_id, ex=_INDEX_TTL_S)
                self._index_unfinished(pipe, new.tenant, run_id)
                if create_thread:
                    pipe.zadd(keys.tenant_threads(new.tenant), {thread_id: time.time()}, nx=True)
            self._evalsha(pipe, self._create, script_keys, args)

        reply = (await self._pipeline(fill))[-1]
        outcome, value, interrupts = (_decoded(v) for v in reply[:3])
        if not new.temporary:
            if outcome in ("dispatched", "queued"):
                await self._trim_runs(tk, int(reply[3]) - self.runs_per_thread)
            else:
                await self._forget_unfinished(new.tenant, run_id)
        if outcome == "existing":
            existing = await self.get_run(new.tenant, value, thread_id)
            if existing is None:
                raise StoreError("not_found", f"Run {value} for this idempotency key expired")
            return Created(existing, existed=True)
        if outcome == "no_thread":
            raise not_found("Thread", thread_id)
        if outcome == "temporary":
            raise StoreError(
                "conflict",
                f"Thread {thread_id} is a stateless run's temporary thread; create runs on a "
                "thread of your own",
            )
        if outcome == "pinned":
            raise StoreError(
                "conflict",
                f"Thread {thread_id} is pinned to assistant {orjson.loads(value)!r} by its "
                "metadata",
            )
        if outcome == "too_large":
            too_large = state_too_large(new.thread_id, int(value), write_bytes, max_state_bytes)
            raise too_large or StoreError("too_large", "The run's state would pass the limit")
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

    async def claim_run(
        self,
        ref: RunRef,
        owner: str,
        lease_ms: int,
        base_checkpoint: str | None,
        max_attempts: int,
        max_state_bytes: int,
        log_ttl_s: int,
    ) -> Claim:
        """Start an attempt of the run in one round trip (lua.CLAIM_RUN): take its lease for
        `owner`, mark it running, record `base_checkpoint` (the thread's head before its first
        attempt; None: unknown), read its cancel flag and its thread, and write `retry` (any
        attempt after the first) and `metadata` (an attempt that executes) to its event log,
        whose expiry then starts at `log_ttl_s`."""
        rk = ref.keys
        reply = await self._claim(
            keys=[rk.record, rk.lease, rk.cancel, ref.thread_keys.record, rk.events],
            args=[
                owner,
                lease_ms,
                now_iso(),
                "0" if base_checkpoint is None else "1",
                base_checkpoint or "",
                max_attempts,
                max_state_bytes,
                log_ttl_s,
            ],
        )
        outcome = _decoded(reply[0])
        if len(reply) == 1:
            return Claim(outcome)
        flat = reply[2]
        run = RunRecord.from_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
        if run.base_checkpoint is None and base_checkpoint is not None:
            run.base_checkpoint = base_checkpoint
        return Claim(outcome, _decoded(reply[1]), run, reply[3])

    async def finish_run(
        self,
        run: RunRecord,
        status: str,
        thread_status: str,
        error: str,
        terminal: tuple[str, bytes],
        log_ttl_s: int,
        state_bytes: int | None = None,
        lease_owner: str = "",
    ) -> tuple[str, str] | None:
        """Append the terminal event, set the final status, hand the thread to its next run
        (or, with none, start the idle thread's expiry); `state_bytes` is the thread's state size.
        The run's lease goes too, if `lease_owner` holds it.

        Returns the next run (id, trace) that the caller must queue, if one follows.
        """
        ref = run.ref
        tk = ref.thread_keys
        rk = ref.keys
        has_thread = bool(run.thread_id) and not run.temporary
        if self.thread_ttl:
            log_ttl_s = min(log_ttl_s, self.thread_ttl)
        script_keys = [tk.record, tk.pending, rk.record, rk.events, tk.runs, rk.lease]
        args = [
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
            self.thread_ttl,
            "" if state_bytes is None else state_bytes,
            lease_owner,
        ]

        def fill(pipe: Pipeline) -> None:
            self._evalsha(pipe, self._finish, script_keys, args)
            if has_thread:
                pipe.expire(keys.run_thread(run.tenant, run.run_id), self.run_ttl)
                pipe.zrem(keys.tenant_unfinished_runs(run.tenant), run.run_id)

        result = (await self._pipeline(fill))[0]
        if _decoded(result[0]) == "next":
            return _decoded(result[1]), _decoded(result[2])
        return None

    async def cancel_parked(self, ref: RunRef) -> bool:
        """Cancel a run still parked behind its thread's active run; False if it is not.

        Its record and its run-id index then expire like those of any finished run.
        """
        parked = await self._cancel_parked(
            keys=[ref.thread_keys.pending, ref.keys.record],
            args=[ref.run_id, now_iso(), self.run_ttl],
        )
        if parked:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(keys.tenant_unfinished_runs(ref.tenant), ref.run_id)
                pipe.expire(keys.run_thread(ref.tenant, ref.run_id), self.run_ttl)
                await pipe.execute()
        return bool(parked)

    async def delete_run_records(self, run: RunRecord) -> None:
        """Delete a finished run's record and event log."""
        rk = run.ref.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(rk.record, rk.events, rk.cancel)
            pipe.zrem(run.ref.thread_keys.runs, run.run_id)
            pipe.delete(keys.run_thread(run.tenant, run.run_id))
            await pipe.execute()

    async def set_reattach(self, ref: RunRef, waiting: bool) -> None:
        """Mark (or unmark) the run as having a cancel that waits for its client to re-join
        (reattach.py); an expired record is not recreated."""
        if waiting:
            await self._set_fields(keys=[ref.keys.record], args=["reattach", "1"])
        else:
            await self.redis.hdel(ref.keys.record, "reattach")

    async def log_exists(self, ref: RunRef) -> bool:
        """Whether the run's event log is still there (it expires after the run)."""
        return bool(await self.redis.exists(ref.keys.events))

    # -- indexes: bounded reads and trimming ---------------------------------------------------

    def _index_unfinished(self, pipe: Pipeline, tenant: str, run_id: str) -> None:
        """Add a run to the tenant's unfinished runs; now and then, entries older than any run
        lives go (runs whose finish was lost) and the index's expiry starts again."""
        index = keys.tenant_unfinished_runs(tenant)
        now = time.time()
        pipe.zadd(index, {run_id: now})
        trimmed = self._trimmed.get(tenant)
        if trimmed is None or time.monotonic() - trimmed >= _INDEX_TRIM_EVERY_S:
            if len(self._trimmed) >= _INDEX_TRIM_TENANTS:
                self._trimmed.clear()
            self._trimmed[tenant] = time.monotonic()
            pipe.zremrangebyscore(index, "-inf", now - _INDEX_TTL_S)
            pipe.expire(index, _INDEX_TTL_S)

    async def _forget_unfinished(self, tenant: str, run_id: str) -> None:
        """Undo the indexes written for a run that was not created (a conflict, a duplicate)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(keys.tenant_unfinished_runs(tenant), run_id)
            pipe.delete(keys.run_thread(tenant, run_id))
            await pipe.execute()

    async def _trim_runs(self, tk: keys.ThreadKeys, excess: int) -> None:
        """Keep the thread's run index to its newest `runs_per_thread` runs.

        The oldest runs past the bound go with their records and event logs if they have ended
        (or expired); a run still pending or running stays until a later trim.
        """
        if excess <= 0:
            return
        oldest = await self.redis.zrange(tk.runs, 0, min(excess, _TRIM_BATCH) - 1)
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in oldest:
                pipe.hget(tk.run(rid.decode()).record, "status")
            statuses = await pipe.execute()
        ended = [
            rid.decode()
            for rid, st in zip(oldest, statuses, strict=True)
            if st is None or st in TERMINAL_STATUSES_BYTES
        ]
        if not ended:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(tk.runs, *ended)
            for rid in ended:
                rk = tk.run(rid)
                pipe.delete(rk.record, rk.events, rk.cancel)
                pipe.delete(keys.run_thread(tk.tenant, rid))
            await pipe.execute()

    async def resolve_many(self, tenant: str, thread_id: str, run_ids: list[str]) -> list[RunRef]:
        """Where each run lives (`resolve` for many runs, one round trip)."""
        if thread_id or not run_ids:
            return [RunRef(tenant, thread_id, rid) for rid in run_ids]
        async with self.redis.pipeline(transaction=False) as pipe:
            for rid in run_ids:
                pipe.get(keys.run_thread(tenant, rid))
            found = await pipe.execute()
        return [
            RunRef(tenant, tid.decode() if tid else rid, rid)
            for rid, tid in zip(run_ids, found, strict=True)
        ]

    async def unfinished_runs(
        self, tenant: str, thread_id: str, limit: int
    ) -> tuple[list[RunRecord], bool, int]:
        """Up to `limit` of the tenant's pending and running runs, oldest first (with
        `thread_id`: that thread's active run, then its parked runs in order); whether there are
        more; and how many records were read.

        Stateless runs are not found this way. Index entries of runs that ended are dropped.
        """
        if thread_id:
            tk = keys.ThreadKeys(tenant, thread_id)
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.hget(tk.record, "active_run")
                pipe.lrange(tk.pending, 0, limit)
                active, parked = await pipe.execute()
            run_ids = list(dict.fromkeys([_decoded(active)] if active else []))
            run_ids += [r.decode() for r in parked if r.decode() not in run_ids]
            refs = [RunRef(tenant, thread_id, rid) for rid in run_ids[:limit]]
            runs = await self.load_runs(refs)
            return (
                [r for r in runs if r.status.encode() in _UNFINISHED],
                len(run_ids) > limit,
                len(refs),
            )
        index = keys.tenant_unfinished_runs(tenant)
        entries = [r.decode() for r in await self.redis.zrange(index, 0, limit)]
        refs = await self.resolve_many(tenant, "", entries[:limit])
        loaded = {r.run_id: r for r in await self.load_runs(refs)}
        ended = {ref.run_id for ref in refs if ref.run_id not in loaded}
        ended |= {rid for rid, r in loaded.items() if r.status.encode() not in _UNFINISHED}
        if ended:
            await self.redis.zrem(index, *ended)
        unfinished = [loaded[ref.run_id] for ref in refs if ref.run_id not in ended]
        return unfinished, len(entries) > limit, 2 * len(refs)
