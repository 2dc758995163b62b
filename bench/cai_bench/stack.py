"""The stack under test: one cai_devstack Stack, started, reconfigured and restarted for the bench.

Redis 8, llm-sim, orchestrator(s) and a gateway on free ports, and the retriever on demand. The
process monitor follows every process the stack starts or stops.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cai_bench.loadgen import cai_stream, floor_stream, make_client
from cai_bench.procmon import ProcMonitor
from cai_devstack.stack import Stack, StackConfig

PROMPT = "How do I resume a stream after my client disconnects?"
# The gateway's per-key limits (20 requests/s, 32 concurrent streams by default) would turn a
# capacity benchmark into a test of the limiter: the request rate limit is off and the stream cap
# is far above the load, so slots are still leased and released in Redis on every stream.
SERVICE_ENV = {"RATE_LIMIT_PER_SECOND": "0", "MAX_CONCURRENT_STREAMS": "100000"}
# The orchestrator runs with these assistants: one that only calls the model (the scenarios
# "without retrieval"; Cai's default assistant retrieves, and with no retriever running every
# run would pay for a failed search) and the same one retrieving from the default collection.
BENCH_ASSISTANTS = """\
assistants:
  - id: chat
    name: Chat
  - id: bench-plain
    name: Model only (no retrieval, no tools)
    retrieval:
      enabled: false
  - id: bench-rag
    name: Retrieval from the default collection, no tools
    retrieval:
      enabled: true
"""
PLAIN = "bench-plain"
RAG = "bench-rag"


def llm_cli(ttft_ms: float, delay_ms: float, reply_tokens: int) -> list[str]:
    """llm-sim's command line for these knobs."""
    return [
        "--ttft-ms", f"{ttft_ms:g}", "--token-delay-ms", f"{delay_ms:g}",
        "--reply-tokens", str(reply_tokens), "--tool-mode", "never", "--log-level", "warning",
    ]  # fmt: skip


class StackControl:
    """Starts, reconfigures and stops the stack; keeps the process monitor in step with it."""

    def __init__(
        self,
        mon: ProcMonitor,
        say: Callable[[str], None],
        ttft_ms: float,
        reply_tokens: int,
        max_concurrent_runs: int | None,
        orchestrator_processes: int = 1,
        gateway_workers: int = 1,
    ) -> None:
        self.mon = mon
        self.orchestrator_processes = orchestrator_processes
        self.gateway_workers = gateway_workers
        self.say = say
        self.ttft_ms = ttft_ms
        self.reply_tokens = reply_tokens
        self.max_concurrent_runs = max_concurrent_runs
        self.stack: Stack | None = None
        self.llm_args: tuple[float, float, int] | None = None
        self.assistants_yaml = BENCH_ASSISTANTS  # the orchestrator's assistants file

    @property
    def s(self) -> Stack:
        """The running stack."""
        assert self.stack is not None
        return self.stack

    def gateway_url(self) -> str:
        """The gateway's base URL."""
        return self.s.gateway_url()

    def cai_names(self) -> list[str]:
        """Processes that are Cai (not the model, not the load generator)."""
        return [
            n
            for n in self.s.procs
            if n == "redis" or n.startswith(("gateway", "orchestrator", "retriever"))
        ]

    def dead(self) -> list[str]:
        """Processes of the stack that have exited."""
        return [n for n, p in self.s.procs.items() if not p.alive()]

    def watch(self) -> None:
        """Make the process monitor follow exactly the stack's processes (and the loadgen)."""
        for name, proc in self.s.procs.items():
            if name not in self.mon.procs or self.mon.procs[name].pid != proc.pid:
                # A gateway or orchestrator may be a supervisor of several processes.
                self.mon.add(name, proc.pid, tree=name.startswith(("gateway", "orchestrator")))
        for name in list(self.mon.procs):
            if name != "loadgen" and name not in self.s.procs:
                self.mon.remove(name)

    def start(self) -> None:
        """Redis 8, llm-sim, one orchestrator and one gateway on free ports (no retriever)."""
        self.llm_args = (self.ttft_ms, 0.0, self.reply_tokens)
        t0 = time.monotonic()
        for attempt in range(1, 4):
            run_dir = Path(tempfile.mkdtemp(prefix="cai-bench-"))
            assistants = run_dir / "bench-assistants.yaml"
            assistants.write_text(self.assistants_yaml)
            limit = self.max_concurrent_runs
            # Trees from before the process settings (BENCH_TREE) run one process each, which
            # is StackConfig's default: name the counts only when they ask for more.
            processes = {
                name: count
                for name, count in (
                    ("orchestrator_processes", self.orchestrator_processes),
                    ("gateway_workers", self.gateway_workers),
                )
                if count != 1
            }
            config = StackConfig.ephemeral(
                run_dir,
                with_retriever=False,
                **processes,
                llm_sim_args=llm_cli(*self.llm_args),
                service_env={
                    **SERVICE_ENV,
                    "ASSISTANTS_FILE": str(assistants),
                    **({"MAX_CONCURRENT_RUNS": str(limit)} if limit else {}),
                },
            )
            self.stack = Stack(config)
            self.say(f"starting the stack in {run_dir} (logs there)")
            try:
                self.stack.up()
                break
            except (RuntimeError, TimeoutError) as exc:
                # Free ports are picked before binding: on a busy machine another process can
                # take one in between. Try again on new ports.
                if attempt == 3:
                    raise
                self.say(f"stack failed to start ({str(exc).splitlines()[0][:120]}); retrying")
        self.watch()
        self.say(
            f"stack up in {time.monotonic() - t0:.1f}s: "
            + ", ".join(f"{n}={p.pid}" for n, p in self.s.procs.items())
        )

    def down(self) -> None:
        """Stop whatever is running (idempotent)."""
        if self.stack is not None:
            self.stack.down()

    def restart(self) -> None:
        """Stop everything and start a fresh stack (new Redis: no state carried over)."""
        self.s.down()
        self.start()

    async def warm_up(self, n: int) -> None:
        """A few unmeasured streams (connection pools, lazy imports, the model client)."""
        async with make_client() as client:
            try:
                async with asyncio.timeout(60):
                    for _ in range(n):
                        r = await cai_stream(client, self.gateway_url(), PROMPT, assistant_id=PLAIN)
                        if not r.ok:
                            self.say(f"warm-up stream failed: {r.error}")
                        await floor_stream(client, self.s.llm_sim_url, PROMPT)
            except TimeoutError:
                self.say("warm-up did not finish in 60s")

    def model_is_slow(self) -> bool:
        """Whether llm-sim is set to take seconds before its first token (the idle scenario)."""
        return bool(self.llm_args and self.llm_args[0] >= 1000)

    async def set_llm(self, ttft_ms: float, delay_ms: float, reply_tokens: int) -> None:
        """Restart llm-sim with these knobs if they changed (Cai cannot pass per-request ones)."""
        wanted = (ttft_ms, delay_ms, reply_tokens)
        if wanted == self.llm_args:
            return
        self.say(f"llm-sim → ttft {ttft_ms:g} ms, delay {delay_ms:g} ms, {reply_tokens} tokens")
        stack = self.s
        stack.procs["llm-sim"].stop()
        stack.config.llm_sim_args = llm_cli(*wanted)
        await asyncio.to_thread(stack.start, stack.llm_sim_proc(), 30)
        self.llm_args = wanted
        self.watch()
        if ttft_ms < 1000:  # (a model that takes minutes to answer is not warmed up)
            await self.warm_up(3)

    async def ensure_replicas(self, replicas: int) -> None:
        """Start or stop orchestrator-1.. so that `replicas` orchestrators consume the queue."""
        stack = self.s
        if stack.config.orchestrator_replicas == replicas:
            return
        for i in range(1, max(replicas, 4)):
            name = f"orchestrator-{i}"
            if i < replicas and name not in stack.procs:
                self.say(f"starting {name}")
                await asyncio.to_thread(stack.start, stack.orchestrator_proc(i), 60)
            elif i >= replicas and name in stack.procs:
                self.say(f"stopping {name}")
                stack.procs.pop(name).stop()
        # The gateway balances its gRPC calls over every replica (round_robin), as in the chart.
        stack.config.orchestrator_replicas = replicas
        stack.procs.pop("gateway").stop()
        await asyncio.to_thread(stack.start, stack.gateway_proc(0), 60)
        self.watch()
        await self.warm_up(3)

    async def set_processes(self, orchestrator_processes: int, gateway_workers: int) -> None:
        """Restart the orchestrator and the gateway with these process counts if they differ."""
        stack = self.s
        wanted = (orchestrator_processes, gateway_workers)
        if (stack.config.orchestrator_processes, stack.config.gateway_workers) == wanted:
            return
        self.say(f"orchestrator × {orchestrator_processes} processes, gateway × {gateway_workers}")
        stack.procs.pop("gateway").stop()
        stack.procs.pop("orchestrator").stop()
        stack.config.orchestrator_processes, stack.config.gateway_workers = wanted
        self.orchestrator_processes, self.gateway_workers = wanted
        await asyncio.to_thread(stack.start, stack.orchestrator_proc(0), 60)
        await asyncio.to_thread(stack.start, stack.gateway_proc(0), 60)
        self.watch()
        await self.warm_up(5)

    async def start_retriever(self, timeout_s: float) -> None:
        """Start the retriever (raises RuntimeError or TimeoutError when it does not come up)."""
        stack = self.s
        try:
            await asyncio.to_thread(stack.start, stack.retriever_proc(), timeout_s)
        except (RuntimeError, TimeoutError):
            stack.procs.pop("retriever", None)
            raise
        self.watch()

    def stop_retriever(self) -> None:
        """Stop the retriever if it runs."""
        proc = self.s.procs.pop("retriever", None)
        if proc is not None:
            proc.stop()
        self.watch()
