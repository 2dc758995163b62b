"""peers-c{N}-d{D} (opt-in, BENCH_PEERS=langgraph,aegra): the floor, Cai, then each peer under
the same closed-loop load, back to back in one scenario (cai_bench.peers says what they are).

Each peer's server is started for its phase only and stopped after it, so its idle work does not
load the other phases. Its streams are checked against the AI message it stored on the thread,
as Cai's are. Its CPU is the server's process tree, and for Aegra the PostgreSQL it writes to
(the machine's shared PostgreSQL: other work on it counts too).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cai_bench import peers
from cai_bench.phases import summarize
from cai_bench.stats import diff, ratio

if TYPE_CHECKING:
    from cai_bench.harness import Bench


def _vs_floor(s: dict[str, Any], f: dict[str, Any]) -> dict[str, Any]:
    return {
        "ttft_overhead_ms": {q: diff(s["ttft_ms"][q], f["ttft_ms"][q]) for q in ("p50", "p95")},
        "tokens_per_s_ratio": ratio(s["tokens_per_s"], f["tokens_per_s"]),
    }


async def run_peer(
    bench: Bench, peer: peers.Peer, concurrency: int, runs: int, phases_left: int
) -> dict[str, Any]:
    """One peer's phase: install (once), start, stream, verify, stop."""
    o = bench.opts
    root = o.peers_dir or peers.DEFAULT_DIR
    try:
        python = await asyncio.to_thread(peers.ensure_installed, peer, root, bench.say)
    except peers.PeerUnavailable as exc:
        return {"peer": peer.name, "skipped": str(exc)}
    run_dir = Path(bench.stack.s.config.run_dir)
    limit = o.max_concurrent_runs or 100
    try:
        proc, url = peers.server_proc(peer, python, run_dir, bench.stack.s.llm_sim_url, limit)
        await asyncio.to_thread(proc.start(cwd=proc.log_path.parent).wait_ready, 90)
    except (peers.PeerUnavailable, RuntimeError, TimeoutError) as exc:
        return {"peer": peer.name, "skipped": f"did not start: {str(exc)[-400:]}"}
    names = [proc.name]
    bench.mon.add(proc.name, proc.pid, tree=True)
    pg = peers.postgres_pid() if peer.name == "aegra" else None
    if pg is not None:
        bench.mon.add("postgres", pg, tree=True)
        names.append("postgres")
    try:
        # Warm-up, unmeasured: imports, connection pools, the graph's first compile.
        await bench.phase("peer", min(concurrency, 5), 5, 60, peer_url=url)
        bench.say(f"peer {peer.name}: {runs} streams, {concurrency} at a time")
        phase = await bench.phase(
            "peer", concurrency, runs, bench.phase_timeout(phases_left), peer_url=url
        )
        summary = summarize(phase, o.reply_tokens, names)
        summary["server_processes"] = names
        from cai_bench.verify import verify

        integrity = await verify(url, phase.results)
    finally:
        for name in names:
            bench.mon.remove(name)
        await asyncio.to_thread(proc.stop)
        if peer.name == "aegra":
            await asyncio.to_thread(peers.drop_database, run_dir)
    return {
        "peer": peer.name,
        "label": peer.label,
        "versions": await asyncio.to_thread(
            peers.versions, python, tuple(r.split("[")[0].split("==")[0] for r in peer.requirements)
        ),
        "result": summary,
        "integrity": integrity,
    }


async def run(
    bench: Bench, name: str, concurrency: int, delay_ms: float, runs: int
) -> dict[str, Any]:
    """Floor, Cai, then each peer, under the same load."""
    o = bench.opts
    await bench.stack.set_llm(o.ttft_ms, delay_ms, o.reply_tokens)
    phases_left = 2 + len(o.peers)
    bench.say(f"{name}: floor, {runs} streams, {concurrency} at a time")
    floor = bench.phase_summary(
        await bench.phase("floor", concurrency, runs, bench.phase_timeout(phases_left)),
        o.reply_tokens,
    )
    bench.say(f"{name}: Cai")
    cai_phase = await bench.phase("cai", concurrency, runs, bench.phase_timeout(phases_left - 1))
    cai = bench.phase_summary(cai_phase, o.reply_tokens)
    cai_integrity = await bench.verify(cai_phase.results)
    results = []
    for i, peer_name in enumerate(o.peers):
        peer = peers.PEERS.get(peer_name)
        if peer is None:
            results.append({"peer": peer_name, "skipped": f"unknown (known: {list(peers.PEERS)})"})
            continue
        r = await run_peer(bench, peer, concurrency, runs, phases_left - 2 - i)
        if "result" in r:
            r["vs_floor"] = _vs_floor(r["result"], floor)
            s = r["result"]
            bench.say(
                f"{name}: {peer_name}: {s['tokens_per_s']} tok/s ({r['vs_floor']}), "
                f"{s.get('cai_cpu_us_per_token')} CPU-µs/token, errors {s['errors']}, "
                f"mismatches {r['integrity']['text_mismatch']}"
            )
        else:
            bench.say(f"{name}: {peer_name} skipped: {r['skipped']}")
        results.append(r)
    return {
        "scenario": "peers",
        "name": name,
        "concurrency": concurrency,
        "token_delay_ms": delay_ms,
        "reply_tokens": o.reply_tokens,
        "floor": floor,
        "cai": cai,
        "cai_integrity": cai_integrity,
        "cai_vs_floor": _vs_floor(cai, floor),
        "orchestrator_processes": bench.stack.orchestrator_processes,
        "gateway_workers": bench.stack.gateway_workers,
        "peers": results,
    }
