"""The run engine around a small graph of the tests' own, on the session's real Redis."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from redis.asyncio import Redis

from cai_orchestrator import keys

sys.path.insert(0, str(Path(__file__).parent))
from engine_support import Cluster, Gate  # noqa: E402


@pytest.fixture
async def cluster(redis_url: str) -> AsyncIterator[Cluster]:
    admin = Redis.from_url(redis_url)
    await admin.delete(keys.QUEUE, keys.DISPATCHING)  # no other test's jobs
    sched = [
        k
        async for k in admin.scan_iter(
            match=keys.SCHED.replace("{", "\\{").replace("}", "\\}") + "*"
        )
    ]
    if sched:
        await admin.delete(*sched)
    c = Cluster(redis_url, Gate(), InMemorySaver())
    yield c
    c.gate.opened.set()
    for r in c.replicas:
        await r.stop(0.5)
        for client in r.clients:
            await client.aclose()
    await admin.aclose()
