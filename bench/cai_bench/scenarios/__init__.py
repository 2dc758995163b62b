"""The scenarios, one module each, and the plan: which of them run, in which order.

Each scenario is an async function of the harness (`cai_bench.harness.Bench`) and its own
arguments that returns the scenario's record.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from cai_bench.options import Options, runs_for, selected
from cai_bench.scenarios import idle, long, peers, procs, profile, queue, retrieval, stream

if TYPE_CHECKING:
    from cai_bench.harness import Bench


@dataclass(frozen=True)
class Step:
    """One planned scenario: its name, how to run it, and the seconds it needs at least."""

    name: str
    run: Callable[[Bench], Awaitable[dict[str, Any]]]
    needs_s: float


def plan(o: Options) -> list[Step]:
    """Every selected scenario, in the order they run."""
    steps: list[Step] = []
    picked = partial(selected, o.scenarios)
    for d in o.delays_ms:
        for c in o.concurrency:
            name = f"stream-c{c}-d{d:g}"
            if picked(name):
                runs = runs_for(c, d, o.runs_scale)
                steps.append(
                    Step(name, partial(stream.run, name=name, concurrency=c, delay_ms=d, runs=runs,
                                       extra={"max_runs": runs}), 20.0)
                )  # fmt: skip
        pc = o.profile_concurrency
        name = f"profile-c{pc}-d{d:g}"
        if picked(name):
            runs = runs_for(pc, d, o.runs_scale)
            steps.append(
                Step(name, partial(profile.run, name=name, concurrency=pc, runs=runs, delay_ms=d),
                     20.0)
            )  # fmt: skip
    # Long replies: the per-run cost spread over 10× the tokens (with stream-c100-d0 it
    # splits Cai's CPU into a fixed cost per run and a cost per token).
    name = f"long-c{o.profile_concurrency}-d0"
    if 0 in o.delays_ms and picked(name):
        lc = o.profile_concurrency
        runs = max(lc, int(lc * o.runs_scale))
        steps.append(Step(name, partial(long.run, name=name, concurrency=lc, runs=runs), 30.0))
    name = f"idle-{o.idle_connections}"
    if picked(name):
        steps.append(Step(name, partial(idle.run, name=name, n=o.idle_connections), 45.0))
    for r in (1, 2):
        name = f"queue-r{r}"
        if picked(name):
            steps.append(
                Step(name, partial(queue.run, name=name, replicas=r, n=o.queue_runs), 20.0)
            )
    want_retrieval = o.retrieval == "on" or (o.retrieval == "auto" and not o.quick)
    name = "retrieval-c10-d20"
    if picked(name, default=want_retrieval) and o.retrieval != "off":
        runs = runs_for(10, 20, o.runs_scale)
        steps.append(
            Step(name, partial(retrieval.run, name=name, concurrency=10, delay_ms=20.0, runs=runs),
                 90.0)
        )  # fmt: skip
    for c, d in o.procs_loads:
        name = f"procs-c{c}-d{d:g}"
        if picked(name, default=False):  # opt-in: it restarts the services 2 × repeat times
            runs = runs_for(c, d, o.runs_scale)
            steps.append(
                Step(name, partial(procs.run, name=name, concurrency=c, delay_ms=d, runs=runs),
                     30.0 * (1 + len(o.procs_counts) * o.procs_repeat))
            )  # fmt: skip
    for c, d in o.peer_loads:
        name = f"peers-c{c}-d{d:g}"
        if o.peers and picked(name, default=True):  # with BENCH_PEERS set
            runs = runs_for(c, d, o.runs_scale)
            steps.append(
                Step(name, partial(peers.run, name=name, concurrency=c, delay_ms=d, runs=runs),
                     30.0 * (2 + len(o.peers)))
            )  # fmt: skip
    return steps
