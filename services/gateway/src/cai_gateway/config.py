"""Gateway settings (environment variables, upper-case field names)."""

from __future__ import annotations

from cai_common.settings import ServiceSettings


class Settings(ServiceSettings):
    """Everything the gateway reads from its environment."""

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    orchestrator_addr: str = "127.0.0.1:50051"
    # Seconds between SSE heartbeat comments on open streams.
    sse_ping_seconds: float = 15.0
    # Deadline for unary calls to the orchestrator.
    rpc_timeout_seconds: float = 30.0
    # Anonymous callers act as this tenant; only when explicitly allowed (local use).
    allow_anonymous: bool = False
    anonymous_tenant: str = "default"
    # Largest accepted request body.
    max_body_bytes: int = 1024 * 1024
