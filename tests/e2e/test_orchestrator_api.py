"""The orchestrator's gRPC API against the real processes: threads, runs, assistants, tenants."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import orjson
import pytest

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_devstack.stack import Stack

ME = common_pb2.Principal(tenant_id="tenant-a")
OTHER = common_pb2.Principal(tenant_id="tenant-b")
HELLO = orjson.dumps({"messages": [{"role": "user", "content": "hello"}]})


@pytest.fixture
async def orch(stack: Stack) -> AsyncIterator[OrchestratorStub]:
    channel = grpc.aio.insecure_channel(stack.orchestrator_addr())
    yield OrchestratorStub(channel)
    await channel.close()


def body(reply: pb.JsonReply) -> object:
    return orjson.loads(reply.json)


async def run_to_end(orch: OrchestratorStub, thread_id: str, who=ME) -> dict[str, object]:
    run = body(
        await orch.CreateRun(
            pb.CreateRunRequest(principal=who, thread_id=thread_id, input_json=HELLO)
        )
    )
    assert isinstance(run, dict)
    events = []
    async for reply in orch.StreamRun(
        pb.StreamRunRequest(principal=who, thread_id=thread_id, run_id=str(run["run_id"]))
    ):
        events += [e.event for e in reply.events]
    assert events[-1] == "end"
    return run


async def new_thread(orch: OrchestratorStub, metadata: dict[str, object], who=ME) -> str:
    reply = await orch.CreateThread(
        pb.CreateThreadRequest(principal=who, metadata_json=orjson.dumps(metadata))
    )
    return str(body(reply)["thread_id"])  # type: ignore[index]


async def test_search_and_update_threads_by_metadata_within_a_tenant(
    orch: OrchestratorStub,
) -> None:
    tag = {"suite": "search", "n": 1}
    mine = await new_thread(orch, tag)
    await new_thread(orch, tag, who=OTHER)
    found = body(
        await orch.SearchThreads(
            pb.SearchThreadsRequest(principal=ME, metadata_json=orjson.dumps(tag), limit=50)
        )
    )
    assert [t["thread_id"] for t in found] == [mine]  # type: ignore[index]
    updated = body(
        await orch.UpdateThread(
            pb.UpdateThreadRequest(
                principal=ME, thread_id=mine, metadata_json=orjson.dumps({"n": 2, "x": "y"})
            )
        )
    )
    assert updated["metadata"] == {"suite": "search", "n": 2, "x": "y"}  # type: ignore[index]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await orch.UpdateThread(pb.UpdateThreadRequest(principal=OTHER, thread_id=mine))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_history_state_update_and_run_deletion(orch: OrchestratorStub) -> None:
    tid = await new_thread(orch, {})
    first = await run_to_end(orch, tid)
    await run_to_end(orch, tid)
    history = body(
        await orch.GetThreadHistory(pb.GetThreadHistoryRequest(principal=ME, thread_id=tid))
    )
    assert isinstance(history, list) and len(history) >= 4
    counts = [len(h["values"].get("messages", [])) for h in history]
    assert counts == sorted(counts, reverse=True) and counts[0] == 4  # newest first
    older = body(
        await orch.GetThreadHistory(
            pb.GetThreadHistoryRequest(
                principal=ME, thread_id=tid, limit=2,
                before_checkpoint_id=history[0]["checkpoint"]["checkpoint_id"],
            )
        )
    )  # fmt: skip
    assert [h["checkpoint"] for h in older] == [h["checkpoint"] for h in history[1:3]]
    note = {"messages": [{"role": "user", "content": "a note added by hand"}]}
    update = body(
        await orch.UpdateThreadState(
            pb.UpdateThreadStateRequest(
                principal=ME, thread_id=tid, values_json=orjson.dumps(note), as_node="agent"
            )
        )
    )
    assert update["checkpoint"]["checkpoint_id"]  # type: ignore[index]
    state = body(await orch.GetThreadState(pb.GetThreadStateRequest(principal=ME, thread_id=tid)))
    assert state["values"]["messages"][-1]["content"] == "a note added by hand"  # type: ignore[index]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await orch.UpdateThreadState(
            pb.UpdateThreadStateRequest(principal=ME, thread_id=tid, as_node="no-such-node")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    deleted = body(
        await orch.DeleteRun(
            pb.GetRunRequest(principal=ME, thread_id=tid, run_id=str(first["run_id"]))
        )
    )
    assert deleted == {"run_id": first["run_id"], "deleted": True}
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await orch.GetRun(
            pb.GetRunRequest(principal=ME, thread_id=tid, run_id=str(first["run_id"]))
        )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_delete_thread_removes_state_and_runs(orch: OrchestratorStub) -> None:
    tid = await new_thread(orch, {})
    run = await run_to_end(orch, tid)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await orch.DeleteThread(pb.GetThreadRequest(principal=OTHER, thread_id=tid))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    reply = body(await orch.DeleteThread(pb.GetThreadRequest(principal=ME, thread_id=tid)))
    assert reply == {"thread_id": tid, "deleted": True, "runs_deleted": 1}
    for call in (
        orch.GetThread(pb.GetThreadRequest(principal=ME, thread_id=tid)),
        orch.GetThreadState(pb.GetThreadStateRequest(principal=ME, thread_id=tid)),
        orch.GetRun(pb.GetRunRequest(principal=ME, run_id=str(run["run_id"]))),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_stateless_run_leaves_no_thread_behind(orch: OrchestratorStub) -> None:
    run = await run_to_end(orch, "")
    assert run["thread_id"] == run["run_id"]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await orch.GetThread(pb.GetThreadRequest(principal=ME, thread_id=str(run["thread_id"])))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    final = body(await orch.GetRun(pb.GetRunRequest(principal=ME, run_id=str(run["run_id"]))))
    assert final["status"] == "success"  # type: ignore[index]


async def test_assistants_search_get_and_schemas(orch: OrchestratorStub) -> None:
    found = body(await orch.SearchAssistants(pb.SearchAssistantsRequest(principal=ME)))
    assert [a["assistant_id"] for a in found] == ["chat"]  # type: ignore[index]
    chat = body(await orch.GetAssistant(pb.GetAssistantRequest(principal=ME, assistant_id="chat")))
    assert chat["graph_id"] == "agent" and chat["config"]["configurable"]["system_prompt"]  # type: ignore[index]
    schemas = body(
        await orch.GetAssistantSchemas(pb.GetAssistantRequest(principal=ME, assistant_id="chat"))
    )
    assert "messages" in schemas["input_schema"]["properties"]  # type: ignore[index]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await orch.GetAssistant(pb.GetAssistantRequest(principal=ME, assistant_id="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
