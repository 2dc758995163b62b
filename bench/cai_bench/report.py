"""Markdown tables and a PNG plot from a run's JSON lines.

`python -m cai_bench.report bench/results/<run>.jsonl` redraws both from a saved run.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CAI_PROCS = ("gateway", "orchestrator", "redis")


def load(path: Path) -> list[dict[str, Any]]:
    """The records of one run."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _f(x: Any, digits: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _ratio(x: Any) -> str:
    return "–" if x is None else f"{x:.2f}×"


def stream_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The stream scenarios that ran (skipped and failed ones have no `cai` part)."""
    return [r for r in records if r.get("scenario") == "stream" and "cai" in r]


def _label(r: dict[str, Any]) -> str:
    label = f"{r['concurrency']}"
    if r.get("retrieval"):
        label += " + retrieval"
    if r.get("long_reply"):
        label += f" × {r['reply_tokens']:,}-token replies"
    return label


def fixed_and_marginal(records: list[dict[str, Any]]) -> dict[str, float] | None:
    """Cai's CPU split into a cost per run and a cost per token, from the same concurrency at
    0 ms with short and long replies: cost(t) = per_run + t × per_token."""
    streams = stream_records(records)
    long = next((r for r in streams if r.get("long_reply")), None)
    if long is None:
        return None
    short = next(
        (
            r
            for r in streams
            if not r.get("long_reply")
            and not r.get("retrieval")
            and r["concurrency"] == long["concurrency"]
            and r["token_delay_ms"] == long["token_delay_ms"]
        ),
        None,
    )
    if short is None:
        return None
    t1, t2 = short["reply_tokens"], long["reply_tokens"]
    u1, u2 = short["cai"].get("cai_cpu_us_per_token"), long["cai"].get("cai_cpu_us_per_token")
    if not u1 or not u2 or t1 == t2:
        return None
    run1, run2 = u1 * t1, u2 * t2  # CPU-µs per run
    per_token = (run2 - run1) / (t2 - t1)
    return {
        "concurrency": long["concurrency"],
        "short_tokens": t1,
        "long_tokens": t2,
        "per_run_ms": round((run1 - per_token * t1) / 1000, 2),
        "per_token_us": round(per_token, 1),
    }


def _lost(integrity: dict[str, Any]) -> str:
    return (
        f"{integrity['tokens_lost']} / {integrity['tokens_repeated']} "
        f"({integrity['text_mismatch']} of {integrity['streams_checked']})"
    )


def procs_markdown(records: list[dict[str, Any]]) -> list[str]:
    """The "Processes" table: Cai's phases at each orchestrator process count, in run order."""
    out: list[str] = []
    for r in records:
        f = r["floor"]
        out.append(
            f"**Processes** ({r['concurrency']} streams, {_f(r['token_delay_ms'], 0)} ms between "
            f"tokens, {r['reply_tokens']}-token replies; floor {_f(f['tokens_per_s'])} tok/s; "
            "Cai phases back to back, in this order)"
        )
        out.append("")
        out.append(
            "| round | orchestrator processes | gateway workers | Cai tok/s | Cai ÷ floor "
            "| TTFT p50 / p95 ms | Cai CPU-µs/token | errors | lost / repeated | other load |"
        )
        out.append("|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|")
        for x in r["rounds"]:
            c = x["cai"]
            out.append(
                f"| {x['round'] + 1} | {x['orchestrator_processes']} | {x['gateway_workers']} "
                f"| {_f(c['tokens_per_s'])} | {_ratio(_div(c['tokens_per_s'], f['tokens_per_s']))} "
                f"| {_f(c['ttft_ms']['p50'])} / {_f(c['ttft_ms']['p95'])} "
                f"| {_f(c.get('cai_cpu_us_per_token'), 0)} | {c['errors']} "
                f"| {_lost(x['integrity'])} | {_f(c['others_cpu_s'])} s |"
            )
        out.append("")
        means = ", ".join(f"{n}: {_f(v)}" for n, v in r["tokens_per_s_mean"].items())
        paired = "; ".join(
            f"{n} ÷ first: {', '.join(_ratio(v) for v in vs)}"
            for n, vs in r["paired_ratio_vs_first"].items()
        )
        out.append(f"Mean tok/s by process count: {means}. Paired ratios by round: {paired}.")
        out.append("")
    return out


def peers_markdown(records: list[dict[str, Any]]) -> list[str]:
    """The "Peers" table: the floor, Cai and each peer under the same load."""
    if not records:
        return []
    out = [
        "**Peers** (same load, same llm-sim, measured back to back in each scenario; CPU of "
        "the server's processes, Cai: gateway + orchestrator + Redis, Aegra: + PostgreSQL)",
        "",
        "| streams | delay | server | tok/s | ÷ floor | TTFT p50 / p95 ms | Δ TTFT p50 ms "
        "| CPU-µs/token | errors | lost / repeated |",
        "|---:|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in records:
        f = r["floor"]
        rows = [("floor (llm-sim)", f, None, None), ("**Cai**", r["cai"], r["cai_integrity"], None)]
        for p in r["peers"]:
            if "result" in p:
                rows.append((p["peer"], p["result"], p["integrity"], None))
            else:
                rows.append((p["peer"], None, None, p["skipped"]))
        for label, s, integrity, skipped in rows:
            head = f"| {r['concurrency']} | {_f(r['token_delay_ms'], 0)} ms | {label} "
            if s is None:
                out.append(head + f"| skipped: {skipped} | | | | | | |")
                continue
            cpu = s.get("cai_cpu_us_per_token") if integrity is not None else None
            vs_floor = _ratio(_div(s["tokens_per_s"], f["tokens_per_s"]))
            out.append(
                head + f"| {_f(s['tokens_per_s'])} | {vs_floor} "
                f"| {_f(s['ttft_ms']['p50'])} / {_f(s['ttft_ms']['p95'])} "
                f"| {_f(_sub(s['ttft_ms']['p50'], f['ttft_ms']['p50']))} "
                f"| {_f(cpu, 0)} | {s['errors']} "
                f"| {_lost(integrity) if integrity else '–'} |"
            )
    out.append("")
    return out


def _div(a: Any, b: Any) -> float | None:
    return None if a is None or not b else a / b


def _sub(a: Any, b: Any) -> float | None:
    return None if a is None or b is None else a - b


def markdown(records: list[dict[str, Any]]) -> str:
    """The summary tables of docs/performance.md."""
    out: list[str] = []
    meta = next((r for r in records if r.get("scenario") == "meta"), {})
    end = next((r for r in records if r.get("scenario") == "end"), {})
    m = meta.get("machine", {})
    if m:
        out.append(
            f"Run `{meta.get('run_id')}` on {m.get('nproc')} × {m.get('cpu_model')}, "
            f"{m.get('ram_gib')} GiB RAM, Python {m.get('python')}, "
            f"commit `{m.get('git_commit')}`; "
            f"load average {m.get('loadavg_at_start')} at start, {end.get('loadavg_at_end')} at "
            f"end; {end.get('total_s')} s in all."
        )
        out.append("")
    streams = stream_records(records)
    if streams:
        out.append("**Latency and throughput** (TTFT in ms; Δ = Cai − floor at that percentile)")
        out.append("")
        out.append(
            "| streams | delay | runs | Cai TTFT p50 / p95 / p99 | floor p50 / p95 / p99 "
            "| Δ p50 / p95 / p99 | Cai tok/s | floor tok/s | Cai ÷ floor | errors "
            "| lost / repeated |"
        )
        out.append("|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|")
        for r in streams:
            c, f, v, i = r["cai"], r["floor"], r["vs_floor"], r["integrity"]
            ct, ft, d = c["ttft_ms"], f["ttft_ms"], v["ttft_overhead_ms"]
            label = _label(r)
            lost = i["tokens_lost"]
            repeated = i["tokens_repeated"] + i["event_ids_repeated_or_reordered"]
            out.append(
                f"| {label} | {r['token_delay_ms']:g} ms | {c['runs']} "
                f"| {_f(ct['p50'])} / {_f(ct['p95'])} / {_f(ct['p99'])} "
                f"| {_f(ft['p50'])} / {_f(ft['p95'])} / {_f(ft['p99'])} "
                f"| {_f(d['p50'])} / {_f(d['p95'])} / {_f(d['p99'])} "
                f"| {_f(c['tokens_per_s'], 0)} | {_f(f['tokens_per_s'], 0)} "
                f"| {_ratio(v['tokens_per_s_ratio'])} "
                f"| {c['errors']} + {f['errors']} | {lost} / {repeated} "
                f"({i['text_mismatch']} of {i['streams_checked']}) |"
            )
        out.append("")
        out.append(
            "Errors: Cai + floor. Lost / repeated: tokens missing from or repeated in the stream "
            "(plus repeated or out-of-order event ids) against the AI message Cai stored, and "
            "how many of the checked streams differed."
        )
        out.append("")
        out.append("**CPU and memory** (CPU-µs per delivered token; peak RSS in MiB)")
        out.append("")
        out.append(
            "| streams | delay | gateway | orchestrator | redis | retriever | **Cai total** "
            "| Cai CPU-s / 1k tokens | tokens / event | llm-sim (Cai run) | llm-sim (floor) "
            "| load gen (Cai / floor) | other load | peak RSS gw / orch / redis |"
        )
        out.append("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in streams:
            c, f = r["cai"], r["floor"]
            us = c.get("cpu_us_per_token", {})
            fus = f.get("cpu_us_per_token", {})
            rss = c.get("peak_rss_mb", {})
            label = _label(r)
            orch = sum(v for k, v in us.items() if k.startswith("orchestrator"))
            out.append(
                f"| {label} | {r['token_delay_ms']:g} ms | {_f(us.get('gateway'), 0)} "
                f"| {_f(orch, 0)} | {_f(us.get('redis'), 0)} | {_f(us.get('retriever'), 0)} "
                f"| **{_f(c.get('cai_cpu_us_per_token'), 0)}** "
                f"| {_f(c.get('cai_cpu_s_per_1k_tokens'), 3)} | {_f(c.get('tokens_per_event'), 2)} "
                f"| {_f(us.get('llm-sim'), 0)} | {_f(fus.get('llm-sim'), 0)} "
                f"| {_f(us.get('loadgen'), 0)} / {_f(fus.get('loadgen'), 0)} "
                f"| {_f(c.get('others_cpu_s'), 1)} s "
                f"| {_f(rss.get('gateway'), 0)} / {_f(rss.get('orchestrator'), 0)} / "
                f"{_f(rss.get('redis'), 0)} |"
            )
        out.append("")
        out.append(
            "Other load: CPU seconds used during the Cai phase by processes outside the "
            "benchmark (other work on the machine) — noise indicator."
        )
        out.append("")
        split = fixed_and_marginal(records)
        if split:
            out.append(
                f"**Per run and per token** ({split['concurrency']} streams, 0 ms, "
                f"{split['short_tokens']}- and {split['long_tokens']:,}-token replies): Cai "
                f"spends about **{split['per_run_ms']} CPU-ms per run** whatever its length, "
                f"plus **{split['per_token_us']} CPU-µs per token** streamed."
            )
            out.append("")
    idle = [r for r in records if r.get("scenario") == "idle" and "held" in r]
    for r in idle:
        k = r["kib_per_connection"]
        cpu = r["hold_cpu_ms_per_connection_per_min"]
        out.append(
            f"**Idle streams**: {r['held']} of {r['connections']} SSE streams held open on one "
            f"gateway ({r['runs_executing']} runs taken by a worker and waiting for a first "
            "token, the rest queued). "
            f"RSS per connection: gateway {_f(k.get('gateway'))} KiB, orchestrator "
            f"{_f(k.get('orchestrator'))} KiB, redis {_f(k.get('redis'))} KiB "
            f"(gateway {_f(r['rss_before_mb'].get('gateway'))} → "
            f"{_f(r['rss_held_mb'].get('gateway'))} MiB). CPU while idle over {r['hold_s']:g} s: "
            f"gateway {_f(cpu.get('gateway'), 2)}, orchestrator {_f(cpu.get('orchestrator'), 2)} "
            f"CPU-ms per connection per minute. Cancelling all took {r['cancel_all_s']} s"
            f"{_cancel_latency(r)}; streams ended with {r['ended_with']}; errors {r['errors']}."
        )
        out.append("")
    queue = [r for r in records if r.get("scenario") == "queue" and "created" in r]
    if queue:
        out.append(
            "**Queue throughput** (background runs, 20 creating clients, "
            f"{queue[0]['reply_tokens']}-token replies, 0 ms delay)"
        )
        out.append("")
        out.append(
            "| orchestrators | runs | created runs/s | completed runs/s | Cai CPU-ms / run "
            "| statuses | errors |"
        )
        out.append("|---:|---:|---:|---:|---:|---|---:|")
        for r in queue:
            out.append(
                f"| {r['orchestrator_replicas']} | {r['runs']} | {_f(r['created_per_s'])} "
                f"| {_f(r['completed_per_s'])} | {_f(r['cai_cpu_ms_per_run'])} "
                f"| {r['statuses']} | {r['errors']} |"
            )
        out.append("")
    out += procs_markdown([r for r in records if r.get("scenario") == "procs" and "rounds" in r])
    out += peers_markdown([r for r in records if r.get("scenario") == "peers" and "peers" in r])
    for r in records:
        if "skipped" in r or "failed" in r:
            out.append(f"- `{r.get('name')}`: {r.get('skipped') or 'failed: ' + r.get('failed')}")
    prof = [r for r in records if r.get("scenario") == "profile" and "profiles" in r]
    for r in prof:
        out.append("")
        out.append(profile_markdown(r))
    return "\n".join(out).rstrip() + "\n"


def profile_markdown(r: dict[str, Any], top: int = 12) -> str:
    """Where each profiled process spends its CPU: by activity, then the top functions."""
    out = [
        f"**Profile** ({r['concurrency']} streams, {r.get('token_delay_ms', 0):g} ms delay, "
        "py-spy `--nonblocking`, "
        f"{r['cai'].get('runs')} streams): {_f(r['cai'].get('tokens_per_s'), 0)} tok/s, "
        f"{_f(r['cai'].get('cai_cpu_us_per_token'), 0)} Cai CPU-µs/token while profiled, "
        f"{r['cai'].get('errors')} errors."
    ]
    for failed in r.get("failed_attempts", []):
        out.append(
            f"An earlier attempt had {failed['errors']} errors of {failed['runs']} streams "
            f"({'; '.join(failed['error_samples'])[:160]}); the stack was restarted and the "
            "profile taken again."
        )
    for name, p in r["profiles"].items():
        out.append("")
        out.append(
            f"*{name}* — {_f(p.get('cpu_us_per_token'), 0)} CPU-µs/token, {p['samples']} "
            "samples. Threads: "
            + ", ".join(f"{t['function']} {t['share'] * 100:.0f}%" for t in p.get("threads", []))
        )
        out.append("")
        out.append("| share | CPU-µs/token | activity |")
        out.append("|---:|---:|---|")
        for row in p.get("activities", []):
            out.append(
                f"| {row['share'] * 100:.1f}% | {_f(row.get('cpu_us_per_token'))} "
                f"| {row['function']} |"
            )
        out.append("")
        out.append("| self share | CPU-µs/token | function (file:function) |")
        out.append("|---:|---:|---|")
        for row in p["self"][:top]:
            out.append(
                f"| {row['share'] * 100:.1f}% | {_f(row.get('cpu_us_per_token'))} "
                f"| `{row['function']}` |"
            )
        out.append("")
        out.append(
            "By package (self): "
            + ", ".join(f"{row['function']} {row['share'] * 100:.0f}%" for row in p["packages"][:8])
        )
    return "\n".join(out)


def main(argv: list[str]) -> int:
    """Redraw the table and plot of a saved run."""
    if not argv:
        print("usage: python -m cai_bench.report RUN.jsonl")
        return 2
    path = Path(argv[0])
    records = load(path)
    print(markdown(records))
    from cai_bench.plot import plot  # (matplotlib is imported only to draw)

    plot(records, path.with_suffix(".png"))
    print(f"plot: {path.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


def _cancel_latency(record: dict[str, Any]) -> str:
    """ ", cancel → `cancelled` at the client p50 … ms, max … ms (n executing runs)" if measured."""
    lat = record.get("cancel_latency_ms") or {}
    if not lat.get("n"):
        return ""
    return (
        f" (cancel request → `cancelled` at the client, executing runs: p50 {_f(lat['p50'])} ms, "
        f"p95 {_f(lat['p95'])} ms, max {_f(lat['max'])} ms, n={lat['n']})"
    )
