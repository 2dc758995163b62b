"""Helpers for engine tests: the run engine around a small graph of the tests' own."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.config import get_stream_writer
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.graph.state import CompiledStateGraph
from redis.asyncio import Redis

from cai_orchestrator.assistants import Assistant, Assistants
from cai_orchestrator.config import Settings
from cai_orchestrator.engine import Engine
from cai_orchestrator.records import NewRun, RunRecord


@dataclass
class Gate:
    """Holds every run of the test graph at its node until the test opens it."""

    opened: asyncio.Event = field(default_factory=asyncio.Event)
    entered: int = 0  # how many node executions started (a run executed twice counts twice)

    async def wait(self) -> None:
        self.entered += 1
        await self.opened.wait()


def gated_graph(gate: Gate, saver: InMemorySaver) -> CompiledStateGraph:
    """One node that says it is working, waits for the gate, then answers."""

    async def agent(state: MessagesState) -> dict[str, Any]:
        get_stream_writer()({"cai_event": "status", "status": "generating"})
        await gate.wait()
        return {"messages": [AIMessage(content="done", id=str(uuid.uuid4()))]}

    builder = StateGraph(MessagesState)
    builder.add_node("agent", agent)
    builder.add_edge(START, "agent")
    return builder.compile(checkpointer=saver)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Wait until `check()` holds, or fail."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@dataclass
class Replica:
    """One replica's engine, started and stopped by the test."""

    engine: Engine
    clients: list[Redis]
    started: bool = False

    async def start(self) -> None:
        await self.engine.start()
        self.started = True

    async def stop(self, grace_s: float = 0.0) -> None:
        if self.started:
            self.started = False
            await self.engine.stop(grace_s)


@dataclass
class Cluster:
    """Replicas sharing one Redis, one gate and one checkpointer (as pods share Redis)."""

    redis_url: str
    gate: Gate
    saver: InMemorySaver
    replicas: list[Replica] = field(default_factory=list)
    assistants: Assistants = field(default_factory=lambda: Assistants([Assistant(id="chat")]))
    tenant: str = field(default_factory=lambda: f"tenant-{uuid.uuid4().hex[:8]}")

    def replica(self, name: str, **settings: Any) -> Replica:
        values = {
            "redis_url": self.redis_url,
            "replica_id": f"{name}-{uuid.uuid4().hex[:6]}",
            "lease_seconds": 1.0,
            "max_attempts": 3,
            "coalesce_ms": 0.0,
            "stream_heartbeat_seconds": 0.5,
            **settings,
        }
        s = Settings(**values)
        clients = [Redis.from_url(self.redis_url) for _ in range(2)]
        clients.append(Redis.from_url(self.redis_url, socket_timeout=None))
        graph = gated_graph(self.gate, self.saver)
        engine = Engine.build(s, clients[0], clients[1], clients[2], graph, self.assistants)
        r = Replica(engine, clients)
        self.replicas.append(r)
        return r

    def new_run(self, thread_id: str = "", **kw: Any) -> NewRun:
        return NewRun(
            tenant=self.tenant,
            thread_id=thread_id,
            assistant_id="chat",
            kwargs={
                "input": {"messages": [{"role": "user", "content": "hi"}]},
                "stream_mode": ["values"],
            },
            metadata={},
            temporary=not thread_id,
            **kw,
        )

    async def run(self, replica: Replica, run_id: str, thread_id: str = "") -> RunRecord:
        found = await replica.engine.store.get_run(self.tenant, run_id, thread_id)
        assert found is not None
        return found

    async def events(self, replica: Replica, run: RunRecord) -> list[tuple[str, bytes]]:
        entries = await replica.engine.store.redis.xrange(run.ref.keys.events)
        return [(f[b"e"].decode(), f[b"d"]) for _, f in entries]
