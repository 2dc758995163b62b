"""Finding 2: unbounded state writes.

State updates and `command.update` meet the same message limits as run input; a thread's state
stops growing at MAX_THREAD_STATE_BYTES (413); an idle thread, its runs and its checkpoints expire
THREAD_TTL_SECONDS after their last use, and not while it is used. Redis runs `noeviction`, so
without these one tenant could fill it and stop every tenant's writes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from cai_devstack.fixtures import running_stack
from cai_devstack.stack import Stack
from tests.e2e.support import client, eventually, question
from tests.security.storage import TENANT, assert_problem, keys_of_thread
from tests.security.support import ASSISTANTS, KEYS, keys_yaml

MAX_MESSAGES = 5
MAX_CHARS = 2000
MAX_STATE = 12_000
TTL_S = 4


@pytest.fixture(scope="module")
def limited_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack with small message and state limits and a thread TTL of a few seconds."""
    run_dir = tmp_path_factory.mktemp("state-limits")
    (run_dir / "api-keys.yaml").write_text(keys_yaml())
    with running_stack(
        run_dir,
        timeout=120,
        assistants=ASSISTANTS,
        with_retriever=False,
        allow_anonymous=False,
        llm_sim_args=["--token-delay-ms", "1", "--reply-tokens", "5"],
        service_env={
            "API_KEYS_FILE": str(run_dir / "api-keys.yaml"),
            "MAX_MESSAGES": str(MAX_MESSAGES),
            "MAX_MESSAGE_CHARS": str(MAX_CHARS),
            "MAX_THREAD_STATE_BYTES": str(MAX_STATE),
            "THREAD_TTL_SECONDS": str(TTL_S),
            "LLM_MAX_RETRIES": "0",
            "SHUTDOWN_GRACE_SECONDS": "2",
        },
    ) as s:
        yield s


@pytest.fixture(scope="module")
def limited(limited_stack: Stack) -> str:
    return limited_stack.gateway_url()


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


async def new_thread(http: httpx.AsyncClient) -> str:
    thread_id: str = (await http.post("/threads", json={})).json()["thread_id"]
    return thread_id


async def test_state_updates_and_commands_meet_the_message_limits(limited: str) -> None:
    async with client(limited, KEYS.red) as http:
        thread_id = await new_thread(http)
        too_long = user("x" * (MAX_CHARS + 1))
        for values, why in (
            ({"messages": [user("hi")] * (MAX_MESSAGES + 1)}, "too many messages"),
            ({"messages": [too_long]}, "too long"),
            ({"messages": too_long}, "too long"),  # one message in place of a list
            ({"messages": too_long["content"]}, "too long"),
            ([["messages", [too_long]]], "too long"),  # LangGraph's (channel, value) pairs
        ):
            refused = await http.post(f"/threads/{thread_id}/state", json={"values": values})
            assert why in assert_problem(refused, 422)["detail"], values
        accepted = await http.post(
            f"/threads/{thread_id}/state", json={"values": {"messages": [user("x" * MAX_CHARS)]}}
        )
        assert accepted.status_code == 200, accepted.text

        command = {"update": {"messages": [too_long]}, "goto": "agent"}
        for path in (f"/threads/{thread_id}/runs", f"/threads/{thread_id}/runs/wait", "/runs"):
            refused = await http.post(path, json={"assistant_id": "chat", "command": command})
            detail = assert_problem(refused, 422)["detail"]
            assert detail.startswith("command.update.messages:"), detail


def state_size(state: dict[str, Any]) -> int:
    return len(orjson.dumps(state.get("values")))


async def test_a_threads_state_stops_growing_at_the_limit(limited: str) -> None:
    async with client(limited, KEYS.red) as http:
        thread_id = await new_thread(http)
        update = {"values": {"messages": [user("x" * 1500)]}}
        accepted = 0
        for _ in range(2 * MAX_STATE // 1500):
            response = await http.post(f"/threads/{thread_id}/state", json=update)
            if response.status_code != 200:
                break
            accepted += 1
        assert accepted >= 3
        assert "MAX_THREAD_STATE_BYTES" in assert_problem(response, 413)["detail"]
        state = (await http.get(f"/threads/{thread_id}/state")).json()
        assert state_size(state) <= MAX_STATE
        # A run's input counts as a write too, and so does a command's update.
        run = {"assistant_id": "chat", "input": {"messages": [user("x" * 1500)]}}
        assert_problem(await http.post(f"/threads/{thread_id}/runs", json=run), 413)
        assert_problem(await http.post(f"/threads/{thread_id}/runs/wait", json=run), 413)
        # The limit is per thread: a new one takes the same update.
        other = await new_thread(http)
        response = await http.post(f"/threads/{other}/state", json=update)
        assert response.status_code == 200, response.text
        # A stateless run whose input alone passes the limit is refused as well.
        huge = {
            "assistant_id": "chat",
            "input": {"messages": [user("hi")], "summary": "y" * MAX_STATE},
        }
        assert_problem(await http.post("/runs", json=huge), 413)


async def test_an_idle_thread_and_everything_of_it_expire_unless_used(
    limited_stack: Stack, limited: str
) -> None:
    redis = Redis.from_url(limited_stack.redis_url)
    async with client(limited, KEYS.red) as http:
        thread_id = await new_thread(http)
        run = {"assistant_id": "chat", "input": question()}
        done = await http.post(f"/threads/{thread_id}/runs/wait", json=run)
        assert done.status_code == 200, done.text
        runs = (await http.get(f"/threads/{thread_id}/runs")).json()
        run_ids = [r["run_id"] for r in runs]
        held = await keys_of_thread(redis, TENANT, thread_id, run_ids)
        assert any(":run:" in k for k in held) and any("checkpoint" in k for k in held), held
        assert all([0 < await redis.ttl(k) <= TTL_S for k in held]), held
        # Used for longer than its TTL: it stays.
        until = time.monotonic() + 2 * TTL_S
        while time.monotonic() < until:
            state = await http.get(f"/threads/{thread_id}/state")
            assert state.status_code == 200, state.text
            assert state.json()["values"]["messages"]
            await asyncio.sleep(1.0)  # paced: the thread outlives its TTL by being used
        # Left alone: the thread, its runs, their logs and indexes and its checkpoints go.

        async def gone() -> bool:
            return await keys_of_thread(redis, TENANT, thread_id, run_ids) == []

        await eventually(gone, timeout=6 * TTL_S, what="the idle thread expiring")
        assert_problem(await http.get(f"/threads/{thread_id}"), 404)
    await redis.aclose()
