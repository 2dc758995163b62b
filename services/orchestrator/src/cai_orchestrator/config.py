"""Orchestrator settings (environment variables, upper-case field names)."""

from __future__ import annotations

import os
import socket
from typing import Literal

from pydantic import Field

from cai_common.settings import GrpcServerSettings


def _default_replica_id() -> str:
    return f"{os.environ.get('POD_NAME') or socket.gethostname()}:{os.getpid()}"


class Settings(GrpcServerSettings):
    """Everything the orchestrator reads from its environment."""

    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50051
    metrics_port: int = 9464
    grpc_max_connection_age_seconds: float = 300.0
    shutdown_grace_seconds: float = 30.0
    # With mutual TLS, only the gateway's certificate may send a tenant's principal.
    grpc_trusted_clients: str = "cai-gateway"

    # Queue, event logs and run records: any Redis >= 7.
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Thread checkpoints: redis:// (Redis 8 / Stack: RedisJSON + RediSearch), postgresql://, memory://.
    # Empty: the same as redis_url.
    checkpoint_url: str = ""

    openai_base_url: str = "http://127.0.0.1:8090/v1"
    openai_api_key: str = "sim-key"
    default_model: str = "cai-sim"
    # An LLM call fails if no byte arrives for this long (a stalled stream), or connecting takes
    # longer than llm_connect_timeout_seconds. Failed calls are retried with backoff (429, 5xx,
    # connection errors) up to llm_max_retries times.
    llm_stall_seconds: float = 30.0
    llm_connect_timeout_seconds: float = 5.0
    llm_max_retries: int = 2

    retriever_addr: str = "127.0.0.1:50052"
    assistants_file: str = ""

    # Identity of this replica in run records and as the queue consumer name. Each process of a
    # pod is a replica of its own (the default names the pod and the pid).
    replica_id: str = Field(default_factory=_default_replica_id)
    # Processes per pod, each a replica consuming the queue (a supervisor starts them and
    # restarts one that dies; cai_common.supervisor). 0: the CPU limit (cgroup quota, else the
    # CPUs the process may use). One process uses one core at most.
    orchestrator_processes: int = Field(default=0, ge=0)
    # Runs executed at once by the pod (shared out over its processes); the rest wait in the queue.
    max_concurrent_runs: int = 100
    # Tiers and quotas of a tenant whose API key sets none (scheduler.py, docs/api.md#quotas):
    # past max_running + max_queued runs not yet ended, creating a run is refused (HTTP 429 with
    # Retry-After: quota_retry_after_seconds).
    default_tier: Literal["premium", "standard", "batch"] = "standard"
    tenant_max_running_runs: int = Field(default=50, ge=1)
    tenant_max_queued_runs: int = Field(default=1000, ge=0)
    quota_retry_after_seconds: int = Field(default=5, ge=1)
    # Fair dispatch: backlogged tenants share run slots in proportion to their tier's weight.
    weight_premium: float = Field(default=4.0, gt=0)
    weight_standard: float = Field(default=2.0, gt=0)
    weight_batch: float = Field(default=1.0, gt=0)
    # How often (at most) a tenant at its quota has its admitted runs checked for leaks.
    quota_repair_interval_seconds: float = 5.0
    # How long a worker's lease lives without a heartbeat; a dead worker's runs are reclaimed after.
    lease_seconds: float = 10.0
    max_attempts: int = 3
    # Per-run deadline (status "timeout").
    run_timeout_seconds: float = 600.0
    # Token deltas that follow within this window are coalesced into one event (the first token
    # of a message, and any after a pause, go out at once). 25 ms: 40 updates a second at most.
    coalesce_ms: float = 25.0
    # A message's token events store what they repeat (its id, LangGraph's metadata) once
    # (frames.py). Every replica reads both forms; turn this off while replicas of a version
    # before that still run (the first rollout), so none of them meets a log it cannot read.
    compact_event_logs: bool = True
    # Event logs and run records live this long after a run ends (never longer than the thread).
    event_log_ttl_seconds: int = 3600
    run_record_ttl_seconds: int = 7 * 24 * 3600
    # A thread's run list keeps its newest runs: older finished runs are deleted as new ones come.
    runs_per_thread_index: int = Field(default=1000, ge=1)
    # A thread, its run records and its checkpoints (on the Redis checkpointer) expire this long
    # after their last use; a thread never expires while a run of it is active. 0: keep forever.
    thread_ttl_seconds: int = 30 * 24 * 3600
    # The largest state (JSON bytes of its values) a thread may grow to: state updates and runs
    # that would pass it are refused (RESOURCE_EXHAUSTED). 0: no limit.
    max_thread_state_bytes: int = 8 * 1024 * 1024
    # How long StreamRun waits for a new event before sending an empty heartbeat reply.
    stream_heartbeat_seconds: float = 10.0
    # A cancel-on-disconnect run whose stream a server ended (a gateway or orchestrator shutting
    # down, a gateway dying) is cancelled only if no stream re-joins it within this (reattach.py).
    reattach_grace_seconds: float = 30.0

    def within_thread_ttl(self, seconds: int) -> int:
        """`seconds`, cut to the thread TTL: nothing of a thread outlives the thread."""
        return min(seconds, self.thread_ttl_seconds) if self.thread_ttl_seconds > 0 else seconds

    @property
    def effective_checkpoint_url(self) -> str:
        """The checkpointer URL, defaulting to the queue's Redis."""
        return self.checkpoint_url or self.redis_url
