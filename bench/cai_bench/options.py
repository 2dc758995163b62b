"""What to run: the options (from flags and BENCH_* variables, see __main__) and the load sizes."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Options:
    """What to run (from the environment or the command line; see __main__)."""

    out_dir: Path
    quick: bool = False
    scenarios: list[str] = field(default_factory=list)  # empty: every default scenario
    concurrency: list[int] = field(default_factory=lambda: [1, 10, 100, 500])
    delays_ms: list[float] = field(default_factory=lambda: [0.0, 20.0])
    reply_tokens: int = 100
    ttft_ms: float = 0.0
    runs_scale: float = 1.0
    idle_connections: int = 1000
    idle_hold_s: float = 12.0
    queue_runs: int = 300
    queue_reply_tokens: int = 10
    long_reply_tokens: int = 1000
    profile_concurrency: int = 100
    retrieval: str = "auto"  # auto | on | off
    budget_s: float = 840.0
    phase_cap_s: float = 120.0
    phase_target_s: float = 10.0  # stop starting new streams after this (one round at least)
    max_concurrent_runs: int | None = None  # None: the orchestrator's default
    source_tree: str = ""  # BENCH_TREE: where the services' code came from (empty: here)
    stall_s: float = 30.0  # a phase in which no stream receives anything for this long is cut
    # Processes of the orchestrator and workers of the gateway for every scenario (BENCH_*).
    orchestrator_processes: int = 1
    gateway_workers: int = 1
    # procs-c{N}-d{D}: Cai phases at each orchestrator process count, alternated `procs_repeat`
    # times, back to back (the gateway's workers follow `procs_gateway`: "1" or "same").
    procs_counts: list[int] = field(default_factory=lambda: [1, 2])
    procs_repeat: int = 2
    procs_gateway: str = "1"
    procs_loads: list[tuple[int, float]] = field(default_factory=lambda: [(100, 20.0)])
    # peers-c{N}-d{D} (opt-in): the same load against other servers (cai_bench.peers).
    peers: list[str] = field(default_factory=list)
    peer_loads: list[tuple[int, float]] = field(
        default_factory=lambda: [(10, 20.0), (100, 20.0), (100, 0.0)]
    )
    peers_dir: Path | None = None  # where the peers' environments live (default bench/.peers)


def selected(scenarios: list[str], name: str, default: bool = True) -> bool:
    """Whether BENCH_SCENARIOS picks `name` (prefix match: "stream" picks every stream-*).

    With no BENCH_SCENARIOS every scenario runs whose `default` is true.
    """
    if not scenarios:
        return default
    return any(name == s or name.startswith(s) for s in scenarios)


def runs_for(concurrency: int, delay_ms: float, scale: float) -> int:
    """Most streams per phase (the phase also stops starting streams after phase_target_s)."""
    if concurrency <= 1:
        base = 100 if delay_ms == 0 else 20
    elif concurrency <= 10:
        rounds = 10 if delay_ms == 0 else 5
        base = concurrency * rounds
    elif concurrency <= 100:
        base = concurrency * (3 if delay_ms == 0 else 2)
    else:
        base = concurrency
    return max(concurrency, int(base * scale))


def shown_path(path: Path) -> str:
    """A path as results record it: relative to the repository (results are committed, and
    must not carry a machine's paths), or only its name when it lies outside."""
    root = Path(__file__).resolve().parents[2]
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return path.name
