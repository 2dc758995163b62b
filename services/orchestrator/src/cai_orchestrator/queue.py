"""The run queue: one Redis Stream consumed by every replica as one consumer group.

With fair dispatch (scheduler.FairQueue, what the engine uses), a run is appended to its
tenant's list first, and reaches the stream only when a replica has a free slot: `take` first
moves as many runs as the replica has room for, in fair order, into the stream, then reads it.
A create that finds nothing undelivered in the stream moves one run in at once, so an idle
replica blocked on the stream wakes at once. The stream thus holds only runs about to be taken,
and its order is the scheduler's.

A job names a run (tenant, thread, run id) and carries its trace context. Appending a job is the
second step after the run is recorded (store.py); the dispatch intent written with the record
lets `sweep_intents` re-queue a run whose append a crash lost. Appending twice is harmless: a
worker drops a job whose run is finished or leased elsewhere.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from cai_orchestrator import keys, lua
from cai_orchestrator.records import RunRef
from cai_orchestrator.scheduler import FairQueue, Waiting


@dataclass(frozen=True, slots=True)
class Job:
    """One queue entry: the run to execute."""

    entry_id: bytes
    ref: RunRef
    trace: bytes

    @classmethod
    def from_entry(cls, entry_id: bytes, fields: dict[bytes, bytes]) -> Job:
        """Decode a stream entry."""
        run_id = fields.get(b"run_id", b"").decode()
        ref = RunRef(
            fields.get(b"tenant", b"").decode(),
            fields.get(b"thread_id", b"").decode() or run_id,
            run_id,
        )
        return cls(entry_id, ref, fields.get(b"trace", b"{}"))


@dataclass(frozen=True, slots=True)
class Stale:
    """A job delivered to a consumer that has not acknowledged it for a while."""

    entry_id: bytes
    consumer: str
    job: Job | None  # None: the entry itself is gone


def _fields(ref: RunRef, trace: bytes | str) -> dict[bytes, bytes]:
    return {
        b"run_id": ref.run_id.encode(),
        b"tenant": ref.tenant.encode(),
        b"thread_id": ref.thread_id.encode(),
        b"trace": trace.encode() if isinstance(trace, str) else trace,
    }


def _intent(ref: RunRef) -> str:
    return f"{ref.tenant}\n{ref.thread_id}\n{ref.run_id}"


class RunQueue:
    """The queue's producer and consumer sides, for one replica (`consumer`)."""

    def __init__(self, redis: Redis, consumer: str, fair: FairQueue | None = None) -> None:
        self.redis = redis
        self.consumer = consumer
        # None: runs go straight to the stream (FIFO over every tenant; tests of the queue alone).
        self.fair = fair
        # Whether the next take moves runs into the stream first: not after an idle read that
        # followed a move that found the lists empty (a create moves a run in itself then).
        self._feed_next = True
        self._ack = redis.register_script(lua.ACK_JOB)

    async def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if needed."""
        try:
            await self.redis.xgroup_create(keys.QUEUE, keys.GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # -- producing --------------------------------------------------------------------------

    @staticmethod
    def intend(pipe: Pipeline, ref: RunRef, check_after_s: float) -> None:
        """Queue, on the caller's pipeline, the intent to append `ref` (see `sweep_intents`)."""
        pipe.zadd(keys.DISPATCHING, {_intent(ref): time.time() + check_after_s})

    async def append(self, ref: RunRef, trace: bytes | str, tier: str = "") -> None:
        """Put a run in the queue (and drop its dispatch intent).

        With fair dispatch it waits in its tenant's list (`tier` "": the tenant's last tier);
        if the stream has nothing undelivered (a replica may be idle), one run moves in now.
        """
        if self.fair is None:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(keys.QUEUE, _fields(ref, trace))
                pipe.zrem(keys.DISPATCHING, _intent(ref))
                await pipe.execute()
            return
        await self.fair.enqueue(ref, trace.encode() if isinstance(trace, str) else trace, tier)
        await self.redis.zrem(keys.DISPATCHING, _intent(ref))
        if await self._undelivered() == 0:  # (no group yet: no replica waits)
            await self.feed(1)

    async def feed(self, count: int) -> int:
        """Move up to `count` runs, in fair order, from the tenants' lists into the stream."""
        if self.fair is None or count <= 0:
            return 0
        jobs = await self.fair.take(count)
        if jobs:
            await self._append_taken(jobs)
        return len(jobs)

    async def refeed_stale(self, older_than_s: float) -> int:
        """Append the runs a replica took from the lists but died before appending; how many."""
        if self.fair is None:
            return 0
        jobs = await self.fair.stale_feeding(older_than_s)
        if jobs:
            await self._append_taken(jobs)
        return len(jobs)

    async def _append_taken(self, jobs: list[bytes]) -> None:
        async with self.redis.pipeline(transaction=False) as pipe:
            for raw in jobs:
                waiting = Waiting.decode(raw)
                pipe.xadd(keys.QUEUE, _fields(waiting.ref, waiting.trace))
            FairQueue.fed(pipe, jobs)
            await pipe.execute()

    async def _undelivered(self) -> int | None:
        """Entries of the stream not yet delivered; None without a consumer group."""
        with contextlib.suppress(ResponseError):  # no stream yet
            for group in await self.redis.xinfo_groups(keys.QUEUE):
                if group["name"] == keys.GROUP.encode():
                    return int(group.get("lag") or 0)
        return None

    async def forget_intent(self, ref: RunRef) -> None:
        """The run was not dispatched after all (it waits behind its thread's active run)."""
        await self.redis.zrem(keys.DISPATCHING, _intent(ref))

    async def overdue_intents(self, count: int = 100) -> list[RunRef]:
        """Runs whose append is overdue: their creator may have died between the two steps."""
        members = await self.redis.zrangebyscore(keys.DISPATCHING, "-inf", time.time(), 0, count)
        return [RunRef(*m.decode().split("\n", 2)) for m in members]

    # -- consuming --------------------------------------------------------------------------

    async def take(self, count: int, block_ms: int) -> list[Job]:
        """Up to `count` new jobs for this replica, waiting up to `block_ms` for the first
        (with fair dispatch, first moving up to `count` runs into the stream)."""
        fed = await self.feed(count) if self._feed_next else 0
        reply = await self.redis.xreadgroup(
            keys.GROUP, self.consumer, {keys.QUEUE: ">"}, count=count, block=block_ms
        )
        jobs = [Job.from_entry(eid, f) for _, entries in (reply or ()) for eid, f in entries]
        self._feed_next = bool(jobs) or fed >= count
        return jobs

    async def ack(self, job: Job) -> None:
        """The job is done: acknowledge and delete its entry (one call)."""
        await self._ack(keys=[keys.QUEUE], args=[keys.GROUP, job.entry_id])

    async def hand_back(self, job: Job) -> None:
        """Requeue the job as a fresh entry any replica takes now (instead of a lease wait)."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(keys.QUEUE, _fields(job.ref, job.trace))
            pipe.xack(keys.QUEUE, keys.GROUP, job.entry_id)
            pipe.xdel(keys.QUEUE, job.entry_id)
            await pipe.execute()

    async def stale(self, min_idle_ms: int, count: int = 100) -> list[Stale]:
        """Jobs delivered but unacknowledged for at least `min_idle_ms`, oldest first."""
        pending = await self.redis.xpending_range(
            keys.QUEUE, keys.GROUP, min="-", max="+", count=count, idle=min_idle_ms
        )
        found: list[Stale] = []
        for p in pending:
            entry_id = p["message_id"]
            entries = await self.redis.xrange(keys.QUEUE, entry_id, entry_id)
            job = Job.from_entry(entry_id, entries[0][1]) if entries else None
            found.append(Stale(entry_id, p["consumer"].decode(), job))
        return found

    async def drop_entry(self, entry_id: bytes) -> None:
        """Acknowledge a pending entry whose job is gone."""
        await self.redis.xack(keys.QUEUE, keys.GROUP, entry_id)

    async def claim(self, entry_id: bytes, min_idle_ms: int) -> Job | None:
        """Take over a stale job; None if another replica claimed it first."""
        got = await self.redis.xclaim(
            keys.QUEUE, keys.GROUP, self.consumer, min_idle_ms, [entry_id]
        )
        return Job.from_entry(got[0][0], got[0][1]) if got else None

    # -- observing --------------------------------------------------------------------------

    async def stats(self) -> dict[str, int]:
        """The lag (runs not yet delivered: in the stream or waiting for fair dispatch) and
        pending (delivered, not acked)."""
        waiting = await self.fair.waiting() if self.fair is not None else 0
        for group in await self.redis.xinfo_groups(keys.QUEUE):
            if group["name"] == keys.GROUP.encode():
                lag = (group.get("lag") or 0) + waiting
                return {"lag": lag, "pending": group.get("pending") or 0}
        return {"lag": waiting, "pending": 0}

    async def position(self, ref: RunRef, scan: int = 10_000) -> int | None:
        """1-based place of a run among the runs not yet delivered (an estimate for a run
        waiting for fair dispatch: scheduler.FairQueue.place), or None."""
        in_stream = await self._stream_position(ref.run_id, scan)
        if in_stream is not None or self.fair is None:
            return in_stream
        place = await self.fair.place(ref)
        return None if place is None else place + (await self._undelivered() or 0)

    async def _stream_position(self, run_id: str, scan: int) -> int | None:
        last: Any = b"0"
        with contextlib.suppress(ResponseError):  # no group yet: nothing was delivered
            for g in await self.redis.xinfo_groups(keys.QUEUE):
                if g["name"] == keys.GROUP.encode():
                    last = g["last-delivered-id"]
        entries = await self.redis.xrange(keys.QUEUE, min=b"(" + last, max="+", count=scan)
        wanted = run_id.encode()
        for i, (_, fields) in enumerate(entries):
            if fields.get(b"run_id") == wanted:
                return i + 1
        return None
