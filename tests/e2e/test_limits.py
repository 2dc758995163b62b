"""Backpressure (runs wait in the queue with a position) and per-run deadlines."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from cai_devstack.fixtures import running_stack
from cai_devstack.stack import Stack

ASSISTANTS = """
- id: chat
- id: slow
  model_headers: {X-Sim-Token-Delay-Ms: "500"}
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("limits"),
        timeout=120,
        assistants=ASSISTANTS,
        with_retriever=False,
        llm_sim_args=["--token-delay-ms", "25", "--reply-tokens", "20"],
        service_env={"MAX_CONCURRENT_RUNS": "1", "RUN_TIMEOUT_SECONDS": "2"},
    ) as stack:
        yield stack


async def final_event(http: httpx.AsyncClient, run_path: str) -> tuple[str, dict[str, object]]:
    last = ("", "null")
    async with aconnect_sse(http, "GET", f"{run_path}/stream") as source:
        async for sse in source.aiter_sse():
            if sse.data:
                last = (sse.event, sse.data)
    return last[0], orjson.loads(last[1]) or {}


async def executed_between(http: httpx.AsyncClient, run_path: str) -> tuple[int, int]:
    """When (Redis ms) the run's attempt wrote its first and its terminal event."""
    ids = []
    async with aconnect_sse(http, "GET", f"{run_path}/stream") as source:
        async for sse in source.aiter_sse():
            if sse.data:
                ids.append(tuple(int(x) for x in sse.id.split("-")))
    return ids[0][0], ids[-1][0]


async def runs_in_flight(http: httpx.AsyncClient, metrics_url: str) -> float:
    """The orchestrator's `cai_runs_in_flight` gauge."""
    for line in (await http.get(metrics_url)).text.splitlines():
        if line.startswith("cai_runs_in_flight "):
            return float(line.split()[1])
    raise AssertionError("cai_runs_in_flight is not exported")


async def test_runs_beyond_the_limit_wait_in_the_queue_with_a_position(limited: Stack) -> None:
    base = limited.gateway_url()
    metrics_url = f"http://127.0.0.1:{limited.config.orchestrator_metrics_port}/metrics"
    q = {"messages": [{"role": "user", "content": "hi"}]}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        paths = []
        for _ in range(3):
            tid = (await http.post("/threads", json={})).json()["thread_id"]
            run = (await http.post(f"/threads/{tid}/runs", json={"input": q})).json()
            paths.append(f"/threads/{tid}/runs/{run['run_id']}")
        last = (await http.get(paths[-1])).json()
        assert last["status"] == "pending"
        assert last["queue"]["position"] >= 1 and last["queue"]["age_seconds"] >= 0
        # Sample the replica's in-flight gauge until every run has ended.
        finals = asyncio.gather(*(final_event(http, p) for p in paths))
        in_flight = []
        while not finals.done():
            in_flight.append(await runs_in_flight(http, metrics_url))
            await asyncio.sleep(0.02)
        results = await finals
        assert [event for event, _ in results] == ["end", "end", "end"]
        statuses = [(await http.get(p)).json()["status"] for p in paths]
        assert statuses == ["success"] * 3
        assert max(in_flight) == 1, in_flight  # MAX_CONCURRENT_RUNS=1, and a run was seen running
        # Each run's log spans its execution (first event to terminal event, in Redis time):
        # with one run at a time, the spans follow each other without overlapping.
        spans = sorted([await executed_between(http, p) for p in paths])
        for earlier, later in itertools.pairwise(spans):
            assert earlier[1] <= later[0], spans


async def test_a_run_past_its_deadline_ends_in_timeout(limited: Stack) -> None:
    base = limited.gateway_url()
    q = {"messages": [{"role": "user", "content": "take your time"}]}
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        run = (
            await http.post(f"/threads/{tid}/runs", json={"assistant_id": "slow", "input": q})
        ).json()
        path = f"/threads/{tid}/runs/{run['run_id']}"
        event, data = await final_event(http, path)
        assert event == "timeout" and "deadline" in str(data["message"])
        assert (await http.get(path)).json()["status"] == "timeout"
        # The thread is usable afterwards.
        ok = (await http.post(f"/threads/{tid}/runs", json={"input": q})).json()
        assert (await final_event(http, f"/threads/{tid}/runs/{ok['run_id']}"))[0] == "end"
