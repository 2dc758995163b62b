"""Fixtures for the chart tests (helpers live in charthelpers.py, imported by name)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import chartcheck  # noqa: E402
from charthelpers import render, scenario_values  # noqa: E402


@pytest.fixture(params=list(chartcheck.SCENARIOS), ids=list(chartcheck.SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], list[dict[str, Any]]]:
    """(name, values, rendered objects) for every scenario."""
    values = scenario_values(request.param)
    return request.param, values, render(values)


@pytest.fixture
def default_objs() -> list[dict[str, Any]]:
    return render({})


@pytest.fixture
def production_objs() -> list[dict[str, Any]]:
    return render(scenario_values("production"))
