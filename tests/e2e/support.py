"""What the e2e suites share besides fixtures: the stacks' settings, API keys and small helpers.

The fixtures themselves live in `conftest.py`; tests import only these plain names.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from cai_gateway.auth import hash_key

# -- the default stack (fixtures `stack`, `gateway`): anonymous access --------------------------
REPLY_TOKENS = 40
# Its one assistant answers without retrieval: the stack runs no retriever, and a run of an
# assistant that retrieves would take the `retrieval_failed` path (tests/e2e/test_agent.py and
# test_tracing.py cover retrieval with a real retriever).
ASSISTANTS = """
- id: chat
  name: Chat
  description: answers without retrieval
"""

# -- the gateway suites' stack (fixtures `gw_stack`, `gw`): API keys, no anonymous access -------
GATEWAY_REPLY_TOKENS = 30
GATEWAY_ASSISTANTS = """
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
    quota: str = "quota-key-0123456789abcdef"  # tenant-q: batch tier, 1 running + 1 queued run


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
  - id: quota
    tenant: tenant-q
    sha256: "{hash_key(keys.quota)}"
    tier: batch
    max_running_runs: 1
    max_queued_runs: 1
"""


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
    check: Callable[[], object], timeout: float = 20.0, interval: float = 0.1, what: str = ""
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
    raise AssertionError(f"{what or 'condition'} not met within {timeout}s (last: {last!r})")
