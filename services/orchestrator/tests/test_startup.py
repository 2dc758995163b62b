"""Start-up errors are clear and name the fix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cai_devstack.fixtures import start_redis
from cai_devstack.procs import free_port


def test_redis_without_modules_is_a_clear_startup_error(tmp_path: Path) -> None:
    proc, url = start_redis(tmp_path, "plain", modules=False)
    try:
        env = {**os.environ, "REDIS_URL": url, "GRPC_PORT": str(free_port()), "METRICS_PORT": "0"}
        result = subprocess.run(
            [sys.executable, "-m", "cai_orchestrator"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    finally:
        proc.stop()
    assert result.returncode == 2
    assert "RedisJSON and RediSearch" in result.stderr
    assert "CHECKPOINT_URL" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- id: chat\n  temperature: 9\n", "assistants[0].temperature"),
        ("- id: 'has space'\n", "assistants[0].id"),
        ("- id: a\n- id: a\n", "duplicate assistant id"),
        ("- id: a\n  unknown_field: 1\n", "assistants[0].unknown_field"),
    ],
)
def test_invalid_assistants_file_names_the_bad_field(
    tmp_path: Path, content: str, message: str
) -> None:
    from cai_orchestrator.assistants import Assistants, AssistantsError

    path = tmp_path / "assistants.yaml"
    path.write_text(content)
    with pytest.raises(AssistantsError) as err:
        Assistants.load(str(path))
    assert message in str(err.value)
