"""End-to-end fixtures: the real processes, started as `make up` starts them, on free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cai_devstack.stack import Stack, StackConfig

REPLY_TOKENS = 40


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis 8, llm-sim, retriever, orchestrator and gateway as real processes."""
    config = StackConfig.ephemeral(
        tmp_path_factory.mktemp("e2e"),
        llm_sim_args=["--token-delay-ms", "10", "--reply-tokens", str(REPLY_TOKENS)],
        service_env={"SSE_PING_SECONDS": "0.1"},
        with_retriever=False,
    )
    s = Stack(config)
    s.up(timeout=180)
    try:
        yield s
    finally:
        s.down()


@pytest.fixture(scope="session")
def gateway(stack: Stack) -> str:
    """Base URL of the gateway."""
    return stack.gateway_url()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(__file__).parent in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
