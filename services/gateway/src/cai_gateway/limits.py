"""Per-key limits in Redis, shared by every gateway replica: a token bucket for request rates
and a set of leased slots for concurrent streams.

Both are single Lua scripts (atomic, one round trip) timed by Redis's own clock, so replicas with
skewed clocks agree. When Redis cannot be reached the limiter fails open by default (requests go
through, a warning is logged once per outage, Redis is skipped for a short back-off) or, with
`LIMITS_FAIL_OPEN=false`, closed (503). It never turns into a 500.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from redis.exceptions import RedisError

from cai_common.redis_client import resilient_redis
from cai_common.settings import redact_url

log = logging.getLogger(__name__)

LIMITED = Counter(
    "cai_gateway_limited_total",
    "Requests refused by a limit (rate: token bucket empty; streams: concurrency cap).",
    ["limit"],
)
LIMITER_UNAVAILABLE = Counter(
    "cai_gateway_limiter_unavailable_total",
    "Limit checks that could not reach Redis (let through when failing open).",
)

# Token bucket: KEYS[1] = bucket hash; ARGV = rate per second, burst, cost, '1' to take the cost
# even past empty (a debt: work already done is paid for by the requests that follow).
# Returns {allowed (0|1), retry_after_ms, tokens_left}.
TOKEN_BUCKET = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local debit = ARGV[4] == '1'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1])
local ts = tonumber(b[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 1000)
local allowed = 0
local retry_ms = 0
if tokens >= cost or debit then
  tokens = tokens - cost
  allowed = 1
else
  retry_ms = math.ceil((cost - tokens) * 1000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
return {allowed, retry_ms, math.max(0, math.floor(tokens))}
"""

# Stream slots: KEYS[1] = sorted set of slot ids scored by expiry (ms); ARGV = cap, slot id, ttl.
# Expired slots (a gateway died holding them) are dropped first. Returns 1 if acquired.
ACQUIRE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]) * 2)
return 1
"""

# Extend the lease of live slots: KEYS[1] = sorted set; ARGV = ttl, slot ids...
REFRESH_SLOTS = """
local t = redis.call('TIME')
local expiry = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return 1
"""


@dataclass(frozen=True)
class Decision:
    """The outcome of a rate-limit check."""

    allowed: bool
    retry_after_s: int = 0
    remaining: int | None = None


class LimiterUnavailable(Exception):
    """Redis cannot be reached and the limiter fails closed."""


@dataclass
class StreamSlot:
    """One leased stream slot; `release()` is idempotent. Unbacked slots (limits off, or Redis
    down while failing open) release nothing."""

    limiter: Limiter | None
    key_id: str
    slot_id: str
    released: bool = field(default=False)
    # Set once a response owns the slot (it releases it when the stream ends).
    handed_over: bool = field(default=False)

    async def release(self) -> None:
        """Give the slot back."""
        if self.released:
            return
        self.released = True
        if self.limiter is not None:
            await self.limiter.release_slot(self)

    def wrap(self, body: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """`body`, releasing the slot when it ends, fails or the client goes away."""
        self.handed_over = True
        if self.limiter is None:
            return body  # nothing to give back: no extra hop on the hot path
        return self._release_after(body)

    async def _release_after(self, body: AsyncIterator[Any]) -> AsyncIterator[Any]:
        try:
            async for item in body:
                yield item
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.release())


UNBACKED = ""


class Limiter:
    """Rate limits and stream caps for the keys of every replica, in one Redis."""

    def __init__(
        self,
        redis_url: str,
        *,
        timeout_s: float = 0.25,
        retry_s: float = 2.0,
        fail_open: bool = True,
        slot_ttl_s: float = 30.0,
        prefix: str = "cai:gw",
    ) -> None:
        self.redis_url = redis_url
        self.redis = resilient_redis(
            redis_url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
        )
        self.fail_open = fail_open
        self.retry_s = retry_s
        self.slot_ttl_ms = max(1000, int(slot_ttl_s * 1000))
        self.prefix = prefix
        self._bucket = self.redis.register_script(TOKEN_BUCKET)
        self._acquire = self.redis.register_script(ACQUIRE_SLOT)
        self._refresh = self.redis.register_script(REFRESH_SLOTS)
        self._down_until = 0.0
        self._live: dict[str, set[str]] = {}
        self._refresher: asyncio.Task[None] | None = None

    # -- Redis availability ------------------------------------------------------------------

    def _skip_redis(self) -> bool:
        return time.monotonic() < self._down_until

    def _redis_failed(self, exc: Exception) -> None:
        LIMITER_UNAVAILABLE.inc()
        if not self._skip_redis():
            log.warning(
                "limits: Redis unreachable; %s for %.0fs",
                "letting requests through" if self.fail_open else "refusing requests",
                self.retry_s,
                extra={"redis": redact_url(self.redis_url), "error": str(exc)},
            )
        self._down_until = time.monotonic() + self.retry_s

    def _unavailable(self) -> None:
        if not self.fail_open:
            raise LimiterUnavailable

    # -- rate ---------------------------------------------------------------------------------

    async def check_rate(
        self, key_id: str, rate: float, burst: int, cost: int = 1, *, debit: bool = False
    ) -> Decision:
        """Take `cost` tokens from the key's bucket; with `debit`, even past empty (always
        allowed: the requests that follow wait until the debt is refilled).

        Raises:
            LimiterUnavailable: Redis is unreachable and the limiter fails closed.
        """
        if rate <= 0 or cost <= 0:
            return Decision(True)
        if self._skip_redis():
            self._unavailable()
            return Decision(True)
        try:
            allowed, retry_ms, left = await self._bucket(
                keys=[f"{self.prefix}:rate:{key_id}"],
                args=[rate, max(1, burst), cost, "1" if debit else "0"],
            )
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
            self._unavailable()
            return Decision(True)
        if int(allowed):
            return Decision(True, remaining=int(left))
        LIMITED.labels("rate").inc()
        return Decision(False, retry_after_s=max(1, math.ceil(int(retry_ms) / 1000)), remaining=0)

    # -- concurrent streams --------------------------------------------------------------------

    def _slots_key(self, key_id: str) -> str:
        return f"{self.prefix}:streams:{key_id}"

    async def acquire_slot(self, key_id: str, cap: int) -> StreamSlot | None:
        """Lease a stream slot for the key; None when the key is at its cap.

        Raises:
            LimiterUnavailable: Redis is unreachable and the limiter fails closed.
        """
        if cap <= 0:
            return StreamSlot(None, key_id, UNBACKED)
        if self._skip_redis():
            self._unavailable()
            return StreamSlot(None, key_id, UNBACKED)
        slot_id = uuid.uuid4().hex
        try:
            got = await self._acquire(
                keys=[self._slots_key(key_id)], args=[cap, slot_id, self.slot_ttl_ms]
            )
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)
            self._unavailable()
            return StreamSlot(None, key_id, UNBACKED)
        if not int(got):
            LIMITED.labels("streams").inc()
            return None
        self._live.setdefault(key_id, set()).add(slot_id)
        self._ensure_refresher()
        return StreamSlot(self, key_id, slot_id)

    async def release_slot(self, slot: StreamSlot) -> None:
        """Remove a slot (a failure only delays its reuse until the lease expires)."""
        live = self._live.get(slot.key_id)
        if live is not None:
            live.discard(slot.slot_id)
            if not live:
                del self._live[slot.key_id]
        try:
            await self.redis.zrem(self._slots_key(slot.key_id), slot.slot_id)
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)

    def _ensure_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.create_task(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        """Extend the leases of this replica's open streams, a third of a lease at a time."""
        while self._live:
            await asyncio.sleep(self.slot_ttl_ms / 3000)
            await self.refresh_slots()

    async def refresh_slots(self) -> None:
        """Extend every live slot's lease now (one pipelined round trip)."""
        if not self._live:
            return
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key_id, slots in list(self._live.items()):
                    await self._refresh(
                        keys=[self._slots_key(key_id)],
                        args=[self.slot_ttl_ms, *slots],
                        client=pipe,
                    )
                await pipe.execute()
        except (RedisError, OSError) as exc:
            self._redis_failed(exc)

    async def open_streams(self, key_id: str) -> int:
        """Slots the key holds now, across replicas (for tests and diagnostics)."""
        return int(await self.redis.zcard(self._slots_key(key_id)))

    async def close(self) -> None:
        """Stop refreshing and give back every slot this replica holds."""
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        with contextlib.suppress(RedisError, OSError):
            for key_id, slots in list(self._live.items()):
                await self.redis.zrem(self._slots_key(key_id), *slots)
        self._live.clear()
        await self.redis.aclose()


# Requests that may read many records pay for them: one token per RECORDS_PER_TOKEN records,
# where cancelling a run counts as CANCEL_RECORDS records (docs/api.md, "Limits").
RECORDS_PER_TOKEN = 100
CANCEL_RECORDS = 10


def work_cost(records: int) -> int:
    """Tokens a request that reads `records` records costs (at least the one every request
    costs)."""
    return max(1, math.ceil(records / RECORDS_PER_TOKEN))


def message_text_length(content: Any) -> int:
    """Characters of text in a message's content (a string or a list of content parts)."""
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += len(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                total += len(part["text"])
        return total
    return 0


def message_limit_violation(messages: Any, max_messages: int, max_chars: int) -> str | None:
    """Why `messages` breaks the limits (too many, or one too long), or None.

    A single message (a string or an object, which LangGraph accepts in place of a list) is
    measured as a list of one.
    """
    if isinstance(messages, str | dict):
        messages = [messages]
    if not isinstance(messages, list):
        return None
    if len(messages) > max_messages:
        return f"too many messages: {len(messages)} > {max_messages}"
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else message
        length = message_text_length(content)
        if length > max_chars:
            return f"messages[{i}] is too long: {length} > {max_chars} characters"
    return None
