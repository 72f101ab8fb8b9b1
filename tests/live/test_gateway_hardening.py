"""The gateway under attack, with real llama.cpp replicas behind it: a request of death, budget bypasses,
one key starving the others, slow and idle connections, text the audit log cannot encode, hostile
JSON, engine errors. Each test is one way the gateway broke when attacked; each failed before the fix.

The rules themselves (allow-list, strict lengths, quarantine, fair queueing) are checked without
servers in tests/unit/gateway/test_requests.py; the bounded fuzz run is tests/live/test_gateway_fuzz.py.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from servelab.course import drills
from servelab.engines.launch import Engine, LlamaCppOptions, start_llamacpp
from servelab.gateway import GatewayConfig, KeyConfig, ReplicaConfig
from servelab.gateway.launch import Gateway, start_gateway
from servelab.observe.metrics import samples

ONE_THREAD = LlamaCppOptions(n_threads=1)
KEYS = {"alice": "sk-hard-alice", "hog": "sk-hard-hog", "light": "sk-hard-light", "small": "sk-hard-small"}
LONG = {"prompt": "Tell me a very long story", "logit_bias": {"2": -100}, "temperature": 0}  # no early EOS


def _config(replicas: dict[str, Engine], audit_path: Path, **settings: Any) -> GatewayConfig:
    keys = [
        KeyConfig.from_secret("alice", KEYS["alice"], requests_per_minute=10_000, tokens_per_minute=10**6),
        KeyConfig.from_secret("hog", KEYS["hog"], requests_per_minute=1000, tokens_per_minute=10**6, max_concurrent=1),
        KeyConfig.from_secret("light", KEYS["light"], requests_per_minute=1000, tokens_per_minute=10**6),
        KeyConfig.from_secret("small", KEYS["small"], requests_per_minute=1000, tokens_per_minute=300),
    ]
    defaults: dict[str, Any] = {"health_interval_s": 0.5, "max_outstanding_per_replica": 1, "request_timeout_s": 30}
    return GatewayConfig(
        replicas=[ReplicaConfig(name=n, url=e.url, health_path="/docs") for n, e in replicas.items()],
        keys=keys,
        models=[next(iter(replicas.values())).served_model],
        audit_path=str(audit_path),
        max_body_bytes=16384,
        **{**defaults, **settings},
    )


@pytest.fixture(scope="module")
def gateway(replicas: dict[str, Engine], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    audit = tmp_path_factory.mktemp("hardening") / "audit.jsonl"
    config = _config(
        replicas, audit, header_timeout_s=1.0, body_timeout_s=2.0, max_connections=24, default_max_tokens=64
    )
    with start_gateway(config) as gw:
        yield gw


def _post(gw: Gateway, key: str, body: Any = None, content: bytes | None = None, path: str = "/completions") -> Any:
    headers = {"Authorization": f"Bearer {KEYS.get(key, key)}", "Content-Type": "application/json"}
    return httpx.post(gw.base_url + path, json=body, content=content, headers=headers, timeout=60)


def _model(replicas: dict[str, Engine]) -> str:
    return replicas["a"].served_model


def _all_up(replicas: dict[str, Engine]) -> bool:
    return all(httpx.get(e.url + "/docs", timeout=5).status_code == 200 for e in replicas.values())


def _counter(gw: Gateway, name: str, **labels: str) -> float:
    text = httpx.get(gw.admin_url + "/metrics", timeout=5).text
    return sum(
        v
        for n, lab, v in samples(text, name)
        if n == name + "_total" and all(lab.get(k) == want for k, want in labels.items())
    )


@pytest.mark.engines
def test_a_request_of_death_reaches_no_replica(gateway: Gateway, replicas: dict[str, Engine]) -> None:
    for _ in range(2):  # a client retrying
        reply = _post(gateway, "alice", {"model": _model(replicas), "prompt": "x", "grammar": "root ::= foo"})
        assert reply.status_code == 400 and "'grammar': unknown field" in reply.json()["error"]["message"]
        assert drills.wait_for_audit(gateway, reply.headers["x-request-id"])["replica"] is None
    time.sleep(0.3)
    assert _all_up(replicas) and all(drills.replica_up(gateway).values())
    assert _post(gateway, "alice", {"model": _model(replicas), "prompt": "Hi", "max_tokens": 1}).status_code == 200


@pytest.mark.engines
def test_a_replica_dying_on_a_request_is_not_retried_and_the_request_is_quarantined(tmp_path: Path) -> None:
    with (
        start_llamacpp(options=ONE_THREAD) as a,
        start_llamacpp(options=ONE_THREAD) as b,
        start_gateway(_config({"a": a, "b": b}, tmp_path / "audit.jsonl")) as gw,
    ):
        engines = {"a": a, "b": b}
        body = {"model": a.served_model, "max_tokens": 400, **LONG}
        result: dict[str, httpx.Response] = {}
        worker = threading.Thread(target=lambda: result.update(reply=_post(gw, "alice", body)))
        worker.start()
        busy = None
        deadline = time.monotonic() + 10
        while busy is None and time.monotonic() < deadline:
            text = httpx.get(gw.admin_url + "/metrics", timeout=5).text
            busy = next((lab["replica"] for _, lab, v in samples(text, "gateway_replica_outstanding") if v), None)
            time.sleep(0.05)
        assert busy is not None
        time.sleep(0.3)  # the engine is generating
        drills.kill_engine(engines[busy])  # what a segfault does to it
        worker.join(60)
        reply = result["reply"]
        error = reply.json()["error"]
        assert reply.status_code == 502 and error["code"] == "replica_died" and "will not help" in error["message"]
        line = drills.wait_for_audit(gw, reply.headers["x-request-id"])
        assert line["replicas_tried"] == [busy] and line["attempts"] == 1  # not sent to the other replica
        again = _post(gw, "alice", body)  # the client retries, unchanged
        assert again.status_code == 400 and again.json()["error"]["code"] == "request_quarantined"
        assert drills.wait_for_audit(gw, again.headers["x-request-id"])["replica"] is None
        changed = _post(gw, "alice", {**body, "max_tokens": 2})
        assert changed.status_code == 200
        assert _counter(gw, "gateway_replica_deaths", replica=busy) == 1


@pytest.mark.engines
def test_the_token_budget_cannot_be_bypassed(gateway: Gateway, replicas: dict[str, Engine]) -> None:
    model = _model(replicas)
    tries: list[tuple[str, dict[str, Any]]] = [
        ("/completions", {"max_tokens": None}),
        ("/completions", {"max_tokens": 0}),
        ("/completions", {"max_tokens": "600"}),
        ("/completions", {"max_tokens": 600.0}),
        ("/chat/completions", {"max_tokens": -1}),
        ("/chat/completions", {"max_completion_tokens": 2800}),
        ("/chat/completions", {"max_completion_tokens": None, "max_tokens": None}),
    ]
    received = 0
    for path, lengths in tries:
        body: dict[str, Any] = {"model": model, **LONG, **lengths}
        if path == "/chat/completions":
            body = {"model": model, "messages": [{"role": "user", "content": LONG["prompt"]}], **lengths}
        reply = _post(gateway, "small", body, path=path)
        assert reply.status_code in (200, 400, 429), reply.text
        if reply.status_code == 200:
            used = reply.json()["usage"]["completion_tokens"]
            line = drills.wait_for_audit(gateway, reply.headers["x-request-id"])
            assert used <= line["tokens_charged"], line
            received += used
    assert received <= 300  # the key's whole budget for the minute


@pytest.mark.engines
def test_one_key_cannot_starve_the_others(gateway: Gateway, replicas: dict[str, Engine]) -> None:
    model = _model(replicas)
    hog_replies: list[httpx.Response] = []
    hogs = [
        threading.Thread(
            target=lambda: hog_replies.append(_post(gateway, "hog", {"model": model, "max_tokens": 150, **LONG}))
        )
        for _ in range(4)
    ]
    for t in hogs:
        t.start()
    time.sleep(0.5)
    began = time.perf_counter()
    light = _post(gateway, "light", {"model": model, "prompt": "Hi", "max_tokens": 1})
    light_s = time.perf_counter() - began
    for t in hogs:
        t.join(60)
    statuses = sorted(r.status_code for r in hog_replies)
    assert statuses == [200, 429, 429, 429], statuses  # one at a time: its max_concurrent
    refused = next(r for r in hog_replies if r.status_code == 429)
    assert refused.json()["error"]["code"] == "concurrency_limit" and refused.headers["retry-after"]
    assert light.status_code == 200 and light_s < 2.0, light_s  # not behind the hog's long answers


def _outstanding(gw: Gateway) -> float:
    text = httpx.get(gw.admin_url + "/metrics", timeout=5).text
    return sum(v for _, _, v in samples(text, "gateway_replica_outstanding"))


@pytest.mark.engines
def test_an_abandoned_answer_keeps_its_replica_counted_busy(gateway: Gateway, replicas: dict[str, Engine]) -> None:
    body = {"model": _model(replicas), "max_tokens": 120, **LONG}
    headers = {"Authorization": f"Bearer {KEYS['light']}"}
    with pytest.raises(httpx.ReadTimeout):  # the client gives up; llama-cpp-python's server goes on
        httpx.post(gateway.base_url + "/completions", json=body, headers=headers, timeout=0.5)
    left = time.perf_counter()
    time.sleep(0.3)
    assert _outstanding(gateway) == 1  # still generating, so still counted
    while _outstanding(gateway) and time.perf_counter() - left < 30:
        time.sleep(0.05)
    assert _outstanding(gateway) == 0 and time.perf_counter() - left > 0.5


@pytest.mark.engines
def test_a_wait_longer_than_the_timeout_is_shed_early(replicas: dict[str, Engine], tmp_path: Path) -> None:
    config = _config(replicas, tmp_path / "audit.jsonl", request_timeout_s=0.5)
    config.keys[1].max_concurrent = 2
    model = _model(replicas)
    stream = {"model": model, "max_tokens": 100, "stream": True, **LONG}
    with start_gateway(config) as gw:
        _post(gw, "hog", {**stream, "max_tokens": 30})  # the gateway learns how long a token holds a replica
        hogs = [threading.Thread(target=_post, args=(gw, "hog", stream)) for _ in range(2)]
        for t in hogs:
            t.start()
        time.sleep(0.3)
        began = time.perf_counter()
        reply = _post(gw, "light", {"model": model, "prompt": "Hi", "max_tokens": 1})
        waited = time.perf_counter() - began
        for t in hogs:
            t.join(60)
    assert reply.status_code == 503 and reply.json()["error"]["code"] == "overloaded", reply.text
    assert int(reply.headers["retry-after"]) >= 1 and waited < 0.4  # at once, not a 504 after 0.5 s


@pytest.mark.engines
def test_slow_and_idle_connections_are_cut_and_counted(gateway: Gateway, replicas: dict[str, Engine]) -> None:
    body = json.dumps({"model": _model(replicas), "prompt": "Hi", "max_tokens": 1}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as slow:  # a body trickled in
        head = (
            f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEYS['alice']}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        slow.sendall(head.encode())
        began = time.perf_counter()
        answer = b""
        for byte in body:
            try:
                slow.sendall(bytes([byte]))
            except OSError:
                break
            slow.settimeout(0.5)
            try:
                answer += slow.recv(4096)
            except TimeoutError:
                continue
            if answer:
                break
        assert b" 408 " in answer.split(b"\r\n")[0] and time.perf_counter() - began < 5, answer[:200]
    idle = [socket.create_connection(("127.0.0.1", gateway.port), timeout=5) for _ in range(40)]
    try:
        time.sleep(1.5)  # over max_connections: closed at once; the others after the 1 s header timeout
        closed = 0
        for conn in idle:
            conn.settimeout(2)
            try:
                closed += conn.recv(1) == b""
            except OSError:
                closed += 1
        assert closed == 40
    finally:
        for conn in idle:
            conn.close()
    # The idle ones locked out neither the clients nor the probes (the admin port has a cap of its own).
    assert httpx.get(gateway.url + "/health", timeout=5).status_code == 200
    assert httpx.get(gateway.admin_url + "/ready", timeout=5).status_code == 200
    refused = {
        r: _counter(gateway, "gateway_refused_connections", listener="client", reason=r)
        for r in ("too_many_connections", "header_timeout")
    }
    assert refused["too_many_connections"] >= 40 - 24 and refused["header_timeout"] >= 10, refused


@pytest.mark.engines
def test_every_request_leaves_a_bounded_audit_line_whatever_it_holds(
    gateway: Gateway, replicas: dict[str, Engine]
) -> None:
    surrogate = b'{"model": "m\\ud800", "prompt": "Hi", "max_tokens": 1, "stream": true}'
    reply = _post(gateway, "alice", content=surrogate)
    assert reply.status_code == 400 and "lone surrogate" in reply.json()["error"]["message"]
    line = drills.wait_for_audit(gateway, reply.headers["x-request-id"])
    assert line["model"] == "m\ufffd" and line["status"] == 400
    huge = _post(gateway, "alice", {"model": "m" * 12_000, "prompt": "Hi"})
    assert huge.status_code == 400
    drills.wait_for_audit(gateway, huge.headers["x-request-id"])  # written just after the answer
    raw = next(t for t in gateway.audit_path.read_text().splitlines() if huge.headers["x-request-id"] in t)
    assert len(raw.encode()) < 1500
    assert _counter(gateway, "gateway_audit_write_failures") == 0


@pytest.mark.engines
@pytest.mark.parametrize(
    "content",
    [
        b'{"model": "m", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",
        b'{"model": "m", "prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"model": "m", "messages": 5}',
        b'{"model": "m", "messages": true}',
        b'{"model": "m", "prompt": "x", "stream": "false"}',
    ],
    ids=["5000-digit integer", "nested 1000 deep", "messages 5", "messages true", "stream 'false'"],
)
def test_malformed_requests_are_400_not_500(gateway: Gateway, content: bytes) -> None:
    path = "/chat/completions" if b"messages" in content else "/completions"
    reply = _post(gateway, "alice", content=content, path=path)
    assert reply.status_code == 400 and reply.json()["error"]["type"] == "invalid_request_error", reply.text


@pytest.mark.engines
def test_engine_refusals_are_4xx_without_internals(gateway: Gateway, replicas: dict[str, Engine]) -> None:
    reply = _post(gateway, "alice", {"model": _model(replicas), "prompt": "x " * 3000, "max_tokens": 4})
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["code"] == "engine_rejected_request" and "context" in error["message"]
    missing = _post(gateway, "alice", {"prompt": "Hi", "max_tokens": 1})
    assert missing.status_code == 400 and ".gguf" not in missing.text
    unknown = _post(gateway, "alice", {"model": "gpt-4", "prompt": "Hi", "max_tokens": 1})
    assert unknown.status_code == 404
    line = drills.wait_for_audit(gateway, reply.headers["x-request-id"])
    assert line["error"] == f"replica {line['replica']} answered 400"  # the status, not the engine's text
    auth = {"Authorization": f"Bearer {KEYS['alice']}"}
    listed = httpx.get(gateway.base_url + "/models", headers=auth, timeout=5)
    assert [m["id"] for m in listed.json()["data"]] == [_model(replicas)]


@pytest.mark.engines
def test_guessing_keys_is_throttled_per_source(replicas: dict[str, Engine], tmp_path: Path) -> None:
    with start_gateway(_config(replicas, tmp_path / "audit.jsonl", auth_failures_per_minute=10)) as gw:
        statuses = [_post(gw, f"sk-guess-{i}", {"model": "x"}).status_code for i in range(15)]
        assert statuses[:10] == [401] * 10 and set(statuses[10:]) == {429}
        # A throttled address is refused whatever key it sends: otherwise a right guess would still show.
        assert _post(gw, "alice", {"model": "x"}).status_code == 429
        assert len(gw.audit_path.read_bytes()) < 16 * 600  # one short line each


def _stream(gw: Gateway, body: dict[str, Any]) -> tuple[int, list[str], float]:
    began = time.perf_counter()
    with httpx.stream(
        "POST",
        gw.base_url + "/completions",
        json=body,
        timeout=60,
        headers={"Authorization": f"Bearer {KEYS['alice']}"},
    ) as reply:
        events = [line for line in reply.iter_lines() if line.startswith("data:")]
    return reply.status_code, events, time.perf_counter() - began


@pytest.mark.engines
def test_streams_are_timed_per_chunk_not_by_the_request_timeout(replicas: dict[str, Engine], tmp_path: Path) -> None:
    model = _model(replicas)
    config = _config(replicas, tmp_path / "audit.jsonl", request_timeout_s=0.5, stream_idle_timeout_s=5)
    long = {"model": model, "max_tokens": 80, "stream": True, **LONG}
    with start_gateway(config) as gw:  # a stream longer than request_timeout_s, chunks coming: not cut
        status, events, took = _stream(gw, long)
        assert status == 200 and events[-1] == "data: [DONE]" and took > 0.5, (took, events[-2:])
    with start_gateway(config.model_copy(update={"stream_idle_timeout_s": 0.001})) as gw:  # chunks too far apart
        status, events, _ = _stream(gw, {**long, "max_tokens": 30})
        assert status == 200 and "sent nothing for 0.001 s" in events[-1] and len(events) < 10, events[-2:]
    one = _config({"a": replicas["a"]}, tmp_path / "audit-one.jsonl", first_chunk_timeout_s=1.5)
    with start_gateway(one) as gw:  # no first chunk in time
        # The replica answers one request at a time; this one keeps it busy for seconds on any machine here
        # (600 tokens; 150 took under 1.5 s on an idle 2-core host, so the next request got its turn in time).
        busy_took: list[float] = []
        busy = threading.Thread(target=lambda: busy_took.append(_stream(gw, {**long, "max_tokens": 600})[2]))
        busy.start()
        time.sleep(0.5)  # the one replica is answering: the next stream waits in the gateway's queue
        began = time.perf_counter()
        reply = _post(gw, "alice", long)
        waited = time.perf_counter() - began
        busy.join(120)
    # Seconds, not the minute a request gets: the CPUs are shared with both replicas, so leave room.
    said = (reply.status_code, waited, busy_took, reply.text[:200])
    assert reply.status_code == 504 and waited < 10 and "timeout of 1.5 s" in reply.json()["error"]["message"], said
