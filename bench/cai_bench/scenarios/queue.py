"""queue-r{N}: background runs created as fast as 20 clients can, until every one has finished.

The runs' statuses are read through the gateway (GET /threads/{thread_id}/runs/{run_id}), the
way a client polls them. A request costs Cai far more than the Redis read it replaces, so the
watcher asks about few runs (see PollOrder): about one request per run, plus one per pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx

from cai_bench.loadgen import make_client, run_body
from cai_bench.phases import MB
from cai_bench.procmon import delta
from cai_bench.stack import PLAIN, PROMPT
from cai_common.runs import SUCCESS, TERMINAL_STATUSES

if TYPE_CHECKING:
    from cai_bench.harness import Bench

CREATORS = 20
POLL_S = 0.05  # the pause after a round in which no run had ended
MAX_POLL_WIDTH = 8  # runs asked about at once


class PollOrder:
    """Which open runs to ask about next.

    Runs end roughly in creation order, so rounds walk the open runs oldest first: one run at a
    time, twice as many after a round in which all had ended (up to MAX_POLL_WIDTH), back to one
    and a pause after a round in which none had. Runs found still open are stepped over until
    the walk wraps around, so one slow run does not hide the others.
    """

    def __init__(self) -> None:
        self.width = 1
        self.cursor = 0  # index into the open runs, in creation order

    def batch(self, open_runs: list[str]) -> list[str]:
        """The runs to ask about this round."""
        if self.cursor >= len(open_runs):
            self.cursor = 0
        return open_runs[self.cursor : self.cursor + self.width]

    def update(self, asked: int, ended: int) -> bool:
        """Note how many of the asked runs had ended; True: pause before the next round."""
        self.cursor += asked - ended  # past the ones still open (the ended ones left the list)
        if ended == 0:
            self.width = 1
            return True
        if ended == asked:
            self.width = min(MAX_POLL_WIDTH, self.width * 2)
        return False


class FinishWatch:
    """Learns through the gateway when each created run reaches a terminal status."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.created: dict[str, str] = {}  # run id → thread id, in creation order
        self.finished: dict[str, tuple[float, str]] = {}  # run id → (perf_counter, status)
        self.clients = [make_client() for _ in range(MAX_POLL_WIDTH)]

    def open_runs(self) -> list[str]:
        """Created runs not yet seen finished, in creation order."""
        return [r for r in self.created if r not in self.finished]

    async def status(self, client: httpx.AsyncClient, run_id: str) -> str:
        """The run's status ("" when it could not be read: asked again later)."""
        try:
            resp = await client.get(f"{self.url}/threads/{self.created[run_id]}/runs/{run_id}")
            resp.raise_for_status()
            return str(resp.json()["status"])
        except (httpx.HTTPError, ValueError, KeyError):
            return ""

    async def follow(self) -> None:
        """Poll until cancelled."""
        order = PollOrder()
        while True:
            batch = order.batch(self.open_runs())
            if not batch:
                await asyncio.sleep(POLL_S)
                continue
            statuses = await asyncio.gather(
                *(self.status(c, r) for c, r in zip(self.clients, batch, strict=False))
            )
            now = time.perf_counter()
            ended = 0
            for run_id, status in zip(batch, statuses, strict=True):
                if status in TERMINAL_STATUSES:
                    self.finished[run_id] = (now, status)
                    ended += 1
            if order.update(len(batch), ended):
                await asyncio.sleep(POLL_S)

    async def aclose(self) -> None:
        """Close the polling clients."""
        await asyncio.gather(*(c.aclose() for c in self.clients))


async def run(bench: Bench, name: str, replicas: int, n: int) -> dict[str, Any]:
    """Background runs created as fast as 20 clients can, until every one has finished."""
    o = bench.opts
    mon = bench.mon
    await bench.stack.ensure_replicas(replicas)
    await bench.stack.set_llm(0.0, 0.0, o.queue_reply_tokens)
    bound = bench.phase_timeout(1)
    url = bench.stack.gateway_url()
    creators = [make_client() for _ in range(CREATORS)]
    watch = FinishWatch(url)
    created, finished = watch.created, watch.finished
    errors: list[str] = []
    todo = iter(range(n))
    t0 = time.perf_counter()
    cpu0 = mon.cpu()
    mon.start_peaks()

    async def creator(client: httpx.AsyncClient) -> None:
        for _ in todo:
            thread_id = str(uuid.uuid4())
            try:
                resp = await client.post(
                    f"{url}/threads/{thread_id}/runs", json=run_body(PROMPT, PLAIN)
                )
                resp.raise_for_status()
                created[resp.json()["run_id"]] = thread_id
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                errors.append(f"create: {type(exc).__name__}: {exc}"[:200])

    watcher = asyncio.create_task(watch.follow())
    timed_out = False
    try:
        async with asyncio.timeout(bound):
            await asyncio.gather(*(creator(c) for c in creators))
            t_created = time.perf_counter() - t0
            while len(finished) < len(created):
                await asyncio.sleep(0.05)
    except TimeoutError:
        timed_out = True
        t_created = time.perf_counter() - t0
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    t_done = (max((t for t, _ in finished.values()), default=t0)) - t0
    cpu1 = mon.cpu()
    peaks = mon.stop_peaks()
    await asyncio.gather(*(c.aclose() for c in creators), watch.aclose())
    statuses = Counter(s for _, s in finished.values())
    cpu = delta(cpu1, cpu0)
    cai_cpu = sum(v for k, v in cpu.items() if k in bench.stack.cai_names())
    record = {
        "scenario": "queue",
        "name": name,
        "orchestrator_replicas": replicas,
        "runs": n,
        "reply_tokens": o.queue_reply_tokens,
        "created": len(created),
        "completed": len(finished),
        "statuses": dict(statuses),
        "timed_out": timed_out,
        "created_per_s": round(len(created) / t_created, 1) if t_created else None,
        "completed_per_s": round(len(finished) / t_done, 1) if t_done > 0 else None,
        "create_s": round(t_created, 2),
        "all_done_s": round(t_done, 2),
        "cpu_s": cpu,
        "cai_cpu_ms_per_run": round(cai_cpu / max(1, len(finished)) * 1000, 2),
        "peak_rss_mb": {k: round(v / MB, 1) for k, v in peaks.items()},
        "errors": len(errors) + (len(created) - statuses.get(SUCCESS, 0)),
        "error_samples": errors[:3],
    }
    bench.say(
        f"{name}: created {record['created_per_s']} runs/s, completed "
        f"{record['completed_per_s']} runs/s, statuses {dict(statuses)}"
    )
    return record
