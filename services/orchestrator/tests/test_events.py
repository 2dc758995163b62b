"""Event logs against a real Redis: coalescing writer, multiplexed tailer, exact resume."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import orjson
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cai_common.runs import parse_event_id
from cai_devstack.procs import free_port
from cai_orchestrator import keys
from cai_orchestrator.events import EventBatcher, EventWriter
from cai_orchestrator.frames import LogReader
from cai_orchestrator.tailer import LogTailer, Subscription, SubscriptionFailed


def log_key(run_id: str) -> str:
    return keys.run_keys("tenant", "thread", run_id).events


async def read_log(redis: Redis, key: str) -> list[tuple[bytes, bytes]]:
    """(event, data) of a log's entries as clients get them (token events rebuilt)."""
    reader = LogReader()
    events = [
        reader.decode(parse_event_id(i), f[b"e"], f[b"d"]) for i, f in await redis.xrange(key)
    ]
    return [e for e in events if e is not None]


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


async def drain(sub: Subscription, until_terminal: bool = True) -> list[tuple[bytes, bytes, bytes]]:
    got: list[tuple[bytes, bytes, bytes]] = []
    async with asyncio.timeout(10):
        while True:
            batch = await sub.queue.get()
            got.extend(batch)
            if until_terminal and batch[-1][1] == b"end":
                return got


def test_parse_event_id() -> None:
    assert parse_event_id("") == (0, 0)
    assert parse_event_id("0") == (0, 0)
    assert parse_event_id("1700000000000-3") == (1700000000000, 3)
    assert parse_event_id(b"5-0") < parse_event_id("5-1") < parse_event_id("6-0")
    top = 2**64 - 1
    assert parse_event_id(f"{top}-{top}") == (top, top)
    too_big = (f"{top + 1}-0", f"0-{top + 1}", "99999999999999999999-0", "1" * 21 + "-0")
    malformed = ("abc", "1-x", "-1", "1--2", "-1-0", "1-2-3", "5", "5-", " 5-0", "５-0", "5-0\n")
    for bad in (*too_big, *malformed):
        with pytest.raises(ValueError):
            parse_event_id(bad)


async def test_writer_merges_token_bursts_and_keeps_order(redis: Redis) -> None:
    run_id = str(uuid.uuid4())
    writer = EventWriter(redis, log_key(run_id), coalesce_s=0.05, safety_ttl_s=600)
    await writer.emit("metadata", b'{"run_id":"x"}')
    meta = b'{"langgraph_node":"agent"}'
    for i in range(50):
        await writer.token("msg-1", f" t{i}", meta)
    await writer.emit("values", b"{}")
    await writer.close("end", b"null", ttl_s=120)
    entries = await read_log(redis, log_key(run_id))
    names = [e for e, _ in entries]
    assert names[0] == b"metadata" and names[-2:] == [b"values", b"end"]
    token_events = [orjson.loads(d) for e, d in entries if e == b"messages"]
    # The first token goes out at once; the rest of the burst is merged.
    assert 2 <= len(token_events) < 50
    text = "".join(chunk["content"] for chunk, _ in token_events)
    assert text == "".join(f" t{i}" for i in range(50))
    assert all(
        chunk["type"] == "AIMessageChunk" and chunk["id"] == "msg-1" for chunk, _ in token_events
    )
    assert all(m == {"langgraph_node": "agent"} for _, m in token_events)
    assert 0 < await redis.ttl(log_key(run_id)) <= 120


async def test_tail_replays_then_follows_until_the_end(redis: Redis, tailer: LogTailer) -> None:
    run_id = str(uuid.uuid4())
    writer = EventWriter(redis, log_key(run_id), coalesce_s=0, safety_ttl_s=600)
    await writer.emit("metadata", b"1")
    await writer.emit("values", b"2")
    sub = await tailer.subscribe(log_key(run_id), (0, 0))
    await writer.emit("values", b"3")
    await writer.close("end", b"null", 60)
    got = await drain(sub)
    assert [d for _, _, d in got] == [b"1", b"2", b"3", b"null"]
    tailer.unsubscribe(sub)


async def test_resume_after_an_id_delivers_the_rest_exactly_once(
    redis: Redis, tailer: LogTailer
) -> None:
    run_id = str(uuid.uuid4())
    writer = EventWriter(redis, log_key(run_id), coalesce_s=0, safety_ttl_s=600)
    for i in range(10):
        await writer.emit("values", str(i).encode())
    ids = [eid for eid, _ in await redis.xrange(log_key(run_id))]
    sub = await tailer.subscribe(log_key(run_id), parse_event_id(ids[4]))
    await writer.close("end", b"null", 60)
    got = await drain(sub)
    assert [d for _, _, d in got] == [b"5", b"6", b"7", b"8", b"9", b"null"]


async def test_many_concurrent_subscribers_at_different_positions_lose_nothing(
    redis: Redis, tailer: LogTailer
) -> None:
    """Subscriptions that arrive while the tailer is blocked, mid-write, each get every event."""
    runs = [str(uuid.uuid4()) for _ in range(5)]
    writers = [EventWriter(redis, log_key(r), coalesce_s=0, safety_ttl_s=600) for r in runs]
    total = 60

    async def produce(w: EventWriter) -> None:
        for i in range(total):
            await w.emit("values", str(i).encode())
            if i % 7 == 0:
                await asyncio.sleep(0.001)
        await w.close("end", b"null", 60)

    async def consume(run_id: str, delay: float) -> list[bytes]:
        await asyncio.sleep(delay)
        sub = await tailer.subscribe(log_key(run_id), (0, 0))
        try:
            return [d for _, _, d in await drain(sub)]
        finally:
            tailer.unsubscribe(sub)

    expected = [str(i).encode() for i in range(total)] + [b"null"]
    consumers = [consume(r, 0.002 * j) for r in runs for j in range(4)]
    results = await asyncio.gather(*(produce(w) for w in writers), *consumers)
    for got in results[len(writers) :]:
        assert got == expected


async def test_a_position_redis_would_refuse_is_refused_on_subscribe(
    redis: Redis, tailer: LogTailer
) -> None:
    """Redis refuses a whole XREAD for one bad id: such a position never joins the shared read."""
    for bad in ((2**64, 0), (0, 2**64), (-1, 0)):
        with pytest.raises(ValueError):
            await tailer.subscribe(log_key(str(uuid.uuid4())), bad)
    run_id = str(uuid.uuid4())
    sub = await tailer.subscribe(log_key(run_id), (0, 0))
    writer = EventWriter(redis, log_key(run_id), coalesce_s=0, safety_ttl_s=600)
    await writer.close("end", b"null", 60)
    assert [e for _, e, _ in await drain(sub)] == [b"end"]


async def test_a_log_redis_refuses_fails_its_subscription_and_no_other(
    redis: Redis, tailer: LogTailer
) -> None:
    """A log Redis cannot read (here: a key that is not a stream) makes Redis refuse the shared
    XREAD; only that log's subscribers get an error, every other stream keeps flowing."""
    bad_key = log_key(str(uuid.uuid4()))
    await redis.set(bad_key, b"not a stream", ex=60)
    healthy_run = str(uuid.uuid4())
    writer = EventWriter(redis, log_key(healthy_run), coalesce_s=0, safety_ttl_s=600)
    await writer.emit("values", b"1")
    good = await tailer.subscribe(log_key(healthy_run), (0, 0))
    bad = await tailer.subscribe(bad_key, (0, 0))
    await writer.emit("values", b"2")
    await writer.close("end", b"null", 60)
    async with asyncio.timeout(10):
        with pytest.raises(SubscriptionFailed):
            await bad.get()
    assert [d for _, _, d in await drain(good)] == [b"1", b"2", b"null"]
    assert tailer.healthy.is_set()
    tailer.unsubscribe(bad)  # the client's clean-up after the error: harmless
    # The replica's read goes on for subscriptions that come later.
    later = str(uuid.uuid4())
    sub = await tailer.subscribe(log_key(later), (0, 0))
    await EventWriter(redis, log_key(later), coalesce_s=0, safety_ttl_s=600).close(
        "end", b"null", 60
    )
    assert [e for _, e, _ in await drain(sub)] == [b"end"]


@pytest.fixture
async def batcher(redis: Redis) -> AsyncIterator[EventBatcher]:
    b = EventBatcher(redis)
    b.start()
    yield b
    await b.stop()


async def test_batched_writers_share_round_trips_and_keep_each_log_in_order(
    redis: Redis, batcher: EventBatcher
) -> None:
    runs = [str(uuid.uuid4()) for _ in range(20)]
    meta = b'{"langgraph_node":"agent"}'

    async def produce(run_id: str) -> None:
        writer = EventWriter(
            redis, log_key(run_id), coalesce_s=0.005, safety_ttl_s=600, batcher=batcher
        )
        await writer.emit("metadata", run_id.encode())
        for i in range(50):
            await writer.token("msg-1", f" t{i}", meta)
            if i % 10 == 0:
                await asyncio.sleep(0.002)  # tokens arrive in bursts, as from a model
        await writer.emit("values", b"{}")
        await writer.close("end", b"null", ttl_s=120)

    await asyncio.gather(*(produce(r) for r in runs))
    events = 0
    for run_id in runs:
        entries = await read_log(redis, log_key(run_id))
        events += len(entries)
        names = [e for e, _ in entries]
        assert names[0] == b"metadata" and names[-2:] == [b"values", b"end"], names
        tokens = [orjson.loads(d) for e, d in entries if e == b"messages"]
        assert "".join(c["content"] for c, _ in tokens) == "".join(f" t{i}" for i in range(50))
        assert 0 < await redis.ttl(log_key(run_id)) <= 120
    # Many runs' events went out together: far fewer round trips than events.
    assert batcher.pipelines < events / 3, (batcher.pipelines, events)


async def test_a_failed_batch_fails_the_run_at_its_next_write() -> None:
    dead = Redis(port=free_port(), socket_connect_timeout=0.5)  # nothing listens there
    batcher = EventBatcher(dead)
    batcher.start()
    try:
        writer = EventWriter(dead, log_key(str(uuid.uuid4())), 0.005, 600, batcher=batcher)
        await writer.token("m", "first", b"{}")  # scheduled, not awaited
        with pytest.raises(RedisError):
            await writer.flush()
        with pytest.raises(RedisError):
            await writer.token("m", " second", b"{}")
    finally:
        await batcher.stop()
        await dead.aclose()


async def test_an_abandoned_attempt_writes_nothing_more(
    redis: Redis, batcher: EventBatcher
) -> None:
    run_id = str(uuid.uuid4())
    writer = EventWriter(redis, log_key(run_id), coalesce_s=10, safety_ttl_s=600, batcher=batcher)
    await writer.emit("metadata", b"{}")
    await writer.token("m", "written", b"{}")  # a message's first token: due at once
    await writer.flush()
    await writer.token("m", " dropped", b"{}")  # due only 10 s later
    await writer.abandon()  # the attempt is handed back before that
    await writer.flush()  # (would write " dropped" had it not been dropped)
    assert writer not in batcher._due
    contents = [
        orjson.loads(d)[0]["content"]
        for e, d in await read_log(redis, log_key(run_id))
        if e == b"messages"
    ]
    assert contents == ["written"]
