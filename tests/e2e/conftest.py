"""End-to-end fixtures: the real processes, started as `make up` starts them, on free ports.

Two stacks, each started at most once per session and only if a selected test needs it:
`stack`/`gateway` (anonymous access) and `gw_stack`/`gw` (the gateway suites': API keys, limits).
Modules that need other settings start their own with `cai_devstack.fixtures.running_stack`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cai_devstack.fixtures import running_stack
from cai_devstack.stack import Stack
from tests.e2e.support import (
    ASSISTANTS,
    GATEWAY_ASSISTANTS,
    GATEWAY_REPLY_TOKENS,
    REPLY_TOKENS,
    keys_yaml,
)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis 8, llm-sim, orchestrator and gateway as real processes (no retriever)."""
    with running_stack(
        tmp_path_factory.mktemp("e2e"),
        assistants=ASSISTANTS,
        with_retriever=False,
        llm_sim_args=["--token-delay-ms", "10", "--reply-tokens", str(REPLY_TOKENS)],
        service_env={"SSE_PING_SECONDS": "0.1"},
    ) as s:
        yield s


@pytest.fixture(scope="session")
def gateway(stack: Stack) -> str:
    """Base URL of the gateway."""
    return stack.gateway_url()


@pytest.fixture(scope="session")
def gw_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The gateway suites' stack: API keys (support.KEYS), no anonymous access, tight limits."""
    run_dir = tmp_path_factory.mktemp("gateway-e2e")
    (run_dir / "api-keys.yaml").write_text(keys_yaml())
    with running_stack(
        run_dir,
        timeout=120,
        assistants=GATEWAY_ASSISTANTS,
        with_retriever=False,
        allow_anonymous=False,
        llm_sim_args=["--token-delay-ms", "5", "--reply-tokens", str(GATEWAY_REPLY_TOKENS)],
        service_env={
            "API_KEYS_FILE": str(run_dir / "api-keys.yaml"),
            "SSE_PING_SECONDS": "0.2",
            "RATE_LIMIT_PER_SECOND": "200",
            "RATE_LIMIT_BURST": "2000",
            "MAX_CONCURRENT_STREAMS": "50",
            "STREAM_SLOT_TTL_SECONDS": "6",
            "MAX_BODY_BYTES": "65536",
            "MAX_MESSAGE_CHARS": "4000",
            "MAX_MESSAGES": "50",
            "CORS_ORIGINS": "https://app.example.com",
            "LLM_MAX_RETRIES": "0",
            "SHUTDOWN_GRACE_SECONDS": "1",
            "PUBLIC_DOCS": "true",  # test_gateway_schema reads /openapi.json from the live gateway
        },
    ) as s:
        yield s


@pytest.fixture(scope="session")
def gw(gw_stack: Stack) -> str:
    """Base URL of the gateway suites' gateway."""
    return gw_stack.gateway_url()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(__file__).parent in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
