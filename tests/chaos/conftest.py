"""Chaos fixtures: two orchestrators, two gateways, llm-sim with slow tokens, real processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from cai_common.runs import TERMINAL_EVENTS
from cai_devstack.fixtures import running_stack
from cai_devstack.stack import Stack

TOKEN_DELAY_MS = 50
REPLY_TOKENS = 40  # about 2 s per answer
LEASE_SECONDS = 3
ASSISTANTS = """
- id: chat
- id: slow
  description: 150 ms a token (6 s an answer), so a second request surely finds it running
  model_headers: {X-Sim-Token-Delay-Ms: "150"}
- id: fail-500
  model_headers: {X-Sim-Fail-Status: "500"}
- id: fail-429
  model_headers: {X-Sim-Fail-Status: "429"}
- id: stall
  model_headers: {X-Sim-Stall-After: "3", X-Sim-Stall-Seconds: "30"}
- id: cut
  model_headers: {X-Sim-Cut-After: "3"}
"""
# Two steps (a retrieval that fails at once: no retriever runs, then a 4 s answer) under each
# checkpoint durability, for what a run killed mid-answer resumes from.
ASSISTANTS += "".join(
    f"""- id: durable-{mode}
  durability: {mode}
  retrieval: {{enabled: true}}
  model_headers: {{X-Sim-Token-Delay-Ms: "100"}}
"""
    for mode in ("sync", "async", "exit")
)
Event = tuple[str, str, str]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(__file__).parent in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(scope="module")
def chaos(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack with redundancy, short leases and short drains, so failures recover quickly."""
    with running_stack(
        tmp_path_factory.mktemp("chaos"),
        timeout=120,
        assistants=ASSISTANTS,
        orchestrator_replicas=2,
        gateway_replicas=2,
        with_retriever=False,
        llm_sim_args=[
            "--token-delay-ms", str(TOKEN_DELAY_MS), "--reply-tokens", str(REPLY_TOKENS)
        ],
        service_env={
            "LEASE_SECONDS": str(LEASE_SECONDS),
            "SHUTDOWN_GRACE_SECONDS": "1",
            "LLM_STALL_SECONDS": "1.5",
            "LLM_MAX_RETRIES": "1",
            "SSE_PING_SECONDS": "0.5",
        },
    ) as stack:  # fmt: skip
        yield stack


def eventually(check: Callable[[], bool], timeout: float = 30.0, interval: float = 0.1) -> None:
    """Poll `check` until true or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


def question(text: str = "How does Cai recover from a crash?") -> dict[str, object]:
    return {"messages": [{"role": "user", "content": text}]}


async def read_events(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    json: object = None,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
    until: str | None = None,
    on_event: Callable[[Event], None] | None = None,
) -> tuple[list[Event], httpx.Headers]:
    """Real events (heartbeats skipped) until the stream ends, fails, `stop_after` events were
    read, or an event named `until` arrived."""
    events: list[Event] = []
    response_headers = httpx.Headers()
    try:
        async with aconnect_sse(
            http, method, url, json=json, headers=dict(headers or {})
        ) as source:
            response_headers = source.response.headers
            if source.response.status_code != 200:
                body = (await source.response.aread()).decode(errors="replace")
                raise AssertionError(f"{method} {url}: {source.response.status_code} {body}")
            async for sse in source.aiter_sse():
                if sse.event == "message" and not sse.data:
                    continue
                event = (sse.id, sse.event, sse.data)
                events.append(event)
                if on_event is not None:
                    on_event(event)
                if stop_after is not None and len(events) >= stop_after:
                    break
                if until is not None and event[1] == until:
                    break
    except (httpx.TransportError, httpx.RemoteProtocolError):
        pass  # the server went away: the caller resumes
    return events, response_headers


async def follow_to_end(
    gateways: list[str], run_path: str, seen: list[Event], timeout: float = 60.0
) -> list[Event]:
    """Resume `run_path` with Last-Event-ID, rotating gateways, until a terminal event."""
    deadline = time.monotonic() + timeout
    attempt = 0
    while time.monotonic() < deadline:
        if seen and seen[-1][1] in TERMINAL_EVENTS:
            return seen
        base = gateways[attempt % len(gateways)]
        attempt += 1
        headers = {"Last-Event-ID": seen[-1][0]} if seen else {}
        try:
            async with httpx.AsyncClient(base_url=base, timeout=30) as http:
                more, _ = await read_events(http, "GET", f"{run_path}/stream", headers=headers)
        except httpx.HTTPError:
            more = []
        seen.extend(e for e in more if e[1] != "reconnect")
        if not more:
            await asyncio.sleep(0.2)
    raise AssertionError(f"run did not end within {timeout}s; last events: {seen[-3:]}")


def answer_after_last_retry(events: list[Event]) -> str:
    """The streamed text of the final attempt (clients drop partial text on `retry`)."""
    last_retry = max((i for i, e in enumerate(events) if e[1] == "retry"), default=-1)
    return "".join(
        orjson.loads(d)[0]["content"] for _, ev, d in events[last_retry + 1 :] if ev == "messages"
    )
