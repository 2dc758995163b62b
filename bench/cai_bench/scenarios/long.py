"""long-c{N}-d0: the stream scenario with 10× longer replies.

With stream-c{N}-d0 it splits Cai's CPU into a fixed cost per run and a cost per token (see
report.fixed_and_marginal).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cai_bench.scenarios import stream

if TYPE_CHECKING:
    from cai_bench.harness import Bench


async def run(bench: Bench, name: str, concurrency: int, runs: int) -> dict[str, Any]:
    """Floor, then Cai, with long_reply_tokens per reply and no inter-token delay."""
    extra = {"max_runs": runs, "long_reply": True}
    return await stream.run(
        bench, name, concurrency, 0.0, runs, extra, bench.opts.long_reply_tokens
    )
