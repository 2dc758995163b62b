"""Integrity: every completed stream against the AI message Cai stored on its thread."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import httpx

from cai_bench.loadgen import StreamResult, make_client, stored_reply


@dataclass
class Integrity:
    """The tally of streamed replies compared with stored ones."""

    checked: int = 0
    missing: int = 0
    mismatch: int = 0
    lost: int = 0
    repeated: int = 0
    ids_repeated: int = 0
    examples: list[str] = field(default_factory=list)

    def unavailable(self, thread_id: str, exc: Exception) -> None:
        """The stored state of a thread could not be read."""
        self.missing += 1
        if len(self.examples) < 3:
            self.examples.append(f"state of {thread_id}: {exc}")

    def compare(self, r: StreamResult, stored_id: str, stored_text: str) -> None:
        """One stream against the stored message (text, and its id when the stream had one)."""
        self.checked += 1
        if stored_text == r.text and (not r.message_id or stored_id == r.message_id):
            return
        self.mismatch += 1
        stored_n, streamed_n = len(stored_text.split()), len(r.text.split())
        self.lost += max(0, stored_n - streamed_n)
        self.repeated += max(0, streamed_n - stored_n)
        if len(self.examples) < 3:
            self.examples.append(
                f"{r.thread_id}: streamed {r.text[:60]!r} stored {stored_text[:60]!r}"
            )

    def record(self) -> dict[str, Any]:
        """The `integrity` part of a stream scenario's record."""
        return {
            "streams_checked": self.checked,
            "state_unavailable": self.missing,
            "text_mismatch": self.mismatch,
            "tokens_lost": self.lost,
            "tokens_repeated": self.repeated,
            "event_ids_repeated_or_reordered": self.ids_repeated,
            "examples": self.examples,
        }


async def verify(gateway_url: str, results: list[StreamResult]) -> dict[str, Any]:
    """Compare every completed stream with the AI message Cai stored on its thread."""
    tally = Integrity(ids_repeated=sum(r.ids_repeated for r in results))
    sem = asyncio.Semaphore(20)
    clients = [make_client() for _ in range(20)]

    async def check(i: int, r: StreamResult) -> None:
        async with sem:
            client = clients[i % len(clients)]
            try:
                message_id, text = await stored_reply(client, gateway_url, r.thread_id)
            except (httpx.HTTPError, ValueError) as exc:
                tally.unavailable(r.thread_id, exc)
                return
        tally.compare(r, message_id, text)

    await asyncio.gather(*(check(i, r) for i, r in enumerate(results) if r.ok))
    await asyncio.gather(*(c.aclose() for c in clients))
    return tally.record()
