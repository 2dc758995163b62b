"""Readiness (issue 14): one orchestrator outage must not make every gateway NotReady.

A gateway's /readyz used to be the orchestrator's health: with the orchestrator away, every
gateway left the load balancer at once and clients got the proxy's errors. Readiness is now the
gateway's own ("it can serve": answer, authenticate, limit, say 503 + Retry-After for what needs
an orchestrator); a degraded dependency shows in /readyz's body and in
`cai_gateway_dependency_up`; only shutting down makes a gateway unready (and a stopping
uvicorn closes its listening socket at once, so a probe then fails anyway).
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from cai_devstack.fixtures import running_stack
from cai_devstack.stack import Stack
from tests.e2e.support import client, eventually
from tests.security.support import KEYS, keys_yaml


@pytest.fixture(scope="module")
def ready_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis, llm-sim, one orchestrator (which the test stops) and two gateways."""
    run_dir = tmp_path_factory.mktemp("readiness")
    (run_dir / "api-keys.yaml").write_text(keys_yaml())
    with running_stack(
        run_dir,
        timeout=120,
        with_retriever=False,
        allow_anonymous=False,
        gateway_replicas=2,
        service_env={
            "API_KEYS_FILE": str(run_dir / "api-keys.yaml"),
            "SHUTDOWN_GRACE_SECONDS": "1",
        },
    ) as s:
        yield s


async def readyz(base: str) -> httpx.Response:
    async with client(base, None) as http:
        return await http.get("/readyz")


async def dependency_up(metrics_url: str) -> float:
    """The gateway's `cai_gateway_dependency_up{dependency="orchestrator"}`."""
    async with httpx.AsyncClient(timeout=10) as http:
        text = (await http.get(metrics_url)).text
    (line,) = [
        line
        for line in text.splitlines()
        if line.startswith('cai_gateway_dependency_up{dependency="orchestrator"}')
    ]
    return float(line.rsplit(" ", 1)[1])


async def test_an_orchestrator_outage_degrades_the_gateways_without_making_them_unready(
    ready_stack: Stack,
) -> None:
    gateways = [ready_stack.gateway_url(i) for i in (0, 1)]
    metrics = dict(zip(gateways, [ready_stack.gateway_metrics_url(i) for i in (0, 1)], strict=True))
    for base in gateways:
        ok = await readyz(base)
        assert ok.status_code == 200
        assert ok.json() == {"status": "ok", "dependencies": {"orchestrator": "serving"}}
        assert await dependency_up(metrics[base]) == 1

    ready_stack.procs["orchestrator"].stop()
    try:
        for base in gateways:

            async def degraded(base: str = base) -> bool:
                return (await readyz(base)).json()["status"] == "degraded"

            await eventually(degraded, timeout=20)
            answer = await readyz(base)
            assert answer.status_code == 200  # still in the load balancer: it serves
            assert answer.json()["dependencies"] == {"orchestrator": "unavailable"}
            assert await dependency_up(metrics[base]) == 0
            # What it serves: a clear 503 problem with Retry-After, not a proxy error...
            async with client(base, KEYS.red) as http:
                created = await http.post("/threads", json={})
                assert created.status_code == 503 and created.headers.get("retry-after")
                assert created.headers["content-type"].startswith("application/problem+json")
                # ...and everything that needs no orchestrator, such as refusing bad keys.
            async with client(base, "not-a-key") as http:
                assert (await http.post("/threads", json={})).status_code == 401
    finally:
        ready_stack.start(ready_stack.orchestrator_proc(0), timeout=60)

    for base in gateways:

        async def recovered(base: str = base) -> bool:
            return (await readyz(base)).json()["status"] == "ok"

        await eventually(recovered, timeout=30)
        async with client(base, KEYS.red) as http:
            assert (await http.post("/threads", json={})).status_code == 200
