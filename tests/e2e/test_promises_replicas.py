"""Promises that need two orchestrator replicas: what a client sees when one of them goes away.

Real processes: Redis, llm-sim (40 tokens 100 ms apart, about 4 s per answer), two orchestrators
with short leases and a short drain, one gateway. Observed through gRPC health, the HTTP API and
the processes themselves, never through Redis keys.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from httpx_sse import aconnect_sse

from cai_devstack.fixtures import running_stack
from cai_devstack.stack import Stack
from tests.e2e.support import question

REPLY_TOKENS = 40
LEASE_SECONDS = 3
GRACE_SECONDS = 2
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
TERMINAL = ("end", "error", "cancelled", "timeout")
TASK_TERMINAL = ("done", "stopped", "error")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Two orchestrators behind one gateway."""
    with running_stack(
        tmp_path_factory.mktemp("promises-replicas"),
        timeout=180,
        orchestrator_replicas=2,
        with_retriever=False,
        llm_sim_args=["--token-delay-ms", "100", "--reply-tokens", str(REPLY_TOKENS)],
        service_env={
            "LEASE_SECONDS": str(LEASE_SECONDS),
            "SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
            "SSE_PING_SECONDS": "0.2",
        },
    ) as stack:
        yield stack


def replica_index(name: str) -> int:
    return 0 if name == "orchestrator" else int(name.rsplit("-", 1)[1])


async def executor(http: httpx.AsyncClient, tid: str, run_id: str) -> tuple[str, dict[str, Any]]:
    """The stack process executing the run (REPLICA_ID is "<name>:<port>"), once it runs."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        run = (await http.get(f"/threads/{tid}/runs/{run_id}")).json()
        if run["status"] == "running" and run.get("executor"):
            return str(run["executor"]).split(":", 1)[0], run
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never started running")


async def first_token(http: httpx.AsyncClient, tid: str, run_id: str) -> None:
    """Wait until the run has streamed a token (it is mid-answer)."""
    async with aconnect_sse(http, "GET", f"/threads/{tid}/runs/{run_id}/stream") as source:
        async for message in source.aiter_sse():
            if message.event == "messages":
                return
            assert message.event not in TERMINAL, (message.event, message.data)


async def events_to_the_end(
    base: str, path: str, *, task: bool = False, timeout: float = 60.0
) -> list[tuple[str, str, str]]:
    """A run's (or task's) events, reconnecting with Last-Event-ID until its terminal one."""
    seen: list[tuple[str, str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        headers = {"Last-Event-ID": seen[-1][0]} if seen else {}
        try:
            async with (
                httpx.AsyncClient(base_url=base, timeout=30) as http,
                aconnect_sse(http, "GET", path, headers=headers) as source,
            ):
                async for message in source.aiter_sse():
                    if not message.data or message.event == "reconnect":
                        continue
                    seen.append((message.id, message.event, message.data))
                    kind = orjson.loads(message.data)["type"] if task else message.event
                    if kind in (TASK_TERMINAL if task else TERMINAL):
                        return seen
        except httpx.HTTPError:
            pass  # the replica serving the stream went away: resume
        await asyncio.sleep(0.2)
    raise AssertionError(f"{path} did not end within {timeout}s; last events: {seen[-3:]}")


def restart(stack: Stack, name: str) -> None:
    stack.start(stack.orchestrator_proc(replica_index(name)), timeout=60)


# -- 2. SIGTERM: NOT_SERVING first, then the run is handed to the other replica ------------------


async def test_sigterm_turns_health_not_serving_and_the_run_finishes_elsewhere(
    replicas: Stack,
) -> None:
    """docs/reliability.md: orchestrator SIGTERM → health NOT_SERVING, stops taking jobs, drains,
    hands unfinished runs back."""
    base = replicas.gateway_url()
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        body = {
            "assistant_id": "chat",
            "input": question("How does Cai recover from a crash?"),
            "stream_mode": "messages-tuple",
        }
        run_id = (await http.post(f"/threads/{tid}/runs", json=body)).json()["run_id"]
        victim, _ = await executor(http, tid, run_id)
        await first_token(http, tid, run_id)
    survivor = "orchestrator-1" if victim == "orchestrator" else "orchestrator"
    proc = replicas.procs[victim]
    addr = replicas.orchestrator_addr(replica_index(victim))

    async with grpc.aio.insecure_channel(addr) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        for name in ("", "cai.v1.Orchestrator"):
            reply = await check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert reply.status == SERVING, name
        proc.signal(signal.SIGTERM)
        # It drains for its grace period (a run is in flight): it must say NOT_SERVING meanwhile.
        seen: dict[str, int] = {}
        while proc.alive() and len(seen) < 2:
            for name in ("", "cai.v1.Orchestrator"):
                try:
                    reply = await check(health_pb2.HealthCheckRequest(service=name), timeout=1)
                except grpc.aio.AioRpcError:
                    continue  # stopped listening
                if reply.status == NOT_SERVING:
                    seen[name] = reply.status
            await asyncio.sleep(0.02)
        assert set(seen) == {"", "cai.v1.Orchestrator"}, "exited without saying NOT_SERVING"
    assert proc.popen is not None
    assert proc.popen.wait(timeout=60) == 0, proc.tail()

    async with grpc.aio.insecure_channel(
        replicas.orchestrator_addr(replica_index(survivor))
    ) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check
        assert (await check(health_pb2.HealthCheckRequest(service=""))).status == SERVING

    events = await events_to_the_end(base, f"/threads/{tid}/runs/{run_id}/stream")
    names = [name for _, name, _ in events]
    assert names[-1] == "end" and "retry" in names, names
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        final = (await http.get(f"/threads/{tid}/runs/{run_id}")).json()
        state = (await http.get(f"/threads/{tid}/state")).json()
    assert final["status"] == "success" and final["attempt"] == 2
    assert str(final["executor"]).split(":", 1)[0] == survivor
    assert [m["type"] for m in state["values"]["messages"]] == ["human", "ai"]
    restart(replicas, victim)


async def test_health_watch_reports_serving(replicas: Stack) -> None:
    """docs: the orchestrator serves grpc.health.v1 (both RPCs: Check and Watch)."""
    async with grpc.aio.insecure_channel(replicas.orchestrator_addr(0)) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))
        first = await asyncio.wait_for(watch.read(), 10)
        watch.cancel()
    assert first != grpc.aio.EOF and first.status == SERVING


# -- 8. the task API during a retry ----------------------------------------------------------------


async def test_a_task_whose_worker_is_killed_shows_retrying_and_finishes(replicas: Stack) -> None:
    """docs/api.md (task API): a `retry` appears as `{"status": "retrying", "attempt": n}`; text
    already sent is not sent again; status is one of pending, running, done, stopped, error."""
    base = replicas.gateway_url()
    tid = str(uuid.uuid4())
    statuses: list[str] = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        started = await http.post(
            "/chat", json={"message": "How does Cai retry?", "thread_id": tid}
        )
        assert started.status_code == 200, started.text
        task_id = started.json()["task_id"]
        victim, _ = await executor(http, tid, task_id)
        await first_token(http, tid, task_id)

        async def poll_status() -> None:
            while True:
                answer = await http.get(f"/chat/{task_id}/status")
                if answer.status_code == 503:
                    # A read that reached the killed replica: the documented outage answer
                    # (retry later), not a task status.
                    assert "retry-after" in answer.headers, answer.text
                    assert answer.headers["content-type"].startswith("application/problem+json")
                else:
                    assert answer.status_code == 200, answer.text
                    statuses.append(answer.json()["status"])
                if statuses and statuses[-1] in ("done", "stopped", "error"):
                    return
                await asyncio.sleep(0.1)

        polling = asyncio.create_task(poll_status())
        replicas.procs[victim].signal(signal.SIGKILL)
        events = await events_to_the_end(base, f"/chat/{task_id}/stream", task=True)
        await asyncio.wait_for(polling, 30)
        state = (await http.get(f"/threads/{tid}/state")).json()

    payloads = [orjson.loads(data) for _, _, data in events]
    assert payloads[-1]["type"] == "done", payloads[-3:]
    retrying = [p["data"] for p in payloads if p["type"] == "status"]
    assert {"status": "retrying", "attempt": 2} in retrying, retrying
    text = "".join(p["data"] for p in payloads if p["type"] == "token")
    answer = state["values"]["messages"][-1]["content"]
    assert text == answer  # every token once: nothing sent twice across the retry
    assert len(answer.split()) == REPLY_TOKENS
    # The status never leaves the documented set while the run is reclaimed and retried.
    assert set(statuses) <= {"pending", "running", "done"}, statuses
    assert statuses[-1] == "done"
    restart(replicas, victim)
