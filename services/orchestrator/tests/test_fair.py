"""Fair dispatch across tenants (scheduler.FairQueue) on real Redis: alone, with replicas taking
at once, and through the run engine."""

from __future__ import annotations

import asyncio
import collections
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from engine_support import Cluster, Gate, eventually
from langgraph.config import get_config
from redis.asyncio import Redis

from cai_orchestrator import keys
from cai_orchestrator.keys import ThreadKeys
from cai_orchestrator.queue import RunQueue
from cai_orchestrator.records import RunRecord, RunRef
from cai_orchestrator.scheduler import FairQueue, Waiting


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await clear(client)
    yield client
    await clear(client)
    await client.aclose()


async def clear(client: Redis) -> None:
    found = [k async for k in client.scan_iter(match="cai:\\{sched\\}:*")]
    await client.delete(keys.QUEUE, keys.DISPATCHING, *found)


async def fill(fair: FairQueue, tenant: str, n: int, tier: str = "") -> list[RunRef]:
    refs = [RunRef(tenant, str(uuid.uuid4()), str(uuid.uuid4())) for _ in range(n)]
    for r in refs:
        await fair.enqueue(r, b"{}", tier)
    return refs


def tenants(jobs: list[bytes]) -> list[str]:
    return [Waiting.decode(j).ref.tenant for j in jobs]


async def test_a_tenant_with_one_run_is_served_next_whatever_the_backlog(redis: Redis) -> None:
    fair = FairQueue(redis)
    a = await fill(fair, "a", 200)
    assert tenants(await fair.take(3)) == ["a"] * 3
    [b] = await fill(fair, "b", 1)
    [job] = await fair.take(1)
    assert Waiting.decode(job).ref == b
    # Within a tenant: first in, first out.
    rest = [Waiting.decode(j).ref for j in await fair.take(500)]
    assert rest == a[3:]
    assert await fair.waiting() == 0


@pytest.mark.parametrize(
    ("tiers", "expected"), [(("premium", "batch"), (40, 10)), (("standard", "batch"), (33, 17))]
)
async def test_backlogged_tenants_share_by_the_weight_of_their_tier(
    redis: Redis, tiers: tuple[str, str], expected: tuple[int, int]
) -> None:
    fair = FairQueue(redis)
    await fill(fair, "heavy", 100, tiers[0])
    await fill(fair, "light", 100, tiers[1])
    got = collections.Counter(tenants(await fair.take(50)))
    assert abs(got["heavy"] - expected[0]) <= 1 and abs(got["light"] - expected[1]) <= 1, got


async def test_weights_are_configurable(redis: Redis) -> None:
    fair = FairQueue(redis, {"premium": 1, "standard": 1, "batch": 1})
    await fill(fair, "p", 20, "premium")
    await fill(fair, "b", 20, "batch")
    got = collections.Counter(tenants(await fair.take(20)))
    assert got == {"p": 10, "b": 10}


async def test_replicas_taking_at_once_take_every_run_once(redis_url: str, redis: Redis) -> None:
    fair = FairQueue(redis)
    refs = await fill(fair, "a", 150) + await fill(fair, "b", 150, "batch")
    clients = [Redis.from_url(redis_url) for _ in range(4)]
    taken: list[bytes] = []

    async def taker(client: Redis) -> None:
        mine = FairQueue(client)
        while jobs := await mine.take(7):
            taken.extend(jobs)

    await asyncio.gather(*(taker(c) for c in clients))
    for c in clients:
        await c.aclose()
    assert sorted(Waiting.decode(j).ref.run_id for j in taken) == sorted(r.run_id for r in refs)
    assert await redis.zcard(keys.SCHED_FEEDING) == 300  # until appended to the queue


async def test_a_run_taken_by_a_replica_that_died_before_appending_is_appended(
    redis: Redis,
) -> None:
    queue = RunQueue(redis, "survivor", FairQueue(redis))
    await queue.ensure_group()
    assert queue.fair is not None
    [ref] = await fill(queue.fair, "a", 1)
    await queue.fair.take(1)  # a replica took it, then died before its XADD
    assert await queue.refeed_stale(60) == 0  # not overdue yet
    assert await queue.refeed_stale(0) == 1
    [job] = await queue.take(1, block_ms=100)
    assert job.ref == ref and await redis.zcard(keys.SCHED_FEEDING) == 0


async def test_queue_position_estimates_the_order_of_service(redis: Redis) -> None:
    queue = RunQueue(redis, "r", FairQueue(redis))
    fair = queue.fair
    assert fair is not None
    await queue.ensure_group()
    a = await fill(fair, "a", 10)
    await fair.take(1)  # a's backlog is being served
    [b] = await fill(fair, "b", 1)
    assert [await queue.position(r) for r in (b, a[1], a[9])] == [1, 2, 10]
    assert await queue.position(a[0]) is None  # taken
    order = [Waiting.decode(j).ref for j in await fair.take(10)]
    assert order == [b, *a[1:]]


class OrderGate(Gate):
    """Opens at once, and records the order in which runs' graphs start (by checkpoint thread)."""

    def __init__(self) -> None:
        super().__init__()
        self.order: list[str] = []
        self.opened.set()

    async def wait(self) -> None:
        self.order.append(get_config()["configurable"]["thread_id"])
        await super().wait()


def started_at(gate: OrderGate, run: RunRecord) -> int:
    return gate.order.index(ThreadKeys(run.tenant, run.thread_id).checkpoint_thread)


async def create_many(cluster: Cluster, replica: Any, n: int, **kw: Any) -> list[RunRecord]:
    runs = []
    for _ in range(n):
        new = cluster.new_run(str(uuid.uuid4()), if_not_exists="create", **kw)
        runs.append(await replica.engine.runs.create(new))
    return runs


async def test_the_engine_serves_another_tenants_run_before_a_backlog(cluster: Cluster) -> None:
    gate = OrderGate()
    cluster.gate = gate
    a = cluster.replica("a", max_concurrent_runs=1)
    other = Cluster(cluster.redis_url, gate, cluster.saver)
    backlog = await create_many(cluster, a, 20)
    [b] = await create_many(other, a, 1)
    await a.start()

    async def all_started() -> bool:
        return len(gate.order) == 21

    await eventually(all_started)
    assert started_at(gate, b) <= 1, gate.order
    assert [started_at(gate, r) for r in backlog] == sorted(started_at(gate, r) for r in backlog)


async def test_the_engine_shares_slots_by_tier(cluster: Cluster) -> None:
    gate = OrderGate()
    cluster.gate = gate
    a = cluster.replica("a", max_concurrent_runs=1)
    batch = Cluster(cluster.redis_url, gate, cluster.saver)
    premium = await create_many(cluster, a, 20, tier="premium")
    low = await create_many(batch, a, 20, tier="batch")
    await a.start()

    async def all_started() -> bool:
        return len(gate.order) == 40

    await eventually(all_started, timeout=30)
    first = gate.order[:15]
    high = sum(ThreadKeys(r.tenant, r.thread_id).checkpoint_thread in first for r in premium)
    batch_runs = sum(ThreadKeys(r.tenant, r.thread_id).checkpoint_thread in first for r in low)
    assert high >= 10 and batch_runs >= 2, (high, batch_runs)  # ~4:1, and batch never starves
