"""Gateway settings (environment variables, upper-case field names)."""

from __future__ import annotations

from pydantic import Field, field_validator

from cai_common.settings import ServiceSettings
from cai_common.tenants import check_tenant


class Settings(ServiceSettings):
    """Everything the gateway reads from its environment."""

    gateway_host: str = "127.0.0.1"
    gateway_port: int = 8080
    # Prometheus /metrics on its own port (same host), never on the public one; 0: off.
    gateway_metrics_port: int = 9466
    # Serve /docs, /redoc and /openapi.json on the public port (off: they map the API for anyone).
    public_docs: bool = False
    orchestrator_addr: str = "127.0.0.1:50051"
    # Worker processes on the port (a supervisor binds it and restarts a worker that dies;
    # cai_common.supervisor). 0: the CPU limit (cgroup quota, else the CPUs the process may use).
    gateway_workers: int = Field(default=0, ge=0)
    # Seconds between SSE heartbeat comments on open streams (and whitespace on /wait bodies).
    sse_ping_seconds: float = 15.0
    # Deadline for unary calls to the orchestrator.
    rpc_timeout_seconds: float = 30.0

    # -- auth ---------------------------------------------------------------------------------
    # YAML `keys: [{id, tenant, sha256}]` (the Helm chart's Secret); re-read when it changes.
    api_keys_file: str = ""
    # Seconds between checks of the keys file for changes (Secret rotation).
    api_keys_reload_seconds: float = 5.0
    # Anonymous callers act as this tenant; only when explicitly allowed (local use).
    allow_anonymous: bool = False
    anonymous_tenant: str = "default"

    # -- limits -------------------------------------------------------------------------------
    # Redis for rate limits and stream caps only (never run data). Empty: limits are off.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Per API key: sustained requests per second (token bucket refill; 0 turns limits off)...
    rate_limit_per_second: float = 20.0
    # ...and the bucket size (requests allowed in a burst).
    rate_limit_burst: int = 100
    # Per API key: concurrent open streams and waits (SSE, /wait, /join, chat completions).
    # At least 1 (0 is refused at start-up: it once meant "unlimited").
    max_concurrent_streams: int = Field(default=32, ge=1)
    # A stream slot not refreshed for this long is reclaimed (a gateway that died leaks none).
    stream_slot_ttl_seconds: float = 30.0
    # With Redis unreachable: true lets requests through (logged), false answers 503.
    limits_fail_open: bool = True
    # Per-call timeout of limiter Redis calls, and how long to skip Redis after a failure.
    limits_redis_timeout_seconds: float = 0.25
    limits_redis_retry_seconds: float = 2.0
    # Largest accepted request body (413 beyond; counted while reading, not from headers).
    max_body_bytes: int = 1024 * 1024
    # Largest message text (characters) and most messages in one request (422 beyond).
    max_message_chars: int = 32_000
    max_messages: int = 200

    # -- browsers -----------------------------------------------------------------------------
    # Comma-separated allowed CORS origins ("*" for any); empty: no CORS headers.
    cors_origins: str = ""

    @field_validator("anonymous_tenant")
    @classmethod
    def _tenant_name(cls, value: str) -> str:
        return check_tenant(value)

    def cors_origin_list(self) -> list[str]:
        """`CORS_ORIGINS` as a list."""
        return [o.strip() for o in self.cors_origins.split(",") if o.strip()]
