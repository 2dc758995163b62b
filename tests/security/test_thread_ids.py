"""Finding 3: thread ids and idempotency keys are per tenant, and tenant names cannot collide.

Thread ids belong to the tenant: naming an id another tenant holds starts the caller's own
thread, exactly as a free id does (no 409, no other answer that would tell the id is taken).
Idempotency keys are per tenant too. Both rely on the tenant being part of every Redis key name,
which only holds if a tenant name cannot contain the separator: tenant `a:b` with thread `c`
would share keys with tenant `a` and thread `b:c`. So tenant names are checked where they enter:
the gateway's keys file and every orchestrator RPC (gRPC callers are not only the gateway).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import orjson
import pytest

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_devstack.procs import Proc, free_port
from cai_devstack.stack import Stack
from cai_gateway.auth import hash_key
from tests.e2e.support import eventually
from tests.security.support import KEYS


def client(base: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers={"X-Api-Key": key}, timeout=30)


def ask(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def human_turns(http: httpx.AsyncClient, thread_id: str) -> list[str]:
    state = (await http.get(f"/threads/{thread_id}/state")).json()
    messages = (state.get("values") or {}).get("messages") or []
    return [m["content"] for m in messages if m["type"] == "human"]


async def red_thread(sec: str) -> str:
    """A thread of tenant red with one finished turn ("red's secret turn")."""
    async with client(sec, KEYS.red) as red:
        tid = (await red.post("/threads", json={"metadata": {"owner": "red"}})).json()["thread_id"]
        body = {"assistant_id": "chat", "input": ask("red's secret turn")}
        waited = await red.post(f"/threads/{tid}/runs/wait", json=body)
        assert waited.status_code == 200, waited.text
        assert await human_turns(red, tid) == ["red's secret turn"]
    return str(tid)


async def wait_task(http: httpx.AsyncClient, task_id: str) -> None:
    async def ended() -> bool:
        status = (await http.get(f"/chat/{task_id}/status")).json()["status"]
        return status in ("done", "stopped", "error")

    await eventually(ended, what=f"task {task_id} ends")


# -- thread ids ----------------------------------------------------------------------------------


async def test_create_thread_with_an_id_another_tenant_holds_gives_the_caller_its_own(
    sec: str,
) -> None:
    taken = await red_thread(sec)
    free = str(uuid.uuid4())
    async with client(sec, KEYS.blue) as blue:
        answers = [await blue.post("/threads", json={"thread_id": t}) for t in (taken, free)]
        for response in answers:
            assert response.status_code == 200, response.text  # never 409 for red's id
        # The same shape for red's id as for a free one: nothing of red's.
        shapes = [sorted(r.json()) for r in answers]
        assert shapes[0] == shapes[1]
        assert answers[0].json()["metadata"] == {} and not answers[0].json()["values"]
        assert await human_turns(blue, taken) == []
        # Only a second create of blue's own id is a conflict.
        again = await blue.post("/threads", json={"thread_id": taken})
        assert again.status_code == 409, again.text
    async with client(sec, KEYS.red) as red:
        assert await human_turns(red, taken) == ["red's secret turn"]
        assert (await red.get(f"/threads/{taken}")).json()["metadata"] == {"owner": "red"}


async def start_in_thread(sec: str, way: str, thread_id: str, text: str) -> httpx.Response:
    """Start a turn of tenant blue in `thread_id` the way each dialect allows, ended."""
    async with client(sec, KEYS.blue) as blue:
        if way == "langgraph":
            body = {"assistant_id": "chat", "input": ask(text), "if_not_exists": "create"}
            return await blue.post(f"/threads/{thread_id}/runs/wait", json=body)
        if way == "task":
            started = await blue.post("/chat", json={"message": text, "thread_id": thread_id})
            if started.status_code == 200:
                await wait_task(blue, started.json()["task_id"])
            return started
        body = {"model": "chat", "messages": [{"role": "user", "content": text}]}
        return await blue.post(
            "/v1/chat/completions", json=body, headers={"X-Cai-Thread-Id": thread_id}
        )


@pytest.mark.parametrize("way", ["langgraph", "task", "openai"])
async def test_starting_a_thread_by_id_is_the_same_for_a_taken_and_a_free_id(
    sec: str, way: str
) -> None:
    """No oracle: `if_not_exists: create`, a task with a thread id and a completion with
    X-Cai-Thread-Id answer alike for an id another tenant holds and for a free one."""
    taken = await red_thread(sec)
    free = str(uuid.uuid4())
    on_taken = await start_in_thread(sec, way, taken, "blue's turn")
    on_free = await start_in_thread(sec, way, free, "blue's turn")
    assert on_taken.status_code == on_free.status_code == 200, (on_taken.text, on_free.text)
    assert sorted(on_taken.json()) == sorted(on_free.json())
    assert "red's secret turn" not in on_taken.text
    async with client(sec, KEYS.blue) as blue:
        assert await human_turns(blue, taken) == await human_turns(blue, free) == ["blue's turn"]
    async with client(sec, KEYS.red) as red:
        assert await human_turns(red, taken) == ["red's secret turn"]
        assert (await red.get(f"/threads/{free}")).status_code == 404


async def test_each_tenant_sees_only_its_own_threads(sec: str) -> None:
    taken = await red_thread(sec)
    async with client(sec, KEYS.blue) as blue:
        assert (await blue.get(f"/threads/{taken}")).status_code == 404
        found = await blue.post("/threads/search", json={"ids": [taken]})
        assert found.status_code == 200 and found.json() == []
        assert (await blue.post("/threads", json={"thread_id": taken})).status_code == 200
        mine = (await blue.post("/threads/search", json={"ids": [taken]})).json()
        assert [t["metadata"] for t in mine] == [{}]  # blue's own, never red's
    async with client(sec, KEYS.red) as red:
        theirs = (await red.post("/threads/search", json={"ids": [taken]})).json()
        assert [t["metadata"] for t in theirs] == [{"owner": "red"}]


# -- idempotency keys ----------------------------------------------------------------------------


async def test_two_tenants_with_the_same_idempotency_key_get_their_own_runs(sec: str) -> None:
    key = {"Idempotency-Key": f"shared-{uuid.uuid4()}"}
    body = {"assistant_id": "chat", "input": ask("idempotent")}
    thread = str(uuid.uuid4())
    runs: dict[str, dict[str, str]] = {}
    for name, api_key in (("red", KEYS.red), ("blue", KEYS.blue)):
        async with client(sec, api_key) as http:
            stateless = [(await http.post("/runs", json=body, headers=key)) for _ in range(2)]
            assert (await http.post("/threads", json={"thread_id": thread})).status_code == 200
            on_thread = [
                await http.post(f"/threads/{thread}/runs", json=body, headers=key) for _ in range(2)
            ]
            for response in (*stateless, *on_thread):
                assert response.status_code == 200, response.text
            # A retry within the tenant is the same run...
            assert stateless[0].json()["run_id"] == stateless[1].json()["run_id"]
            assert on_thread[0].json()["run_id"] == on_thread[1].json()["run_id"]
            runs[name] = {"stateless": stateless[0].json()["run_id"]}
            runs[name]["thread"] = on_thread[0].json()["run_id"]
    # ...and another tenant's identical key, on the same thread id, is a run of its own.
    assert runs["red"]["stateless"] != runs["blue"]["stateless"]
    assert runs["red"]["thread"] != runs["blue"]["thread"]
    async with client(sec, KEYS.blue) as blue:
        assert (await blue.get(f"/chat/{runs['red']['stateless']}/status")).status_code == 404
        listed = (await blue.get(f"/threads/{thread}/runs")).json()
        assert [r["run_id"] for r in listed] == [runs["blue"]["thread"]]


# -- tenant names --------------------------------------------------------------------------------


@pytest.fixture
async def orchestrator(sec_stack: Stack) -> AsyncIterator[OrchestratorStub]:
    channel = grpc.aio.insecure_channel(sec_stack.orchestrator_addr())
    yield OrchestratorStub(channel)
    await channel.close()


async def test_the_orchestrator_refuses_a_tenant_name_that_could_reach_another_tenants_keys(
    orchestrator: OrchestratorStub,
) -> None:
    """Tenant `a` held thread `b:c`; a gRPC caller naming tenant `a:b` and thread `c` once got
    it (the keys of both are `cai:{t:a:b:c}:…`). Now such a tenant name is INVALID_ARGUMENT, and
    so is such a thread id."""
    suffix = uuid.uuid4().hex[:8]
    owner = common_pb2.Principal(tenant_id=f"a{suffix}", subject="test")
    # Thread ids follow a rule of their own too: `b:c` (or `x}`) can no longer be made.
    for bad_id in ("b:c", "x}", "{t:a}", "a b", "a\nb", "-x", "x" * 129):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await orchestrator.CreateThread(
                pb.CreateThreadRequest(
                    principal=owner, thread_id=bad_id, metadata_json=orjson.dumps({"secret": 1})
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad_id
        assert "thread_id" in (refused.value.details() or ""), refused.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await orchestrator.SearchThreads(
            pb.SearchThreadsRequest(principal=owner, thread_ids=["ok", "b:c"], limit=10)
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for bad in (f"a{suffix}:b", "x.y", "who@where", "{t}", "-lead", "", "a" * 64):
        intruder = common_pb2.Principal(tenant_id=bad, subject="test")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await orchestrator.GetThread(pb.GetThreadRequest(principal=intruder, thread_id="c"))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
        assert "tenant" in (refused.value.details() or ""), refused.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await orchestrator.CreateRun(
                pb.CreateRunRequest(
                    principal=intruder, assistant_id="chat", input_json=orjson.dumps(ask("hi"))
                )
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad
    # The rule still admits ordinary names.
    ok = common_pb2.Principal(tenant_id=f"Tenant_{suffix}-2", subject="test")
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await orchestrator.GetThread(pb.GetThreadRequest(principal=ok, thread_id="c"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("tenant", ["a:b", "acme.eu", "me@acme"])
def test_a_keys_file_with_an_unsafe_tenant_name_stops_the_gateway_with_the_rule(
    sec_stack: Stack, tmp_path: Path, tenant: str
) -> None:
    keys_file = tmp_path / "api-keys.yaml"
    keys_file.write_text(
        f'keys:\n  - {{id: k1, tenant: "{tenant}", sha256: "{hash_key("some-key-0123456789")}"}}\n'
    )
    template = sec_stack.gateway_proc(0)
    port = free_port()
    proc = Proc(
        "gateway-bad-tenant",
        template.cmd,
        tmp_path / "gateway.log",
        env={
            **template.env,
            "API_KEYS_FILE": str(keys_file),
            "GATEWAY_PORT": str(port),
            "GATEWAY_METRICS_PORT": str(free_port()),
        },
    ).start()
    try:
        assert proc.popen is not None
        returncode = proc.popen.wait(timeout=60)
    finally:
        proc.stop()
    log = proc.log_path.read_text(errors="replace")
    assert returncode != 0, log
    assert "keys.0.tenant" in log and "a tenant name is 1 to 63 letters" in log, log
