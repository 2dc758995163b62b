"""What one run costs: Redis commands by owner and kind, CPU per process, TTFT over the floor.

    PYTHONPATH=bench .venv/bin/python -m cai_bench.runcost [--runs 200] [--monitor-runs 50]
    BENCH_TREE=<commit> PYTHONPATH=bench .venv/bin/python -m cai_bench.runcost   # a baseline

Starts the same stack as `make bench` (private Redis 8, llm-sim with 100-token replies and no
delay, one orchestrator, one gateway, the `bench-plain` assistant) and sends streams one at a time
(`POST /threads/{new id}/runs/stream`, `if_not_exists: create`, `messages-tuple`), so nothing
queues and every cost is the run's own.

1. *Commands*: Redis's MONITOR over `--monitor-runs` streams. Every command is attributed to the
   process whose connection sent it (client port → pid) and sorted into kinds:
   - `checkpointer`: the checkpointer's connections (any that sends JSON.* or FT.*, or touches a
     checkpoint key) — reported apart;
   - `token events`: XADDs of `messages` events to a run's event log (they scale with tokens);
   - `graph events`: XADDs of the other events the graph streams (`status`, `values`, ...);
   - `log reads`: the log tailer's XREADs (they scale with the events written);
   - `background`: loops that run on a clock, not per run (reclaim's XPENDING, the sweeps of
     dispatch intents and reattach deadlines) — measured over an idle window of the same length
     and subtracted;
   - `bookkeeping`: everything else the orchestrator and the gateway send: the run's records,
     queue, lease, cancel flag, lifecycle events (`metadata`, `retry`, the terminal one), the
     stream's record read and subscription, stream slots.
   Top-level commands are counted as sent (an EVALSHA is one); commands a Lua script runs are
   counted separately ("in scripts").
2. *CPU and TTFT*: `--runs` streams without MONITOR; CPU seconds (user + system) of the gateway,
   the orchestrator and Redis before and after, per run; TTFT (request → first non-empty token)
   p50 against the same number of streams sent straight to llm-sim (the floor), interleaved.
3. With `--retrieval`, the retrieve step apart: the retriever is started and docs/ ingested,
   then the retrieving assistant (`bench-rag`) and the plain one run back to back; the
   difference in CPU per run (retriever included) is the step's cost.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import redis

_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_LINE = re.compile(rb"^[\d.]+ \[\d+ ([^\]]*)\] (.*)$", re.S)
_LIFECYCLE_EVENTS = {b"metadata", b"retry", b"end", b"error", b"cancelled", b"timeout"}
_BACKGROUND = {
    ("XPENDING", "cai:runs:queue"),
    ("ZRANGEBYSCORE", "cai:runs:dispatching"),
    ("ZRANGEBYSCORE", "cai:runs:reattach"),
}


@dataclass
class Command:
    """One command as MONITOR reported it."""

    client: str  # "ip:port", or "lua" for a command a script ran
    args: list[bytes]

    @property
    def name(self) -> str:
        return self.args[0].decode().upper() if self.args else ""

    @property
    def key(self) -> str:
        return self.args[1].decode(errors="replace") if len(self.args) > 1 else ""


def parse(line: bytes) -> Command | None:
    """A MONITOR line → Command (None for anything else)."""
    m = _LINE.match(line)
    if m is None:
        return None
    args = [a.replace(b'\\"', b'"') for a in _ARG.findall(m.group(2))]
    return Command(m.group(1).decode(), args)


class Monitor:
    """Reads MONITOR on its own connection and thread until stopped."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.lines: list[bytes] = []
        self._conn = self.client.connection_pool.get_connection()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self) -> None:
        self._conn.send_command("MONITOR")
        self._conn.read_response()
        self._thread.start()

    def _read(self) -> None:
        try:
            while True:
                self.lines.append(self._conn.read_response())
        except (redis.RedisError, OSError, ValueError, AttributeError):
            return

    def stop(self) -> list[Command]:
        self._conn.disconnect()
        self._thread.join(timeout=5)
        return [c for c in map(parse, self.lines) if c is not None]


def client_ports(pids: dict[str, int]) -> dict[str, str]:
    """Local TCP port (as text) → process name, for the processes' current connections."""
    found: dict[str, str] = {}
    for name, pid in pids.items():
        try:
            for conn in psutil.Process(pid).net_connections(kind="tcp"):
                if conn.laddr:
                    found[str(conn.laddr.port)] = name
        except psutil.Error:
            continue
    return found


def _is_checkpointer(cmd: Command) -> bool:
    n, k = cmd.name, cmd.key
    return n.startswith(("JSON.", "FT.")) or k.startswith(("checkpoint", "write_keys_zset"))


@dataclass
class Tally:
    """Commands counted by (owner, kind, command name)."""

    top: collections.Counter[tuple[str, str, str]] = field(default_factory=collections.Counter)
    inner: collections.Counter[tuple[str, str, str]] = field(default_factory=collections.Counter)

    def total(self, which: str, owner: str = "", kind: str = "") -> int:
        counter = self.top if which == "top" else self.inner
        return sum(
            n
            for (o, k, _), n in counter.items()
            if (not owner or o == owner) and (not kind or k == kind)
        )


def tally(commands: list[Command], ports: dict[str, str]) -> Tally:
    """Sort commands by the process that sent them and by kind (see the module docstring)."""
    checkpointer_clients = {c.client for c in commands if c.client != "lua" and _is_checkpointer(c)}
    t = Tally()
    owner, kind = "?", "?"
    for c in commands:
        if c.client == "lua":  # runs inside the script sent just before it
            t.inner[(owner, kind, c.name)] += 1
            continue
        owner = ports.get(c.client.rsplit(":", 1)[-1], "other")
        if c.name in ("MONITOR", "INFO", "CONFIG", "CLIENT", "HELLO") and owner == "other":
            continue
        if c.client in checkpointer_clients:
            kind = "checkpointer"
        elif c.name == "XADD" and c.key.endswith(":events") and b"messages" in c.args[3:5]:
            kind = "token events"
        elif (
            c.name == "XADD"
            and c.key.endswith(":events")
            and not _LIFECYCLE_EVENTS & set(c.args[3:5])
        ):
            kind = "graph events"
        elif c.name == "XREAD":
            kind = "log reads"
        elif (c.name, c.key) in _BACKGROUND:
            kind = "background"
        else:
            kind = "bookkeeping"
        t.top[(owner, kind, c.name)] += 1
    return t


def describe(commands: list[Command], ports: dict[str, str]) -> list[str]:
    """One line per command: who sent it (or "  lua") and its first arguments."""
    lines = []
    for c in commands:
        who = "  lua" if c.client == "lua" else ports.get(c.client.rsplit(":", 1)[-1], "other")
        shown = b" ".join(a[:60] for a in c.args[:5]).decode(errors="replace")
        lines.append(f"{who} {c.client} {shown}")
    return lines


async def _streams(
    n: int, base: str, llm: str, floor: bool, assistant: str
) -> tuple[list[float], list[float]]:
    from cai_bench.loadgen import cai_stream, floor_stream, make_client
    from cai_bench.stack import PROMPT

    cai: list[float] = []
    flo: list[float] = []
    async with make_client() as client:
        for _ in range(n):
            r = await cai_stream(client, base, PROMPT, assistant_id=assistant)
            if not r.ok or r.ttft is None:
                raise RuntimeError(f"stream failed: {r.error or r.terminal}")
            cai.append(r.ttft)
            if floor:
                f = await floor_stream(client, llm, PROMPT)
                if f.ttft is not None:
                    flo.append(f.ttft)
    return cai, flo


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """User + system CPU seconds of each process so far."""
    out = {}
    for name, pid in pids.items():
        t = psutil.Process(pid).cpu_times()
        out[name] = t.user + t.system
    return out


def cpu_phase(pids: dict[str, int], n: int, base: str, llm: str, assistant: str) -> dict[str, Any]:
    """CPU per run of each process over `n` streams, and TTFT p50 against the floor (a floor
    stream after each Cai stream, so both see the same machine)."""
    before = cpu_seconds(pids)
    t0 = time.monotonic()
    cai, flo = asyncio.run(_streams(n, base, llm, True, assistant))
    wall = time.monotonic() - t0
    time.sleep(0.5)  # post-stream work (finish, ack) of the last run
    after = cpu_seconds(pids)
    cpu = {k: (after[k] - before[k]) * 1000 / n for k in after}
    ttft, floor = statistics.median(cai) * 1000, statistics.median(flo) * 1000
    return {
        "cpu_ms_per_run": {**cpu, "total": sum(cpu.values())},
        "runs_per_s": n / wall,
        "ttft_ms_p50": ttft,
        "floor_ttft_ms_p50": floor,
        "ttft_overhead_ms_p50": ttft - floor,
    }


def retrieval_phase(
    control: Any, pids: dict[str, int], n: int, base: str, llm: str
) -> dict[str, Any]:
    """The retrieve step's cost: the retriever up with docs/ ingested, then the retrieving
    assistant and the plain one back to back (CPU per run of every process, TTFT)."""
    import subprocess

    from cai_bench.stack import RAG

    asyncio.run(control.start_retriever(180.0))
    stack = control.s
    cmd = [
        sys.executable, "-m", "cai_retriever.cli", "ingest", "docs", "--quiet",
        "--addr", f"127.0.0.1:{stack.config.retriever_port}",
    ]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=300, check=True)
    pids = {**pids, "retriever": stack.procs["retriever"].pid}
    asyncio.run(_streams(5, base, llm, False, RAG))
    rag = cpu_phase(pids, n, base, llm, RAG)
    plain = cpu_phase(pids, n, base, llm, "bench-plain")
    delta = {
        k: rag["cpu_ms_per_run"][k] - plain["cpu_ms_per_run"][k] for k in rag["cpu_ms_per_run"]
    }
    return {"rag": rag, "plain": plain, "retrieve_step_cpu_ms_per_run": delta}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Start the stack, measure, stop it; the results."""
    from cai_bench.procmon import ProcMonitor
    from cai_bench.stack import StackControl

    mon = ProcMonitor({})
    control = StackControl(mon, lambda s: print(s, file=sys.stderr), 0.0, 100, None)
    assistant = "bench-plain"
    if args.durability:  # the plain assistant with another checkpoint durability
        assistant = f"bench-plain-{args.durability}"
        control.assistants_yaml += (
            f"  - id: {assistant}\n    retrieval:\n      enabled: false\n"
            f"    durability: {args.durability}\n"
        )
    control.start()
    try:
        stack = control.s
        pids = {n: p.pid for n, p in stack.procs.items() if n in ("gateway", "orchestrator")}
        pids["redis"] = stack.procs["redis"].pid
        base, llm = control.gateway_url(), stack.llm_sim_url
        asyncio.run(_streams(args.warmup, base, llm, True, assistant))

        # 1. Commands: the runs, then an idle window as long, for the clock-driven loops.
        mon_cmds = Monitor(stack.redis_url)
        mon_cmds.start()
        t0 = time.monotonic()
        asyncio.run(_streams(args.monitor_runs, base, llm, False, assistant))
        busy_s = time.monotonic() - t0
        ports = client_ports(pids)
        commands = mon_cmds.stop()
        busy = tally(commands, ports)
        if args.dump:
            Path(args.dump).write_text("\n".join(describe(commands, ports)) + "\n")
        mon_idle = Monitor(stack.redis_url)
        mon_idle.start()
        time.sleep(busy_s)
        idle = tally(mon_idle.stop(), client_ports(pids))

        # 2. CPU and TTFT, without MONITOR (with py-spy on the services if asked).
        recordings = []
        if args.profile:
            from cai_bench.profiling import start_recording

            for name in ("gateway", "orchestrator"):
                rec = start_recording(name, pids[name], Path(args.profile))
                if rec is not None:
                    recordings.append(rec)
            time.sleep(1.0)  # py-spy attaches
        cpu = cpu_phase(pids, args.runs, base, llm, assistant)
        for rec in recordings:
            rec.stop()
        retrieval = None
        if args.retrieval:
            retrieval = retrieval_phase(control, pids, args.runs // 2, base, llm)
    finally:
        control.down()
    out = report(args, busy, idle)
    out.update(cpu)
    if retrieval is not None:
        out["retrieval"] = retrieval
    return out


def report(args: argparse.Namespace, busy: Tally, idle: Tally) -> dict[str, Any]:
    """Commands per run from the tallies."""
    n = args.monitor_runs
    per_run: dict[str, Any] = {}
    for owner in ("orchestrator", "gateway"):
        kinds = ("bookkeeping", "token events", "graph events", "log reads", "checkpointer")
        for kind in (*kinds, "background"):
            top = busy.total("top", owner, kind) - (
                idle.total("top", owner, kind) if kind == "background" else 0
            )
            inner = busy.total("inner", owner, kind)
            if top or inner:
                per_run[f"{owner} {kind}"] = {"top": top / n, "in scripts": inner / n}
    names: dict[str, float] = collections.defaultdict(float)
    for (owner, kind, name), count in busy.top.items():
        if kind == "bookkeeping":
            names[f"{owner} {name}"] += count / n
    bookkeeping_top = sum(busy.total("top", o, "bookkeeping") for o in ("orchestrator", "gateway"))
    bookkeeping_inner = sum(
        busy.total("inner", o, "bookkeeping") for o in ("orchestrator", "gateway")
    )
    return {
        "tree": os.environ.get("BENCH_TREE", "") or "working tree",
        "durability": args.durability or "default",
        "runs": args.runs,
        "monitor_runs": n,
        "bookkeeping_per_run": bookkeeping_top / n,
        "bookkeeping_in_scripts_per_run": bookkeeping_inner / n,
        "checkpointer_per_run": busy.total("top", "orchestrator", "checkpointer") / n,
        "checkpointer_in_scripts_per_run": busy.total("inner", "orchestrator", "checkpointer") / n,
        "by_kind": per_run,
        "bookkeeping_by_command": dict(sorted(names.items(), key=lambda kv: -kv[1])),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="cai_bench.runcost", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--monitor-runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", default="")
    p.add_argument("--dump", default="", help="write every monitored command to this file")
    p.add_argument("--profile", default="", help="py-spy the services' CPU phase into this folder")
    p.add_argument(
        "--durability", choices=("sync", "async", "exit"), help="the assistant's durability"
    )
    p.add_argument(
        "--retrieval",
        action="store_true",
        help="also measure the retrieve step (starts the "
        "retriever and ingests docs/: minutes on 2 cores)",
    )
    args = p.parse_args(argv)
    tree = os.environ.get("BENCH_TREE", "").strip()
    if tree:
        from cai_bench.__main__ import use_tree

        use_tree(tree)
    result = measure(args)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)  # noqa: T201 - a command-line tool's output


if __name__ == "__main__":
    main()
