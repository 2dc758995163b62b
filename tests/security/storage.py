"""What the storage findings' tests share (deletion, retention, state limits): which keys hold
something of a thread, and how a problem answer looks."""

from __future__ import annotations

from typing import Any

import httpx
from redis.asyncio import Redis

from cai_orchestrator import keys
from cai_orchestrator.keys import ThreadKeys

TENANT = "red"  # KEYS.red's tenant


async def keys_of_thread(
    redis: Redis, tenant: str, thread_id: str, run_ids: list[str]
) -> list[str]:
    """Every key that holds something of the thread: its own, its runs' indexes, checkpoints."""
    tk = ThreadKeys(tenant, thread_id)
    found = [k async for k in redis.scan_iter(match=tk.prefix + "*", count=1000)]
    found += [k async for k in redis.scan_iter(match=f"*{tk.checkpoint_thread}*", count=1000)]
    for run_id in run_ids:
        if await redis.exists(keys.run_thread(tenant, run_id)):
            found.append(keys.run_thread(tenant, run_id).encode())
    return sorted(k.decode() if isinstance(k, bytes) else k for k in found)


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["status"] == status and body["detail"]
    return body
