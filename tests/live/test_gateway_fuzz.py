"""A bounded property-based fuzz run of the gateway with two real llama.cpp replicas behind it.

Hypothesis builds request bodies from valid and hostile values of every field the endpoints know,
plus fields they do not (``grammar`` among them) and raw bodies no JSON parser should accept. Three
properties must hold for every request: no 5xx (the replicas are healthy and the requests are sent
one at a time, so any 5xx is the gateway's fault or a replica the request killed), an audit line for
every request, and every answer within its timeout. The run is derandomised (the same examples in
every CI run) and sized to take well under a minute on two cores.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from servelab.engines.launch import Engine
from servelab.gateway import GatewayConfig, KeyConfig, ReplicaConfig
from servelab.gateway.launch import Gateway, start_gateway

EXAMPLES = 200
TIMEOUT_S = 10.0
KEY = "sk-fuzz"
MODEL = "smollm2-135m-instruct"

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
text = st.text(min_size=1, max_size=40)
valid = {
    "max_tokens": st.integers(min_value=1, max_value=6),
    "stream": st.booleans(),
    "temperature": st.floats(min_value=0, max_value=2),
    "top_p": st.floats(min_value=0.1, max_value=1),
    "stop": st.lists(st.text(min_size=1, max_size=3), max_size=4),
    "seed": st.integers(min_value=0, max_value=2**32 - 1),
    "logit_bias": st.dictionaries(st.sampled_from(["2", "13", "28"]), st.integers(-100, 100), max_size=3),
}
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]), "content": text})
completion = st.fixed_dictionaries(
    {"model": st.just(MODEL), "prompt": st.one_of(text, st.lists(text, min_size=1, max_size=3))}, optional=valid
)
chat = st.fixed_dictionaries(
    {"model": st.just(MODEL), "messages": st.lists(message, min_size=1, max_size=3)},
    optional={**valid, "max_completion_tokens": st.integers(min_value=1, max_value=6)},
)
# Up to two fields replaced by junk or added: known names with wrong values, and names the gateway does not
# forward (llama-cpp-python's own extensions, grammar among them).
fields = [*valid, "model", "prompt", "messages", "max_completion_tokens", "n", "grammar", "echo", "mirostat_mode"]
hostile = st.dictionaries(st.sampled_from(fields), st.one_of(junk, st.just("root ::= foo")), min_size=1, max_size=2)
mutation = st.one_of(st.just({}), hostile)


def _mutated(bodies: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda body, changes: {**body, **changes}, bodies, mutation)


requests = st.one_of(
    st.tuples(st.just("/v1/completions"), _mutated(completion)),
    st.tuples(st.just("/v1/chat/completions"), _mutated(chat)),
    st.tuples(
        st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
        st.sampled_from(
            [
                b"{",
                b"[]",
                b'{"model": "m\\ud800", "prompt": "x", "max_tokens": 1}',
                b'{"model": "' + MODEL.encode() + b'", "prompt": "x", "max_tokens": ' + b"9" * 5000 + b"}",
                b'{"prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}",
                b'{"model": "' + MODEL.encode() + b'", "prompt": "x", "temperature": NaN}',
                b"\xff\xfe\x00",
            ]
        ),
    ),
)


@pytest.fixture(scope="module")
def gateway(replicas: dict[str, Engine], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    config = GatewayConfig(
        replicas=[ReplicaConfig(name=n, url=e.url, health_path="/docs") for n, e in replicas.items()],
        keys=[KeyConfig.from_secret("fuzz", KEY, requests_per_minute=10**6, tokens_per_minute=10**9)],
        models=[replicas["a"].served_model],
        audit_path=str(tmp_path_factory.mktemp("fuzz") / "audit.jsonl"),
        health_interval_s=0.5,
        max_outstanding_per_replica=1,
        request_timeout_s=TIMEOUT_S,
        first_chunk_timeout_s=TIMEOUT_S,
        stream_timeout_s=TIMEOUT_S,
        default_max_tokens=4,
        max_body_bytes=16384,
    )
    with start_gateway(config) as gw:
        yield gw


@pytest.mark.engines
def test_fuzzed_requests_get_no_5xx_an_audit_line_each_and_an_answer_in_time(gateway: Gateway) -> None:
    sent: list[tuple[str, int, float]] = []  # request id, status, seconds
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=TIMEOUT_S + 5) as client:

        @settings(
            max_examples=EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
        )
        @given(requests)
        def one(request: tuple[str, dict[str, Any] | bytes]) -> None:
            path, body = request
            began = time.perf_counter()
            reply = client.post(path, content=body) if isinstance(body, bytes) else client.post(path, json=body)
            took = time.perf_counter() - began
            sent.append((reply.headers.get("x-request-id", ""), reply.status_code, took))
            assert reply.status_code < 500, (path, body, reply.text[:300])
            assert took < TIMEOUT_S + 1, (path, body, took)

        one()
    ids = {request_id for request_id, _, _ in sent}
    deadline = time.monotonic() + 10
    while not ids <= {line["request_id"] for line in gateway.audit_lines()} and time.monotonic() < deadline:
        time.sleep(0.2)
    audited = {line["request_id"] for line in gateway.audit_lines()}
    statuses = sorted({status for _, status, _ in sent})
    print(
        f"fuzz: {len(sent)} requests, statuses {statuses}, {sum(s == 200 for _, s, _ in sent)} answered, "
        f"slowest {max(t for _, _, t in sent):.2f} s, {len(ids & audited)} with an audit line"
    )
    assert "" not in ids and ids <= audited and not [s for _, s, _ in sent if s >= 500]
