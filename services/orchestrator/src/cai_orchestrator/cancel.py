"""The cancel protocol, in one place: a flag on the run, then a message to whoever executes it.

The flag (`<run>:cancel`, the action) outlives the message: a run that starts later, or a worker
whose listener was reconnecting when the message went out, still finds it (workers read it when a
run starts and at every lease renewal). The message (pub/sub on one channel) reaches the
executing replica within milliseconds. The replica that takes the request tries its own runs
first and publishes only when the run is elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from cai_orchestrator import keys
from cai_orchestrator.records import RunRef

log = logging.getLogger(__name__)
FLAG_TTL_S = 86400

# A replica's canceller: stops a run executing here; False if the run is not here.
LocalCanceller = Callable[[str, str], bool]


class CancelBus:
    """Asks runs to stop, and delivers those requests to this replica's runs."""

    def __init__(self, redis: Redis, pubsub_redis: Redis | None = None) -> None:
        self.redis = redis
        self.pubsub_redis = pubsub_redis or redis
        self.local: LocalCanceller = lambda run_id, action: False

    async def request(self, ref: RunRef, action: str) -> None:
        """Ask the run to stop with `action` (interrupt | rollback), wherever it executes."""
        await self.redis.set(ref.keys.cancel, action, ex=FLAG_TTL_S)
        if not self.local(ref.run_id, action):
            await self.redis.publish(keys.CANCEL_CHANNEL, f"{ref.run_id} {action}")

    async def requested(self, ref: RunRef) -> str | None:
        """The cancel action asked for the run, if any."""
        action = await self.redis.get(ref.keys.cancel)
        return action.decode() if action else None

    async def listen(self) -> None:
        """Deliver published requests to `local` until cancelled; reconnects on Redis errors."""
        while True:
            try:
                pubsub = self.pubsub_redis.pubsub()
                await pubsub.subscribe(keys.CANCEL_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") != "message":
                        continue
                    run_id, _, action = message["data"].decode().partition(" ")
                    self.local(run_id, action or "interrupt")
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("cancel listener lost Redis; retrying", extra={"error": str(exc)})
                await asyncio.sleep(1.0)
