"""The gateway's Kubernetes manifests: the network policy lets only the gateway reach the engines, and the
Deployment runs the config it mounts (offline: the manifest files and a kustomize render).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from servelab.gateway import GatewayConfig
from servelab.k8s import manifests
from servelab.paths import manifests_path

MANIFESTS = manifests_path()


def _docs(path: Path) -> list[dict[str, Any]]:
    return manifests.load_documents(path)


def _pod_labels(path: Path) -> dict[str, str]:
    deployment = next(d for d in _docs(path) if d["kind"] == "Deployment")
    return deployment["spec"]["template"]["metadata"]["labels"]


def test_network_policy_lets_only_the_gateway_reach_the_engines() -> None:
    engines = [
        _pod_labels(MANIFESTS / "vllm" / "base" / "deployment.yaml"),
        _pod_labels(MANIFESTS / "llamacpp" / "deployment.yaml"),
    ]
    gateway = _pod_labels(MANIFESTS / "gateway" / "deployment.yaml")
    policies = {d["metadata"]["name"]: d for d in _docs(MANIFESTS / "gateway" / "networkpolicy.yaml")}
    only = policies["engines-allow-only-gateway"]["spec"]
    assert all(manifests.selector_matches(only["podSelector"], labels) for labels in engines)
    assert not manifests.selector_matches(only["podSelector"], gateway)
    assert only["policyTypes"] == ["Ingress"]
    (rule,) = only["ingress"]
    (peer,) = rule["from"]
    assert set(peer) == {"podSelector"} and manifests.selector_matches(peer["podSelector"], gateway)
    assert not any(manifests.selector_matches(peer["podSelector"], labels) for labels in engines)
    assert rule["ports"] == [{"protocol": "TCP", "port": "http"}]
    for path in (MANIFESTS / "vllm" / "base" / "deployment.yaml", MANIFESTS / "llamacpp" / "deployment.yaml"):
        container = next(d for d in _docs(path) if d["kind"] == "Deployment")["spec"]["template"]["spec"]["containers"][
            0
        ]
        assert container["ports"][0]["name"] == "http"
    # The only other way in: Prometheus pods of the monitoring namespace, to scrape /metrics.
    scrape = policies["engines-allow-prometheus-scrape"]["spec"]
    (peer,) = scrape["ingress"][0]["from"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert peer["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}


def test_gateway_deployment_runs_the_config_it_mounts() -> None:
    deployment = next(d for d in _docs(MANIFESTS / "gateway" / "deployment.yaml") if d["kind"] == "Deployment")
    spec = deployment["spec"]
    container = spec["template"]["spec"]["containers"][0]
    assert spec["replicas"] >= 2 and spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config_path = container["args"][container["args"].index("--config") + 1]
    assert Path(config_path).parent == Path(mounts["config"])
    cluster = GatewayConfig.model_validate(
        yaml.safe_load((MANIFESTS / "gateway" / "gateway-config.source.yaml").read_text())
    )
    assert Path(cluster.keys_file).parent == Path(mounts["keys"])  # type: ignore[arg-type]
    assert cluster.audit_path == "-" and {r.name for r in cluster.replicas} == {"vllm", "llamacpp"}
    # The pod's grace period outlasts uvicorn's graceful shutdown plus the preStop sleep.
    from servelab.gateway.__main__ import GRACEFUL_SHUTDOWN_S

    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] > GRACEFUL_SHUTDOWN_S + 5
    built = manifests.kustomize_build(MANIFESTS / "gateway")
    assert {d["kind"] for d in built} >= {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"}
