"""What a run costs in Redis, pinned: a change that adds commands to every run fails here.

A run is created on a new thread (`if_not_exists: create`) and streamed to its end the way the
gateway does it (CreateRun, then StreamRun), one at a time on a private Redis, with Redis's
MONITOR recording every command. Counted per run:

* `bookkeeping`: every command the engine sends (an EVALSHA is one), except the events the graph
  itself streams (their XADDs scale with the graph's output), the log tailer's XREADs (they scale
  with the events), the loops that run on a clock (reclaim, sweeps) and connection set-up. The
  queue read that delivers the job counts once per run; reads that time out idle do not.
* `in scripts`: the commands those scripts run inside Redis.
* `checkpointer`: the checkpointer's commands (the Redis saver, by durability mode).

docs/performance.md ("What changed") has the numbers before and after, and the full stack's.
"""

from __future__ import annotations

import asyncio
import collections
import re
import uuid
from pathlib import Path

import pytest
from engine_support import Cluster, Gate, eventually
from langgraph.checkpoint.memory import InMemorySaver
from redis.asyncio import Redis

from cai_common.runs import METADATA, RETRY, TERMINAL_EVENTS
from cai_devstack.fixtures import start_redis
from cai_orchestrator.assistants import Assistant, Assistants
from cai_orchestrator.checkpoint import open_checkpointer

RUNS = 8
# The run engine's commands per streamed run (bookkeeping, see above), and inside its scripts.
# Issue 16 added seven. Tenant quotas, two: the admission script before the record (ZSCORE,
# ZCARD, ZADD inside it) and the release (ZREM) after the terminal event. Fair dispatch, five:
# the append goes to the tenant's list (a script), the create reads the stream's lag (XINFO
# GROUPS) and, with nothing undelivered, moves the fairest run into the stream (a script, then
# XADD as before plus the ZREM that ends its feeding); ~17 commands inside those scripts.
BOOKKEEPING_PER_RUN = 22
IN_SCRIPTS_PER_RUN = 53
# The Redis checkpointer's commands per run of the one-step test graph, by durability mode.
CHECKPOINTER_PER_RUN = {"exit": 6, "async": 26, "sync": 26}

_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')
_LINE = re.compile(rb"^[\d.]+ \[\d+ ([^\]]*)\] (.*)$", re.S)
_LIFECYCLE = {e.encode() for e in (METADATA, RETRY, *TERMINAL_EVENTS)}
_SET_UP = {b"HELLO", b"CLIENT", b"AUTH", b"SELECT", b"PING"}
_CLOCKED = {(b"XPENDING", b"cai:runs:queue")} | {
    (b"ZRANGEBYSCORE", key)
    for key in (b"cai:runs:dispatching", b"cai:runs:reattach", b"cai:{sched}:feeding")
}


class Recorder:
    """Every command Redis runs while it records: (client, args), client "lua" inside scripts."""

    def __init__(self, url: str) -> None:
        self.client = Redis.from_url(url)
        self.commands: list[tuple[str, list[bytes]]] = []
        self._marker = f"cost-test-{uuid.uuid4().hex}".encode()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Recorder:
        self._monitor = self.client.monitor()
        await self._monitor.__aenter__()
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self._monitor.connection is not None
        while True:
            line = await self._monitor.connection.read_response()
            m = _LINE.match(line)
            if m is None:
                continue
            args = [a.replace(b'\\"', b'"') for a in _ARG.findall(m.group(2))]
            if args[-1:] == [self._marker]:
                return
            self.commands.append((m.group(1).decode(), args))

    async def __aexit__(self, *exc: object) -> None:
        async with asyncio.timeout(10):
            await self.client.echo(self._marker)
            assert self._task is not None
            await self._task
        await self._monitor.__aexit__()
        await self.client.aclose()


def _is_checkpointer(args: list[bytes]) -> bool:
    name, key = args[0].upper(), args[1] if len(args) > 1 else b""
    return name.startswith((b"JSON.", b"FT.")) or key.startswith((b"checkpoint", b"write_keys"))


def _is_event_batch(args: list[bytes]) -> bool:
    """An EVALSHA of one batch of a run's events (one key: the log; ARGV: marker, ttl, pairs)."""
    if args[0].upper() != b"EVALSHA" or len(args) < 4 or args[2] != b"1":
        return False
    return args[3].endswith(b":events") and not _LIFECYCLE & set(args[6::2])


def tally(commands: list[tuple[str, list[bytes]]], runs: int) -> dict[str, float]:
    """Per-run counts by kind (see the module docstring)."""
    checkpointer_clients = {c for c, args in commands if c != "lua" and _is_checkpointer(args)}
    counts: collections.Counter[str] = collections.Counter()
    names: collections.Counter[str] = collections.Counter()
    kind = ""
    for client, args in commands:
        name = args[0].upper()
        if client == "lua":
            if kind == "bookkeeping":
                counts["in scripts"] += 1
            continue
        key = args[1] if len(args) > 1 else b""
        if client in checkpointer_clients:
            kind = "checkpointer"
        elif name in _SET_UP or (name, key) in _CLOCKED or name in (b"XREAD", b"XREADGROUP"):
            kind = "not counted"
        elif name == b"XADD" and key.endswith(b":events") and not _LIFECYCLE & set(args[3:5]):
            kind = "graph events"
        elif _is_event_batch(args):
            kind = "graph events"  # lua.APPEND_EVENTS: the graph's events, written at most once
        else:
            kind = "bookkeeping"
            names[name.decode()] += 1
        counts[kind] += 1
    counts["bookkeeping"] += runs  # the queue read that delivers each job
    per_run = {k: v / runs for k, v in counts.items()}
    per_run["commands"] = dict(names)  # type: ignore[assignment]
    return per_run


async def streamed_runs(cluster: Cluster, name: str, runs: int, url: str) -> dict[str, float]:
    """Start a replica, warm it up with one run, then record `runs` streamed runs."""
    replica = cluster.replica(name)
    await replica.start()
    service, worker = replica.engine.runs, replica.engine.worker

    async def one() -> None:
        new = cluster.new_run(str(uuid.uuid4()), if_not_exists="create")
        run = await service.create(new)
        stream = await service.open_stream(run.tenant, run.thread_id, run.run_id, (0, 0))
        assert stream is not None
        events = [e for batch in [b async for b in stream.batches()] if batch for e in batch]
        await stream.close(cancel_unfinished=False)
        assert events[-1][1] == b"end", events

        async def acked() -> bool:
            return worker.in_flight == 0

        await eventually(acked)

    await one()  # connections opened, scripts loaded, the tenant's index trimmed
    async with Recorder(url) as recorder:
        for _ in range(runs):
            await one()
    await replica.stop()
    return tally(recorder.commands, runs)


@pytest.fixture
def private_redis(tmp_path: Path) -> str:
    """A Redis of this test's own (with the checkpointer's modules): nothing else talks to it."""
    proc, url = start_redis(tmp_path)
    yield url  # type: ignore[misc]
    proc.stop()


async def test_a_streamed_run_costs_few_redis_commands(private_redis: str) -> None:
    cluster = Cluster(private_redis, Gate(), InMemorySaver())
    cluster.gate.opened.set()
    cost = await streamed_runs(cluster, "cost", RUNS, private_redis)
    assert cost["bookkeeping"] <= BOOKKEEPING_PER_RUN, cost
    assert cost["in scripts"] <= IN_SCRIPTS_PER_RUN, cost
    assert cost.get("checkpointer", 0) == 0  # (the memory saver here)


@pytest.mark.parametrize("durability", ["exit", "async", "sync"])
async def test_the_redis_checkpointer_costs_few_commands_per_run(
    private_redis: str, durability: str
) -> None:
    async with open_checkpointer(private_redis, ttl_s=3600) as saver:
        assistants = Assistants([Assistant(id="chat", durability=durability)])  # type: ignore[arg-type]
        cluster = Cluster(private_redis, Gate(), saver, assistants=assistants)  # type: ignore[arg-type]
        cluster.gate.opened.set()
        cost = await streamed_runs(cluster, durability, RUNS, private_redis)
    # One command per run of slack: with `async` a run's last checkpoint write may still be in
    # flight when the next run (or the recording) starts, so a window sees 26 or 26.5 per run.
    assert cost["checkpointer"] <= CHECKPOINTER_PER_RUN[durability] + 1, cost
    assert cost["bookkeeping"] <= BOOKKEEPING_PER_RUN, cost
