"""RunStore against a real Redis: atomic multitask decisions, idempotency, tenants."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cai_orchestrator import keys
from cai_orchestrator.store import NewRun, RunStore, StoreError


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RunStore]:
    redis = Redis.from_url(redis_url)
    yield RunStore(redis, 3600)
    await redis.aclose()


def new_run(thread_id: str, strategy: str = "enqueue", tenant: str = "t1", **kw: object) -> NewRun:
    return NewRun(
        tenant=tenant,
        thread_id=thread_id,
        assistant_id="chat",
        kwargs={"input": {"messages": []}},
        metadata={},
        multitask_strategy=strategy,
        **kw,  # type: ignore[arg-type]
    )


async def queued_run_ids(store: RunStore) -> list[str]:
    entries = await store.redis.xrange(keys.QUEUE)
    return [f[b"run_id"].decode() for _, f in entries]


async def test_first_run_is_dispatched_and_thread_turns_busy(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {"k": "v"}, "raise")
    run, existed = await store.create_run(new_run(thread.thread_id))
    assert not existed
    assert run.run_id in await queued_run_ids(store)
    t = await store.get_thread("t1", thread.thread_id)
    assert t is not None and t.status == "busy" and t.active_run == run.run_id


async def test_reject_refuses_a_second_run_while_one_is_active(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    await store.create_run(new_run(thread.thread_id))
    with pytest.raises(StoreError) as err:
        await store.create_run(new_run(thread.thread_id, "reject"))
    assert err.value.code == "conflict"


async def test_enqueue_runs_one_after_another_in_order(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    first, _ = await store.create_run(new_run(thread.thread_id))
    second, _ = await store.create_run(new_run(thread.thread_id))
    third, _ = await store.create_run(new_run(thread.thread_id))
    queued = await queued_run_ids(store)
    assert first.run_id in queued and second.run_id not in queued and third.run_id not in queued
    assert await store.finish_run(first, "success", "idle") == f"next:{second.run_id}"
    assert second.run_id in await queued_run_ids(store)
    assert await store.finish_run(second, "success", "idle") == f"next:{third.run_id}"
    assert await store.finish_run(third, "success", "idle") == "idle"
    t = await store.get_thread("t1", thread.thread_id)
    assert t is not None and t.status == "idle" and t.active_run == ""


async def test_interrupt_flags_the_active_run_and_puts_the_new_run_next(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    first, _ = await store.create_run(new_run(thread.thread_id))
    waiting, _ = await store.create_run(new_run(thread.thread_id, "enqueue"))
    urgent, _ = await store.create_run(new_run(thread.thread_id, "interrupt"))
    assert await store.redis.get(keys.cancel(first.run_id)) == b"interrupt"
    assert await store.finish_run(first, "interrupted", "idle") == f"next:{urgent.run_id}"
    assert await store.finish_run(urgent, "success", "idle") == f"next:{waiting.run_id}"


async def test_racing_creates_with_reject_start_exactly_one_run(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    results = await asyncio.gather(
        *(store.create_run(new_run(thread.thread_id, "reject")) for _ in range(20)),
        return_exceptions=True,
    )
    created = [r for r in results if not isinstance(r, BaseException)]
    conflicts = [r for r in results if isinstance(r, StoreError) and r.code == "conflict"]
    assert len(created) == 1 and len(conflicts) == 19


async def test_idempotency_key_returns_the_same_run(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    key = str(uuid.uuid4())
    first, existed1 = await store.create_run(new_run(thread.thread_id, idempotency_key=key))
    again, existed2 = await store.create_run(new_run(thread.thread_id, idempotency_key=key))
    assert (existed1, existed2) == (False, True)
    assert again.run_id == first.run_id
    assert await store.list_runs("t1", thread.thread_id, 10, 0) == [again]


async def test_another_tenants_thread_and_run_are_not_found(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    run, _ = await store.create_run(new_run(thread.thread_id))
    assert await store.get_thread("t2", thread.thread_id) is None
    assert await store.get_run("t2", run.run_id) is None
    with pytest.raises(StoreError) as err:
        await store.create_run(new_run(thread.thread_id, tenant="t2"))
    assert err.value.code == "not_found"


async def test_unknown_thread_is_not_found_unless_if_not_exists_create(store: RunStore) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(StoreError) as err:
        await store.create_run(new_run(missing))
    assert err.value.code == "not_found"
    run, _ = await store.create_run(new_run(missing, if_not_exists="create"))
    assert (await store.get_thread("t1", missing)) is not None
    assert run.thread_id == missing


async def test_thread_ids_are_unique(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    with pytest.raises(StoreError) as err:
        await store.create_thread("t1", thread.thread_id, {}, "raise")
    assert err.value.code == "already_exists"
    same = await store.create_thread("t1", thread.thread_id, {}, "do_nothing")
    assert same.thread_id == thread.thread_id


async def test_terminal_event_and_final_status_land_together(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    run, _ = await store.create_run(new_run(thread.thread_id))
    await store.finish_run(run, "error", "error", "boom", ("error", b'{"message":"boom"}'), 60)
    last = (await store.redis.xrevrange(keys.events(run.run_id), count=1))[0][1]
    assert last == {b"e": b"error", b"d": b'{"message":"boom"}'}
    record = await store.get_run("t1", run.run_id)
    assert record is not None and record.status == "error" and record.error == "boom"
    assert 0 < await store.redis.ttl(keys.events(run.run_id)) <= 60
