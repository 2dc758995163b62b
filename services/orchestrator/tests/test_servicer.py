"""The gRPC servicer over a real grpc.aio server and the engine: translation and error codes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import orjson
import pytest
from engine_support import Cluster, eventually

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub, add_OrchestratorServicer_to_server
from cai_common.runs import END, METADATA
from cai_devstack.procs import free_port
from cai_orchestrator.servicers.orchestrator import OrchestratorServicer


@pytest.fixture
async def stub(cluster: Cluster) -> AsyncIterator[tuple[OrchestratorStub, Cluster]]:
    replica = cluster.replica("grpc")
    await replica.start()
    engine = replica.engine
    graph = engine.worker.executor.graph
    servicer = OrchestratorServicer(
        engine.threads, engine.runs, engine.worker.executor.assistants, graph
    )
    server = grpc.aio.server()
    add_OrchestratorServicer_to_server(servicer, server)
    port = free_port()
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield OrchestratorStub(channel), cluster
    await server.stop(0)


def principal(cluster: Cluster) -> common_pb2.Principal:
    return common_pb2.Principal(tenant_id=cluster.tenant)


async def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code()


async def test_a_run_is_created_streamed_and_read_back(
    stub: tuple[OrchestratorStub, Cluster],
) -> None:
    orch, cluster = stub
    p = principal(cluster)
    thread = orjson.loads((await orch.CreateThread(pb.CreateThreadRequest(principal=p))).json)
    created = await orch.CreateRun(
        pb.CreateRunRequest(
            principal=p,
            thread_id=thread["thread_id"],
            assistant_id="chat",
            input_json=b'{"messages":[{"role":"user","content":"hi"}]}',
        )
    )
    run = orjson.loads(created.json)
    assert run["status"] == "pending" and run["thread_id"] == thread["thread_id"]
    cluster.gate.opened.set()
    names: list[str] = []
    ids: list[str] = []
    async for reply in orch.StreamRun(
        pb.StreamRunRequest(principal=p, thread_id=run["thread_id"], run_id=run["run_id"])
    ):
        names += [e.event for e in reply.events]
        ids += [e.id for e in reply.events]
    assert names[0] == METADATA and names[-1] == END
    # Resuming after an event replays exactly the rest.
    rest: list[str] = []
    async for reply in orch.StreamRun(
        pb.StreamRunRequest(principal=p, run_id=run["run_id"], after_event_id=ids[1])
    ):
        rest += [e.id for e in reply.events]
    assert rest == ids[2:]
    got = orjson.loads(
        (await orch.GetRun(pb.GetRunRequest(principal=p, run_id=run["run_id"]))).json
    )
    assert got["status"] == "success" and got["attempt"] == 1


async def test_errors_map_to_status_codes_with_messages(
    stub: tuple[OrchestratorStub, Cluster],
) -> None:
    orch, cluster = stub
    p = principal(cluster)
    assert (
        await code_of(orch.CreateThread(pb.CreateThreadRequest()))
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    bad_json = pb.CreateRunRequest(principal=p, assistant_id="chat", input_json=b"{nope")
    assert await code_of(orch.CreateRun(bad_json)) == grpc.StatusCode.INVALID_ARGUMENT
    no_thread = pb.CreateRunRequest(
        principal=p, thread_id="missing", assistant_id="chat", input_json=b"{}"
    )
    assert await code_of(orch.CreateRun(no_thread)) == grpc.StatusCode.NOT_FOUND
    no_assistant = pb.CreateRunRequest(principal=p, assistant_id="nobody", input_json=b"{}")
    assert await code_of(orch.CreateRun(no_assistant)) == grpc.StatusCode.NOT_FOUND
    thread = orjson.loads((await orch.CreateThread(pb.CreateThreadRequest(principal=p))).json)
    first = pb.CreateRunRequest(
        principal=p, thread_id=thread["thread_id"], assistant_id="chat", input_json=b"{}"
    )
    run = orjson.loads((await orch.CreateRun(first)).json)
    second = pb.CreateRunRequest(
        principal=p,
        thread_id=thread["thread_id"],
        assistant_id="chat",
        input_json=b"{}",
        multitask_strategy="reject",
    )
    assert await code_of(orch.CreateRun(second)) == grpc.StatusCode.FAILED_PRECONDITION
    # Ids Redis would refuse (a part beyond 64 bits) too: gRPC callers other than the gateway
    # must not get one into the replica's shared log read.
    for after in ("x-y", "99999999999999999999-0", "1-2-3"):
        bad_id = pb.StreamRunRequest(principal=p, run_id=run["run_id"], after_event_id=after)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in orch.StreamRun(bad_id):
                pass
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "event id" in str(
            err.value.details()
        )
    bad_action = pb.CancelRunRequest(principal=p, run_id=run["run_id"], action="explode")
    assert await code_of(orch.CancelRun(bad_action)) == grpc.StatusCode.INVALID_ARGUMENT
    other = common_pb2.Principal(tenant_id="someone-else")
    assert (
        await code_of(orch.GetRun(pb.GetRunRequest(principal=other, run_id=run["run_id"])))
        == grpc.StatusCode.NOT_FOUND
    )
    busy = pb.UpdateThreadStateRequest(
        principal=p, thread_id=thread["thread_id"], values_json=b"{}"
    )
    assert await code_of(orch.UpdateThreadState(busy)) == grpc.StatusCode.FAILED_PRECONDITION
    cluster.gate.opened.set()


async def test_cancel_with_wait_answers_with_the_final_status(
    stub: tuple[OrchestratorStub, Cluster],
) -> None:
    orch, cluster = stub
    p = principal(cluster)
    created = await orch.CreateRun(
        pb.CreateRunRequest(principal=p, assistant_id="chat", input_json=b'{"messages":[]}')
    )
    run = orjson.loads(created.json)

    async def entered() -> bool:
        return cluster.gate.entered >= 1

    await eventually(entered)
    reply = await orch.CancelRun(pb.CancelRunRequest(principal=p, run_id=run["run_id"], wait=True))
    assert orjson.loads(reply.json)["status"] == "interrupted"
