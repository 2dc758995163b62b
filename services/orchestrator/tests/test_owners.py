"""The owners of the queue, the leases and the cancel protocol, each against real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cai_orchestrator import keys
from cai_orchestrator.cancel import CancelBus
from cai_orchestrator.lease import Leases
from cai_orchestrator.queue import RunQueue
from cai_orchestrator.records import RunRef


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.delete(keys.QUEUE, keys.DISPATCHING)
    yield client
    await client.aclose()


def ref() -> RunRef:
    return RunRef("tenant", str(uuid.uuid4()), str(uuid.uuid4()))


async def test_a_job_is_taken_once_and_gone_when_acked(redis: Redis) -> None:
    a, b = RunQueue(redis, "a"), RunQueue(redis, "b")
    await a.ensure_group()
    await a.ensure_group()  # idempotent
    r = ref()
    await a.append(r, b'{"traceparent":"x"}')
    jobs = await a.take(10, block_ms=100)
    assert [j.ref for j in jobs] == [r] and jobs[0].trace == b'{"traceparent":"x"}'
    assert await b.take(10, block_ms=50) == []  # one consumer group: nobody takes it twice
    assert await a.stats() == {"lag": 0, "pending": 1}
    await a.ack(jobs[0])
    assert await a.stats() == {"lag": 0, "pending": 0}
    assert await redis.xlen(keys.QUEUE) == 0


async def test_a_stale_job_is_claimed_by_one_replica(redis: Redis) -> None:
    a, b, c = RunQueue(redis, "a"), RunQueue(redis, "b"), RunQueue(redis, "c")
    await a.ensure_group()
    r = ref()
    await a.append(r, b"{}")
    [job] = await a.take(1, block_ms=100)
    assert await b.stale(min_idle_ms=60_000) == []  # not idle long enough
    await asyncio.sleep(0.05)
    [stale] = await b.stale(min_idle_ms=10)
    assert stale.consumer == "a" and stale.job is not None and stale.job.ref == r
    claimed = await b.claim(stale.entry_id, 10)
    assert claimed is not None and claimed.ref == r
    assert await c.claim(stale.entry_id, 10_000) is None  # just claimed: not idle for c


async def test_hand_back_makes_a_fresh_entry_anyone_takes_now(redis: Redis) -> None:
    a, b = RunQueue(redis, "a"), RunQueue(redis, "b")
    await a.ensure_group()
    r = ref()
    await a.append(r, b"{}")
    [job] = await a.take(1, block_ms=100)
    await a.hand_back(job)
    assert await a.stats() == {"lag": 1, "pending": 0}
    [again] = await b.take(1, block_ms=100)
    assert again.ref == r and again.entry_id != job.entry_id


async def test_queue_position_counts_only_undelivered_jobs(redis: Redis) -> None:
    q = RunQueue(redis, "a")
    await q.ensure_group()
    refs = [ref() for _ in range(3)]
    for r in refs:
        await q.append(r, b"{}")
    assert [await q.position(r) for r in refs] == [1, 2, 3]
    await q.take(1, block_ms=100)
    assert [await q.position(r) for r in refs] == [None, 1, 2]


async def test_overdue_intents_name_the_runs_to_check(redis: Redis) -> None:
    q = RunQueue(redis, "a")
    due, later = ref(), ref()
    async with redis.pipeline(transaction=False) as pipe:
        q.intend(pipe, due, -1)
        q.intend(pipe, later, 60)
        await pipe.execute()
    assert await q.overdue_intents() == [due]
    await q.forget_intent(due)
    assert await q.overdue_intents() == []


async def test_a_lease_has_one_holder_and_only_it_renews_or_releases(redis: Redis) -> None:
    r = ref()
    mine, theirs = Leases(redis, "me", 5), Leases(redis, "them", 5)
    assert await mine.acquire(r) and not await theirs.acquire(r)
    assert (await mine.renew(r))[0] and not (await theirs.renew(r))[0]
    await theirs.release(r)  # not theirs to release
    assert await mine.held(r)
    await mine.release(r)
    assert not await mine.held(r) and await theirs.acquire(r)


async def test_a_kept_lease_reports_the_cancel_asked_and_its_loss(redis: Redis) -> None:
    r = ref()
    leases = Leases(redis, "me", 0.3)
    assert await leases.acquire(r)
    await redis.set(r.keys.cancel, "rollback")  # each renewal reads the flag with the lease
    lost = asyncio.Event()
    seen: list[str] = []
    takeover: list[asyncio.Task[object]] = []

    def cancelled(action: str) -> None:
        seen.append(action)
        if len(seen) == 2:  # taken over while we sleep
            takeover.append(asyncio.create_task(redis.set(r.keys.lease, "someone-else")))

    keeper = asyncio.create_task(leases.keep(r, lost.set, cancelled))
    async with asyncio.timeout(10):
        await lost.wait()
        await keeper
    assert seen == ["rollback", "rollback"] and await redis.get(r.keys.lease) == b"someone-else"


async def test_a_cancel_request_goes_to_the_local_run_first(redis: Redis) -> None:
    bus = CancelBus(redis)
    seen: list[tuple[str, str]] = []
    bus.local = lambda run_id, action: seen.append((run_id, action)) is None
    r = ref()
    await bus.request(r, "rollback")
    assert seen == [(r.run_id, "rollback")]
    assert await bus.requested(r) == "rollback"
    assert 0 < await redis.ttl(r.keys.cancel) <= 86400


async def test_a_cancel_request_for_a_run_elsewhere_reaches_that_replica(
    redis: Redis, redis_url: str
) -> None:
    sender = CancelBus(redis)  # its local canceller knows no runs
    listener_redis = Redis.from_url(redis_url, socket_timeout=None)
    receiver = CancelBus(redis, listener_redis)
    got: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    receiver.local = lambda run_id, action: got.put_nowait((run_id, action)) is None
    listening = asyncio.create_task(receiver.listen())
    r = ref()
    try:
        async with asyncio.timeout(10):
            # The subscription may not be up yet: repeat until heard (requests are idempotent).
            while got.empty():
                await sender.request(r, "interrupt")
                await asyncio.sleep(0.05)
            assert await got.get() == (r.run_id, "interrupt")
    finally:
        listening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await listening
        await listener_redis.aclose()
