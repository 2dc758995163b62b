"""charts/cai renders, lints and validates offline, and the objects have the properties a platform
team expects: probes, hardening, headless gRPC, HPA xor KEDA, PDBs, grace periods, policies."""

from __future__ import annotations

import copy
from typing import Any

import chartcheck
import pytest
from charthelpers import env_of, find, one, render, render_text, scenario_values

SERVICES = ("gateway", "orchestrator", "retriever")
WORKLOADS = ("Deployment", "StatefulSet")


def workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in WORKLOADS]


def all_pods(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in (*WORKLOADS, "Pod")]


# --- lint, render, validate -------------------------------------------------------------------


def test_helm_lint_strict_is_clean(scenario: tuple[str, dict, list]) -> None:
    name, values, _ = scenario
    assert chartcheck.lint(values) == [], name


def test_every_object_validates(scenario: tuple[str, dict, list]) -> None:
    name, _, objs = scenario
    assert len(objs) > 20
    assert chartcheck.validate_all(objs) == [], name


def test_custom_resources_are_rendered_and_checked_against_their_crds() -> None:
    objs = render(scenario_values("everything-internal"))
    kinds = {o["kind"] for o in objs}
    assert {"ScaledObject", "TriggerAuthentication", "ServiceMonitor", "PrometheusRule"} <= kinds
    assert "HTTPRoute" in kinds
    validators = chartcheck.custom_validators()
    for obj in objs:
        if "." in obj["apiVersion"].split("/")[0] and not obj["apiVersion"].startswith(
            ("networking.k8s.io", "policy", "autoscaling", "apps")
        ):
            assert (obj["apiVersion"], obj["kind"]) in validators


def test_validators_reject_bad_objects() -> None:
    """The checks can fail: unknown fields, wrong types and the ScaledObject CEL rule."""
    objs = render(scenario_values("everything-internal"))
    scaled = copy.deepcopy(one(objs, "ScaledObject", "cai-orchestrator"))
    scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"] = 5, 2
    assert any("maxReplicaCount" in p for p in chartcheck.validate_object(scaled))
    scaled = copy.deepcopy(one(objs, "ScaledObject", "cai-orchestrator"))
    scaled["spec"]["minReplicaCount"] = 101  # maxReplicaCount defaults to 100 in the CEL rule
    del scaled["spec"]["maxReplicaCount"]
    assert chartcheck.validate_object(scaled)
    scaled = copy.deepcopy(one(objs, "ScaledObject", "cai-orchestrator"))
    scaled["spec"]["triggers"][0]["metdata"] = {}
    assert chartcheck.validate_object(scaled)
    monitor = copy.deepcopy(find(objs, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["interval"] = "thirty seconds"
    assert chartcheck.validate_object(monitor)
    deployment = copy.deepcopy(one(objs, "Deployment", "cai-gateway"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["grpc"] = {
        "port": "grpc"
    }
    assert chartcheck.validate_object(deployment)
    deployment = copy.deepcopy(one(objs, "Deployment", "cai-gateway"))
    deployment["spec"]["replica"] = 2
    assert chartcheck.validate_object(deployment)
    route = copy.deepcopy(one(objs, "HTTPRoute", "cai-gateway"))
    route["spec"]["rules"][0]["timeouts"]["request"] = "forever"
    assert chartcheck.validate_object(route)
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert chartcheck.validate_object(unknown) == [
        "no schema for custom resource example.com/v1 Widget"
    ]


# --- probes, hardening, resources -------------------------------------------------------------


def test_every_long_running_container_has_three_probes(scenario: tuple[str, dict, list]) -> None:
    _, _, objs = scenario
    for obj in workloads(objs):
        for c in chartcheck.containers(obj):
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert probe in c, f"{obj['metadata']['name']}/{c['name']} lacks {probe}"


def test_gateway_probes_http_and_grpc_services_probe_natively(default_objs: list) -> None:
    gw = chartcheck.containers(one(default_objs, "Deployment", "cai-gateway")).__next__()
    assert gw["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gw["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gw["startupProbe"]["httpGet"]["path"] == "/healthz"
    for name, port in (("orchestrator", 50051), ("retriever", 50052)):
        (c,) = chartcheck.containers(one(default_objs, "Deployment", f"cai-{name}"))
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["grpc"]["port"] == port
        # Loading torch and the model, or waiting for Redis, must not kill the pod.
        budget = c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"]
        assert budget >= 120


def _effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    sc = container.get("securityContext", {})
    return sc[key] if key in sc else pod.get("securityContext", {}).get(key)


def test_every_container_is_hardened(scenario: tuple[str, dict, list]) -> None:
    _, _, objs = scenario
    for obj in all_pods(objs):
        pod = chartcheck.pod_spec(obj)
        for c in chartcheck.containers(obj):
            where = f"{obj['kind']}/{obj['metadata']['name']}/{c['name']}"
            sc = c.get("securityContext", {})
            assert _effective(pod, c, "runAsNonRoot") is True, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged") in (None, False), where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert _effective(pod, c, "seccompProfile") == {"type": "RuntimeDefault"}, where
            assert (_effective(pod, c, "runAsUser") or 0) > 0, where
            mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
            assert "/tmp" in mounts, f"{where}: no writable /tmp"
            assert c["resources"]["requests"].keys() >= {"cpu", "memory"}, where
            assert "memory" in c["resources"]["limits"], where
        if obj["kind"] != "StatefulSet":
            assert pod.get("automountServiceAccountToken") is False, obj["metadata"]["name"]


def test_cai_images_run_as_uid_10001(default_objs: list) -> None:
    for name in SERVICES:
        pod = chartcheck.pod_spec(one(default_objs, "Deployment", f"cai-{name}"))
        assert pod["securityContext"]["runAsUser"] == 10001


# --- gRPC: headless services and dns:/// clients ----------------------------------------------


def test_grpc_services_are_headless_and_clients_dial_them(default_objs: list) -> None:
    for name, port in (("orchestrator", 50051), ("retriever", 50052)):
        svc = one(default_objs, "Service", f"cai-{name}-headless")
        assert svc["spec"]["clusterIP"] == "None"
        assert {"name": "grpc", "port": port} in [
            {"name": p["name"], "port": p["port"]} for p in svc["spec"]["ports"]
        ]
        (c,) = chartcheck.containers(one(default_objs, "Deployment", f"cai-{name}"))
        assert env_of(c)["GRPC_MAX_CONNECTION_AGE_SECONDS"] == "300"
    (gw,) = chartcheck.containers(one(default_objs, "Deployment", "cai-gateway"))
    assert env_of(gw)["ORCHESTRATOR_ADDR"] == "dns:///cai-orchestrator-headless:50051"
    (orch,) = chartcheck.containers(one(default_objs, "Deployment", "cai-orchestrator"))
    assert env_of(orch)["RETRIEVER_ADDR"] == "dns:///cai-retriever-headless:50052"
    assert not [
        s
        for s in find(default_objs, "Service")
        if any(p["name"] == "grpc" for p in s["spec"]["ports"])
        and s["metadata"]["name"].startswith(("cai-orchestrator", "cai-retriever"))
        and s["spec"].get("clusterIP") != "None"
    ]


# --- autoscaling: HPA xor ScaledObject --------------------------------------------------------


def _scaled(objs: list, name: str) -> tuple[bool, bool]:
    return bool(find(objs, "HorizontalPodAutoscaler", name)), bool(find(objs, "ScaledObject", name))


def test_orchestrator_has_an_hpa_or_a_scaledobject_never_both(scenario: tuple) -> None:
    name, values, objs = scenario
    hpa, keda = _scaled(objs, "cai-orchestrator")
    assert hpa != keda, name
    assert keda == bool(values.get("orchestrator", {}).get("keda", {}).get("enabled"))
    deploy = one(objs, "Deployment", "cai-orchestrator")
    assert "replicas" not in deploy["spec"], "a managed Deployment must not pin replicas"


def _keda(values: dict[str, Any]) -> dict[str, Any]:
    """The orchestrator's ScaledObject, schema-validated, for `values` on top of KEDA on."""
    base = {"orchestrator": {"autoscaling": {"enabled": False}, "keda": {"enabled": True}}}
    objs = render(_merge(base, values))
    scaled = one(objs, "ScaledObject", "cai-orchestrator")
    assert chartcheck.validate_object(scaled) == []
    return scaled


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _triggers(scaled: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in scaled["spec"]["triggers"]}


def test_keda_scales_on_queued_plus_executing_runs_per_pod(production_objs: list) -> None:
    """Lag alone is 0 while every pod is busy: the load is lag + pending (runs in flight)."""
    scaled = one(production_objs, "ScaledObject", "cai-orchestrator")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "cai-orchestrator"
    triggers = _triggers(scaled)
    assert set(triggers) == {"queued", "inflight"}
    assert {t["type"] for t in triggers.values()} == {"redis-streams"}
    assert {t["metricType"] for t in triggers.values()} == {"AverageValue"}  # for the fallback
    assert "lagCount" in triggers["queued"]["metadata"]
    assert "pendingEntriesCount" in triggers["inflight"]["metadata"]
    modifiers = scaled["spec"]["advanced"]["scalingModifiers"]
    assert modifiers["formula"] == "queued + inflight"
    assert modifiers["metricType"] == "AverageValue"
    # 0.7 x maxConcurrentRuns (per pod, whatever its processes): production runs 100 per pod.
    assert modifiers["target"] == "70"
    for trigger in triggers.values():
        meta = trigger["metadata"]
        assert meta["stream"] == "cai:runs:queue"
        assert meta["consumerGroup"] == "cai-orchestrators"
        assert meta["address"] == "redis.example.internal:6380"
        assert meta["databaseIndex"] == "0"
        assert meta["enableTLS"] == "true"
        assert "username" not in meta  # from the Secret, through the TriggerAuthentication
        auth = one(production_objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
        assert auth["spec"]["secretTargetRef"] == [
            {"parameter": "password", "name": "cai-redis", "key": "redis-password"},
            {"parameter": "username", "name": "cai-redis", "key": "redis-username"},
        ]


def test_keda_target_follows_max_concurrent_runs_and_target_load() -> None:
    scaled = _keda({"orchestrator": {"maxConcurrentRuns": 40, "processes": 4}})
    assert scaled["spec"]["advanced"]["scalingModifiers"]["target"] == "28"
    scaled = _keda({"orchestrator": {"maxConcurrentRuns": 40, "keda": {"targetLoad": 0.5}}})
    assert scaled["spec"]["advanced"]["scalingModifiers"]["target"] == "20"
    scaled = _keda({"orchestrator": {"maxConcurrentRuns": 1}})
    assert scaled["spec"]["advanced"]["scalingModifiers"]["target"] == "1"


def test_keda_has_a_fallback_and_slow_scale_down(production_objs: list) -> None:
    spec = one(production_objs, "ScaledObject", "cai-orchestrator")["spec"]
    assert spec["fallback"]["replicas"] >= 1
    assert spec["fallback"]["failureThreshold"] >= 1
    assert spec["fallback"]["behavior"] == "currentReplicasIfHigher"
    down = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert down["stabilizationWindowSeconds"] >= 300
    assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 120}]
    assert spec["minReplicaCount"] >= 1


def test_keda_reads_database_and_username_from_the_redis_url() -> None:
    redis = {
        "mode": "external",
        "external": {"url": "redis://cai-runs@redis.example.internal/3", "existingSecret": "s"},
    }
    scaled = _keda({"redis": redis})
    for trigger in scaled["spec"]["triggers"]:
        meta = trigger["metadata"]
        assert meta["databaseIndex"] == "3"
        assert meta["username"] == "cai-runs"
        assert meta["address"] == "redis.example.internal:6379"
        assert meta["enableTLS"] == "false"
        assert trigger["authenticationRef"]["name"] == "cai-redis-auth"


def test_keda_min_replicas_zero_is_refused() -> None:
    """Runs are enqueued through a running orchestrator: at zero nothing would wake it up."""
    with pytest.raises(Exception, match="minReplicaCount"):
        _keda({"orchestrator": {"keda": {"minReplicaCount": 0}}})


def test_keda_reaches_the_in_chart_redis_by_its_full_name() -> None:
    objs = render(scenario_values("everything-internal"))
    for trigger in one(objs, "ScaledObject", "cai-orchestrator")["spec"]["triggers"]:
        assert trigger["metadata"]["address"] == "cai-redis.cai.svc:6379"
        assert trigger["metadata"]["databaseIndex"] == "0"


def test_keda_with_the_hpa_is_refused() -> None:
    with pytest.raises(Exception, match="mutually exclusive"):
        chartcheck.render({"orchestrator": {"keda": {"enabled": True}}})


def test_gateway_and_retriever_have_hpas(default_objs: list) -> None:
    for name in ("gateway", "retriever"):
        hpa = one(default_objs, "HorizontalPodAutoscaler", f"cai-{name}")
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": f"cai-{name}",
        }
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_gateway_scales_on_open_streams_per_pod(default_objs: list) -> None:
    """SSE connections cost little CPU: the gateway's HPA counts open streams per pod."""
    metrics = one(default_objs, "HorizontalPodAutoscaler", "cai-gateway")["spec"]["metrics"]
    assert metrics == [
        {
            "type": "Pods",
            "pods": {
                "metric": {"name": "cai_sse_streams_in_flight"},
                "target": {"type": "AverageValue", "averageValue": "200"},
            },
        }
    ]


def test_gateway_cpu_fallback_without_a_custom_metrics_api() -> None:
    objs = render(
        {
            "gateway": {
                "autoscaling": {"targetStreamsPerPod": 0, "targetCPUUtilizationPercentage": 70}
            }
        }
    )
    (metric,) = one(objs, "HorizontalPodAutoscaler", "cai-gateway")["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    with pytest.raises(Exception, match="targetStreamsPerPod"):
        render({"gateway": {"autoscaling": {"targetStreamsPerPod": 0}}})


# --- availability: PDBs, spread, grace --------------------------------------------------------


def test_every_service_has_a_pdb_that_selects_its_pods(scenario: tuple) -> None:
    _, _, objs = scenario
    for name in SERVICES:
        pdb = one(objs, "PodDisruptionBudget", f"cai-{name}")
        labels = one(objs, "Deployment", f"cai-{name}")["spec"]["template"]["metadata"]["labels"]
        assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["spec"].get("maxUnavailable") or pdb["spec"].get("minAvailable")


def test_topology_spread_selects_the_component_pods(default_objs: list) -> None:
    for name in SERVICES:
        deploy = one(default_objs, "Deployment", f"cai-{name}")
        labels = deploy["spec"]["template"]["metadata"]["labels"]
        constraints = deploy["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert {c["topologyKey"] for c in constraints} == {
            "topology.kubernetes.io/zone",
            "kubernetes.io/hostname",
        }
        for c in constraints:
            assert c["labelSelector"]["matchLabels"].items() <= labels.items()


# Seconds a process may take to exit after its drain's deadline (cai.shutdownMarginSeconds).
EXIT_MARGIN = 5


def test_grace_period_outlasts_prestop_drain_and_exit(scenario: tuple) -> None:
    """SHUTDOWN_GRACE_SECONDS is the whole drain (one deadline), so this sum bounds the stop."""
    _, _, objs = scenario
    for name in SERVICES:
        pod = chartcheck.pod_spec(one(objs, "Deployment", f"cai-{name}"))
        (c,) = pod["containers"]
        drain = float(env_of(c)["SHUTDOWN_GRACE_SECONDS"])
        pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + EXIT_MARGIN, name


@pytest.mark.parametrize("grace", [30, 35, 39])
def test_a_grace_period_without_room_for_the_drain_is_refused(grace: int) -> None:
    """preStop 5 + drain 30 + margin 5 = 40: anything shorter is refused, 40 is accepted."""
    with pytest.raises(Exception, match="terminationGracePeriodSeconds"):
        chartcheck.render({"orchestrator": {"terminationGracePeriodSeconds": grace}})


def test_a_grace_period_with_room_for_the_drain_is_accepted() -> None:
    objs = render({"orchestrator": {"terminationGracePeriodSeconds": 40}})
    pod = chartcheck.pod_spec(one(objs, "Deployment", "cai-orchestrator"))
    assert pod["terminationGracePeriodSeconds"] == 40


# --- network policy ---------------------------------------------------------------------------


def test_network_policies_are_on_by_default_and_only_when_asked_off(default_objs: list) -> None:
    assert one(default_objs, "NetworkPolicy", "cai-deny-all")
    assert not find(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy")


def test_network_policies_deny_all_then_allow(production_objs: list) -> None:
    policies = {p["metadata"]["name"]: p for p in find(production_objs, "NetworkPolicy")}
    deny = policies["cai-deny-all"]["spec"]
    assert deny["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny and "egress" not in deny
    assert deny["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "cai",
        "app.kubernetes.io/instance": "cai",
    }
    assert {"cai-gateway", "cai-orchestrator", "cai-retriever"} <= policies.keys()
    gateway_from = policies["cai-gateway"]["spec"]["ingress"][0]["from"]
    assert {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}
    } in gateway_from
    orch_in = policies["cai-orchestrator"]["spec"]["ingress"][0]["from"]
    assert orch_in == [
        {
            "podSelector": {
                "matchLabels": {
                    "app.kubernetes.io/component": "gateway",
                    "app.kubernetes.io/instance": "cai",
                    "app.kubernetes.io/name": "cai",
                }
            }
        }
    ]
    # External Redis/Qdrant/LLM: the operator's egress rules reach every Cai component.
    for name in SERVICES:
        egress = policies[f"cai-{name}"]["spec"]["egress"]
        assert any(
            rule.get("to", [{}])[0].get("ipBlock", {}).get("cidr") == "10.20.0.0/16"
            for rule in egress
        )


def test_network_policies_open_the_in_chart_stores_only_to_their_clients() -> None:
    objs = render(scenario_values("everything-internal"))
    redis = one(objs, "NetworkPolicy", "cai-redis")["spec"]["ingress"][0]["from"]
    components = {
        p.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/component")
        for p in redis
    }
    assert components == {"gateway", "orchestrator", None}  # None: KEDA's namespace
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}} in redis
    qdrant = one(objs, "NetworkPolicy", "cai-qdrant")["spec"]["ingress"][0]["from"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in qdrant] == [
        "retriever"
    ]
    test_egress = one(objs, "NetworkPolicy", "cai-test")["spec"]["egress"]
    assert any(r.get("ports") == [{"port": 8080, "protocol": "TCP"}] for r in test_egress)


# --- ingress and routes -----------------------------------------------------------------------


def test_ingress_is_sse_friendly_and_user_annotations_win(production_objs: list) -> None:
    ingress = one(production_objs, "Ingress", "cai-gateway")
    ann = ingress["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(ann["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    assert int(ann["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 600
    assert ann["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["tls"][0]["secretName"] == "cai-tls"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "cai-gateway", "port": {"name": "http"}}
    overridden = render(
        {
            "gateway": {
                "ingress": {
                    "enabled": True,
                    "annotations": {"nginx.ingress.kubernetes.io/proxy-read-timeout": "60"},
                }
            }
        }
    )
    ann = one(overridden, "Ingress", "cai-gateway")["metadata"]["annotations"]
    assert ann["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "60"


def test_httproute_does_not_cut_streams() -> None:
    objs = render(scenario_values("everything-internal"))
    route = one(objs, "HTTPRoute", "cai-gateway")
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateway-system"}]
    (rule,) = route["spec"]["rules"]
    assert rule["timeouts"]["request"] == "0s"
    assert rule["backendRefs"] == [{"name": "cai-gateway", "port": 8080}]


# --- dependencies, secrets, config ------------------------------------------------------------


def test_default_release_generates_its_secrets_and_never_inlines_them(default_objs: list) -> None:
    secrets = {s["metadata"]["name"]: s for s in find(default_objs, "Secret")}
    assert set(secrets) == {"cai-auth", "cai-redis", "cai-qdrant"}
    password = secrets["cai-redis"]["stringData"]["redis-password"]
    assert len(password) == 32
    for obj in workloads(default_objs):
        for c in chartcheck.containers(obj):
            for value in env_of(c).values():
                assert password not in str(value)
    (gw,) = chartcheck.containers(one(default_objs, "Deployment", "cai-gateway"))
    assert env_of(gw)["REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@cai-redis.cai.svc:6379/0"
    keys_file = secrets["cai-auth"]["stringData"]["api-keys.yaml"]
    import hashlib

    import yaml

    key = secrets["cai-auth"]["stringData"]["test-api-key"]
    assert (
        yaml.safe_load(keys_file)["keys"][0]["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    )


def test_production_uses_existing_secrets_and_external_stores(production_objs: list) -> None:
    assert not find(production_objs, "Secret")
    assert not find(production_objs, "StatefulSet")
    (gw,) = chartcheck.containers(one(production_objs, "Deployment", "cai-gateway"))
    env = env_of(gw)
    assert env["REDIS_URL"] == "rediss://cai:$(REDIS_PASSWORD)@redis.example.internal:6380/0"
    assert env["REDIS_PASSWORD"] == {"secretKeyRef": {"name": "cai-redis", "key": "redis-password"}}
    (retriever,) = chartcheck.containers(one(production_objs, "Deployment", "cai-retriever"))
    env = env_of(retriever)
    assert env["QDRANT_URL"] == "https://qdrant.example.internal:6333"
    assert env["QDRANT_API_KEY"] == {
        "secretKeyRef": {"name": "cai-qdrant", "key": "qdrant-api-key"}
    }
    (orch,) = chartcheck.containers(one(production_objs, "Deployment", "cai-orchestrator"))
    env = env_of(orch)
    assert env["OPENAI_BASE_URL"] == "https://api.openai.com/v1"
    assert env["OPENAI_API_KEY"] == {"secretKeyRef": {"name": "cai-llm", "key": "openai-api-key"}}
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4317"
    assert "deployment.environment=production" in env["OTEL_RESOURCE_ATTRIBUTES"]
    gw_pod = chartcheck.pod_spec(one(production_objs, "Deployment", "cai-gateway"))
    auth = next(v for v in gw_pod["volumes"] if v["name"] == "auth")
    assert auth["secret"]["secretName"] == "cai-api-keys"


def test_in_chart_stores_persist_by_default(default_objs: list) -> None:
    redis = one(default_objs, "StatefulSet", "cai-redis")
    assert (
        redis["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        == "8Gi"
    )
    (c,) = chartcheck.containers(redis)
    assert c["image"] == "docker.io/library/redis:8.2"
    assert c["args"][:2] == [
        "redis-server",
        "/etc/redis/redis.conf",
    ]  # entrypoint loads the modules
    conf = one(default_objs, "ConfigMap", "cai-redis")["data"]["redis.conf"]
    assert "appendonly yes" in conf
    qdrant = one(default_objs, "StatefulSet", "cai-qdrant")
    assert qdrant["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "storage"


def test_embedded_qdrant_pins_the_retriever_to_one_replica() -> None:
    objs = render(scenario_values("embedded-qdrant"))
    deploy = one(objs, "Deployment", "cai-retriever")
    assert deploy["spec"]["replicas"] == 1
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}
    assert not find(objs, "HorizontalPodAutoscaler", "cai-retriever")
    assert not find(objs, "StatefulSet", "cai-qdrant")
    (c,) = chartcheck.containers(deploy)
    assert env_of(c)["QDRANT_PATH"] == "/data/qdrant"
    assert "QDRANT_URL" not in env_of(c)
    pod = chartcheck.pod_spec(deploy)
    claim = next(v for v in pod["volumes"] if v["name"] == "qdrant-data")["persistentVolumeClaim"]
    pvc = one(objs, "PersistentVolumeClaim", claim["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    redis = one(objs, "StatefulSet", "cai-redis")
    assert "volumeClaimTemplates" not in redis["spec"]


def test_assistants_configmap_is_mounted_at_assistants_file(default_objs: list) -> None:
    import yaml

    cm = one(default_objs, "ConfigMap", "cai-assistants")
    assistants = yaml.safe_load(cm["data"]["assistants.yaml"])["assistants"]
    assert [a["id"] for a in assistants] == ["chat"]
    assert assistants[0]["retrieval"]["enabled"] is True
    deploy = one(default_objs, "Deployment", "cai-orchestrator")
    (c,) = chartcheck.containers(deploy)
    path = env_of(c)["ASSISTANTS_FILE"]
    mount = next(m for m in c["volumeMounts"] if m["name"] == "assistants")
    assert path == f"{mount['mountPath']}/assistants.yaml"


def test_llm_sim_is_optional_and_becomes_the_default_llm() -> None:
    assert not find(render({}), "Deployment", "cai-llm-sim")
    objs = render({"llmSim": {"enabled": True}})
    sim = one(objs, "Deployment", "cai-llm-sim")
    (c,) = chartcheck.containers(sim)
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert env_of(c)["LLM_SIM_HOST"] == "0.0.0.0"
    (orch,) = chartcheck.containers(one(objs, "Deployment", "cai-orchestrator"))
    assert env_of(orch)["OPENAI_BASE_URL"] == "http://cai-llm-sim:8090/v1"


def test_notes_tell_how_to_reach_and_test_the_release() -> None:
    notes = render_text({})["cai/templates/NOTES.txt"]
    assert "port-forward svc/cai-gateway" in notes
    assert "get secret cai-auth" in notes
    assert "helm test cai" in notes
    assert "no LLM endpoint is configured" in notes
    notes = render_text(scenario_values("production"))["cai/templates/NOTES.txt"]
    assert "https://cai.example.com/" in notes and "no LLM endpoint" not in notes
