"""asyncio fixes every Cai process applies before anything else is imported.

Python 3.11's `asyncio.wait_for` can swallow a cancellation: when the task waiting in it is
cancelled in the same loop iteration as the awaited future completes, it returns the result and
the cancellation is lost (CPython gh-86296, fixed in 3.12 by re-implementing `wait_for` on top
of `asyncio.timeout`). Libraries on Cai's hot path call it: redis-py wraps every command it sends
in it when a socket timeout is set, so a run cancelled while it writes an event went on
generating to the end. It also costs a task per call. `install()` puts 3.12's version in place.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")


async def wait_for(fut: Awaitable[T], timeout: float | None) -> T:
    """`asyncio.wait_for` as Python 3.12 has it: never loses a cancellation."""
    if timeout is not None and timeout <= 0:
        task = asyncio.ensure_future(fut)
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.wait({task})
        try:
            return task.result()
        except asyncio.CancelledError as exc:
            raise TimeoutError from exc
    async with asyncio.timeout(timeout):
        return await fut


def install() -> None:
    """Replace `asyncio.wait_for` on Python < 3.12 (idempotent; a no-op on 3.12+)."""
    if sys.version_info >= (3, 12):
        return
    patched: Any = wait_for
    asyncio.wait_for = patched
    asyncio.tasks.wait_for = patched
