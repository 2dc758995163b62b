"""The benchmark report's arithmetic (the benchmark itself runs with `make bench`)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from cai_bench.report import fixed_and_marginal, markdown  # noqa: E402


def stream(tokens: int, us_per_token: float, **extra: object) -> dict[str, object]:
    summary = {
        "runs": 1,
        "errors": 0,
        "tokens_per_s": 1.0,
        "ttft_ms": dict.fromkeys(("p50", "p95", "p99"), 1.0),
    }
    return {
        "scenario": "stream",
        "concurrency": 100,
        "token_delay_ms": 0.0,
        "reply_tokens": tokens,
        "cai": {**summary, "cai_cpu_us_per_token": us_per_token},
        "floor": summary,
        "vs_floor": {
            "ttft_overhead_ms": dict.fromkeys(("p50", "p95", "p99"), 0.0),
            "tokens_per_s_ratio": 1.0,
        },
        "integrity": {
            "tokens_lost": 0,
            "tokens_repeated": 0,
            "event_ids_repeated_or_reordered": 0,
            "text_mismatch": 0,
            "streams_checked": 1,
        },
        **extra,
    }


def test_cpu_splits_into_a_cost_per_run_and_per_token() -> None:
    # 20 ms per run + 10 µs per token: 100 tokens → 210 µs/token, 1,000 → 30 µs/token.
    records = [stream(100, 210.0), stream(1000, 30.0, long_reply=True)]
    assert fixed_and_marginal(records) == {
        "concurrency": 100, "short_tokens": 100, "long_tokens": 1000,
        "per_run_ms": 20.0, "per_token_us": 10.0,
    }  # fmt: skip
    text = markdown(records)
    assert "100 × 1,000-token replies" in text and "**20.0 CPU-ms per run**" in text


def test_no_split_without_both_scenarios() -> None:
    assert fixed_and_marginal([stream(100, 210.0)]) is None


def idle(**extra: object) -> dict[str, object]:
    per = {"gateway": 40.0, "orchestrator": 100.0, "redis": 1.0}
    return {
        "scenario": "idle",
        "name": "idle-100",
        "connections": 100,
        "held": 100,
        "runs_executing": 100,
        "kib_per_connection": per,
        "hold_cpu_ms_per_connection_per_min": per,
        "rss_before_mb": per,
        "rss_held_mb": per,
        "hold_s": 10,
        "cancel_all_s": 0.5,
        "ended_with": {"cancelled": 100},
        "errors": 0,
        **extra,
    }


def test_the_idle_line_reports_cancel_latency_when_measured() -> None:
    latency = {"n": 100, "p50": 8.25, "p95": 20.0, "p99": 25.0, "mean": 9.0, "max": 31.5}
    text = markdown([idle(cancel_latency_ms=latency)])
    assert "p50 8.2 ms, p95 20.0 ms, max 31.5 ms, n=100" in text
    assert "cancel request" not in markdown([idle()])  # older runs did not measure it
