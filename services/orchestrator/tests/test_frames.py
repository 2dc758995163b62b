"""Token events stored once per message (frames.py): rebuilt to the same bytes from anywhere."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis

from cai_common.runs import parse_event_id
from cai_orchestrator import keys
from cai_orchestrator.events import EventWriter
from cai_orchestrator.frames import HEAD, MESSAGE, TOKEN, LogReader, message_frame, token_frame
from cai_orchestrator.tailer import LogTailer, Subscription

# LangGraph's metadata of a model call, as large as Cai's real one.
META_A = orjson.dumps(
    {
        "run_id": str(uuid.uuid4()),
        "thread_id": str(uuid.uuid4()),
        "assistant_id": "chat",
        "langgraph_step": 1,
        "langgraph_node": "agent",
        "langgraph_checkpoint_ns": f"agent:{uuid.uuid4()}",
        "ls_model_name": "cai-sim",
        "lc_versions": {"langchain-core": "1", "langchain-openai": "1"},
    }
)
META_B = META_A.replace(b'"langgraph_step":1', b'"langgraph_step":3')
FINISH = b'{"content":"","response_metadata":{"finish_reason":"stop"},"type":"AIMessageChunk"}'


def log_key() -> str:
    return keys.run_keys("tenant", "thread", str(uuid.uuid4())).events


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def tailer(redis_url: str, redis: Redis) -> AsyncIterator[LogTailer]:
    dedicated = Redis.from_url(redis_url, max_connections=1)
    t = LogTailer(dedicated, redis, f"test-{uuid.uuid4()}", block_ms=5000)
    t.start()
    yield t
    await t.stop()
    await dedicated.aclose()


async def write_two_attempts(
    redis: Redis, key: str, compact: bool = True
) -> list[tuple[bytes, bytes]]:
    """A log with every kind of entry: two messages, interleaved, a message whose metadata
    changes, chunks with and without their head's metadata, and an attempt that is abandoned
    mid-message and retried. Returns the (event, data) the writer would have stored in full."""
    expected: list[tuple[bytes, bytes]] = []
    first = EventWriter(redis, key, 0, 600, compact=compact)  # every token its own event

    async def emit(writer: EventWriter, event: str, data: bytes) -> None:
        await writer.emit(event, data)
        expected.append((event.encode(), data))

    async def token(writer: EventWriter, message_id: str, text: str, meta: bytes) -> None:
        await writer.token(message_id, text, meta)
        expected.append((b"messages", token_frame(text, message_id, meta)))

    async def message(writer: EventWriter, data: bytes, meta: bytes) -> None:
        await writer.message(data, meta)
        expected.append((b"messages", message_frame(data, meta)))

    await emit(first, "metadata", b'{"attempt":1}')
    await message(first, FINISH, META_A)  # before any head: stored in full
    for i in range(5):
        await token(first, "lc_run--a", f' a{i} \u00e9\\"\n', META_A)
    await message(first, FINISH, META_A)  # the head's metadata: stored without it
    await message(first, FINISH, META_B)
    await token(first, "lc_run--b", "b0", META_A)  # another message: a new head
    await token(first, "lc_run--a", " a5", META_A)  # back to the first one: a new head again
    await token(first, "lc_run--a", " a6", META_B)  # same message, other metadata: a head
    await token(first, "lc_run--a", " a7", META_B)
    await first.abandon()  # the attempt is handed back mid-message

    second = EventWriter(redis, key, 0, 600, compact=compact)
    await emit(second, "retry", b'{"attempt":2}')
    await emit(second, "metadata", b'{"attempt":2}')
    for i in range(4):
        await token(second, "lc_run--c", f" c{i}", META_A)
    await message(second, FINISH, META_A)
    await emit(second, "values", b"{}")
    await second.close("end", b"null", 60)
    expected.append((b"end", b"null"))
    return expected


async def test_the_log_stores_a_message_once_and_rebuilds_every_event(redis: Redis) -> None:
    key = log_key()
    expected = await write_two_attempts(redis, key)
    entries = await redis.xrange(key)
    stored = [f[b"e"] for _, f in entries]
    assert stored.count(HEAD) == 5 and stored.count(TOKEN) == 8 and stored.count(MESSAGE) == 2
    reader = LogReader()
    rebuilt = [reader.decode(parse_event_id(i), f[b"e"], f[b"d"]) for i, f in entries]
    assert rebuilt == expected
    # What a token entry costs is its text.
    assert all(len(f[b"d"]) < 20 for _, f in entries if f[b"e"] == TOKEN)


async def test_with_compact_logs_off_every_event_is_stored_in_full(redis: Redis) -> None:
    """The first rollout: replicas that predate the format may still read these logs."""
    key = log_key()
    expected = await write_two_attempts(redis, key, compact=False)
    entries = await redis.xrange(key)
    assert [(f[b"e"], f[b"d"]) for _, f in entries] == expected
    reader = LogReader()
    assert [reader.decode(parse_event_id(i), f[b"e"], f[b"d"]) for i, f in entries] == expected


async def drain(sub: Subscription) -> list[tuple[bytes, bytes, bytes]]:
    got: list[tuple[bytes, bytes, bytes]] = []
    async with asyncio.timeout(10):
        while not got or got[-1][1] != b"end":
            got.extend(await sub.get())
    return got


async def test_a_stream_from_any_event_gets_the_same_bytes_as_a_full_replay(
    redis: Redis, tailer: LogTailer
) -> None:
    key = log_key()
    expected = await write_two_attempts(redis, key)
    ids = [i for i, _ in await redis.xrange(key)]
    full = await tailer.subscribe(key, (0, 0))
    replay = await drain(full)
    tailer.unsubscribe(full)
    assert [(e, d) for _, e, d in replay] == expected and [i for i, _, _ in replay] == ids
    for k, event_id in enumerate(ids[:-1]):  # each from a tailer that knows nothing of the log
        sub = await tailer.subscribe(key, parse_event_id(event_id))
        assert await drain(sub) == replay[k + 1 :], k
        tailer.unsubscribe(sub)


async def test_concurrent_streams_from_many_positions_share_the_heads(
    redis: Redis, tailer: LogTailer
) -> None:
    """Streams join a log while it is written, at positions before and after its heads."""
    key = log_key()
    writer = EventWriter(redis, key, coalesce_s=0, safety_ttl_s=600)
    await writer.emit("metadata", b"{}")
    subs = [await tailer.subscribe(key, (0, 0))]
    for i in range(30):
        await writer.token(f"lc_run--{i // 10}", f" t{i}", META_A)
        if i % 4 == 1:
            last = (await redis.xrevrange(key, count=1))[0][0]
            subs.append(await tailer.subscribe(key, parse_event_id(last)))
        await asyncio.sleep(0.001)
    await writer.close("end", b"null", 60)
    everything = await drain(subs[0])
    for sub in subs[1:]:
        got = await drain(sub)
        assert got == everything[len(everything) - len(got) :]
        assert all(e in (b"messages", b"end") for _, e, _ in got)
