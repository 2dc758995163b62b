"""Fair dispatch through real processes: two orchestrators with 10 run slots each (20 in all),
llm-sim answers of about 2 s, tenants A and B (API keys), no rate limits.

A tenant's backlog does not hold another tenant's run back, and a replica killed with -9 while
both take from the fair queue loses no run and runs none twice.
"""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cai_common.runs import END, RETRY, TERMINAL_EVENTS
from cai_devstack.fixtures import running_stack
from cai_devstack.stack import Stack
from cai_gateway.auth import hash_key
from tests.chaos.conftest import question, read_events

KEY_A = "fair-tenant-a-key-0123456789"
KEY_B = "fair-tenant-b-key-0123456789"
SLOTS_PER_REPLICA = 10
BACKLOG = 200


@pytest.fixture(scope="module")
def fair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    run_dir: Path = tmp_path_factory.mktemp("fair")
    (run_dir / "api-keys.yaml").write_text(
        f"""
keys:
  - {{id: a, tenant: tenant-a, sha256: "{hash_key(KEY_A)}"}}
  - {{id: b, tenant: tenant-b, sha256: "{hash_key(KEY_B)}"}}
"""
    )
    with running_stack(
        run_dir,
        timeout=120,
        orchestrator_replicas=2,
        with_retriever=False,
        allow_anonymous=False,
        llm_sim_args=["--token-delay-ms", "50", "--reply-tokens", "40"],
        service_env={
            "API_KEYS_FILE": str(run_dir / "api-keys.yaml"),
            "RATE_LIMIT_PER_SECOND": "0",
            "MAX_CONCURRENT_STREAMS": "500",
            "MAX_CONCURRENT_RUNS": str(SLOTS_PER_REPLICA),
            "LEASE_SECONDS": "3",
            "SHUTDOWN_GRACE_SECONDS": "1",
        },
    ) as stack:
        yield stack


def client(stack: Stack, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=stack.gateway_url(),
        headers={"Authorization": f"Bearer {key}"},
        timeout=60,
        limits=httpx.Limits(max_connections=50),
    )


async def create_runs(http: httpx.AsyncClient, n: int) -> list[str]:
    """`n` background runs, each on a new thread; their paths."""
    slots = asyncio.Semaphore(20)

    async def one() -> str:
        tid = str(uuid.uuid4())
        body = {"input": question(), "if_not_exists": "create"}
        async with slots:
            response = await http.post(f"/threads/{tid}/runs", json=body)
        assert response.status_code == 200, response.text
        return f"/threads/{tid}/runs/{response.json()['run_id']}"

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def statuses(http: httpx.AsyncClient, paths: list[str]) -> list[str]:
    slots = asyncio.Semaphore(20)

    async def one(path: str) -> str:
        async with slots:
            return str((await http.get(path)).json()["status"])

    return list(await asyncio.gather(*(one(p) for p in paths)))


async def wait_all_ended(http: httpx.AsyncClient, paths: list[str], timeout: float) -> list[str]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        now = await statuses(http, paths)
        if all(s not in ("pending", "running") for s in now):
            return now
        assert asyncio.get_running_loop().time() < deadline, now
        await asyncio.sleep(1)


async def test_a_tenants_run_starts_before_another_tenants_backlog(fair: Stack) -> None:
    async with client(fair, KEY_A) as a, client(fair, KEY_B) as b:
        backlog = await create_runs(a, BACKLOG)
        waiting_before = (await statuses(a, backlog)).count("pending")
        assert waiting_before >= BACKLOG // 2  # A's backlog really waits
        tid = str(uuid.uuid4())
        body = {"input": question(), "if_not_exists": "create", "stream_mode": "messages-tuple"}
        events, _ = await read_events(
            b, "POST", f"/threads/{tid}/runs/stream", json=body, until="messages"
        )
        assert events[-1][1] == "messages", events  # B's first token
        waiting_after = (await statuses(a, backlog)).count("pending")
        # B waited for a free slot (at most about one round of the 20 slots), not for the
        # rest of A's backlog: most of it still waits.
        assert waiting_before - waiting_after <= 3 * 2 * SLOTS_PER_REPLICA, (
            waiting_before,
            waiting_after,
        )
        assert waiting_after >= BACKLOG // 3
        # Nothing of A's is lost: every run of the backlog ends in success.
        finals = await wait_all_ended(a, backlog, timeout=120)
        assert finals == ["success"] * BACKLOG


async def test_kill_9_of_a_replica_taking_from_the_fair_queue_loses_and_repeats_nothing(
    fair: Stack,
) -> None:
    async with client(fair, KEY_A) as a, client(fair, KEY_B) as b:
        runs = {a: await create_runs(a, 30), b: await create_runs(b, 30)}
        await asyncio.sleep(1.0)  # both replicas are executing and taking
        fair.procs["orchestrator-1"].signal(signal.SIGKILL)
        for http, paths in runs.items():
            assert await wait_all_ended(http, paths, timeout=120) == ["success"] * len(paths)
        retried = 0
        for http, path in [(http, p) for http, paths in runs.items() for p in paths]:
            events, _ = await read_events(http, "GET", f"{path}/stream")
            names = [e[1] for e in events]
            assert names[-1] == END and sum(n in TERMINAL_EVENTS for n in names) == 1, names
            assert len({e[0] for e in events}) == len(events)  # no event repeated
            retried += names.count(RETRY)
        # Only the runs executing on the killed replica ran again (each once).
        assert 1 <= retried <= SLOTS_PER_REPLICA
    fair.start(fair.orchestrator_proc(1), timeout=60)
