"""Leases: which replica executes a run. A key with a TTL, renewed by heartbeat.

A replica that dies stops renewing; once the lease lapses another replica may take the run. A
holder whose renewal fails stops the run at once, so no run executes on two replicas. A worker
takes a run's lease as part of starting the attempt (`RunStore.claim_run`, one script with the
run's record) and gives it up with the terminal event (`RunStore.finish_run`); `acquire` and
`release` here are for everything else. Each renewal also reads the run's cancel flag, so a
heartbeat is one round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cai_orchestrator import lua
from cai_orchestrator.records import RunRef

log = logging.getLogger(__name__)


class Leases:
    """The leases this replica (`owner`) takes, each living `seconds` without renewal."""

    def __init__(self, redis: Redis, owner: str, seconds: float) -> None:
        self.redis = redis
        self.owner = owner
        self.seconds = seconds
        self.ttl_ms = int(seconds * 1000)
        self._renew = redis.register_script(lua.RENEW_LEASE)
        self._release = redis.register_script(lua.RELEASE_LEASE)

    async def acquire(self, ref: RunRef) -> bool:
        """Take the run's lease; False if another replica holds it."""
        return bool(await self.redis.set(ref.keys.lease, self.owner, nx=True, px=self.ttl_ms))

    async def renew(self, ref: RunRef) -> tuple[bool, str | None]:
        """Extend our lease: whether it is still ours (False: it lapsed, someone took it), and
        the cancel action asked for the run, if any."""
        rk = ref.keys
        renewed, action = await self._renew(
            keys=[rk.lease, rk.cancel], args=[self.owner, self.ttl_ms]
        )
        return bool(renewed), action.decode() if action else None

    async def release(self, ref: RunRef) -> None:
        """Give the lease up (only if it is still ours)."""
        await self._release(keys=[ref.keys.lease], args=[self.owner])

    async def held(self, ref: RunRef) -> bool:
        """Whether any replica holds the run's lease."""
        return bool(await self.redis.exists(ref.keys.lease))

    async def keep(
        self,
        ref: RunRef,
        on_lost: Callable[[], object],
        on_cancel: Callable[[str], object] | None = None,
    ) -> None:
        """Renew the lease every third of its life until cancelled; `on_lost` when it is gone,
        `on_cancel(action)` at each renewal that finds the run asked to stop.

        Redis errors are retried until the lease would have lapsed; a renewal that finds the
        lease gone (or another holder's) calls `on_lost` and returns.
        """
        while True:
            await asyncio.sleep(self.seconds / 3)
            try:
                renewed, action = await self.renew(ref)
            except (RedisError, OSError):
                continue
            if not renewed:
                log.error("lease lost; stopping the run so it never runs twice")
                on_lost()
                return
            if action and on_cancel is not None:
                on_cancel(action)
