"""profile-c{N}-d{MS}: the Cai phase of stream-c{N}-d{MS} again, under py-spy."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from cai_bench import profiling
from cai_bench.options import shown_path

if TYPE_CHECKING:
    from cai_bench.harness import Bench


async def run(
    bench: Bench, name: str, concurrency: int, runs: int, delay_ms: float = 0.0
) -> dict[str, Any]:
    """The Cai phase of stream-c{N}-d{D} again, with py-spy on the gateway and orchestrator."""
    o = bench.opts
    if not profiling.can_ptrace() or profiling.py_spy_binary() is None:
        return {"scenario": "profile", "name": name, "skipped": "py-spy or ptrace unavailable"}
    await bench.stack.set_llm(o.ttft_ms, delay_ms, o.reply_tokens)
    suffix = "" if delay_ms == 0 else f"-d{delay_ms:g}"
    out_dir = o.out_dir / f"{bench.run_id}-profile{suffix}"
    failed_attempts: list[dict[str, Any]] = []
    for attempt in (1, 2):
        procs = bench.stack.s.procs
        targets = {n: procs[n].pid for n in ("gateway", "orchestrator")}
        recs = [profiling.start_recording(n, pid, out_dir) for n, pid in targets.items()]
        await asyncio.sleep(1.5)  # attached
        bench.say(f"{name}: Cai, {runs} streams, {concurrency} at a time, under py-spy")

        async def stop(recs: list[profiling.Recording | None] = recs) -> None:
            for rec in recs:
                if rec is not None:
                    await asyncio.to_thread(rec.stop)

        cai = await bench.phase("cai", concurrency, runs, bench.phase_timeout(1), around=stop)
        summary = bench.phase_summary(cai, o.reply_tokens)
        if not summary["errors"] or attempt == 2 or bench.remaining() < 60:
            break
        # A profile of a wedged service says nothing about the hot path: note it, restart
        # and profile once more.
        bench.say(f"{name}: {summary['errors']} errors ({summary['error_samples'][:1]}); again")
        failed_attempts.append({k: summary[k] for k in ("errors", "error_samples", "runs")})
        bench.left_behind = False
        await bench.restart()
    per_proc = _analyse(recs, summary.get("cpu_us_per_token", {}))
    bench.say(f"{name}: profiles in {out_dir}")
    return {
        "scenario": "profile",
        "name": name,
        "concurrency": concurrency,
        "token_delay_ms": delay_ms,
        "reply_tokens": o.reply_tokens,
        "cai": summary,
        "failed_attempts": failed_attempts,
        "profiles": per_proc,
    }


def _analyse(
    recs: list[profiling.Recording | None], cpu_us_per_token: dict[str, float]
) -> dict[str, Any]:
    """What dominates each recorded process, in shares and in CPU-µs per token."""
    per_proc: dict[str, Any] = {}
    for rec in recs:
        if rec is None or not rec.output.exists():
            continue
        analysis = profiling.analyse(rec.output, process=rec.name)
        us = cpu_us_per_token.get(rec.name)
        if us is not None:
            for section in ("self", "inclusive", "packages", "threads", "activities"):
                for row in analysis[section]:  # type: ignore[attr-defined]
                    row["cpu_us_per_token"] = round(row["share"] * us, 2)
        kept = profiling.compress(rec.output)
        per_proc[rec.name] = {
            "cpu_us_per_token": us,
            "collapsed_stacks": shown_path(kept),
            **analysis,
        }
    return per_proc
