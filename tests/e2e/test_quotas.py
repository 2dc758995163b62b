"""Tenant run quotas through the real gateway and orchestrator: a create past the quota is a 429
problem with Retry-After, and every run accepted before it still runs to its end."""

from __future__ import annotations

import asyncio

import orjson
from httpx_sse import aconnect_sse

from tests.e2e.support import KEYS, client, question

SLOW = {"assistant_id": "slow", "input": question()}


async def final_event(http: object, path: str) -> str:
    last = ""
    async with aconnect_sse(http, "GET", f"{path}/stream") as source:  # type: ignore[arg-type]
        async for sse in source.aiter_sse():
            if sse.data:
                last = sse.event
    return last


async def test_a_run_past_the_tenants_quota_is_429_and_nothing_accepted_is_lost(gw: str) -> None:
    async with client(gw, KEYS.quota) as http, client(gw, KEYS.alpha) as other:
        paths = []
        for _ in range(2):  # max_running_runs 1 + max_queued_runs 1
            tid = (await http.post("/threads", json={})).json()["thread_id"]
            created = await http.post(f"/threads/{tid}/runs", json=SLOW)
            assert created.status_code == 200, created.text
            paths.append(f"/threads/{tid}/runs/{created.json()['run_id']}")
        refused = await http.post("/runs/wait", json=SLOW)
        assert refused.status_code == 429, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        assert int(refused.headers["retry-after"]) >= 1
        body = orjson.loads(refused.content)
        assert body["status"] == 429 and "max_queued_runs" in body["detail"]
        assert body["retry_after"] == int(refused.headers["retry-after"])
        # Another tenant is not affected.
        tid = (await other.post("/threads", json={})).json()["thread_id"]
        assert (await other.post(f"/threads/{tid}/runs", json=SLOW)).status_code == 200
        # Both accepted runs run to their end; then the tenant may create runs again.
        finals = await asyncio.gather(*(final_event(http, p) for p in paths))
        assert finals == ["end", "end"]
        for p in paths:
            assert (await http.get(p)).json()["status"] == "success"
        again = await http.post("/runs/wait", json={"assistant_id": "chat", "input": question()})
        assert again.status_code == 200, again.text
