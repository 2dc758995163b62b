"""Offline checks of charts/cai: `helm lint --strict`, render, and validate every object.

Rendering and linting use Helm's own Go code through `helm-python-sdk` (no helm binary, no
cluster). Built-in kinds are validated with `kubernetes-validate` (strict: unknown fields fail)
against KUBE_VERSION; custom resources against the openAPIV3Schema of the CRDs vendored in
`schemas/` (see schemas/SOURCES.md), made strict the same way.

Used by the pytest suite in this folder and, as a script, by `make chart-lint`:

    python tests/charts/chartcheck.py            # every scenario in SCENARIOS
"""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHART = REPO / "charts" / "cai"
SCHEMAS = HERE / "schemas"
SCENARIO_DIR = HERE / "values"
RELEASE = "cai"
NAMESPACE = "cai"

# The newest Kubernetes whose schemas kubernetes-validate ships.
KUBE_VERSION = "1.37.0"

CRD_FILES = (
    "keda.sh_scaledobjects.yaml",
    "keda.sh_triggerauthentications.yaml",
    "monitoring.coreos.com_servicemonitors.yaml",
    "monitoring.coreos.com_prometheusrules.yaml",
)
# Gateway API and cert-manager are not vendored; these hand-written schemas cover the fields the
# chart renders.
EXTRA_SCHEMAS = {
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): "httproute.partial.schema.json",
    ("cert-manager.io/v1", "Certificate"): "certificate.partial.schema.json",
}

# Values files `make chart-lint` lints, renders and validates: name -> file (None: defaults).
SCENARIOS: dict[str, Path | None] = {
    "default": None,
    "production": CHART / "examples" / "production-values.yaml",
    **{p.stem: p for p in sorted(SCENARIO_DIR.glob("*.yaml"))},
}


class CheckError(Exception):
    """A chart check failed; the message says which object and why."""


def load_values(path: Path | None) -> dict[str, Any]:
    """Values from a YAML file (None: no overrides)."""
    if path is None:
        return {}
    return yaml.safe_load(path.read_text()) or {}


def lint(values: dict[str, Any] | None = None) -> list[str]:
    """`helm lint --strict`: every warning or error, as text (info messages do not count)."""
    report = helm.lint(CHART, values or None, strict=True, kube_version=f"v{KUBE_VERSION}")
    problems = [
        f"{m['path']}: {m['error'].strip()}" for m in report["messages"] if m["severity"] >= 2
    ]
    problems += [e.strip() for e in report.get("errors") or [] if e.strip() not in str(problems)]
    return problems


def render(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Render the chart offline; template path -> manifest text (NOTES.txt included)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(values or None, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object in a render, in template order."""
    found = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                found.append(doc)
    return found


def render_objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Render and parse in one step."""
    return objects(render(values))


def _strict(schema: Any) -> Any:
    """A copy of an OpenAPI schema that rejects unknown fields, like the API server's Strict
    field validation (CRD schemas rely on pruning, so they never say additionalProperties)."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


_OBJECT_ENVELOPE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "metadata": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        }
    },
}


@functools.cache
def custom_validators() -> dict[tuple[str, str], jsonschema.protocols.Validator]:
    """(apiVersion, kind) -> validator, from each served version of the vendored CRDs."""
    validators = {}
    for name in CRD_FILES:
        crd = yaml.safe_load((SCHEMAS / name).read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if not version.get("served"):
                continue
            schema = _strict(version["schema"]["openAPIV3Schema"])
            schema = {"allOf": [schema, _OBJECT_ENVELOPE]}
            validators[(f"{group}/{version['name']}", kind)] = jsonschema.Draft7Validator(schema)
    for key, name in EXTRA_SCHEMAS.items():
        schema = json.loads((SCHEMAS / name).read_text())
        validators[key] = jsonschema.Draft202012Validator({"allOf": [schema, _OBJECT_ENVELOPE]})
    return validators


def _cel_rules(obj: dict[str, Any]) -> list[str]:
    """The CEL rules of the vendored CRDs, re-implemented (jsonschema cannot evaluate CEL)."""
    problems = []
    if obj["kind"] == "ScaledObject":
        spec = obj["spec"]
        low, high = spec.get("minReplicaCount", 0), spec.get("maxReplicaCount", 100)
        if low > high:
            problems.append(f"minReplicaCount ({low}) must be <= maxReplicaCount ({high})")
    return problems


def validate_object(obj: dict[str, Any]) -> list[str]:
    """Problems with one rendered object; empty when it validates."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    validator = custom_validators().get(key)
    if validator is not None:
        problems = [
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(obj)
        ]
        return problems + _cel_rules(obj)
    group = key[0].split("/")[0] if "/" in key[0] else ""
    if "." in group and not group.endswith(".k8s.io"):
        return [f"no schema for custom resource {key[0]} {key[1]}"]
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{'/'.join(map(str, err.absolute_path)) or '<root>'}: {err.message}"]
    except kubernetes_validate.SchemaNotFoundError as err:
        return [err.message]
    return []


def validate_all(objs: list[dict[str, Any]]) -> list[str]:
    """Problems across a render: each object, plus names that collide."""
    problems = []
    seen: set[tuple[str, str]] = set()
    for obj in objs:
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        ident = (obj.get("kind", ""), obj.get("metadata", {}).get("name", ""))
        if ident in seen:
            problems.append(f"{name}: rendered twice")
        seen.add(ident)
        problems += [f"{name}: {p}" for p in validate_object(obj)]
    return problems


def skaffold_problems(path: Path = REPO / "skaffold.yaml") -> list[str]:
    """skaffold.yaml against the vendored schema its apiVersion names (`skaffold/vX` -> vX.json)."""
    problems = []
    for doc in yaml.safe_load_all(path.read_text()):
        version = str(doc.get("apiVersion", ""))
        match = re.fullmatch(r"skaffold/(v[0-9a-z]+)", version)
        schema_file = SCHEMAS / f"{match.group(1)}.json" if match else None
        if schema_file is None or not schema_file.exists():
            problems.append(f"apiVersion {version!r}: no vendored schema, not validated")
            continue
        schema = json.loads(schema_file.read_text())
        validator = jsonschema.Draft7Validator(schema)
        problems += [
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(doc)
        ]
    return problems


def containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Containers and init containers of a workload or Pod."""
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec", spec) if obj["kind"] != "Pod" else spec
    yield from pod.get("initContainers", []) or []
    yield from pod.get("containers", []) or []


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a workload or Pod."""
    return obj["spec"] if obj["kind"] == "Pod" else obj["spec"]["template"]["spec"]


def set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    """Set a value by Helm's dotted path (as `--set a.b=c` does), creating maps on the way."""
    node = values
    *parents, last = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def main() -> int:
    """Lint, render and validate every scenario, then skaffold.yaml; exit 1 on any problem."""
    failed = False
    for name, path in SCENARIOS.items():
        values = load_values(path)
        problems = [f"lint: {p}" for p in lint(values)]
        objs: list[dict[str, Any]] = []
        if not problems:
            objs = render_objects(values)
            problems = validate_all(objs)
        status = "ok" if not problems else "FAILED"
        print(
            f"{name:<14} {status:<7} {len(objs):>3} objects validated (Kubernetes {KUBE_VERSION})"
        )
        for problem in problems:
            print(f"    {problem}")
        failed |= bool(problems)
    problems = skaffold_problems()
    print(f"{'skaffold.yaml':<14} {'ok' if not problems else 'FAILED'}")
    for problem in problems:
        print(f"    {problem}")
    failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
