"""Peers: the servers a user would pick instead of Cai, run under the same load (opt-in).

- `langgraph`: LangGraph's own local server, `langgraph dev` (langgraph-cli[inmem]: langgraph-api
  with the in-memory runtime), no reload, as many concurrent runs as Cai's MAX_CONCURRENT_RUNS.
- `aegra`: Aegra (aegra-api), the self-hosted Agent Protocol server, on the machine's PostgreSQL
  (127.0.0.1:5432, trust auth) in a database of its own, recreated for each run.

Each serves `peer_graph/graph.py` (the turn of Cai's `bench-plain` assistant) against the same
llm-sim, and speaks the LangGraph API the load generator uses for Cai. Each is installed, with
pinned versions, into a virtual environment of its own under bench/.peers (BENCH_PEERS_DIR), never
into the project's locked workspace; a peer that cannot be installed or started is skipped with
the reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cai_devstack.procs import Proc, free_port, http_ready

HERE = Path(__file__).resolve().parent
GRAPH = HERE / "peer_graph" / "graph.py"
DEFAULT_DIR = HERE.parent / ".peers"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
ASSISTANT = "agent"  # the graph id, which both servers accept as an assistant id


class PeerUnavailable(Exception):
    """The peer cannot be installed or started here; the message says why."""


@dataclass(frozen=True)
class Peer:
    """One peer: what to install and how to run it."""

    name: str
    label: str
    requirements: tuple[str, ...]
    health_path: str

    def venv(self, root: Path) -> Path:
        """The peer's virtual environment."""
        return root / self.name


PEERS = {
    "langgraph": Peer(
        "langgraph",
        "LangGraph dev server (langgraph-cli[inmem] 0.4.40, langgraph-api 0.16.7, in-memory)",
        (
            "langgraph-cli[inmem]==0.4.40",
            "langgraph-api==0.16.7",
            "langgraph-runtime-inmem==0.36.7",
            "langgraph==1.2.24",
            "langchain-core==1.8.3",
            "langchain-openai==1.7.3",
        ),
        "/ok",
    ),
    "aegra": Peer(
        "aegra",
        # 0.6.0 is the newest aegra-api for Python 3.11 (later ones need 3.12); it does not
        # declare greenlet, which its SQLAlchemy asyncio engine needs.
        "Aegra (aegra-api 0.6.0, PostgreSQL 127.0.0.1:5432)",
        (
            "aegra-api==0.6.0",
            "greenlet==3.5.6",
            "langgraph==1.2.24",
            "langchain-core==1.8.3",
            "langchain-openai==1.7.3",
        ),
        "/health",
    ),
}


def base_python() -> str:
    """The interpreter the project's venv was made from (peers get a venv of their own)."""
    return str(getattr(sys, "_base_executable", "") or shutil.which("python3") or sys.executable)


def ensure_installed(peer: Peer, root: Path, say: Callable[[str], None]) -> Path:
    """The peer's python, installing its pinned requirements first if needed.

    Raises:
        PeerUnavailable: pip could not install them (no such version on the index here, ...).
    """
    venv = peer.venv(root)
    python = venv / "bin" / "python"
    pins = "\n".join(peer.requirements) + "\n"
    marker = venv / ".cai-bench-pins"
    if python.exists() and marker.exists() and marker.read_text() == pins:
        return python
    say(f"peer {peer.name}: installing {', '.join(peer.requirements)} into {venv}")
    root.mkdir(parents=True, exist_ok=True)
    made = subprocess.run(
        [base_python(), "-m", "venv", "--clear", str(venv)], capture_output=True, text=True
    )
    if made.returncode != 0:
        raise PeerUnavailable(f"cannot create a virtual environment: {made.stderr.strip()[-300:]}")
    try:
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             *peer.requirements],
            capture_output=True, text=True, timeout=900,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise PeerUnavailable("pip install took more than 15 minutes") from exc
    if done.returncode != 0:
        errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
        raise PeerUnavailable("pip install failed: " + " ".join(errors or [done.stderr[-300:]]))
    marker.write_text(pins)
    return python


def versions(python: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Installed versions of some distributions in the peer's environment."""
    code = (
        "import importlib.metadata as m, json, sys\n"
        "out = {}\n"
        "for n in sys.argv[1:]:\n"
        "    try: out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(python), "-c", code, *names], capture_output=True, text=True)
    return dict(json.loads(done.stdout or "{}"))


def _fresh_database(name: str) -> str:
    """Drop and create a database on the local PostgreSQL; its URL."""
    import psycopg

    try:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        raise PeerUnavailable(f"PostgreSQL at 127.0.0.1:5432: {exc}".strip()) from exc
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def postgres_pid() -> int | None:
    """The local PostgreSQL's postmaster (its backends are Aegra's database work)."""
    import psutil

    for proc in psutil.process_iter(["name", "ppid"]):
        try:
            if proc.info["name"] == "postgres" and psutil.Process(proc.info["ppid"]).name() != (
                "postgres"
            ):
                return int(proc.pid)
        except psutil.Error:
            continue
    return None


def server_proc(
    peer: Peer, python: Path, run_dir: Path, llm_url: str, max_concurrent_runs: int
) -> tuple[Proc, str]:
    """The peer's server, not started yet, and its base URL."""
    folder = run_dir / f"peer-{peer.name}"
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(GRAPH, folder / "graph.py")
    port = free_port()
    env = {
        "PEER_LLM_URL": f"{llm_url}/v1",
        "LANGGRAPH_CLI_NO_ANALYTICS": "1",
        "LANGSMITH_TRACING": "false",
        "PYTHONPATH": "",  # the bench's own path must not leak into the peer
        "VIRTUAL_ENV": str(python.parent.parent),
    }
    if peer.name == "langgraph":
        (folder / "langgraph.json").write_text(
            json.dumps({"dependencies": ["."], "graphs": {ASSISTANT: "./graph.py:graph"}})
        )
        cmd = [
            str(python.parent / "langgraph"), "dev", "--no-browser", "--no-reload",
            "--host", "127.0.0.1", "--port", str(port),
            "--n-jobs-per-worker", str(max_concurrent_runs),
            "--server-log-level", "WARNING", "--config", str(folder / "langgraph.json"),
        ]  # fmt: skip
    elif peer.name == "aegra":
        (folder / "aegra.json").write_text(json.dumps({"graphs": {ASSISTANT: "./graph.py:graph"}}))
        digest = hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]
        env |= {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "AEGRA_CONFIG": str(folder / "aegra.json"),
            "DATABASE_URL": _fresh_database(f"cai_bench_aegra_{digest}"),
            "AUTH_TYPE": "noop",
            "LOG_LEVEL": "WARNING",
            "ENV_MODE": "PRODUCTION",
        }
        cmd = [str(python), "-m", "aegra_api.main"]
    else:
        raise PeerUnavailable(f"unknown peer {peer.name!r} (known: {', '.join(PEERS)})")
    url = f"http://127.0.0.1:{port}"
    proc = Proc(
        f"peer-{peer.name}",
        cmd,
        folder / "server.log",
        env={**env, "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        ready=http_ready(url + peer.health_path),
    )
    return proc, url


def drop_database(run_dir: Path) -> None:
    """Drop the Aegra database of this run (best effort)."""
    import psycopg

    digest = hashlib.sha1(str(run_dir).encode()).hexdigest()[:8]
    try:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "cai_bench_aegra_{digest}" WITH (FORCE)')
    except psycopg.Error:
        pass
