"""Finding 1 (issue 14): one `Last-Event-ID` must not stall every stream of a replica.

An id with a part beyond 64 bits (`99999999999999999999-0`) used to pass the gateway's digits
check and become a cursor of the orchestrator replica's one shared XREAD; Redis refused that read
for every stream on it, so every other tenant's stream got only pings. Every route that takes the
header now answers a malformed id with a 422 problem, the orchestrator refuses it with
INVALID_ARGUMENT (for gRPC callers other than the gateway), and a log Redis refuses fails only
its own streams (services/orchestrator/tests/test_events.py).
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from httpx_sse import aconnect_sse

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_common.runs import END
from cai_devstack.stack import Stack
from cai_gateway.app import create_app
from cai_gateway.config import Settings
from tests.e2e.support import client, question
from tests.security.support import KEYS

BAD_IDS = [
    "99999999999999999999-0",  # passes a digits check; Redis refuses it
    "18446744073709551616-0",  # 2**64
    "0-18446744073709551616",
    "garbage",
    "1-2-3",
    "-1-0",
    "1--2",
    "５-0",  # a digit to str.isdigit, not to Redis (sent as UTF-8)
]


def streaming_routes() -> list[str]:
    """Every GET route whose OpenAPI operation takes a Last-Event-ID header (the gateway's own
    schema: the running gateway does not serve it without PUBLIC_DOCS)."""
    spec = create_app(Settings()).openapi()
    return sorted(
        path
        for path, ops in spec["paths"].items()
        if any(p["name"] == "Last-Event-ID" for p in ops.get("get", {}).get("parameters", []))
    )


@pytest.fixture(scope="module")
async def red_paths(sec: str) -> dict[str, str]:
    """Each route that takes Last-Event-ID, filled in with a real run of tenant red."""
    async with client(sec, KEYS.red) as http:
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        run = await http.post(
            f"/threads/{tid}/runs", json={"assistant_id": "chat", "input": question()}
        )
        task = await http.post("/chat", json={"message": "hi", "assistant_id": "chat"})
    run_id, task_id = run.json()["run_id"], task.json()["task_id"]
    return {
        "/threads/{thread_id}/runs/{run_id}/stream": f"/threads/{tid}/runs/{run_id}/stream",
        "/chat/{task_id}/stream": f"/chat/{task_id}/stream",
    }


async def test_every_route_that_takes_last_event_id_is_covered(
    sec: str, red_paths: dict[str, str]
) -> None:
    assert streaming_routes() == sorted(red_paths)


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_a_malformed_last_event_id_is_a_422_problem_on_every_route(
    sec: str, red_paths: dict[str, str], bad: str
) -> None:
    async with client(sec, KEYS.red) as http:
        for path in red_paths.values():
            answer = await http.get(path, headers={"Last-Event-ID": bad.encode()})
            assert answer.status_code == 422, (path, answer.text)
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert "Last-Event-ID" in answer.json()["detail"]
            # A well-formed id on the same route is a stream.
            async with http.stream("GET", path, headers={"Last-Event-ID": "0-0"}) as ok:
                assert ok.status_code == 200, path


async def test_an_id_redis_refuses_cannot_stall_another_tenants_stream(
    sec_stack: Stack, sec: str
) -> None:
    """Red streams a slow answer while blue sends the id straight to the orchestrator (as any
    gRPC caller could) and through the gateway: blue is refused, red's stream never stalls."""
    async with client(sec, KEYS.red) as red, client(sec, KEYS.blue) as blue:
        red_tid = (await red.post("/threads", json={})).json()["thread_id"]
        blue_tid = (await blue.post("/threads", json={})).json()["thread_id"]
        blue_run = (
            await blue.post(
                f"/threads/{blue_tid}/runs", json={"assistant_id": "chat", "input": question()}
            )
        ).json()
        body = {"assistant_id": "slow", "input": question(), "stream_mode": "messages-tuple"}
        async with aconnect_sse(red, "POST", f"/threads/{red_tid}/runs/stream", json=body) as src:
            events = src.aiter_sse()
            async with asyncio.timeout(30):
                async for sse in events:
                    if sse.event == "messages":
                        break  # red's answer is streaming
            await attack_directly(sec_stack, blue_tid, blue_run["run_id"])
            path = f"/threads/{blue_tid}/runs/{blue_run['run_id']}/stream"
            refused = await blue.get(path, headers={"Last-Event-ID": "99999999999999999999-0"})
            assert refused.status_code == 422
            # Red's answer goes on to its end (20 tokens, 200 ms apart), not just pings.
            names: list[str] = []
            async with asyncio.timeout(30):
                async for sse in events:
                    if sse.event != "message":
                        names.append(sse.event)
                    if sse.event == END:
                        break
    assert names.count("messages") >= 5 and names[-1] == END, names


async def attack_directly(stack: Stack, thread_id: str, run_id: str) -> None:
    """StreamRun on blue's own run with an id Redis refuses: INVALID_ARGUMENT, at once."""
    async with grpc.aio.insecure_channel(stack.orchestrator_addr(0)) as channel:
        call = OrchestratorStub(channel).StreamRun(
            pb.StreamRunRequest(
                principal=common_pb2.Principal(tenant_id="blue", subject="blue"),
                thread_id=thread_id,
                run_id=run_id,
                after_event_id="99999999999999999999-0",
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async with asyncio.timeout(10):
                await call.read()  # an accepted stream would answer with an empty reply
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "event id" in str(refused.value.details())
