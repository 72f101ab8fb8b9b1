"""The admin port: ``/ready`` and ``/metrics`` are served by the admin app only, never by the client app
(they need no API key and show every key's traffic), and the Kubernetes manifests probe, scrape and
expose the ports accordingly. Without servers: the apps are called in-process, their lifespan included.
The same through a real gateway process: tests/live/test_gateway.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from servelab.errors import ServelabError
from servelab.gateway import GatewayConfig, KeyConfig, ReplicaConfig
from servelab.gateway.app import create_apps
from servelab.gateway.server import serve
from servelab.k8s import manifests
from servelab.paths import manifests_path

GATEWAY = manifests_path("gateway")
KEY = "sk-unit-admin"


def _config(tmp_path: Path) -> GatewayConfig:
    return GatewayConfig(
        replicas=[ReplicaConfig(name="down", url="http://127.0.0.1:1")],  # nothing listens on port 1
        keys=[KeyConfig.from_secret("alice", KEY)],
        audit_path=str(tmp_path / "audit.jsonl"),
        connect_timeout_s=0.5,
        health_timeout_s=0.5,
    )


def _get_all(config: GatewayConfig) -> dict[tuple[str, str, bool], httpx.Response]:
    """GET /ready, /metrics and /health on both apps, with and without the key, after one API request."""
    apps = create_apps(config)

    async def scenario() -> dict[tuple[str, str, bool], httpx.Response]:
        async with apps.client.router.lifespan_context(apps.client):  # the replica pool's first health round
            answers = {}
            for name, app in (("client", apps.client), ("admin", apps.admin)):
                async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http:
                    if name == "client":
                        await http.post("/v1/completions", json={"prompt": "x"}, headers={"Authorization": "Bearer x"})
                    for path in ("/ready", "/metrics", "/health"):
                        for keyed in (False, True):
                            headers = {"Authorization": f"Bearer {KEY}"} if keyed else {}
                            answers[name, path, keyed] = await http.get(path, headers=headers)
            return answers

    return asyncio.run(scenario())


def test_probes_and_metrics_are_on_the_admin_app_only(tmp_path: Path) -> None:
    answers = _get_all(_config(tmp_path))
    for keyed in (False, True):  # a client, with a key or without, reads nothing of them on its port
        for path in ("/ready", "/metrics"):
            reply = answers["client", path, keyed]
            assert reply.status_code == 404, (path, keyed, reply.text[:200])
            assert "gateway_" not in reply.text and "replicas" not in reply.text
        assert answers["client", "/health", keyed].json() == {"status": "alive"}  # liveness: the client port
        assert answers["admin", "/health", keyed].status_code == 404
    ready = answers["admin", "/ready", False]
    assert ready.status_code == 200 and ready.json() == {"ready": True, "replicas": {"down": "down"}}
    metrics = answers["admin", "/metrics", False].text
    assert 'gateway_replica_up{replica="down"} 0.0' in metrics
    assert 'outcome="unauthorized"' in metrics  # the refused API request above is counted there


def test_the_client_port_and_the_admin_port_must_differ(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with pytest.raises(ServelabError, match="admin_port"):
        serve(create_apps(config), config, "127.0.0.1", config.admin_port, "warning", 1)


def _container() -> tuple[dict[str, Any], dict[str, Any]]:
    deployment = next(d for d in manifests.load_documents(GATEWAY / "deployment.yaml") if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]
    return pod, pod["spec"]["containers"][0]


def test_manifests_probe_and_scrape_the_admin_port_the_config_names() -> None:
    pod, container = _container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    cluster = GatewayConfig.model_validate(yaml.safe_load((GATEWAY / "gateway-config.source.yaml").read_text()))
    args = container["args"]
    assert ports == {"http": int(args[args.index("--port") + 1]), "admin": cluster.admin_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "admin"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    annotations = pod["metadata"]["annotations"]
    assert (
        annotations["prometheus.io/port"] == str(cluster.admin_port) and annotations["prometheus.io/path"] == "/metrics"
    )


def test_clients_reach_only_the_client_port_and_prometheus_the_admin_port() -> None:
    pod, _ = _container()
    services = {d["metadata"]["name"]: d for d in manifests.load_documents(GATEWAY / "service.yaml")}
    assert [p["targetPort"] for p in services["gateway"]["spec"]["ports"]] == ["http"]  # the clients' Service
    (monitor,) = manifests.load_documents(GATEWAY / "servicemonitor.yaml")
    (endpoint,) = monitor["spec"]["endpoints"]
    scraped = [
        s for s in services.values() if manifests.selector_matches(monitor["spec"]["selector"], s["metadata"]["labels"])
    ]
    assert [s["metadata"]["name"] for s in scraped] == ["gateway-admin"]
    (admin_port,) = scraped[0]["spec"]["ports"]
    assert endpoint["port"] == admin_port["name"] and endpoint["path"] == "/metrics"
    assert admin_port["targetPort"] == "admin"
    policies = {d["metadata"]["name"]: d["spec"] for d in manifests.load_documents(GATEWAY / "networkpolicy.yaml")}
    guard = policies["gateway-admin-only-prometheus"]
    assert manifests.selector_matches(guard["podSelector"], pod["metadata"]["labels"])
    rules = {rule["ports"][0]["port"]: rule.get("from") for rule in guard["ingress"]}
    assert set(rules) == {"http", "admin"} and rules["http"] is None  # clients: from anywhere
    (prometheus,) = rules["admin"]
    assert prometheus["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert prometheus["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    built = {(d["kind"], d["metadata"]["name"]) for d in manifests.kustomize_build(GATEWAY)}
    assert {("Service", "gateway-admin"), ("ServiceMonitor", "gateway")} <= built
