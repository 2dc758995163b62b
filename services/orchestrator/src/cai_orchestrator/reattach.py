"""Cancels that wait for the client to come back: a stream a server ended, not its client.

A run created with `on_disconnect=cancel` stops when its client leaves, and the gateway, which
sees the client leave, cancels it at once (CancelRun). A stream can also end because a server
goes away — a gateway or an orchestrator shutting down in a rolling update, a gateway that died —
while the client is told to reconnect. Such a run is not cancelled then: its cancel is recorded
with a deadline `REATTACH_GRACE_SECONDS` away, and any stream that opens the run before the
deadline withdraws it. The run's record is marked first (`RunStore.set_reattach`), so a stream
withdraws only when its run has such a cancel (the record is read anyway). Every replica looks
for overdue cancels about once a second and cancels those runs (each cancel is taken by exactly
one replica).

The pending cancels live in Redis, in one sorted set (`keys.REATTACH`: member
`<tenant>\\n<thread id>\\n<run id>`, score the deadline in Unix seconds), so they outlive the
processes on both sides of the stream.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from cai_orchestrator import keys
from cai_orchestrator.records import RunRef


def _member(ref: RunRef) -> str:
    return f"{ref.tenant}\n{ref.thread_id}\n{ref.run_id}"


class PendingCancels:
    """Cancels of runs whose stream ended without their client leaving, each with a deadline."""

    def __init__(self, redis: Redis, grace_s: float) -> None:
        self.redis = redis
        self.grace_s = grace_s

    async def defer(self, ref: RunRef) -> None:
        """Cancel the run when the grace has passed, unless a stream re-joins it first."""
        await self.redis.zadd(keys.REATTACH, {_member(ref): time.time() + self.grace_s})

    async def withdraw(self, ref: RunRef) -> None:
        """A stream re-joined the run: it is not cancelled for the stream that ended before."""
        await self.redis.zrem(keys.REATTACH, _member(ref))

    async def take_overdue(self, count: int = 100) -> list[RunRef]:
        """Runs whose grace has passed; each is returned to one caller only (the replica whose
        ZREM removed it), so a run is cancelled once however many replicas look."""
        members = await self.redis.zrangebyscore(keys.REATTACH, "-inf", time.time(), 0, count)
        if not members:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for member in members:
                pipe.zrem(keys.REATTACH, member)
            removed = await pipe.execute()
        return [
            RunRef(*member.decode().split("\n", 2))
            for member, taken in zip(members, removed, strict=True)
            if taken
        ]
