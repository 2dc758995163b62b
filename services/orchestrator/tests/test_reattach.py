"""A cancel-on-disconnect stream a server ended waits for its client: the run is cancelled only
if no stream re-joins it within the reattach grace (reattach.py), over real gRPC and Redis."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import grpc
import orjson
import pytest
from engine_support import Cluster, eventually
from redis.asyncio import Redis

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub, add_OrchestratorServicer_to_server
from cai_devstack.procs import free_port
from cai_orchestrator import keys
from cai_orchestrator.servicers.orchestrator import OrchestratorServicer

GRACE_S = 1.0


@pytest.fixture
async def stub(cluster: Cluster) -> AsyncIterator[OrchestratorStub]:
    replica = cluster.replica("grpc", reattach_grace_seconds=GRACE_S)
    await replica.start()
    engine = replica.engine
    servicer = OrchestratorServicer(
        engine.threads, engine.runs, engine.worker.executor.assistants, engine.worker.executor.graph
    )
    server = grpc.aio.server()
    add_OrchestratorServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield OrchestratorStub(channel)
    await server.stop(0)


async def start_and_drop(orch: OrchestratorStub, cluster: Cluster) -> tuple[str, float]:
    """A stateless run, streamed with cancel_on_disconnect until it executes, then the stream is
    dropped the way a gateway that stops drops it (the call is cancelled). Its id, and when."""
    p = common_pb2.Principal(tenant_id=cluster.tenant)
    created = await orch.CreateRun(
        pb.CreateRunRequest(principal=p, assistant_id="chat", input_json=b'{"messages":[]}')
    )
    run_id = orjson.loads(created.json)["run_id"]
    call = orch.StreamRun(
        pb.StreamRunRequest(principal=p, run_id=run_id, cancel_on_disconnect=True)
    )
    async for reply in call:
        if any(e.event == "status" for e in reply.events):
            break  # it executes (held at the gate)
    call.cancel()
    return run_id, time.monotonic()


async def status(orch: OrchestratorStub, cluster: Cluster, run_id: str) -> str:
    p = common_pb2.Principal(tenant_id=cluster.tenant)
    reply = await orch.GetRun(pb.GetRunRequest(principal=p, run_id=run_id))
    return str(orjson.loads(reply.json)["status"])


async def pending_cancel(redis_url: str, cluster: Cluster, run_id: str) -> bool:
    admin = Redis.from_url(redis_url)
    try:
        member = f"{cluster.tenant}\n{run_id}\n{run_id}"  # a stateless run's thread is its id
        return await admin.zscore(keys.REATTACH, member) is not None
    finally:
        await admin.aclose()


async def test_a_dropped_stream_is_not_a_cancel_and_a_rejoin_keeps_the_run(
    stub: OrchestratorStub, cluster: Cluster, redis_url: str
) -> None:
    run_id, _ = await start_and_drop(stub, cluster)
    await eventually(lambda: pending_cancel(redis_url, cluster, run_id))
    assert await status(stub, cluster, run_id) == "running"
    # The client reconnects (through any gateway) within the grace: the cancel is withdrawn.
    p = common_pb2.Principal(tenant_id=cluster.tenant)
    rejoined = stub.StreamRun(pb.StreamRunRequest(principal=p, run_id=run_id))
    await rejoined.read()  # accepted
    assert not await pending_cancel(redis_url, cluster, run_id)
    cluster.gate.opened.set()
    names: list[str] = []
    while (reply := await rejoined.read()) is not grpc.aio.EOF:
        names += [e.event for e in reply.events]  # type: ignore[union-attr]
    assert names[-1] == "end"
    assert await status(stub, cluster, run_id) == "success"


async def test_a_dropped_stream_nobody_rejoins_is_cancelled_after_the_grace(
    stub: OrchestratorStub, cluster: Cluster, redis_url: str
) -> None:
    run_id, dropped_at = await start_and_drop(stub, cluster)

    async def interrupted() -> bool:
        return await status(stub, cluster, run_id) == "interrupted"

    await eventually(interrupted, timeout=GRACE_S + 5)
    assert time.monotonic() - dropped_at >= GRACE_S * 0.9
    assert not await pending_cancel(redis_url, cluster, run_id)
