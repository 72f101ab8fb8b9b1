"""The gateway (servelab.gateway) with real llama.cpp replicas behind it: keys, limits, timeouts,
disconnects, failover when a replica is killed, the audit log, metrics; and its Kubernetes manifests.

Everything that needs an engine starts real llama.cpp servers (one thread each: the machine has two
cores) and talks to a real gateway process over HTTP.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from servelab.cli import app as cli_app
from servelab.course import drills
from servelab.engines.launch import Engine, LlamaCppOptions, start_llamacpp
from servelab.errors import ServelabError
from servelab.gateway import GatewayConfig, KeyConfig, ReplicaConfig, hash_key, load_config
from servelab.gateway.errors import GatewayError
from servelab.gateway.launch import Gateway, start_gateway
from servelab.gateway.proxy import SSECounter
from servelab.gateway.ratelimit import KeyLimiter, estimate_tokens
from servelab.k8s import manifests
from servelab.observe.metrics import samples

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "gateway"
MANIFESTS = ROOT / "manifests"
ONE_THREAD = LlamaCppOptions(n_threads=1)
KEYS = {"alice": "sk-test-alice", "bob": "sk-test-bob", "tiny": "sk-test-tiny", "burst": "sk-test-burst"}


# --- no engine needed ---------------------------------------------------------------------------


def test_demo_config_loads_and_its_hashes_are_the_demo_keys() -> None:
    config = load_config(DATA / "config.yaml")
    demo = yaml.safe_load((DATA / "demo_keys.yaml").read_text())
    assert {k.id: k.sha256 for k in config.keys} == {name: hash_key(raw) for name, raw in demo.items()}
    settings = [line for line in (DATA / "config.yaml").read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not any(raw in line for raw in demo.values() for line in settings)  # hashes only, outside comments
    assert len(config.replicas) >= 2 and 30 <= config.request_timeout_s <= 60 and config.audit_prompts is False


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("replicas: []\n", "replicas"),
        ("replicas: [{name: a, url: 'http://x'}]\nrequest_timeout: 5\n", "request_timeout"),
        (
            "replicas: [{name: a, url: 'http://x'}, {name: a, url: 'http://y'}]\n"
            f"keys: [{{id: k, sha256: '{'0' * 64}'}}]\n",
            "repeated: ['a']",
        ),
        ("replicas: [{name: a, url: 'http://x'}]\n", "at least one key"),
        ("replicas: [{name: a, url: 'x'}]\n", "url"),
    ],
)
def test_config_mistakes_are_clear_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    with pytest.raises(ServelabError, match=re.escape(fragment)):
        load_config(path)


def test_keys_file_adds_keys_like_a_mounted_secret(tmp_path: Path) -> None:
    (tmp_path / "keys.yaml").write_text(yaml.safe_dump({"keys": [KeyConfig.from_secret("ci", "sk-ci").model_dump()]}))
    (tmp_path / "gateway.yaml").write_text("replicas: [{name: a, url: 'http://127.0.0.1:1'}]\nkeys_file: keys.yaml\n")
    assert [k.id for k in load_config(tmp_path / "gateway.yaml").all_keys()] == ["ci"]


def test_key_limiter_charges_requests_and_tokens_and_says_when_to_retry() -> None:
    limiter = KeyLimiter()
    key = KeyConfig.from_secret("k", "sk", requests_per_minute=3, tokens_per_minute=100)
    limiter.admit(key, 60)
    with pytest.raises(GatewayError) as err:
        limiter.admit(key, 50)  # 60 + 50 > 100 tokens
    assert err.value.status == 429 and err.value.code == "rate_limit_tokens"
    assert 1 <= int(err.value.headers["Retry-After"]) <= 60 and "100 tokens per minute" in err.value.message
    limiter.admit(key, 40)  # the refused request cost nothing: 60 + 40 fits
    limiter.admit(key, 0)
    with pytest.raises(GatewayError) as err:
        limiter.admit(key, 0)  # fourth request in the minute
    assert err.value.code == "rate_limit_requests" and "3 requests per minute" in err.value.message
    with pytest.raises(GatewayError) as err:
        KeyLimiter().admit(key, 101)  # could never fit: a 400 that says why, not a 429 to retry forever
    assert err.value.status == 400 and "lower max_tokens" in err.value.message


def test_token_estimate_is_prompt_plus_max_tokens() -> None:
    assert estimate_tokens({"prompt": "x" * 40, "max_tokens": 10}) == 20
    assert estimate_tokens({"messages": [{"role": "user", "content": "y" * 8}], "max_tokens": 5, "n": 2}) == 12


def test_sse_counter_counts_text_chunks_across_split_reads() -> None:
    stream = (
        b'data: {"choices": [{"text": "Hel"}]}\n\ndata: {"choices": [{"delta": {"content": "lo"}}]}\n\n'
        b'data: {"choices": [{"text": "", "finish_reason": "length"}]}\n\ndata: [DONE]\n\n'
    )
    counter = SSECounter()
    for i in range(0, len(stream), 7):
        counter.feed(stream[i : i + 7])
    assert counter.tokens_out == 2


def test_cli_hash_key_prints_the_config_hash() -> None:
    result = CliRunner().invoke(cli_app, ["gateway", "hash-key", "sk-demo-alice-0f3c9a"])
    assert result.exit_code == 0 and result.stdout.strip() == hash_key("sk-demo-alice-0f3c9a")


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


# --- real engines -------------------------------------------------------------------------------


def _config(replicas: list[tuple[str, Engine]], audit_path: Path, **settings: Any) -> GatewayConfig:
    keys = [
        KeyConfig.from_secret("alice", KEYS["alice"], requests_per_minute=1000, tokens_per_minute=200_000),
        KeyConfig.from_secret("bob", KEYS["bob"], requests_per_minute=2, tokens_per_minute=10_000),
        KeyConfig.from_secret("tiny", KEYS["tiny"], requests_per_minute=100, tokens_per_minute=40),
        KeyConfig.from_secret("burst", KEYS["burst"], requests_per_minute=10_000, tokens_per_minute=1_000_000),
    ]
    return GatewayConfig(
        replicas=[ReplicaConfig(name=name, url=e.url, health_path="/docs") for name, e in replicas],
        keys=keys,
        audit_path=str(audit_path),
        health_interval_s=0.5,
        max_outstanding_per_replica=1,
        request_timeout_s=60,
        max_body_bytes=8192,
        **settings,
    )


@pytest.fixture(scope="module")
def replicas() -> Iterator[dict[str, Engine]]:
    with start_llamacpp(options=ONE_THREAD) as a, start_llamacpp(options=ONE_THREAD) as b:
        yield {"a": a, "b": b}


@pytest.fixture(scope="module")
def gateway(replicas: dict[str, Engine], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    audit = tmp_path_factory.mktemp("gateway") / "audit.jsonl"
    with start_gateway(_config(list(replicas.items()), audit)) as gw:
        yield gw


def _post(
    gateway: Gateway, key: str | None, body: Any = None, content: bytes | None = None, path: str = "/completions"
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(gateway.base_url + path, json=body, content=content, headers=headers, timeout=60)


def _body(replicas: dict[str, Engine], **extra: Any) -> dict[str, Any]:
    return {
        "model": replicas["a"].served_model,
        "prompt": "The capital of France is",
        "max_tokens": 4,
        "temperature": 0,
        **extra,
    }


@pytest.mark.engines
def test_completions_chat_and_streams_pass_through(gateway: Gateway, replicas: dict[str, Engine]) -> None:
    reply = _post(gateway, KEYS["alice"], _body(replicas))
    assert reply.status_code == 200 and reply.json()["choices"][0]["text"]
    chat = _post(
        gateway,
        KEYS["alice"],
        {"model": replicas["a"].served_model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]},
        path="/chat/completions",
    )
    assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"]
    with httpx.stream(
        "POST",
        gateway.base_url + "/completions",
        json=_body(replicas, stream=True),
        timeout=60,
        headers={"Authorization": f"Bearer {KEYS['alice']}"},
    ) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in stream.iter_lines() if line.startswith("data:")]
        request_id = stream.headers["x-request-id"]
    assert lines[-1] == "data: [DONE]" and len(lines) >= 3
    line = drills.wait_for_audit(gateway, request_id)
    assert line["key_id"] == "alice" and line["stream"] is True and line["outcome"] == "ok"
    assert line["tokens_out"] == len(lines) - 2  # text chunks (the last chunk carries finish_reason only)
    assert "prompt" not in line  # prompts are logged only when switched on
    first = drills.wait_for_audit(gateway, reply.headers["x-request-id"])
    assert first["tokens_in"] >= 1 and first["tokens_out"] == 4 and first["status"] == 200
    assert first["replica"] in replicas and first["latency_s"] > 0


@pytest.mark.engines
@pytest.mark.parametrize(
    ("key", "payload", "status", "code", "message"),
    [
        (None, {"prompt": "x"}, 401, "missing_api_key", "Missing API key"),
        ("sk-not-a-key", {"prompt": "x"}, 401, "invalid_api_key", "Unknown API key"),
        ("alice", b"{not json", 400, "invalid_json", "not valid JSON"),
        ("alice", b"[1, 2]", 400, "invalid_json", "must be a JSON object"),
        ("alice", {"prompt": "x" * 10_000}, 413, "request_too_large", "larger than the gateway's limit of 8192 bytes"),
        ("tiny", {"prompt": "x", "max_tokens": 30}, 429, "rate_limit_tokens", "40 tokens per minute"),
    ],
)
def test_bad_requests_get_the_right_status_and_a_clear_message(
    gateway: Gateway, replicas: dict[str, Engine], key: str | None, payload: Any, status: int, code: str, message: str
) -> None:
    raw = KEYS.get(key, key) if key else None
    if isinstance(payload, bytes):
        response = _post(gateway, raw, content=payload)
    else:
        response = _post(gateway, raw, {"model": replicas["a"].served_model, "max_tokens": 4, **payload})
    if status == 429:  # tiny's 40 tokens: the first request (31 estimated) fits, the second does not
        assert response.status_code == 200
        response = _post(gateway, raw, {"model": replicas["a"].served_model, "max_tokens": 30, **payload})
        assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and message in error["message"] and error["type"]
    line = drills.wait_for_audit(gateway, response.headers["x-request-id"])
    assert line["status"] == status and line["replica"] is None  # refused before any engine saw it
    audit_text = gateway.audit_path.read_text()
    assert all(raw_key not in audit_text for raw_key in KEYS.values()) and "sk-not-a-key" not in audit_text
    if key == "sk-not-a-key":
        assert line["key_id"] is None and line["key_fingerprint"] == hash_key("sk-not-a-key")[:12]


@pytest.mark.engines
def test_over_the_request_limit_is_429_with_retry_after(gateway: Gateway, replicas: dict[str, Engine]) -> None:
    statuses = [_post(gateway, KEYS["bob"], _body(replicas, max_tokens=1)) for _ in range(3)]
    assert [r.status_code for r in statuses] == [200, 200, 429]
    assert 1 <= int(statuses[2].headers["retry-after"]) <= 60
    assert "2 requests per minute" in statuses[2].json()["error"]["message"]
    assert _post(gateway, KEYS["alice"], _body(replicas, max_tokens=1)).status_code == 200  # per key


@pytest.mark.engines
def test_200_concurrent_requests_leave_exactly_one_audit_line_each(
    gateway: Gateway, replicas: dict[str, Engine]
) -> None:
    calls = drills.burst(gateway, replicas["a"].served_model, KEYS["burst"], n=200, max_tokens=2)
    assert sum(c.ok for c in calls) == 200, [c.error for c in calls if not c.ok][:5]
    ids = [c.request_id for c in calls]
    assert len(set(ids)) == 200
    time.sleep(0.5)
    lines = [line for line in gateway.audit_lines() if line["key_id"] == "burst"]
    assert sorted(line["request_id"] for line in lines) == sorted(ids)  # nothing lost, nothing doubled
    assert {line["outcome"] for line in lines} == {"ok"} and {line["replica"] for line in lines} == {"a", "b"}
    text = httpx.get(gateway.url + "/metrics", timeout=5).text
    counted = sum(
        v
        for n, labels, v in samples(text, "gateway_requests")
        if n == "gateway_requests_total" and labels["key_id"] == "burst"
    )
    assert counted == 200


@pytest.mark.engines
def test_client_hanging_up_cancels_the_upstream_request(gateway: Gateway, replicas: dict[str, Engine]) -> None:
    result = drills.hang_up_mid_stream(gateway, replicas, replicas["a"].served_model, KEYS["alice"], max_tokens=400)
    assert result["audit_outcome"] == "client_disconnected" and result["chunks_read"] == 8
    # ~390 more tokens would keep the replica busy for seconds; cancelled, it answers at once.
    assert result["replica_free_after_s"] < min(2.0, result["abandoned_generation_s"] / 3), result
    text = httpx.get(gateway.url + "/metrics", timeout=5).text
    cancelled = {
        labels["reason"]: v
        for n, labels, v in samples(text, "gateway_upstream_cancelled")
        if n == "gateway_upstream_cancelled_total"
    }
    assert cancelled.get("client_disconnected", 0) >= 1


@pytest.mark.engines
def test_timeouts_give_504_or_cut_the_stream_and_prompts_are_logged_when_on(
    replicas: dict[str, Engine], tmp_path: Path
) -> None:
    config = _config(list(replicas.items()), tmp_path / "audit.jsonl", audit_prompts=True)
    config = config.model_copy(update={"request_timeout_s": 1.0})
    long = _body(replicas, max_tokens=200, logit_bias={"2": -100}, prompt="Tell me a very long story")
    with start_gateway(config) as strict:
        began = time.perf_counter()
        reply = _post(strict, KEYS["alice"], long)
        waited = time.perf_counter() - began
        assert reply.status_code == 504 and reply.json()["error"]["code"] == "timeout"
        assert "timeout of 1 s" in reply.json()["error"]["message"] and 0.9 < waited < 5
        # llama-cpp-python finishes a non-streamed answer even when nobody waits: let it, before the stream.
        replicas[drills.wait_for_audit(strict, reply.headers["x-request-id"])["replica"]].complete("Hi", max_tokens=1)
        with httpx.stream(
            "POST",
            strict.base_url + "/completions",
            json={**long, "stream": True},
            timeout=60,
            headers={"Authorization": f"Bearer {KEYS['alice']}"},
        ) as stream:
            events = [line for line in stream.iter_lines() if line.startswith("data:")]
            request_id = stream.headers["x-request-id"]
        assert stream.status_code == 200 and '"code": "timeout"' in events[-1]  # started, then cut
        line = drills.wait_for_audit(strict, request_id)
        assert line["outcome"] == "timeout" and 0 < line["tokens_out"] < 200
        assert line["prompt"] == "Tell me a very long story"


@pytest.mark.engines
def test_killing_a_replica_under_load_loses_only_requests_in_flight(tmp_path: Path) -> None:
    with start_llamacpp(options=ONE_THREAD) as a, start_llamacpp(options=ONE_THREAD) as b:
        with start_gateway(_config([("a", a), ("b", b)], tmp_path / "audit.jsonl")) as gw:
            report = drills.failover_drill(
                gw, b, "b", a.served_model, KEYS["alice"], concurrency=6, duration_s=7.0, kill_at_s=2.5, max_tokens=16
            )
            print("failover:", report.summary())
            assert report.noticed_at_s is not None and report.noticed_at_s - report.kill_at_s < 2.0
            assert report.failed_after_notice == 0
            assert report.failed == report.in_flight_lost <= 1  # only the stream b was sending died
            assert report.ok > report.in_flight_at_kill
            assert drills.replica_up(gw) == {"a": True, "b": False}
            # With every replica gone: a clear 503 with Retry-After, not a hang or a connection error.
            drills.kill_engine(a)
            deadline = time.monotonic() + 10
            while drills.replica_up(gw)["a"] and time.monotonic() < deadline:
                time.sleep(0.1)
            reply = _post(gw, KEYS["alice"], {"model": a.served_model, "prompt": "x", "max_tokens": 1})
            assert reply.status_code == 503 and reply.headers["retry-after"]
            assert "No healthy engine replica" in reply.json()["error"]["message"]
            assert httpx.get(gw.url + "/ready", timeout=5).status_code == 200  # still ready: it answers
            lines = gw.audit_lines()
            assert len(lines) == report.requests + 1 and len({x["request_id"] for x in lines}) == len(lines)
            assert json.loads(gw.audit_path.read_text().splitlines()[-1])["outcome"] == "no_replica"
