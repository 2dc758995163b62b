"""procs-c{N}-d{D}: Cai with 1, then 2 orchestrator processes (and again), under the same load.

The floor once, then Cai's phase at each process count in turn, `procs_repeat` times, back to
back on the same stack (the orchestrator, and with BENCH_PROCS_GATEWAY=same the gateway, are
restarted with the new count in between). Paired ratios (each round's N-process tokens/s over
the same round's 1-process tokens/s) show how much of the change is noise.
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING, Any

from cai_bench.stats import ratio

if TYPE_CHECKING:
    from cai_bench.harness import Bench


async def run(
    bench: Bench, name: str, concurrency: int, delay_ms: float, runs: int
) -> dict[str, Any]:
    """The floor, then Cai at each process count, alternated."""
    o = bench.opts
    counts = o.procs_counts
    phases_left = 1 + len(counts) * o.procs_repeat
    await bench.stack.set_llm(o.ttft_ms, delay_ms, o.reply_tokens)
    bench.say(f"{name}: floor, {runs} streams, {concurrency} at a time")
    floor = bench.phase_summary(
        await bench.phase("floor", concurrency, runs, bench.phase_timeout(phases_left)),
        o.reply_tokens,
    )
    rounds: list[dict[str, Any]] = []
    try:
        for repeat in range(o.procs_repeat):
            for n in counts:
                phases_left -= 1
                workers = n if o.procs_gateway == "same" else int(o.procs_gateway)
                await bench.stack.set_processes(n, workers)
                bench.say(f"{name}: Cai with {n} orchestrator process(es), {workers} gateway")
                phase = await bench.phase(
                    "cai", concurrency, runs, bench.phase_timeout(phases_left + 1)
                )
                summary = bench.phase_summary(phase, o.reply_tokens)
                rounds.append(
                    {
                        "round": repeat,
                        "orchestrator_processes": n,
                        "gateway_workers": workers,
                        "cai": summary,
                        "integrity": await bench.verify(phase.results),
                    }
                )
                bench.say(
                    f"{name}: {n} process(es): {summary['tokens_per_s']} tok/s, "
                    f"{summary.get('cai_cpu_us_per_token')} CPU-µs/token, "
                    f"errors {summary['errors']}, other load {summary['others_cpu_s']} s"
                )
                bench.left_behind = False  # (the next phase restarts the services anyway)
    finally:
        await bench.stack.set_processes(o.orchestrator_processes, o.gateway_workers)
    by_count: dict[int, list[float]] = {}
    for r in rounds:
        by_count.setdefault(r["orchestrator_processes"], []).append(r["cai"]["tokens_per_s"] or 0)
    base = counts[0]
    paired = {
        n: [
            ratio(r["cai"]["tokens_per_s"], b["cai"]["tokens_per_s"])
            for r, b in zip(
                [r for r in rounds if r["orchestrator_processes"] == n],
                [r for r in rounds if r["orchestrator_processes"] == base],
                strict=False,
            )
        ]
        for n in counts[1:]
    }
    record = {
        "scenario": "procs",
        "name": name,
        "concurrency": concurrency,
        "token_delay_ms": delay_ms,
        "reply_tokens": o.reply_tokens,
        "floor": floor,
        "rounds": rounds,
        "tokens_per_s_mean": {n: round(statistics.mean(v), 1) for n, v in by_count.items()},
        "paired_ratio_vs_first": paired,
        "vs_floor": {
            n: ratio(statistics.mean(v), floor["tokens_per_s"]) for n, v in by_count.items()
        },
    }
    bench.say(f"{name}: tok/s by process count {record['tokens_per_s_mean']}, paired {paired}")
    return record
