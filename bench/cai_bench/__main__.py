"""`make bench` / `PYTHONPATH=bench python -m cai_bench`: run the suite, write JSON lines + PNG.

Environment (each also a flag, see --help):
  BENCH_SCENARIOS        comma list of scenario names or prefixes (default: all). Names:
                         stream-c{N}-d{MS}, profile-c100-d0, long-c100-d0 (1,000-token
                         replies), idle-{N}, queue-r1, queue-r2,
                         retrieval-c10-d20; prefixes such as "stream", "stream-c100", "queue".
  BENCH_QUICK=1          the ~1-minute smoke version (small counts, short replies).
  BENCH_CONCURRENCY      default 1,10,100,500
  BENCH_DELAYS_MS        llm-sim inter-token delays, default 0,20
  BENCH_REPLY_TOKENS     reply length, default 100
  BENCH_TTFT_MS          llm-sim time to first token, default 0
  BENCH_RUNS_SCALE       multiplies streams per scenario, default 1
  BENCH_IDLE_CONNECTIONS default 1000
  BENCH_QUEUE_RUNS       default 300
  BENCH_RETRIEVAL        auto (full runs only) | on | off
  BENCH_BUDGET_S         the whole run's time budget, default 840 (quick: 100)
  BENCH_MAX_CONCURRENT_RUNS  the orchestrator's MAX_CONCURRENT_RUNS (default: its own, 100)
  BENCH_OUT              results folder, default bench/results (quick: bench/results/quick)
  BENCH_TREE             run the services from another source tree: a path, or a commit
                         (e.g. HEAD) that is exported with `git archive` to a temporary folder.
                         Default: this working tree. Useful while others edit the tree.
  BENCH_ORCHESTRATOR_PROCESSES  ORCHESTRATOR_PROCESSES of the stack, default 1
  BENCH_GATEWAY_WORKERS  GATEWAY_WORKERS of the stack, default 1
  procs-c{N}-d{MS}       (opt-in: BENCH_SCENARIOS=procs) Cai at each orchestrator process
                         count in turn, back to back:
  BENCH_PROCS_COUNTS     default 1,2
  BENCH_PROCS_REPEAT     rounds over the counts, default 2
  BENCH_PROCS_GATEWAY    gateway workers in those phases: a number, or "same" (as the
                         orchestrator's count); default 1
  BENCH_PROCS_LOADS      streams x delay pairs, default 100x20
  BENCH_PEERS            comma list of peers run beside Cai in peers-c{N}-d{MS} scenarios
                         (langgraph, aegra; see cai_bench/peers.py), default none
  BENCH_PEER_LOADS       streams x delay pairs, default 10x20,100x20,100x0
  BENCH_PEERS_DIR        where the peers' virtual environments live, default bench/.peers
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from cai_bench.plot import plot
from cai_bench.report import markdown

HERE = Path(__file__).resolve().parent.parent  # bench/


def use_tree(spec: str) -> str:
    """Put another source tree's packages first on the path of this process and its children.

    Returns a description for the results ("<commit> (exported)" or the path).
    """
    path = Path(spec)
    label = str(path.resolve())
    # The tree's cai_common comes first on the path, and the load generator reads the run
    # event names from its cai_common.runs.
    needed = "libs/cai-common/src/cai_common/runs.py"
    if not path.is_dir():
        has_runs = subprocess.run(["git", "cat-file", "-e", f"{spec}:{needed}"], check=False)
        if has_runs.returncode != 0:
            raise SystemExit(f"BENCH_TREE={spec}: no {needed} there (it came with 39623cc)")
        commit = subprocess.run(
            ["git", "rev-parse", "--short", spec], capture_output=True, text=True, check=True
        ).stdout.strip()
        path = Path(tempfile.mkdtemp(prefix=f"cai-bench-tree-{commit}-"))
        archive = subprocess.run(["git", "archive", spec], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(path)], input=archive.stdout, check=True)
        label = f"{commit} (exported to {path})"
    elif not (path / needed).is_file():
        raise SystemExit(f"BENCH_TREE={spec}: no {needed} there (it came with 39623cc)")
    srcs = [str(d) for d in sorted(path.glob("*/*/src")) if d.is_dir()]
    sys.path[:0] = srcs
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [*srcs, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    return label


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _loads(text: str) -> list[tuple[int, float]]:
    """ "100x20,10x0" → [(100, 20.0), (10, 0.0)] (streams x delay in ms)."""
    pairs = [x.strip().split("x") for x in text.split(",") if x.strip()]
    return [(int(c), float(d)) for c, d in pairs]


def options(argv: list[str]) -> Any:
    """Options from flags, then BENCH_* variables, then defaults (quick ones with BENCH_QUICK)."""
    env = os.environ.get
    quick_default = env("BENCH_QUICK", "").strip().lower() in ("1", "true", "yes")
    p = argparse.ArgumentParser(
        prog="cai_bench", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--quick", action="store_true", default=quick_default)
    p.add_argument("--scenarios", default=env("BENCH_SCENARIOS", ""))
    p.add_argument("--concurrency", default=env("BENCH_CONCURRENCY", ""))
    p.add_argument("--delays-ms", default=env("BENCH_DELAYS_MS", ""))
    p.add_argument("--reply-tokens", type=int, default=env("BENCH_REPLY_TOKENS"))
    p.add_argument("--ttft-ms", type=float, default=env("BENCH_TTFT_MS", "0"))
    p.add_argument("--runs-scale", type=float, default=env("BENCH_RUNS_SCALE"))
    p.add_argument("--idle-connections", type=int, default=env("BENCH_IDLE_CONNECTIONS"))
    p.add_argument("--queue-runs", type=int, default=env("BENCH_QUEUE_RUNS"))
    p.add_argument(
        "--retrieval", choices=("auto", "on", "off"), default=env("BENCH_RETRIEVAL", "auto")
    )
    p.add_argument("--budget-s", type=float, default=env("BENCH_BUDGET_S"))
    p.add_argument("--max-concurrent-runs", type=int, default=env("BENCH_MAX_CONCURRENT_RUNS"))
    p.add_argument("--out", default=env("BENCH_OUT", ""))
    p.add_argument(
        "--orchestrator-processes", type=int, default=env("BENCH_ORCHESTRATOR_PROCESSES")
    )
    p.add_argument("--gateway-workers", type=int, default=env("BENCH_GATEWAY_WORKERS"))
    p.add_argument("--procs-counts", default=env("BENCH_PROCS_COUNTS", "1,2"))
    p.add_argument("--procs-repeat", type=int, default=env("BENCH_PROCS_REPEAT", "2"))
    p.add_argument("--procs-gateway", default=env("BENCH_PROCS_GATEWAY", "1"))
    p.add_argument("--procs-loads", default=env("BENCH_PROCS_LOADS", "100x20"))
    p.add_argument("--peers", default=env("BENCH_PEERS", ""))
    p.add_argument("--peer-loads", default=env("BENCH_PEER_LOADS", "10x20,100x20,100x0"))
    p.add_argument("--peers-dir", default=env("BENCH_PEERS_DIR", ""))
    a = p.parse_args(argv)
    q = a.quick
    from cai_bench.options import Options  # (imports nothing from the services)

    o = Options(
        out_dir=Path(a.out) if a.out else HERE / "results" / ("quick" if q else ""),
        quick=q,
        scenarios=[s.strip() for s in a.scenarios.split(",") if s.strip()],
        concurrency=_ints(a.concurrency)
        if a.concurrency
        else ([1, 10] if q else [1, 10, 100, 500]),
        delays_ms=_floats(a.delays_ms) if a.delays_ms else [0.0, 20.0],
        reply_tokens=int(a.reply_tokens) if a.reply_tokens else (20 if q else 100),
        ttft_ms=float(a.ttft_ms),
        runs_scale=float(a.runs_scale) if a.runs_scale else (0.3 if q else 1.0),
        idle_connections=int(a.idle_connections) if a.idle_connections else (100 if q else 1000),
        idle_hold_s=3.0 if q else 12.0,
        queue_runs=int(a.queue_runs) if a.queue_runs else (30 if q else 300),
        profile_concurrency=10 if q else 100,
        long_reply_tokens=200 if q else 1000,
        retrieval=a.retrieval,
        budget_s=float(a.budget_s) if a.budget_s else (100.0 if q else 840.0),
        phase_cap_s=30.0 if q else 120.0,
        phase_target_s=3.0 if q else 10.0,
        max_concurrent_runs=int(a.max_concurrent_runs) if a.max_concurrent_runs else None,
        orchestrator_processes=int(a.orchestrator_processes or 1),
        gateway_workers=int(a.gateway_workers or 1),
        procs_counts=_ints(a.procs_counts),
        procs_repeat=int(a.procs_repeat),
        procs_gateway=a.procs_gateway.strip(),
        procs_loads=_loads(a.procs_loads),
        peers=[p.strip() for p in a.peers.split(",") if p.strip()],
        peer_loads=_loads(a.peer_loads),
        peers_dir=Path(a.peers_dir) if a.peers_dir else None,
    )
    return o


def _run(bench: Any) -> list[dict[str, object]]:
    """The load generator's event loop: uvloop when installed (cheaper per event)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(bench.run())
    return uvloop.run(bench.run())


def main(argv: list[str]) -> int:
    """Run, then write the table (.md) and the plot (.png) beside the JSON lines."""
    opts = options(argv)
    tree = os.environ.get("BENCH_TREE", "").strip()
    if tree:
        opts.source_tree = use_tree(tree)
        print(f"services run from {opts.source_tree}")
    from cai_bench.harness import Bench  # after use_tree: cai_devstack may come from the tree

    bench = Bench(opts)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through Bench.run's finally: the stack is stopped

    signal.signal(signal.SIGTERM, on_term)
    try:
        records = _run(bench)
    except KeyboardInterrupt:
        print("interrupted; partial results in", bench.jsonl, file=sys.stderr)
        bench.stack.down()  # idempotent: stops whatever is still running
        records = bench.records
        if not records:
            return 130
    table = markdown(records)
    md = bench.jsonl.with_suffix(".md")
    md.write_text(table)
    png = bench.jsonl.with_suffix(".png")
    plot(records, png)
    print()
    print(table)
    print(f"results: {bench.jsonl}\n         {md}\n         {png}")
    failed = [r for r in records if "failed" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
