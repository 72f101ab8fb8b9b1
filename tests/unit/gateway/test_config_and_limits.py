"""The gateway's settings and limits without any server: the demo config and its key hashes, config
mistakes as clear errors, keys from a mounted file, the per-key request and token limiter, the per-key
concurrency cap, the failed-authentication throttle, the SSE token counter, and `servelab gateway
hash-key`. The gateway itself, with real llama.cpp replicas behind it, is tested in
tests/live/test_gateway.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from servelab.cli import app as cli_app
from servelab.errors import ServelabError
from servelab.gateway import KeyConfig, hash_key, load_config
from servelab.gateway.errors import GatewayError
from servelab.gateway.proxy import SSECounter
from servelab.gateway.ratelimit import AuthThrottle, ConcurrencyCap, KeyLimiter
from servelab.paths import data_path

DATA = data_path("gateway")


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


def test_concurrency_cap_refuses_a_key_over_its_requests_at_a_time() -> None:
    cap = ConcurrencyCap()
    key = KeyConfig.from_secret("k", "sk", max_concurrent=2)
    cap.enter(key)
    cap.enter(key)
    with pytest.raises(GatewayError) as err:
        cap.enter(key)
    assert err.value.status == 429 and err.value.code == "concurrency_limit" and err.value.headers["Retry-After"]
    cap.leave(key)
    cap.enter(key)
    assert cap.running("k") == 2


def test_auth_throttle_refuses_a_source_after_its_failures() -> None:
    throttle = AuthThrottle(per_minute=3)
    for _ in range(3):
        throttle.check("10.0.0.1")
        throttle.failed("10.0.0.1")
    with pytest.raises(GatewayError) as err:
        throttle.check("10.0.0.1")
    assert err.value.status == 429 and 1 <= int(err.value.headers["Retry-After"]) <= 60
    throttle.check("10.0.0.2")  # per source


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
