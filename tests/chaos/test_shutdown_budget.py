"""Issue 16, item 4: an orchestrator's whole shutdown fits SHUTDOWN_GRACE_SECONDS.

It used to wait the grace for its runs, then again in the gRPC server's stop while StreamRun
relays stayed open: twice the grace, past the pod's terminationGracePeriodSeconds. Now one
deadline covers letting runs finish, handing the rest back and ending the relays (UNAVAILABLE:
the gateway reopens the stream on another replica). Real processes: Redis, llm-sim, two
orchestrators, a gateway; the test holds a StreamRun relay on the replica that executes a run
longer than the grace, SIGTERMs that replica and times its exit.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections.abc import Iterator

import grpc
import httpx
import orjson
import pytest

from cai.v1 import common_pb2
from cai.v1 import orchestrator_pb2 as pb
from cai.v1.orchestrator_pb2_grpc import OrchestratorStub
from cai_common.runs import END
from cai_devstack.fixtures import running_stack
from cai_devstack.stack import Stack
from cai_orchestrator.server import handback_reserve
from tests.chaos.conftest import follow_to_end, question, read_events
from tests.chaos.test_chaos import executor_proc, log_records, restart

GRACE_S = 3.0  # SHUTDOWN_GRACE_SECONDS
# After the deadline the process closes its clients and exits: well under the chart's 5 s margin
# (cai.shutdownMarginSeconds), and under a second grace (the old overrun).
EXIT_MARGIN_S = 2.0
# 40 tokens 300 ms apart: a 12 s answer, far longer than the grace.
ASSISTANTS = """
- id: slow
  model_headers: {X-Sim-Token-Delay-Ms: "300"}
"""


@pytest.fixture(scope="module")
def budget(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("budget"),
        timeout=120,
        assistants=ASSISTANTS,
        orchestrator_replicas=2,
        with_retriever=False,
        llm_sim_args=["--reply-tokens", "40"],
        service_env={
            "SHUTDOWN_GRACE_SECONDS": str(GRACE_S),
            "LEASE_SECONDS": "30",  # a reclaim cannot pass for a hand-back within the test
            "LLM_MAX_RETRIES": "0",
        },
    ) as stack:
        yield stack


def _index(name: str) -> int:
    return 0 if name == "orchestrator" else int(name.rsplit("-", 1)[1])


async def _running_run(base: str) -> tuple[str, dict[str, object]]:
    """Start a slow background run; its path and record once a replica executes it."""
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        tid = (await http.post("/threads", json={})).json()["thread_id"]
        body = {"assistant_id": "slow", "input": question()}
        created = await http.post(f"/threads/{tid}/runs", json=body)
        assert created.status_code == 200, created.text
        path = f"/threads/{tid}/runs/{created.json()['run_id']}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            run = (await http.get(path)).json()
            if run["status"] == "running" and run.get("executor"):
                return path, run
            await asyncio.sleep(0.1)
    raise AssertionError("the run did not start")


async def test_sigterm_drains_hands_back_and_ends_relays_within_the_grace(budget: Stack) -> None:
    base = budget.gateway_url()
    path, run = await _running_run(base)
    victim = executor_proc(budget, run)
    popen = budget.procs[victim].popen
    assert popen is not None

    async with grpc.aio.insecure_channel(budget.orchestrator_addr(_index(victim))) as channel:
        relay = OrchestratorStub(channel).StreamRun(
            pb.StreamRunRequest(
                principal=common_pb2.Principal(tenant_id="default"),
                thread_id=str(run["thread_id"]),
                run_id=str(run["run_id"]),
                cancel_on_disconnect=True,  # ended by the drain: the cancel waits for a re-join
            )
        )
        await relay.read()  # accepted: the relay is open on the victim
        relay_ended = asyncio.get_running_loop().create_future()

        async def follow() -> None:
            try:
                while await relay.read() is not grpc.aio.EOF:
                    pass
                relay_ended.set_result((time.monotonic(), grpc.StatusCode.OK))
            except grpc.aio.AioRpcError as exc:
                relay_ended.set_result((time.monotonic(), exc.code()))

        follower = asyncio.create_task(follow())
        start = time.monotonic()
        budget.procs[victim].signal(signal.SIGTERM)
        code = await asyncio.to_thread(popen.wait, GRACE_S + 30)
        exited = time.monotonic() - start
        ended_at, status = await asyncio.wait_for(relay_ended, timeout=5)
        await follower

    assert code == 0
    # One deadline: the runs had their share of the grace, and the whole stop fit in it.
    runs_share = GRACE_S - handback_reserve(GRACE_S)
    assert runs_share - 0.2 <= exited <= GRACE_S + EXIT_MARGIN_S, exited
    # The relay was ended by the drain (the gateway reconnects elsewhere), before the exit.
    assert status == grpc.StatusCode.UNAVAILABLE
    assert runs_share - 0.2 <= ended_at - start <= exited
    # The run was handed back (not reclaimed after its lease). Its client re-joins through the
    # gateway (which removes the cancel the ended relay parked) and the run finishes on the
    # other replica.
    assert str(run["run_id"]) in log_records(budget, victim, "handed run back")
    events = await follow_to_end([base], path, [])
    assert events[-1][1] == END
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        final = (await http.get(path)).json()
    assert final["status"] == "success" and final["attempt"] == 2, final
    assert executor_proc(budget, final) not in ("", victim)
    restart(budget, victim)


async def test_relays_ended_by_a_drain_are_resumed_and_waits_go_on(budget: Stack) -> None:
    """A relay ended by a drain (UNAVAILABLE) is the orchestrator going away: a LangGraph SSE
    response ends without a terminal event and its client resumes with Last-Event-ID (as
    langgraph-sdk does), losing nothing; a wait (`/runs/wait`, whose client cannot resume) is
    reopened by the gateway on another replica and answers once the run is done."""
    base = budget.gateway_url()
    victim = "orchestrator"
    ended_before = len(_records(budget, victim, "ended relays"))
    streams: list[tuple[str, list[tuple[str, str, str]]]] = []
    waits: list[httpx.Response] = []

    async def stream(opened: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            tid = (await http.post("/threads", json={})).json()["thread_id"]
            events: list[tuple[str, str, str]] = []
            body = {"assistant_id": "slow", "input": question(), "stream_mode": "updates"}
            _, headers = await read_events(
                http, "POST", f"/threads/{tid}/runs/stream", json=body,
                on_event=lambda e: (events.append(e), opened.set()),
            )  # fmt: skip
            streams.append((headers["content-location"], events))

    async def wait(opened: asyncio.Event) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            tid = (await http.post("/threads", json={})).json()["thread_id"]
            body = {"assistant_id": "slow", "input": question()}
            reply = http.post(f"/threads/{tid}/runs/wait", json=body)
            task = asyncio.ensure_future(reply)
            await asyncio.sleep(1.0)
            opened.set()
            waits.append(await task)

    # The gateway balances calls over both replicas, once its channel to each is up again (the
    # victim was restarted by the test before): wait until the victim answers the gateway's
    # calls, then several StreamRun relays land on each replica.
    await _until_the_gateway_reaches(budget, base)
    opened = [asyncio.Event() for _ in range(6)]
    readers = [asyncio.create_task(stream(o)) for o in opened[:3]]
    readers += [asyncio.create_task(wait(o)) for o in opened[3:]]
    await asyncio.wait_for(asyncio.gather(*(o.wait() for o in opened)), timeout=30)
    popen = budget.procs[victim].popen
    assert popen is not None
    budget.procs[victim].signal(signal.SIGTERM)
    assert await asyncio.to_thread(popen.wait, GRACE_S + 30) == 0
    await asyncio.wait_for(asyncio.gather(*readers), timeout=60)

    ended = [r["relays"] for r in _records(budget, victim, "ended relays")[ended_before:]]
    assert ended and ended[-1], "no relay was on the draining replica: the test proved nothing"
    for path, events in streams:
        events = await follow_to_end([base], path, events)
        ids = [event_id for event_id, _, _ in events]
        order = sorted(set(ids), key=lambda i: tuple(int(p) for p in i.split("-")))
        assert ids == order, "an event lost order or came twice"
        assert [name for _, name, _ in events].count(END) == 1
    for reply in waits:
        assert reply.status_code == 200, reply.text
        assert reply.json()["messages"][-1]["type"] == "ai"
    restart(budget, victim)


def _victim_calls(stack: Stack) -> float:
    """GetThread calls the first orchestrator (the victim) has answered, from its metrics."""
    url = f"http://127.0.0.1:{stack.config.orchestrator_metrics_port}/metrics"
    text = httpx.get(url, timeout=5).text
    prefix = 'cai_grpc_requests_total{code="NOT_FOUND",method="GetThread"}'
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


async def _until_the_gateway_reaches(stack: Stack, base: str, timeout: float = 30.0) -> None:
    """Send GetThread calls (for a thread nobody has) through the gateway until one lands on the
    victim: its subchannel in the gateway's balancer is ready again."""
    before = await asyncio.to_thread(_victim_calls, stack)
    deadline = asyncio.get_running_loop().time() + timeout
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        while asyncio.get_running_loop().time() < deadline:
            await http.get(f"/threads/{uuid.uuid4()}")
            if await asyncio.to_thread(_victim_calls, stack) > before:
                return
            await asyncio.sleep(0.1)
    raise AssertionError("the gateway never reached the restarted orchestrator")


def _records(stack: Stack, name: str, message: str) -> list[dict[str, object]]:
    lines = (stack.config.run_dir / "logs" / f"{name}.log").read_text().splitlines()
    records = [orjson.loads(line) for line in lines if line.startswith("{")]
    return [r for r in records if r.get("message") == message]
