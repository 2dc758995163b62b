"""The queue scenario's status polling: which runs it asks about, and how many at once."""

from __future__ import annotations

from cai_bench.scenarios.queue import MAX_POLL_WIDTH, PollOrder


def walk(ends_after: dict[str, int], max_rounds: int = 100) -> tuple[dict[str, int], int, int]:
    """Poll runs that end after being asked about `ends_after[run]` times.

    Returns (round each run was seen ended, requests made, pauses).
    """
    order, open_runs = PollOrder(), list(ends_after)
    asked: dict[str, int] = dict.fromkeys(ends_after, 0)
    seen: dict[str, int] = {}
    requests = pauses = 0
    for n in range(max_rounds):
        if not open_runs:
            break
        batch = order.batch(open_runs)
        ended = [r for r in batch if asked[r] >= ends_after[r]]
        for r in batch:
            asked[r] += 1
        requests += len(batch)
        for r in ended:
            seen[r] = n
            open_runs.remove(r)
        pauses += order.update(len(batch), len(ended))
    return seen, requests, pauses


def test_runs_that_have_ended_cost_one_request_each() -> None:
    seen, requests, pauses = walk({f"r{i}": 0 for i in range(20)})
    assert len(seen) == 20 and requests == 20 and pauses == 0


def test_the_width_doubles_up_to_its_cap_and_falls_to_one_with_a_pause() -> None:
    order = PollOrder()
    widths = []
    for _ in range(5):
        widths.append(order.width)
        assert order.update(order.width, order.width) is False
    assert widths == [1, 2, 4, 8, MAX_POLL_WIDTH]
    assert order.update(8, 0) is True and order.width == 1


def test_a_slow_oldest_run_does_not_hide_the_others() -> None:
    ends_after = {"slow": 50, **{f"r{i}": 0 for i in range(30)}}
    seen, requests, pauses = walk(ends_after, max_rounds=200)
    assert set(seen) == set(ends_after)
    # Every fast run is seen within the first few rounds, long before the slow one ends.
    assert max(seen[f"r{i}"] for i in range(30)) < 15 < seen["slow"]
    # Once only the slow run is left, it is asked about once per pause.
    assert requests - 30 <= pauses + 1


def test_a_batch_with_open_runs_steps_past_them() -> None:
    order = PollOrder()
    order.width = 4
    assert order.batch(["a", "b", "c", "d", "e", "f"]) == ["a", "b", "c", "d"]
    assert order.update(4, 2) is False  # say a and c ended; b and d are still open
    assert order.batch(["b", "d", "e", "f"]) == ["e", "f"]
    assert order.update(2, 0) is True
    assert order.batch(["b", "d", "e", "f"]) == ["b"]  # wrapped around to the oldest
