"""Alerts, runbooks and the dashboard shipped in the chart."""

from __future__ import annotations

import json
import re
from typing import Any

import chartcheck
import yaml
from charthelpers import find, one, render, scenario_values

RUNBOOKS = chartcheck.REPO / "docs" / "runbooks.md"
ALERT_FILES = sorted((chartcheck.CHART / "files" / "alerts").glob("*.yaml"))
DASHBOARDS = sorted((chartcheck.CHART / "files" / "dashboards").glob("*.json"))

# The metrics the services export (the observability contract) and what the alerts may use besides.
CAI_METRICS = {
    "cai_http_requests_total",
    "cai_http_request_duration_seconds",
    "cai_sse_streams_in_flight",
    "cai_time_to_first_token_seconds",
    "cai_runs_in_flight",
    "cai_run_duration_seconds",
    "cai_queue_lag",
    "cai_queue_wait_seconds",
    "cai_run_reclaims_total",
    "cai_run_retries_total",
    "cai_tokens_total",
    "cai_tool_calls_total",
    "cai_retrieval_duration_seconds",
    "cai_inter_token_seconds",
    "cai_sse_stream_resumes_total",
    "cai_sse_stream_disconnects_total",
}
OTHER_METRICS = {"kube_deployment_status_replicas_available"}


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for line in markdown.splitlines():
        if m := re.match(r"^#{1,6}\s+(.*)$", line):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            out.add(slug)
    return out


def _rules() -> list[dict[str, Any]]:
    rules = []
    for path in ALERT_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            rules += group["rules"]
    return rules


def _metric_names(expr: str) -> set[str]:
    names = set(re.findall(r"\b(cai_[a-z0-9_]+|kube_[a-z0-9_]+)\b", expr))
    return {re.sub(r"_(bucket|count|sum)$", "", n) if n not in CAI_METRICS else n for n in names}


def test_starting_alerts_cover_the_sre_questions() -> None:
    names = {r["alert"] for r in _rules()}
    assert {
        "CaiHighTimeToFirstToken",
        "CaiHighErrorRatio",
        "CaiQueueBackingUp",
        "CaiRunReclaimStorm",
        "CaiNoReadyOrchestrators",
    } <= names


def test_every_alert_has_a_runbook_whose_anchor_exists() -> None:
    anchors = _anchors(RUNBOOKS.read_text())
    for rule in _rules():
        url = rule["annotations"]["runbook_url"]
        path, _, anchor = url.partition("#")
        assert path == "docs/runbooks.md", rule["alert"]
        assert anchor in anchors, f"{rule['alert']}: no section #{anchor} in docs/runbooks.md"
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_anchor_check_can_fail() -> None:
    assert "caihightimetofirsttoken" in _anchors("## CaiHighTimeToFirstToken\n")
    assert "caihightimetofirsttoken" not in _anchors("CaiHighTimeToFirstToken\n")


def test_alerts_and_dashboard_query_only_known_metrics() -> None:
    for rule in _rules():
        assert _metric_names(rule["expr"]) <= CAI_METRICS | OTHER_METRICS, rule["alert"]
        assert _metric_names(rule["expr"]) & CAI_METRICS or "kube_" in rule["expr"]
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
        assert exprs, path.name
        for expr in exprs:
            assert _metric_names(expr) <= CAI_METRICS, expr
        used = set().union(*(_metric_names(e) for e in exprs))
        assert used == CAI_METRICS, f"dashboard misses {CAI_METRICS - used}"


def test_prometheus_rule_ships_every_alert_with_absolute_runbook_urls() -> None:
    objs = render(scenario_values("everything-internal"))
    rule = one(objs, "PrometheusRule", "cai")
    rendered = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert [r["alert"] for r in rendered] == [r["alert"] for r in _rules()]
    for r in rendered:
        assert r["annotations"]["runbook_url"].startswith(
            "https://github.com/example/cai/blob/main/docs/runbooks.md#"
        )
    # Prometheus templates in annotations are passed through, not evaluated by Helm.
    assert any("{{ $labels.namespace }}" in r["annotations"]["description"] for r in rendered)


def test_monitoring_objects_only_when_asked(default_objs: list) -> None:
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert not find(default_objs, kind)
    assert not find(default_objs, "ConfigMap", "cai-dashboards")


def test_service_monitors_scrape_each_service(production_objs: list) -> None:
    monitors = {m["metadata"]["name"]: m for m in find(production_objs, "ServiceMonitor")}
    assert set(monitors) == {"cai-gateway", "cai-orchestrator", "cai-retriever"}
    ports = {"cai-gateway": "metrics", "cai-orchestrator": "metrics", "cai-retriever": "metrics"}
    services = {s["metadata"]["name"]: s for s in find(production_objs, "Service")}
    for name, monitor in monitors.items():
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["port"] == ports[name] and endpoint["path"] == "/metrics"
        selected = [
            s
            for s in services.values()
            if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
        ]
        assert selected and all(
            any(p["name"] == endpoint["port"] for p in s["spec"]["ports"]) for s in selected
        )


def test_dashboards_configmap_is_labelled_for_grafana(production_objs: list) -> None:
    cm = one(production_objs, "ConfigMap", "cai-dashboards")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"]["grafana_folder"] == "Cai"
    assert set(cm["data"]) == {p.name for p in DASHBOARDS}
    for path in DASHBOARDS:
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())
