"""RunStore and RunService against a real Redis: atomic multitask decisions, the queue append
that follows them, idempotency, tenants in every key."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from redis.asyncio import Redis

from cai_orchestrator import keys
from cai_orchestrator.assistants import Assistant, Assistants
from cai_orchestrator.cancel import CancelBus
from cai_orchestrator.events import EventLogs
from cai_orchestrator.queue import RunQueue
from cai_orchestrator.records import NewRun, RunRecord, StoreError
from cai_orchestrator.runs import RunService
from cai_orchestrator.store import RunStore
from cai_orchestrator.tailer import LogTailer


@dataclass
class Parts:
    store: RunStore
    queue: RunQueue
    runs: RunService
    redis: Redis


@pytest.fixture
async def parts(redis_url: str) -> AsyncIterator[Parts]:
    redis = Redis.from_url(redis_url)
    await redis.delete(keys.QUEUE, keys.DISPATCHING)
    store = RunStore(redis, 3600)
    queue = RunQueue(redis, "test-replica")
    await queue.ensure_group()
    tailer = LogTailer(redis, redis, "test-replica")
    logs = EventLogs(redis, 0, 600, 60)
    runs = RunService(
        store, queue, CancelBus(redis), logs, tailer, Assistants([Assistant(id="chat")]), 5
    )
    yield Parts(store, queue, runs, redis)
    await redis.aclose()


@pytest.fixture
def store(parts: Parts) -> RunStore:
    return parts.store


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


async def queued_run_ids(parts: Parts) -> list[str]:
    entries = await parts.redis.xrange(keys.QUEUE)
    return [f[b"run_id"].decode() for _, f in entries]


async def finish(store: RunStore, run: RunRecord, status: str = "success") -> str:
    nxt = await store.finish_run(run, status, "idle", "", ("end", b"null"), 60)
    return nxt[0] if nxt else "idle"


async def test_first_run_is_queued_and_thread_turns_busy(parts: Parts) -> None:
    thread = await parts.store.create_thread("t1", "", {"k": "v"}, "raise")
    run = await parts.runs.create(new_run(thread.thread_id))
    assert run.run_id in await queued_run_ids(parts)
    assert await parts.queue.overdue_intents() == []  # the intent went with the append
    t = await parts.store.get_thread("t1", thread.thread_id)
    assert t is not None and t.status == "busy" and t.active_run == run.run_id


async def test_reject_refuses_a_second_run_while_one_is_active(parts: Parts) -> None:
    thread = await parts.store.create_thread("t1", "", {}, "raise")
    await parts.runs.create(new_run(thread.thread_id))
    with pytest.raises(StoreError) as err:
        await parts.runs.create(new_run(thread.thread_id, "reject"))
    assert err.value.code == "conflict"


async def test_enqueue_runs_one_after_another_in_order(parts: Parts) -> None:
    store = parts.store
    thread = await store.create_thread("t1", "", {}, "raise")
    first = await parts.runs.create(new_run(thread.thread_id))
    second = await parts.runs.create(new_run(thread.thread_id))
    third = await parts.runs.create(new_run(thread.thread_id))
    assert await queued_run_ids(parts) == [first.run_id]  # the others wait for the thread
    assert await store.parked_position(second.ref) == 1
    assert await finish(store, first) == second.run_id
    assert await finish(store, second) == third.run_id
    assert await finish(store, third) == "idle"
    t = await store.get_thread("t1", thread.thread_id)
    assert t is not None and t.status == "idle" and t.active_run == ""


async def test_interrupt_flags_the_active_run_and_puts_the_new_run_next(parts: Parts) -> None:
    store = parts.store
    thread = await store.create_thread("t1", "", {}, "raise")
    first = await parts.runs.create(new_run(thread.thread_id))
    waiting = await parts.runs.create(new_run(thread.thread_id, "enqueue"))
    urgent = await parts.runs.create(new_run(thread.thread_id, "interrupt"))
    assert await parts.runs.bus.requested(first.ref) == "interrupt"
    assert await finish(store, first, "interrupted") == urgent.run_id
    assert await finish(store, urgent) == waiting.run_id


async def test_racing_creates_with_reject_start_exactly_one_run(parts: Parts) -> None:
    thread = await parts.store.create_thread("t1", "", {}, "raise")
    results = await asyncio.gather(
        *(parts.runs.create(new_run(thread.thread_id, "reject")) for _ in range(20)),
        return_exceptions=True,
    )
    started = [r for r in results if isinstance(r, RunRecord)]
    refused = [r for r in results if isinstance(r, StoreError) and r.code == "conflict"]
    assert len(started) == 1 and len(refused) == 19
    assert await queued_run_ids(parts) == [started[0].run_id]


async def test_idempotency_key_returns_the_same_run(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    key = str(uuid.uuid4())
    first = await store.create_run(new_run(thread.thread_id, idempotency_key=key))
    again = await store.create_run(new_run(thread.thread_id, idempotency_key=key))
    assert not first.existed and again.existed
    assert again.run.run_id == first.run.run_id
    assert (await store.list_runs("t1", thread.thread_id, 10, 0))[0] == [again.run]


async def test_a_stateless_runs_idempotency_key_finds_it_again(store: RunStore) -> None:
    key = str(uuid.uuid4())
    first = await store.create_run(new_run("", temporary=True, idempotency_key=key))
    again = await store.create_run(new_run("", temporary=True, idempotency_key=key))
    other = await store.create_run(
        new_run("", "enqueue", "t2", temporary=True, idempotency_key=key)
    )
    assert again.existed and again.run.run_id == first.run.run_id
    assert not other.existed and other.run.run_id != first.run.run_id  # keys are per tenant


async def test_tenants_have_their_own_thread_ids(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    created = await store.create_run(new_run(thread.thread_id))
    assert await store.get_thread("t2", thread.thread_id) is None
    assert await store.get_run("t2", created.run.run_id) is None
    with pytest.raises(StoreError) as err:
        await store.create_run(new_run(thread.thread_id, tenant="t2"))
    assert err.value.code == "not_found"
    # The same id is free for another tenant: nothing tells it the id exists elsewhere.
    theirs = await store.create_thread("t2", thread.thread_id, {"owner": "t2"}, "raise")
    assert theirs.thread_id == thread.thread_id
    mine = await store.get_thread("t1", thread.thread_id)
    assert mine is not None and mine.metadata == {}


async def test_a_run_is_found_by_its_id_alone(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    on_thread = (await store.create_run(new_run(thread.thread_id))).run
    stateless = (await store.create_run(new_run("", temporary=True))).run
    found = await store.get_run("t1", on_thread.run_id)
    assert found is not None and found.thread_id == thread.thread_id
    found = await store.get_run("t1", stateless.run_id)
    assert found is not None and found.thread_id == stateless.run_id
    assert await store.get_run("t1", on_thread.run_id, "another-thread") is None


async def test_unknown_thread_is_not_found_unless_if_not_exists_create(store: RunStore) -> None:
    missing = str(uuid.uuid4())
    with pytest.raises(StoreError) as err:
        await store.create_run(new_run(missing))
    assert err.value.code == "not_found"
    created = await store.create_run(new_run(missing, if_not_exists="create"))
    assert (await store.get_thread("t1", missing)) is not None
    assert created.run.thread_id == missing
    found, _ = await store.search_threads("t1", {}, "", 100, 0)
    assert [t.thread_id for t in found].count(missing) == 1


async def test_thread_ids_are_unique(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    with pytest.raises(StoreError) as err:
        await store.create_thread("t1", thread.thread_id, {}, "raise")
    assert err.value.code == "already_exists"
    same = await store.create_thread("t1", thread.thread_id, {}, "do_nothing")
    assert same.thread_id == thread.thread_id


async def test_terminal_event_and_final_status_land_together(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    run = (await store.create_run(new_run(thread.thread_id))).run
    await store.finish_run(run, "error", "error", "boom", ("error", b'{"message":"boom"}'), 60)
    log = run.ref.keys.events
    last = (await store.redis.xrevrange(log, count=1))[0][1]
    assert last == {b"e": b"error", b"d": b'{"message":"boom"}'}
    record = await store.get_run("t1", run.run_id)
    assert record is not None and record.status == "error" and record.error == "boom"
    assert 0 < await store.redis.ttl(log) <= 60
    assert 0 < await store.redis.ttl(run.ref.keys.record) <= 3600  # records expire after a run


async def test_every_key_of_a_thread_shares_its_hash_tag(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    run = (await store.create_run(new_run(thread.thread_id, idempotency_key="k"))).run
    tag = keys.thread_tag("t1", thread.thread_id)
    found = [
        k.decode() async for k in store.redis.scan_iter(match=f"cai:{{t:t1:{thread.thread_id}}}*")
    ]
    assert found and all(f"cai:{tag}:" in k for k in found)
    rk = run.ref.keys
    assert {rk.record, run.ref.thread_keys.record, run.ref.thread_keys.runs} <= set(found)


async def test_a_lost_queue_append_is_found_and_requeued(parts: Parts) -> None:
    # The creator "dies" after recording the run: its intent stays, the queue lacks the run.
    thread = await parts.store.create_thread("t1", "", {}, "raise")
    created = await parts.store.create_run(
        new_run(thread.thread_id), first=lambda pipe, ref: parts.queue.intend(pipe, ref, -1)
    )
    assert created.dispatched and await queued_run_ids(parts) == []
    assert await parts.runs.requeue_lost() == 1
    assert await queued_run_ids(parts) == [created.run.run_id]
    assert await parts.runs.requeue_lost() == 0  # the intent is gone with the append


async def test_a_parked_run_is_not_requeued_by_the_sweep(parts: Parts) -> None:
    thread = await parts.store.create_thread("t1", "", {}, "raise")
    first = await parts.runs.create(new_run(thread.thread_id))
    parked = await parts.store.create_run(
        new_run(thread.thread_id), first=lambda pipe, ref: parts.queue.intend(pipe, ref, -1)
    )
    assert not parked.dispatched
    assert await parts.runs.requeue_lost() == 0
    assert await queued_run_ids(parts) == [first.run_id]
    assert await parts.queue.overdue_intents() == []


async def test_cancelling_a_parked_run_ends_it_in_place(parts: Parts) -> None:
    thread = await parts.store.create_thread("t1", "", {}, "raise")
    first = await parts.runs.create(new_run(thread.thread_id))
    parked = await parts.runs.create(new_run(thread.thread_id))
    await parts.runs.cancel("t1", thread.thread_id, parked.run_id, "interrupt")
    record = await parts.store.get_run("t1", parked.run_id)
    assert record is not None and record.status == "interrupted"
    assert 0 < await parts.redis.ttl(parked.ref.keys.record) <= 3600
    events = await parts.redis.xrange(parked.ref.keys.events)
    assert [f[b"e"] for _, f in events] == [b"cancelled"]
    assert await finish(parts.store, first) == "idle"  # the cancelled run never starts


def test_each_tenant_checkpoints_its_thread_x_apart() -> None:
    mine, theirs = keys.ThreadKeys("t1", "x"), keys.ThreadKeys("t2", "x")
    assert mine.checkpoint_thread != theirs.checkpoint_thread
    assert mine.checkpoint_thread == keys.ThreadKeys("t1", "x").checkpoint_thread  # stable
    odd = keys.ThreadKeys("a:b}", "c:d")  # no separator of a saver's key syntax gets through
    assert str(uuid.UUID(odd.checkpoint_thread)) == odd.checkpoint_thread


async def test_a_thread_pinned_to_an_assistant_refuses_runs_of_another(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {"assistant_id": "chat"}, "raise")
    other = new_run(thread.thread_id)
    other.assistant_id = "other"
    with pytest.raises(StoreError) as err:
        await store.create_run(other)
    assert err.value.code == "conflict" and "pinned to assistant 'chat'" in err.value.message
    assert (await store.create_run(new_run(thread.thread_id))).dispatched  # its own: fine
    assert [r.assistant_id for r in (await store.list_runs("t1", thread.thread_id, 10, 0))[0]] == [
        "chat"
    ]


async def test_a_run_whose_input_would_pass_the_state_limit_is_not_recorded(
    store: RunStore,
) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    await store.set_state_bytes("t1", thread.thread_id, 900)
    with pytest.raises(StoreError) as err:
        await store.create_run(new_run(thread.thread_id), write_bytes=200, max_state_bytes=1000)
    assert err.value.code == "too_large" and "1100 bytes" in err.value.message
    assert (await store.list_runs("t1", thread.thread_id, 10, 0))[0] == []
    created = await store.create_run(
        new_run(thread.thread_id), write_bytes=100, max_state_bytes=1000
    )
    assert created.dispatched and created.run.write_bytes == 100


async def test_runs_are_created_and_finished_after_redis_lost_its_scripts(store: RunStore) -> None:
    thread = await store.create_thread("t1", "", {}, "raise")
    await store.redis.script_flush()  # a restarted Redis: scripts go by hash, then are loaded
    run = (await store.create_run(new_run(thread.thread_id))).run
    await store.redis.script_flush()
    assert await finish(store, run) == "idle"
    assert await store.run_status(run.ref) == "success"
