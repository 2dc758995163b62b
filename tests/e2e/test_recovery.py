"""A gateway whose orchestrator is down answers 503 and recovers by itself (and stays ready,
reporting the orchestrator in /readyz: tests/security/test_readiness.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from cai_devstack.fixtures import running_stack
from cai_devstack.stack import Stack
from tests.e2e.support import ASSISTANTS


@pytest.fixture
def small_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("recovery"),
        timeout=120,
        assistants=ASSISTANTS,
        with_retriever=False,
    ) as s:
        yield s


def eventually(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s")


def orchestrator_seen(url: str) -> str:
    """The orchestrator's state as the gateway's /readyz reports it."""
    return str(httpx.get(f"{url}/readyz").json()["dependencies"]["orchestrator"])


def test_orchestrator_down_means_503_then_recovery(small_stack: Stack) -> None:
    url = small_stack.gateway_url()
    assert httpx.get(f"{url}/readyz").status_code == 200
    small_stack.procs["orchestrator"].stop()

    eventually(lambda: orchestrator_seen(url) == "unavailable")
    assert httpx.get(f"{url}/readyz").status_code == 200  # degraded, still serving
    created = httpx.post(f"{url}/threads", json={}, timeout=10)
    assert created.status_code == 503
    assert created.json()["status"] == 503 and created.headers.get("retry-after")
    assert httpx.get(f"{url}/healthz").status_code == 200  # alive, just not ready

    small_stack.start(small_stack.orchestrator_proc(0), timeout=60)
    eventually(lambda: orchestrator_seen(url) == "serving")
    assert httpx.post(f"{url}/threads", json={}, timeout=10).status_code == 200
