"""values.yaml, values.schema.json and the README table stay in step, and the schema bites."""

from __future__ import annotations

import json
from typing import Any

import chartcheck
import helm_python as helm
import jsonschema
import pytest
import values_table
import yaml

SCHEMA = json.loads((chartcheck.CHART / "values.schema.json").read_text())
VALUES_TEXT = (chartcheck.CHART / "values.yaml").read_text()
VALUES = yaml.safe_load(VALUES_TEXT)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SCHEMA["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _subschema(path: list[str]) -> dict[str, Any] | None:
    node = SCHEMA
    for part in path:
        node = _resolve(node)
        props = node.get("properties", {})
        if part in props:
            node = props[part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        elif node.get("additionalProperties") is False or node.get("type") != "object":
            return None
        else:  # a free-form object (Kubernetes passthrough, e.g. affinity)
            return {}
    return _resolve(node)


def _schema_paths(schema: dict[str, Any], prefix: list[str]) -> list[list[str]]:
    """Dotted paths of every property the schema names (into closed objects only)."""
    schema = _resolve(schema)
    out = []
    for key, sub in schema.get("properties", {}).items():
        out.append([*prefix, key])
        if _resolve(sub).get("additionalProperties") is False:
            out += _schema_paths(sub, [*prefix, key])
    return out


def test_schema_is_valid_and_accepts_the_defaults() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    jsonschema.Draft202012Validator(SCHEMA).validate(VALUES)


def test_schema_covers_every_value() -> None:
    uncovered = [
        leaf for leaf in values_table.leaves(VALUES) if _subschema(leaf.split(".")) is None
    ]
    assert uncovered == []


def test_schema_names_no_value_that_values_yaml_lacks() -> None:
    stale = []
    for path in _schema_paths(SCHEMA, []):
        node: Any = VALUES
        for part in path:
            if not isinstance(node, dict) or part not in node:
                stale.append(".".join(path))
                break
            node = node[part]
    assert stale == []


def test_every_chart_owned_object_is_closed() -> None:
    """Typos are rejected: every object the chart defines itself forbids unknown keys."""
    open_objects = []

    def walk(schema: dict[str, Any], where: str) -> None:
        schema = _resolve(schema)
        if "properties" in schema and schema.get("additionalProperties") is not False:
            if where not in ("strategy",):
                open_objects.append(where)
        for key, sub in schema.get("properties", {}).items():
            walk(sub, f"{where}.{key}" if where else key)
        if isinstance(schema.get("items"), dict):
            walk(schema["items"], f"{where}[]")

    walk(SCHEMA, "")
    # envList items and parentRefs are Kubernetes objects: only their required keys are named.
    assert [o for o in open_objects if not o.endswith(("extraEnv[]", "parentRefs[]"))] == []


def test_every_value_is_documented() -> None:
    assert values_table.undocumented(VALUES_TEXT, VALUES) == []


def test_readme_values_table_is_fresh() -> None:
    readme = values_table.README.read_text()
    assert values_table.updated_readme(readme, VALUES_TEXT) == readme, "run `make chart-docs`"


def test_readme_sections_come_in_the_order_a_platform_engineer_needs() -> None:
    readme = values_table.README.read_text()
    headings = [line[3:] for line in readme.splitlines() if line.startswith("## ")]
    assert headings == [
        "Install",
        "Upgrade",
        "External dependencies",
        "Scaling",
        "Observability",
        "Values",
    ]


def test_table_generator_reads_continuations_and_nested_keys() -> None:
    text = "a:\n  # -- first line\n  # second line\n  b: 1\n  # -- a map\n  c: {x: 1}\nd: 2\n"
    data = yaml.safe_load(text)
    assert values_table.descriptions(text, data) == {
        "a.b": "first line second line",
        "a.c": "a map",
    }
    assert values_table.undocumented(text, data) == ["d"]


BAD_VALUES = [
    ({"gateway": {"replicas": 3}}, "additional properties 'replicas'"),
    ({"gateway": {"replicaCount": -1}}, "/gateway/replicaCount"),
    ({"gateway": {"image": {"pullPolicy": "Sometimes"}}}, "/gateway/image/pullPolicy"),
    ({"gateway": {"auth": {"allowAnonymous": "yes"}}}, "/gateway/auth/allowAnonymous"),
    ({"redis": {"mode": "cluster"}}, "/redis/mode"),
    ({"redis": {"mode": "external"}}, "/redis/external/url"),
    ({"redis": {"external": {"url": "http://redis:6379"}}}, "/redis/external/url"),
    ({"qdrant": {"mode": "external"}}, "/qdrant/external/url"),
    ({"orchestrator": {"keda": {"lagCount": 10}}}, "additional properties 'lagCount'"),
    ({"orchestrator": {"keda": {"minReplicaCount": 0}}}, "/orchestrator/keda/minReplicaCount"),
    ({"orchestrator": {"keda": {"targetLoad": 0}}}, "/orchestrator/keda/targetLoad"),
    ({"orchestrator": {"keda": {"targetLoad": 1.5}}}, "/orchestrator/keda/targetLoad"),
    ({"orchestrator": {"keda": {"fallback": {"replicas": 0}}}}, "/orchestrator/keda/fallback"),
    ({"orchestrator": {"keda": {"behavior": {"scaleDown": None}}}}, "/orchestrator/keda/behavior"),
    (
        {"orchestrator": {"autoscaling": {"targetStreamsPerPod": 10}}},
        "additional properties 'targetStreamsPerPod'",
    ),
    ({"assistants": [{"name": "No id", "model": "m"}]}, "/assistants/0"),
    ({"assistants": [{"id": "x", "name": "X", "model": "m", "temperature": 3}]}, "temperature"),
    ({"assistants": []}, "/assistants"),
    ({"logLevel": "verbose"}, "/logLevel"),
    (
        {
            "gateway": {
                "ingress": {
                    "hosts": [{"host": "a", "paths": [{"path": "x", "pathType": "Prefix"}]}]
                }
            }
        },
        "path",
    ),
    (
        {"redis": {"internal": {"persistence": {"size": "lots"}}}},
        "/redis/internal/persistence/size",
    ),
    ({"metrics": {"serviceMonitor": {"interval": "often"}}}, "/metrics/serviceMonitor/interval"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_helm_rejects_bad_values(values: dict[str, Any], where: str) -> None:
    """Helm's own schema validation (what `helm install` runs) refuses each of these."""
    with helm.Chart.load(chartcheck.CHART) as chart:
        with pytest.raises(helm.HelmValuesError, match=where.replace("[", r"\[")):
            chart.validate_schema(values)


def test_helm_accepts_every_scenario() -> None:
    with helm.Chart.load(chartcheck.CHART) as chart:
        for path in chartcheck.SCENARIOS.values():
            chart.validate_schema(chartcheck.load_values(path))


def test_template_guards_catch_what_the_schema_cannot() -> None:
    with pytest.raises(Exception, match="minReplicaCount must not exceed"):
        chartcheck.render(
            {
                "orchestrator": {
                    "autoscaling": {"enabled": False},
                    "keda": {"enabled": True, "minReplicaCount": 9, "maxReplicaCount": 3},
                }
            }
        )
    with pytest.raises(Exception, match="minReplicas must not exceed"):
        chartcheck.render({"gateway": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}})
    with pytest.raises(Exception, match="needs a target"):
        chartcheck.render({"retriever": {"autoscaling": {"targetCPUUtilizationPercentage": 0}}})
