"""Retention and the state limit in the run engine, against real Redis (issue 14, finding 2).

An idle thread's keys expire THREAD_TTL_SECONDS after their last use; a thread with an active run
has no TTL; a run cancelled before it started expires like a finished one; a run that would grow
its thread's state past MAX_THREAD_STATE_BYTES is refused, or, if the thread grew while it waited,
ends in a clear error.
"""

from __future__ import annotations

import orjson
import pytest
from engine_support import Cluster, Replica, eventually

from cai_common.runs import CANCELLED, ERROR
from cai_orchestrator import keys
from cai_orchestrator.keys import ThreadKeys
from cai_orchestrator.records import RunRecord, StoreError

THREAD_TTL = 300
RUN_TTL = 120
LOG_TTL = 60


def retaining(cluster: Cluster, **settings: object) -> Replica:
    values: dict[str, object] = {
        "thread_ttl_seconds": THREAD_TTL,
        "run_record_ttl_seconds": RUN_TTL,
        "event_log_ttl_seconds": LOG_TTL,
    }
    return cluster.replica("r", **{**values, **settings})


async def status_is(cluster: Cluster, replica: Replica, run: RunRecord, status: str) -> bool:
    return (await cluster.run(replica, run.run_id, run.thread_id)).status == status


async def ttls(replica: Replica, *names: str) -> list[int]:
    return [await replica.engine.store.redis.ttl(name) for name in names]


async def test_a_thread_keeps_no_ttl_while_a_run_is_active_and_expires_once_idle(
    cluster: Cluster,
) -> None:
    a = retaining(cluster)
    await a.start()
    thread = await a.engine.store.create_thread(cluster.tenant, "", {}, "raise")
    tk = ThreadKeys(cluster.tenant, thread.thread_id)
    assert 0 < (await ttls(a, tk.record))[0] <= THREAD_TTL  # a new idle thread expires too
    run = await a.engine.runs.create(cluster.new_run(thread.thread_id))
    await eventually(lambda: status_is(cluster, a, run, "running"))
    # Mid-run nothing of the thread may expire, and using it must not give it a TTL again.
    await a.engine.threads.get(cluster.tenant, thread.thread_id)
    await a.engine.store.touch_thread(cluster.tenant, thread.thread_id)
    assert await ttls(a, tk.record, tk.runs) == [-1, -1]
    cluster.gate.opened.set()
    await eventually(lambda: status_is(cluster, a, run, "success"))
    rk = run.ref.keys
    thread_ttls = await ttls(a, tk.record, tk.runs)
    assert all(0 < t <= THREAD_TTL for t in thread_ttls), thread_ttls
    run_ttls = await ttls(a, rk.record, keys.run_thread(cluster.tenant, run.run_id))
    assert all(0 < t <= RUN_TTL for t in run_ttls), run_ttls
    assert 0 < (await ttls(a, rk.events))[0] <= LOG_TTL


async def test_nothing_of_a_thread_outlives_a_short_thread_ttl(cluster: Cluster) -> None:
    a = retaining(cluster, thread_ttl_seconds=30)  # shorter than the run and log TTLs
    await a.start()
    cluster.gate.opened.set()
    thread = await a.engine.store.create_thread(cluster.tenant, "", {}, "raise")
    run = await a.engine.runs.create(cluster.new_run(thread.thread_id))
    await eventually(lambda: status_is(cluster, a, run, "success"))
    rk = run.ref.keys
    index = keys.run_thread(cluster.tenant, run.run_id)
    found = await ttls(a, rk.thread.record, rk.thread.runs, rk.record, rk.events, index)
    assert all(0 < t <= 30 for t in found), found


async def test_using_an_idle_thread_starts_its_expiry_again(cluster: Cluster) -> None:
    a = retaining(cluster)
    thread = await a.engine.store.create_thread(cluster.tenant, "", {}, "raise")
    tk = ThreadKeys(cluster.tenant, thread.thread_id)
    redis = a.engine.store.redis
    await redis.expire(tk.record, 5)
    await a.engine.threads.state_at(cluster.tenant, thread.thread_id, "")
    assert (await ttls(a, tk.record))[0] > THREAD_TTL - 5
    await redis.expire(tk.record, 5)
    await a.engine.threads.update(cluster.tenant, thread.thread_id, {"k": "v"})
    assert (await ttls(a, tk.record))[0] > THREAD_TTL - 5


async def test_a_run_cancelled_before_it_started_expires_like_a_finished_one(
    cluster: Cluster,
) -> None:
    a = retaining(cluster)
    await a.start()
    thread = await a.engine.store.create_thread(cluster.tenant, "", {}, "raise")
    first = await a.engine.runs.create(cluster.new_run(thread.thread_id))
    parked = await a.engine.runs.create(cluster.new_run(thread.thread_id))
    await eventually(lambda: status_is(cluster, a, first, "running"))
    await a.engine.runs.cancel(cluster.tenant, thread.thread_id, parked.run_id, "interrupt")
    assert await status_is(cluster, a, parked, "interrupted")
    assert [e for e, _ in await cluster.events(a, parked)] == [CANCELLED]
    rk = parked.ref.keys
    run_ttls = await ttls(a, rk.record, keys.run_thread(cluster.tenant, parked.run_id))
    assert all(0 < t <= RUN_TTL for t in run_ttls), run_ttls
    assert 0 < (await ttls(a, rk.events))[0] <= LOG_TTL


async def test_a_run_that_would_pass_the_state_limit_is_refused_or_fails_clearly(
    cluster: Cluster,
) -> None:
    a = retaining(cluster, max_thread_state_bytes=400)
    await a.start()
    thread = await a.engine.store.create_thread(cluster.tenant, "", {}, "raise")
    huge = cluster.new_run(thread.thread_id)
    huge.kwargs["input"] = {"messages": [{"role": "user", "content": "x" * 500}]}
    with pytest.raises(StoreError) as refused:
        await a.engine.runs.create(huge)
    assert refused.value.code == "too_large" and "MAX_THREAD_STATE_BYTES" in refused.value.message
    # A run accepted while the thread was small fails clearly once the run before it has grown
    # the state past the limit (its question and the gated graph's answer: > 400 bytes).
    big = cluster.new_run(thread.thread_id)
    big.kwargs["input"] = {"messages": [{"role": "user", "content": "x" * 250}]}
    first = await a.engine.runs.create(big)
    waiting = await a.engine.runs.create(cluster.new_run(thread.thread_id))
    cluster.gate.opened.set()
    await eventually(lambda: status_is(cluster, a, waiting, "error"))
    assert await status_is(cluster, a, first, "success")
    name, data = (await cluster.events(a, waiting))[-1]
    assert name == ERROR and orjson.loads(data)["error"] == "ThreadStateTooLarge"
    assert cluster.gate.entered == 1  # the refused run never executed the graph
    stored = await a.engine.store.get_thread(cluster.tenant, thread.thread_id)
    assert stored is not None and stored.state_bytes > 400
    with pytest.raises(StoreError, match="MAX_THREAD_STATE_BYTES"):
        await a.engine.runs.create(cluster.new_run(thread.thread_id))
    one_more = {"messages": [{"role": "user", "content": "x"}]}
    with pytest.raises(StoreError, match="MAX_THREAD_STATE_BYTES"):
        await a.engine.threads.update_state(cluster.tenant, thread.thread_id, one_more, "", "")


async def test_a_stateless_runs_temporary_thread_takes_no_other_run(cluster: Cluster) -> None:
    a = retaining(cluster)
    await a.start()
    stateless = await a.engine.runs.create(cluster.new_run())
    await eventually(lambda: status_is(cluster, a, stateless, "running"))
    with pytest.raises(StoreError) as refused:
        await a.engine.runs.create(cluster.new_run(stateless.thread_id))
    assert refused.value.code == "conflict" and "temporary" in refused.value.message
    with pytest.raises(StoreError) as hidden:
        await a.engine.threads.get(cluster.tenant, stateless.thread_id)
    assert hidden.value.code == "not_found"
    cluster.gate.opened.set()
    await eventually(lambda: status_is(cluster, a, stateless, "success"))
    tk = ThreadKeys(cluster.tenant, stateless.thread_id)
    left = [k async for k in a.engine.store.redis.scan_iter(match=tk.prefix + "*")]
    assert left and all([t > 0 for t in await ttls(a, *[k.decode() for k in left])])
