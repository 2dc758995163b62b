"""Finding 5: the gateway served `/metrics` (and the API docs) on its public port, reachable
through the Ingress. Metrics now live on their own port (GATEWAY_METRICS_PORT) like the other
services'; `/docs`, `/redoc` and `/openapi.json` are served only when PUBLIC_DOCS says so.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cai_devstack.procs import Proc, free_port, http_ready, python_module
from cai_devstack.stack import Stack
from tests.security.support import KEYS

DOCS = ("/docs", "/redoc", "/openapi.json")


def _assert_not_found_problem(response: httpx.Response) -> None:
    assert response.status_code == 404, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def test_metrics_are_not_on_the_public_port_but_on_the_metrics_port(
    sec_stack: Stack, sec: str
) -> None:
    with httpx.Client(base_url=sec, timeout=10) as http:
        unknown = f"/threads/{uuid.uuid4()}"
        assert http.get(unknown, headers={"X-Api-Key": KEYS.red}).status_code == 404
        public = http.get("/metrics")
    _assert_not_found_problem(public)
    assert "cai_http_requests_total" not in public.text
    metrics = httpx.get(f"http://127.0.0.1:{sec_stack.config.gateway_metrics_port}/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    # The gateway's own counters, including the request just made on the public port.
    assert 'cai_http_requests_total{method="GET",route="/threads/{thread_id}",status="404"}' in (
        metrics.text
    )


def test_api_docs_are_hidden_by_default(sec: str) -> None:
    with httpx.Client(base_url=sec, timeout=10) as http:
        for path in DOCS:
            _assert_not_found_problem(http.get(path))


@pytest.fixture(scope="module")
def docs_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A lone gateway process with PUBLIC_DOCS=true (the docs need no orchestrator)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = Proc(
        "gateway-public-docs",
        python_module("cai_gateway"),
        Path(tmp_path_factory.mktemp("public-docs")) / "gateway.log",
        env={
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(port),
            "GATEWAY_METRICS_PORT": str(free_port()),
            "ORCHESTRATOR_ADDR": f"127.0.0.1:{free_port()}",
            "REDIS_URL": "",
            "PUBLIC_DOCS": "true",
        },
        ready=http_ready(f"{url}/healthz"),
    ).start()
    try:
        proc.wait_ready(60)
        yield url
    finally:
        proc.stop()


def test_api_docs_are_served_when_public_docs_is_on(docs_gateway: str) -> None:
    with httpx.Client(base_url=docs_gateway, timeout=10) as http:
        for path in DOCS:
            assert http.get(path).status_code == 200, path
        schema = http.get("/openapi.json").json()
        assert "/threads" in schema["paths"] and "/metrics" not in schema["paths"]
        _assert_not_found_problem(http.get("/metrics"))
