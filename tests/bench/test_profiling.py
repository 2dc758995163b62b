"""Profile samples attributed to activities, on the run engine's old and new module layout."""

from __future__ import annotations

from pathlib import Path

import pytest
from cai_bench.profiling import analyse

LIFECYCLE = "run lifecycle (worker, store, CreateRun)"


def activities(tmp_path: Path, stacks: dict[str, int]) -> dict[str, int]:
    collapsed = tmp_path / "orchestrator.collapsed.txt"
    collapsed.write_text("".join(f"{s} {n}\n" for s, n in stacks.items()))
    rows = analyse(collapsed, process="orchestrator")["activities"]
    return {r["function"]: r["samples"] for r in rows}  # type: ignore[attr-defined,index]


@pytest.mark.parametrize(
    "module",
    [
        "worker.py", "store.py", "servicers/orchestrator.py",  # before the split
        "runs.py", "queue.py", "lease.py", "cancel.py", "records.py", "views.py",
    ],
)  # fmt: skip
def test_run_engine_modules_are_run_lifecycle(tmp_path: Path, module: str) -> None:
    stack = f"thread (1): MainThread;run (asyncio/runners.py);work (cai_orchestrator/{module})"
    assert activities(tmp_path, {stack: 7}) == {LIFECYCLE: 7}


def test_earlier_rules_still_win(tmp_path: Path) -> None:
    # A sample is the first matching rule's, whichever frame of its stack matched.
    writes = (
        "RunQueue.claim (cai_orchestrator/queue.py);EventWriter.add (cai_orchestrator/events.py)"
    )
    stream_run = "OrchestratorServicer.StreamRun (cai_orchestrator/servicers/orchestrator.py)"
    execute = "RunService.execute (cai_orchestrator/runs.py);execute (cai_orchestrator/runner.py)"
    counts = activities(tmp_path, {writes: 3, stream_run: 2, execute: 1})
    assert counts == {
        "event log writes (EventWriter, EventBatcher: XADD pipelines)": 3,
        "StreamRun: gRPC replies to the gateway": 2,
        "per-token event building (runner.execute)": 1,
    }
