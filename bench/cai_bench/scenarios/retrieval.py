"""retrieval-c10-d20: the stream scenario with the retriever up, if the agent calls it."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from cai_bench.loadgen import cai_stream, make_client
from cai_bench.scenarios import stream
from cai_bench.stack import PLAIN, PROMPT, RAG

if TYPE_CHECKING:
    from cai_bench.harness import Bench

_SEARCHES = re.compile(r'^cai_retrieval_duration_seconds_count\{operation="search"\} (\S+)', re.M)


async def run(
    bench: Bench, name: str, concurrency: int, delay_ms: float, runs: int
) -> dict[str, Any]:
    """The stream scenario with the retriever up, if the agent calls it."""
    base = {"scenario": "stream", "name": name, "retrieval": True}
    try:
        import cai_retriever  # noqa: F401
    except ImportError:
        return {**base, "skipped": "cai_retriever is not installed"}
    control = bench.stack
    bench.say("starting the retriever (loads the embedding model)")
    t0 = time.monotonic()
    try:
        await control.start_retriever(max(30.0, min(180.0, bench.remaining() - 120)))
    except (RuntimeError, TimeoutError) as exc:
        return {**base, "skipped": f"retriever did not start: {str(exc)[:300]}"}
    bench.say(f"retriever up in {time.monotonic() - t0:.1f}s; ingesting docs/")
    metrics_url = f"http://127.0.0.1:{control.s.config.retriever_metrics_port}/metrics"
    try:
        docs = Path("docs") if Path("docs").is_dir() else Path(__file__).parent.parent
        cmd = [
            sys.executable, "-m", "cai_retriever.cli", "ingest", str(docs), "--quiet",
            "--addr", f"127.0.0.1:{control.s.config.retriever_port}",
        ]  # fmt: skip
        ingest = await asyncio.to_thread(
            subprocess.run, cmd, capture_output=True, text=True, timeout=150, check=False
        )
        if ingest.returncode != 0:
            return {**base, "skipped": f"ingest failed: {ingest.stderr[-300:]}"}
        bench.assistant_id = RAG
        before = await searches(metrics_url)
        async with make_client() as client:
            probe = await cai_stream(
                client, control.gateway_url(), PROMPT, assistant_id=bench.assistant_id
            )
        after = await searches(metrics_url)
        if not probe.ok:
            return {**base, "skipped": f"probe run failed: {probe.error}"}
        if before is None or after is None or after <= before:
            return {
                **base,
                "skipped": (
                    "the agent made no Search during a probe run "
                    f"(retriever search count {before} → {after})"
                ),
            }
        record = await stream.run(
            bench, name, concurrency, delay_ms, runs, {"retrieval": True, "max_runs": runs}
        )
        record["searches"] = (await searches(metrics_url) or 0) - after
        return record
    finally:
        bench.assistant_id = PLAIN
        control.stop_retriever()


async def searches(metrics_url: str) -> float | None:
    """The retriever's count of Search calls (None: its metrics could not be read)."""
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            text = (await client.get(metrics_url)).text
    except httpx.HTTPError:
        return None
    m = _SEARCHES.search(text)
    return float(m.group(1)) if m else None
