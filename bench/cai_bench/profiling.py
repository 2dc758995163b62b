"""Sampling profiles of running services with py-spy, and what dominates in them.

py-spy attaches by pid (ptrace: root or CAP_SYS_PTRACE) and samples Python stacks without
pausing the process (`--nonblocking`). Idle threads (an event loop waiting in epoll) are left
out, so the samples are where the process spends CPU in Python code, and a function's share of
the samples times the process's CPU per token is its CPU per token.
"""

from __future__ import annotations

import gzip
import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


def py_spy_binary() -> str | None:
    """py-spy next to this interpreter (the dev group installs it), else on PATH."""
    local = Path(sys.executable).with_name("py-spy")
    if local.exists():
        return str(local)
    return shutil.which("py-spy")


@dataclass
class Recording:
    """One py-spy process recording one target."""

    name: str
    pid: int
    output: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def stop(self, timeout: float = 20.0) -> bool:
        """Stop sampling (SIGINT makes py-spy write its file); True if the file exists."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.output.exists() and self.output.stat().st_size > 0


def start_recording(name: str, pid: int, out_dir: Path, rate: int = 100) -> Recording | None:
    """Start `py-spy record --format raw` on `pid`; None when py-spy is unavailable."""
    binary = py_spy_binary()
    if binary is None:
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{name}.collapsed.txt"
    log = out_dir / f"{name}.py-spy.log"
    cmd = [
        binary, "record", "--pid", str(pid), "--format", "raw", "--output", str(output),
        "--rate", str(rate), "--nonblocking", "--nolineno", "--threads",
    ]  # fmt: skip
    with log.open("wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    return Recording(name, pid, output, proc, log)


def _frame_key(frame: str) -> str:
    """'func (pkg/mod.py)' -> 'pkg/mod.py:func'."""
    func, _, where = frame.rpartition(" (")
    if not func:
        return frame
    return f"{where.rstrip(')')}:{func}"


_PACKAGE_ALIASES = {
    "site-packages": "",
}


def _package(key: str) -> str:
    path = key.split(":", 1)[0]
    first = path.split("/", 1)[0]
    if first.endswith(".py") or path.startswith("<"):
        # A stdlib module shows as "asyncio/events.py" or "json/decoder.py"; a lone file such as
        # "threading.py" is stdlib too.
        return "stdlib:" + first.removesuffix(".py")
    return _PACKAGE_ALIASES.get(first, first)


# What a sample is spent on, by the first rule (in this order) that matches any of its frames.
# Frames are "path/module.py:Function". The last rules catch native work that py-spy sees only
# as the Python frame that called it. py-spy does not always see the whole await chain of a
# coroutine (CPython 3.11 entry frames), so a sample may lack the Cai frame that caused it.
ACTIVITIES: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "orchestrator": [
        (
            "LLM client: model stream (httpx2 reads, SSE parsing, deltas to the run's sink)",
            (
                "openai/",
                "httpx/",
                "httpcore/",
                "httpx2/",
                "httpcore2/",
                "anyio/",
                "h11/",
                "langchain_openai/",
                "cai_orchestrator/model_stream.py",
                "cai_orchestrator/token_sink.py",
            ),
        ),
        (
            "checkpointer (langgraph-checkpoint-redis, RedisJSON)",
            ("langgraph/checkpoint/", "redisvl/", "redis/commands/json/", "redis/commands/search/"),
        ),
        (
            "event log writes (EventWriter, EventBatcher: XADD pipelines)",
            (
                "cai_orchestrator/events.py:EventWriter",
                "cai_orchestrator/events.py:EventBatcher",
                "cai_orchestrator/frames.py:TokenEncoder",
            ),
        ),
        (
            "log tailer (XREAD over all streams + fan-out)",
            (
                "cai_orchestrator/events.py:LogTailer",
                "cai_orchestrator/tailer.py",
                "cai_orchestrator/frames.py:LogReader",
            ),
        ),
        (
            "StreamRun: gRPC replies to the gateway",
            ("cai_orchestrator/servicers/orchestrator.py:OrchestratorServicer.StreamRun", "grpc/"),
        ),
        ("per-token event building (runner.execute)", ("cai_orchestrator/runner.py:execute",)),
        (
            "LangGraph / LangChain streaming (callbacks, message chunks)",
            ("langgraph/", "langchain_core/", "pregel/"),
        ),
        (
            "run lifecycle (worker, store, CreateRun)",
            # The run engine's modules, before (worker, store) and after the split into one
            # module per concern: profiles recorded on either layout attribute the same way.
            (
                "cai_orchestrator/worker.py",
                "cai_orchestrator/store.py",
                "cai_orchestrator/servicers/",
                "cai_orchestrator/runs.py",
                "cai_orchestrator/queue.py",
                "cai_orchestrator/lease.py",
                "cai_orchestrator/cancel.py",
                "cai_orchestrator/records.py",
                "cai_orchestrator/views.py",
            ),
        ),
        ("redis client, caller not captured (mostly command send syscalls)", ("redis/",)),
        ("logging", ("logging/", "cai_common/logging.py", "pythonjsonlogger/")),
        (
            "event loop + native callbacks (asyncio Handle._run self: cygrpc, sockets)",
            ("asyncio/events.py:Handle._run",),
        ),
    ],
    "gateway": [
        ("SSE relay (cai_gateway/sse.py: gRPC read + framing)", ("cai_gateway/sse.py",)),
        ("SSE response (sse-starlette send, ping, disconnect tasks)", ("sse_starlette/",)),
        ("gRPC client (CreateRun, StreamRun start)", ("grpc/",)),
        (
            "FastAPI routing, validation, dependencies",
            (
                "fastapi/",
                "pydantic/",
                "cai_gateway/api/",
                "cai_gateway/deps.py",
                "cai_gateway/convert.py",
                "cai_gateway/problems.py",
            ),
        ),
        ("Starlette / anyio", ("starlette/", "anyio/")),
        ("uvicorn HTTP protocol", ("uvicorn/protocols/",)),
        ("threads: gRPC poller, anyio worker threads for sync dependencies", ("threading.py",)),
        ("uvloop (native loop: sockets, C callbacks)", ("asyncio/runners.py:Runner.run",)),
    ],
}


def _thread(frame: str) -> str | None:
    """py-spy --threads roots a stack at 'thread (tid): name'."""
    if frame.startswith("thread (") and "): " in frame:
        name = frame.split("): ", 1)[1]
        return "AnyIO worker thread" if name.startswith("AnyIO worker") else name
    return None


def analyse(collapsed: Path, top: int = 25, process: str = "") -> dict[str, object]:
    """Self and inclusive shares by function, self share by package, by thread and by activity."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    pkg_counts: Counter[str] = Counter()
    thread_counts: Counter[str] = Counter()
    activity_counts: Counter[str] = Counter()
    rules = ACTIVITIES.get(process.split("-")[0], [])
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        raw = [f for f in stack.split(";") if f]
        thread = _thread(raw[0]) if raw else None
        if thread is not None:
            raw = raw[1:]
        frames = [_frame_key(f) for f in raw]
        if not frames:
            continue
        if thread is not None:
            thread_counts[thread] += count
        total += count
        leaf = frames[-1]
        self_counts[leaf] += count
        pkg_counts[_package(leaf)] += count
        for key in set(frames):
            incl_counts[key] += count
        label = "other"
        for name, prefixes in rules:
            if any(f.startswith(prefixes) for f in frames):
                label = name
                break
        activity_counts[label] += count

    def share(counter: Counter[str], n: int) -> list[dict[str, object]]:
        return [
            {"function": k, "share": round(v / total, 4), "samples": v}
            for k, v in counter.most_common(n)
        ]

    return {
        "samples": total,
        "self": share(self_counts, top),
        "inclusive": share(incl_counts, top * 2),
        "packages": share(pkg_counts, 15),
        "threads": share(thread_counts, 10),
        "activities": share(activity_counts, 20),
    }


def compress(path: Path) -> Path:
    """Gzip a collapsed-stacks file in place (they are large and compress ~10×)."""
    target = path.with_name(path.name + ".gz")
    with path.open("rb") as src, gzip.open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    return target


def can_ptrace() -> bool:
    """py-spy needs ptrace rights over the target: root is enough."""
    return hasattr(os, "geteuid") and os.geteuid() == 0
