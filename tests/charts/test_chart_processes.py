"""Processes per pod (GATEWAY_WORKERS, ORCHESTRATOR_PROCESSES) follow the pod's CPU."""

from __future__ import annotations

from typing import Any

import pytest
from charthelpers import env_of, one, render, scenario_values

VARIABLES = {"gateway": "GATEWAY_WORKERS", "orchestrator": "ORCHESTRATOR_PROCESSES"}
FIELDS = {"gateway": "workers", "orchestrator": "processes"}


def count(objs: list[dict[str, Any]], component: str) -> str:
    deployment = one(objs, "Deployment", f"cai-{component}")
    return str(
        env_of(deployment["spec"]["template"]["spec"]["containers"][0])[VARIABLES[component]]
    )


@pytest.mark.parametrize("component", VARIABLES)
@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "1"),  # the defaults: a CPU request under one core, no limit
        ({"resources": {"requests": {"cpu": "250m"}, "limits": {"cpu": "2"}}}, "2"),
        ({"resources": {"requests": {"cpu": "1"}, "limits": {"cpu": "2500m"}}}, "3"),
        ({"resources": {"requests": {"cpu": 3}}}, "3"),  # no limit: the request
        ({"resources": {"requests": {"cpu": "1.5"}}}, "2"),
        ({"resources": {"requests": {"memory": "1Gi"}}}, "1"),  # no CPU at all
        ({"resources": {"limits": {"cpu": "4"}}, "@count": 2}, "2"),  # set: the value wins
    ],
)
def test_the_count_is_the_value_or_the_cpu_limit_or_request_rounded_up(
    component: str, settings: dict[str, Any], expected: str
) -> None:
    values = {k: v for k, v in settings.items() if k != "@count"}
    if "@count" in settings:
        values[FIELDS[component]] = settings["@count"]
    assert count(render({component: values}), component) == expected


def test_production_example_runs_one_process_per_requested_core() -> None:
    objs = render(scenario_values("production"))
    production = scenario_values("production")
    for component in VARIABLES:
        cpu = str(production[component]["resources"]["requests"]["cpu"])
        cores = -(-int(cpu.removesuffix("m")) // 1000) if cpu.endswith("m") else int(cpu)
        assert count(objs, component) == str(max(1, cores))


def test_a_negative_count_is_refused() -> None:
    import chartcheck

    for component, field in FIELDS.items():
        problems = chartcheck.lint({component: {field: -1}})
        assert any(field in p for p in problems), problems
