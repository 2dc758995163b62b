"""Finding 10: internal details never reach clients; an error id leads to them in the log.

When a run fails, clients get a kind (`model_error`), a fixed message and an `error_id`: in the
run's `error` event, its record, `/runs/wait`, chat completions (streamed or not) and the task
API. The model endpoint's error body, its address and exception names stay in the orchestrator's
log, on the JSON line that carries the same `error_id`. The same holds for a failing tool, whose
error message stays in the thread's state.

The `broken` assistant's model calls fail with llm-sim's 500, whose body says "llm-sim: injected
fault" with code `llm_sim_injected_fault`; the `leaky-tool` assistant's tool raises with a
database address in its message.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from httpx_sse import aconnect_sse
from openai import AsyncOpenAI

from cai_devstack.stack import Stack
from tests.e2e.support import eventually
from tests.security.leaky_tools import INTERNAL_DETAIL
from tests.security.support import KEYS

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def client(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers={"X-Api-Key": KEYS.red}, timeout=30)


def leaks(stack: Stack) -> list[str]:
    """What no client may see of the model's failure: its body, its address, SDK internals."""
    return [
        "llm-sim",
        "injected fault",
        "llm_sim_injected_fault",
        f"127.0.0.1:{stack.config.llm_sim_port}",
        "Error code: 500",  # the SDK's text for the model's answer
        "InternalServerError",
        "Traceback",
    ]


def assert_clean(stack: Stack, text: str) -> None:
    for leak in leaks(stack):
        assert leak not in text, (leak, text)


def logged(stack: Stack, error_id: str) -> list[dict[str, Any]]:
    """The orchestrator's JSON log lines that carry `error_id`."""
    log = Path(stack.procs["orchestrator"].log_path).read_text(errors="replace")
    lines = []
    for line in log.splitlines():
        if error_id in line:
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return [entry for entry in lines if entry.get("error_id") == error_id]


async def assert_logged_with_details(stack: Stack, error_id: str, detail: str) -> None:
    """The error id names exactly one log line, and that line has the details."""
    await eventually(lambda: logged(stack, error_id), what=f"error id {error_id} in the log")
    (entry,) = logged(stack, error_id)
    assert detail in json.dumps(entry), json.dumps(entry)


def ask(text: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": text}]}


async def test_a_failed_run_shows_kind_message_and_error_id_never_the_upstream_body(
    sec_stack: Stack, sec: str
) -> None:
    async with client(sec) as http:
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        body = {"assistant_id": "broken", "input": ask("Fail now?"), "stream_mode": ["values"]}
        events: list[tuple[str, str]] = []
        async with aconnect_sse(http, "POST", f"/threads/{tid}/runs/stream", json=body) as source:
            async for message in source.aiter_sse():
                events.append((message.event, message.data))
        name, data = events[-1]
        assert name == "error"
        error = orjson.loads(data)
        assert set(error) == {"error", "message", "error_id"}, error
        assert error["error"] == "model_error"
        assert error["message"] == "The model answered with an error (status 500)"
        assert UUID.match(error["error_id"])
        assert_clean(sec_stack, data)

        run_id = next(orjson.loads(d)["run_id"] for e, d in events if e == "metadata")
        record = (await http.get(f"/threads/{tid}/runs/{run_id}")).json()
        assert record["status"] == "error"
        assert error["error_id"] in record["error"]
        assert_clean(sec_stack, orjson.dumps(record).decode())

        waited = await http.post(f"/threads/{tid}/runs/wait", json=body)
        assert waited.status_code == 200
        assert waited.json()["__error__"]["error"] == "model_error"
        assert_clean(sec_stack, waited.text)
        second = waited.json()["__error__"]["error_id"]
    await assert_logged_with_details(
        sec_stack, error["error_id"], "llm-sim: injected fault (HTTP 500)"
    )
    await assert_logged_with_details(sec_stack, second, "llm-sim: injected fault (HTTP 500)")
    assert second != error["error_id"]


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failed_chat_completion_carries_an_error_id_and_no_upstream_body(
    sec_stack: Stack, sec: str, stream: bool
) -> None:
    oai = AsyncOpenAI(base_url=f"{sec}/v1", api_key=KEYS.red, max_retries=0)
    messages: Any = [{"role": "user", "content": f"Fail {uuid.uuid4()}?"}]
    try:
        with pytest.raises(openai.APIError) as raised:
            if stream:
                chunks = await oai.chat.completions.create(
                    model="broken", messages=messages, stream=True
                )
                async for _ in chunks:
                    pass
            else:
                await oai.chat.completions.create(model="broken", messages=messages)
    finally:
        await oai.close()
    error = raised.value
    assert_clean(sec_stack, f"{error.message} {orjson.dumps(error.body).decode()}")
    found = re.search(r"error id ([0-9a-f-]{36})", error.message)
    assert found, error.message
    if not stream:
        assert isinstance(error, openai.APIStatusError) and error.status_code == 502
        assert error.response.json()["error_id"] == found.group(1)
        assert_clean(sec_stack, error.response.text)
    await assert_logged_with_details(
        sec_stack, found.group(1), "llm-sim: injected fault (HTTP 500)"
    )


async def test_a_failed_task_carries_an_error_id_and_no_upstream_body(
    sec_stack: Stack, sec: str
) -> None:
    async with client(sec) as http:
        started = await http.post("/chat", json={"message": "Fail?", "assistant_id": "broken"})
        task_id = started.json()["task_id"]
        events = []
        async with aconnect_sse(http, "GET", f"/chat/{task_id}/stream") as source:
            async for message in source.aiter_sse():
                if message.data:
                    events.append(orjson.loads(message.data))
        status = (await http.get(f"/chat/{task_id}/status")).json()
    last = events[-1]
    assert last["type"] == "error" and last["data"]["error"] == "model_error", last
    error_id = last["data"]["error_id"]
    assert status["status"] == "error" and error_id in status["error"]
    assert_clean(sec_stack, orjson.dumps(events).decode() + orjson.dumps(status).decode())
    await assert_logged_with_details(sec_stack, error_id, "llm-sim: injected fault (HTTP 500)")


async def test_a_failing_tool_leaves_an_error_id_in_the_thread_not_its_exception(
    sec_stack: Stack, sec: str
) -> None:
    async with client(sec) as http:
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        body = {"assistant_id": "leaky-tool", "input": ask("How many? [[tool:inventory {}]]")}
        waited = await http.post(f"/threads/{tid}/runs/wait", json=body)
        assert waited.status_code == 200 and "__error__" not in waited.json(), waited.text
        state = (await http.get(f"/threads/{tid}/state")).json()
    (tool_message,) = [m for m in state["values"]["messages"] if m["type"] == "tool"]
    assert "inventory-db" not in orjson.dumps(state).decode()
    assert "ConnectionError" not in orjson.dumps(state).decode()
    found = re.search(r"error id ([0-9a-f-]{36})", tool_message["content"])
    assert found, tool_message
    await assert_logged_with_details(sec_stack, found.group(1), INTERNAL_DETAIL)
