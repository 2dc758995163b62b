"""Pytest fixtures that start real servers (loaded by the root conftest.py)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cai_devstack.procs import Proc, free_port, redis_command, redis_ready
from cai_devstack.stack import Stack, StackConfig


def start_redis(tmp: Path, name: str = "redis", modules: bool = True) -> tuple[Proc, str]:
    """A Redis 8 on a free port (with RedisJSON + RediSearch unless `modules` is False)."""
    port = free_port()
    data = tmp / name
    data.mkdir(parents=True, exist_ok=True)
    cmd = redis_command(port, data, appendonly=False)
    if not modules:
        cut = cmd.index("--loadmodule")
        cmd = cmd[:cut]
    url = f"redis://127.0.0.1:{port}/0"
    proc = Proc(name, cmd, tmp / f"{name}.log", ready=redis_ready(url)).start()
    proc.wait_ready(20)
    return proc, url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a session-wide Redis 8 with modules, started for the tests and stopped after."""
    proc, url = start_redis(tmp_path_factory.mktemp("redis8"))
    try:
        yield url
    finally:
        proc.stop()


@contextlib.contextmanager
def running_stack(
    run_dir: Path, timeout: float = 180.0, *, assistants: str | None = None, **config: Any
) -> Iterator[Stack]:
    """A whole Cai stack on free ports, up for the `with` block and stopped after it.

    The one way tests start a full stack: `config` takes any StackConfig field (replicas,
    `service_env`, `llm_sim_args`, `with_retriever`, ...). `assistants` is the YAML of an
    assistants file: it is written into `run_dir` and every service gets `ASSISTANTS_FILE`.
    Use it inside a fixture of the scope the stack should live for.
    """
    if assistants is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / "assistants.yaml"
        path.write_text(assistants)
        config["service_env"] = {**config.get("service_env", {}), "ASSISTANTS_FILE": str(path)}
    stack = Stack(StackConfig.ephemeral(run_dir, **config))
    stack.up(timeout=timeout)
    try:
        yield stack
    finally:
        stack.down()
