"""Finding 8: deletion that misses data.

Deleting a thread whose run is executing must leave nothing of the thread behind, now or when the
run would have gone on; a thread with more checkpoints than one search returns is deleted whole;
a stateless run's temporary thread takes no other run (one queued there was orphaned and its
stream heartbeated forever).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.checkpoint.base import empty_checkpoint
from langgraph.graph import START, MessagesState, StateGraph
from redis.asyncio import Redis

from cai_devstack.stack import Stack
from cai_orchestrator.checkpoint import open_checkpointer
from cai_orchestrator.keys import ThreadKeys
from cai_orchestrator.state import ThreadState
from tests.e2e.support import client, eventually, question
from tests.security.storage import TENANT, assert_problem, keys_of_thread
from tests.security.support import KEYS


async def test_deleting_a_thread_with_a_running_run_leaves_nothing_then_or_later(
    sec_stack: Stack, sec: str
) -> None:
    redis = Redis.from_url(sec_stack.redis_url)
    async with client(sec, KEYS.red) as http:
        thread_id = (await http.post("/threads", json={})).json()["thread_id"]
        created = await http.post(
            f"/threads/{thread_id}/runs", json={"assistant_id": "slow", "input": question()}
        )
        run_id = created.json()["run_id"]

        async def running_with_checkpoints() -> bool:
            run = (await http.get(f"/threads/{thread_id}/runs/{run_id}")).json()
            state = (await http.get(f"/threads/{thread_id}/state")).json()
            return run["status"] == "running" and bool((state.get("values") or {}).get("messages"))

        await eventually(running_with_checkpoints, what="the slow run executing")
        assert await keys_of_thread(redis, TENANT, thread_id, [run_id])

        deleted = await http.delete(f"/threads/{thread_id}")
        assert deleted.status_code == 204, deleted.text
        # The slow run would stream for ~4 s more; nothing of it may land after the delete.
        until = time.monotonic() + 6
        while time.monotonic() < until:
            assert await keys_of_thread(redis, TENANT, thread_id, [run_id]) == []
            await asyncio.sleep(0.1)
        assert_problem(await http.get(f"/threads/{thread_id}"), 404)
        assert_problem(await http.get(f"/threads/{thread_id}/runs/{run_id}"), 404)
    await redis.aclose()


async def test_a_stateless_runs_temporary_thread_takes_no_other_run(
    sec_stack: Stack, sec: str
) -> None:
    redis = Redis.from_url(sec_stack.redis_url)
    async with client(sec, KEYS.red) as http:
        body = {"assistant_id": "slow", "input": question()}
        run_id = (await http.post("/runs", json=body)).json()["run_id"]
        # Its thread is named by the run id; a run created there would wait behind the stateless
        # run on a thread that is dropped when it ends: never executed, streaming heartbeats.
        for extra in ({}, {"if_not_exists": "create"}, {"multitask_strategy": "interrupt"}):
            refused = await http.post(f"/threads/{run_id}/runs", json={**body, **extra})
            assert "temporary" in assert_problem(refused, 409)["detail"]
        assert_problem(await http.get(f"/threads/{run_id}"), 404)
        assert_problem(await http.delete(f"/threads/{run_id}"), 404)
        update = {"values": {"messages": [{"role": "user", "content": "x"}]}}
        assert_problem(await http.post(f"/threads/{run_id}/state", json=update), 404)

        async def finished() -> bool:
            run = (await http.get(f"/threads/{run_id}/runs/{run_id}")).json()
            return run["status"] == "success"

        await eventually(finished, what="the stateless run finishing")
        # What is left of it (its record and event log) expires; no run waits on its thread.
        left = await keys_of_thread(redis, TENANT, run_id, [])
        assert left
        # PTTL: -1 is a key that never expires (what must not be); -2 one already gone (a lease
        # released just now); a lease about to lapse has less than a second left (TTL says 0).
        assert all([await redis.pttl(k) != -1 for k in left]), left
    await redis.aclose()


def one_node_graph(saver: Any) -> Any:
    async def agent(state: MessagesState) -> dict[str, Any]:
        return {"messages": [AIMessage(content="ok", id=str(uuid.uuid4()))]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    return builder.compile(checkpointer=saver)


async def saver_keys(redis: Redis, checkpoint_thread: str) -> list[bytes]:
    return [k async for k in redis.scan_iter(match=f"*{checkpoint_thread}*", count=1000)]


async def test_a_thread_with_more_checkpoints_than_a_page_is_deleted_whole(redis_url: str) -> None:
    async with open_checkpointer(redis_url) as saver:
        graph = one_node_graph(saver)
        thread = ThreadKeys(TENANT, str(uuid.uuid4()))
        config: Any = {"configurable": {"thread_id": thread.checkpoint_thread}}
        for turn in range(4):
            await graph.ainvoke({"messages": [("user", f"turn {turn}")]}, config)
        redis = Redis.from_url(redis_url)
        before = await saver_keys(redis, thread.checkpoint_thread)
        checkpoints = [k for k in before if k.startswith(b"checkpoint:")]
        writes = [k for k in before if k.startswith(b"checkpoint_write:")]
        assert len(checkpoints) > 3 and len(writes) > 3  # several pages of three
        await ThreadState(graph, delete_page=3).delete(thread)
        assert await saver_keys(redis, thread.checkpoint_thread) == []
        await redis.aclose()


async def test_a_thread_past_the_savers_own_10000_key_search_is_deleted_whole(
    redis_url: str,
) -> None:
    # The Redis saver's adelete_thread finds a thread's writes with one search of at most
    # 10,000 results: one write more stays behind unless deletion pages.
    async with open_checkpointer(redis_url) as saver:
        thread = ThreadKeys(TENANT, str(uuid.uuid4()))
        config: Any = {"configurable": {"thread_id": thread.checkpoint_thread, "checkpoint_ns": ""}}
        stored = await saver.aput(config, empty_checkpoint(), {"source": "input", "step": -1}, {})
        await saver.aput_writes(stored, [("messages", i) for i in range(10_001)], task_id="t")
        await ThreadState(one_node_graph(saver)).delete(thread)
        redis = Redis.from_url(redis_url)
        assert await saver_keys(redis, thread.checkpoint_thread) == []
        await redis.aclose()
