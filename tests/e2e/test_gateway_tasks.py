"""The task API (POST /chat, stream, stop, status) with plain httpx and httpx-sse."""

from __future__ import annotations

import uuid

import httpx
import orjson
from httpx_sse import aconnect_sse
from langgraph_sdk import get_client

from tests.e2e.support import GATEWAY_REPLY_TOKENS, KEYS, client, eventually

TaskEvent = tuple[str, str, object]  # (id, type, data)


async def task_events(
    http: httpx.AsyncClient,
    task_id: str,
    last_event_id: str | None = None,
    stop_after: int | None = None,
) -> list[TaskEvent]:
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    out: list[TaskEvent] = []
    async with aconnect_sse(http, "GET", f"/chat/{task_id}/stream", headers=headers) as source:
        assert source.response.status_code == 200
        async for sse in source.aiter_sse():
            if not sse.data:
                continue  # heartbeat
            event = orjson.loads(sse.data)
            out.append((sse.id, event["type"], event["data"]))
            if stop_after is not None and len(out) >= stop_after:
                break
    return out


def tokens(events: list[TaskEvent]) -> str:
    return "".join(str(d) for _, kind, d in events if kind == "token")


async def test_a_task_streams_tokens_then_done(gw: str) -> None:
    async with client(gw) as http:
        started = await http.post("/chat", json={"message": "How does Cai resume a stream?"})
        assert started.status_code == 200
        body = started.json()
        assert body["status"] == "started" and body["thread_id"] is None
        events = await task_events(http, body["task_id"])
        kinds = [k for _, k, _ in events]
        assert kinds[-1] == "done" and kinds.count("done") == 1
        assert "status" in kinds  # "generating" and friends reach the client
        assert len(tokens(events).split()) == GATEWAY_REPLY_TOKENS
        ids = [tuple(int(x) for x in i.split("-")) for i, _, _ in events]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        status = (await http.get(f"/chat/{body['task_id']}/status")).json()
        assert status["status"] == "done" and status["task_id"] == body["task_id"]


async def test_last_event_id_resumes_without_loss_or_repeats(gw: str) -> None:
    async with client(gw) as http:
        task_id = (await http.post("/chat", json={"message": "hi"})).json()["task_id"]
        first = await task_events(http, task_id, stop_after=5)
        rest = await task_events(http, task_id, last_event_id=first[-1][0])
        full = await task_events(http, task_id)
        assert first + rest == full and full[-1][1] == "done"


async def test_stop_ends_the_stream_with_stopped(gw: str) -> None:
    async with client(gw) as http:
        task_id = (await http.post("/chat", json={"message": "hi", "assistant_id": "slow"})).json()[
            "task_id"
        ]
        seen: list[TaskEvent] = []
        async with aconnect_sse(http, "GET", f"/chat/{task_id}/stream") as source:
            async for sse in source.aiter_sse():
                if not sse.data:
                    continue
                event = orjson.loads(sse.data)
                seen.append((sse.id, event["type"], event["data"]))
                if event["type"] == "token" and len(seen) == 3:
                    stopped = await http.post(f"/chat/{task_id}/stop")
                    assert stopped.status_code == 200
                    assert stopped.json() == {**stopped.json(), "task_id": task_id}
                    assert stopped.json()["status"] == "stopped"
        kinds = [k for _, k, _ in seen]
        assert kinds[-1] == "stopped" and "done" not in kinds
        assert len(tokens(seen).split()) < GATEWAY_REPLY_TOKENS  # the answer was cut short
        assert (await http.get(f"/chat/{task_id}/status")).json()["status"] == "stopped"
        # Stopping a finished task changes nothing.
        again = await http.post(f"/chat/{task_id}/stop")
        assert again.json()["status"] == "stopped"


async def test_history_and_threads(gw: str) -> None:
    async with client(gw) as http:
        history = [
            {"role": "user", "content": "My name is Ada."},
            {"role": "assistant", "content": "Hello Ada."},
        ]
        task = (
            await http.post("/chat", json={"message": "Who am I?", "conversation_history": history})
        ).json()
        assert (await task_events(http, task["task_id"]))[-1][1] == "done"

        thread_id = str(uuid.uuid4())
        for message in ("first", "second"):
            task = (
                await http.post("/chat", json={"message": message, "thread_id": thread_id})
            ).json()
            assert task["thread_id"] == thread_id
            assert (await task_events(http, task["task_id"]))[-1][1] == "done"
        state = await get_client(url=gw, api_key=KEYS.alpha).threads.get_state(thread_id)
        humans = [m["content"] for m in state["values"]["messages"] if m["type"] == "human"]
        assert humans == ["first", "second"]


async def test_errors_unknown_and_foreign_tasks(gw: str) -> None:
    async with client(gw) as http:
        failed = (await http.post("/chat", json={"message": "hi", "assistant_id": "broken"})).json()
        events = await task_events(http, failed["task_id"])
        assert events[-1][1] == "error" and events[-1][2]["message"]  # type: ignore[index]

        async def errored() -> bool:
            status = (await http.get(f"/chat/{failed['task_id']}/status")).json()
            return bool(status["status"] == "error" and status["error"])

        await eventually(errored)
        missing = str(uuid.uuid4())
        for method, path in (
            ("GET", f"/chat/{missing}/status"),
            ("GET", f"/chat/{missing}/stream"),
            ("POST", f"/chat/{missing}/stop"),
        ):
            assert (await http.request(method, path)).status_code == 404
        assert (await http.post("/chat", json={"message": ""})).status_code == 422
    async with client(gw, KEYS.beta) as other:
        for method, path in (
            ("GET", f"/chat/{failed['task_id']}/status"),
            ("GET", f"/chat/{failed['task_id']}/stream"),
            ("POST", f"/chat/{failed['task_id']}/stop"),
        ):
            response = await other.request(method, path)
            assert response.status_code == 404, (method, path)
