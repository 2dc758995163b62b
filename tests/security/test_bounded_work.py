"""Finding 7 of issue 14: the work one request can trigger is bounded, and paid for.

Through the real processes (`sec_stack`): a thread search reads one page, an ids search and a bulk
cancel are one RPC each, a thread's run list keeps its newest runs, a client cannot raise its
assistant's recursion limit, and requests that read more cost more rate-limit tokens.

RPCs are counted with the orchestrator's own metric (`cai_grpc_requests_total`), Redis reads with
Redis's `INFO commandstats`, index sizes on the real keys.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from langgraph_sdk import get_client
from langgraph_sdk.client import LangGraphClient
from langgraph_sdk.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from cai_devstack.stack import Stack
from cai_orchestrator import keys
from tests.e2e.support import client, eventually, question
from tests.security.support import KEYS


@pytest.fixture
def red(sec: str) -> LangGraphClient:
    return get_client(url=sec, api_key=KEYS.red)


@pytest.fixture
async def redis(sec_stack: Stack) -> AsyncIterator[Redis]:
    r = Redis.from_url(sec_stack.redis_url)
    yield r
    await r.aclose()


async def rpcs(stack: Stack) -> dict[str, float]:
    """gRPC requests the orchestrator has handled so far, by method."""
    url = f"http://127.0.0.1:{stack.config.orchestrator_metrics_port}/metrics"
    async with httpx.AsyncClient() as http:
        text = (await http.get(url)).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.name != "cai_grpc_requests":
            continue
        for sample in family.samples:
            if sample.name == "cai_grpc_requests_total":
                method = sample.labels["method"]
                counts[method] = counts.get(method, 0) + sample.value
    return counts


def delta(before: dict[str, float], after: dict[str, float], method: str) -> float:
    return after.get(method, 0) - before.get(method, 0)


async def hgetall_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_hgetall", {}).get("calls", 0))


async def test_an_ids_search_is_one_rpc_however_many_ids(
    sec: str, sec_stack: Stack, red: LangGraphClient
) -> None:
    mine = [(await red.threads.create())["thread_id"] for _ in range(2)]
    blues = await get_client(url=sec, api_key=KEYS.blue).threads.create()
    ids = [mine[1], *(str(uuid.uuid4()) for _ in range(997)), blues["thread_id"], mine[0]]
    before = await rpcs(sec_stack)
    found = await red.threads.search(ids=ids, limit=1000)
    after = await rpcs(sec_stack)
    assert [t["thread_id"] for t in found] == [mine[1], mine[0]]  # never blue's
    assert delta(before, after, "SearchThreads") == 1
    assert delta(before, after, "GetThread") == 0
    async with client(sec, KEYS.red) as http:
        too_many = await http.post("/threads/search", json={"ids": [*ids, str(uuid.uuid4())]})
    assert too_many.status_code == 422


async def test_a_search_reads_only_its_page_and_filters_stay_exact(
    sec: str, red: LangGraphClient, redis: Redis
) -> None:
    tag = {"finding": "7", "n": str(uuid.uuid4())}
    tagged = [(await red.threads.create(metadata=tag))["thread_id"] for _ in range(3)]
    for _ in range(30):
        await red.threads.create()
    before = await hgetall_calls(redis)
    page = await red.threads.search(limit=5)
    read = await hgetall_calls(redis) - before
    # One page of thread records (the tenant has over 30 threads; a search used to read them
    # all). A little slack for the stack's own reads while the search runs.
    assert len(page) == 5 and read <= 10, read
    found = await red.threads.search(metadata=tag, status="idle", limit=2, offset=1)
    assert [t["thread_id"] for t in found] == [tagged[1], tagged[0]]
    async with client(sec, KEYS.red) as http:
        huge = await http.post("/threads/search", json={"limit": 100_000})
    assert huge.status_code == 422 and "limit" in huge.text


async def test_a_threads_run_list_keeps_only_its_newest_runs(
    red: LangGraphClient, redis: Redis
) -> None:
    thread = (await red.threads.create())["thread_id"]
    made = []
    for _ in range(23):  # the stack keeps RUNS_PER_THREAD_INDEX=20
        run = await red.runs.create(thread, "chat", input=question())
        await red.runs.join(thread, run["run_id"])
        made.append(run["run_id"])
    assert await redis.zcard(keys.ThreadKeys("red", thread).runs) == 20
    listed = await red.runs.list(thread, limit=1000)
    assert [r["run_id"] for r in listed] == made[::-1][:20]
    with pytest.raises(NotFoundError):
        await red.runs.get(thread, made[0])


async def test_a_bulk_cancel_is_one_rpc(sec_stack: Stack, sec: str) -> None:
    blue = get_client(url=sec, api_key=KEYS.blue)
    threads = [(await blue.threads.create())["thread_id"] for _ in range(3)]
    runs = [(t, (await blue.runs.create(t, "slow", input=question()))["run_id"]) for t in threads]
    waiting = await blue.runs.create(threads[0], "slow", input=question())
    runs.append((threads[0], waiting["run_id"]))
    before = await rpcs(sec_stack)
    await blue.runs.cancel_many(status="all")
    after = await rpcs(sec_stack)
    assert delta(before, after, "CancelRuns") == 1
    for method in ("SearchThreads", "ListRuns", "CancelRun"):
        assert delta(before, after, method) == 0, method

    async def all_interrupted() -> bool:
        found = [await blue.runs.get(t, r) for t, r in runs]
        return all(r["status"] == "interrupted" for r in found)

    await eventually(all_interrupted, what="every run of the tenant interrupted")


async def test_a_client_cannot_raise_its_assistants_recursion_limit(sec: str) -> None:
    async with client(sec, KEYS.red) as http:
        thread = (await http.post("/threads", json={})).json()["thread_id"]
        body = {"assistant_id": "looper", "input": question(), "config": {"recursion_limit": 40}}
        result = await http.post(f"/threads/{thread}/runs/wait", json=body)
        error = result.json()["__error__"]
        assert "Recursion limit of 4 reached" in error["message"], error
        bad = {**body, "config": {"recursion_limit": "lots"}}
        refused = await http.post(f"/threads/{thread}/runs/wait", json=bad)
        assert refused.status_code == 422 and "recursion_limit" in refused.text


async def _allowed(http: httpx.AsyncClient, body: dict[str, object], most: int) -> int:
    """How many of `most` searches go through before the first 429."""
    for n in range(most):
        response = await http.post("/threads/search", json=body)
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            return n
        assert response.status_code == 200, response.text
    return most


async def test_requests_that_read_more_cost_more_tokens(sec: str, redis: Redis) -> None:
    bucket = "cai:gw:rate:metered"  # the key's token bucket: 40 tokens, refilled 1 per 100 s
    async with client(sec, KEYS.metered) as http:
        await redis.delete(bucket)
        small = await _allowed(http, {"limit": 10}, 60)
        await redis.delete(bucket)
        large = await _allowed(http, {"limit": 1000}, 60)
        await redis.delete(bucket)
        # A bulk cancel pays for every run it names (10 records each): 300 runs, 30 tokens.
        named = {"run_ids": [str(uuid.uuid4()) for _ in range(300)]}
        assert (await http.post("/runs/cancel", json=named)).status_code == 404
        after_cancel = await _allowed(http, {"limit": 10}, 60)
    assert small == 40 and large == 4 and after_cancel == 10, (small, large, after_cancel)
