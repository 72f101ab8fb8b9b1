"""What the gateway forwards and charges, without any server: the allow-list per endpoint, strict length
fields settled into one ``max_tokens``, malformed JSON as 400s, audit lines that are always writable and
bounded, the request-of-death quarantine, fair queueing and load shedding in the replica pool. The same
rules against real replicas: tests/live/test_gateway_hardening.py.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from servelab.gateway import GatewayConfig, ReplicaConfig
from servelab.gateway.app import parse_json, require_text
from servelab.gateway.audit import FIELD_CHARS, AuditLog, AuditRecord, read_audit
from servelab.gateway.breaker import PoisonBreaker, fingerprint
from servelab.gateway.errors import GatewayError
from servelab.gateway.metrics import GatewayMetrics
from servelab.gateway.proxy import engine_error
from servelab.gateway.replicas import Replica, ReplicaPool
from servelab.gateway.validate import admit_body

COMPLETIONS, CHAT = "/v1/completions", "/v1/chat/completions"
MODEL = "smollm2-135m-instruct"


def _admit(body: dict[str, Any], path: str = COMPLETIONS, models: list[str] | None = None) -> Any:
    return admit_body(path, body, models, default_max_tokens=256, context_tokens=2048)


def _refusal(body: dict[str, Any], path: str = COMPLETIONS, models: list[str] | None = None) -> GatewayError:
    with pytest.raises(GatewayError) as err:
        _admit(body, path, models)
    return err.value


def test_only_known_fields_are_forwarded_and_an_unknown_one_is_named() -> None:
    err = _refusal({"model": MODEL, "prompt": "hi", "grammar": "root ::= foo"})
    assert err.status == 400 and "'grammar': unknown field" in err.message
    admitted = _admit({"model": MODEL, "prompt": "hi", "temperature": 0, "stop": ["\n"]})
    assert admitted.body == {"model": MODEL, "prompt": "hi", "temperature": 0, "stop": ["\n"], "max_tokens": 256}


@pytest.mark.parametrize(
    ("lengths", "path"),
    [
        ({"max_tokens": 0}, COMPLETIONS),
        ({"max_tokens": "600"}, COMPLETIONS),
        ({"max_tokens": 600.0}, COMPLETIONS),
        ({"max_tokens": True}, COMPLETIONS),
        ({"max_tokens": -1}, CHAT),
        ({"max_completion_tokens": 0}, CHAT),
        ({"max_tokens": 5, "max_completion_tokens": 600}, CHAT),
        ({"max_tokens": 5000}, COMPLETIONS),  # over the context
        ({"max_completion_tokens": 16}, COMPLETIONS),  # chat's field on the completions endpoint
    ],
)
def test_length_fields_that_used_to_slip_past_the_budget_are_refused(lengths: dict[str, Any], path: str) -> None:
    body: dict[str, Any] = {"model": MODEL, **lengths}
    body.update({"messages": [{"role": "user", "content": "hi"}]} if path == CHAT else {"prompt": "hi"})
    err = _refusal(body, path)
    assert err.status == 400 and err.body()["error"]["type"] == "invalid_request_error", err.message


def test_the_one_effective_max_tokens_is_charged_and_sent() -> None:
    chat = _admit(
        {"model": MODEL, "messages": [{"role": "user", "content": "x" * 40}], "max_completion_tokens": 9}, CHAT
    )
    assert chat.body["max_tokens"] == 9 and "max_completion_tokens" not in chat.body
    assert chat.max_tokens == 9 and chat.cost == 10 + 9
    default = _admit({"model": MODEL, "prompt": ["abcd"]})
    assert default.body["max_tokens"] == 256 and default.cost == 1 + 256 and default.body["prompt"] == "abcd"
    null = _admit({"model": MODEL, "prompt": "ab", "max_tokens": None})  # null: the default, not "no limit"
    assert null.body["max_tokens"] == null.max_tokens == 256
    assert json.loads(default.content()) == default.body


@pytest.mark.parametrize(
    "body",
    [
        {"model": MODEL, "messages": 5},
        {"model": MODEL, "messages": True},
        {"model": MODEL, "messages": [{"role": "tool", "content": "x"}]},
        {"model": MODEL, "messages": []},
        {"prompt": "no model"},
        {"model": MODEL, "prompt": "x", "stream": "false"},
        {"model": MODEL, "prompt": "x", "n": 2},
        {"model": "m" * 250_000, "prompt": "x"},
        {"model": MODEL, "prompt": ["two", "prompts"]},
    ],
)
def test_malformed_fields_are_400_without_echoing_the_input(body: dict[str, Any]) -> None:
    path = CHAT if "messages" in body else COMPLETIONS
    err = _refusal(body, path)
    assert err.status == 400 and len(err.message) < 600, err.message


def test_an_unknown_model_is_404_when_the_config_lists_models() -> None:
    err = _refusal({"model": "gpt-4", "prompt": "x"}, models=[MODEL])
    assert err.status == 404 and err.code == "model_not_found" and MODEL in err.message
    assert _admit({"model": MODEL, "prompt": "x"}, models=[MODEL]).model == MODEL


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b'{"max_tokens": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}", "not valid JSON"),
        (b'{"prompt": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested too deeply"),
        (b'{"model": "m\\ud800", "prompt": "x"}', "lone surrogate"),
        (b"\xff\xfe", "not UTF-8"),
        (b"5", "must be a JSON object"),
        (b'{"model": "m", "prompt": "x", "temperature": NaN}', "NaN"),
    ],
)
def test_hostile_json_is_a_400_not_a_500(raw: bytes, fragment: str) -> None:
    err = _first_refusal(raw)
    assert err.status == 400, err.message
    assert fragment in err.message or err.code == "invalid_request", err.message


def _first_refusal(raw: bytes) -> GatewayError:
    """The first check that refuses ``raw``: the JSON parser, the text check, or the schema."""
    try:
        body = parse_json(raw)
        require_text(body)
        _admit(body)
    except GatewayError as err:
        return err
    raise AssertionError(f"accepted: {raw[:80]!r}")


def test_audit_lines_are_written_whatever_the_request_held_and_are_bounded(tmp_path: Path) -> None:
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    record = AuditRecord(request_id="r1", method="POST", path="/v1/completions")
    record.model, record.error = "m\ud800" * 100_000, "x\udfff"
    assert log.write(record)
    log.close()
    text = (tmp_path / "audit.jsonl").read_bytes()
    assert len(text) < 2 * FIELD_CHARS + 600
    [line] = read_audit(tmp_path / "audit.jsonl")
    assert line["model"].startswith("m\ufffdm") and "more characters" in line["model"] and line["error"] == "x\ufffd"


def test_a_failed_audit_write_is_loud(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = AuditLog(str(tmp_path / "audit.jsonl"))
    log.close()  # writes now fail (a closed descriptor stands for a full disk)
    assert not log.write(AuditRecord(request_id="lost-1", method="POST", path="/v1/completions"))
    assert "AUDIT LINE LOST for request lost-1" in caplog.text


def test_engine_errors_keep_the_status_class_and_lose_paths_and_prompts() -> None:
    replica = Replica(ReplicaConfig(name="a", url="http://127.0.0.1:1"))
    record = AuditRecord(request_id="r", method="POST", path=COMPLETIONS)
    body = json.dumps({"error": {"message": '1 validation error:\n  File "/opt/llama_cpp/server/app.py"\n secret'}})
    err = engine_error(replica, 500, body.encode(), record)
    assert err.status == 400 and "/opt" not in err.message and "secret" not in err.message
    err = engine_error(replica, 500, b'{"error": {"message": "boom at /models/x.gguf: my prompt"}}', record)
    assert err.status == 502 and "gguf" not in err.message and "prompt" not in err.message
    assert record.error == "replica a answered 500"  # the audit line: the status, never the engine's text


def test_a_request_a_replica_died_on_is_quarantined_only_unchanged() -> None:
    breaker = PoisonBreaker(quarantine_s=60)
    poison = fingerprint(COMPLETIONS, b'{"prompt":"x"}')
    breaker.check(poison)
    breaker.trip(poison)
    with pytest.raises(GatewayError) as err:
        breaker.check(poison)
    assert err.value.code == "request_quarantined" and "will not help" in err.value.message
    breaker.check(fingerprint(COMPLETIONS, b'{"prompt":"y"}'))
    off = PoisonBreaker(quarantine_s=0)
    off.trip(poison)
    off.check(poison)


def _pool(replicas: int = 1) -> ReplicaPool:
    config = GatewayConfig(
        replicas=[ReplicaConfig(name=f"r{i}", url=f"http://127.0.0.1:{i + 1}") for i in range(replicas)],
        max_outstanding_per_replica=1,
    )
    pool = ReplicaPool(config, httpx.AsyncClient(), GatewayMetrics())
    for replica in pool.replicas:
        replica.healthy = True
    return pool


def test_waiting_keys_take_turns_for_a_replica() -> None:
    async def scenario() -> list[str]:
        pool = _pool()
        held = await pool.acquire("hog")
        order: list[str] = []

        async def one(key: str) -> None:
            replica = await pool.acquire(key)
            order.append(key)
            await asyncio.sleep(0)
            pool.release(replica)

        tasks = [asyncio.create_task(one("hog")) for _ in range(4)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(one("light")))
        await asyncio.sleep(0)
        pool.release(held)
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return order

    order = asyncio.run(scenario())
    assert order.index("light") <= 1, order  # not behind all four of the hog's requests


def test_a_wait_longer_than_the_time_left_is_shed_at_once() -> None:
    async def scenario() -> GatewayError:
        pool = _pool()
        pool.recent_s_per_token.append(0.1)  # requests have held a replica 0.1 s per token lately
        await pool.acquire("hog", tokens=300)  # should end in about 30 s
        deadline = asyncio.get_running_loop().time() + 5
        with pytest.raises(GatewayError) as err:
            await asyncio.wait_for(pool.acquire("light", deadline=deadline), 1)
        return err.value

    err = asyncio.run(scenario())
    assert err.status == 503 and int(err.headers["Retry-After"]) >= 29 and err.code == "overloaded"


def test_a_burst_of_short_requests_is_not_shed_because_of_long_ones_before() -> None:
    async def scenario() -> int:
        pool = _pool(replicas=2)
        pool.recent_s_per_token.extend([0.02, 1.5])  # long answers, and a one-token answer to a long prompt
        leases = [await pool.acquire("batch", tokens=2) for _ in range(2)]
        deadline = asyncio.get_running_loop().time() + 60
        waiting = [asyncio.create_task(pool.acquire("batch", deadline=deadline, tokens=2)) for _ in range(200)]
        await asyncio.sleep(0)
        for lease in leases:
            pool.release(lease)
        served = 0
        for task in waiting:
            pool.release(await asyncio.wait_for(task, 5))
            served += 1
        return served

    assert asyncio.run(scenario()) == 200


def test_a_cancelled_wait_leaves_the_books_right() -> None:
    async def scenario() -> int:
        pool = _pool()
        held = await pool.acquire("a")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(pool.acquire("b"), 0.05)
        pool.release(held)
        again = await asyncio.wait_for(pool.acquire("c"), 1)
        return again.replica.outstanding

    assert asyncio.run(scenario()) == 1
