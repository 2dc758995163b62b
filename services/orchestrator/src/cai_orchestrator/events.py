"""Run event logs: the worker's coalescing writer and the replica's multiplexed log tailer.

Each run has an event log, a Redis Stream whose entry ids are the event ids clients resume from.
Events carry their final JSON payload, built once here; nothing downstream re-parses it. What
every token event of a message repeats is stored once per message (frames.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, RedisError

from cai_orchestrator import lua
from cai_orchestrator.frames import TokenEncoder

log = logging.getLogger(__name__)

EVENT_FIELD = b"e"
DATA_FIELD = b"d"
BATCH_FIELD = b"b"  # on a batch's last entry: which batch it ends (lua.APPEND_EVENTS)
_APPEND_SHA = hashlib.sha1(lua.APPEND_EVENTS.encode()).hexdigest()

Batch = list[tuple[bytes, bytes]]


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


async def append_batches(redis: Redis, writes: list[tuple[EventWriter, Batch]]) -> None:
    """Write each writer's batch, all in one pipelined round trip.

    Every batch is one script call that writes it at most once, so a pipeline redis-py resends
    after losing its reply does not duplicate events. A Redis that lost its scripts (restarted,
    flushed) answers NOSCRIPT: the script is loaded and those batches are sent again.

    Raises:
        RedisError: Redis failed or refused a batch.
    """
    pending = [(writer, batch) for writer, batch in writes if batch]
    for _ in range(2):
        if not pending:
            return
        async with redis.pipeline(transaction=False) as pipe:
            for writer, batch in pending:
                writer._add_writes(pipe, batch)
            results = await pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, NoScriptError):
                raise result
        pending = [w for w, r in zip(pending, results, strict=True) if isinstance(r, NoScriptError)]
        if pending:
            await redis.script_load(lua.APPEND_EVENTS)
    if pending:
        raise NoScriptError("the event script could not be loaded")


def _future() -> asyncio.Future[None]:
    """A future whose error counts as seen even when nobody awaits it (token writes don't)."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
    return fut


class EventBatcher:
    """Writes the pending events of every run on a replica, one pipeline at a time.

    With one pipeline per event, each token a model streams costs a Redis round trip of its own
    (redis-py's per-call work, a send and a read); at a hundred streams of 50 tokens/s that is
    most of the orchestrator's CPU. Writers here only say when their events are due: at once for
    a message's first token and every other event, within the coalescing window for the tokens
    that follow. Whatever is due when the previous pipeline returns goes out in the next one, so a
    busy replica writes many runs' events per round trip, and an idle one adds no delay.
    Per run, order is kept: one pipeline is in flight at a time.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._due: dict[EventWriter, float] = {}  # writer -> when its events must be written
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.pipelines = 0  # round trips made (the tests read it)

    def start(self) -> None:
        """Start the write loop."""
        self._task = asyncio.create_task(self._loop(), name="event-batcher")

    async def stop(self) -> None:
        """Stop the loop (writers still waiting get an error)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for writer in list(self._due):
            writer._fail(RuntimeError("event batcher stopped"))
        self._due.clear()

    def schedule(self, writer: EventWriter, at: float) -> None:
        """Write `writer`'s pending events no later than `at` (time.monotonic)."""
        due = self._due.get(writer)
        if due is None or at < due:
            self._due[writer] = at
            self._wake.set()

    def unschedule(self, writer: EventWriter) -> None:
        """Forget a writer's due events (it dropped them)."""
        self._due.pop(writer, None)

    async def _loop(self) -> None:
        while True:
            if not self._due:
                self._wake.clear()
                await self._wake.wait()
                continue
            now = time.monotonic()
            first = min(self._due.values())
            if first > now:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(first - now):
                        await self._wake.wait()
                continue
            ready = [w for w, at in self._due.items() if at <= now]
            for writer in ready:
                del self._due[writer]
            await self._write(ready)

    async def _write(self, writers: list[EventWriter]) -> None:
        batches = [(w, w._take_pending()) for w in writers]
        try:
            await append_batches(self.redis, [(writer, batch) for writer, (batch, _) in batches])
        except asyncio.CancelledError:
            for writer, (_, waiters) in batches:
                writer._fail(RuntimeError("event batcher stopped"), waiters)
            raise
        except Exception as exc:  # Redis down, or a bug: the runs fail, the loop lives on
            if not isinstance(exc, RedisError | OSError):
                log.exception("event batch failed")
            for writer, (_, waiters) in batches:
                writer._fail(exc, waiters)
            return
        self.pipelines += 1
        done = time.monotonic()
        for writer, (_, waiters) in batches:
            writer._last_flush = done
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


class EventWriter:
    """Appends a run's events to its log, coalescing token deltas over a few milliseconds.

    A message's first token, and any token after a quiet period, is written at once (time to first
    token is never delayed); tokens that follow within `coalesce_s` are merged into one event.
    Every other event flushes what is pending first, so order is always preserved. With a
    `batcher`, the writes go through the replica's shared pipeline (see EventBatcher).
    """

    def __init__(
        self,
        redis: Redis,
        key: str,
        coalesce_s: float,
        safety_ttl_s: int,
        batcher: EventBatcher | None = None,
        compact: bool = True,
        *,
        expiry_set: bool = False,
    ) -> None:
        self.redis = redis
        self.batcher = batcher
        self._waiters: list[asyncio.Future[None]] = []
        self._inflight: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.key = key
        self.coalesce_s = coalesce_s
        self.safety_ttl_s = safety_ttl_s
        self._pending: list[tuple[bytes, bytes]] = []
        self._tokens: _TokenRun | None = None
        self._lock = asyncio.Lock()
        self._flush_task: asyncio.Task[None] | None = None
        self._last_flush = 0.0
        self._expiry_set = expiry_set  # the log's safety expiry is set (by whoever wrote first)
        self._last_message_id: str | None = None
        self._frames = TokenEncoder(compact)  # messages stored once per message (frames.py)
        self.tokens_written = 0
        # Names this writer's batches in the log (lua.APPEND_EVENTS): an attempt's writer is new.
        self._writer_id = uuid.uuid4().hex
        self._batches = 0

    def _take_tokens(self) -> None:
        run = self._tokens
        if run is None:
            return
        self._tokens = None
        self._pending.append(self._frames.tokens("".join(run.parts), run.message_id, run.meta))

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
        if self.batcher is not None:
            if self._error is not None:
                raise self._error
            self.batcher.schedule(
                self, time.monotonic() if first else self._last_flush + self.coalesce_s
            )
            return
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

    async def message(self, message: bytes, meta: bytes) -> None:
        """Append a `messages` event other than content-only deltas: `[message, meta]`, both
        already serialised (stored without `meta` when its head has it)."""
        self._take_tokens()
        self._pending.append(self._frames.message(message, meta))
        await self.flush()

    def _take_pending(self) -> tuple[list[tuple[bytes, bytes]], list[asyncio.Future[None]]]:
        """Hand what is pending, and who waits for it, to the batcher."""
        self._take_tokens()
        batch, self._pending = self._pending, []
        self._inflight = _future()
        waiters, self._waiters = [*self._waiters, self._inflight], []
        return batch, waiters

    def _fail(self, exc: BaseException, waiters: list[asyncio.Future[None]] | None = None) -> None:
        """A batched write failed: the run learns it at its next write (events were lost)."""
        self._error = exc
        for waiter in [*(waiters or []), *self._waiters]:
            if not waiter.done():
                waiter.set_exception(exc)
        self._waiters = []

    async def flush(self) -> None:
        """Write what is pending in one pipelined round trip."""
        if self.batcher is not None:
            if self._error is not None:
                raise self._error
            if self._pending or self._tokens is not None:
                waiter = _future()
                self._waiters.append(waiter)
                self.batcher.schedule(self, time.monotonic())
                await waiter
            elif self._inflight is not None and not self._inflight.done():
                await asyncio.shield(self._inflight)  # the last batch is still on its way
            return
        async with self._lock:
            self._take_tokens()
            if not self._pending:
                return
            batch, self._pending = self._pending, []
            await append_batches(self.redis, [(self, batch)])
            self._last_flush = time.monotonic()

    def _add_writes(self, pipe: Pipeline, batch: Batch) -> None:
        """Queue `batch` (not empty) on `pipe` as one call of the append script, with the log's
        safety expiry on its first write."""
        self._batches += 1
        # An orphaned log (its run lost for good) still goes away eventually.
        ttl = 0 if self._expiry_set else self.safety_ttl_s
        args: list[bytes | str | int] = [f"{self._writer_id}:{self._batches}", ttl]
        for event, data in batch:
            args += [event, data]
        pipe.evalsha(_APPEND_SHA, 1, self.key, *args)
        self._expiry_set = True

    async def abandon(self) -> None:
        """The attempt ends unfinished (handed back, lease lost): drop what is not written yet,
        and wait for a write already on its way, so nothing of this attempt lands in the log
        after the next attempt's `retry` event. The retry streams the answer again."""
        if self._flush_task is not None:
            self._flush_task.cancel()
            self._flush_task = None
        self._tokens = None
        self._pending = []
        self._frames = TokenEncoder(self._frames.compact)  # a dropped head was not written
        if self.batcher is not None:
            self.batcher.unschedule(self)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()
        self._waiters = []
        if self._inflight is not None and not self._inflight.done():
            with contextlib.suppress(Exception):
                await asyncio.shield(self._inflight)

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


class EventLogs:
    """Makes the writers of a replica's runs: one coalescing window, one shared batcher."""

    def __init__(
        self,
        redis: Redis,
        coalesce_s: float,
        safety_ttl_s: int,
        log_ttl_s: int,
        batcher: EventBatcher | None = None,
        compact: bool = True,
    ) -> None:
        self.redis = redis
        self.coalesce_s = coalesce_s
        self.safety_ttl_s = safety_ttl_s
        self.log_ttl_s = log_ttl_s
        self.batcher = batcher
        self.compact = compact

    def writer(self, log_key: str, *, expiry_set: bool = False) -> EventWriter:
        """A writer for an executing run's log (batched, coalescing); `expiry_set`: the log's
        safety expiry was set already (its attempt's claim wrote the first events)."""
        return EventWriter(
            self.redis,
            log_key,
            self.coalesce_s,
            self.safety_ttl_s,
            self.batcher,
            self.compact,
            expiry_set=expiry_set,
        )

    async def close_unstarted(self, log_key: str, event: str, data: bytes) -> None:
        """Write the terminal event of a run that never started (cancelled while parked)."""
        writer = EventWriter(self.redis, log_key, 0, self.log_ttl_s)
        await writer.close(event, data, self.log_ttl_s)
