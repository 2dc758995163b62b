"""Pytest fixtures that start real servers (loaded by the root conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cai_devstack.procs import Proc, free_port, redis_command, redis_ready


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
