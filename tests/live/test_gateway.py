"""The gateway (servelab.gateway) with real llama.cpp replicas behind it: keys, limits, timeouts,
disconnects, failover when a replica is killed, the audit log, metrics (on the admin port only).

Every test starts real llama.cpp servers (one thread each: the machine has two cores, so not the suite's
shared llama.cpp) and talks to a real gateway process over HTTP. The gateway's config, limiter and SSE
counter are checked without servers in tests/unit/gateway/test_config_and_limits.py, its Kubernetes
manifests in tests/unit/k8s/test_gateway_manifests.py.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from servelab.course import drills
from servelab.engines.launch import Engine, LlamaCppOptions, start_llamacpp
from servelab.gateway import GatewayConfig, KeyConfig, ReplicaConfig, hash_key
from servelab.gateway.launch import Gateway, start_gateway
from servelab.observe.metrics import samples
from servelab.procs import free_port

ONE_THREAD = LlamaCppOptions(n_threads=1)
KEYS = {"alice": "sk-test-alice", "bob": "sk-test-bob", "tiny": "sk-test-tiny", "burst": "sk-test-burst"}


def _config(replicas: list[tuple[str, Engine]], audit_path: Path, **settings: Any) -> GatewayConfig:
    keys = [
        KeyConfig.from_secret(
            "alice", KEYS["alice"], requests_per_minute=1000, tokens_per_minute=200_000, max_concurrent=8
        ),
        KeyConfig.from_secret("bob", KEYS["bob"], requests_per_minute=2, tokens_per_minute=10_000),
        KeyConfig.from_secret("tiny", KEYS["tiny"], requests_per_minute=100, tokens_per_minute=40),
        KeyConfig.from_secret(
            "burst", KEYS["burst"], requests_per_minute=10_000, tokens_per_minute=1_000_000, max_concurrent=256
        ),
    ]
    return GatewayConfig(
        replicas=[ReplicaConfig(name=name, url=e.url, health_path="/docs") for name, e in replicas],
        keys=keys,
        models=sorted({e.served_model for _, e in replicas}),
        audit_path=str(audit_path),
        health_interval_s=0.5,
        max_outstanding_per_replica=1,
        request_timeout_s=60,
        max_body_bytes=8192,
        **settings,
    )


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


def test_probes_and_metrics_are_served_on_the_admin_port_only(tmp_path: Path) -> None:
    # No engine: a replica nobody listens on. The gateway is ready anyway and its 503s are counted.
    config = GatewayConfig(
        replicas=[ReplicaConfig(name="down", url=f"http://127.0.0.1:{free_port()}")],
        keys=[KeyConfig.from_secret("alice", KEYS["alice"])],
        audit_path=str(tmp_path / "audit.jsonl"),
        health_interval_s=0.5,
        header_timeout_s=0.5,
    )
    with start_gateway(config) as gw:
        assert _post(gw, KEYS["alice"], {"model": "m", "prompt": "Hi", "max_tokens": 1}).status_code == 503
        for path in ("/metrics", "/ready"):  # nothing of them on the client port, with a key or without
            for headers in ({}, {"Authorization": f"Bearer {KEYS['alice']}"}):
                reply = httpx.get(gw.url + path, headers=headers, timeout=5)
                assert reply.status_code == 404 and "gateway_" not in reply.text, (path, headers, reply.text)
        ready = httpx.get(gw.admin_url + "/ready", timeout=5)
        assert ready.status_code == 200 and ready.json() == {"ready": True, "replicas": {"down": "down"}}
        metrics = httpx.get(gw.admin_url + "/metrics", timeout=5).text
        served = [
            v for n, lab, v in samples(metrics, "gateway_requests") if n.endswith("_total") and lab["key_id"] == "alice"
        ]
        assert served == [1.0], metrics
        assert httpx.get(gw.url + "/health", timeout=5).json() == {"status": "alive"}  # liveness: client port
        # The admin port has the client port's guards: a connection that sends no request head is closed.
        with socket.create_connection(("127.0.0.1", gw.config.admin_port), timeout=5) as idle:
            began = time.perf_counter()
            assert idle.recv(1) == b"" and time.perf_counter() - began < 3
        metrics = httpx.get(gw.admin_url + "/metrics", timeout=5).text
        refused = [
            v
            for n, labels, v in samples(metrics, "gateway_refused_connections")
            if n == "gateway_refused_connections_total" and labels == {"listener": "admin", "reason": "header_timeout"}
        ]
        assert refused == [1.0], metrics


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
    text = httpx.get(gateway.admin_url + "/metrics", timeout=5).text
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
    text = httpx.get(gateway.admin_url + "/metrics", timeout=5).text
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
    config = config.model_copy(update={"request_timeout_s": 1.0, "stream_timeout_s": 1.0})
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
    with (
        start_llamacpp(options=ONE_THREAD) as a,
        start_llamacpp(options=ONE_THREAD) as b,
        # The drill's requests are byte-identical: one killed mid-request would quarantine all the others.
        start_gateway(_config([("a", a), ("b", b)], tmp_path / "audit.jsonl", poison_quarantine_s=0)) as gw,
    ):
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
        assert httpx.get(gw.admin_url + "/ready", timeout=5).status_code == 200  # still ready: it answers
        lines = gw.audit_lines()
        assert len(lines) == report.requests + 1 and len({x["request_id"] for x in lines}) == len(lines)
        assert json.loads(gw.audit_path.read_text().splitlines()[-1])["outcome"] == "no_replica"
