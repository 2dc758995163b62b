"""Issue 14, findings 4 and 5 in the chart: NetworkPolicies on by default (and still letting Cai's
own traffic, DNS, the LLM and Prometheus through), gRPC reflection off, mutual TLS between the
services on request (cert-manager or existing Secrets), and the gateway's metrics off its public
port."""

from __future__ import annotations

from typing import Any

import chartcheck
import helm_python as helm
import pytest
from charthelpers import env_of, find, one, render, scenario_values

GRPC = ("orchestrator", "retriever")
SERVICES = ("gateway", *GRPC)
CERT_MANAGER = {"tls": {"enabled": True, "certManager": {"issuerRef": {"name": "cai-ca"}}}}
SECRETS = {"gateway": "gw-tls", "orchestrator": "orch-tls", "retriever": "ret-tls"}
EXISTING = {"tls": {"enabled": True, "source": "existingSecrets", "existingSecrets": SECRETS}}


def _container(objs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    (c,) = chartcheck.containers(one(objs, "Deployment", f"cai-{component}"))
    return c


def _pods(component: str) -> dict[str, dict[str, str]]:
    return {
        "podSelector": {
            "matchLabels": {
                "app.kubernetes.io/component": component,
                "app.kubernetes.io/instance": "cai",
                "app.kubernetes.io/name": "cai",
            }
        }
    }


def tcp(port: int | str) -> list[dict[str, Any]]:
    """The `ports` of a rule that opens one TCP port."""
    return [{"port": port, "protocol": "TCP"}]


def _policy(objs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(objs, "NetworkPolicy", f"cai-{component}")["spec"]
    return spec


def _egress_to(spec: dict[str, Any], peer: dict[str, Any]) -> list[Any]:
    """Ports of the egress rules that name `peer`."""
    return [r["ports"] for r in spec["egress"] if peer in r.get("to", [])]


def _ingress_ports_from(spec: dict[str, Any], peer: dict[str, Any]) -> list[Any]:
    return [r["ports"] for r in spec["ingress"] if peer in r.get("from", [])]


# -- network policies -------------------------------------------------------------------------


def test_default_policies_let_cai_talk_to_itself_and_nobody_else_in(default_objs: list) -> None:
    gateway, orch, retriever = (_policy(default_objs, c) for c in SERVICES)
    assert _egress_to(gateway, _pods("orchestrator")) == [tcp(50051)]
    assert _ingress_ports_from(orch, _pods("gateway")) == [tcp("grpc")]
    assert _egress_to(orch, _pods("retriever")) == [tcp(50052)]
    assert _ingress_ports_from(retriever, _pods("orchestrator")) == [tcp("grpc")]
    assert _egress_to(orch, _pods("redis")) == [tcp(6379)]
    assert _egress_to(gateway, _pods("redis")) == [tcp(6379)]
    assert _egress_to(retriever, _pods("qdrant")) == [[*tcp(6333), *tcp(6334)]]
    # Only the gateway and Prometheus reach the orchestrator; only the orchestrator and Prometheus
    # the retriever: no other pod in the cluster can send them a tenant's principal.
    assert len(orch["ingress"]) == 2 and len(retriever["ingress"]) == 2
    for spec in (gateway, orch, retriever):
        dns = [r for r in spec["egress"] if {"port": 53, "protocol": "UDP"} in r.get("ports", [])]
        assert dns and dns[0]["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}


def test_default_policies_let_prometheus_scrape_the_metrics_ports_only(default_objs: list) -> None:
    prometheus = {
        "namespaceSelector": {},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    for component in SERVICES:
        ports = _ingress_ports_from(_policy(default_objs, component), prometheus)
        assert ports == [[{"port": "metrics", "protocol": "TCP"}]], component
    # The gateway's `metrics` port is its metrics port, not the public one.
    gateway_ports = {p["name"]: p for p in _container(default_objs, "gateway")["ports"]}
    assert gateway_ports["metrics"]["containerPort"] == 9466
    assert gateway_ports["http"]["containerPort"] == 8080


def test_the_orchestrator_may_reach_a_public_llm_and_the_retriever_only_its_stores(
    default_objs: list,
) -> None:
    https_out = [
        r
        for r in _policy(default_objs, "orchestrator")["egress"]
        if r.get("ports") == [{"port": 443, "protocol": "TCP"}]
    ]
    (rule,) = https_out
    block = rule["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0" and "10.0.0.0/8" in block["except"]
    assert not any(
        r.get("ports") == [{"port": 443, "protocol": "TCP"}]
        for r in _policy(default_objs, "retriever")["egress"]
    )
    # With an embeddings endpoint the retriever gets the same egress; with llm-sim as the LLM the
    # orchestrator needs none.
    objs = render({"retriever": {"embeddings": {"baseUrl": "https://api.openai.com/v1"}}})
    assert rule in _policy(objs, "retriever")["egress"]
    objs = render({"llmSim": {"enabled": True}})
    assert rule not in _policy(objs, "orchestrator")["egress"]


# -- reflection and plaintext defaults --------------------------------------------------------


def test_reflection_is_off_and_links_are_plaintext_by_default(default_objs: list) -> None:
    for component in GRPC:
        env = env_of(_container(default_objs, component))
        assert env["GRPC_REFLECTION"] == "false"
        assert not {"GRPC_TLS_CERT_FILE", "GRPC_TRUSTED_CLIENTS", "GRPC_HEALTH_PORT"} & set(env)
    assert "GRPC_TLS_CERT_FILE" not in env_of(_container(default_objs, "gateway"))
    assert not find(default_objs, "Certificate")
    on = render({"orchestrator": {"grpcReflection": True}})
    assert env_of(_container(on, "orchestrator"))["GRPC_REFLECTION"] == "true"


# -- mutual TLS -------------------------------------------------------------------------------


def test_tls_from_cert_manager_renders_certificates_and_mounts_them() -> None:
    objs = render(CERT_MANAGER)
    assert chartcheck.validate_all(objs) == []  # against the Certificate schema too
    certs = {c["spec"]["commonName"]: c["spec"] for c in find(objs, "Certificate")}
    assert set(certs) == {"cai-gateway", "cai-orchestrator", "cai-retriever"}
    for spec in certs.values():
        assert spec["issuerRef"] == {"name": "cai-ca", "kind": "Issuer", "group": "cert-manager.io"}
        assert "client auth" in spec["usages"] and spec["commonName"] in spec["dnsNames"]
    assert "server auth" not in certs["cai-gateway"]["usages"]
    # Servers' certificates name what clients dial: dns:///<headless>:<port>.
    orch_addr = env_of(_container(objs, "gateway"))["ORCHESTRATOR_ADDR"]
    retriever_addr = env_of(_container(objs, "orchestrator"))["RETRIEVER_ADDR"]
    assert orch_addr.split("///")[1].split(":")[0] in certs["cai-orchestrator"]["dnsNames"]
    assert retriever_addr.split("///")[1].split(":")[0] in certs["cai-retriever"]["dnsNames"]
    for component in SERVICES:
        c = _container(objs, component)
        env = env_of(c)
        assert env["GRPC_TLS_CERT_FILE"] == "/etc/cai/grpc-tls/tls.crt"
        assert env["GRPC_TLS_KEY_FILE"] == "/etc/cai/grpc-tls/tls.key"
        assert env["GRPC_TLS_CA_FILE"] == "/etc/cai/grpc-tls/ca.crt"
        mount = {"name": "grpc-tls", "mountPath": "/etc/cai/grpc-tls", "readOnly": True}
        assert mount in c["volumeMounts"]
        pod = chartcheck.pod_spec(one(objs, "Deployment", f"cai-{component}"))
        (volume,) = [v for v in pod["volumes"] if v["name"] == "grpc-tls"]
        assert volume["secret"]["secretName"] == f"cai-{component}-grpc-tls"
        (cert,) = [
            c
            for c in find(objs, "Certificate")
            if c["metadata"]["name"].startswith(f"cai-{component}-")
        ]
        assert cert["spec"]["secretName"] == volume["secret"]["secretName"]


def test_with_tls_each_server_trusts_only_its_callers_and_probes_a_plaintext_health_port() -> None:
    objs = render(CERT_MANAGER)
    orch, retriever = (env_of(_container(objs, c)) for c in GRPC)
    assert orch["GRPC_TRUSTED_CLIENTS"] == "cai-gateway"
    assert retriever["GRPC_TRUSTED_CLIENTS"] == "cai-orchestrator,cai-retriever"
    for component, port in (("orchestrator", 50061), ("retriever", 50062)):
        c = _container(objs, component)
        assert env_of(c)["GRPC_HEALTH_PORT"] == str(port)
        assert {"name": "health", "containerPort": port, "protocol": "TCP"} in c["ports"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["grpc"]["port"] == port, (component, probe)
    extra = render(
        {"tls": {**CERT_MANAGER["tls"], "extraTrustedClients": {"retriever": ["cai-ingest"]}}}
    )
    trusted = env_of(_container(extra, "retriever"))["GRPC_TRUSTED_CLIENTS"]
    assert trusted == "cai-orchestrator,cai-retriever,cai-ingest"


def test_tls_from_existing_secrets_mounts_them_and_requests_nothing() -> None:
    objs = render(EXISTING)
    assert not find(objs, "Certificate")
    for component, secret in SECRETS.items():
        pod = chartcheck.pod_spec(one(objs, "Deployment", f"cai-{component}"))
        (volume,) = [v for v in pod["volumes"] if v["name"] == "grpc-tls"]
        assert volume["secret"]["secretName"] == secret


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"tls": {"enabled": True}}, "/tls/certManager/issuerRef/name"),
        (
            {"tls": {**EXISTING["tls"], "existingSecrets": {**SECRETS, "retriever": ""}}},
            "/tls/existingSecrets/retriever",
        ),
        ({"tls": {"source": "vault"}}, "/tls/source"),
        ({"tls": {"extraTrustedClients": {"retriever": ["a,b"]}}}, "/tls/extraTrustedClients"),
    ],
)
def test_incomplete_tls_values_are_refused(values: dict[str, Any], where: str) -> None:
    with helm.Chart.load(chartcheck.CHART) as chart:
        with pytest.raises(helm.HelmValuesError, match=where):
            chart.validate_schema(values)


def test_the_mtls_scenario_lints_and_validates() -> None:
    values = scenario_values("grpc-mtls")
    assert chartcheck.lint(values) == []
    objs = render(values)
    assert chartcheck.validate_all(objs) == []
    assert {c["spec"]["issuerRef"]["kind"] for c in find(objs, "Certificate")} == {"ClusterIssuer"}


# -- the gateway's public port ----------------------------------------------------------------


def test_gateway_metrics_and_docs_stay_off_the_public_port(default_objs: list) -> None:
    env = env_of(_container(default_objs, "gateway"))
    assert env["GATEWAY_METRICS_PORT"] == "9466" and env["PUBLIC_DOCS"] == "false"
    public = one(default_objs, "Service", "cai-gateway")
    assert [p["name"] for p in public["spec"]["ports"]] == ["http"]
    metrics = one(default_objs, "Service", "cai-gateway-metrics")
    assert metrics["spec"]["ports"] == [
        {"name": "metrics", "port": 9466, "targetPort": "metrics", "protocol": "TCP",
         "appProtocol": "http"}
    ]  # fmt: skip
    assert metrics["spec"]["selector"] == public["spec"]["selector"]
    assert (
        env_of(_container(render({"gateway": {"publicDocs": True}}), "gateway"))["PUBLIC_DOCS"]
        == "true"
    )


def test_gateway_service_monitor_scrapes_only_the_metrics_service() -> None:
    objs = render(scenario_values("everything-internal"))
    monitor = one(objs, "ServiceMonitor", "cai-gateway")
    selector = monitor["spec"]["selector"]["matchLabels"]
    selected = [
        s["metadata"]["name"]
        for s in find(objs, "Service")
        if selector.items() <= s["metadata"]["labels"].items()
    ]
    assert selected == ["cai-gateway-metrics"]
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # The Ingress sends the public to the public Service's http port only.
    ingress = one(objs, "Ingress", "cai-gateway")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "cai-gateway" and backend["port"] == {"name": "http"}
