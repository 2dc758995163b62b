"""Finding 9 (issue 14): a rolling update must not cancel runs.

Streams whose run stops when the client leaves (`on_disconnect: cancel`: stateless streams and
waits, every OpenAI completion) were cancelled when a gateway shut down, as if the client had
left, while the client was told to reconnect. A server ending a stream is not the client leaving:
the gateway cancels at once only for a client that left; otherwise the orchestrator holds the
cancel for REATTACH_GRACE_SECONDS, and a client that re-joins the run in time keeps it going.

The module runs its own stack (two gateways, one of which each test SIGTERMs and restarts).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from cai_common.runs import CANCELLED, END
from cai_devstack.fixtures import running_stack
from cai_devstack.stack import Stack
from tests.e2e.support import client, eventually, question
from tests.security.support import KEYS, keys_yaml

GRACE_S = 4.0  # REATTACH_GRACE_SECONDS
# 40 tokens, 250 ms apart: a 10 s answer, longer than the grace and a gateway restart.
ASSISTANTS = """
- id: slow
  name: Slow
  model_headers: {X-Sim-Token-Delay-Ms: "250"}
"""
Event = tuple[str, str, str]  # (id, event, data)


@pytest.fixture(scope="module")
def rolling(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, llm-sim, one orchestrator and two gateways."""
    run_dir: Path = tmp_path_factory.mktemp("rolling")
    (run_dir / "api-keys.yaml").write_text(keys_yaml())
    with running_stack(
        run_dir,
        timeout=120,
        assistants=ASSISTANTS,
        with_retriever=False,
        allow_anonymous=False,
        gateway_replicas=2,
        llm_sim_args=["--token-delay-ms", "5", "--reply-tokens", "40"],
        service_env={
            "API_KEYS_FILE": str(run_dir / "api-keys.yaml"),
            "REATTACH_GRACE_SECONDS": str(GRACE_S),
            "SHUTDOWN_GRACE_SECONDS": "1",
            "SSE_PING_SECONDS": "0.2",
            "LLM_MAX_RETRIES": "0",
        },
    ) as s:
        yield s


def sigterm_gateway_1(stack: Stack) -> None:
    """What a rolling update does to a gateway pod."""
    stack.procs["gateway-1"].signal(signal.SIGTERM)


def restart_gateway_1(stack: Stack) -> None:
    """Wait for the SIGTERMed gateway to exit, then start its replacement."""
    popen = stack.procs["gateway-1"].popen
    # uvicorn drains, then re-raises the SIGTERM it caught: -15 is its clean exit.
    assert popen is not None and popen.wait(timeout=30) in (0, -signal.SIGTERM)
    stack.start(stack.gateway_proc(1), timeout=60)


async def read_sse(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    json: object = None,
    headers: dict[str, str] | None = None,
) -> tuple[list[Event], httpx.Headers]:
    """Events (heartbeats skipped) until the stream ends."""
    events: list[Event] = []
    async with aconnect_sse(http, method, url, json=json, headers=headers or {}) as source:
        assert source.response.status_code == 200, await source.response.aread()
        async for sse in source.aiter_sse():
            if sse.event == "message" and not sse.data:
                continue
            events.append((sse.id, sse.event, sse.data))
        return events, source.response.headers


async def stream_until_sigterm(stack: Stack) -> tuple[list[Event], httpx.Headers]:
    """A stateless stream (cancelled on disconnect) on gateway 1, read until that gateway,
    SIGTERMed mid-answer, ends it with `reconnect`."""
    body = {"assistant_id": "slow", "input": question(), "stream_mode": "messages-tuple"}
    async with client(stack.gateway_url(1), KEYS.red) as http:
        async with aconnect_sse(http, "POST", "/runs/stream", json=body) as source:
            assert source.response.status_code == 200
            events: list[Event] = []
            async with asyncio.timeout(30):
                async for sse in source.aiter_sse():
                    if sse.event == "message" and not sse.data:
                        continue
                    events.append((sse.id, sse.event, sse.data))
                    if sum(1 for e in events if e[1] == "messages") == 3:
                        sigterm_gateway_1(stack)
            return events, source.response.headers


async def test_a_stream_cut_by_a_gateway_sigterm_is_rejoined_and_the_run_finishes(
    rolling: Stack,
) -> None:
    try:
        events, headers = await stream_until_sigterm(rolling)
        assert events[-1][1] == "reconnect"
        events.pop()
        location = headers["location"]
        assert location.endswith("/stream?cancel_on_disconnect=true")
        # The client reconnects where it was told, to another gateway, with Last-Event-ID.
        async with client(rolling.gateway_url(0), KEYS.red) as http:
            rest, _ = await read_sse(
                http, "GET", location, headers={"Last-Event-ID": events[-1][0]}
            )
            run = (await http.get(headers["content-location"])).json()
    finally:
        restart_gateway_1(rolling)
    full = events + rest
    names = [e[1] for e in full]
    assert names[-1] == END and CANCELLED not in names, names[-5:]
    ids = [tuple(int(p) for p in e[0].split("-")) for e in full]
    assert ids == sorted(set(ids))  # nothing lost to the resume, nothing repeated
    assert run["status"] == "success"


async def test_an_openai_stream_cut_by_a_gateway_sigterm_leaves_its_run_running(
    rolling: Stack,
) -> None:
    """An OpenAI client cannot resume by itself, but its run is not cancelled by the cut: it
    can be re-joined (Content-Location) within the grace and ends in success."""
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    chunks = 0
    try:
        async with client(rolling.gateway_url(1), KEYS.red) as http:
            async with http.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                run_path = response.headers["content-location"]
                try:
                    async for line in response.aiter_lines():
                        if line.startswith("data: {"):
                            chunks += 1
                            if chunks == 3:
                                sigterm_gateway_1(rolling)
                except httpx.HTTPError:
                    pass  # cut when the gateway's shutdown grace ends
        async with client(rolling.gateway_url(0), KEYS.red) as http:
            joined, _ = await read_sse(http, "GET", f"{run_path}/stream?cancel_on_disconnect=true")
            run = (await http.get(run_path)).json()
    finally:
        restart_gateway_1(rolling)
    assert chunks >= 3
    assert joined[-1][1] == END and run["status"] == "success"


async def test_a_run_nobody_rejoins_is_cancelled_when_the_grace_ends(rolling: Stack) -> None:
    try:
        events, headers = await stream_until_sigterm(rolling)
        cut_at = time.monotonic()
        assert events[-1][1] == "reconnect"
        async with client(rolling.gateway_url(0), KEYS.red) as http:
            run_path = headers["content-location"]

            async def status() -> str:
                return str((await http.get(run_path)).json()["status"])

            async def interrupted() -> bool:
                return await status() == "interrupted"

            assert await status() == "running"  # not cancelled by the cut
            await eventually(interrupted, timeout=GRACE_S + 15, interval=0.1)
            waited = time.monotonic() - cut_at
            log, _ = await read_sse(http, "GET", f"{run_path}/stream")
    finally:
        restart_gateway_1(rolling)
    assert GRACE_S - 0.5 <= waited <= GRACE_S + 3, waited  # replicas sweep once a second
    assert log[-1][1] == CANCELLED
    assert orjson.loads(log[-1][2])["action"] == "interrupt"
