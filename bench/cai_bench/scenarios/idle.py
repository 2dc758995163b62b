"""idle-{N}: N SSE streams held open by one gateway, on runs waiting for a first token."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import httpx

from cai_bench.loadgen import StreamResult, cai_stream, make_client
from cai_bench.phases import MB
from cai_bench.procmon import delta
from cai_bench.stack import PLAIN, PROMPT
from cai_bench.stats import summary_ms
from cai_common.runs import CANCELLED

if TYPE_CHECKING:
    from cai_bench.harness import Bench


async def run(bench: Bench, name: str, n: int) -> dict[str, Any]:
    """n SSE streams held open by one gateway, on runs waiting for a first token."""
    o = bench.opts
    mon = bench.mon
    url = bench.stack.gateway_url()
    bound = bench.phase_timeout(1)
    deadline = time.monotonic() + bound
    # The model takes 10 minutes to answer: each stream is open, its run executing, idle.
    await bench.stack.set_llm(600_000.0, 0.0, o.reply_tokens)
    await asyncio.sleep(1.0)
    rss0 = mon.rss()
    cpu0 = mon.cpu()
    clients = [make_client() for _ in range(n)]  # one connection each (see make_client)
    results = [StreamResult("cai") for _ in range(n)]
    opened = [asyncio.Event() for _ in range(n)]
    tasks: list[asyncio.Task[StreamResult]] = []
    t0 = time.perf_counter()
    gate = asyncio.Semaphore(50)  # open 50 at a time: a ramp, not a thundering herd

    async def open_one(i: int) -> None:
        async with gate:
            task = asyncio.create_task(
                cai_stream(clients[i], url, PROMPT, results[i], opened[i], PLAIN)
            )
            tasks.append(task)
            waiter = asyncio.create_task(opened[i].wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(1.0, deadline - time.monotonic() - 20)):
            await asyncio.gather(*(open_one(i) for i in range(n)))
    t_open = time.perf_counter() - t0
    # Let the workers take what they have slots for (metadata events stop arriving). Runs
    # beyond MAX_CONCURRENT_RUNS wait in the queue. The whole hold stays well inside the
    # orchestrator's model timeout (60 s), after which waiting runs would end in errors.
    last, quiet_since = -1, time.monotonic()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(1.0, min(10.0, deadline - time.monotonic() - 15))):
            while time.monotonic() - quiet_since < 2.0:
                now_started = sum(r.started for r in results)
                if now_started != last:
                    last, quiet_since = now_started, time.monotonic()
                await asyncio.sleep(0.2)
    held = sum(1 for i in range(n) if opened[i].is_set() and not tasks[i].done())
    started = sum(r.started for r in results)
    rss1 = mon.rss()
    bench.say(f"{name}: {held} streams open ({started} runs executing); holding {o.idle_hold_s}s")
    cpu_h0 = mon.cpu()
    await asyncio.sleep(max(0.0, min(o.idle_hold_s, deadline - time.monotonic() - 10)))
    cpu_h1 = mon.cpu()
    hold_s = o.idle_hold_s
    rss2 = mon.rss()
    # Release: cancel every run; each stream must end with a `cancelled` event.
    t_c = time.perf_counter()
    sem = asyncio.Semaphore(50)
    control = [make_client() for _ in range(50)]
    sent = [0.0] * n  # when each cancel request went out

    async def cancel(i: int, r: StreamResult) -> None:
        if not r.run_id:
            return
        async with sem:
            sent[i] = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                await control[i % len(control)].post(
                    f"{url}/threads/{r.thread_id}/runs/{r.run_id}/cancel"
                )

    await asyncio.gather(*(cancel(i, r) for i, r in enumerate(results)))
    _, pending = await asyncio.wait(tasks, timeout=max(5.0, deadline - time.monotonic()))
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    t_cancelled = time.perf_counter() - t_c
    cpu1 = mon.cpu()
    await asyncio.gather(*(c.aclose() for c in clients + control))
    ended = Counter(r.terminal or "none" for r in results)
    per_conn = {k: round((rss1[k] - rss0[k]) / max(1, held) / 1024, 1) for k in rss1 if k in rss0}
    hold_cpu = delta(cpu_h1, cpu_h0)
    # docs/reliability.md promises a cancel lands within ~100 ms: request sent → the client has
    # the `cancelled` event, for runs a worker was executing.
    cancel_latency = [
        r.t_end - sent[i]
        for i, r in enumerate(results)
        if r.started and r.terminal == CANCELLED and sent[i]
    ]
    not_cancelled = [
        r.error or f"terminal {r.terminal!r}" for r in results if r.terminal != CANCELLED
    ]
    record = {
        "scenario": "idle",
        "name": name,
        "connections": n,
        "held": held,
        "runs_executing": started,  # runs a worker had taken (metadata event) at the hold
        "open_s": round(t_open, 2),
        "rss_before_mb": {k: round(v / MB, 1) for k, v in rss0.items()},
        "rss_held_mb": {k: round(v / MB, 1) for k, v in rss1.items()},
        "rss_after_hold_mb": {k: round(v / MB, 1) for k, v in rss2.items()},
        "kib_per_connection": per_conn,
        "hold_s": hold_s,
        "hold_cpu_s": hold_cpu,
        "hold_cpu_ms_per_connection_per_min": {
            k: round(v / max(1, held) / hold_s * 60 * 1000, 3) for k, v in hold_cpu.items()
        },
        "cpu_s_total": delta(cpu1, cpu0),
        "cancel_all_s": round(t_cancelled, 2),
        "cancel_latency_ms": summary_ms(cancel_latency),
        "ended_with": dict(ended),
        "errors": len(not_cancelled),
        "error_samples": [e for e, _ in Counter(not_cancelled).most_common(3)],
    }
    bench.say(
        f"{name}: gateway {per_conn.get('gateway')} KiB/connection, orchestrator "
        f"{per_conn.get('orchestrator')} KiB/connection; ended {dict(ended)}"
    )
    return record
