"""The README's first command: `make up` (cai_devstack up) starts everything, answers from the
ingested docs, and `make down` stops exactly what it started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
from langgraph_sdk import get_client

from cai_devstack.procs import free_port, pid_alive

DOC = """# Resuming streams

Cai resumes a stream when the client reconnects with the Last-Event-ID header: the gateway
replays the run's event log after that id, so nothing is lost or repeated.
"""


async def test_make_up_answers_from_the_docs_and_make_down_stops_everything(
    tmp_path: Path,
) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "streams.md").write_text(DOC)
    ports = {
        name: str(free_port())
        for name in (
            "GATEWAY_PORT", "REDIS_PORT", "LLM_SIM_PORT", "RETRIEVER_PORT", "ORCHESTRATOR_PORT",
            "ORCHESTRATOR_METRICS_PORT", "RETRIEVER_METRICS_PORT", "GATEWAY_METRICS_PORT",
        )
    }  # fmt: skip
    env = {**os.environ, **ports}
    env.pop("REDIS_URL", None)
    env.pop("OPENAI_BASE_URL", None)
    cli = [sys.executable, "-m", "cai_devstack"]
    up = subprocess.run(
        [*cli, "up"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "curl" in up.stdout and "langgraph_sdk" in up.stdout
        state = orjson.loads((tmp_path / ".run" / "stack.json").read_text())
        pids = state["pids"]
        assert set(pids) == {"redis", "llm-sim", "retriever", "orchestrator", "gateway"}
        url = f"http://127.0.0.1:{ports['GATEWAY_PORT']}"
        assert httpx.get(f"{url}/readyz").status_code == 200

        client = get_client(url=url)
        thread = await client.threads.create()
        question = {"messages": [{"role": "user", "content": "How does Cai resume a stream?"}]}
        parts = [
            p
            async for p in client.runs.stream(
                thread["thread_id"], "chat", input=question, stream_mode="messages-tuple"
            )
        ]
        answer = "".join(p.data[0]["content"] for p in parts if p.event == "messages")
        assert "Last-Event-ID" in answer  # grounded in the ingested docs
        sources = [p.data["sources"] for p in parts if p.event == "retrieval"]
        assert sources and sources[0][0]["source"].endswith("streams.md")

        again = subprocess.run([*cli, "up"], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert again.returncode == 0 and "already running" in again.stdout
    finally:
        down = subprocess.run(
            [*cli, "down"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
    assert down.returncode == 0, down.stderr
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
    assert not (tmp_path / ".run" / "stack.json").exists()
