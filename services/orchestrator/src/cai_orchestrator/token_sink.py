"""Content deltas past LangGraph's stream: the model client writes them into the run's log.

Through LangChain and LangGraph every streamed delta becomes a chunk object, a callback, an item
on LangGraph's stream queue and a wake-up of the task that reads it: most of the orchestrator's
CPU per token when tokens arrive one by one (docs/performance.md). While a run executes,
`TOKEN_SINK` holds its `TokenSink`; `StreamingChatOpenAI` hands the plain content deltas of a
model call that LangGraph would stream straight to it, and LangGraph carries only the rest
(tool-call chunks, the finish and usage chunks, the final message). The sink writes them exactly
as the runner writes deltas it reads from LangGraph: same message id, same metadata (LangGraph's
own for that model call), same coalescing, same metrics.

Order: a delta must not overtake anything LangGraph queued before it (the node's status event,
a chunk the same call sent through LangGraph). Before its first direct delta, and again after
anything it sent through LangGraph, the model call puts a `Barrier` on LangGraph's stream; the
sink holds deltas until the runner has taken that barrier off the stream, when everything ahead
of it has reached the writer.
"""

from __future__ import annotations

import time
from collections import deque
from contextvars import ContextVar
from typing import Any

from cai_orchestrator import metrics
from cai_orchestrator.events import EventWriter, dumps


class Barrier:
    """A mark on LangGraph's stream: the deltas after it wait until the runner reaches it."""

    __slots__ = ()


class TokenSink:
    """One attempt's content deltas, from the model client (direct) and from the runner."""

    def __init__(self, writer: EventWriter) -> None:
        self.writer = writer
        self.direct = 0  # deltas that came past LangGraph (the tests read it)
        self._meta: Any = None
        self._meta_bytes = b"{}"
        self._barriers: deque[Barrier] = deque()  # on the stream, not yet taken off it
        # Deltas waiting, each with the barrier it waits for (None: only for those before it).
        self._held: deque[tuple[Barrier | None, str, str, bytes]] = deque()
        self._releasing = False
        self._generating_since: float | None = None
        self._last_token_at: float | None = None

    def meta_bytes(self, meta: Any) -> bytes:
        """A model call's metadata, serialised once (the writer coalesces by its identity)."""
        if meta is not self._meta:
            self._meta, self._meta_bytes = meta, dumps(meta)
        return self._meta_bytes

    def generating(self) -> None:
        """The model was called: its first token is due (the TTFT metric)."""
        self._generating_since = time.monotonic()

    def replied(self) -> None:
        """Something of the model's reply arrived."""
        if self._generating_since is not None:
            metrics.TTFT.labels("model").observe(time.monotonic() - self._generating_since)
            self._generating_since = None

    def barrier(self) -> Barrier:
        """A new barrier for the model call to put on LangGraph's stream; deltas wait for it."""
        barrier = Barrier()
        self._barriers.append(barrier)
        return barrier

    async def passed(self, barrier: Barrier) -> None:
        """The runner took `barrier` off the stream: write what waited for it, in order."""
        if not self._barriers or self._barriers[0] is not barrier:
            return  # not this sink's (or already passed)
        self._barriers.popleft()
        if self._releasing:
            return  # the release under way goes on past it
        self._releasing = True
        try:
            while self._held and self._held[0][0] not in self._barriers:
                _, message_id, text, meta = self._held.popleft()
                await self.writer.token(message_id, text, meta)
        finally:
            self._releasing = False

    async def model_delta(self, message_id: str, text: str, meta: bytes) -> None:
        """A delta from the model client, past LangGraph."""
        self.direct += 1
        self._observe()
        if self._barriers or self._releasing:
            waits_for = self._barriers[-1] if self._barriers else None
            self._held.append((waits_for, message_id, text, meta))
            return
        await self.writer.token(message_id, text, meta)

    async def stream_delta(self, message_id: str, text: str, meta: bytes) -> None:
        """A delta the runner read from LangGraph's stream (a model call not taken past it).
        It was queued before every barrier still on the stream, so it goes first."""
        self._observe()
        await self.writer.token(message_id, text, meta)

    def _observe(self) -> None:
        now = time.monotonic()
        self.replied()
        if self._last_token_at is not None:
            metrics.INTER_TOKEN.observe(now - self._last_token_at)
        self._last_token_at = now


TOKEN_SINK: ContextVar[TokenSink | None] = ContextVar("cai_token_sink", default=None)
