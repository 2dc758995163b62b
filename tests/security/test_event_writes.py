"""Finding 11, one of the smaller items: a Redis write of run events that redis-py resent after
losing its reply wrote the batch twice. Each batch is now written at most once.

Real Redis, the production client (`resilient_redis`, which retries on connection errors) and a
TCP proxy between them that loses one reply after Redis applied the write.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from cai_common.redis_client import resilient_redis
from cai_common.runs import parse_event_id
from cai_orchestrator import keys
from cai_orchestrator.events import EventBatcher, EventWriter
from cai_orchestrator.frames import LogReader


class LosesOneReply:
    """A TCP proxy in front of Redis that, once armed, lets the next request mentioning `needle`
    reach Redis, swallows Redis's reply and drops the client's connection: a reply lost on the
    way, after the write was applied. redis-py reconnects and sends the pipeline again."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.needle: bytes | None = None
        self.dropped = asyncio.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    def arm(self, needle: bytes) -> None:
        self.needle = needle

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.redis_port)
        swallow = asyncio.Event()

        async def upstream() -> None:
            while data := await client_r.read(65536):
                if self.needle is not None and self.needle in data:
                    self.needle = None
                    swallow.set()
                redis_w.write(data)
                await redis_w.drain()

        async def downstream() -> None:
            while data := await redis_r.read(65536):
                if swallow.is_set():
                    self.dropped.set()
                    client_w.transport.abort()
                    return
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.create_task(upstream()), asyncio.create_task(downstream())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            client_w.transport.abort()
            redis_w.close()


@pytest.fixture
async def lossy(redis_url: str) -> AsyncIterator[tuple[LosesOneReply, Redis, Redis]]:
    """The proxy, a production Redis client (retries on connection errors) through it, and a
    direct client to read what landed."""
    proxy = LosesOneReply(int(redis_url.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    through = resilient_redis(f"redis://127.0.0.1:{proxy.port}/0")
    direct = Redis.from_url(redis_url)
    yield proxy, through, direct
    await through.aclose()
    await direct.aclose()
    await proxy.stop()


async def events_in(redis: Redis, key: str) -> list[bytes]:
    """The events of a log as clients see them (compact token entries rebuilt)."""
    reader = LogReader()
    seen = []
    for entry_id, fields in await redis.xrange(key):
        decoded = reader.decode(parse_event_id(entry_id), fields[b"e"], fields[b"d"])
        assert decoded is not None
        seen.append(decoded[0])
    return seen


async def test_a_batch_resent_after_its_reply_was_lost_is_written_once(
    lossy: tuple[LosesOneReply, Redis, Redis],
) -> None:
    proxy, through, direct = lossy
    key = keys.run_keys("sec", str(uuid.uuid4()), str(uuid.uuid4())).events
    writer = EventWriter(through, key, coalesce_s=0, safety_ttl_s=600)
    await writer.emit("metadata", b"{}")
    proxy.arm(key.encode())
    await writer.emit("values", b'{"n": 1}')
    assert proxy.dropped.is_set()  # the reply was lost and the write resent
    await writer.emit("end", b"null")
    assert await events_in(direct, key) == [b"metadata", b"values", b"end"]


async def test_batched_writes_of_several_runs_resent_together_are_each_written_once(
    lossy: tuple[LosesOneReply, Redis, Redis],
) -> None:
    proxy, through, direct = lossy
    batcher = EventBatcher(through)
    batcher.start()
    try:
        logs = [keys.run_keys("sec", "t", str(uuid.uuid4())).events for _ in range(3)]
        writers = [EventWriter(through, k, 0.005, 600, batcher) for k in logs]
        for w in writers:
            await w.emit("metadata", b"{}")
        proxy.arm(logs[0].encode())
        # Every writer's events are due together: they share the pipeline whose reply is lost.
        await asyncio.gather(*(w.emit("values", b"{}") for w in writers))
        assert proxy.dropped.is_set()
        for w in writers:
            await w.token("m1", "Hello", b"{}")
            await w.finish()
        for k in logs:
            assert await events_in(direct, k) == [b"metadata", b"values", b"messages"]
    finally:
        await batcher.stop()
