"""A phase's summary: what counts as an error, and what counts as Cai's CPU."""

from __future__ import annotations

from cai_bench.loadgen import StreamResult
from cai_bench.phases import Phase, summarize


def result(text: str, terminal: str = "end", error: str = "") -> StreamResult:
    r = StreamResult("cai", t_start=1.0, t_first=1.01, t_end=1.1, terminal=terminal, error=error)
    r.text, r.tokens, r.events = text, len(text.split()), len(text.split()) + 2
    return r


def phase(results: list[StreamResult], started: int) -> Phase:
    return Phase(
        kind="cai", concurrency=2, runs=started, results=results, wall_s=1.0,
        cpu_s={"gateway": 0.2, "orchestrator": 0.5, "redis": 0.1, "llm-sim": 0.3, "loadgen": 0.4},
        peak_rss={"gateway": 100 * 1024 * 1024}, others_cpu_s=0.0, timed_out=False,
        crashed=[], started=started,
    )  # fmt: skip


def test_errors_count_failed_and_unfinished_streams() -> None:
    p = phase([result("a b c d"), result("", "error", "error: boom")], started=3)
    s = summarize(p, expected_tokens=4, cai_names=["gateway", "orchestrator", "redis"])
    assert (s["runs"], s["completed"], s["errors"], s["unfinished"]) == (2, 1, 2, 1)
    assert s["error_samples"] == ["error: boom"]
    assert s["wrong_length"] == 0 and s["tokens"] == 4
    assert s["ttft_ms"]["p50"] == 10.0


def test_cai_cpu_is_the_named_processes_only() -> None:
    p = phase([result("a b c d")], started=1)
    s = summarize(p, expected_tokens=5, cai_names=["gateway", "orchestrator", "redis"])
    assert s["cai_cpu_s"] == 0.8
    assert s["cai_cpu_us_per_token"] == 200000.0
    assert s["wrong_length"] == 1
    assert s["peak_rss_mb"] == {"gateway": 100.0}
