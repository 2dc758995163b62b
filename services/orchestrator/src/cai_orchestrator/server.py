"""Builds the orchestrator (Redis, checkpointer, graph, worker, gRPC) and serves until SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError

from cai.v1 import orchestrator_pb2_grpc
from cai_common.grpc_server import GrpcService
from cai_common.metrics import start_metrics_server
from cai_common.redis_client import resilient_redis
from cai_common.settings import redact_url
from cai_common.supervisor import HealthBoard
from cai_orchestrator import metrics
from cai_orchestrator.assistants import Assistants
from cai_orchestrator.checkpoint import open_checkpointer
from cai_orchestrator.config import Settings
from cai_orchestrator.engine import TAIL_BLOCK_MS, Engine
from cai_orchestrator.graph import Agent
from cai_orchestrator.llm import ModelFactory
from cai_orchestrator.queue import RunQueue
from cai_orchestrator.retrieval import RetrieverClient
from cai_orchestrator.servicers.orchestrator import OrchestratorServicer
from cai_orchestrator.store import RunStore
from cai_orchestrator.tailer import LogTailer
from cai_orchestrator.worker import Worker

log = logging.getLogger(__name__)

# Most of the shutdown grace kept back from the runs (cancelling a run, one XADD per run, the
# gRPC server's stop): enough for hundreds of runs.
HANDBACK_RESERVE_S = 5.0


def handback_reserve(grace_s: float) -> float:
    """Seconds of the shutdown grace kept for handing runs back, ending relays and stopping the
    server; runs get the rest to finish. A quarter, at most HANDBACK_RESERVE_S."""
    return min(HANDBACK_RESERVE_S, grace_s / 4)


async def _sample_queue(queue: RunQueue, interval_s: float = 5.0) -> None:
    """Keep the queue gauges current (the KEDA trigger reads the same lag from Redis)."""
    while True:
        try:
            stats = await queue.stats()
            metrics.QUEUE_LAG.set(stats["lag"])
            metrics.QUEUE_PENDING.set(stats["pending"])
        except (RedisError, OSError):
            pass  # health reports Redis; gauges keep their last value
        await asyncio.sleep(interval_s)


async def _watch_health(
    service: GrpcService,
    store: RunStore,
    worker: Worker,
    tailer: LogTailer,
    board: HealthBoard | None = None,
) -> None:
    """SERVING only while Redis answers, the worker reads the queue and the log tailer reads
    the event logs (without it, no stream of this replica gets events) — and, for one of
    several processes of a pod (`board`), while every other process of the pod says so too:
    a probe reaches one process, and must speak for the pod."""
    serving: bool | None = None
    while True:
        try:
            ok = await store.ping() and worker.ready.is_set() and tailer.healthy.is_set()
        except (RedisError, OSError):
            ok = False
        if board is not None:
            board.set(ok)
            ok = ok and board.all_serving()
        if ok != serving:
            await service.set_serving(ok)
            log.info("health changed", extra={"serving": ok})
            serving = ok
        await asyncio.sleep(0.5)


async def serve(settings: Settings) -> None:
    """Run the orchestrator until SIGTERM/SIGINT."""
    assistants = Assistants.load(settings.assistants_file)
    # Every run holds a connection now and then; stream handlers and loops need their own.
    redis = resilient_redis(
        settings.redis_url, max_connections=2 * settings.max_concurrent_runs + 50
    )
    # The tailer's XREAD and the cancel listener's pub/sub block: no 5 s read timeout for them.
    tail_redis = resilient_redis(
        settings.redis_url, max_connections=1, socket_timeout=TAIL_BLOCK_MS / 1000 + 10
    )
    pubsub_redis = resilient_redis(settings.redis_url, max_connections=2, socket_timeout=None)
    await RunStore(redis, settings.run_record_ttl_seconds).ping()  # fail early, and clearly
    log.info("redis connected", extra={"url": redact_url(settings.redis_url)})
    start_metrics_server(settings.metrics_port)

    checkpoint_url = settings.effective_checkpoint_url
    async with open_checkpointer(checkpoint_url, settings.thread_ttl_seconds) as checkpointer:
        retriever = RetrieverClient(
            settings.retriever_addr,
            tls=settings.grpc_tls(),
            server_name=settings.grpc_tls_server_name,
        )
        agent = Agent(ModelFactory(settings), assistants, retriever)
        agent.check_tools()
        graph = agent.build(checkpointer)
        engine = Engine.build(settings, redis, tail_redis, pubsub_redis, graph, assistants)
        service = GrpcService.from_settings("orchestrator", settings)
        servicer = OrchestratorServicer(engine.threads, engine.runs, assistants, graph)
        service.add(
            "cai.v1.Orchestrator",
            lambda s: orchestrator_pb2_grpc.add_OrchestratorServicer_to_server(servicer, s),
        )
        await engine.start()
        await service.start()
        service.install_signal_handlers()
        board = HealthBoard.for_worker()
        health = asyncio.create_task(
            _watch_health(service, engine.store, engine.worker, engine.tailer, board)
        )
        sampler = asyncio.create_task(_sample_queue(engine.queue))

        async def drain(deadline: float) -> None:
            """Within the one shutdown deadline: let runs finish, hand the rest back, then end
            the relays (their clients reconnect elsewhere and follow the handed-back runs)."""
            health.cancel()
            if board is not None:
                board.set(False)
            sampler.cancel()
            loop = asyncio.get_running_loop()
            reserve = handback_reserve(settings.shutdown_grace_seconds)
            await engine.worker.shutdown(
                grace_s=max(deadline - reserve - loop.time(), 0.0),
                handback_s=max(deadline - loop.time(), 0.0),
            )
            relays = servicer.end_relays()
            log.info("ended relays", extra={"relays": relays})

        try:
            await service.run(settings.shutdown_grace_seconds, drain)
        finally:
            health.cancel()
            await engine.tailer.stop()
            await engine.batcher.stop()
            await retriever.close()
            with contextlib.suppress(RedisError, OSError):
                await redis.aclose()
                await tail_redis.aclose()
                await pubsub_redis.aclose()
