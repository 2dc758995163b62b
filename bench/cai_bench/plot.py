"""The PNG beside a run's results: TTFT, throughput, CPU per token, idle memory, queue throughput.

`python -m cai_bench.report bench/results/<run>.jsonl` redraws it and the tables from a saved run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cai_bench.report import CAI_PROCS, stream_records


def plot(records: list[dict[str, Any]], png: Path) -> None:
    """TTFT, throughput, CPU per token, idle memory and queue throughput in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    streams = [
        r for r in stream_records(records) if not r.get("retrieval") and not r.get("long_reply")
    ]
    delays = sorted({r["token_delay_ms"] for r in streams})
    fig, axes = plt.subplots(2, 3, figsize=(17, 9.5))
    run_id = records[0].get("run_id", "") if records else ""
    m = next((r for r in records if r.get("scenario") == "meta"), {}).get("machine", {})
    fig.suptitle(
        f"Cai vs floor (llm-sim direct) — run {run_id}, {m.get('nproc')} cores "
        f"{m.get('cpu_model', '')}",
        fontsize=11,
    )
    colors = {"cai": "tab:red", "floor": "tab:blue"}
    for ax, d in zip(axes[0][:2], (delays + [None, None])[:2], strict=True):
        if d is None:
            ax.axis("off")
            continue
        rows = sorted(
            (r for r in streams if r["token_delay_ms"] == d), key=lambda r: r["concurrency"]
        )
        xs = [r["concurrency"] for r in rows]
        for kind in ("cai", "floor"):
            for q, style in (("p50", "-o"), ("p95", "--^"), ("p99", ":v")):
                ys = [r[kind]["ttft_ms"][q] for r in rows]
                ax.plot(
                    xs,
                    [y if y is not None else float("nan") for y in ys],
                    style,
                    color=colors[kind],
                    label=f"{kind} {q}",
                    alpha=0.9 if q == "p50" else 0.6,
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent streams")
        ax.set_ylabel("time to first token (ms)")
        ax.set_title(f"TTFT, {d:g} ms inter-token delay")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    ax = axes[0][2]
    for d, marker in zip(delays, ("o", "s", "^", "d"), strict=False):
        rows = sorted(
            (r for r in streams if r["token_delay_ms"] == d), key=lambda r: r["concurrency"]
        )
        xs = [r["concurrency"] for r in rows]
        for kind in ("cai", "floor"):
            ax.plot(
                xs,
                [r[kind]["tokens_per_s"] or 0 for r in rows],
                f"-{marker}",
                color=colors[kind],
                label=f"{kind}, {d:g} ms",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("tokens/s delivered")
    ax.set_title("Throughput")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)

    ax = axes[1][0]
    labels = [f"c{r['concurrency']}/d{r['token_delay_ms']:g}" for r in streams]
    bottom = [0.0] * len(streams)
    for proc, color in zip(CAI_PROCS, ("tab:orange", "tab:red", "tab:purple"), strict=True):
        vals = [
            sum(v for k, v in r["cai"].get("cpu_us_per_token", {}).items() if k.startswith(proc))
            for r in streams
        ]
        ax.bar(labels, vals, bottom=bottom, label=proc, color=color)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax.plot(
        labels,
        [r["floor"].get("cpu_us_per_token", {}).get("llm-sim", 0) for r in streams],
        "k--o",
        label="llm-sim (floor)",
    )
    ax.axhline(50, color="green", linestyle=":", label="goal: 50 µs")
    ax.set_ylabel("CPU-µs per delivered token")
    ax.set_title("Cai CPU per token, by process")
    ax.tick_params(axis="x", rotation=45, labelsize=7)
    ax.legend(fontsize=7)

    ax = axes[1][1]
    idle = next((r for r in records if r.get("scenario") == "idle" and "held" in r), None)
    if idle:
        procs = [p for p in ("gateway", "orchestrator", "redis") if p in idle["rss_held_mb"]]
        before = [idle["rss_before_mb"].get(p, 0) for p in procs]
        held = [idle["rss_held_mb"].get(p, 0) for p in procs]
        xs = range(len(procs))
        ax.bar([x - 0.2 for x in xs], before, width=0.4, label="before", color="tab:gray")
        ax.bar(
            [x + 0.2 for x in xs],
            held,
            width=0.4,
            label=f"{idle['held']} idle streams",
            color="tab:red",
        )
        for x, p in zip(xs, procs, strict=True):
            ax.annotate(
                f"{idle['kib_per_connection'].get(p, 0):.0f} KiB/conn",
                (x + 0.2, held[x]),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(list(xs), procs)
        ax.set_ylabel("RSS (MiB)")
        ax.set_title("Idle SSE streams: memory")
        ax.legend(fontsize=7)
    else:
        ax.axis("off")

    ax = axes[1][2]
    queue = [r for r in records if r.get("scenario") == "queue" and "created" in r]
    if queue:
        xs = range(len(queue))
        ax.bar(
            [x - 0.2 for x in xs],
            [r["created_per_s"] or 0 for r in queue],
            width=0.4,
            label="created/s",
            color="tab:blue",
        )
        ax.bar(
            [x + 0.2 for x in xs],
            [r["completed_per_s"] or 0 for r in queue],
            width=0.4,
            label="completed/s",
            color="tab:green",
        )
        ax.set_xticks(list(xs), [f"{r['orchestrator_replicas']} orchestrator(s)" for r in queue])
        ax.set_ylabel("runs/s")
        ax.set_title(f"Queue throughput ({queue[0]['reply_tokens']}-token runs)")
        ax.legend(fontsize=7)
    else:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)
