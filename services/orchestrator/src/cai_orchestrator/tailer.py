"""The read side of run event logs: one multiplexed XREAD per replica feeds every subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cai_orchestrator import keys
from cai_orchestrator.events import DATA_FIELD, EVENT_FIELD, parse_event_id

log = logging.getLogger(__name__)

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

    async def subscribe(self, log_key: str, after: tuple[int, int]) -> Subscription:
        """Watch a run's log (its key) from after `after`."""
        key = log_key.encode()
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
