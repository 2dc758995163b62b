"""The read side of run event logs: one multiplexed XREAD per replica feeds every subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from cai_common.runs import EVENT_ID_PART_MAX, parse_event_id
from cai_orchestrator import keys
from cai_orchestrator.events import DATA_FIELD, EVENT_FIELD
from cai_orchestrator.frames import ATTEMPT_STARTS, HEAD, Head, LogReader, parse_head

log = logging.getLogger(__name__)

Entry = tuple[bytes, bytes, bytes]  # (event id, event name, data)
HEAD_SCAN = 100  # entries read per step of the search for a resumed read's head


class SubscriptionFailed(Exception):
    """Redis refused to read this run's log: its subscription ends, every other one goes on."""


@dataclass(eq=False)
class Subscription:
    """One client's view of one run's log: entries after `last_id`, in order, each once."""

    key: bytes
    last_id: tuple[int, int]
    queue: asyncio.Queue[list[Entry] | SubscriptionFailed] = field(default_factory=asyncio.Queue)

    async def get(self) -> list[Entry]:
        """The next batch of entries, waiting for it.

        Raises:
            SubscriptionFailed: the log cannot be read; the subscription has ended.
        """
        item = await self.queue.get()
        if isinstance(item, SubscriptionFailed):
            raise item
        return item


class LogTailer:
    """Follows every log this replica's clients watch with one blocking XREAD.

    One Redis connection serves any number of streams, instead of one blocked connection per
    client. Subscribing pokes a per-replica "wake" stream that is part of every XREAD, so a new
    subscription is picked up at once rather than after the block times out.

    Redis refuses a whole XREAD when one of its streams cannot be read (an id out of range, a key
    that is not a stream), so one bad subscription could stall every stream of the replica.
    Positions are checked on `subscribe`; if Redis still refuses the shared read, each log is read
    alone and the subscriptions of the logs it refuses fail (`SubscriptionFailed`), while the
    others go on. `healthy` is set while reads succeed (the replica's health reports it).

    A log stores what a message's token events repeat once, in the message's head entry
    (frames.py); each log's `LogReader` rebuilds the events from the heads it has read, and a
    subscription that starts mid-log first looks up the head its first entries need.
    """

    def __init__(self, redis: Redis, poke: Redis, replica_id: str, block_ms: int = 5000) -> None:
        self.redis = redis  # a dedicated connection: XREAD blocks it
        self.poke = poke
        self.wake_key = keys.wake(replica_id).encode()
        self.block_ms = block_ms
        self._subs: dict[bytes, set[Subscription]] = {}
        self._cursor: dict[bytes, tuple[int, int]] = {}
        self._readers: dict[bytes, LogReader] = {}
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
        """Watch a run's log (its key) from after `after`.

        Raises:
            ValueError: `after` is not a stream entry id (each part 0 to 2**64 - 1).
        """
        if not all(0 <= part <= EVENT_ID_PART_MAX for part in after):
            raise ValueError(f"not an event id: {after[0]}-{after[1]}")
        key = log_key.encode()
        head = await self._head_at(key, after) if after > (0, 0) else None
        sub = Subscription(key, after)
        self._subs.setdefault(key, set()).add(sub)
        reader = self._readers.setdefault(key, LogReader())
        if head is not None:
            reader.add_head(*head)
        cursor = self._cursor.get(key)
        if cursor is None or after < cursor:
            self._cursor[key] = after
        await self.poke.xadd(self.wake_key, {b"w": b"1"}, maxlen=100, approximate=True)
        return sub

    async def _head_at(
        self, key: bytes, at: tuple[int, int]
    ) -> tuple[tuple[int, int], Head] | None:
        """The head entry a read that starts after `at` needs: the last one at or before it in
        its attempt (found reading backwards, 100 entries at a time)."""
        end = f"{at[0]}-{at[1]}".encode()
        while True:
            try:
                entries = await self.poke.xrevrange(key, max=end, min=b"-", count=HEAD_SCAN)
            except ResponseError:
                return None  # not a stream: the shared read fails this subscription
            for eid, f in entries:
                event = f.get(EVENT_FIELD, b"")
                if event == HEAD:
                    return parse_event_id(eid), parse_head(f.get(DATA_FIELD, b""))[1]
                if event in ATTEMPT_STARTS:
                    return None  # the entries after `at` have their heads after it
            if len(entries) < HEAD_SCAN:
                return None
            end = b"(" + entries[-1][0]

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop watching."""
        subs = self._subs.get(sub.key)
        if subs is None:
            return
        subs.discard(sub)
        if not subs:
            del self._subs[sub.key]
            self._cursor.pop(sub.key, None)
            self._readers.pop(sub.key, None)

    async def _loop(self) -> None:
        backoff = 0.1
        while True:
            streams: dict[bytes, bytes] = {self.wake_key: self._wake_cursor}
            sent = dict(self._cursor)
            for key, (ms, seq) in sent.items():
                streams[key] = f"{ms}-{seq}".encode()
            # Until a read succeeds, do not block: health learns at once that reads work again.
            block = self.block_ms if self.healthy.is_set() else 1
            try:
                reply = await self.redis.xread(streams, count=1000, block=block)
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if isinstance(exc, ResponseError) and await self._fail_unreadable(streams):
                    continue  # the offending subscriptions are gone; the others read on
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

    async def _fail_unreadable(self, streams: dict[bytes, bytes]) -> bool:
        """Redis refused the shared read: read each log alone and fail the subscriptions of those
        it refuses. False when no log is to blame (Redis refuses the wake stream too, so the read
        as a whole is failing): nobody's subscription is ended for that."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, cursor in streams.items():
                    pipe.xread({key: cursor}, count=1)  # no BLOCK: answers at once
                replies = await pipe.execute(raise_on_error=False)
        except (RedisError, OSError):
            return False
        refused = {
            key: reply
            for key, reply in zip(streams, replies, strict=True)
            if isinstance(reply, ResponseError)
        }
        if not refused or self.wake_key in refused:
            return False
        for key, error in refused.items():
            log.warning(
                "a run's event log cannot be read; failing its streams",
                extra={"log": key.decode(errors="replace"), "error": str(error)},
            )
            failure = SubscriptionFailed("The run's event log cannot be read")
            for sub in self._subs.pop(key, ()):
                sub.queue.put_nowait(failure)
            self._cursor.pop(key, None)
            self._readers.pop(key, None)
        return True

    def _dispatch(
        self, key: bytes, entries: list[tuple[bytes, dict[bytes, bytes]]], sent: tuple[int, int]
    ) -> None:
        reader = self._readers.get(key) or LogReader()
        parsed = []
        for eid, f in entries:
            pid = parse_event_id(eid)
            event = reader.decode(pid, f.get(EVENT_FIELD, b""), f.get(DATA_FIELD, b"null"))
            if event is not None:
                parsed.append((pid, eid, *event))
        # A subscription that arrived during the read with an older position lowered the cursor;
        # leave it lowered so the next read covers that gap.
        if self._cursor.get(key) == sent:
            self._cursor[key] = parse_event_id(entries[-1][0])
        for sub in self._subs.get(key, ()):
            if sub.last_id < sent:
                continue  # this read started after its position; the next one covers it
            batch = [(eid, ev, data) for pid, eid, ev, data in parsed if pid > sub.last_id]
            if batch:
                sub.last_id = parse_event_id(batch[-1][0])
                sub.queue.put_nowait(batch)
