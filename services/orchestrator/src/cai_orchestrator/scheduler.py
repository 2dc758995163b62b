"""Per-tenant scheduling state: tiers, run quotas and fair dispatch.

A tenant may have at most `max_running_runs + max_queued_runs` runs that have not ended. Every
run is *admitted* before it is recorded: one script (`lua.ADMIT_RUN`) counts the tenant's
admitted runs and adds the new one only below the quota, so gateways racing on one tenant can
never admit more than the quota between them. A refused create is a `QuotaExceeded` (gRPC
RESOURCE_EXHAUSTED with a `retry-after` trailer, HTTP 429 with `Retry-After`); nothing already
admitted is ever dropped.

The admitted set is the tenant's own key, never a thread's (it is not in any thread's cluster
slot), so admitting is a step of its own before the run's record is written, and releasing one
after its terminal event is written. A crash between the steps leaves an entry for a run that
never was or has ended; `stale_candidates` + `forget` let `RunService` drop those (it checks the
records) when a tenant reaches its quota, so a leak can never lock a tenant out.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from cai_orchestrator import keys, lua
from cai_orchestrator.records import RunRef, StoreError

TIERS = ("premium", "standard", "batch")
DEFAULT_WEIGHTS = {"premium": 4.0, "standard": 2.0, "batch": 1.0}


@dataclass(frozen=True, slots=True)
class Quota:
    """The tier and run quotas a run is admitted under (from its API key, else defaults)."""

    tier: str
    max_running_runs: int
    max_queued_runs: int

    @property
    def limit(self) -> int:
        """Runs of the tenant that may not have ended at once: running plus waiting."""
        return self.max_running_runs + self.max_queued_runs


class QuotaExceeded(StoreError):
    """The tenant has as many runs not yet ended as its quotas allow."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__("quota", message)
        self.retry_after_s = retry_after_s


def _member(ref: RunRef) -> str:
    # Unambiguous: a thread id never holds a newline (convert.check_ids).
    return f"{ref.thread_id}\n{ref.run_id}"


class Scheduler:
    """The tenants' admitted runs (quotas)."""

    def __init__(self, redis: Redis, retry_after_s: int, repair_interval_s: float) -> None:
        self.redis = redis
        self.retry_after_s = retry_after_s
        self.repair_interval_s = repair_interval_s
        self._admit = redis.register_script(lua.ADMIT_RUN)

    async def admit(self, ref: RunRef, quota: Quota) -> bool:
        """Count the run against its tenant's quota; False (nothing written) if it is full."""
        allowed, _ = await self._admit(
            keys=[keys.tenant_admitted(ref.tenant)],
            args=[_member(ref), time.time(), quota.limit],
        )
        return bool(allowed)

    def refusal(self, quota: Quota) -> QuotaExceeded:
        """The error for a create past the tenant's quota."""
        return QuotaExceeded(
            f"Too many runs not yet finished for this tenant (max_running_runs "
            f"{quota.max_running_runs} + max_queued_runs {quota.max_queued_runs}); "
            "retry after the Retry-After interval",
            self.retry_after_s,
        )

    async def release(self, ref: RunRef) -> None:
        """The run has ended (or was never recorded): it no longer counts."""
        await self.redis.zrem(keys.tenant_admitted(ref.tenant), _member(ref))

    async def admitted(self, tenant: str) -> int:
        """How many of the tenant's runs count against its quota now."""
        return int(await self.redis.zcard(keys.tenant_admitted(tenant)))

    async def stale_candidates(self, tenant: str, older_than_s: float, count: int) -> list[RunRef]:
        """The tenant's oldest admitted runs, admitted over `older_than_s` ago, to check for
        runs that ended or never were; none if a repair ran within `repair_interval_s`."""
        first = await self.redis.set(
            keys.tenant_repair(tenant), b"1", nx=True, px=int(self.repair_interval_s * 1000)
        )
        if not first:
            return []
        members = await self.redis.zrangebyscore(
            keys.tenant_admitted(tenant), "-inf", time.time() - older_than_s, 0, count
        )
        refs = []
        for m in members:
            thread_id, _, run_id = m.decode().partition("\n")
            refs.append(RunRef(tenant, thread_id, run_id))
        return refs

    async def forget(self, tenant: str, refs: Iterable[RunRef]) -> None:
        """Drop admitted runs found to have ended or never been recorded."""
        members = [_member(r) for r in refs]
        if members:
            await self.redis.zrem(keys.tenant_admitted(tenant), *members)


@dataclass(frozen=True, slots=True)
class Waiting:
    """A run waiting for fair dispatch: where it lives and its trace context."""

    ref: RunRef
    trace: bytes

    def encode(self) -> bytes:
        """The list entry (unambiguous: no id holds a newline)."""
        r = self.ref
        return f"{r.tenant}\n{r.thread_id}\n{r.run_id}\n".encode() + self.trace

    @classmethod
    def decode(cls, raw: bytes) -> Waiting:
        """Read a list entry back."""
        tenant, thread_id, run_id, trace = raw.split(b"\n", 3)
        return cls(RunRef(tenant.decode(), thread_id.decode(), run_id.decode()), trace)


class FairQueue:
    """Runs waiting for a free slot, per tenant, taken in weighted fair order."""

    def __init__(
        self, redis: Redis, weights: Mapping[str, float] | None = None, default_tier: str = ""
    ) -> None:
        self.redis = redis
        self.weights = dict(weights or DEFAULT_WEIGHTS)
        self.default_weight = self.weights.get(default_tier or "standard", 2.0)
        self._enqueue = redis.register_script(lua.FAIR_ENQUEUE)
        self._take = redis.register_script(lua.FAIR_TAKE)

    async def enqueue(self, ref: RunRef, trace: bytes, tier: str = "") -> None:
        """Put a run at the end of its tenant's list ("" tier: the tenant's last, else the
        default)."""
        weight = self.weights.get(tier, self.default_weight) if tier else ""
        await self._enqueue(
            keys=[
                keys.SCHED_TENANTS,
                keys.SCHED_VTIME,
                keys.SCHED_FINISH,
                keys.SCHED_WEIGHT,
                keys.SCHED_WAITING,
                keys.sched_list(ref.tenant),
            ],
            args=[ref.tenant, Waiting(ref, trace).encode(), weight, self.default_weight],
        )

    async def take(self, count: int) -> list[bytes]:
        """Up to `count` jobs in fair order, moved into the feeding set (encoded entries)."""
        return list(
            await self._take(
                keys=[
                    keys.SCHED_TENANTS,
                    keys.SCHED_VTIME,
                    keys.SCHED_FINISH,
                    keys.SCHED_WEIGHT,
                    keys.SCHED_WAITING,
                    keys.SCHED_FEEDING,
                ],
                args=[count, time.time(), keys.SCHED_LIST_PREFIX, self.default_weight],
            )
        )

    @staticmethod
    def fed(pipe: Pipeline, jobs: list[bytes]) -> None:
        """On the caller's pipeline, after the queue appends: the jobs left the feeding set."""
        pipe.zrem(keys.SCHED_FEEDING, *jobs)

    async def stale_feeding(self, older_than_s: float, count: int = 100) -> list[bytes]:
        """Jobs taken but not appended for `older_than_s`: their replica died in between."""
        return list(
            await self.redis.zrangebyscore(
                keys.SCHED_FEEDING, "-inf", time.time() - older_than_s, 0, count
            )
        )

    async def waiting(self) -> int:
        """Runs waiting in every tenant's list."""
        return int(await self.redis.get(keys.SCHED_WAITING) or 0)

    async def place(self, ref: RunRef) -> int | None:
        """An estimate of the run's 1-based place in the order runs will be taken, or None
        if it does not wait here: the runs of every tenant whose start tags come before its."""
        raw = await self.redis.lrange(keys.sched_list(ref.tenant), 0, -1)
        wanted = f"{ref.tenant}\n{ref.thread_id}\n{ref.run_id}\n".encode()
        index = next((i for i, j in enumerate(raw) if j.startswith(wanted)), None)
        if index is None:
            return None
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(keys.SCHED_TENANTS, 0, -1, withscores=True)
            pipe.hgetall(keys.SCHED_WEIGHT)
            tenants, weights = await pipe.execute()
        tags = {t.decode(): float(s) for t, s in tenants}
        w = {t.decode(): float(v) for t, v in weights.items()}
        if ref.tenant not in tags:
            return None
        mine = tags[ref.tenant] + index / w.get(ref.tenant, self.default_weight)
        ahead = index
        others = [t for t in tags if t != ref.tenant]
        if others:
            async with self.redis.pipeline(transaction=False) as pipe:
                for t in others:
                    pipe.llen(keys.sched_list(t))
                lengths = await pipe.execute()
            for t, n in zip(others, lengths, strict=True):
                before = math.floor((mine - tags[t]) * w.get(t, self.default_weight)) + 1
                ahead += max(0, min(int(n), before))
        return ahead + 1
