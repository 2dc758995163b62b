"""The supervisor of a service's processes: how many, restarts, giving up, draining, health."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from cai_common.supervisor import (
    CONFIG_ERROR,
    HealthBoard,
    Supervisor,
    clear_slot,
    cpu_limit,
    process_count,
)


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("200000 100000\n", 2), ("150000 100000\n", 2), ("50000 100000\n", 1), ("max 100000\n", None)],
)
def test_cpu_limit_is_the_cgroup_quota_rounded_up(
    tmp_path: Path, cpu_max: str, expected: int | None
) -> None:
    path = tmp_path / "cpu.max"
    path.write_text(cpu_max)
    cpus = len(os.sched_getaffinity(0))
    assert cpu_limit(path) == (min(expected, cpus) if expected else cpus)
    assert cpu_limit(tmp_path / "missing") == cpus  # cgroup v1 or no cgroup: the CPUs we may use
    assert process_count(3) == 3 and process_count(0) == cpu_limit()


def test_health_board_speaks_for_every_worker(tmp_path: Path) -> None:
    path = HealthBoard.create(tmp_path, 2)
    first, second = HealthBoard(path, 0), HealthBoard(path, 1)
    first.set(True)
    assert not first.all_serving()  # the other has not said it is ready
    second.set(True)
    assert first.all_serving() and second.all_serving()
    clear_slot(path, 1)  # the supervisor, when the second dies
    assert not first.all_serving()


def worker(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# A worker that records its start, then lives until SIGTERM (exit 0) or dies with `CODE` after
# DIE_AFTER seconds when that is set.
WORKER = """
import os, signal, sys, time
open(os.environ["STARTS"], "a").write(os.environ["CAI_WORKER_INDEX"] + "\\n")
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
die_after = float(os.environ.get("DIE_AFTER", "0"))
deadline = time.monotonic() + (die_after or 60)
while time.monotonic() < deadline:
    time.sleep(0.02)
sys.exit(int(os.environ.get("CODE", "1")))
"""


def run_in_thread(sup: Supervisor) -> tuple[threading.Thread, list[int]]:
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(sup.run()), daemon=True)
    return thread, codes


def starts(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def wait_for(check, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met")


def test_a_dead_worker_is_restarted_and_sigterm_drains_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "starts"
    monkeypatch.setenv("STARTS", str(log))
    sup = Supervisor("t", 2, worker(WORKER), poll_s=0.02)
    thread, codes = run_in_thread(sup)
    # signal.signal() works only in the main thread: run there, stop from a helper thread.
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    thread.start()
    wait_for(lambda: sorted(starts(log)) == ["0", "1"] and len(sup.worker_pids()) == 2)
    os.kill(sup.worker_pids()[1], signal.SIGKILL)
    wait_for(lambda: len(starts(log)) == 3 and len(sup.worker_pids()) == 2)
    assert starts(log)[2] == "1"  # the same slot again
    sup._on_signal(signal.SIGTERM, None)
    thread.join(10)
    assert codes == [0] and sup.worker_pids() == []


@pytest.mark.parametrize(("code", "expected"), [(CONFIG_ERROR, CONFIG_ERROR), (1, 1)])
def test_it_gives_up_on_a_configuration_error_or_too_many_deaths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, expected: int
) -> None:
    log = tmp_path / "starts"
    monkeypatch.setenv("STARTS", str(log))
    monkeypatch.setenv("DIE_AFTER", "0.05")
    monkeypatch.setenv("CODE", str(code))
    monkeypatch.setattr(signal, "signal", lambda *a: None)
    sup = Supervisor("t", 1, worker(WORKER), max_restarts=2, poll_s=0.02)
    sup_codes: list[int] = []
    thread = threading.Thread(target=lambda: sup_codes.append(sup.run()), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(30)
    assert sup_codes == [expected]
    # A configuration error is not retried; other deaths are, up to max_restarts in the window.
    assert len(starts(log)) == (1 if code == CONFIG_ERROR else 3)
    assert time.monotonic() - started < 20
