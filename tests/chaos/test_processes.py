"""Several orchestrator processes in one pod (ORCHESTRATOR_PROCESSES=2), as real processes.

One supervisor, two workers on one gRPC port: both take runs from the queue, a worker killed
with SIGKILL is restarted and its runs are finished by the other, the pod's health and metrics
speak for both, and SIGTERM drains both.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import psutil
import pytest

from cai_common.runs import END, RETRY
from cai_devstack.fixtures import running_stack
from cai_devstack.procs import grpc_ready
from cai_devstack.stack import Stack
from tests.chaos.conftest import (
    ASSISTANTS,
    LEASE_SECONDS,
    REPLY_TOKENS,
    TOKEN_DELAY_MS,
    answer_after_last_retry,
    eventually,
    follow_to_end,
    question,
    read_events,
)
from tests.chaos.test_chaos import start_stream, thread_messages
from tests.chaos.test_shutdown_budget import EXIT_MARGIN_S


@pytest.fixture(scope="module")
def pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One orchestrator "pod" of two processes and one gateway of two workers."""
    with running_stack(
        tmp_path_factory.mktemp("processes"),
        timeout=120,
        assistants=ASSISTANTS,
        orchestrator_processes=2,
        gateway_workers=2,
        with_retriever=False,
        llm_sim_args=[
            "--token-delay-ms", str(TOKEN_DELAY_MS), "--reply-tokens", str(REPLY_TOKENS)
        ],
        service_env={
            "LEASE_SECONDS": str(LEASE_SECONDS),
            "SHUTDOWN_GRACE_SECONDS": "1",
            "SSE_PING_SECONDS": "0.5",
        },
    ) as stack:  # fmt: skip
        yield stack


def workers(stack: Stack) -> dict[int, psutil.Process]:
    """The orchestrator supervisor's live workers by slot (CAI_WORKER_INDEX)."""
    found = {}
    for child in psutil.Process(stack.procs["orchestrator"].pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                found[int(child.environ()["CAI_WORKER_INDEX"])] = child
        except (psutil.Error, KeyError):
            continue
    return found


def slot_of(executor: str) -> int:
    """The worker slot in a replica id "orchestrator:<port>/<slot>.<generation>"."""
    return int(executor.rsplit("/", 1)[1].split(".")[0])


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples over its label sets (0 when it has none yet)."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((f"{name} ", f"{name}{{"))
    )


def serving(stack: Stack) -> bool:
    try:
        return grpc_ready(stack.orchestrator_addr(0))()
    except Exception:  # (an RpcError while a worker restarts)
        return False


async def wait_run(
    base: str, thread_id: str, run_id: str, timeout: float = 30
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        while time.monotonic() < deadline:
            run = (await http.get(f"/threads/{thread_id}/runs/{run_id}")).json()
            if run["status"] not in ("pending", "running"):
                return run  # type: ignore[no-any-return]
            await asyncio.sleep(0.1)
    raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s")


async def test_both_processes_take_runs_and_metrics_count_both(pod: Stack) -> None:
    assert sorted(workers(pod)) == [0, 1]
    base = pod.gateway_url()
    metrics_url = f"http://127.0.0.1:{pod.config.orchestrator_metrics_port}/metrics"
    before = metric(httpx.get(metrics_url).text, "cai_run_duration_seconds_count")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        created = []
        for _ in range(8):  # at once: each run takes ~2 s, so both processes must take some
            tid = (await http.post("/threads", json={})).json()["thread_id"]
            body = {"assistant_id": "chat", "input": question()}
            run = (await http.post(f"/threads/{tid}/runs", json=body)).json()
            created.append((tid, run["run_id"]))
    runs = await asyncio.gather(*(wait_run(base, t, r) for t, r in created))
    assert {r["status"] for r in runs} == {"success"}
    assert {slot_of(str(r["executor"])) for r in runs} == {0, 1}
    text = httpx.get(metrics_url).text  # one port for the pod: the supervisor sums the workers
    assert metric(text, "cai_run_duration_seconds_count") - before == len(runs)
    assert "cai_runs_in_flight 0.0" in text.splitlines()
    assert serving(pod)


async def test_kill_9_of_a_process_restarts_it_and_its_run_is_reclaimed(pod: Stack) -> None:
    base, run_path, tid, events = await start_stream(pod)
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        run = (await http.get(run_path)).json()
    slot = slot_of(str(run["executor"]))
    victim = workers(pod)[slot]
    victim.send_signal(signal.SIGKILL)

    events = await follow_to_end([base], run_path, events)
    names = [e[1] for e in events]
    assert names.count(RETRY) == 1 and names[-1] == END
    assert orjson.loads(events[names.index(RETRY)][2])["attempt"] == 2
    messages = await thread_messages(base, tid)
    assert [m["type"] for m in messages] == ["human", "ai"]
    assert answer_after_last_retry(events) == messages[-1]["content"]
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        final = (await http.get(run_path)).json()
    assert final["status"] == "success" and final["attempt"] == 2
    assert final["executor"] != run["executor"]  # the other process, or the restarted one

    # The supervisor started a new process in the slot, and the pod serves again.
    eventually(lambda: slot in workers(pod) and workers(pod)[slot].pid != victim.pid, 30)
    eventually(lambda: serving(pod), 60)
    assert pod.procs["orchestrator"].alive()


async def test_sigterm_of_a_gateway_of_two_workers_tells_clients_to_reconnect(pod: Stack) -> None:
    base, run_path, _, events = await start_stream(pod, k=3)
    gateway = pod.procs["gateway"]
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        streaming = asyncio.Event()
        reading = asyncio.create_task(
            read_events(
                http, "GET", f"{run_path}/stream", headers={"Last-Event-ID": events[-1][0]},
                on_event=lambda _: streaming.set(),
            )
        )  # fmt: skip
        await asyncio.wait_for(streaming.wait(), timeout=30)
        gateway.signal(signal.SIGTERM)  # the supervisor passes it to both workers
        more, _ = await reading
    # Whichever worker served the stream ended it as a stopping gateway does, not as a cut.
    assert more and more[-1][1] == "reconnect"
    assert gateway.popen.wait(timeout=30) == 0  # type: ignore[union-attr]
    pod.start(pod.gateway_proc(0), timeout=60)


async def test_sigterm_drains_every_process(pod: Stack) -> None:
    base, run_path, _, _ = await start_stream(pod)
    children = list(workers(pod).values())
    assert len(children) == 2
    supervisor = pod.procs["orchestrator"]
    start = time.monotonic()
    supervisor.signal(signal.SIGTERM)
    # Each process drains within SHUTDOWN_GRACE_SECONDS (1 s), all at once: they share the
    # budget, so the pod stops within it too (plus the exit margin of test_shutdown_budget).
    assert supervisor.popen.wait(timeout=30) == 0  # type: ignore[union-attr]
    assert time.monotonic() - start <= 1.0 + EXIT_MARGIN_S
    assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children)
    log = Path(pod.config.run_dir, "logs", "orchestrator.log").read_text()
    records = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    stopped = [r for r in records if r.get("message") == "worker stopped"]
    assert sorted(r["worker"] for r in stopped[-2:]) == [0, 1]
    assert all(r["code"] == 0 for r in stopped[-2:])
    run_id = run_path.rsplit("/", 1)[1]
    assert run_id in [r.get("run_id") for r in records if r.get("message") == "handed run back"]
    pod.procs.pop("orchestrator")  # stopped: the fixture's teardown must not wait for it
