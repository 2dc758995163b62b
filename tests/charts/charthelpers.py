"""Helpers for the chart tests: renders cached per values set (each is a Helm call), and
skaffold.yaml with its profiles applied."""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import chartcheck


@functools.cache
def _render_cached(values_json: str) -> tuple[dict[str, str], list[dict[str, Any]]]:
    rendered = chartcheck.render(json.loads(values_json))
    return rendered, chartcheck.objects(rendered)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Objects of a render with these values (cached; treat the result as read-only)."""
    return _render_cached(json.dumps(values or {}, sort_keys=True))[1]


def render_text(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> text of a render (cached)."""
    return _render_cached(json.dumps(values or {}, sort_keys=True))[0]


def scenario_values(name: str) -> dict[str, Any]:
    """Values of a named scenario (chartcheck.SCENARIOS)."""
    return chartcheck.load_values(chartcheck.SCENARIOS[name])


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    """Objects of a kind (and name)."""
    return [
        o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of a kind and name; fails the test otherwise."""
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or valueFrom) of a container's env."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def apply_patches(doc: dict[str, Any], patches: list[dict[str, Any]]) -> dict[str, Any]:
    """The JSON-patch `add` operations skaffold applies for a profile, on a copy of doc."""
    out = copy.deepcopy(doc)
    for patch in patches:
        assert patch["op"] == "add"
        *parents, last = patch["path"].strip("/").split("/")
        node = out
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if last == "-":
            node.append(patch["value"])
        else:
            node[last] = patch["value"]
    return out


def with_profile(doc: dict[str, Any], name: str) -> dict[str, Any]:
    """skaffold.yaml as skaffold sees it with one profile active."""
    (profile,) = [p for p in doc["profiles"] if p["name"] == name]
    return apply_patches(doc, profile["patches"])


def skaffold_artifacts(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """image -> build artifact, over the default build and every profile's."""
    artifacts = {a["image"]: a for a in doc["build"]["artifacts"]}
    for profile in doc.get("profiles", []):
        for artifact in with_profile(doc, profile["name"])["build"]["artifacts"]:
            assert artifacts.setdefault(artifact["image"], artifact) == artifact, artifact["image"]
    return artifacts
