"""Run event logs: the worker's coalescing writer and the replica's multiplexed log tailer.

Each run has an event log, a Redis Stream whose entry ids are the event ids clients resume from.
Events carry their final JSON payload, built once here; nothing downstream re-parses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from cai_orchestrator import keys

log = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset({"end", "error", "cancelled", "timeout"})
EVENT_FIELD = b"e"
DATA_FIELD = b"d"


def parse_event_id(event_id: str | bytes) -> tuple[int, int]:
    """Parse a stream entry id ("1700000000000-3"); "" and "0" mean the beginning.

    Raises:
        ValueError: the id is not a stream entry id.
    """
    if isinstance(event_id, bytes):
        event_id = event_id.decode()
    if event_id in ("", "0", "0-0"):
        return (0, 0)
    ms, _, seq = event_id.partition("-")
    if not ms.isdigit() or (seq and not seq.isdigit()):
        raise ValueError(f"not an event id: {event_id!r}")
    return (int(ms), int(seq or 0))


def json_default(obj: Any) -> Any:
    """orjson fallback: LangChain messages and other pydantic models as dicts."""
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump()
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    return str(obj)


def dumps(obj: Any) -> bytes:
    """Serialise an event payload (the one place payloads are built)."""
    return orjson.dumps(obj, default=json_default, option=orjson.OPT_NON_STR_KEYS)


@dataclass
class _TokenRun:
    """Consecutive content-only deltas of one message, merged into one `messages` event."""

    message_id: str
    meta: bytes
    parts: list[str] = field(default_factory=list)


class EventWriter:
    """Appends a run's events to its log, coalescing token deltas over a few milliseconds.

    A message's first token, and any token after a quiet period, is written at once (time to first
    token is never delayed); tokens that follow within `coalesce_s` are merged into one event.
    Every other event flushes what is pending first, so order is always preserved.
    """

    def __init__(self, redis: Redis, run_id: str, coalesce_s: float, safety_ttl_s: int) -> None:
        self.redis = redis
        self.key = keys.events(run_id)
        self.coalesce_s = coalesce_s
        self.safety_ttl_s = safety_ttl_s
        self._pending: list[tuple[bytes, bytes]] = []
        self._tokens: _TokenRun | None = None
        self._lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None
        self._last_flush = 0.0
        self._expiry_set = False
        self._last_message_id: str | None = None
        self.tokens_written = 0

    def _take_tokens(self) -> None:
        run = self._tokens
        if run is None:
            return
        self._tokens = None
        text = "".join(run.parts)
        chunk = (
            b'[{"content":'
            + orjson.dumps(text)
            + b',"additional_kwargs":{},"response_metadata":{},"type":"AIMessageChunk",'
            b'"name":null,"id":'
            + orjson.dumps(run.message_id)
            + b',"tool_calls":[],"invalid_tool_calls":[],"usage_metadata":null,'
            b'"tool_call_chunks":[]},' + run.meta + b"]"
        )
        self._pending.append((b"messages", chunk))

    async def token(self, message_id: str, text: str, meta: bytes) -> None:
        """Queue a content-only delta of an AI message (the hot path)."""
        run = self._tokens
        first = message_id != self._last_message_id
        if run is None or run.message_id != message_id or run.meta is not meta:
            self._take_tokens()
            run = self._tokens = _TokenRun(message_id, meta)
            self._last_message_id = message_id
        run.parts.append(text)
        self.tokens_written += 1
        if first or time.monotonic() - self._last_flush >= self.coalesce_s:
            await self.flush()
        elif self._flush_task is None:
            self._flush_task = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.coalesce_s)
        self._flush_task = None
        await self.flush()

    async def emit(self, event: str, data: bytes) -> None:
        """Append an event (already serialised) after everything queued before it."""
        self._take_tokens()
        self._pending.append((event.encode(), data))
        await self.flush()

    async def flush(self) -> None:
        """Write what is pending in one pipelined round trip."""
        async with self._lock:
            self._take_tokens()
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            async with self.redis.pipeline(transaction=False) as pipe:
                for event, data in batch:
                    pipe.xadd(self.key, {EVENT_FIELD: event, DATA_FIELD: data})
                if not self._expiry_set:
                    # An orphaned log (its run lost for good) still goes away eventually.
                    pipe.expire(self.key, self.safety_ttl_s)
                    self._expiry_set = True
                await pipe.execute()
            self._last_flush = time.monotonic()

    async def finish(self) -> None:
        """Write everything pending; the terminal event is then written with the run's status."""
        if self._flush_task is not None:
            self._flush_task.cancel()
            self._flush_task = None
        await self.flush()

    async def close(self, event: str, data: bytes, ttl_s: int) -> None:
        """Write a terminal event and start the log's expiry clock (runs that never started)."""
        await self.finish()
        await self.emit(event, data)
        await self.redis.expire(self.key, ttl_s)


Entry = tuple[bytes, bytes, bytes]  # (event id, event name, data)


@dataclass(eq=False)
class Subscription:
    """One client's view of one run's log: entries after `last_id`, in order, each once."""

    key: bytes
    last_id: tuple[int, int]
    queue: asyncio.Queue[list[Entry]] = field(default_factory=asyncio.Queue)


class LogTailer:
    """Follows every log this replica's clients watch with one blocking XREAD.

    One Redis connection serves any number of streams, instead of one blocked connection per
    client. Subscribing pokes a per-replica "wake" stream that is part of every XREAD, so a new
    subscription is picked up at once rather than after the block times out.
    """

    def __init__(self, redis: Redis, poke: Redis, replica_id: str, block_ms: int = 5000) -> None:
        self.redis = redis  # a dedicated connection: XREAD blocks it
        self.poke = poke
        self.wake_key = keys.wake(replica_id).encode()
        self.block_ms = block_ms
        self._subs: dict[bytes, set[Subscription]] = {}
        self._cursor: dict[bytes, tuple[int, int]] = {}
        self._wake_cursor = b"$"
        self._task: asyncio.Task[None] | None = None
        self.healthy = asyncio.Event()

    def start(self) -> None:
        """Start the background XREAD loop."""
        self._task = asyncio.create_task(self._loop(), name="log-tailer")

    async def stop(self) -> None:
        """Stop the loop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(RedisError):
            await self.poke.delete(self.wake_key)

    async def subscribe(self, run_id: str, after: tuple[int, int]) -> Subscription:
        """Watch a run's log from after `after`."""
        key = keys.events(run_id).encode()
        sub = Subscription(key, after)
        self._subs.setdefault(key, set()).add(sub)
        cursor = self._cursor.get(key)
        if cursor is None or after < cursor:
            self._cursor[key] = after
        await self.poke.xadd(self.wake_key, {b"w": b"1"}, maxlen=100, approximate=True)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop watching."""
        subs = self._subs.get(sub.key)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.key]
            self._cursor.pop(sub.key, None)

    async def _loop(self) -> None:
        backoff = 0.1
        while True:
            streams: dict[bytes, bytes] = {self.wake_key: self._wake_cursor}
            sent = dict(self._cursor)
            for key, (ms, seq) in sent.items():
                streams[key] = f"{ms}-{seq}".encode()
            try:
                reply = await self.redis.xread(streams, count=1000, block=self.block_ms)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.healthy.clear()
                log.warning("log tailer lost Redis; retrying", extra={"error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.1
            self.healthy.set()
            for key, entries in reply or ():
                if not entries:
                    continue
                if key == self.wake_key:
                    self._wake_cursor = entries[-1][0]
                    continue
                self._dispatch(key, entries, sent.get(key, (0, 0)))

    def _dispatch(
        self, key: bytes, entries: list[tuple[bytes, dict[bytes, bytes]]], sent: tuple[int, int]
    ) -> None:
        parsed = [
            (parse_event_id(eid), eid, f.get(EVENT_FIELD, b""), f.get(DATA_FIELD, b"null"))
            for eid, f in entries
        ]
        # A subscription that arrived during the read with an older position lowered the cursor;
        # leave it lowered so the next read covers that gap.
        if self._cursor.get(key) == sent:
            self._cursor[key] = parsed[-1][0]
        for sub in self._subs.get(key, ()):
            if sub.last_id < sent:
                continue  # this read started after its position; the next one covers it
            batch = [(eid, ev, data) for pid, eid, ev, data in parsed if pid > sub.last_id]
            if batch:
                sub.last_id = parse_event_id(batch[-1][0])
                sub.queue.put_nowait(batch)
