"""skaffold.yaml validates against the vendored v4beta14 schema, builds every image from the one
Dockerfile and wires the images into the chart."""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path

import chartcheck
import pytest
import yaml
from charthelpers import one, render, skaffold_artifacts, with_profile

SKAFFOLD = chartcheck.REPO / "skaffold.yaml"
DOC = yaml.safe_load(SKAFFOLD.read_text())


def test_skaffold_yaml_validates() -> None:
    assert DOC["apiVersion"] == "skaffold/v4beta14"
    assert chartcheck.skaffold_problems(SKAFFOLD) == []


def test_skaffold_schema_bites(tmp_path: Path) -> None:
    bad = dict(DOC, build={**DOC["build"], "artifact": []})
    path = tmp_path / "skaffold.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert any("artifact" in p for p in chartcheck.skaffold_problems(path))
    path.write_text(yaml.safe_dump(dict(DOC, apiVersion="skaffold/v9")))
    assert chartcheck.skaffold_problems(path) == [
        "apiVersion 'skaffold/v9': no vendored schema, not validated"
    ]


def dockerfile_problems(doc: dict) -> list[str]:
    """Artifacts (with every profile's) that do not build ./Dockerfile from the repository root."""
    return [
        image
        for image, artifact in skaffold_artifacts(doc).items()
        if artifact["context"] != "." or artifact["docker"]["dockerfile"] != "Dockerfile"
    ]


def test_every_artifact_builds_the_one_dockerfile_from_the_repo_root() -> None:
    artifacts = skaffold_artifacts(DOC)
    assert set(artifacts) == {"cai-gateway", "cai-orchestrator", "cai-retriever", "cai-llm-sim"}
    assert {a["image"] for a in DOC["build"]["artifacts"]} == set(artifacts) - {"cai-llm-sim"}
    assert dockerfile_problems(DOC) == []
    assert (chartcheck.REPO / "Dockerfile").is_file()


def test_dockerfile_check_bites() -> None:
    doc = copy.deepcopy(DOC)
    doc["build"]["artifacts"][1]["docker"]["dockerfile"] = "services/orchestrator/Dockerfile"
    doc["profiles"][0]["patches"][0]["value"]["context"] = "tools/llm-sim"
    assert dockerfile_problems(doc) == ["cai-orchestrator", "cai-llm-sim"]


@pytest.mark.parametrize("profile", [None, "dev", "prod"])
def test_skaffold_validates_with_every_profile(profile: str | None, tmp_path: Path) -> None:
    """The schema sees a profile's patch values only once applied (e.g. llm-sim's build args)."""
    doc = DOC if profile is None else with_profile(DOC, profile)
    path = tmp_path / "skaffold.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert chartcheck.skaffold_problems(path) == []


def test_schema_checks_build_args(tmp_path: Path) -> None:
    doc = with_profile(DOC, "dev")
    doc["build"]["artifacts"][-1]["docker"]["buildArgs"]["PORTS"] = 8090
    path = tmp_path / "skaffold.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert any("buildArgs" in p for p in chartcheck.skaffold_problems(path))


def _release(doc: dict) -> dict:
    (release,) = doc["deploy"]["helm"]["releases"]
    return release


def _template_values(release: dict) -> dict:
    """setValueTemplates with skaffold's template fields filled in, as nested chart values."""
    values: dict = {}
    for key, template in release.get("setValueTemplates", {}).items():
        value = re.sub(r"\{\{\.IMAGE_REPO_\w+\}\}", "registry.local/img", template)
        value = re.sub(r"\{\{\.IMAGE_TAG_\w+\}\}", "abc123", value)
        value = re.sub(r"\{\{\.IMAGE_DIGEST_\w+\}\}", "sha256:" + "0" * 64, value)
        chartcheck.set_dotted(values, key, value)
    for key, value in release.get("setValues", {}).items():
        chartcheck.set_dotted(values, key, value)
    return values


def test_helm_release_overrides_every_image() -> None:
    release = _release(DOC)
    assert release["chartPath"] == "charts/cai"
    templates = release["setValueTemplates"]
    for artifact in DOC["build"]["artifacts"]:
        key = artifact["image"].replace("-", "_")
        component = artifact["image"].removeprefix("cai-")
        assert templates[f"{component}.image.repository"] == f"{{{{.IMAGE_REPO_{key}}}}}"
        assert (
            templates[f"{component}.image.tag"]
            == f"{{{{.IMAGE_TAG_{key}}}}}@{{{{.IMAGE_DIGEST_{key}}}}}"
        )
    objs = render(_template_values(release))
    (c,) = one(objs, "Deployment", "cai-gateway")["spec"]["template"]["spec"]["containers"]
    assert c["image"] == "registry.local/img:abc123@sha256:" + "0" * 64
    assert chartcheck.validate_all(objs) == []


@pytest.mark.parametrize("profile", ["dev", "prod"])
def test_profiles_render_valid_releases(profile: str) -> None:
    doc = with_profile(DOC, profile)
    release = _release(doc)
    values: dict = {}
    for path in release.get("valuesFiles", []):
        values = yaml.safe_load((chartcheck.REPO / path).read_text())
    for key, value in _template_values(release).items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    objs = render(values)
    assert chartcheck.validate_all(objs) == []
    images = {a["image"] for a in doc["build"]["artifacts"]}
    if profile == "dev":
        assert "cai-llm-sim" in images
        one(objs, "Deployment", "cai-llm-sim")
    else:
        one(objs, "ScaledObject", "cai-orchestrator")


def test_gateway_is_port_forwarded() -> None:
    (forward,) = DOC["portForward"]
    assert forward["resourceType"] == "service"
    svc = one(render({}), "Service", forward["resourceName"])
    assert forward["port"] in [p["port"] for p in svc["spec"]["ports"]]
    assert forward["namespace"] == _release(DOC)["namespace"]


def test_vendored_schemas_match_their_upstream_blobs() -> None:
    """Each vendored file is byte-for-byte the upstream blob named in SOURCES.md."""
    rows = re.findall(
        r"^\| (\S+) \| (\d+) \| [^|]+ \| [^|]+ \| [0-9a-f]{40} \| ([0-9a-f]{40}) \|",
        (chartcheck.SCHEMAS / "SOURCES.md").read_text(),
        flags=re.M,
    )
    assert len(rows) == 5
    for name, size, blob in rows:
        data = (chartcheck.SCHEMAS / name).read_bytes()
        assert len(data) == int(size), name
        assert hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() == blob, name
