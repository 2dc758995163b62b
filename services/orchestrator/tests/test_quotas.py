"""Tenant tiers and run quotas (scheduler.py) on real Redis, through the run engine."""

from __future__ import annotations

import asyncio
import time

import pytest
from engine_support import Cluster, Replica, eventually
from prometheus_client import REGISTRY

from cai_orchestrator import keys
from cai_orchestrator.records import RunRecord
from cai_orchestrator.scheduler import QuotaExceeded


def quota(running: int, queued: int, tier: str = "") -> dict[str, object]:
    return {"max_running_runs": running, "max_queued_runs": queued, "tier": tier}


async def admitted(replica: Replica, tenant: str) -> int:
    scheduler = replica.engine.runs.scheduler
    assert scheduler is not None
    return await scheduler.admitted(tenant)


async def none_admitted(replica: Replica, tenant: str) -> bool:
    return await admitted(replica, tenant) == 0


async def ended(cluster: Cluster, replica: Replica, runs: list[RunRecord]) -> bool:
    for run in runs:
        if (await cluster.run(replica, run.run_id, run.thread_id)).status != "success":
            return False
    return True


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_create_past_the_quota_is_refused_and_nothing_accepted_is_lost(
    cluster: Cluster,
) -> None:
    a = cluster.replica("a")
    rejected_before = sample("cai_runs_rejected_quota_total", tier="batch")
    admitted_before = sample("cai_runs_admitted_total", tier="batch")
    accepted = [
        await a.engine.runs.create(cluster.new_run(**quota(1, 2, "batch"))) for _ in range(3)
    ]
    with pytest.raises(QuotaExceeded) as refused:
        await a.engine.runs.create(cluster.new_run(**quota(1, 2, "batch")))
    assert refused.value.code == "quota" and refused.value.retry_after_s >= 1
    assert sample("cai_runs_rejected_quota_total", tier="batch") == rejected_before + 1
    assert sample("cai_runs_admitted_total", tier="batch") == admitted_before + 3
    assert all(r.tier == "batch" for r in accepted)
    # Another tenant is not counted against this one.
    other = Cluster(cluster.redis_url, cluster.gate, cluster.saver)
    await a.engine.runs.create(other.new_run(**quota(1, 0)))
    # Every accepted run executes; once they end, the tenant may create again.
    await a.start()
    cluster.gate.opened.set()
    await eventually(lambda: ended(cluster, a, accepted))
    await eventually(lambda: none_admitted(a, cluster.tenant))
    await a.engine.runs.create(cluster.new_run(**quota(1, 2, "batch")))


async def test_gateways_racing_on_one_tenant_admit_no_more_than_the_quota(
    cluster: Cluster,
) -> None:
    a, b = cluster.replica("a"), cluster.replica("b")

    async def create(replica: Replica) -> bool:
        try:
            await replica.engine.runs.create(cluster.new_run(**quota(2, 3)))
        except QuotaExceeded:
            return False
        return True

    results = await asyncio.gather(*(create(a if i % 2 else b) for i in range(20)))
    assert sum(results) == 5
    assert await admitted(a, cluster.tenant) == 5


async def test_a_cancelled_waiting_run_no_longer_counts(cluster: Cluster) -> None:
    a = cluster.replica("a")
    thread = await a.engine.store.create_thread(cluster.tenant, "", {}, "raise")
    first = await a.engine.runs.create(cluster.new_run(thread.thread_id, **quota(1, 1)))
    second = await a.engine.runs.create(cluster.new_run(thread.thread_id, **quota(1, 1)))
    with pytest.raises(QuotaExceeded):
        await a.engine.runs.create(cluster.new_run(**quota(1, 1)))
    await a.engine.runs.cancel(cluster.tenant, thread.thread_id, second.run_id, "interrupt")
    assert await admitted(a, cluster.tenant) == 1
    await a.engine.runs.create(cluster.new_run(**quota(1, 1)))
    assert first.status == "pending"


async def test_a_refused_create_does_not_count(cluster: Cluster) -> None:
    a = cluster.replica("a")
    with pytest.raises(Exception, match="not found"):
        await a.engine.runs.create(cluster.new_run("no-such-thread", **quota(1, 0)))
    assert await admitted(a, cluster.tenant) == 0


async def test_an_idempotent_retry_counts_once(cluster: Cluster) -> None:
    a = cluster.replica("a")
    first = await a.engine.runs.create(cluster.new_run(idempotency_key="k", **quota(1, 1)))
    again = await a.engine.runs.create(cluster.new_run(idempotency_key="k", **quota(1, 1)))
    assert again.run_id == first.run_id
    assert await admitted(a, cluster.tenant) == 1


async def test_a_retry_of_a_stateless_run_that_ended_does_not_count(cluster: Cluster) -> None:
    a = cluster.replica("a")
    await a.start()
    cluster.gate.opened.set()
    first = await a.engine.runs.create(cluster.new_run(idempotency_key="done", **quota(1, 1)))
    await eventually(lambda: ended(cluster, a, [first]))
    await eventually(lambda: none_admitted(a, cluster.tenant))
    again = await a.engine.runs.create(cluster.new_run(idempotency_key="done", **quota(1, 1)))
    assert again.run_id == first.run_id and again.status == "success"
    assert await admitted(a, cluster.tenant) == 0


async def test_runs_that_ended_without_release_are_dropped_at_the_quota(
    cluster: Cluster,
) -> None:
    """A creator or worker that died between the two steps leaves an entry behind: a tenant at
    its quota has such entries checked and dropped, so a leak never locks it out."""
    a = cluster.replica("a")
    live = await a.engine.runs.create(cluster.new_run(**quota(1, 1)))
    # An entry for a run that was never recorded, admitted long ago.
    redis = a.engine.store.redis
    await redis.zadd(keys.tenant_admitted(cluster.tenant), {"ghost\nghost": time.time() - 3600})
    assert await admitted(a, cluster.tenant) == 2
    await a.engine.runs.create(cluster.new_run(**quota(1, 1)))  # the ghost made room
    assert await admitted(a, cluster.tenant) == 2
    assert live.status == "pending"


async def test_queue_wait_is_observed_by_tier(cluster: Cluster) -> None:
    a = cluster.replica("a")
    before = sample("cai_queue_wait_seconds_count", tier="premium")
    run = await a.engine.runs.create(cluster.new_run(**quota(5, 5, "premium")))
    await a.start()
    cluster.gate.opened.set()
    await eventually(lambda: ended(cluster, a, [run]))
    assert sample("cai_queue_wait_seconds_count", tier="premium") == before + 1
