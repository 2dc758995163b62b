"""The harness: runs the planned scenarios against one stack and records what they measured.

Every scenario has a hard time bound (its phases are cancelled when it passes; unfinished
streams count as errors) and the whole run has a budget: a scenario that cannot start in the
time left is skipped and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from cai_bench.loadgen import StreamResult, cai_stream, make_client
from cai_bench.options import Options, shown_path
from cai_bench.phases import Phase, run_phase, summarize
from cai_bench.procmon import ProcMonitor
from cai_bench.scenarios import plan
from cai_bench.stack import PLAIN, PROMPT, StackControl
from cai_bench.verify import verify


def machine_info() -> dict[str, Any]:
    """The machine the numbers come from."""
    cpu_model = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    commit = ""
    dirty = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", "services", "libs", "tools"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        dirty = len(status.splitlines())
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": commit,
        "uncommitted_service_files": dirty,  # in this working tree (see options.source_tree)
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


class Bench:
    """Runs the selected scenarios against one stack and writes the results."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.t_begin = time.monotonic()
        self.run_id = time.strftime("%Y%m%d-%H%M%S")
        self.opts.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.opts.out_dir / f"{self.run_id}.jsonl"
        self.records: list[dict[str, Any]] = []
        self.mon = ProcMonitor({"loadgen": os.getpid()})
        self.stack = StackControl(
            self.mon,
            self.say,
            opts.ttft_ms,
            opts.reply_tokens,
            opts.max_concurrent_runs,
            opts.orchestrator_processes,
            opts.gateway_workers,
        )
        self.stalled = False  # a phase was cut because no stream received anything
        self.left_behind = False  # a Cai phase ended with errors or unfinished streams
        self.assistant_id = PLAIN

    def say(self, msg: str) -> None:
        """Progress on stdout."""
        elapsed = time.monotonic() - self.t_begin
        print(f"[bench {elapsed:6.1f}s] {msg}", flush=True)

    def remaining(self) -> float:
        """Seconds left in the run's budget."""
        return self.opts.budget_s - (time.monotonic() - self.t_begin)

    def phase_timeout(self, phases_left: int = 1) -> float:
        """The hard bound of the next phase."""
        return max(5.0, min(self.opts.phase_cap_s, (self.remaining() - 10) / phases_left))

    def emit(self, record: dict[str, Any]) -> None:
        """Append one JSON line (written at once, so a killed run keeps what it measured)."""
        record = {"run_id": self.run_id, **record}
        self.records.append(record)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")

    async def phase(
        self,
        kind: str,
        concurrency: int,
        runs: int,
        timeout_s: float,
        around: Callable[[], Awaitable[None]] | None = None,
        peer_url: str = "",
    ) -> Phase:
        """`runs` streams, `concurrency` at a time (closed loop), bounded by `timeout_s`."""
        return await run_phase(self, kind, concurrency, runs, timeout_s, around, peer_url)

    def phase_summary(self, p: Phase, expected_tokens: int | None) -> dict[str, Any]:
        """Latency, throughput, errors, CPU and memory of one phase."""
        return summarize(p, expected_tokens, self.stack.cai_names())

    async def verify(self, results: list[StreamResult]) -> dict[str, Any]:
        """Compare every completed stream with the AI message Cai stored on its thread."""
        return await verify(self.stack.gateway_url(), results)

    async def health_problem(self) -> str | None:
        """Why Cai cannot serve one short stream now (None: it can)."""
        if self.stalled:
            self.stalled = False
            return "a phase stalled"
        if self.left_behind:
            self.left_behind = False
            # Runs of failed or cut streams may still be queued or executing: they would load
            # the next scenario.
            return "the last phase ended with errors or unfinished streams"
        dead = self.stack.dead()
        if dead:
            return f"{', '.join(dead)} exited"
        if self.stack.model_is_slow():
            return None  # the model is set to answer slowly; the next scenario resets it
        async with make_client() as client:
            try:
                async with asyncio.timeout(20):
                    r = await cai_stream(
                        client, self.stack.gateway_url(), PROMPT, assistant_id=PLAIN
                    )
            except TimeoutError:
                return "a probe stream did not finish in 20s"
        return None if r.ok else f"a probe stream failed: {r.error[:200]}"

    async def restart(self) -> None:
        """A fresh stack, warmed up."""
        await asyncio.to_thread(self.stack.restart)
        await self.stack.warm_up(5)

    async def run(self) -> list[dict[str, Any]]:
        """Start the stack, run every selected scenario, stop the stack."""
        self.emit(
            {
                "scenario": "meta",
                "machine": machine_info(),
                "options": {
                    k: shown_path(v) if isinstance(v, Path) else v
                    for k, v in vars(self.opts).items()
                },
            }
        )
        steps = plan(self.opts)
        self.say(f"{len(steps)} scenarios: {', '.join(s.name for s in steps)}")
        await asyncio.to_thread(self.stack.start)
        try:
            await self.stack.warm_up(5)
            for step in steps:
                await self.run_step(step.name, step.run, step.needs_s)
        finally:
            self.say("stopping the stack")
            await asyncio.to_thread(self.stack.down)
        self.emit(
            {
                "scenario": "end",
                "total_s": round(time.monotonic() - self.t_begin, 1),
                "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            }
        )
        return self.records

    async def run_step(
        self, name: str, run: Callable[[Bench], Awaitable[dict[str, Any]]], needs_s: float
    ) -> None:
        """One scenario: skipped without budget, recorded even if it fails, then a health check."""
        if self.remaining() < needs_s:
            self.say(f"{name}: skipped, {self.remaining():.0f}s left of the budget")
            self.emit({"scenario": name.split("-")[0], "name": name, "skipped": "budget"})
            return
        t0 = time.monotonic()
        try:
            record = await run(self)
        except Exception as exc:  # a broken scenario must not lose the others
            self.say(f"{name}: failed: {exc!r}")
            record = {"scenario": name.split("-")[0], "name": name, "failed": repr(exc)}
        record["elapsed_s"] = round(time.monotonic() - t0, 1)
        problem = await self.health_problem()
        if problem:
            self.say(f"after {name}: {problem}; restarting the stack")
            record["stack_restarted_after"] = problem
            await self.restart()
        self.emit(record)
        if "skipped" in record:
            self.say(f"{name}: skipped: {record['skipped']}")
