"""Fixtures: real llm-sim processes (free port, readiness polled with a deadline, killed by pid)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

READY_DEADLINE_S = 20.0


@dataclass(frozen=True)
class SimServer:
    """A running llm-sim process."""

    url: str
    pid: int

    @property
    def v1(self) -> str:
        """The OpenAI base URL."""
        return self.url + "/v1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_sim(args: list[str], env: dict[str, str] | None = None) -> Iterator[SimServer]:
    port = _free_port()
    log = tempfile.NamedTemporaryFile(prefix="llm-sim-", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_sim", "--port", str(port), "--log-level", "warning", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_DEADLINE_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llm-sim exited with {proc.returncode}:\n{Path(log.name).read_text()}")
            try:
                if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                output = Path(log.name).read_text()
                pytest.fail(f"llm-sim not ready in {READY_DEADLINE_S}s:\n{output}")
            time.sleep(0.05)
        yield SimServer(url, proc.pid)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        log.close()
        os.unlink(log.name)


@pytest.fixture(scope="session")
def sim() -> Iterator[SimServer]:
    """An llm-sim with default settings, shared by the tests (they steer it with headers)."""
    yield from start_sim([])


@pytest.fixture(scope="session")
def faulty_sim() -> Iterator[SimServer]:
    """An llm-sim configured by flags and environment: 50% 429s, seeded, 7-token replies."""
    yield from start_sim(
        ["--fail-rate", "0.5", "--fail-status", "429", "--retry-after", "2", "--seed", "11"],
        env={"LLM_SIM_REPLY_TOKENS": "7"},
    )
