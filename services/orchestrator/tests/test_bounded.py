"""Work one request can make the engine do is bounded (issue 14, finding 7), against a real Redis:
reads page in Redis, a thread's run index is trimmed, bulk cancels read a tenant index, and a
client cannot raise its assistant's recursion limit.

Reads are counted with Redis's own `INFO commandstats` (the session's Redis is this process's).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypedDict

import grpc
import orjson
import pytest
from engine_support import Cluster, eventually
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.graph import END, START, StateGraph
from langgraph.graph.state import CompiledStateGraph
from redis.asyncio import Redis

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub, add_OrchestratorServicer_to_server
from cai_common.runs import WORK_TRAILER
from cai_orchestrator import keys, runs
from cai_orchestrator.assistants import Assistant, Assistants
from cai_orchestrator.cancel import CancelBus
from cai_orchestrator.config import Settings
from cai_orchestrator.convert import InvalidRequest, new_run
from cai_orchestrator.engine import Engine
from cai_orchestrator.events import EventLogs
from cai_orchestrator.queue import RunQueue
from cai_orchestrator.records import NewRun, RunRecord
from cai_orchestrator.runs import RunService
from cai_orchestrator.servicers.orchestrator import OrchestratorServicer
from cai_orchestrator.store import RunStore
from cai_orchestrator.tailer import LogTailer

INPUT = {"input": {"messages": []}}


@dataclass
class Parts:
    store: RunStore
    runs: RunService
    redis: Redis
    tenant: str


@pytest.fixture
async def p(redis_url: str) -> AsyncIterator[Parts]:
    redis = Redis.from_url(redis_url)
    await redis.delete(keys.QUEUE, keys.DISPATCHING)
    store = RunStore(redis, 3600, runs_per_thread=5, search_scan_max=40)
    queue = RunQueue(redis, "test-replica")
    await queue.ensure_group()
    service = RunService(
        store,
        queue,
        CancelBus(redis),
        EventLogs(redis, 0, 600, 60),
        LogTailer(redis, redis, "test-replica"),
        Assistants([Assistant(id="chat")]),
        5,
    )
    yield Parts(store, service, redis, f"tenant-{uuid.uuid4().hex[:8]}")
    await redis.aclose()


def a_run(tenant: str, thread_id: str, **kw: Any) -> NewRun:
    return NewRun(tenant, thread_id, "chat", dict(INPUT), {}, **kw)


async def finish(store: RunStore, run: RunRecord) -> None:
    await store.finish_run(run, "success", "idle", "", ("end", b"null"), 60)


async def run_to_end(p: Parts, thread_id: str) -> RunRecord:
    run = (await p.store.create_run(a_run(p.tenant, thread_id))).run
    await finish(p.store, run)
    return run


async def calls(redis: Redis, command: str) -> int:
    """How many times Redis has executed `command` so far."""
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


# -- a thread's runs ------------------------------------------------------------------------------


async def test_a_threads_run_index_keeps_its_newest_runs_and_drops_the_rest(p: Parts) -> None:
    thread = await p.store.create_thread(p.tenant, "", {}, "raise")
    tk = keys.ThreadKeys(p.tenant, thread.thread_id)
    made = [await run_to_end(p, thread.thread_id) for _ in range(12)]
    assert await p.redis.zcard(tk.runs) == 5
    listed, _ = await p.store.list_runs(p.tenant, thread.thread_id, 1000, 0)
    assert [r.run_id for r in listed] == [r.run_id for r in reversed(made[-5:])]
    for old in made[:-5]:  # trimmed runs leave nothing behind
        rk = tk.run(old.run_id)
        assert (
            await p.redis.exists(rk.record, rk.events, keys.run_thread(p.tenant, old.run_id)) == 0
        )
        assert await p.store.get_run(p.tenant, old.run_id) is None


async def test_runs_that_have_not_ended_are_never_trimmed(p: Parts) -> None:
    thread = await p.store.create_thread(p.tenant, "", {}, "raise")
    tk = keys.ThreadKeys(p.tenant, thread.thread_id)
    unfinished = [(await p.store.create_run(a_run(p.tenant, thread.thread_id))).run]
    unfinished += [
        (await p.store.create_run(a_run(p.tenant, thread.thread_id))).run for _ in range(6)
    ]
    assert await p.redis.zcard(tk.runs) == 7  # over the bound: all still pending
    for run in unfinished:
        assert await p.store.load_run(run.ref) is not None
    for run in unfinished:
        await finish(p.store, run)
    await run_to_end(p, thread.thread_id)
    assert await p.redis.zcard(tk.runs) == 5


async def test_listing_runs_reads_only_the_page(p: Parts) -> None:
    p.store.runs_per_thread = 1000
    thread = await p.store.create_thread(p.tenant, "", {}, "raise")
    made = [await run_to_end(p, thread.thread_id) for _ in range(60)]
    before = await calls(p.redis, "hgetall")
    page, read = await p.store.list_runs(p.tenant, thread.thread_id, 5, 10)
    assert await calls(p.redis, "hgetall") - before == 5 == read
    assert [r.run_id for r in page] == [r.run_id for r in reversed(made)][10:15]
    # A status filter reads the statuses of the (bounded) index, then only the page's records.
    before_get, before_all = await calls(p.redis, "hget"), await calls(p.redis, "hgetall")
    page, _ = await p.store.list_runs(p.tenant, thread.thread_id, 3, 0, "success")
    assert await calls(p.redis, "hget") - before_get == 60
    assert await calls(p.redis, "hgetall") - before_all == 3
    assert [r.run_id for r in page] == [r.run_id for r in reversed(made)][:3]


# -- thread search --------------------------------------------------------------------------------


async def test_a_search_without_filters_reads_only_the_page(p: Parts) -> None:
    made = [await p.store.create_thread(p.tenant, "", {"n": i}, "raise") for i in range(50)]
    before = await calls(p.redis, "hgetall")
    page, read = await p.store.search_threads(p.tenant, {}, "", 5, 10)
    assert await calls(p.redis, "hgetall") - before == 5 == read
    assert [t.metadata["n"] for t in page] == [49 - i for i in range(10, 15)]
    assert len(made) == 50


async def test_a_filtered_search_reads_at_most_the_scan_cap(p: Parts) -> None:
    oldest = await p.store.create_thread(p.tenant, "", {"tag": "needle"}, "raise")
    for i in range(99):
        await p.store.create_thread(p.tenant, "", {"tag": "hay", "n": i}, "raise")
    newest = await p.store.create_thread(p.tenant, "", {"tag": "needle"}, "raise")
    before = await calls(p.redis, "hgetall")
    found, read = await p.store.search_threads(p.tenant, {"tag": "needle"}, "", 10, 0)
    # The cap (40 here, 10,000 by default) bounds the work; the oldest match lies past it.
    assert await calls(p.redis, "hgetall") - before == 40 == read
    assert [t.thread_id for t in found] == [newest.thread_id]
    assert oldest.thread_id not in [t.thread_id for t in found]
    # Filters stay exact within the cap, and a search stops once its page is full.
    found, read = await p.store.search_threads(p.tenant, {"tag": "hay"}, "idle", 3, 2)
    assert [t.metadata["n"] for t in found] == [96, 95, 94] and read <= 40


async def test_a_search_by_ids_reads_only_those_threads_of_the_tenant(p: Parts) -> None:
    mine = [await p.store.create_thread(p.tenant, "", {"k": i}, "raise") for i in range(3)]
    theirs = await p.store.create_thread("another-tenant", "", {}, "raise")
    asked = [mine[2].thread_id, str(uuid.uuid4()), theirs.thread_id, mine[0].thread_id]
    before = await calls(p.redis, "hgetall")
    found = await p.store.threads_by_ids(p.tenant, asked, {}, "", 10, 0)
    assert await calls(p.redis, "hgetall") - before == len(asked)
    assert [t.thread_id for t in found] == [mine[2].thread_id, mine[0].thread_id]
    found = await p.store.threads_by_ids(p.tenant, asked, {"k": 0}, "", 10, 0)
    assert [t.thread_id for t in found] == [mine[0].thread_id]


# -- bulk cancel ----------------------------------------------------------------------------------


async def test_a_bulk_cancel_by_status_reaches_the_tenants_unfinished_runs(p: Parts) -> None:
    threads = [await p.store.create_thread(p.tenant, "", {}, "raise") for _ in range(3)]
    done = await run_to_end(p, threads[0].thread_id)
    active = [await p.runs.create(a_run(p.tenant, t.thread_id)) for t in threads]
    parked = [await p.runs.create(a_run(p.tenant, t.thread_id)) for t in threads]
    other = await p.store.create_thread("bystander", "", {}, "raise")
    bystander = await p.runs.create(a_run("bystander", other.thread_id))
    index = keys.tenant_unfinished_runs(p.tenant)
    assert await p.redis.zcard(index) == 6  # the finished run left it

    found, more, _ = await p.runs.cancel_many(p.tenant, "", [], {"pending"}, "interrupt")
    assert sorted(found) == sorted(r.run_id for r in active + parked) and not more
    for run in parked:  # parked runs end at once; dispatched ones are asked to stop
        assert await p.store.run_status(run.ref) == "interrupted"
    for run in active:
        assert await p.runs.bus.requested(run.ref) == "interrupt"
    assert await p.runs.bus.requested(bystander.ref) is None
    assert await p.store.run_status(done.ref) == "success"
    assert await p.redis.zcard(index) == 3  # the parked runs left it


async def test_a_bulk_cancel_drops_stale_entries_and_stops_at_its_page(
    p: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runs, "BULK_CANCEL_MAX", 2)
    threads = [await p.store.create_thread(p.tenant, "", {}, "raise") for _ in range(4)]
    made = [await p.runs.create(a_run(p.tenant, t.thread_id)) for t in threads]
    await p.store.delete_thread_records(p.tenant, threads[0].thread_id)  # its run is gone
    index = keys.tenant_unfinished_runs(p.tenant)
    found, more, _ = await p.runs.cancel_many(p.tenant, "", [], {"pending"}, "rollback")
    assert found == [made[1].run_id] and more
    assert made[0].run_id.encode() not in await p.redis.zrange(index, 0, -1)
    # On one thread: its active run and its parked runs only.
    queued = await p.runs.create(a_run(p.tenant, threads[3].thread_id))
    found, more, _ = await p.runs.cancel_many(
        p.tenant, threads[3].thread_id, [], {"pending"}, "interrupt"
    )
    assert found == [made[3].run_id, queued.run_id] and not more


async def test_a_bulk_cancel_by_ids_finds_runs_by_id_alone(p: Parts) -> None:
    thread = await p.store.create_thread(p.tenant, "", {}, "raise")
    active = await p.runs.create(a_run(p.tenant, thread.thread_id))
    before = await calls(p.redis, "hgetall")
    found, _, _ = await p.runs.cancel_many(
        p.tenant, "", [active.run_id, str(uuid.uuid4())], set(), "interrupt"
    )
    assert found == [active.run_id]
    assert await calls(p.redis, "hgetall") - before == 2  # one read per named run
    assert await p.runs.bus.requested(active.ref) == "interrupt"
    found, _, _ = await p.runs.cancel_many("bystander", "", [active.run_id], set(), "interrupt")
    assert found == []  # another tenant's run is not found


# -- over gRPC -----------------------------------------------------------------------------------


@pytest.fixture
async def orch(cluster: Cluster) -> AsyncIterator[tuple[OrchestratorStub, Cluster]]:
    replica = cluster.replica("grpc")
    engine = replica.engine
    servicer = OrchestratorServicer(
        engine.threads, engine.runs, engine.worker.executor.assistants, engine.worker.executor.graph
    )
    server = grpc.aio.server()
    add_OrchestratorServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield OrchestratorStub(channel), cluster
    await server.stop(0)


async def refused(call: Any) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    return str(err.value.details())


async def test_one_search_call_answers_for_many_ids_and_reports_its_reads(
    orch: tuple[OrchestratorStub, Cluster],
) -> None:
    stub, cluster = orch
    me = common_pb2.Principal(tenant_id=cluster.tenant)
    created = await stub.CreateThread(pb.CreateThreadRequest(principal=me))
    tid = orjson.loads(created.json)["thread_id"]
    ids = [str(uuid.uuid4()) for _ in range(999)] + [tid]
    call = stub.SearchThreads(pb.SearchThreadsRequest(principal=me, thread_ids=ids, limit=10))
    assert [t["thread_id"] for t in orjson.loads((await call).json)] == [tid]
    assert (await call.trailing_metadata()).get(WORK_TRAILER) == "1000"
    too_many = pb.SearchThreadsRequest(principal=me, thread_ids=[*ids, "one-more"])
    assert "at most 1000" in await refused(stub.SearchThreads(too_many))
    deep = pb.SearchThreadsRequest(principal=me, offset=1_000_001)
    assert "offset" in await refused(stub.SearchThreads(deep))


async def test_bulk_cancel_requests_are_checked(orch: tuple[OrchestratorStub, Cluster]) -> None:
    stub, cluster = orch
    me = common_pb2.Principal(tenant_id=cluster.tenant)
    run_id = str(uuid.uuid4())
    for bad in (
        pb.CancelRunsRequest(principal=me),
        pb.CancelRunsRequest(principal=me, run_ids=[run_id], status="all"),
        pb.CancelRunsRequest(principal=me, status="finished"),
        pb.CancelRunsRequest(principal=me, status="all", action="explode"),
        pb.CancelRunsRequest(principal=me, run_ids=[str(uuid.uuid4()) for _ in range(1001)]),
    ):
        assert await refused(stub.CancelRuns(bad))
    unknown = pb.CancelRunsRequest(principal=me, thread_id=str(uuid.uuid4()), status="all")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.CancelRuns(unknown)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    none = await stub.CancelRuns(pb.CancelRunsRequest(principal=me, run_ids=[run_id]))
    assert orjson.loads(none.json) == {"run_ids": [], "more": False}
    bad_limit = pb.CreateRunRequest(
        principal=me, assistant_id="chat", input_json=b"{}", config_json=b'{"recursion_limit":"x"}'
    )
    assert "recursion_limit" in await refused(stub.CreateRun(bad_limit))


# -- recursion limit ------------------------------------------------------------------------------


class Counter(TypedDict):
    steps: int


def looping_graph() -> CompiledStateGraph:
    """A graph that needs 50 steps to finish."""

    async def step(state: Counter) -> dict[str, Any]:
        return {"steps": state["steps"] + 1}

    builder = StateGraph(Counter)
    builder.add_node("step", step)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", lambda s: END if s["steps"] >= 50 else "step")
    return builder.compile(checkpointer=InMemorySaver())


@pytest.fixture
async def looper(redis_url: str) -> AsyncIterator[Engine]:
    clients = [Redis.from_url(redis_url) for _ in range(2)]
    clients.append(Redis.from_url(redis_url, socket_timeout=None))
    await clients[0].delete(keys.QUEUE, keys.DISPATCHING)
    settings = Settings(
        redis_url=redis_url,
        replica_id=f"looper-{uuid.uuid4().hex[:6]}",
        coalesce_ms=0.0,
        lease_seconds=1.0,
    )
    assistants = Assistants([Assistant(id="looper", recursion_limit=3)])
    engine = Engine.build(settings, *clients, looping_graph(), assistants)
    await engine.start()
    yield engine
    await engine.stop(0.5)
    for client in clients:
        await client.aclose()


async def ended(engine: Engine, config: dict[str, Any]) -> RunRecord:
    new = NewRun(
        "recursion", "", "looper", {"input": {"steps": 0}, "config": config}, {}, temporary=True
    )
    run = await engine.runs.create(new)

    async def finished() -> bool:
        return await engine.store.run_status(run.ref) not in ("pending", "running")

    await eventually(finished)
    record = await engine.store.load_run(run.ref)
    assert record is not None
    return record


async def test_a_client_cannot_raise_its_assistants_recursion_limit(looper: Engine) -> None:
    raised = await ended(looper, {"recursion_limit": 100})
    assert raised.status == "error" and "Recursion limit of 3 reached" in raised.error
    lowered = await ended(looper, {"recursion_limit": 2})
    assert lowered.status == "error" and "Recursion limit of 2 reached" in lowered.error
    default = await ended(looper, {})
    assert "Recursion limit of 3 reached" in default.error


@pytest.mark.parametrize("value", ["100", 0, -1, 2.5, True])
def test_a_recursion_limit_that_is_not_a_positive_integer_is_refused(value: object) -> None:
    request = pb.CreateRunRequest(
        principal=common_pb2.Principal(tenant_id="t"),
        input_json=b"{}",
        config_json=b'{"recursion_limit": %s}' % repr(value).replace("'", '"').lower().encode(),
    )
    with pytest.raises(InvalidRequest, match="recursion_limit"):
        new_run(request, ["values"])
