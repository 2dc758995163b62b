"""The token path on its own: CPU per token and Redis bytes per run, steady enough to compare
commits on a machine that others share (docs/performance.md, "Tokens past LangGraph").

`cpu`: Cai's graph, the runner, the event writer and batcher and a log tailer that reads every
run to its end, in this one process (no gRPC, no gateway), against llm-sim and a Redis of their
own. Runs of a short and of a long reply alternate; the cheapest round of each gives CPU per run
and per token (this process's CPU, and Redis's from INFO).

`bytes`: a whole stack (`make up`'s processes); runs of a 200-token reply at 20 ms between
tokens, then MEMORY USAGE (SAMPLES 0) of every key, by kind, per run.

    PYTHONPATH=bench .venv/bin/python -m cai_bench.tokenpath cpu --delay-ms 20
    PYTHONPATH=bench .venv/bin/python -m cai_bench.tokenpath bytes --tree fdd2ebe
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

QUESTION = {"messages": [{"role": "user", "content": "How does Cai resume a stream?"}]}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _redis_cpu_s(redis: Any) -> float:
    info = await redis.info("cpu")
    return float(info["used_cpu_sys"] + info["used_cpu_user"])


async def _round(
    sim: str, redis_url: str, tokens: int, delay_ms: float, streams: int, runs: int
) -> tuple[float, float]:
    """CPU seconds per run of this process and of Redis, over `runs` runs."""
    from langgraph.checkpoint.memory import InMemorySaver
    from redis.asyncio import Redis

    from cai_orchestrator import runner
    from cai_orchestrator.assistants import Assistant, Assistants
    from cai_orchestrator.config import Settings
    from cai_orchestrator.events import EventBatcher, EventWriter
    from cai_orchestrator.graph import Agent
    from cai_orchestrator.llm import ModelFactory
    from cai_orchestrator.records import RunRecord, now_iso
    from cai_orchestrator.retrieval import RetrieverClient
    from cai_orchestrator.tailer import LogTailer

    headers = {"X-Sim-Reply-Tokens": str(tokens), "X-Sim-Token-Delay-Ms": f"{delay_ms:g}"}
    settings = Settings(openai_base_url=sim)
    assistants = Assistants([Assistant(id="chat", model_headers=headers)])
    graph = Agent(ModelFactory(settings), assistants, RetrieverClient("127.0.0.1:1")).build(
        InMemorySaver()
    )
    redis = Redis.from_url(redis_url)
    tail = Redis.from_url(redis_url, socket_timeout=None)
    batcher = EventBatcher(redis)
    batcher.start()
    tailer = LogTailer(tail, redis, f"tokenpath-{uuid.uuid4().hex[:6]}")
    tailer.start()
    slots = asyncio.Semaphore(streams)

    async def one() -> None:
        async with slots:
            run = RunRecord(
                run_id=str(uuid.uuid4()), thread_id=str(uuid.uuid4()), tenant="bench",
                assistant_id="chat", status="running", created_at=now_iso(),
                updated_at=now_iso(), multitask_strategy="reject",
                kwargs={"input": QUESTION, "stream_mode": ["messages-tuple"]}, metadata={},
            )  # fmt: skip
            key = run.ref.keys.events
            sub = await tailer.subscribe(key, (0, 0))
            writer = EventWriter(redis, key, settings.coalesce_ms / 1000, 600, batcher)

            async def follow() -> None:
                while not any(event == b"end" for _, event, _ in await sub.get()):
                    pass

            reading = asyncio.create_task(follow())
            await runner.execute(graph, run, writer, {"recursion_limit": 10})
            await writer.finish()
            await writer.emit("end", b"null")
            await reading
            tailer.unsubscribe(sub)
            await redis.delete(key)

    try:
        await asyncio.gather(*(one() for _ in range(min(streams, 5))))  # warm up
        cpu, redis_cpu = _cpu_s(), await _redis_cpu_s(redis)
        await asyncio.gather(*(one() for _ in range(runs)))
        return (_cpu_s() - cpu) / runs, (await _redis_cpu_s(redis) - redis_cpu) / runs
    finally:
        await batcher.stop()
        await tailer.stop()
        await redis.aclose()
        await tail.aclose()


def cpu(args: argparse.Namespace) -> None:
    """CPU per run and per token of the token path (see the module's docstring)."""
    import uvloop

    from cai_devstack.fixtures import start_redis
    from cai_devstack.procs import Proc, free_port, http_ready, python_module

    tmp = Path(tempfile.mkdtemp(prefix="cai-tokenpath-"))
    redis_proc, redis_url = start_redis(tmp)
    port = free_port()
    sim = Proc(
        "llm-sim",
        python_module("llm_sim", "--port", str(port)),
        tmp / "llm-sim.log",
        ready=http_ready(f"http://127.0.0.1:{port}/health"),
    ).start()
    try:
        sim.wait_ready(30)
        url = f"http://127.0.0.1:{port}/v1"
        best: dict[int, tuple[float, float]] = {}
        for _ in range(args.rounds):
            for tokens in (args.short, args.long):
                got = uvloop.run(
                    _round(url, redis_url, tokens, args.delay_ms, args.streams, args.runs)
                )
                print(f"{tokens} tokens: {got[0] * 1e3:.2f} CPU-ms/run, Redis {got[1] * 1e3:.2f}")
                best[tokens] = min(best.get(tokens, got), got)
    finally:
        sim.stop()
        redis_proc.stop()
    (short, redis_short), (long, redis_long) = best[args.short], best[args.long]
    per_token = (long - short) / (args.long - args.short)
    redis_per_token = (redis_long - redis_short) / (args.long - args.short)
    print(
        f"delay {args.delay_ms:g} ms, {args.streams} streams: {per_token * 1e6:.1f} CPU-µs per "
        f"token (+ Redis {redis_per_token * 1e6:.1f}), "
        f"{(short - per_token * args.short) * 1e3:.2f} CPU-ms per run"
    )


def _kind(key: str) -> str:
    if key.endswith(":events"):
        return "event log"
    if key.startswith(("checkpoint", "write_keys_zset")):
        return "checkpoints"
    if key.startswith("cai:runs:") or key.startswith("cai:tailer:") or key.endswith(":threads"):
        return "shared"
    return "records"


async def _bytes(stack: Any, runs: int) -> dict[str, float]:
    import httpx
    from redis.asyncio import Redis

    body = {"assistant_id": "chat", "input": QUESTION, "stream_mode": ["messages-tuple"]}
    async with httpx.AsyncClient(base_url=stack.gateway_url(), timeout=120) as http:
        for _ in range(runs):
            tid = (await http.post("/threads", json={})).json()["thread_id"]
            async with http.stream("POST", f"/threads/{tid}/runs/stream", json=body) as reply:
                async for _chunk in reply.aiter_bytes():
                    pass
    await asyncio.sleep(1)  # the run's last writes land after its terminal event
    redis = Redis.from_url(stack.redis_url)
    found: dict[str, float] = {}
    async for key in redis.scan_iter(match="*", count=1000):
        kind = _kind(key.decode())
        found[kind] = found.get(kind, 0) + (await redis.memory_usage(key, samples=0) or 0)
        if kind == "event log":
            found["events"] = found.get("events", 0) + await redis.xlen(key)
    await redis.aclose()
    return {kind: value / runs for kind, value in found.items()}


def bytes_per_run(args: argparse.Namespace) -> None:
    """Redis bytes per run, by kind of key (see the module's docstring)."""
    from cai_devstack.fixtures import running_stack

    with running_stack(
        Path(tempfile.mkdtemp(prefix="cai-tokenpath-")),
        assistants="- id: chat\n",
        with_retriever=False,
        llm_sim_args=["--token-delay-ms", f"{args.delay_ms:g}", "--reply-tokens", "200"],
    ) as stack:
        started = time.monotonic()
        per_run = asyncio.run(_bytes(stack, args.runs))
    total = sum(per_run.get(k, 0) for k in ("event log", "records", "checkpoints"))
    for kind, value in sorted(per_run.items()):
        print(f"{kind}: {value:,.0f}")
    print(
        f"per run (event log + records + checkpoints): {total:,.0f} bytes "
        f"({args.runs} runs in {time.monotonic() - started:.0f} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="cai_bench.tokenpath", description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["cpu", "bytes"])
    parser.add_argument("--tree", default="", help="run another commit's code (as BENCH_TREE)")
    parser.add_argument("--delay-ms", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--short", type=int, default=50)
    parser.add_argument("--long", type=int, default=250)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.tree:
        from cai_bench.__main__ import use_tree

        print(f"code: {use_tree(args.tree)}")
    if args.what == "cpu":
        cpu(args)
    else:
        args.runs = min(args.runs, 5)
        bytes_per_run(args)


if __name__ == "__main__":
    main()
