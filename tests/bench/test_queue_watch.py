"""The queue scenario's status polling: which runs it asks about, and how many at once."""

from __future__ import annotations

from cai_bench.scenarios.queue import MAX_POLL_WIDTH, next_width, oldest_open


def test_oldest_open_runs_in_creation_order() -> None:
    created = {"r1": "t1", "r2": "t2", "r3": "t3", "r4": "t4"}
    finished = {"r1": (1.0, "success"), "r3": (1.0, "error")}
    assert oldest_open(created, finished, 1) == ["r2"]
    assert oldest_open(created, finished, 8) == ["r2", "r4"]
    assert oldest_open(created, {r: (1.0, "success") for r in created}, 8) == []


def test_width_doubles_while_every_run_asked_about_has_ended() -> None:
    assert next_width(1, 1, 1) == 2
    assert next_width(4, 4, 4) == 8
    assert next_width(MAX_POLL_WIDTH, MAX_POLL_WIDTH, MAX_POLL_WIDTH) == MAX_POLL_WIDTH


def test_width_falls_to_one_when_none_had_ended_and_holds_otherwise() -> None:
    assert next_width(8, 8, 0) == 1
    assert next_width(8, 8, 3) == 8
