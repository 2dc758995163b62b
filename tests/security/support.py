"""What the security suite shares besides fixtures: two tenants' keys and the stack's settings.

Each module under tests/security/ turns one finding of the tenant-isolation review (issue 14) into
tests that fail without its fix. Tests start real processes (`sec_stack`) unless a finding is about
one component, which is then tested against real Redis / a real gRPC server.
"""

from __future__ import annotations

from dataclasses import dataclass

from cai_gateway.auth import hash_key

REPLY_TOKENS = 20
ASSISTANTS = """
- id: chat
  name: Chat
  description: answers without retrieval
- id: slow
  name: Slow
  description: streams one token every 200 ms
  model_headers: {X-Sim-Token-Delay-Ms: "200"}
- id: locked
  name: Locked persona
  system_prompt: "You are the locked persona."
  allow_system_prompt_override: false
- id: looper
  name: Looper
  description: calls a tool every turn; its recursion limit ends it
  recursion_limit: 4
  model_headers: {X-Sim-Tool-Mode: always}
  tools: ["tests.e2e.agent_tools:echo"]
- id: open
  name: Open persona
  system_prompt: "You are the open persona."
  allow_system_prompt_override: true
- id: broken
  name: Broken model
  description: every model call fails with a 500 whose body names llm-sim
  model_headers: {X-Sim-Fail-Status: "500"}
- id: leaky-tool
  name: Leaky tool
  description: its one tool fails with internal details in the exception
  model_headers: {X-Sim-Tool-Mode: never}
  tools: ["tests.security.leaky_tools:inventory"]
"""


@dataclass(frozen=True)
class Keys:
    """Plain-text API keys of the two test tenants (the file stores only their hashes)."""

    red: str = "red-key-0123456789abcdefghij"  # tenant red
    blue: str = "blue-key-0123456789abcdefghi"  # tenant blue
    metered: str = "metered-key-0123456789abcdef"  # tenant red, a bucket of 40 that barely refills


KEYS = Keys()


def keys_yaml(keys: Keys = KEYS) -> str:
    """The keys file of the security stack: two tenants, one key each."""
    return f"""
keys:
  - {{id: red, tenant: red, subject: red-team, sha256: "{hash_key(keys.red)}"}}
  - {{id: blue, tenant: blue, sha256: "{hash_key(keys.blue)}"}}
  - id: metered
    tenant: red
    sha256: "{hash_key(keys.metered)}"
    rate_limit_per_second: 0.01
    rate_limit_burst: 40
"""
