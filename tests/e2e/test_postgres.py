"""Thread state and history after several runs with CHECKPOINT_URL=postgresql://."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import orjson
import pytest

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_devstack.fixtures import running_stack
from cai_devstack.postgres import create_database, drop_database
from cai_devstack.stack import Stack
from tests.e2e.support import ASSISTANTS

ME = common_pb2.Principal(tenant_id="pg")


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    url = create_database()
    try:
        with running_stack(
            tmp_path_factory.mktemp("pg"),
            timeout=120,
            assistants=ASSISTANTS,
            with_retriever=False,
            llm_sim_args=["--reply-tokens", "10"],
            service_env={"CHECKPOINT_URL": url},
        ) as stack:
            yield stack
    finally:
        drop_database(url)


async def test_state_and_history_after_several_runs_on_postgres(pg_stack: Stack) -> None:
    async with grpc.aio.insecure_channel(pg_stack.orchestrator_addr()) as channel:
        orch = OrchestratorStub(channel)
        tid = orjson.loads((await orch.CreateThread(pb.CreateThreadRequest(principal=ME))).json)[
            "thread_id"
        ]
        for question in ("first question", "second question", "third question"):
            body = orjson.dumps({"messages": [{"role": "user", "content": question}]})
            run = orjson.loads(
                (
                    await orch.CreateRun(
                        pb.CreateRunRequest(principal=ME, thread_id=tid, input_json=body)
                    )
                ).json
            )
            events = []
            async for reply in orch.StreamRun(
                pb.StreamRunRequest(principal=ME, thread_id=tid, run_id=run["run_id"])
            ):
                events += [e.event for e in reply.events]
            assert events[-1] == "end"
        state = orjson.loads(
            (await orch.GetThreadState(pb.GetThreadStateRequest(principal=ME, thread_id=tid))).json
        )
        messages = state["values"]["messages"]
        assert [m["type"] for m in messages] == ["human", "ai"] * 3
        assert [m["content"] for m in messages[::2]] == [
            "first question", "second question", "third question"
        ]  # fmt: skip
        history = orjson.loads(
            (
                await orch.GetThreadHistory(
                    pb.GetThreadHistoryRequest(principal=ME, thread_id=tid, limit=100)
                )
            ).json
        )
        sizes = [len(h["values"].get("messages", [])) for h in history]
        assert sizes[0] == 6 and sizes == sorted(sizes, reverse=True) and len(history) >= 9
        older = orjson.loads(
            (
                await orch.GetThreadHistory(
                    pb.GetThreadHistoryRequest(
                        principal=ME, thread_id=tid, limit=2,
                        before_checkpoint_id=history[0]["checkpoint"]["checkpoint_id"],
                    )
                )
            ).json
        )  # fmt: skip
        assert [h["checkpoint"] for h in older] == [h["checkpoint"] for h in history[1:3]]
        await orch.DeleteThread(pb.GetThreadRequest(principal=ME, thread_id=tid))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await orch.GetThreadState(pb.GetThreadStateRequest(principal=ME, thread_id=tid))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
