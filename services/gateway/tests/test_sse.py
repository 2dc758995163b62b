"""SSE framing and the /wait body's heartbeats."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from cai_gateway.sse import RECONNECT, frame, with_heartbeats


def test_frame_is_one_sse_message_with_the_bytes_untouched() -> None:
    data = b'[{"content":"caf\xc3\xa9"},{}]'
    assert frame("1-0", "messages", data) == b"id: 1-0\nevent: messages\ndata: " + data + b"\n\n"
    assert RECONNECT.startswith(b"retry: 250\nevent: reconnect\n")


async def test_heartbeats_until_the_work_is_done_then_its_body() -> None:
    async def work() -> bytes:
        await asyncio.sleep(0.35)
        return b'{"done":true}'

    chunks = [c async for c in with_heartbeats(work(), 0.1)]
    assert chunks[-1] == b'{"done":true}'
    assert 2 <= chunks.count(b"\n") <= 4 and set(chunks[:-1]) == {b"\n"}
    # Leading whitespace keeps the body one JSON document.
    assert orjson.loads(b"".join(chunks)) == {"done": True}


async def endless_work(cancelled: asyncio.Event) -> bytes:
    """Work that only ends when cancelled, and says so."""
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        cancelled.set()
        raise
    return b""


async def test_a_failure_after_the_headers_propagates_and_stops_the_work() -> None:
    cancelled = asyncio.Event()
    body = with_heartbeats(endless_work(cancelled), 0.01)
    assert await body.__anext__() == b"\n"  # the headers and a heartbeat are out
    with pytest.raises(RuntimeError, match="stream broke"):
        await body.athrow(RuntimeError("stream broke"))
    await asyncio.wait_for(cancelled.wait(), 1)  # the work was cancelled, not left running


async def test_a_failing_work_fails_the_body_and_leaves_no_task_behind() -> None:
    async def work() -> bytes:
        await asyncio.sleep(0.05)
        raise RuntimeError("run failed")

    before = asyncio.all_tasks()
    sent: list[bytes] = []
    with pytest.raises(RuntimeError, match="run failed"):
        async for chunk in with_heartbeats(work(), 0.01):
            sent.append(chunk)
    assert sent and set(sent) == {b"\n"}  # it failed after the headers, with heartbeats out
    assert asyncio.all_tasks() <= before


async def test_closing_the_body_cancels_the_work() -> None:
    cancelled = asyncio.Event()
    body = with_heartbeats(endless_work(cancelled), 0.01)
    assert await body.__anext__() == b"\n"
    await body.aclose()  # the client went away
    await asyncio.wait_for(cancelled.wait(), 1)
