"""The asyncio.wait_for replacement keeps cancellations and timeouts."""

from __future__ import annotations

import asyncio
import sys

import pytest

from cai_common import aio


async def test_a_cancel_that_lands_as_the_awaited_future_completes_is_kept() -> None:
    fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    waiting = asyncio.create_task(aio.wait_for(fut, 10))
    await asyncio.sleep(0)  # the task now waits on fut
    fut.set_result(1)  # completes ...
    waiting.cancel()  # ... in the same loop iteration as the cancel (Python 3.11 lost it)
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_timeouts_results_and_zero_timeout() -> None:
    async def slow() -> int:
        await asyncio.sleep(5)
        return 1

    async def quick() -> int:
        return 2

    with pytest.raises(TimeoutError):
        await aio.wait_for(slow(), 0.01)
    assert await aio.wait_for(quick(), 1) == 2
    assert await aio.wait_for(quick(), None) == 2
    with pytest.raises(TimeoutError):
        await aio.wait_for(slow(), 0)
    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    done.set_result(3)
    assert await aio.wait_for(done, 0) == 3


def test_install_replaces_wait_for_where_libraries_look_it_up() -> None:
    aio.install()
    if sys.version_info < (3, 12):
        assert asyncio.wait_for is aio.wait_for
        assert asyncio.tasks.wait_for is aio.wait_for
