"""Security suite fixtures: one stack with two tenants (`sec_stack`/`sec`), started on demand.

Modules that need other settings start their own with `cai_devstack.fixtures.running_stack`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cai_devstack.fixtures import running_stack
from cai_devstack.stack import Stack
from tests.security.support import ASSISTANTS, REPLY_TOKENS, keys_yaml

# Settings of the shared stack. Findings add what they need here (one line each, commented).
SECURITY_ENV: dict[str, str] = {
    "SSE_PING_SECONDS": "0.2",
    "MAX_MESSAGE_CHARS": "4000",
    "MAX_MESSAGES": "50",
    "LLM_MAX_RETRIES": "0",
    "SHUTDOWN_GRACE_SECONDS": "2",
    "RUNS_PER_THREAD_INDEX": "20",  # finding 7: a thread's run list keeps its newest 20 runs
}


@pytest.fixture(scope="session")
def sec_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Redis 8, llm-sim, orchestrator and gateway; API keys of tenants `red` and `blue`."""
    run_dir = tmp_path_factory.mktemp("security")
    (run_dir / "api-keys.yaml").write_text(keys_yaml())
    with running_stack(
        run_dir,
        timeout=120,
        assistants=ASSISTANTS,
        with_retriever=False,
        allow_anonymous=False,
        llm_sim_args=["--token-delay-ms", "5", "--reply-tokens", str(REPLY_TOKENS)],
        service_env={"API_KEYS_FILE": str(run_dir / "api-keys.yaml"), **SECURITY_ENV},
    ) as s:
        yield s


@pytest.fixture(scope="session")
def sec(sec_stack: Stack) -> str:
    """Base URL of the security stack's gateway."""
    return sec_stack.gateway_url()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)
