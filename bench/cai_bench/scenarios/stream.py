"""stream-c{N}-d{MS}: the floor (llm-sim direct), then Cai, under the same closed-loop load."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from cai_bench.stats import diff, ratio

if TYPE_CHECKING:
    from cai_bench.harness import Bench


async def run(
    bench: Bench,
    name: str,
    concurrency: int,
    delay_ms: float,
    runs: int,
    extra: dict[str, Any],
    reply_tokens: int | None = None,
) -> dict[str, Any]:
    """Floor, then Cai, under the same closed-loop load."""
    o = bench.opts
    tokens = reply_tokens or o.reply_tokens
    await bench.stack.set_llm(o.ttft_ms, delay_ms, tokens)
    bench.say(f"{name}: floor, {runs} streams, {concurrency} at a time")
    floor = await bench.phase("floor", concurrency, runs, bench.phase_timeout(2))
    await asyncio.sleep(0.5)
    bench.say(f"{name}: Cai, {runs} streams, {concurrency} at a time")
    cai = await bench.phase("cai", concurrency, runs, bench.phase_timeout(1))
    integrity = await bench.verify(cai.results)
    f = bench.phase_summary(floor, tokens)
    c = bench.phase_summary(cai, tokens)
    record = {
        "scenario": "stream",
        "name": name,
        "concurrency": concurrency,
        "token_delay_ms": delay_ms,
        "ttft_ms_model": o.ttft_ms,
        "reply_tokens": tokens,
        **extra,
        "floor": f,
        "cai": c,
        "vs_floor": {
            "ttft_overhead_ms": {
                q: diff(c["ttft_ms"][q], f["ttft_ms"][q]) for q in ("p50", "p95", "p99")
            },
            "ttft_ratio_p50": ratio(c["ttft_ms"]["p50"], f["ttft_ms"]["p50"]),
            "tokens_per_s_ratio": ratio(c["tokens_per_s"], f["tokens_per_s"]),
        },
        "integrity": integrity,
    }
    bench.say(
        f"{name}: TTFT p50 {c['ttft_ms']['p50']} ms (floor {f['ttft_ms']['p50']}), "
        f"{c['tokens_per_s']} tok/s (floor {f['tokens_per_s']}), "
        f"Cai {c.get('cai_cpu_us_per_token')} CPU-µs/token, errors {c['errors']}, "
        f"mismatches {integrity['text_mismatch']}"
    )
    return record
