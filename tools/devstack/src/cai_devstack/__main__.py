"""`python -m cai_devstack up|down|status`: Cai on its embedded defaults, for `make up`."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from pathlib import Path

from cai_devstack.stack import Stack, StackConfig, env_int, running_recorded, stop_recorded

RUN_DIR = Path(".run")


def _say(msg: str) -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def _check_external_redis(url: str) -> None:
    from cai_orchestrator.checkpoint import missing_redis_modules

    missing = asyncio.run(missing_redis_modules(url))
    if missing and not os.environ.get("CHECKPOINT_URL"):
        raise SystemExit(
            f"REDIS_URL lacks {' and '.join(missing)}; unset it to let `make up` start Redis 8 "
            "with modules, or set CHECKPOINT_URL (postgresql://...) for checkpoints."
        )


def _ingest_docs(stack: Stack) -> None:
    marker = stack.config.run_dir / "docs-ingested"
    if marker.exists() or not Path("docs").is_dir():
        return
    _say("Ingesting docs/ as the sample knowledge base…")
    cmd = [
        sys.executable, "-m", "cai_retriever.cli", "ingest", "docs",
        "--addr", f"127.0.0.1:{stack.config.retriever_port}",
    ]  # fmt: skip
    result = subprocess.run(cmd, check=False)
    if result.returncode != 0:
        raise SystemExit("ingesting docs/ failed (see above)")
    marker.write_text("ok\n")


def up() -> int:
    """Start the stack in the background and print how to chat."""
    alive = running_recorded(RUN_DIR)
    if alive:
        _say(f"Cai is already running ({', '.join(alive)}); `make down` stops it.")
        return 0
    config = StackConfig(
        run_dir=RUN_DIR,
        gateway_port=env_int("GATEWAY_PORT", 8080),
        redis_port=env_int("REDIS_PORT", 6390),
        llm_sim_port=env_int("LLM_SIM_PORT", 8090),
        retriever_port=env_int("RETRIEVER_PORT", 50052),
        orchestrator_port=env_int("ORCHESTRATOR_PORT", 50051),
        orchestrator_metrics_port=env_int("ORCHESTRATOR_METRICS_PORT", 9464),
        retriever_metrics_port=env_int("RETRIEVER_METRICS_PORT", 9465),
        gateway_metrics_port=env_int("GATEWAY_METRICS_PORT", 9466),
        orchestrator_replicas=env_int("ORCHESTRATOR_REPLICAS", 1),
        gateway_replicas=env_int("GATEWAY_REPLICAS", 1),
        orchestrator_processes=env_int("ORCHESTRATOR_PROCESSES", 1),
        gateway_workers=env_int("GATEWAY_WORKERS", 1),
        redis_url=os.environ.get("REDIS_URL") or None,
        openai_base_url=os.environ.get("OPENAI_BASE_URL") or None,
        # With a keys file (API_KEYS_FILE) only its keys get in, unless ALLOW_ANONYMOUS=true.
        allow_anonymous=_allow_anonymous(),
        # Local conveniences a cluster keeps off: the API docs at /docs and gRPC reflection.
        service_env={"PUBLIC_DOCS": "true", "GRPC_REFLECTION": "true"},
    )
    if config.redis_url:
        _check_external_redis(config.redis_url)
    stack = Stack(config)
    _say("Starting Cai (logs in .run/logs/)…")
    stack.up(timeout=180)
    if config.with_retriever:
        _ingest_docs(stack)
    url = stack.gateway_url()
    llm = "llm-sim (a simulator, not a real model)" if not config.openai_base_url else "your LLM"
    _say(
        f"""
Cai is up: gateway {url} · {config.orchestrator_replicas} orchestrator(s) · model: {llm}
Redis: {stack.redis_url}   Stop everything with `make down`.
API docs: {url}/docs   Metrics: http://127.0.0.1:{config.gateway_metrics_port}/metrics

Chat with curl (SSE):
  THREAD=$(curl -s -X POST {url}/threads -H 'Content-Type: application/json' -d '{{}}' \
           | python3 -c 'import json,sys; print(json.load(sys.stdin)["thread_id"])')
  curl -N {url}/threads/$THREAD/runs/stream -H 'Content-Type: application/json' \
    -d '{{"assistant_id": "chat", "stream_mode": "messages-tuple", "input": {{"messages":
         [{{"role": "user", "content": "How does Cai resume a stream?"}}]}}}}'

Or with the official LangGraph SDK (.venv/bin/python):
  import asyncio
  from langgraph_sdk import get_client
  QUESTION = {{"role": "user", "content": "How does Cai resume a stream?"}}
  async def main():
      client = get_client(url="{url}")
      thread = await client.threads.create()
      async for part in client.runs.stream(thread["thread_id"], "chat",
              input={{"messages": [QUESTION]}}, stream_mode="messages-tuple"):
          if part.event == "messages":
              print(part.data[0]["content"], end="", flush=True)
  asyncio.run(main())
"""
    )
    return 0


def _allow_anonymous() -> bool:
    """Anonymous access for `make up`: on, unless API_KEYS_FILE names a keys file (then off);
    ALLOW_ANONYMOUS=true/false says so explicitly."""
    explicit = os.environ.get("ALLOW_ANONYMOUS", "").strip().lower()
    if explicit:
        return explicit in ("1", "true", "yes", "on")
    return not os.environ.get("API_KEYS_FILE")


def down() -> int:
    """Stop exactly what `up` started."""
    stopped = stop_recorded(RUN_DIR)
    _say(f"Stopped: {', '.join(stopped)}" if stopped else "Nothing was running.")
    return 0


def status() -> int:
    """Which recorded processes are alive."""
    alive = running_recorded(RUN_DIR)
    for name, pid in alive.items():
        _say(f"{name}: pid {pid}")
    if not alive:
        _say("Cai is not running.")
    return 0


def main() -> None:
    """Parse the command and run it."""
    parser = argparse.ArgumentParser(prog="cai-devstack", description=__doc__)
    parser.add_argument("command", choices=["up", "down", "status"])
    args = parser.parse_args()
    sys.exit({"up": up, "down": down, "status": status}[args.command]())


if __name__ == "__main__":
    main()
