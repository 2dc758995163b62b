"""The replica's gRPC health tells the truth about its log tailer: while the tailer cannot read
the event logs, no stream of the replica gets events, so the replica is not SERVING."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from pathlib import Path

import grpc
from engine_support import Gate, eventually, gated_graph
from grpc_health.v1 import health_pb2, health_pb2_grpc
from langgraph.checkpoint.memory import InMemorySaver
from redis.asyncio import Redis

from cai_common.grpc_server import GrpcService
from cai_devstack.fixtures import start_redis
from cai_devstack.procs import Proc, free_port
from cai_orchestrator.assistants import Assistant, Assistants
from cai_orchestrator.config import Settings
from cai_orchestrator.engine import Engine
from cai_orchestrator.server import _watch_health

SERVING = health_pb2.HealthCheckResponse.SERVING


async def test_health_follows_the_log_tailer(redis_url: str, tmp_path: Path) -> None:
    # The tailer reads from a Redis of its own, which the test stops and starts again; the
    # store and the queue keep theirs, so only the tailer can be to blame.
    tail_proc, tail_url = start_redis(tmp_path, "tail", modules=False)
    settings = Settings(redis_url=redis_url, replica_id=f"health-{uuid.uuid4().hex[:6]}")
    clients = [
        Redis.from_url(redis_url),
        Redis.from_url(tail_url, socket_timeout=5),
        Redis.from_url(redis_url, socket_timeout=None),
    ]
    graph = gated_graph(Gate(), InMemorySaver())
    engine = Engine.build(
        settings, clients[0], clients[1], clients[2], graph, Assistants([Assistant(id="chat")])
    )
    service = GrpcService("orchestrator", free_port(), "127.0.0.1")
    await engine.start()
    await service.start()
    watcher = asyncio.create_task(
        _watch_health(service, engine.store, engine.worker, engine.tailer)
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    health = health_pb2_grpc.HealthStub(channel)

    async def serving(expected: bool) -> bool:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        return (reply.status == SERVING) == expected

    try:
        await eventually(lambda: serving(True), timeout=10)
        tail_proc.stop()
        await eventually(lambda: serving(False), timeout=15)
        assert await engine.store.ping()  # the store's Redis is fine all along
        tail_proc = Proc("tail", tail_proc.cmd, tail_proc.log_path, ready=tail_proc.ready)
        tail_proc.start()
        await eventually(lambda: serving(True), timeout=20)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await channel.close()
        await service.server.stop(0)
        await engine.stop(0)
        for client in clients:
            await client.aclose()
        tail_proc.stop()
