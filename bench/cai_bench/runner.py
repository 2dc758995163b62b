"""The scenarios: Cai and the floor under the same load in the same run, on one local stack.

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
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from redis.asyncio import Redis

from cai_bench import loadgen, profiling
from cai_bench.loadgen import (
    StreamResult,
    cai_stream,
    floor_stream,
    make_client,
    run_body,
    stored_reply,
)
from cai_bench.procmon import ProcMonitor, delta
from cai_bench.stats import diff, ratio, summary_ms
from cai_devstack.stack import Stack, StackConfig

PROMPT = "How do I resume a stream after my client disconnects?"
SETTLE_S = 0.5  # after the last stream ends, Cai still acks and checkpoints: keep measuring
TERMINAL_RUN_STATUSES = {b"success", b"error", b"timeout", b"interrupted"}
MB = 1024 * 1024
# The gateway's per-key limits (20 requests/s, 32 concurrent streams by default) would turn a
# capacity benchmark into a test of the limiter: the request rate limit is off and the stream cap
# is far above the load, so slots are still leased and released in Redis on every stream.
SERVICE_ENV = {"RATE_LIMIT_PER_SECOND": "0", "MAX_CONCURRENT_STREAMS": "100000"}
# The orchestrator runs with these assistants: one that only calls the model (the scenarios
# "without retrieval"; Cai's default assistant retrieves, and with no retriever running every
# run would pay for a failed search) and the same one retrieving from the default collection.
BENCH_ASSISTANTS = """\
assistants:
  - id: chat
    name: Chat
  - id: bench-plain
    name: Model only (no retrieval, no tools)
    retrieval:
      enabled: false
  - id: bench-rag
    name: Retrieval from the default collection, no tools
    retrieval:
      enabled: true
"""
PLAIN = "bench-plain"
RAG = "bench-rag"


@dataclass
class Options:
    """What to run (from the environment or the command line; see __main__)."""

    out_dir: Path
    quick: bool = False
    scenarios: list[str] = field(default_factory=list)  # empty: every default scenario
    concurrency: list[int] = field(default_factory=lambda: [1, 10, 100, 500])
    delays_ms: list[float] = field(default_factory=lambda: [0.0, 20.0])
    reply_tokens: int = 100
    ttft_ms: float = 0.0
    runs_scale: float = 1.0
    idle_connections: int = 1000
    idle_hold_s: float = 12.0
    queue_runs: int = 300
    queue_reply_tokens: int = 10
    long_reply_tokens: int = 1000
    profile_concurrency: int = 100
    retrieval: str = "auto"  # auto | on | off
    budget_s: float = 840.0
    phase_cap_s: float = 120.0
    phase_target_s: float = 10.0  # stop starting new streams after this (one round at least)
    max_concurrent_runs: int | None = None  # None: the orchestrator's default
    source_tree: str = ""  # BENCH_TREE: where the services' code came from (empty: here)
    stall_s: float = 30.0  # a phase in which no stream receives anything for this long is cut


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


def runs_for(concurrency: int, delay_ms: float, scale: float) -> int:
    """Most streams per phase (the phase also stops starting streams after phase_target_s)."""
    if concurrency <= 1:
        base = 100 if delay_ms == 0 else 20
    elif concurrency <= 10:
        rounds = 10 if delay_ms == 0 else 5
        base = concurrency * rounds
    elif concurrency <= 100:
        base = concurrency * (3 if delay_ms == 0 else 2)
    else:
        base = concurrency
    return max(concurrency, int(base * scale))


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


def _busy(t: Any) -> float:
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0))


class Bench:
    """Runs the selected scenarios against one stack and writes the results."""

    def __init__(self, opts: Options) -> None:
        self.opts = opts
        self.t_begin = time.monotonic()
        self.run_id = time.strftime("%Y%m%d-%H%M%S")
        self.opts.out_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.opts.out_dir / f"{self.run_id}.jsonl"
        self.records: list[dict[str, Any]] = []
        self.stack: Stack | None = None
        self.mon = ProcMonitor({"loadgen": os.getpid()})
        self.llm_args: tuple[float, float, int] | None = None
        self.stalled = False
        self.left_behind = False
        self.assistant_id = PLAIN

    # -- plumbing ---------------------------------------------------------------------------

    def say(self, msg: str) -> None:
        """Progress on stdout."""
        elapsed = time.monotonic() - self.t_begin
        print(f"[bench {elapsed:6.1f}s] {msg}", flush=True)

    def remaining(self) -> float:
        """Seconds left in the run's budget."""
        return self.opts.budget_s - (time.monotonic() - self.t_begin)

    def emit(self, record: dict[str, Any]) -> None:
        """Append one JSON line (written at once, so a killed run keeps what it measured)."""
        record = {"run_id": self.run_id, **record}
        self.records.append(record)
        with self.jsonl.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def selected(self, name: str, default: bool = True) -> bool:
        """Whether BENCH_SCENARIOS picks `name` (prefix match: "stream" picks every stream-*)."""
        if not self.opts.scenarios:
            return default
        return any(name == s or name.startswith(s) for s in self.opts.scenarios)

    @property
    def s(self) -> Stack:
        """The running stack."""
        assert self.stack is not None
        return self.stack

    def cai_names(self) -> list[str]:
        """Processes that are Cai (not the model, not the load generator)."""
        return [
            n
            for n in self.s.procs
            if n == "redis" or n.startswith(("gateway", "orchestrator", "retriever"))
        ]

    def _watch_stack(self) -> None:
        for name, proc in self.s.procs.items():
            if name not in self.mon.procs or self.mon.procs[name].pid != proc.pid:
                self.mon.add(name, proc.pid)
        for name in list(self.mon.procs):
            if name != "loadgen" and name not in self.s.procs:
                self.mon.remove(name)

    def start_stack(self) -> None:
        """Redis 8, llm-sim, one orchestrator and one gateway on free ports (no retriever)."""
        self.llm_args = (self.opts.ttft_ms, 0.0, self.opts.reply_tokens)
        t0 = time.monotonic()
        for attempt in range(1, 4):
            run_dir = Path(tempfile.mkdtemp(prefix="cai-bench-"))
            assistants = run_dir / "bench-assistants.yaml"
            assistants.write_text(BENCH_ASSISTANTS)
            config = StackConfig.ephemeral(
                run_dir,
                with_retriever=False,
                llm_sim_args=self._llm_cli(*self.llm_args),
                service_env={
                    **SERVICE_ENV,
                    "ASSISTANTS_FILE": str(assistants),
                    **(
                        {"MAX_CONCURRENT_RUNS": str(self.opts.max_concurrent_runs)}
                        if self.opts.max_concurrent_runs
                        else {}
                    ),
                },
            )
            self.stack = Stack(config)
            self.say(f"starting the stack in {run_dir} (logs there)")
            try:
                self.stack.up()
                break
            except (RuntimeError, TimeoutError) as exc:
                # Free ports are picked before binding: on a busy machine another process can
                # take one in between. Try again on new ports.
                if attempt == 3:
                    raise
                self.say(f"stack failed to start ({str(exc).splitlines()[0][:120]}); retrying")
        self._watch_stack()
        self.say(
            f"stack up in {time.monotonic() - t0:.1f}s: "
            + ", ".join(f"{n}={p.pid}" for n, p in self.s.procs.items())
        )

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
        dead = [n for n, p in self.s.procs.items() if not p.alive()]
        if dead:
            return f"{', '.join(dead)} exited"
        if self.llm_args and self.llm_args[0] >= 1000:
            return None  # the model is set to answer slowly; the next scenario resets it
        async with make_client() as client:
            try:
                async with asyncio.timeout(20):
                    r = await cai_stream(client, self.s.gateway_url(), PROMPT, assistant_id=PLAIN)
            except TimeoutError:
                return "a probe stream did not finish in 20s"
        return None if r.ok else f"a probe stream failed: {r.error[:200]}"

    def restart_stack(self) -> None:
        """Stop everything and start a fresh stack (new Redis: no state carried over)."""
        self.s.down()
        self.start_stack()

    @staticmethod
    def _llm_cli(ttft_ms: float, delay_ms: float, reply_tokens: int) -> list[str]:
        return [
            "--ttft-ms", f"{ttft_ms:g}", "--token-delay-ms", f"{delay_ms:g}",
            "--reply-tokens", str(reply_tokens), "--tool-mode", "never", "--log-level", "warning",
        ]  # fmt: skip

    async def set_llm(self, ttft_ms: float, delay_ms: float, reply_tokens: int) -> None:
        """Restart llm-sim with these knobs if they changed (Cai cannot pass per-request ones)."""
        wanted = (ttft_ms, delay_ms, reply_tokens)
        if wanted == self.llm_args:
            return
        self.say(f"llm-sim → ttft {ttft_ms:g} ms, delay {delay_ms:g} ms, {reply_tokens} tokens")
        stack = self.s
        stack.procs["llm-sim"].stop()
        stack.config.llm_sim_args = self._llm_cli(*wanted)
        await asyncio.to_thread(stack.start, stack.llm_sim_proc(), 30)
        self.llm_args = wanted
        self._watch_stack()
        if ttft_ms < 1000:  # (a model that takes minutes to answer is not warmed up)
            await self.warm_up(3)

    async def warm_up(self, n: int) -> None:
        """A few unmeasured streams (connection pools, lazy imports, the model client)."""
        async with make_client() as client:
            try:
                async with asyncio.timeout(60):
                    for _ in range(n):
                        r = await cai_stream(
                            client, self.s.gateway_url(), PROMPT, assistant_id=PLAIN
                        )
                        if not r.ok:
                            self.say(f"warm-up stream failed: {r.error}")
                        await floor_stream(client, self.s.llm_sim_url, PROMPT)
            except TimeoutError:
                self.say("warm-up did not finish in 60s")

    def phase_timeout(self, phases_left: int = 1) -> float:
        """The hard bound of the next phase."""
        return max(5.0, min(self.opts.phase_cap_s, (self.remaining() - 10) / phases_left))

    # -- one phase --------------------------------------------------------------------------

    async def phase(
        self,
        kind: str,
        concurrency: int,
        runs: int,
        timeout_s: float,
        around: Callable[[], Awaitable[None]] | None = None,
    ) -> Phase:
        """`runs` streams, `concurrency` at a time (closed loop), bounded by `timeout_s`."""
        url = self.s.gateway_url() if kind == "cai" else self.s.llm_sim_url
        results: list[StreamResult] = []
        clients = [make_client() for _ in range(concurrency)]
        started = 0
        target = self.opts.phase_target_s

        async def worker(client: httpx.AsyncClient) -> None:
            nonlocal started
            # Closed loop: start streams until `runs` or until the target duration has passed
            # (but always one full round of `concurrency`); streams in flight then finish.
            while started < runs and (started < concurrency or time.perf_counter() - t0 < target):
                started += 1
                if kind == "cai":
                    results.append(
                        await cai_stream(client, url, PROMPT, assistant_id=self.assistant_id)
                    )
                else:
                    results.append(await floor_stream(client, url, PROMPT))

        self.mon.start_peaks()
        sys0 = psutil.cpu_times()
        cpu0 = self.mon.cpu()
        t0 = loadgen.PROGRESS[0] = time.perf_counter()
        tasks = [asyncio.create_task(worker(c)) for c in clients]
        done, pending = await self._wait(tasks, timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        t1 = time.perf_counter()
        await asyncio.sleep(SETTLE_S)
        cpu1 = self.mon.cpu()
        sys1 = psutil.cpu_times()
        peaks = self.mon.stop_peaks()
        if around is not None:
            await around()
        await asyncio.gather(*(c.aclose() for c in clients))
        crashed = [repr(t.exception()) for t in done if not t.cancelled() and t.exception()]
        for r in results:
            r.finish()
        if kind == "cai" and (pending or crashed or any(not r.ok for r in results)):
            self.left_behind = True
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
        self, tasks: list[asyncio.Task[Any]], timeout_s: float
    ) -> tuple[set[asyncio.Task[Any]], set[asyncio.Task[Any]]]:
        """Wait for `tasks` up to `timeout_s`, or until no stream has received a byte for
        `stall_s` (a wedged service should cost 30 s of the budget, not the whole bound)."""
        deadline = time.monotonic() + timeout_s
        pending: set[asyncio.Task[Any]] = set(tasks)
        done: set[asyncio.Task[Any]] = set()
        while pending and time.monotonic() < deadline:
            finished, pending = await asyncio.wait(
                pending, timeout=min(1.0, max(0.0, deadline - time.monotonic()))
            )
            done |= finished
            if pending and time.perf_counter() - loadgen.PROGRESS[0] > self.opts.stall_s:
                self.say(f"no stream received anything for {self.opts.stall_s:g}s: stalled")
                self.stalled = True
                break
        return done, pending

    def phase_summary(self, p: Phase, expected_tokens: int | None) -> dict[str, Any]:
        """Latency, throughput, errors, CPU and memory of one phase."""
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
        if p.kind == "cai":
            cai = sum(v for k, v in p.cpu_s.items() if k in self.cai_names())
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

    async def verify(self, results: list[StreamResult]) -> dict[str, Any]:
        """Compare every completed stream with the AI message Cai stored on its thread."""
        checked = mismatch = lost = repeated = missing = 0
        ids_repeated = sum(r.ids_repeated for r in results)
        sem = asyncio.Semaphore(20)
        examples: list[str] = []

        clients = [make_client() for _ in range(20)]

        async def check(i: int, r: StreamResult) -> None:
            nonlocal checked, mismatch, lost, repeated, missing
            async with sem:
                client = clients[i % len(clients)]
                try:
                    message_id, text = await stored_reply(client, self.s.gateway_url(), r.thread_id)
                except (httpx.HTTPError, ValueError) as exc:
                    missing += 1
                    if len(examples) < 3:
                        examples.append(f"state of {r.thread_id}: {exc}")
                    return
            checked += 1
            if text != r.text or (r.message_id and message_id != r.message_id):
                mismatch += 1
                stored_n, streamed_n = len(text.split()), len(r.text.split())
                lost += max(0, stored_n - streamed_n)
                repeated += max(0, streamed_n - stored_n)
                if len(examples) < 3:
                    examples.append(f"{r.thread_id}: streamed {r.text[:60]!r} stored {text[:60]!r}")

        await asyncio.gather(*(check(i, r) for i, r in enumerate(results) if r.ok))
        await asyncio.gather(*(c.aclose() for c in clients))
        return {
            "streams_checked": checked,
            "state_unavailable": missing,
            "text_mismatch": mismatch,
            "tokens_lost": lost,
            "tokens_repeated": repeated,
            "event_ids_repeated_or_reordered": ids_repeated,
            "examples": examples,
        }

    # -- scenarios --------------------------------------------------------------------------

    async def scenario_stream(
        self,
        name: str,
        concurrency: int,
        delay_ms: float,
        runs: int,
        extra: dict[str, Any],
        reply_tokens: int | None = None,
    ) -> dict[str, Any]:
        """Floor, then Cai, under the same closed-loop load."""
        o = self.opts
        tokens = reply_tokens or o.reply_tokens
        await self.set_llm(o.ttft_ms, delay_ms, tokens)
        self.say(f"{name}: floor, {runs} streams, {concurrency} at a time")
        floor = await self.phase("floor", concurrency, runs, self.phase_timeout(2))
        await asyncio.sleep(0.5)
        self.say(f"{name}: Cai, {runs} streams, {concurrency} at a time")
        cai = await self.phase("cai", concurrency, runs, self.phase_timeout(1))
        integrity = await self.verify(cai.results)
        f = self.phase_summary(floor, tokens)
        c = self.phase_summary(cai, tokens)
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
        self.say(
            f"{name}: TTFT p50 {c['ttft_ms']['p50']} ms (floor {f['ttft_ms']['p50']}), "
            f"{c['tokens_per_s']} tok/s (floor {f['tokens_per_s']}), "
            f"Cai {c.get('cai_cpu_us_per_token')} CPU-µs/token, errors {c['errors']}, "
            f"mismatches {integrity['text_mismatch']}"
        )
        return record

    async def scenario_profile(
        self, name: str, concurrency: int, runs: int, delay_ms: float = 0.0
    ) -> dict[str, Any]:
        """The Cai phase of stream-c{N}-d{D} again, with py-spy on the gateway and orchestrator."""
        o = self.opts
        if not profiling.can_ptrace() or profiling.py_spy_binary() is None:
            return {"scenario": "profile", "name": name, "skipped": "py-spy or ptrace unavailable"}
        await self.set_llm(o.ttft_ms, delay_ms, o.reply_tokens)
        suffix = "" if delay_ms == 0 else f"-d{delay_ms:g}"
        out_dir = o.out_dir / f"{self.run_id}-profile{suffix}"
        failed_attempts: list[dict[str, Any]] = []
        for attempt in (1, 2):
            targets = {n: self.s.procs[n].pid for n in ("gateway", "orchestrator")}
            recs = [profiling.start_recording(n, pid, out_dir) for n, pid in targets.items()]
            await asyncio.sleep(1.5)  # attached
            self.say(f"{name}: Cai, {runs} streams, {concurrency} at a time, under py-spy")

            async def stop(recs: list[profiling.Recording | None] = recs) -> None:
                for rec in recs:
                    if rec is not None:
                        await asyncio.to_thread(rec.stop)

            cai = await self.phase("cai", concurrency, runs, self.phase_timeout(1), around=stop)
            summary = self.phase_summary(cai, o.reply_tokens)
            if not summary["errors"] or attempt == 2 or self.remaining() < 60:
                break
            # A profile of a wedged service says nothing about the hot path: note it, restart
            # and profile once more.
            self.say(f"{name}: {summary['errors']} errors ({summary['error_samples'][:1]}); again")
            failed_attempts.append({k: summary[k] for k in ("errors", "error_samples", "runs")})
            self.left_behind = False
            await asyncio.to_thread(self.restart_stack)
            await self.warm_up(5)
        per_proc: dict[str, Any] = {}
        for rec in recs:
            if rec is None or not rec.output.exists():
                continue
            analysis = profiling.analyse(rec.output, process=rec.name)
            us = summary.get("cpu_us_per_token", {}).get(rec.name)
            if us is not None:
                for section in ("self", "inclusive", "packages", "threads", "activities"):
                    for row in analysis[section]:  # type: ignore[attr-defined]
                        row["cpu_us_per_token"] = round(row["share"] * us, 2)
            kept = profiling.compress(rec.output)
            per_proc[rec.name] = {
                "cpu_us_per_token": us,
                "collapsed_stacks": str(kept),
                **analysis,
            }
        self.say(f"{name}: profiles in {out_dir}")
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

    async def scenario_idle(self, name: str, n: int) -> dict[str, Any]:
        """n SSE streams held open by one gateway, on runs waiting for a first token."""
        o = self.opts
        bound = self.phase_timeout(1)
        deadline = time.monotonic() + bound
        # The model takes 10 minutes to answer: each stream is open, its run executing, idle.
        await self.set_llm(600_000.0, 0.0, o.reply_tokens)
        await asyncio.sleep(1.0)
        rss0 = self.mon.rss()
        cpu0 = self.mon.cpu()
        clients = [make_client() for _ in range(n)]  # one connection each (see make_client)
        results = [StreamResult("cai") for _ in range(n)]
        opened = [asyncio.Event() for _ in range(n)]
        tasks: list[asyncio.Task[StreamResult]] = []
        t0 = time.perf_counter()
        gate = asyncio.Semaphore(50)  # open 50 at a time: a ramp, not a thundering herd

        async def open_one(i: int) -> None:
            async with gate:
                task = asyncio.create_task(
                    cai_stream(
                        clients[i], self.s.gateway_url(), PROMPT, results[i], opened[i], PLAIN
                    )
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
        rss1 = self.mon.rss()
        self.say(
            f"{name}: {held} streams open ({started} runs executing); holding {o.idle_hold_s}s"
        )
        cpu_h0 = self.mon.cpu()
        await asyncio.sleep(max(0.0, min(o.idle_hold_s, deadline - time.monotonic() - 10)))
        cpu_h1 = self.mon.cpu()
        hold_s = o.idle_hold_s
        rss2 = self.mon.rss()
        # Release: cancel every run; each stream must end with a `cancelled` event.
        t_c = time.perf_counter()
        sem = asyncio.Semaphore(50)
        control = [make_client() for _ in range(50)]

        async def cancel(i: int, r: StreamResult) -> None:
            if not r.run_id:
                return
            async with sem:
                with contextlib.suppress(httpx.HTTPError):
                    await control[i % len(control)].post(
                        f"{self.s.gateway_url()}/threads/{r.thread_id}/runs/{r.run_id}/cancel"
                    )

        await asyncio.gather(*(cancel(i, r) for i, r in enumerate(results)))
        _, pending = await asyncio.wait(tasks, timeout=max(5.0, deadline - time.monotonic()))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        t_cancelled = time.perf_counter() - t_c
        cpu1 = self.mon.cpu()
        await asyncio.gather(*(c.aclose() for c in clients + control))
        ended = Counter(r.terminal or "none" for r in results)
        per_conn = {
            k: round((rss1[k] - rss0[k]) / max(1, held) / 1024, 1) for k in rss1 if k in rss0
        }
        hold_cpu = delta(cpu_h1, cpu_h0)
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
            "ended_with": dict(ended),
            "errors": sum(1 for r in results if r.terminal != "cancelled"),
            "error_samples": [
                e
                for e, _ in Counter(
                    r.error or f"terminal {r.terminal!r}"
                    for r in results
                    if r.terminal != "cancelled"
                ).most_common(3)
            ],
        }
        self.say(
            f"{name}: gateway {per_conn.get('gateway')} KiB/connection, orchestrator "
            f"{per_conn.get('orchestrator')} KiB/connection; ended {dict(ended)}"
        )
        return record

    async def scenario_queue(self, name: str, replicas: int, n: int) -> dict[str, Any]:
        """Background runs created as fast as 20 clients can, until every one has finished."""
        o = self.opts
        await self.ensure_replicas(replicas)
        await self.set_llm(0.0, 0.0, o.queue_reply_tokens)
        bound = self.phase_timeout(1)
        redis = Redis.from_url(self.s.redis_url)
        creators = [make_client() for _ in range(20)]
        created: dict[str, float] = {}
        finished: dict[str, tuple[float, bytes]] = {}
        errors: list[str] = []
        url = self.s.gateway_url()
        todo = iter(range(n))
        t0 = time.perf_counter()
        cpu0 = self.mon.cpu()
        self.mon.start_peaks()

        async def creator(client: httpx.AsyncClient) -> None:
            for _ in todo:
                thread_id = str(uuid.uuid4())
                try:
                    resp = await client.post(
                        f"{url}/threads/{thread_id}/runs", json=run_body(PROMPT, PLAIN)
                    )
                    resp.raise_for_status()
                    created[resp.json()["run_id"]] = time.perf_counter()
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    errors.append(f"create: {type(exc).__name__}: {exc}"[:200])

        async def watcher() -> None:
            while True:
                open_ids = [r for r in created if r not in finished]
                if open_ids:
                    async with redis.pipeline(transaction=False) as pipe:
                        for run_id in open_ids:
                            pipe.hget(f"cai:run:{run_id}", "status")
                        statuses = await pipe.execute()
                    now = time.perf_counter()
                    for run_id, status in zip(open_ids, statuses, strict=True):
                        if status in TERMINAL_RUN_STATUSES:
                            finished[run_id] = (now, status)
                await asyncio.sleep(0.05)

        watch = asyncio.create_task(watcher())
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
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        t_done = (max((t for t, _ in finished.values()), default=t0)) - t0
        cpu1 = self.mon.cpu()
        peaks = self.mon.stop_peaks()
        await asyncio.gather(*(c.aclose() for c in creators))
        await redis.aclose()
        statuses = Counter(s.decode() for _, s in finished.values())
        cpu = delta(cpu1, cpu0)
        cai_cpu = sum(v for k, v in cpu.items() if k in self.cai_names())
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
            "errors": len(errors) + (len(created) - statuses.get("success", 0)),
            "error_samples": errors[:3],
        }
        self.say(
            f"{name}: created {record['created_per_s']} runs/s, completed "
            f"{record['completed_per_s']} runs/s, statuses {dict(statuses)}"
        )
        return record

    async def ensure_replicas(self, replicas: int) -> None:
        """Start or stop orchestrator-1.. so that `replicas` orchestrators consume the queue."""
        stack = self.s
        if stack.config.orchestrator_replicas == replicas:
            return
        for i in range(1, max(replicas, 4)):
            name = f"orchestrator-{i}"
            if i < replicas and name not in stack.procs:
                self.say(f"starting {name}")
                await asyncio.to_thread(stack.start, stack.orchestrator_proc(i), 60)
            elif i >= replicas and name in stack.procs:
                self.say(f"stopping {name}")
                stack.procs.pop(name).stop()
        # The gateway balances its gRPC calls over every replica (round_robin), as in the chart.
        stack.config.orchestrator_replicas = replicas
        stack.procs.pop("gateway").stop()
        await asyncio.to_thread(stack.start, stack.gateway_proc(0), 60)
        self._watch_stack()
        await self.warm_up(3)

    async def scenario_retrieval(
        self, name: str, concurrency: int, delay_ms: float, runs: int
    ) -> dict[str, Any]:
        """The stream scenario with the retriever up, if the agent calls it."""
        base = {"scenario": "stream", "name": name, "retrieval": True}
        try:
            import cai_retriever  # noqa: F401
        except ImportError:
            return {**base, "skipped": "cai_retriever is not installed"}
        stack = self.s
        self.say("starting the retriever (loads the embedding model)")
        t0 = time.monotonic()
        try:
            await asyncio.to_thread(
                stack.start, stack.retriever_proc(), max(30.0, min(180.0, self.remaining() - 120))
            )
        except (RuntimeError, TimeoutError) as exc:
            stack.procs.pop("retriever", None)
            return {**base, "skipped": f"retriever did not start: {str(exc)[:300]}"}
        self._watch_stack()
        self.say(f"retriever up in {time.monotonic() - t0:.1f}s; ingesting docs/")
        try:
            docs = Path("docs") if Path("docs").is_dir() else Path(__file__).parent
            cmd = [
                sys.executable, "-m", "cai_retriever.cli", "ingest", str(docs), "--quiet",
                "--addr", f"127.0.0.1:{stack.config.retriever_port}",
            ]  # fmt: skip
            ingest = await asyncio.to_thread(
                subprocess.run, cmd, capture_output=True, text=True, timeout=150, check=False
            )
            if ingest.returncode != 0:
                return {**base, "skipped": f"ingest failed: {ingest.stderr[-300:]}"}
            self.assistant_id = RAG
            before = await self._searches()
            async with make_client() as client:
                probe = await cai_stream(
                    client, stack.gateway_url(), PROMPT, assistant_id=self.assistant_id
                )
            after = await self._searches()
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
            record = await self.scenario_stream(
                name, concurrency, delay_ms, runs, {"retrieval": True, "max_runs": runs}
            )
            record["searches"] = (await self._searches() or 0) - after
            return record
        finally:
            self.assistant_id = PLAIN
            proc = stack.procs.pop("retriever", None)
            if proc is not None:
                proc.stop()
            self._watch_stack()

    async def _searches(self) -> float | None:
        port = self.s.config.retriever_metrics_port
        try:
            async with httpx.AsyncClient(timeout=5) as client:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.HTTPError:
            return None
        m = re.search(
            r'^cai_retrieval_duration_seconds_count\{operation="search"\} (\S+)', text, re.M
        )
        return float(m.group(1)) if m else None

    # -- the whole run ----------------------------------------------------------------------

    def plan(self) -> list[tuple[str, Callable[[], Awaitable[dict[str, Any]]], float]]:
        """(name, coroutine factory, seconds it needs at least) of every selected scenario."""
        o = self.opts
        steps: list[tuple[str, Callable[[], Awaitable[dict[str, Any]]], float]] = []

        def stream(c: int, d: float) -> None:
            name = f"stream-c{c}-d{d:g}"
            if self.selected(name):
                runs = runs_for(c, d, o.runs_scale)
                steps.append(
                    (name, lambda: self.scenario_stream(name, c, d, runs, {"max_runs": runs}), 20.0)
                )

        for d in o.delays_ms:
            for c in o.concurrency:
                stream(c, d)
            pc = o.profile_concurrency
            prof = f"profile-c{pc}-d{d:g}"
            if self.selected(prof):
                pruns = runs_for(pc, d, o.runs_scale)
                steps.append(
                    (
                        prof,
                        lambda prof=prof, pc=pc, pruns=pruns, d=d: self.scenario_profile(
                            prof, pc, pruns, d
                        ),
                        20.0,
                    )
                )
        # Long replies: the per-run cost spread over 10× the tokens (with stream-c100-d0 it
        # splits Cai's CPU into a fixed cost per run and a cost per token).
        long = f"long-c{o.profile_concurrency}-d0"
        if 0 in o.delays_ms and self.selected(long):
            lc, lt = o.profile_concurrency, o.long_reply_tokens
            lruns = max(lc, int(lc * o.runs_scale))
            steps.append(
                (
                    long,
                    lambda: self.scenario_stream(
                        long, lc, 0.0, lruns, {"max_runs": lruns, "long_reply": True}, lt
                    ),
                    30.0,
                )
            )
        idle = f"idle-{o.idle_connections}"
        if self.selected(idle):
            steps.append((idle, lambda: self.scenario_idle(idle, o.idle_connections), 45.0))
        for r in (1, 2):
            name = f"queue-r{r}"
            if self.selected(name):
                steps.append(
                    (name, lambda r=r, name=name: self.scenario_queue(name, r, o.queue_runs), 20.0)
                )
        want_retrieval = o.retrieval == "on" or (o.retrieval == "auto" and not o.quick)
        name = "retrieval-c10-d20"
        if self.selected(name, default=want_retrieval) and o.retrieval != "off":
            runs = runs_for(10, 20, o.runs_scale)
            steps.append((name, lambda: self.scenario_retrieval(name, 10, 20.0, runs), 90.0))
        return steps

    async def run(self) -> list[dict[str, Any]]:
        """Start the stack, run every selected scenario, stop the stack."""
        o = self.opts
        self.emit(
            {
                "scenario": "meta",
                "machine": machine_info(),
                "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(o).items()},
            }
        )
        steps = self.plan()
        self.say(f"{len(steps)} scenarios: {', '.join(n for n, _, _ in steps)}")
        await asyncio.to_thread(self.start_stack)
        try:
            await self.warm_up(5)
            for name, factory, needs in steps:
                if self.remaining() < needs:
                    self.say(f"{name}: skipped, {self.remaining():.0f}s left of the budget")
                    self.emit({"scenario": name.split("-")[0], "name": name, "skipped": "budget"})
                    continue
                t0 = time.monotonic()
                try:
                    record = await factory()
                except Exception as exc:  # a broken scenario must not lose the others
                    self.say(f"{name}: failed: {exc!r}")
                    record = {"scenario": name.split("-")[0], "name": name, "failed": repr(exc)}
                record["elapsed_s"] = round(time.monotonic() - t0, 1)
                problem = await self.health_problem()
                if problem:
                    self.say(f"after {name}: {problem}; restarting the stack")
                    record["stack_restarted_after"] = problem
                    await asyncio.to_thread(self.restart_stack)
                    await self.warm_up(5)
                self.emit(record)
                if "skipped" in record:
                    self.say(f"{name}: skipped: {record['skipped']}")
        finally:
            self.say("stopping the stack")
            await asyncio.to_thread(self.s.down)
        self.emit(
            {
                "scenario": "end",
                "total_s": round(time.monotonic() - self.t_begin, 1),
                "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            }
        )
        return self.records
