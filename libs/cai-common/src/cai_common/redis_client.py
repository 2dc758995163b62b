"""The one way Cai services connect to Redis."""

from __future__ import annotations

from typing import Any

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError


def resilient_redis(
    url: str, max_connections: int = 200, pool_timeout_s: float = 10.0, **kwargs: Any
) -> Redis:
    """An asyncio Redis client that survives a Redis restart and load spikes.

    After a restart every pooled connection is dead, and redis-py's default is not to retry, so
    the first command on each stale connection would fail. This client reconnects and retries a
    command on connection errors and timeouts (3 times, 20–500 ms backoff); a Redis that stays
    down still fails fast, and callers back off and report not-ready. Its pool blocks for up to
    `pool_timeout_s` when all `max_connections` are busy instead of failing at once (redis-py's
    default pool raises MaxConnectionsError at 100). Blocking commands (XREAD BLOCK, pub/sub)
    need `socket_timeout` above their block time: redis-py's default read timeout is 5 s.
    """
    options: dict[str, Any] = {
        "socket_connect_timeout": 2,
        "health_check_interval": 15,
        "retry": Retry(ExponentialBackoff(cap=0.5, base=0.02), 3),
        "retry_on_error": [RedisConnectionError, RedisTimeoutError, ConnectionResetError],
        **kwargs,
    }
    pool = BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=pool_timeout_s, **options
    )
    return Redis(connection_pool=pool)
