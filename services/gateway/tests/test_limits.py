"""The Redis limiter against a real Redis 8: token buckets, stream slots, Redis outages."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from cai_devstack.procs import free_port
from cai_gateway.limits import Limiter, LimiterUnavailable, message_limit_violation, work_cost


@pytest.fixture
async def limiter(redis_url: str) -> AsyncIterator[Limiter]:
    lim = Limiter(redis_url, slot_ttl_s=1.0, prefix=f"test:{uuid.uuid4().hex}")
    yield lim
    await lim.close()


def unreachable(**kwargs: object) -> Limiter:
    return Limiter(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2, **kwargs)  # type: ignore[arg-type]


async def test_bucket_allows_a_burst_then_refuses_with_retry_after(limiter: Limiter) -> None:
    decisions = [await limiter.check_rate("k", rate=1, burst=5) for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert decisions[0].remaining == 4 and decisions[4].remaining == 0
    refused = decisions[-1]
    assert refused.retry_after_s == 1  # one token comes back within a second at 1/s


async def test_bucket_refills_at_its_rate(limiter: Limiter) -> None:
    for _ in range(3):
        assert (await limiter.check_rate("k", rate=20, burst=3)).allowed
    assert not (await limiter.check_rate("k", rate=20, burst=3)).allowed
    started = time.monotonic()
    while not (await limiter.check_rate("k", rate=20, burst=3)).allowed:
        assert time.monotonic() - started < 2, "the bucket never refilled"
        await asyncio.sleep(0.01)
    # 20 tokens/s: the next token arrives after ~50 ms, not immediately and not after seconds.
    assert 0.01 < time.monotonic() - started < 1.0


async def test_keys_have_separate_buckets_and_rate_zero_is_unlimited(limiter: Limiter) -> None:
    assert (await limiter.check_rate("a", rate=1, burst=1)).allowed
    assert not (await limiter.check_rate("a", rate=1, burst=1)).allowed
    assert (await limiter.check_rate("b", rate=1, burst=1)).allowed
    assert all([(await limiter.check_rate("c", rate=0, burst=1)).allowed for _ in range(50)])


async def test_buckets_are_shared_by_every_limiter_on_the_same_redis(
    redis_url: str, limiter: Limiter
) -> None:
    other = Limiter(redis_url, prefix=limiter.prefix)  # another gateway replica
    try:
        assert (await limiter.check_rate("k", rate=0.5, burst=2)).allowed
        assert (await other.check_rate("k", rate=0.5, burst=2)).allowed
        assert not (await limiter.check_rate("k", rate=0.5, burst=2)).allowed
        assert not (await other.check_rate("k", rate=0.5, burst=2)).allowed
    finally:
        await other.close()


async def test_a_request_can_cost_several_tokens_and_leave_a_debt(limiter: Limiter) -> None:
    first = await limiter.check_rate("k", rate=1, burst=5, cost=3)
    assert first.allowed and first.remaining == 2
    assert not (await limiter.check_rate("k", rate=1, burst=5, cost=3)).allowed
    # Work already done is charged even past empty: the key's next requests wait for it.
    assert (await limiter.check_rate("k", rate=1, burst=5, cost=10, debit=True)).allowed
    refused = await limiter.check_rate("k", rate=1, burst=5)
    assert not refused.allowed and 8 <= refused.retry_after_s <= 10
    assert work_cost(0) == work_cost(100) == 1 and work_cost(101) == 2 and work_cost(1000) == 10


async def test_stream_slots_are_capped_and_released(limiter: Limiter) -> None:
    first = await limiter.acquire_slot("k", cap=2)
    second = await limiter.acquire_slot("k", cap=2)
    assert first is not None and second is not None
    assert await limiter.acquire_slot("k", cap=2) is None
    assert await limiter.open_streams("k") == 2
    await first.release()
    await first.release()  # idempotent
    third = await limiter.acquire_slot("k", cap=2)
    assert third is not None and await limiter.open_streams("k") == 2
    assert await limiter.acquire_slot("other", cap=2) is not None  # per key


async def test_slots_released_when_a_wrapped_body_ends_or_fails(limiter: Limiter) -> None:
    async def body(fail: bool) -> AsyncIterator[bytes]:
        yield b"x"
        if fail:
            raise RuntimeError("boom")

    for fail in (False, True):
        slot = await limiter.acquire_slot("k", cap=1)
        assert slot is not None
        wrapped = slot.wrap(body(fail))
        with pytest.raises(RuntimeError) if fail else _nothing():
            assert [c async for c in wrapped] == [b"x"]
        assert slot.released and await limiter.open_streams("k") == 0


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


async def test_live_slots_are_refreshed_and_leaked_slots_expire(
    redis_url: str, limiter: Limiter
) -> None:
    held = await limiter.acquire_slot("k", cap=2)  # this replica keeps refreshing it
    dead = Limiter(redis_url, slot_ttl_s=1.0, prefix=limiter.prefix)
    leaked = await dead.acquire_slot("k", cap=2)  # a replica that dies holding a slot
    assert held is not None and leaked is not None
    assert await limiter.acquire_slot("k", cap=2) is None
    dead._refresher.cancel()  # type: ignore[union-attr]  # it died: no more refreshes
    await dead.redis.aclose()
    deadline = time.monotonic() + 5
    while (slot := await limiter.acquire_slot("k", cap=2)) is None:
        assert time.monotonic() < deadline, "the leaked slot never expired"
        await asyncio.sleep(0.1)
    # The replacement took the leaked slot's place; the live one outlived its 1 s lease.
    assert time.monotonic() - (deadline - 5) > 0.9
    assert held.slot_id in limiter._live["k"] and await limiter.open_streams("k") == 2
    await slot.release()


async def test_redis_down_fails_open_once_logged_then_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lim = unreachable(retry_s=30)
    try:
        with caplog.at_level(logging.WARNING, logger="cai_gateway.limits"):
            decisions = [await lim.check_rate("k", rate=1, burst=1) for _ in range(5)]
            slot = await lim.acquire_slot("k", cap=1)
        assert all(d.allowed for d in decisions)
        assert slot is not None and slot.limiter is None  # an unbacked slot
        await slot.release()
        assert sum("Redis unreachable" in r.getMessage() for r in caplog.records) == 1
        started = time.monotonic()
        await lim.check_rate("k", rate=1, burst=1)  # skipped: no connection attempt
        assert time.monotonic() - started < 0.05
    finally:
        await lim.close()


async def test_redis_down_fails_closed_when_asked() -> None:
    lim = unreachable(fail_open=False)
    try:
        with pytest.raises(LimiterUnavailable):
            await lim.check_rate("k", rate=1, burst=1)
        with pytest.raises(LimiterUnavailable):
            await lim.acquire_slot("k", cap=1)
    finally:
        await lim.close()


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([{"role": "user", "content": "hi"}], None),
        ([{"role": "user", "content": "x" * 11}], "messages[0] is too long: 11 > 10 characters"),
        (
            [{"role": "user", "content": [{"type": "text", "text": "x" * 6}] * 2}],
            "messages[0] is too long: 12 > 10 characters",
        ),
        ([{"role": "user", "content": "a"}] * 4, "too many messages: 4 > 3"),
        ([["user", "x" * 20]], "messages[0] is too long: 24 > 10 characters"),
        ("a message", None),
        ("x" * 11, "messages[0] is too long: 11 > 10 characters"),
        ({"role": "user", "content": "x" * 11}, "messages[0] is too long: 11 > 10 characters"),
    ],
)
def test_message_limits(messages: object, expected: str | None) -> None:
    assert message_limit_violation(messages, max_messages=3, max_chars=10) == expected
