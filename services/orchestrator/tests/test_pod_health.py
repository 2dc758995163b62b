"""With several processes in a pod (ORCHESTRATOR_PROCESSES), each one's gRPC health speaks for
the pod: a probe reaches whichever process the kernel picks, so each says SERVING only while
every process of the pod says it is ready (cai_common.supervisor.HealthBoard)."""

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
from cai_common.supervisor import HealthBoard, clear_slot
from cai_devstack.procs import free_port
from cai_orchestrator.assistants import Assistant, Assistants
from cai_orchestrator.config import Settings
from cai_orchestrator.engine import Engine
from cai_orchestrator.server import _watch_health

SERVING = health_pb2.HealthCheckResponse.SERVING


async def test_a_process_is_serving_only_while_every_process_of_the_pod_is(
    redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(redis_url=redis_url, replica_id=f"pod-{uuid.uuid4().hex[:6]}")
    clients = [Redis.from_url(redis_url, socket_timeout=t) for t in (5, 5, None)]
    graph = gated_graph(Gate(), InMemorySaver())
    engine = Engine.build(
        settings, clients[0], clients[1], clients[2], graph, Assistants([Assistant(id="chat")])
    )
    path = HealthBoard.create(tmp_path, 2)
    ours, sibling = HealthBoard(path, 0), HealthBoard(path, 1)
    service = GrpcService("orchestrator", free_port(), "127.0.0.1")
    await engine.start()
    await service.start()
    watcher = asyncio.create_task(
        _watch_health(service, engine.store, engine.worker, engine.tailer, ours)
    )
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{service.port}")
    health = health_pb2_grpc.HealthStub(channel)

    async def serving(expected: bool) -> bool:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        return (reply.status == SERVING) == expected

    async def on_board() -> bool:
        return path.read_bytes() == b"\x01\x00"

    try:
        # Ready itself, it says so on the board, but the pod is not ready until the sibling is.
        await eventually(on_board, timeout=10)
        assert await serving(False)
        sibling.set(True)
        await eventually(lambda: serving(True), timeout=5)
        clear_slot(path, 1)  # the sibling died (the supervisor clears its slot)
        await eventually(lambda: serving(False), timeout=5)
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await channel.close()
        await service.server.stop(0)
        await engine.stop(0)
        for client in clients:
            await client.aclose()
