"""One phase: a batch of streams (Cai or the floor) under closed-loop load, and what it cost."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
import psutil

from cai_bench import loadgen
from cai_bench.loadgen import StreamResult, cai_stream, floor_stream, make_client, peer_stream
from cai_bench.peers import ASSISTANT as PEER_ASSISTANT
from cai_bench.procmon import delta
from cai_bench.stack import PROMPT
from cai_bench.stats import summary_ms

if TYPE_CHECKING:
    from cai_bench.harness import Bench

SETTLE_S = 0.5  # after the last stream ends, Cai still acks and checkpoints: keep measuring
MB = 1024 * 1024


@dataclass
class Phase:
    """One batch of streams (Cai or the floor) and what it cost."""

    kind: str
    concurrency: int
    runs: int
    results: list[StreamResult]
    wall_s: float
    cpu_s: dict[str, float]
    peak_rss: dict[str, int]
    others_cpu_s: float
    timed_out: bool
    crashed: list[str]
    started: int


def _busy(t: Any) -> float:
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0))


async def run_phase(
    bench: Bench,
    kind: str,
    concurrency: int,
    runs: int,
    timeout_s: float,
    around: Callable[[], Awaitable[None]] | None = None,
    peer_url: str = "",
) -> Phase:
    """`runs` streams, `concurrency` at a time (closed loop), bounded by `timeout_s`.

    `around` runs after the measured window, before the clients close (e.g. stop a profiler).
    Kind "peer" streams from `peer_url` (cai_bench.peers).
    """
    urls = {"cai": bench.stack.gateway_url(), "floor": bench.stack.s.llm_sim_url, "peer": peer_url}
    url = urls[kind]
    results: list[StreamResult] = []
    clients = [make_client() for _ in range(concurrency)]
    started = 0
    target = bench.opts.phase_target_s
    mon = bench.mon

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal started
        # Closed loop: start streams until `runs` or until the target duration has passed
        # (but always one full round of `concurrency`); streams in flight then finish.
        while started < runs and (started < concurrency or time.perf_counter() - t0 < target):
            started += 1
            if kind == "cai":
                results.append(
                    await cai_stream(client, url, PROMPT, assistant_id=bench.assistant_id)
                )
            elif kind == "peer":
                results.append(await peer_stream(client, url, PROMPT, PEER_ASSISTANT))
            else:
                results.append(await floor_stream(client, url, PROMPT))

    mon.start_peaks()
    sys0 = psutil.cpu_times()
    cpu0 = mon.cpu()
    t0 = loadgen.PROGRESS[0] = time.perf_counter()
    tasks = [asyncio.create_task(worker(c)) for c in clients]
    done, pending = await _wait(bench, tasks, timeout_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    t1 = time.perf_counter()
    await asyncio.sleep(SETTLE_S)
    cpu1 = mon.cpu()
    sys1 = psutil.cpu_times()
    peaks = mon.stop_peaks()
    if around is not None:
        await around()
    await asyncio.gather(*(c.aclose() for c in clients))
    crashed = [repr(t.exception()) for t in done if not t.cancelled() and t.exception()]
    for r in results:
        r.finish()
    if kind == "cai" and (pending or crashed or any(not r.ok for r in results)):
        bench.left_behind = True
    cpu = delta(cpu1, cpu0)
    others = _busy(sys1) - _busy(sys0) - sum(cpu.values())
    return Phase(
        kind,
        concurrency,
        runs,
        results,
        t1 - t0,
        cpu,
        peaks,
        round(others, 3),
        bool(pending),
        crashed,
        started,
    )


async def _wait(
    bench: Bench, tasks: list[asyncio.Task[Any]], timeout_s: float
) -> tuple[set[asyncio.Task[Any]], set[asyncio.Task[Any]]]:
    """Wait for `tasks` up to `timeout_s`, or until no stream has received a byte for
    `stall_s` (a wedged service should cost 30 s of the budget, not the whole bound)."""
    stall_s = bench.opts.stall_s
    deadline = time.monotonic() + timeout_s
    pending: set[asyncio.Task[Any]] = set(tasks)
    done: set[asyncio.Task[Any]] = set()
    while pending and time.monotonic() < deadline:
        finished, pending = await asyncio.wait(
            pending, timeout=min(1.0, max(0.0, deadline - time.monotonic()))
        )
        done |= finished
        if pending and time.perf_counter() - loadgen.PROGRESS[0] > stall_s:
            bench.say(f"no stream received anything for {stall_s:g}s: stalled")
            bench.stalled = True
            break
    return done, pending


def summarize(p: Phase, expected_tokens: int | None, cai_names: list[str]) -> dict[str, Any]:
    """Latency, throughput, errors, CPU and memory of one phase.

    `cai_names` are the processes whose CPU counts as Cai's (see StackControl.cai_names).
    """
    ok = [r for r in p.results if r.ok]
    tokens = sum(r.tokens for r in p.results)
    errors = [r.error or f"terminal {r.terminal!r}" for r in p.results if not r.ok]
    unfinished = p.started - len(p.results)
    out: dict[str, Any] = {
        "runs": len(p.results),
        "completed": len(ok),
        "errors": len(errors) + unfinished,
        "unfinished": unfinished,
        "timed_out": p.timed_out,
        "error_samples": [e for e, _ in Counter(errors + p.crashed).most_common(3)],
        "ttft_ms": summary_ms([r.ttft for r in ok if r.ttft is not None]),
        "tokens": tokens,
        "events": sum(r.events for r in p.results),
        "runs_retried": sum(1 for r in p.results if r.retries),
        "wall_s": round(p.wall_s, 3),
        "tokens_per_s": round(tokens / p.wall_s, 1) if p.wall_s > 0 else None,
        "cpu_s": p.cpu_s,
        "others_cpu_s": p.others_cpu_s,
        "peak_rss_mb": {k: round(v / MB, 1) for k, v in p.peak_rss.items()},
    }
    if expected_tokens is not None:
        out["wrong_length"] = sum(1 for r in ok if r.tokens != expected_tokens)
    if tokens:
        out["cpu_us_per_token"] = {k: round(v / tokens * 1e6, 1) for k, v in p.cpu_s.items()}
    if p.kind in ("cai", "peer"):  # (for a peer, `cai_names` are the peer's processes)
        cai = sum(v for k, v in p.cpu_s.items() if k in cai_names)
        out["cai_cpu_s"] = round(cai, 3)
        if tokens:
            out["cai_cpu_s_per_1k_tokens"] = round(cai / tokens * 1000, 4)
            out["cai_cpu_us_per_token"] = round(cai / tokens * 1e6, 1)
            out["tokens_per_event"] = round(tokens / max(1, out["events"]), 2)
    else:
        model = p.cpu_s.get("llm-sim", 0.0)
        if tokens:
            out["llm_sim_cpu_us_per_token"] = round(model / tokens * 1e6, 1)
    return out
