"""Render helpers for the chart tests: renders are cached per values set (each is a Helm call)."""

from __future__ import annotations

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
