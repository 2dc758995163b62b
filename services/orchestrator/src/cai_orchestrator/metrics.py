"""Prometheus metrics of the orchestrator (bounded labels: never run or thread ids).

Gauges say how the pod's processes combine (`multiprocess_mode`, used when a supervisor runs
several: cai_common.supervisor); a single process ignores it.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from cai_common.metrics import TIME_TO_FIRST_TOKEN

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

RUNS_IN_FLIGHT = Gauge(
    "cai_runs_in_flight", "Runs executing on this pod now", multiprocess_mode="livesum"
)
RUN_DURATION = Histogram(
    "cai_run_duration_seconds", "Run execution time by final status", ["status"],
    buckets=RUN_BUCKETS,
)  # fmt: skip
# Tiers, never tenants: the label's values are the three tiers (scheduler.TIERS).
QUEUE_WAIT = Histogram(
    "cai_queue_wait_seconds", "Time from run creation to the start of its execution, by tier",
    ["tier"], buckets=LATENCY_BUCKETS,
)  # fmt: skip
RUNS_ADMITTED = Counter(
    "cai_runs_admitted_total", "Runs admitted under their tenant's quotas, by tier", ["tier"]
)
RUNS_REJECTED_QUOTA = Counter(
    "cai_runs_rejected_quota_total",
    "Run creates refused because the tenant had as many runs not yet ended as its quotas allow, "
    "by tier",
    ["tier"],
)
# Every process samples the same queue: the pod reports the highest live sample.
QUEUE_LAG = Gauge(
    "cai_queue_lag", "Run queue entries not yet delivered to any replica",
    multiprocess_mode="livemax",
)  # fmt: skip
QUEUE_PENDING = Gauge(
    "cai_queue_pending", "Run queue entries delivered but not yet acknowledged",
    multiprocess_mode="livemax",
)  # fmt: skip
TTFT = TIME_TO_FIRST_TOKEN
INTER_TOKEN = Histogram(
    "cai_inter_token_seconds",
    "Time between consecutive content chunks from the model (tokens that arrive in one read "
    "come as one chunk)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)  # fmt: skip
TOKENS = Counter("cai_tokens_total", "Model tokens by direction", ["direction"])
TOOL_CALLS = Counter("cai_tool_calls_total", "Tool calls by tool and outcome", ["tool", "outcome"])
TOOL_DURATION = Histogram(
    "cai_tool_duration_seconds", "Tool call latency", ["tool"], buckets=LATENCY_BUCKETS
)
RETRIES = Counter("cai_run_retries_total", "Run attempts after the first")
RECLAIMS = Counter("cai_run_reclaims_total", "Runs claimed from a replica whose lease lapsed")
