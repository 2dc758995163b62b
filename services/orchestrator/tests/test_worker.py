"""The worker against real Redis: a run's life, cancel, lease loss, reclaim, hand-back, limits."""

from __future__ import annotations

from engine_support import Cluster, Replica, eventually

from cai_common.runs import CANCELLED, END, ERROR, METADATA, RETRY
from cai_orchestrator.records import RunRecord


async def status_is(cluster: Cluster, replica: Replica, run: RunRecord, status: str) -> bool:
    return (await cluster.run(replica, run.run_id, run.thread_id)).status == status


async def queue_is_empty(replica: Replica) -> bool:
    stats = await replica.engine.queue.stats()
    return stats["lag"] == 0 and stats["pending"] == 0


async def test_a_run_executes_once_and_ends_with_end(cluster: Cluster) -> None:
    a = cluster.replica("a")
    await a.start()
    run = await a.engine.runs.create(cluster.new_run())
    await eventually(lambda: status_is(cluster, a, run, "running"))
    cluster.gate.opened.set()
    await eventually(lambda: status_is(cluster, a, run, "success"))
    names = [e for e, _ in await cluster.events(a, run)]
    assert names[0] == METADATA and names[-1] == END and RETRY not in names
    assert cluster.gate.entered == 1
    await eventually(lambda: queue_is_empty(a))  # acknowledged and deleted
    # A stateless run's temporary thread is gone with it; its record and log stay.
    assert await a.engine.store.get_thread(cluster.tenant, run.thread_id) is None


async def test_cancel_stops_the_executing_graph(cluster: Cluster) -> None:
    a = cluster.replica("a")
    await a.start()
    thread = await a.engine.store.create_thread(cluster.tenant, "", {}, "raise")
    run = await a.engine.runs.create(cluster.new_run(thread.thread_id))
    await eventually(lambda: status_is(cluster, a, run, "running"))
    await eventually(lambda: _entered(cluster, 1))
    final = await a.engine.runs.cancel_and_wait(
        cluster.tenant, thread.thread_id, run.run_id, "interrupt", 10
    )
    assert final.status == "interrupted"
    assert [e for e, _ in await cluster.events(a, run)][-1] == CANCELLED
    t = await a.engine.store.get_thread(cluster.tenant, thread.thread_id)
    assert t is not None and t.status == "idle" and t.active_run == ""


async def test_a_cancel_published_to_another_replica_reaches_the_run(cluster: Cluster) -> None:
    a, b = cluster.replica("a"), cluster.replica("b", max_concurrent_runs=0)
    await a.start()
    await b.start()  # b takes no runs: the run is surely on a, the cancel arrives at b
    run = await a.engine.runs.create(cluster.new_run())
    await eventually(lambda: status_is(cluster, a, run, "running"))
    await b.engine.runs.cancel(cluster.tenant, "", run.run_id, "interrupt")
    await eventually(lambda: status_is(cluster, a, run, "interrupted"))


async def test_a_worker_that_loses_its_lease_stops_and_another_finishes_once(
    cluster: Cluster,
) -> None:
    a = cluster.replica("a")
    await a.start()
    run = await a.engine.runs.create(cluster.new_run())
    await eventually(lambda: _entered(cluster, 1))
    # The lease lapses (a paused process, say): another holder appears before a renews.
    redis = a.engine.store.redis
    await redis.set(run.ref.keys.lease, "someone-else", px=1500)
    await eventually(lambda: _not_running_on(a, run.run_id))
    assert await status_is(cluster, a, run, "running")  # not finished by a
    before = [e for e, _ in await cluster.events(a, run)]
    assert before[0] == METADATA and not set(before) & {END, ERROR, CANCELLED, RETRY}
    await redis.delete(run.ref.keys.lease)  # the other holder is gone too
    b = cluster.replica("b")
    await b.start()
    cluster.gate.opened.set()
    await eventually(lambda: status_is(cluster, b, run, "success"), timeout=15)
    names = [e for e, _ in await cluster.events(b, run)]
    retry = names.index(RETRY)
    assert names[:retry] == before and names[retry + 1] == METADATA and names[-1] == END
    assert names.count(END) == 1 and names.count(RETRY) == 1
    assert cluster.gate.entered == 2  # a stopped at the gate; b executed it to the end
    record = await cluster.run(b, run.run_id)
    # Whichever replica reclaimed it (a's own reclaim loop may win), it ran once more, not twice.
    assert record.attempt == 2


async def test_shutdown_hands_an_unfinished_run_back_at_once(cluster: Cluster) -> None:
    a = cluster.replica("a", lease_seconds=30.0)  # a lease wait would outlast the test
    await a.start()
    run = await a.engine.runs.create(cluster.new_run())
    await eventually(lambda: _entered(cluster, 1))
    await a.stop(grace_s=0.1)
    stats = await a.engine.queue.stats()
    assert stats["lag"] == 1 and stats["pending"] == 0  # a fresh entry, not a pending one
    b = cluster.replica("b", lease_seconds=30.0)
    await b.start()
    cluster.gate.opened.set()
    await eventually(lambda: status_is(cluster, b, run, "success"))
    names = [e for e, _ in await cluster.events(b, run)]
    assert names.count(RETRY) == 1 and names[-1] == END
    # Nothing of the first attempt lands after its retry: the second attempt starts right away.
    assert names[names.index(RETRY) + 1] == METADATA and names.count(METADATA) == 2


async def test_a_run_out_of_attempts_ends_in_error(cluster: Cluster) -> None:
    a = cluster.replica("a", max_attempts=2)
    run = await a.engine.runs.create(cluster.new_run())
    # Its workers were lost twice already.
    await a.engine.store.redis.hset(run.ref.keys.record, "attempt", 2)
    await a.start()
    await eventually(lambda: status_is(cluster, a, run, "error"))
    events = await cluster.events(a, run)
    assert [e for e, _ in events] == [RETRY, ERROR]
    assert b"MaxAttemptsExceeded" in events[-1][1]
    assert cluster.gate.entered == 0


async def test_at_most_max_concurrent_runs_execute_on_a_replica(cluster: Cluster) -> None:
    a = cluster.replica("a", max_concurrent_runs=2)
    await a.start()
    runs = [await a.engine.runs.create(cluster.new_run()) for _ in range(4)]
    await eventually(lambda: _entered(cluster, 2))
    assert a.engine.worker.in_flight == 2
    statuses = [(await cluster.run(a, r.run_id)).status for r in runs]
    assert sorted(statuses) == ["pending", "pending", "running", "running"]
    assert (await a.engine.queue.stats())["lag"] == 2
    cluster.gate.opened.set()
    for r in runs:
        await eventually(lambda r=r: status_is(cluster, a, r, "success"))
    assert cluster.gate.entered == 4


async def test_the_next_run_of_a_thread_is_queued_when_the_active_one_ends(
    cluster: Cluster,
) -> None:
    a = cluster.replica("a")
    await a.start()
    thread = await a.engine.store.create_thread(cluster.tenant, "", {}, "raise")
    first = await a.engine.runs.create(cluster.new_run(thread.thread_id))
    second = await a.engine.runs.create(cluster.new_run(thread.thread_id))
    await eventually(lambda: _entered(cluster, 1))
    assert await status_is(cluster, a, second, "pending")
    place = await a.engine.runs.queue_place(second)
    assert place["waiting_for_thread"] is True and place["position"] == 1
    cluster.gate.opened.set()
    await eventually(lambda: status_is(cluster, a, second, "success"))
    assert await status_is(cluster, a, first, "success")


async def test_a_job_for_a_run_still_waiting_behind_its_threads_run_is_dropped(
    cluster: Cluster,
) -> None:
    # A stray job (appended twice, or taken before its creator's clean-up) for a run parked
    # behind its thread's active run must not start it: two runs of a thread never overlap.
    a = cluster.replica("a")
    await a.start()
    thread = await a.engine.store.create_thread(cluster.tenant, "", {}, "raise")
    first = await a.engine.runs.create(cluster.new_run(thread.thread_id))
    second = await a.engine.runs.create(cluster.new_run(thread.thread_id))
    await eventually(lambda: _entered(cluster, 1))
    await a.engine.queue.append(second.ref, b"{}")
    await eventually(lambda: _only_pending(a, 1))
    assert await status_is(cluster, a, second, "pending") and cluster.gate.entered == 1
    assert await cluster.events(a, second) == []  # not even a `metadata` event
    cluster.gate.opened.set()
    await eventually(lambda: status_is(cluster, a, second, "success"))
    assert await status_is(cluster, a, first, "success") and cluster.gate.entered == 2


async def _only_pending(replica: Replica, n: int) -> bool:
    """The queue holds nothing but `n` jobs being executed (the stray one was dropped)."""
    stats = await replica.engine.queue.stats()
    return stats == {"lag": 0, "pending": n}


async def test_a_job_for_a_finished_run_queues_its_threads_waiting_successor(
    cluster: Cluster,
) -> None:
    # A worker died after finishing its run but before queueing the thread's next run: the
    # finished run's job is taken again, and the successor is queued then.
    a = cluster.replica("a")
    thread = await a.engine.store.create_thread(cluster.tenant, "", {}, "raise")
    first = await a.engine.runs.create(cluster.new_run(thread.thread_id))
    second = await a.engine.runs.create(cluster.new_run(thread.thread_id))
    record = await cluster.run(a, first.run_id)
    nxt = await a.engine.store.finish_run(record, "success", "idle", "", (END, b"null"), 60)
    assert nxt is not None and nxt[0] == second.run_id  # ... and the worker "dies" here
    cluster.gate.opened.set()
    await a.start()
    await eventually(lambda: status_is(cluster, a, second, "success"))


async def _entered(cluster: Cluster, n: int) -> bool:
    return cluster.gate.entered >= n


async def _not_running_on(replica: Replica, run_id: str) -> bool:
    return run_id not in replica.engine.worker.running
