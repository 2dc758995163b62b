"""The gateway end-to-end suites' shared stack: real processes, API keys, no anonymous access.

This module holds no tests. The stack is started once per test session however many gateway
modules import the fixture (pytest registers an imported fixture once per module; the stack is a
process-wide singleton behind it).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from cai_devstack.stack import Stack, StackConfig
from cai_gateway.auth import hash_key

REPLY_TOKENS = 30
ASSISTANTS = """
- id: chat
  name: Chat
  metadata: {tier: default}
- id: slow
  name: Slow
  description: streams one token every 150 ms
  metadata: {tier: slow}
  model_headers: {X-Sim-Token-Delay-Ms: "150"}
- id: broken
  name: Broken
  model_headers: {X-Sim-Fail-Status: "500"}
"""


@dataclass(frozen=True)
class Keys:
    """Plain-text API keys of the test tenants (the file stores only their hashes)."""

    alpha: str = "alpha-key-0123456789abcdef"  # tenant-a
    alpha2: str = "alpha-second-key-0123456789"  # tenant-a, another key (own limits)
    beta: str = "beta-key-0123456789abcdef"  # tenant-b
    limited: str = "limited-key-0123456789abcd"  # tenant-l: 2 requests/s, bursts of 3
    one_stream: str = "one-stream-key-0123456789"  # tenant-s: one stream at a time
    fuzz: str = "fuzz-key-0123456789abcdefgh"  # tenant-f: schemathesis's


KEYS = Keys()


def keys_yaml(keys: Keys = KEYS) -> str:
    """The keys file, in the Helm chart's format (plus the optional per-key limits)."""
    return f"""
keys:
  - {{id: alpha, tenant: tenant-a, sha256: "{hash_key(keys.alpha)}"}}
  - {{id: alpha2, tenant: tenant-a, sha256: "{hash_key(keys.alpha2)}"}}
  - {{id: beta, tenant: tenant-b, sha256: "{hash_key(keys.beta)}"}}
  - id: limited
    tenant: tenant-l
    sha256: "{hash_key(keys.limited)}"
    rate_limit_per_second: 2
    rate_limit_burst: 3
  - id: one-stream
    tenant: tenant-s
    sha256: "{hash_key(keys.one_stream)}"
    max_concurrent_streams: 1
  - {{id: fuzz, tenant: tenant-f, sha256: "{hash_key(keys.fuzz)}"}}
"""


_STACK: Stack | None = None


def _start(run_dir: Path) -> Stack:
    (run_dir / "api-keys.yaml").write_text(keys_yaml())
    (run_dir / "assistants.yaml").write_text(ASSISTANTS)
    config = StackConfig.ephemeral(
        run_dir,
        with_retriever=False,
        allow_anonymous=False,
        llm_sim_args=["--token-delay-ms", "5", "--reply-tokens", str(REPLY_TOKENS)],
        service_env={
            "API_KEYS_FILE": str(run_dir / "api-keys.yaml"),
            "ASSISTANTS_FILE": str(run_dir / "assistants.yaml"),
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
        },
    )
    stack = Stack(config)
    stack.up(timeout=120)
    return stack


@pytest.fixture(scope="session")
def gw_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The gateway suites' stack (started once, stopped at the end of the session)."""
    global _STACK
    owner = _STACK is None
    if _STACK is None:
        _STACK = _start(tmp_path_factory.mktemp("gateway-e2e"))
    try:
        yield _STACK
    finally:
        if owner and _STACK is not None:
            _STACK.down()
            _STACK = None


@pytest.fixture(scope="session")
def gw(gw_stack: Stack) -> str:
    """Base URL of the gateway."""
    return gw_stack.gateway_url()


def auth(key: str, style: str = "bearer") -> dict[str, str]:
    """Headers carrying `key` (Authorization: Bearer, or X-Api-Key)."""
    return {"Authorization": f"Bearer {key}"} if style == "bearer" else {"X-Api-Key": key}


def client(base: str, key: str | None = KEYS.alpha, **kwargs: object) -> httpx.AsyncClient:
    """An httpx client for the gateway, authenticated with `key`."""
    headers = auth(key) if key else {}
    return httpx.AsyncClient(base_url=base, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def question(text: str = "How does Cai resume a stream?") -> dict[str, object]:
    """A LangGraph input with one user message."""
    return {"messages": [{"role": "user", "content": text}]}


async def eventually(
    check: Callable[[], object], timeout: float = 20.0, interval: float = 0.1
) -> None:
    """Await `check()` (sync or async) until truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last: {last!r})")
