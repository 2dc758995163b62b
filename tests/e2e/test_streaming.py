"""The durable streaming path through real processes, with the official clients."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from httpx_sse import EventSource, aconnect_sse
from langgraph_sdk import get_client

from cai_common.runs import END, TERMINAL_EVENTS
from cai_devstack.stack import Stack
from tests.e2e.support import REPLY_TOKENS

QUESTION = {"messages": [{"role": "user", "content": "How does Cai resume a stream?"}]}


async def events_of(source: EventSource, limit: int | None = None) -> list[tuple[str, str, str]]:
    """(id, event, data) of real events, skipping heartbeats (httpx-sse yields them empty)."""
    out: list[tuple[str, str, str]] = []
    async for sse in source.aiter_sse():
        if sse.event == "message" and not sse.data:
            continue
        out.append((sse.id, sse.event, sse.data))
        if limit is not None and len(out) == limit:
            break
    return out


async def test_sdk_stream_delivers_every_token_in_order(gateway: str) -> None:
    client = get_client(url=gateway)
    thread = await client.threads.create()
    parts = [
        p
        async for p in client.runs.stream(
            thread["thread_id"], "chat", input=QUESTION, stream_mode=["messages-tuple", "values"]
        )
    ]
    events = [p.event for p in parts]
    assert events[0] == "metadata" and events[-1] == "end"
    # The stack's assistant does not retrieve: the run went straight to the model.
    assert [p.data["status"] for p in parts if p.event == "status"] == ["generating"]
    streamed = "".join(p.data[0]["content"] for p in parts if p.event == "messages")
    state = await client.threads.get_state(thread["thread_id"])
    messages = state["values"]["messages"]
    assert [m["type"] for m in messages] == ["human", "ai"]
    # Every token the model sent arrived, in order: the stream spells the stored answer exactly.
    assert streamed == messages[-1]["content"]
    assert len(streamed.split()) == REPLY_TOKENS
    final_values = [p.data for p in parts if p.event == "values"][-1]
    assert final_values["messages"][-1]["content"] == streamed


async def test_sse_ids_are_unique_and_increasing(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        thread = (await http.post("/threads", json={})).json()
        async with aconnect_sse(
            http, "POST", f"/threads/{thread['thread_id']}/runs/stream",
            json={"assistant_id": "chat", "input": QUESTION, "stream_mode": "messages-tuple"},
        ) as source:  # fmt: skip
            assert source.response.headers["location"].endswith("/stream")
            ids = [tuple(int(x) for x in i.split("-")) for i, _, _ in await events_of(source)]
        assert len(ids) == len(set(ids)) and ids == sorted(ids)


async def test_disconnect_and_resume_with_last_event_id_loses_and_repeats_nothing(
    gateway: str,
) -> None:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        thread = (await http.post("/threads", json={})).json()
        tid = thread["thread_id"]
        async with aconnect_sse(
            http, "POST", f"/threads/{tid}/runs/stream",
            json={"assistant_id": "chat", "input": QUESTION, "stream_mode": "messages-tuple"},
        ) as source:  # fmt: skip
            run_url = source.response.headers["content-location"]
            first = await events_of(source, limit=5)  # then the client drops the connection
        async with aconnect_sse(
            http, "GET", f"{run_url}/stream", headers={"Last-Event-ID": first[-1][0]}
        ) as source:
            rest = await events_of(source)
        assert rest[-1][1] == "end"
        # The whole log, replayed from the start once the run is over, is exactly first + rest.
        async with aconnect_sse(http, "GET", f"{run_url}/stream") as source:
            full = await events_of(source)
        assert first + rest == full
        run = (await http.get(run_url)).json()
        assert run["status"] == "success"


async def test_sdk_join_stream_resumes_from_last_event_id(gateway: str) -> None:
    client = get_client(url=gateway)
    tid = (await client.threads.create())["thread_id"]
    run = await client.runs.create(tid, "chat", input=QUESTION, stream_mode="messages-tuple")
    first = []
    joined = client.runs.join_stream(tid, run["run_id"])
    async for part in joined:
        first.append(part)
        if len(first) == 5:
            break
    await joined.aclose()  # the client drops the connection mid-stream
    assert first[-1].event not in TERMINAL_EVENTS and all(p.id for p in first)
    rest = [
        p async for p in client.runs.join_stream(tid, run["run_id"], last_event_id=first[-1].id)
    ]
    assert rest[-1].event == END
    # The whole log, replayed from the start once the run is over, is exactly first + rest.
    full = [p async for p in client.runs.join_stream(tid, run["run_id"])]
    assert first + rest == full
    assert (await client.runs.get(tid, run["run_id"]))["status"] == "success"


async def test_heartbeat_comments_keep_idle_streams_alive(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        thread = (await http.post("/threads", json={})).json()
        raw = b""
        async with http.stream(
            "POST", f"/threads/{thread['thread_id']}/runs/stream",
            json={"assistant_id": "chat", "input": QUESTION, "stream_mode": "values"},
        ) as response:  # fmt: skip
            async for chunk in response.aiter_bytes():
                raw += chunk
        # Only `values` events: the stream is idle while tokens are generated, so pings appear.
        assert b"\n: ping" in raw or raw.startswith(b": ping")
        assert b"event: end" in raw


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/threads/00000000-0000-0000-0000-000000000000", None, 404),
        ("GET", "/threads/00000000-0000-0000-0000-000000000000/state", None, 404),
        ("POST", "/threads/00000000-0000-0000-0000-000000000000/runs", {"input": QUESTION}, 404),
        ("POST", "/threads", {"thread_id": "not-a-uuid"}, 422),
        ("POST", "/threads", {"metadata": "not-an-object"}, 422),
    ],
)
async def test_bad_input_answers_problem_details(
    gateway: str, method: str, path: str, body: object, status: int
) -> None:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        response = await http.request(method, path, json=body)
    assert response.status_code == status
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status and problem["title"] and problem["detail"]
    assert "Traceback" not in response.text


async def test_malformed_json_unknown_run_and_bad_event_id(gateway: str) -> None:
    async with httpx.AsyncClient(base_url=gateway, timeout=30) as http:
        bad = await http.post(
            "/threads", content=b"{not json", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 422 and bad.json()["status"] == 422
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        missing = await http.get(f"/threads/{tid}/runs/00000000-0000-0000-0000-000000000000")
        assert missing.status_code == 404
        run = (
            await http.post(
                f"/threads/{tid}/runs", json={"assistant_id": "chat", "input": QUESTION}
            )
        ).json()
        resumed = await http.get(
            f"/threads/{tid}/runs/{run['run_id']}/stream", headers={"Last-Event-ID": "garbage"}
        )
        assert resumed.status_code == 422
        unsupported = await http.post(
            f"/threads/{tid}/runs", json={"input": QUESTION, "stream_mode": "debug"}
        )
        assert unsupported.status_code == 422 and "debug" in unsupported.json()["detail"]
        bad_command = await http.post(
            f"/threads/{tid}/runs", json={"command": {"resume": "x", "bogus": 1}}
        )
        assert bad_command.status_code == 422 and "bogus" in bad_command.json()["detail"]
        no_assistant = await http.post(
            f"/threads/{tid}/runs", json={"assistant_id": "nobody", "input": QUESTION}
        )
        assert no_assistant.status_code == 404


async def test_orchestrator_metrics_describe_the_runs(stack: Stack, gateway: str) -> None:
    client = get_client(url=gateway)
    thread = await client.threads.create()
    async for _ in client.runs.stream(
        thread["thread_id"], "chat", input=QUESTION, stream_mode="messages-tuple"
    ):
        pass
    port = stack.config.orchestrator_metrics_port

    def scrape() -> dict[str, float]:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        return {
            line.split(" ")[0]: float(line.split(" ")[1])
            for line in text.splitlines()
            if line.startswith("cai_")
        }

    # The worker's gauges settle just after the terminal event reaches the client.
    deadline = time.monotonic() + 10
    while (samples := scrape())["cai_runs_in_flight"] != 0 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert samples['cai_run_duration_seconds_count{status="success"}'] >= 1
    assert samples['cai_queue_wait_seconds_count{tier="standard"}'] >= 1
    assert samples['cai_time_to_first_token_seconds_count{where="model"}'] >= 1
    assert samples['cai_tokens_total{direction="out"}'] >= REPLY_TOKENS
    assert samples["cai_runs_in_flight"] == 0
    assert samples['cai_grpc_requests_total{code="OK",method="CreateRun"}'] >= 1
    assert "cai_queue_lag" in samples
