"""Promises of docs/api.md and docs/reliability.md that no other test checked, on one stack.

Real processes (Redis, llm-sim, one orchestrator, one gateway with an API keys file and two
tenants), official clients, nothing mocked but the model. Every observation goes through the
HTTP API, llm-sim's request log or the processes themselves, never through Redis keys.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import aconnect_sse
from openai import AsyncOpenAI

from cai_devstack.fixtures import running_stack
from cai_devstack.procs import Proc, free_port
from cai_devstack.stack import Stack
from tests.e2e.support import eventually, question

REPLY_TOKENS = 30
SLOW_TOKEN_MS = 100  # the `slow` assistant: 30 tokens, about 3 s per answer
LLM_MAX_RETRIES = 2
RETRY_AFTER_S = 2  # llm-sim's Retry-After on an injected 429
ASSISTANTS = f"""
- id: chat
- id: slow
  model_headers: {{X-Sim-Token-Delay-Ms: "{SLOW_TOKEN_MS}"}}
- id: fail-500
  model_headers: {{X-Sim-Fail-Status: "500"}}
- id: fail-429
  model_headers: {{X-Sim-Fail-Status: "429"}}
- id: open
  system_prompt: "You are the open persona."
  allow_system_prompt_override: true
"""
ALPHA = "promises-alpha-key-0123456789"  # tenant-a
BETA = "promises-beta-key-0123456789a"  # tenant-b
GAMMA = "promises-gamma-key-012345678"  # tenant-g: added and removed at run time
TERMINAL = ("end", "error", "cancelled", "timeout")
Event = tuple[str, str, str]  # (id, event, data)


def sha256(key: str) -> str:
    """The hash the keys file stores: `printf %s "$KEY" | sha256sum`."""
    return hashlib.sha256(key.encode()).hexdigest()


def keys_yaml(*entries: tuple[str, str, str]) -> str:
    """A keys file with (id, tenant, key) entries."""
    lines = ["keys:"]
    for key_id, tenant, key in entries:
        lines.append(f'  - {{id: {key_id}, tenant: {tenant}, sha256: "{sha256(key)}"}}')
    return "\n".join(lines) + "\n"


BASE_KEYS = (("alpha", "tenant-a", ALPHA), ("beta", "tenant-b", BETA))


@pytest.fixture(scope="module")
def api_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One orchestrator and one gateway with API keys (no anonymous access) and fault personas."""
    run_dir = tmp_path_factory.mktemp("promises-api")
    (run_dir / "api-keys.yaml").write_text(keys_yaml(*BASE_KEYS))
    (run_dir / "assistants.yaml").write_text(ASSISTANTS)
    with running_stack(
        run_dir,
        timeout=180,
        with_retriever=False,
        allow_anonymous=False,
        llm_sim_args=[
            "--token-delay-ms", "5",
            "--reply-tokens", str(REPLY_TOKENS),
            "--retry-after", str(RETRY_AFTER_S),
        ],
        service_env={
            "API_KEYS_FILE": str(run_dir / "api-keys.yaml"),
            "API_KEYS_RELOAD_SECONDS": "0.2",
            "ASSISTANTS_FILE": str(run_dir / "assistants.yaml"),
            "SSE_PING_SECONDS": "0.2",
            "RATE_LIMIT_PER_SECOND": "0",  # the 100-cancel test sends hundreds of requests
            "LLM_MAX_RETRIES": str(LLM_MAX_RETRIES),
            "SHUTDOWN_GRACE_SECONDS": "1",
        },
    ) as stack:  # fmt: skip
        yield stack


@pytest.fixture(scope="module")
def gw(api_stack: Stack) -> str:
    return api_stack.gateway_url()


def client(base: str, key: str = ALPHA) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, headers={"X-Api-Key": key}, timeout=60)


async def sse(
    http: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    stop: Callable[[Event], bool] | None = None,
    **kwargs: Any,
) -> list[Event]:
    """The SSE events of a response (heartbeats skipped), until it ends or `stop` says so."""
    events: list[Event] = []
    async with aconnect_sse(http, method, url, **kwargs) as source:
        if source.response.status_code != 200:
            body = (await source.response.aread()).decode(errors="replace")
            raise AssertionError(f"{method} {url}: {source.response.status_code} {body}")
        async for message in source.aiter_sse():
            if not message.data:
                continue
            event = (message.id, message.event, message.data)
            events.append(event)
            if stop is not None and stop(event):
                break
    return events


async def run_events(http: httpx.AsyncClient, tid: str, run_id: str) -> list[Event]:
    """A finished run's whole event log, replayed through the join stream."""
    return await sse(http, "GET", f"/threads/{tid}/runs/{run_id}/stream")


async def new_thread(http: httpx.AsyncClient) -> str:
    response = await http.post("/threads", json={})
    assert response.status_code == 200, response.text
    return str(response.json()["thread_id"])


async def start_run(http: httpx.AsyncClient, tid: str, assistant: str = "slow") -> str:
    body = {"assistant_id": assistant, "input": question(), "stream_mode": "messages-tuple"}
    response = await http.post(f"/threads/{tid}/runs", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["run_id"])


async def run_status(http: httpx.AsyncClient, tid: str, run_id: str) -> str:
    response = await http.get(f"/threads/{tid}/runs/{run_id}")
    assert response.status_code == 200, response.text
    return str(response.json()["status"])


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == status and response.json()["detail"]


async def sim_requests(stack: Stack, marker: str) -> list[dict[str, Any]]:
    """The chat requests llm-sim received whose messages mention `marker`, oldest first."""
    async with httpx.AsyncClient(timeout=30) as http:
        recorded = (await http.get(f"{stack.llm_sim_url}/v1/sim/requests")).json()["data"]
    return [r for r in recorded if marker in orjson.dumps(r["messages"]).decode()]


# -- 1. cancellation is never lost -----------------------------------------------------------------


async def test_100_cancels_right_after_start_all_end_interrupted(gw: str) -> None:
    """docs/reliability.md: "100 back-to-back cancels right after start: 100 `interrupted`"."""
    gate = asyncio.Semaphore(4)

    async def create_and_cancel(http: httpx.AsyncClient) -> tuple[str, str, list[str]]:
        async with gate:
            tid = await new_thread(http)
            run_id = await start_run(http, tid)  # about 3 s of tokens: a cancel always lands first
            cancelled = await http.post(
                f"/threads/{tid}/runs/{run_id}/cancel", params={"wait": "true"}
            )
            assert cancelled.status_code == 200, cancelled.text
            events = await run_events(http, tid, run_id)
            final = await run_status(http, tid, run_id)
            return run_id, final, [name for _, name, _ in events if name in TERMINAL]

    async with client(gw) as http:
        results = await asyncio.gather(*(create_and_cancel(http) for _ in range(100)))
    not_interrupted = [(r, s) for r, s, _ in results if s != "interrupted"]
    assert not not_interrupted, f"{len(not_interrupted)} of 100 cancels lost: {not_interrupted}"
    wrong_ends = [(r, t) for r, _, t in results if t != ["cancelled"]]
    assert not wrong_ends, f"runs without exactly one `cancelled` terminal event: {wrong_ends}"


# -- 3. Idempotency-Key per tenant -----------------------------------------------------------------


async def test_idempotency_key_returns_the_same_run_per_tenant_only(gw: str) -> None:
    """docs/api.md: "An `Idempotency-Key` header makes creation idempotent per tenant"."""
    key = {"Idempotency-Key": f"promise-{uuid.uuid4()}"}
    body = {"assistant_id": "chat", "input": question()}
    async with client(gw, ALPHA) as alpha, client(gw, BETA) as beta:
        first = await alpha.post("/runs", json=body, headers=key)
        retried = await alpha.post("/runs", json=body, headers=key)
        other_tenant = await beta.post("/runs", json=body, headers=key)
        without_key = await alpha.post("/runs", json=body)
        for response in (first, retried, other_tenant, without_key):
            assert response.status_code == 200, response.text
        run_a, run_b = first.json()["run_id"], other_tenant.json()["run_id"]
        assert retried.json()["run_id"] == run_a  # a retry returns the same run
        assert run_b != run_a  # another tenant's identical key creates its own run
        assert without_key.json()["run_id"] != run_a
        # Each run belongs to its own tenant: neither sees the other's.
        assert (await beta.get(f"/chat/{run_a}/status")).status_code == 404
        assert (await alpha.get(f"/chat/{run_b}/status")).status_code == 404
        assert (await beta.get(f"/chat/{run_b}/status")).status_code == 200

        # On a thread: a retried create is one run, not a second one queued behind the first.
        tid = await new_thread(alpha)
        thread_key = {"Idempotency-Key": f"promise-{uuid.uuid4()}"}
        once = await alpha.post(f"/threads/{tid}/runs", json=body, headers=thread_key)
        twice = await alpha.post(f"/threads/{tid}/runs", json=body, headers=thread_key)
        assert once.status_code == twice.status_code == 200
        assert once.json()["run_id"] == twice.json()["run_id"]
        runs = (await alpha.get(f"/threads/{tid}/runs")).json()
        assert [r["run_id"] for r in runs] == [once.json()["run_id"]]


# -- 4. DELETE of a thread with an active run ------------------------------------------------------


async def test_deleting_a_thread_cancels_its_active_run_and_leaves_nothing(gw: str) -> None:
    """docs/api.md: DELETE /threads/{id} deletes the thread, its checkpoints and its runs (an
    active run is cancelled first) → 204."""
    async with client(gw) as http:
        tid = await new_thread(http)
        run_id = await start_run(http, tid)
        control_tid = await new_thread(http)
        control_id = await start_run(http, control_tid)  # the same answer, left to finish
        seen: list[Event] = []
        first_token = asyncio.Event()

        def note(event: Event) -> bool:
            seen.append(event)
            if event[1] == "messages":
                first_token.set()
            return event[1] in TERMINAL

        reader = asyncio.create_task(
            sse(http, "GET", f"/threads/{tid}/runs/{run_id}/stream", stop=note)
        )
        await asyncio.wait_for(first_token.wait(), 30)  # the run is generating
        deleted = await http.delete(f"/threads/{tid}")
        assert deleted.status_code == 204, deleted.text
        try:
            await asyncio.wait_for(reader, 30)
        except TimeoutError:
            raise AssertionError(f"the deleted run's stream never ended: {seen[-3:]}") from None
        names = [name for _, name, _ in seen]
        assert names[-1] == "cancelled", names
        text = "".join(orjson.loads(d)[0]["content"] for _, n, d in seen if n == "messages")
        assert len(text.split()) < REPLY_TOKENS  # stopped part-way

        # The control run needed as long as the deleted one would have: once it has ended, a
        # deleted run that went on generating would have written its answer by now.
        await eventually(
            lambda: _ended(http, control_tid, control_id), timeout=60, what="control run ends"
        )
        assert (await http.get(f"/threads/{tid}")).status_code == 404
        assert (await http.get(f"/threads/{tid}/state")).status_code == 404
        assert (await http.get(f"/threads/{tid}/runs/{run_id}")).status_code == 404
        assert (await http.get(f"/chat/{run_id}/status")).status_code == 404
        replay = await http.get(f"/chat/{run_id}/stream")
        assert replay.status_code == 404, replay.text


async def _ended(http: httpx.AsyncClient, tid: str, run_id: str) -> bool:
    return await run_status(http, tid, run_id) not in ("pending", "running")


# -- 5. POST /threads/{t}/state while a run is active ----------------------------------------------


async def test_state_update_is_409_while_a_run_is_active_and_works_after(gw: str) -> None:
    """docs/api.md: POST /threads/{id}/state → `409` while a run is active."""
    note = {"values": {"messages": [{"role": "user", "content": "a note"}]}, "as_node": "agent"}
    async with client(gw) as http:
        tid = await new_thread(http)
        run_id = await start_run(http, tid)
        assert_problem(await http.post(f"/threads/{tid}/state", json=note), 409)
        await eventually(
            lambda: _has_status(http, tid, run_id, "running"), what="the run is running"
        )
        assert_problem(await http.post(f"/threads/{tid}/state", json=note), 409)
        joined = await http.get(f"/threads/{tid}/runs/{run_id}/join")
        assert joined.status_code == 200
        assert await run_status(http, tid, run_id) == "success"

        updated = await http.post(f"/threads/{tid}/state", json=note)
        assert updated.status_code == 200, updated.text
        assert updated.json()["checkpoint"]["checkpoint_id"]
        state = (await http.get(f"/threads/{tid}/state")).json()
        assert state["values"]["messages"][-1]["content"] == "a note"


async def _has_status(http: httpx.AsyncClient, tid: str, run_id: str, status: str) -> bool:
    return await run_status(http, tid, run_id) == status


# -- 6. cancel_on_disconnect on a joined stream ----------------------------------------------------


@pytest.mark.parametrize("cancel_on_disconnect", [True, False])
async def test_leaving_a_joined_stream_cancels_the_run_only_if_asked(
    gw: str, cancel_on_disconnect: bool
) -> None:
    """docs/api.md: GET …/runs/{run_id}/stream?cancel_on_disconnect; without it the run goes on."""
    async with client(gw) as http:
        tid = await new_thread(http)
        run_id = await start_run(http, tid)
        params = {"cancel_on_disconnect": "true"} if cancel_on_disconnect else {}
        events = await sse(
            http,
            "GET",
            f"/threads/{tid}/runs/{run_id}/stream",
            params=params,
            stop=lambda e: e[1] == "messages",
        )  # the client leaves after the first token
        assert events[-1][1] == "messages"
        await eventually(lambda: _ended(http, tid, run_id), timeout=60, what="the run ends")
        final = await run_status(http, tid, run_id)
        terminals = [n for _, n, _ in await run_events(http, tid, run_id) if n in TERMINAL]
    if cancel_on_disconnect:
        assert (final, terminals) == ("interrupted", ["cancelled"])
    else:
        assert (final, terminals) == ("success", ["end"])


# -- 7. OpenAI streaming: a disconnect cancels the run ---------------------------------------------


@pytest.mark.parametrize("stateful", [False, True])
async def test_openai_stream_disconnect_cancels_the_run(gw: str, stateful: bool) -> None:
    """docs/api.md: "The run is cancelled when the client disconnects"."""
    tid = str(uuid.uuid4())
    headers = {"X-Cai-Thread-Id": tid} if stateful else {}
    oai = AsyncOpenAI(base_url=f"{gw}/v1", api_key=ALPHA, max_retries=0)
    stream = await oai.chat.completions.create(
        model="slow",
        messages=[{"role": "user", "content": "How does Cai resume a stream?"}],
        stream=True,
        extra_headers=headers,
    )
    run_id = ""
    tokens = 0
    async for chunk in stream:
        run_id = chunk.id.removeprefix("chatcmpl-")  # the completion id names the run
        if chunk.choices and chunk.choices[0].delta.content:
            tokens += 1
            if tokens == 2:
                break
    await stream.close()
    await oai.close()
    uuid.UUID(run_id)
    async with client(gw) as http:

        async def stopped() -> bool:
            return (await http.get(f"/chat/{run_id}/status")).json()["status"] == "stopped"

        await eventually(stopped, timeout=20, what="the completion's run stops")
        task_events = await sse(http, "GET", f"/chat/{run_id}/stream")
        assert orjson.loads(task_events[-1][2])["type"] == "stopped"
        if stateful:
            assert await run_status(http, tid, run_id) == "interrupted"
            terminals = [n for _, n, _ in await run_events(http, tid, run_id) if n in TERMINAL]
            assert terminals == ["cancelled"]


# -- 8. task API: conversation_history reaches the model -------------------------------------------


async def run_task(gw: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """Start a task and read its stream to the end; the task events' JSON objects."""
    async with client(gw) as http:
        started = await http.post("/chat", json=body)
        assert started.status_code == 200, started.text
        task_id = started.json()["task_id"]
        return [orjson.loads(d) for _, _, d in await sse(http, "GET", f"/chat/{task_id}/stream")]


async def test_task_conversation_history_reaches_the_model(api_stack: Stack, gw: str) -> None:
    """docs/api.md: without thread_id, `conversation_history` plus `message` is the whole
    conversation."""
    marker = f"zq{uuid.uuid4().hex[:10]}"
    history = [
        {"role": "user", "content": f"The launch code word is {marker}."},
        {"role": "assistant", "content": "Noted."},
    ]
    message = "What is the launch code word?"
    events = await run_task(gw, {"message": message, "conversation_history": history})
    assert events[-1]["type"] == "done"
    answer = "".join(e["data"] for e in events if e["type"] == "token")
    assert marker in answer  # llm-sim quotes the earlier user turn that matches the question

    requests = await sim_requests(api_stack, marker)
    assert len(requests) == 1
    sent = [(m["role"], m["content"]) for m in requests[0]["messages"]]
    # In order, right after the assistant's own system prompt.
    assert sent[0][0] == "system"
    assert sent[1:] == [(m["role"], m["content"]) for m in history] + [("user", message)]


@pytest.mark.parametrize("dialect", ["task", "openai"])
async def test_a_system_message_of_the_request_replaces_the_persona_when_allowed(
    api_stack: Stack, gw: str, dialect: str
) -> None:
    """docs/api.md: `conversation_history` is `[{role: user|assistant|system, content}]`; chat
    completion `messages` roles are `system`, `developer` (treated as `system`), `user`, ...; an
    assistant with `allow_system_prompt_override` takes the request's system message as its
    prompt."""
    marker = f"zq{uuid.uuid4().hex[:10]}"
    system = {"role": "system", "content": f"Always mention {marker}."}
    if dialect == "task":
        body = {"message": "Hello?", "conversation_history": [system], "assistant_id": "open"}
        events = await run_task(gw, body)
        assert events[-1]["type"] == "done"
    else:
        oai = AsyncOpenAI(base_url=f"{gw}/v1", api_key=ALPHA, max_retries=0)
        completion = await oai.chat.completions.create(
            model="open",
            messages=[system, {"role": "user", "content": "Hello?"}],  # type: ignore[list-item]
        )
        await oai.close()
        assert completion.choices[0].message.content
    requests = await sim_requests(api_stack, marker)
    assert len(requests) == 1, "the system message is in no request the model received"
    sent = [(m["role"], m["content"]) for m in requests[0]["messages"]]
    assert sent == [("system", system["content"]), ("user", "Hello?")]


# -- 10. LLM faults: retried, Retry-After honoured, then a clear error -----------------------------


@pytest.mark.parametrize(("assistant", "status"), [("fail-500", 500), ("fail-429", 429)])
async def test_llm_faults_are_retried_then_end_in_an_error_naming_the_status(
    api_stack: Stack, gw: str, assistant: str, status: int
) -> None:
    """docs/reliability.md: LLM 500 / 429 → retried with backoff (LLM_MAX_RETRIES, honouring
    Retry-After), then `error` naming the status."""
    marker = f"zq{uuid.uuid4().hex[:10]}"
    async with client(gw) as http:
        started = await http.post(
            "/chat", json={"message": f"Fault {marker}?", "assistant_id": assistant}
        )
        task_id = started.json()["task_id"]
        events = [orjson.loads(d) for _, _, d in await sse(http, "GET", f"/chat/{task_id}/stream")]
        final = (await http.get(f"/chat/{task_id}/status")).json()
    assert events[-1]["type"] == "error"
    error = events[-1]["data"]
    assert error["error"] == "model_error" and f"(status {status})" in error["message"], error
    assert final["status"] == "error" and final["error"]

    requests = await sim_requests(api_stack, marker)
    assert len(requests) == 1 + LLM_MAX_RETRIES, [r["fault"] for r in requests]
    assert {r["fault"] for r in requests} == {f"status {status}"}
    if status == 429:
        # Honouring Retry-After is a lower bound on the wait between attempts (the client's own
        # backoff without it starts at 0.5 s); it can only fail if the header is ignored.
        sent_at = [r["time"] for r in requests]
        gaps = [b - a for a, b in zip(sent_at, sent_at[1:], strict=False)]
        assert all(gap >= RETRY_AFTER_S - 0.05 for gap in gaps), gaps


# -- 9. the API keys file: reloaded when it changes, fatal when bad at start-up --------------------


async def test_keys_file_changes_take_effect_without_a_restart(api_stack: Stack, gw: str) -> None:
    """docs/api.md: the file is reloaded when it changes; an invalid change is refused and the
    previous keys stay in force."""
    keys_file = Path(api_stack.config.service_env["API_KEYS_FILE"])
    gateway_log = api_stack.procs["gateway"].log_path
    pid = api_stack.procs["gateway"].pid

    async def answers(key: str) -> int:
        async with client(gw, key) as http:
            return (await http.get("/v1/models")).status_code

    assert await answers(GAMMA) == 401
    try:
        keys_file.write_text(keys_yaml(*BASE_KEYS, ("gamma", "tenant-g", GAMMA)))
        await eventually(lambda: _is(answers(GAMMA), 200), what="the added key works")
        async with client(gw, GAMMA) as gamma:
            tid = await new_thread(gamma)  # it acts as its own tenant
        async with client(gw, ALPHA) as alpha:
            assert (await alpha.get(f"/threads/{tid}")).status_code == 404

        invalid_logged = gateway_log.read_text().count("API keys file invalid")
        keys_file.write_text("keys:\n  - {id: gamma, tenant: tenant-g}\n")  # no sha256
        await eventually(
            lambda: _logged_more(answers(ALPHA), gateway_log, invalid_logged),
            what="the gateway refuses the invalid file",
        )
        assert await answers(GAMMA) == 200 and await answers(ALPHA) == 200  # still in force

        keys_file.write_text(keys_yaml(*BASE_KEYS))
        await eventually(lambda: _is(answers(GAMMA), 401), what="the removed key stops working")
        assert await answers(ALPHA) == 200 and await answers(BETA) == 200
    finally:
        keys_file.write_text(keys_yaml(*BASE_KEYS))
    assert api_stack.procs["gateway"].pid == pid and api_stack.procs["gateway"].alive()


async def _is(status: Any, expected: int) -> bool:
    return bool(await status == expected)


async def _logged_more(request: Any, log: Path, before: int) -> bool:
    """The gateway looks at the keys file when a request needs a key: send one, read the log."""
    await request
    return log.read_text().count("API keys file invalid") > before


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (
            f'keys:\n  - {{id: ok, tenant: t, sha256: "{sha256(ALPHA)}"}}\n'
            '  - {id: short, tenant: t, sha256: "abc123"}\n',
            "keys.1.sha256",
        ),
        ("keys: [unclosed\n", "not valid YAML"),
        (None, "cannot read API keys file"),
    ],
    ids=["bad-field", "not-yaml", "missing"],
)
def test_a_bad_keys_file_stops_the_gateway_at_start_up_with_the_reason(
    api_stack: Stack, tmp_path: Path, content: str | None, reason: str
) -> None:
    """docs/api.md: at start-up a missing or invalid file stops the gateway with a message naming
    the bad entry and field."""
    keys_file = tmp_path / "api-keys.yaml"
    if content is not None:
        keys_file.write_text(content)
    template = api_stack.gateway_proc(0)
    port = free_port()
    proc = Proc(
        "gateway-bad-keys",
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
    assert reason in log and str(keys_file) in log, log
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
