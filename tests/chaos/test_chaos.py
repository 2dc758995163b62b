"""Break things for real and check that every run ends clearly and nothing accepted is lost."""

from __future__ import annotations

import asyncio
import signal

import grpc
import httpx
import orjson
import pytest

from cai_common.runs import (
    CANCELLED,
    END,
    INTERRUPTED,
    RETRY,
    SUCCESS,
    TERMINAL_EVENTS,
)
from cai_devstack.procs import grpc_ready
from cai_devstack.stack import Stack
from tests.chaos.conftest import (
    REPLY_TOKENS,
    answer_after_last_retry,
    eventually,
    follow_to_end,
    question,
    read_events,
)

STREAM = {"assistant_id": "chat", "stream_mode": "messages-tuple"}


def executor_proc(stack: Stack, run: dict[str, object]) -> str:
    """Name of the stack process executing the run (REPLICA_ID is "<name>:<port>")."""
    executor = str(run["executor"])
    return executor.split(":", 1)[0]


async def start_stream(stack: Stack, gateway: int = 0, assistant: str = "chat", k: int = 5):
    """Create a thread and start a streamed run; returns (base, run path, thread id, k events)."""
    base = stack.gateway_url(gateway)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        body = {**STREAM, "assistant_id": assistant, "input": question()}
        events, headers = await read_events(
            http, "POST", f"/threads/{tid}/runs/stream", json=body, stop_after=k
        )
    return base, headers["content-location"], tid, events


async def thread_messages(base: str, tid: str) -> list[dict[str, object]]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        response = await http.get(f"/threads/{tid}/state")
    assert response.status_code == 200, response.text
    return response.json()["values"].get("messages", [])  # type: ignore[no-any-return]


def log_records(stack: Stack, name: str, message: str) -> list[str]:
    """Run ids of a process's JSON log records with this message."""
    lines = (stack.config.run_dir / "logs" / f"{name}.log").read_text().splitlines()
    records = [orjson.loads(line) for line in lines if line.startswith("{")]
    return [str(r.get("run_id")) for r in records if r.get("message") == message]


def orchestrator_serving(stack: Stack, index: int) -> bool:
    """The replica's gRPC health says SERVING (its readiness probe)."""
    try:
        return grpc_ready(stack.orchestrator_addr(index))()
    except grpc.RpcError:
        return False


def everything_ready(stack: Stack, ready: bool) -> bool:
    """Every orchestrator's health says `ready` (or all say not), and every gateway's /readyz
    says so of the orchestrator (gateways themselves stay ready: they still serve, with 503s)."""
    gateways = [
        httpx.get(f"{stack.gateway_url(i)}/readyz").json()["status"] == "ok" for i in (0, 1)
    ]
    orchestrators = [orchestrator_serving(stack, i) for i in (0, 1)]
    return all(r == ready for r in gateways + orchestrators)


def restart(stack: Stack, name: str) -> None:
    """Start a replacement for a stopped process of the stack."""
    if name.startswith("orchestrator"):
        index = 0 if name == "orchestrator" else int(name.rsplit("-", 1)[1])
        stack.start(stack.orchestrator_proc(index), timeout=60)
    elif name.startswith("gateway"):
        index = 0 if name == "gateway" else int(name.rsplit("-", 1)[1])
        stack.start(stack.gateway_proc(index), timeout=60)


async def test_kill_9_of_the_executing_replica_is_reclaimed_and_finished(chaos: Stack) -> None:
    gateways = [chaos.gateway_url(0), chaos.gateway_url(1)]
    base, run_path, tid, events = await start_stream(chaos)
    assert [e[1] for e in events][0] == "metadata"
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        run = (await http.get(run_path)).json()
    victim = executor_proc(chaos, run)
    chaos.procs[victim].signal(signal.SIGKILL)

    events = await follow_to_end(gateways, run_path, events)
    names = [e[1] for e in events]
    assert names.count(RETRY) == 1 and names[-1] == END
    assert orjson.loads(events[names.index(RETRY)][2])["attempt"] == 2
    ids = [e[0] for e in events]
    assert len(ids) == len(set(ids))  # nothing repeated across the resume
    messages = await thread_messages(gateways[1], tid)
    assert [m["type"] for m in messages] == ["human", "ai"]  # exactly one final AI message
    assert answer_after_last_retry(events) == messages[-1]["content"]
    assert len(str(messages[-1]["content"]).split()) == REPLY_TOKENS
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        final = (await http.get(run_path)).json()
    assert final["status"] == "success" and final["attempt"] == 2
    assert executor_proc(chaos, final) != victim
    restart(chaos, victim)


async def checkpoints(base: str, tid: str) -> int:
    """How many checkpoints the thread's history holds."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        response = await http.post(f"/threads/{tid}/history", json={"limit": 100})
    assert response.status_code == 200, response.text
    return len(response.json())


@pytest.mark.parametrize("durability", ["sync", "async", "exit"])
async def test_kill_9_mid_answer_resumes_from_what_the_durability_mode_saved(
    chaos: Stack, durability: str
) -> None:
    """sync and async saved the retrieval step before the model was called: the reclaimed run
    goes on from there (no second retrieval). exit saved nothing before the run's end: the run
    starts over from the thread as it was (it retrieves again), and the thread gets exactly one
    checkpoint for it. Either way the client sees one `retry`, then the whole answer once."""
    gateways = [chaos.gateway_url(0), chaos.gateway_url(1)]
    base = gateways[0]
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        body = {**STREAM, "assistant_id": f"durable-{durability}", "input": question()}
        events, headers = await read_events(
            http, "POST", f"/threads/{tid}/runs/stream", json=body, until="messages"
        )
        run_path = headers["content-location"]
        run = (await http.get(run_path)).json()
    assert events[-1][1] == "messages", events  # the model is answering
    victim = executor_proc(chaos, run)
    chaos.procs[victim].signal(signal.SIGKILL)

    events = await follow_to_end(gateways, run_path, events)
    names = [e[1] for e in events]
    assert names.count(RETRY) == 1 and names[-1] == END, names
    resumed = events[names.index(RETRY) :]
    retrieved_again = any(
        name == "status" and orjson.loads(data).get("status") == "retrieving"
        for _, name, data in resumed
    )
    assert retrieved_again == (durability == "exit"), resumed[:6]
    messages = await thread_messages(base, tid)
    assert [m["type"] for m in messages] == ["human", "ai"]  # the input applied once
    assert answer_after_last_retry(events) == messages[-1]["content"]
    if durability == "exit":
        assert await checkpoints(base, tid) == 1
    else:  # the first attempt's steps, then the answer
        assert await checkpoints(base, tid) > 2
    restart(chaos, victim)


async def test_sigterm_hands_the_run_back_at_once(chaos: Stack) -> None:
    gateways = [chaos.gateway_url(0), chaos.gateway_url(1)]
    base, run_path, tid, events = await start_stream(chaos)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        run = (await http.get(run_path)).json()
    victim = executor_proc(chaos, run)
    chaos.procs[victim].signal(signal.SIGTERM)

    # The replica drains for SHUTDOWN_GRACE_SECONDS, hands the run back and exits cleanly.
    assert chaos.procs[victim].popen.wait(timeout=30) == 0  # type: ignore[union-attr]
    events = await follow_to_end(gateways, run_path, events)
    names = [e[1] for e in events]
    assert names.count(RETRY) == 1 and names[-1] == END
    assert orjson.loads(events[names.index(RETRY)][2])["attempt"] == 2
    messages = await thread_messages(base, tid)
    assert [m["type"] for m in messages] == ["human", "ai"]
    assert answer_after_last_retry(events) == messages[-1]["content"]
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        final = (await http.get(run_path)).json()
    assert final["status"] == "success" and final["attempt"] == 2
    assert executor_proc(chaos, final) not in ("", victim)
    # Handed back by the victim, not reclaimed by the other replica after its lease lapsed.
    run_id = str(run["run_id"])
    assert run_id in log_records(chaos, victim, "handed run back")
    assert run_id not in log_records(chaos, executor_proc(chaos, final), "reclaimed run")
    restart(chaos, victim)


async def test_killed_gateway_resumes_through_another_without_loss(chaos: Stack) -> None:
    base, run_path, tid, events = await start_stream(chaos, gateway=1, k=8)
    chaos.procs["gateway-1"].signal(signal.SIGKILL)
    events = await follow_to_end([chaos.gateway_url(0)], run_path, events)
    assert events[-1][1] == "end"
    async with httpx.AsyncClient(base_url=chaos.gateway_url(0), timeout=30) as http:
        full, _ = await read_events(http, "GET", f"{run_path}/stream")
    assert events == full  # every event exactly once, in order
    restart(chaos, "gateway-1")


async def test_sigterm_of_a_gateway_tells_clients_to_reconnect(chaos: Stack) -> None:
    base, run_path, tid, events = await start_stream(chaos, gateway=1, k=3)
    # Keep reading on the same connection while the gateway shuts down.
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        streaming = asyncio.Event()
        reading = asyncio.create_task(
            read_events(
                http, "GET", f"{run_path}/stream", headers={"Last-Event-ID": events[-1][0]},
                on_event=lambda _: streaming.set(),
            )
        )  # fmt: skip
        await asyncio.wait_for(streaming.wait(), timeout=30)  # the resumed stream is flowing
        chaos.procs["gateway-1"].signal(signal.SIGTERM)
        more, _ = await reading
    assert more and more[-1][1] == "reconnect"
    events += [e for e in more if e[1] != "reconnect"]
    events = await follow_to_end([chaos.gateway_url(0)], run_path, events)
    async with httpx.AsyncClient(base_url=chaos.gateway_url(0), timeout=30) as http:
        full, _ = await read_events(http, "GET", f"{run_path}/stream")
    assert events == full
    chaos.procs["gateway-1"].popen.wait(timeout=30)  # type: ignore[union-attr]
    restart(chaos, "gateway-1")


@pytest.mark.parametrize(
    ("assistant", "expected"),
    [
        ("fail-500", "model_error: The model answered with an error (status 500)"),
        ("fail-429", "model_error: The model answered with an error (status 429)"),
        ("stall", "model_timeout"),
        ("cut", "model_unavailable"),
    ],
)
async def test_llm_faults_end_in_a_clear_error_and_the_thread_stays_usable(
    chaos: Stack, assistant: str, expected: str
) -> None:
    gateways = [chaos.gateway_url(0), chaos.gateway_url(1)]
    base, run_path, tid, events = await start_stream(chaos, assistant=assistant, k=1000)
    events = await follow_to_end(gateways, run_path, events)
    assert events[-1][1] == "error"
    error = orjson.loads(events[-1][2])
    assert error["message"] and expected in error["error"] + ": " + error["message"]
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        assert (await http.get(run_path)).json()["status"] == "error"
        body = {**STREAM, "input": question("And now?")}
        ok, _ = await read_events(http, "POST", f"/threads/{tid}/runs/stream", json=body)
    assert ok[-1][1] == "end"
    messages = await thread_messages(base, tid)
    assert [m["type"] for m in messages][-1] == "ai"


async def test_redis_restart_mid_run_ends_clearly_and_nothing_crashes(chaos: Stack) -> None:
    gateways = [chaos.gateway_url(0), chaos.gateway_url(1)]
    base, run_path, tid, events = await start_stream(chaos, k=3)
    redis = chaos.procs["redis"]
    redis.stop()  # SIGTERM: Redis writes its AOF and exits
    # While Redis is away no orchestrator is ready (NOT_SERVING); gateways report it degraded.
    eventually(lambda: everything_ready(chaos, False), timeout=30)
    chaos.start(chaos.redis_proc(), timeout=30)
    eventually(lambda: everything_ready(chaos, True), timeout=60)
    events = await follow_to_end(gateways, run_path, events, timeout=90)
    names = [e[1] for e in events]
    assert names[-1] == END, events[-3:]
    assert [n for n in names if n in TERMINAL_EVENTS] == [names[-1]]  # exactly one terminal
    for name, proc in chaos.procs.items():
        assert proc.alive(), f"{name} died when Redis restarted"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        body = {**STREAM, "input": question("Still there?")}
        ok, headers = await read_events(http, "POST", f"/threads/{tid}/runs/stream", json=body)
        runs = (await http.get(f"/threads/{tid}/runs")).json()
    assert ok and ok[-1][1] == "end", (ok, dict(headers), runs)


async def test_cancel_stops_the_run_and_cancelling_again_is_a_no_op(chaos: Stack) -> None:
    base, run_path, tid, events = await start_stream(chaos, k=4)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        cancelled = await http.post(f"{run_path}/cancel", params={"wait": 1})
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "interrupted"
        again = await http.post(f"{run_path}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "interrupted"
        unknown = await http.post(
            f"/threads/{tid}/runs/00000000-0000-0000-0000-000000000000/cancel"
        )
        assert unknown.status_code == 404
    events = await follow_to_end([base], run_path, events)
    assert events[-1][1] == "cancelled"
    partial = "".join(orjson.loads(d)[0]["content"] for _, e, d in events if e == "messages")
    assert len(partial.split()) < REPLY_TOKENS  # generation stopped part-way
    # interrupt keeps completed steps: the user's message is in the thread, no AI answer.
    assert [m["type"] for m in await thread_messages(base, tid)] == ["human"]


async def test_on_disconnect_cancel_cancels_when_the_client_leaves(chaos: Stack) -> None:
    base = chaos.gateway_url(0)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        body = {**STREAM, "input": question(), "on_disconnect": "cancel"}
        _, headers = await read_events(
            http, "POST", f"/threads/{tid}/runs/stream", json=body, stop_after=3
        )
    run_url = f"{base}{headers['content-location']}"
    eventually(lambda: httpx.get(run_url).json()["status"] == "interrupted", timeout=15)


async def start_until_generating(stack: Stack, tid: str, text: str) -> str:
    """Start a run of the slow assistant on the thread; return its path once it streams tokens."""
    async with httpx.AsyncClient(base_url=stack.gateway_url(0), timeout=30) as http:
        body = {**STREAM, "assistant_id": "slow", "input": question(text)}
        events, headers = await read_events(
            http, "POST", f"/threads/{tid}/runs/stream", json=body, until="messages"
        )
    assert events[-1][1] == "messages", events  # the model is generating: the run is active
    return headers["content-location"]  # type: ignore[no-any-return]


async def run_outcome(base: str, run_path: str) -> tuple[str, str]:
    """(terminal event, final status) of a run, once it has ended."""
    events = await follow_to_end([base], run_path, [])
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        status = (await http.get(run_path)).json()["status"]
    return events[-1][1], status


@pytest.mark.parametrize("strategy", ["reject", "enqueue", "interrupt", "rollback"])
async def test_a_second_create_while_a_run_is_active(chaos: Stack, strategy: str) -> None:
    base0, base1 = chaos.gateway_url(0), chaos.gateway_url(1)
    async with httpx.AsyncClient(timeout=30) as http:
        tid = (await http.post(f"{base0}/threads", json={})).json()["thread_id"]
        first = await start_until_generating(chaos, tid, "first?")
        # The second arrives through the other gateway while the first is surely running.
        body = {**STREAM, "input": question("second?"), "multitask_strategy": strategy}
        second = await http.post(f"{base1}/threads/{tid}/runs", json=body)
    first_outcome = await run_outcome(base0, first)
    if strategy == "reject":
        assert second.status_code == 409, second.text
    else:
        assert second.status_code == 200, second.text
        second_path = f"/threads/{tid}/runs/{second.json()['run_id']}"
        assert await run_outcome(base0, second_path) == (END, SUCCESS)
    messages = await thread_messages(base0, tid)
    said = [m["content"] for m in messages if m["type"] == "human"]
    kinds = [m["type"] for m in messages]
    if strategy == "reject":
        assert first_outcome == (END, SUCCESS)
        assert kinds == ["human", "ai"] and said == ["first?"]
    elif strategy == "enqueue":
        assert first_outcome == (END, SUCCESS)
        assert kinds == ["human", "ai", "human", "ai"]  # one after the other, never interleaved
        assert said == ["first?", "second?"]
    elif strategy == "interrupt":
        assert first_outcome == (CANCELLED, INTERRUPTED)
        # The interrupted run keeps what it completed (its input), not its unfinished answer.
        assert kinds == ["human", "human", "ai"] and said == ["first?", "second?"]
    else:
        assert first_outcome == (CANCELLED, INTERRUPTED)
        # The rolled-back run left nothing behind: not even its input.
        assert kinds == ["human", "ai"] and said == ["second?"]


async def test_cancel_with_rollback_restores_the_thread_to_before_the_run(chaos: Stack) -> None:
    base = chaos.gateway_url(0)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        body = {**STREAM, "input": question("remember this")}
        done, _ = await read_events(http, "POST", f"/threads/{tid}/runs/stream", json=body)
        assert done[-1][1] == END
        before = (await http.get(f"/threads/{tid}/state")).json()
        assert [m["type"] for m in before["values"]["messages"]] == ["human", "ai"]

        run_path = await start_until_generating(chaos, tid, "forget this")
        cancelled = await http.post(f"{run_path}/cancel", params={"action": "rollback", "wait": 1})
        assert cancelled.status_code == 200 and cancelled.json()["status"] == INTERRUPTED
        assert await run_outcome(base, run_path) == (CANCELLED, INTERRUPTED)
        after = (await http.get(f"/threads/{tid}/state")).json()
    assert after["values"] == before["values"]
    assert "forget this" not in str(after["values"])
