"""Which scenarios a run plans, from BENCH_SCENARIOS and the other options."""

from __future__ import annotations

from pathlib import Path

from cai_bench.options import Options, runs_for, selected
from cai_bench.scenarios import plan


def names(**opts: object) -> list[str]:
    return [s.name for s in plan(Options(out_dir=Path("/nonexistent"), **opts))]  # type: ignore[arg-type]


def test_no_selection_runs_every_default_scenario() -> None:
    assert selected([], "stream-c1-d0")
    assert not selected([], "retrieval-c10-d20", default=False)


def test_selection_by_name_or_prefix() -> None:
    assert selected(["stream"], "stream-c100-d20")
    assert selected(["stream-c100"], "stream-c100-d0")
    assert not selected(["stream-c100"], "stream-c10-d0")
    assert selected(["queue-r2"], "queue-r2") and not selected(["queue-r2"], "queue-r1")
    # A selection overrides the default: retrieval runs when it is asked for by name.
    assert selected(["retrieval"], "retrieval-c10-d20", default=False)


def test_the_quick_plan_in_order() -> None:
    assert names(quick=True, concurrency=[1, 10], profile_concurrency=10, idle_connections=100,
                 long_reply_tokens=200) == [
        "stream-c1-d0", "stream-c10-d0", "profile-c10-d0",
        "stream-c1-d20", "stream-c10-d20", "profile-c10-d20",
        "long-c10-d0", "idle-100", "queue-r1", "queue-r2",
    ]  # fmt: skip


def test_retrieval_is_planned_on_full_runs_only_unless_asked() -> None:
    assert "retrieval-c10-d20" in names()
    assert "retrieval-c10-d20" not in names(quick=True)
    assert "retrieval-c10-d20" in names(quick=True, retrieval="on")
    assert "retrieval-c10-d20" not in names(retrieval="off", scenarios=["retrieval"])


def test_a_prefix_picks_only_its_scenarios() -> None:
    assert names(scenarios=["queue", "stream-c500"]) == [
        "stream-c500-d0", "stream-c500-d20", "queue-r1", "queue-r2",
    ]  # fmt: skip


def test_long_replies_need_the_zero_delay() -> None:
    assert not [n for n in names(delays_ms=[20.0]) if n.startswith("long")]


def test_runs_per_phase() -> None:
    assert runs_for(1, 0, 1.0) == 100 and runs_for(1, 20, 1.0) == 20
    assert runs_for(10, 0, 1.0) == 100 and runs_for(100, 20, 1.0) == 200
    assert runs_for(500, 0, 0.3) == 500  # never fewer than one round
