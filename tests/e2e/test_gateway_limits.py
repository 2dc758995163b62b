"""Limits through real processes: per-key rate limits, the concurrent-stream cap (shared in
Redis, released on disconnect), body size, message length and count, CORS."""

from __future__ import annotations

import asyncio
import uuid

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse

from cai_devstack.stack import Stack
from tests.e2e.support import KEYS, client, eventually, question

SLOW_RUN = {"assistant_id": "slow", "input": question(), "stream_mode": "messages-tuple"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    assert body["status"] == status and body["detail"]
    return body


async def test_rate_limit_per_key_with_retry_after(gw: str) -> None:
    async with client(gw, KEYS.limited) as http, client(gw, KEYS.alpha) as other:
        # 2 requests/s, bursts of 3: the burst passes, the next is refused.
        statuses = [(await http.post("/assistants/search", json={})).status_code for _ in range(4)]
        assert statuses[:3] == [200, 200, 200] and statuses[3] == 429
        refused = await http.post("/assistants/search", json={})
        body = assert_problem(refused, 429)
        assert refused.headers["retry-after"] == "1" and body["retry_after"] == 1
        assert "2 requests/s" in str(body["detail"])
        # Other keys are not affected.
        assert (await other.post("/assistants/search", json={})).status_code == 200
        # A token comes back (2/s refills one in about half a second).

        async def allowed() -> bool:
            return (await http.post("/assistants/search", json={})).status_code == 200

        await eventually(allowed, timeout=10, interval=0.05)


async def test_concurrent_stream_cap_is_released_on_disconnect(gw: str) -> None:
    async with client(gw, KEYS.one_stream) as http:
        thread = (await http.post("/threads", json={})).json()
        async with aconnect_sse(
            http, "POST", f"/threads/{thread['thread_id']}/runs/stream", json=SLOW_RUN
        ) as first:
            assert first.response.status_code == 200
            # Keep the iterator referenced: a dropped one is closed, and so is the connection.
            events = first.aiter_sse()
            async for sse in events:
                if sse.event == "messages":
                    break  # the stream is live and holds the key's only slot
            for method, url, body in (
                ("POST", "/runs/stream", SLOW_RUN),
                ("POST", "/runs/wait", SLOW_RUN),
                (
                    "POST",
                    "/v1/chat/completions",
                    {"model": "chat", "messages": question()["messages"]},
                ),
            ):
                refused = await http.request(method, url, json=body)
                assert_problem(refused, 429)
                assert refused.headers["retry-after"] == "1"
            # Requests that hold no stream still go through.
            assert (await http.get(f"/threads/{thread['thread_id']}")).status_code == 200
        # The client went away: its slot is released and a new stream is allowed again.

        async def stream_allowed() -> bool:
            async with http.stream(
                "POST", "/runs/stream", json={**SLOW_RUN, "assistant_id": "chat"}
            ) as r:
                await r.aread()
                return r.status_code == 200

        await eventually(stream_allowed, timeout=5)


async def test_stream_cap_holds_across_gateway_replicas(gw_stack: object, gw: str) -> None:
    # The cap lives in Redis: a second gateway replica sees the first one's open stream.
    from cai_devstack.stack import Stack

    stack = gw_stack
    assert isinstance(stack, Stack)
    proc = stack.gateway_proc(1)
    stack.start(proc, timeout=60)
    try:
        async with (
            client(gw, KEYS.one_stream) as http,
            client(stack.gateway_url(1), KEYS.one_stream) as second,
        ):
            async with aconnect_sse(http, "POST", "/runs/stream", json=SLOW_RUN) as first:
                events = first.aiter_sse()
                async for sse in events:
                    if sse.event == "messages":
                        break
                assert_problem(await second.post("/runs/stream", json=SLOW_RUN), 429)
    finally:
        proc.stop()
        stack.procs.pop(proc.name, None)


async def test_body_size_limit_by_header_and_while_reading(gw: str) -> None:
    big = orjson.dumps({"metadata": {"blob": "x" * 70_000}})
    async with client(gw) as http:
        headers = {"Content-Type": "application/json"}
        assert_problem(await http.post("/threads", content=big, headers=headers), 413)

        async def chunked():  # type: ignore[no-untyped-def]
            for i in range(0, len(big), 8192):
                yield big[i : i + 8192]

        assert_problem(await http.post("/threads", content=chunked(), headers=headers), 413)
        # The server is fine afterwards.
        assert (await http.post("/threads", json={})).status_code == 200


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("/runs/wait", {"assistant_id": "chat", "input": question("x" * 4001)}),
        (
            "/runs/stream",
            {
                "assistant_id": "chat",
                "input": {"messages": [{"role": "user", "content": "a"}] * 51},
            },
        ),
        (
            "/v1/chat/completions",
            {"model": "chat", "messages": [{"role": "user", "content": "x" * 4001}]},
        ),
        ("/chat", {"message": "x" * 4001}),
        (
            "/chat",
            {"message": "hi", "conversation_history": [{"role": "user", "content": "a"}] * 50},
        ),
    ],
)
async def test_message_limits_are_422(gw: str, url: str, body: dict[str, object]) -> None:
    async with client(gw) as http:
        detail = str(assert_problem(await http.post(url, json=body), 422)["detail"])
        assert "too long" in detail or "too many" in detail


async def test_cors(gw: str) -> None:
    async with client(gw, None) as http:
        preflight = {
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type,last-event-id",
        }
        ok = await http.options(
            "/threads", headers={**preflight, "Origin": "https://app.example.com"}
        )
        assert ok.status_code == 200
        assert ok.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "last-event-id" in ok.headers["access-control-allow-headers"].lower()
        other = await http.options("/threads", headers={**preflight, "Origin": "https://evil.test"})
        assert "access-control-allow-origin" not in other.headers
        simple = await http.get(
            f"/threads/{uuid.uuid4()}",
            headers={"Origin": "https://app.example.com", "X-Api-Key": KEYS.alpha},
        )
        assert simple.status_code == 404
        assert simple.headers["access-control-allow-origin"] == "https://app.example.com"


async def test_streams_in_flight_are_visible_in_metrics(gw_stack: Stack, gw: str) -> None:
    metrics_url = f"http://127.0.0.1:{gw_stack.config.gateway_metrics_port}/metrics"
    async with client(gw) as http:
        async with aconnect_sse(http, "POST", "/runs/stream", json=SLOW_RUN) as source:
            events = source.aiter_sse()
            async for sse in events:
                if sse.event == "messages":
                    break
            metrics = (await http.get(metrics_url)).text
            line = next(
                m for m in metrics.splitlines()
                if m.startswith('cai_sse_streams_in_flight{dialect="langgraph"}')
            )  # fmt: skip
            assert float(line.split()[-1]) >= 1
        await asyncio.sleep(0)
