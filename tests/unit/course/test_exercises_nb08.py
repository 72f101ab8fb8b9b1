"""Notebook 08's exercise checks accept the reference solutions and reject the starting answers and the
classic mistakes, each with a hint. The audit lines are the gateway's own records (AuditRecord), the PDB
is judged against the shipped gateway Deployment; the token-budget check needs a gateway and replicas,
so its verdict is proven by the notebook run and here only the part that never reaches a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from servelab.course.exercises import nb08, solutions_module
from servelab.course.grading import LabCheck
from servelab.gateway import KeyConfig, load_config
from servelab.gateway.audit import AuditRecord
from servelab.k8s import manifests
from servelab.paths import data_path, manifests_path

ROOT = Path(__file__).resolve().parents[3]
CAROL_KEY = "sk-exercise-carol"


SOLUTIONS = solutions_module("08_production_practices")


def _failed(checks: list[LabCheck]) -> dict[str, str]:
    assert checks
    failed = {c.name: c.hint for c in checks if not c.ok}
    assert all(hint.strip() for hint in failed.values())
    return failed


# --- Your turn 1 ---------------------------------------------------------------------------------------


def _reply(status: int, code: str | None = None) -> httpx.Response:
    body = {"error": {"code": code, "message": "m", "type": "t"}} if code else {"choices": []}
    return httpx.Response(status, json=body)


def test_the_reference_budget_is_carols_key_with_three_requests_of_the_body() -> None:
    key = SOLUTIONS.carol_token_budget
    assert isinstance(key, KeyConfig) and key.id == "carol"
    # The notebook's carol_body is charged 15 tokens: three fit, a fourth does not; requests are not the limit.
    assert 3 * 15 <= key.tokens_per_minute < 4 * 15 and key.requests_per_minute > 4


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        ("carol", "not a KeyConfig"),
        ({"id": "carol"}, "not a valid key entry"),
        (KeyConfig.from_secret("carol", "sk-some-other-key", tokens_per_minute=45), "not the hash of carol_key"),
        (KeyConfig.from_secret("bob", CAROL_KEY, tokens_per_minute=45), "already used"),
    ],
)
def test_a_key_the_gateway_would_not_use_is_refused_before_any_gateway_starts(answer: Any, fragment: str) -> None:
    config = load_config(data_path("gateway") / "config.yaml")
    checks = nb08.check_token_budget(answer, config, CAROL_KEY, {"prompt": "x"}, "sk-alice")
    assert any(fragment in hint for hint in _failed(checks).values())


def test_what_the_requests_show_about_the_budget() -> None:
    ok = [_reply(200)] * 3
    key = KeyConfig.from_secret("carol", CAROL_KEY, requests_per_minute=3)
    right = nb08._budget_checks("b", [*ok, _reply(429, "rate_limit_tokens")], _reply(200), 15, key)
    assert all(c.ok for c in right)
    # The starting answer: refused after three requests, but by the request budget.
    by_requests = _failed(nb08._budget_checks("b", [*ok, _reply(429, "rate_limit_requests")], _reply(200), 15, key))
    assert list(by_requests) == ["b: refused for tokens, not requests"]
    assert "requests_per_minute=3" in by_requests["b: refused for tokens, not requests"]
    too_big = _failed(nb08._budget_checks("b", [*ok, _reply(200)], _reply(200), 15, key))
    assert (
        "more than 3" in too_big["b: the next one gets a 429"] and "15 tokens" in too_big["b: the next one gets a 429"]
    )
    too_small = _failed(
        nb08._budget_checks("b", [*ok[:2], *[_reply(429, "rate_limit_tokens")] * 2], _reply(200), 15, key)
    )
    assert list(too_small) == ["b: the first 3 requests pass"]


# --- Your turn 2 ---------------------------------------------------------------------------------------


def _line(key_id: str | None, status: int, replica: str | None, outcome: str) -> dict[str, Any]:
    record = AuditRecord(request_id=f"{key_id}-{status}-{replica}-{outcome}", method="POST", path="/v1/completions")
    record.key_id, record.status, record.replica, record.outcome = key_id, status, replica, outcome
    return record.line()


LINES = [
    _line("alice", 200, "a", "ok"),
    _line("alice", 400, None, "bad_request"),
    _line("alice", 413, None, "too_large"),
    _line("alice", 429, None, "rate_limited"),
    _line("alice", 400, "b", "error"),  # the engine refused it: a replica got it
    _line("bob", 429, None, "rate_limited"),
    _line("bob", 200, "b", "ok"),
    _line(None, 401, None, "unauthorized"),
]


def _starting_answer(lines: list[dict[str, Any]], key_id: str) -> set[str]:
    return {line["request_id"] for line in lines if line["key_id"] == key_id and line["status"] >= 400}


def test_the_reference_finds_exactly_the_refused_requests_of_every_key() -> None:
    checks = nb08.check_refused_requests(SOLUTIONS.refused_requests, LINES)
    assert [c.name for c in checks] == ["refused_requests: alice", "refused_requests: bob"]
    assert all(c.ok for c in checks)


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (_starting_answer, "Not refused by the gateway: status 400 error, replica b"),
        (lambda lines, k: {x["request_id"] for x in lines if x["key_id"] == k and x["status"] == 429}, "Missed"),
        (lambda lines, k: "alice-400-None-bad_request", "return the request ids"),
        (lambda lines, k: 1 / 0, "ZeroDivisionError"),
    ],
    ids=["every error status", "429 only", "a string", "raises"],
)
def test_classic_audit_mistakes_fail_with_a_hint(answer: Any, fragment: str) -> None:
    failed = _failed(nb08.check_refused_requests(answer, LINES))
    assert any(fragment in hint for hint in failed.values()), failed


# --- Your turn 3 ---------------------------------------------------------------------------------------


def _deployment(path: str) -> dict[str, Any]:
    return next(d for d in manifests.load_documents(manifests_path() / path) if d["kind"] == "Deployment")


GATEWAY, ENGINES = (
    _deployment("gateway/deployment.yaml"),
    [_deployment("vllm/base/deployment.yaml"), _deployment("llamacpp/deployment.yaml")],
)
STARTING_PDB = """
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: gateway
  namespace: llm-serving
spec:
  minAvailable: 1
  selector:
    matchLabels:
      app.kubernetes.io/name: gateway
"""


def _pdb_checks(answer: str) -> list[LabCheck]:
    return nb08.check_launch_pdb(answer, 4, GATEWAY, ENGINES)


def test_the_reference_pdb_passes() -> None:
    assert all(c.ok for c in _pdb_checks(SOLUTIONS.launch_pdb))
    assert all(c.ok for c in _pdb_checks(STARTING_PDB.replace("minAvailable: 1", "maxUnavailable: 1")))


@pytest.mark.parametrize(
    ("answer", "fragment"),
    [
        (STARTING_PDB, "With 4 gateway pods a drain may evict 3"),
        (STARTING_PDB.replace("minAvailable: 1", "minAvailable: 3"), "With 2 gateway pods a drain may evict none"),
        (STARTING_PDB.replace("minAvailable: 1", 'maxUnavailable: "25%"'), "With 8 gateway pods a drain may evict 2"),
        (STARTING_PDB.replace("minAvailable: 1", "minAvailable: 1\n  maxUnavailable: 1"), "only one of them"),
        (STARTING_PDB.replace("name: gateway\n", "name: vllm\n"), "must match the gateway's pod labels"),
        ("kind: [", "Not valid YAML"),
        ("kind: Deployment", "kind PodDisruptionBudget"),
    ],
    ids=["the shipped minAvailable 1", "minAvailable 3", "25 percent", "both fields", "engine pods", "yaml", "kind"],
)
def test_pdb_mistakes_fail_with_a_hint(answer: str, fragment: str) -> None:
    failed = _failed(_pdb_checks(answer))
    assert any(fragment in hint for hint in failed.values()), failed


def test_allowed_disruptions_counts_like_the_disruption_controller() -> None:
    assert nb08.allowed_disruptions({"minAvailable": "75%"}, 4) == 1  # 3 must stay (a percentage rounds up)
    assert nb08.allowed_disruptions({"maxUnavailable": "25%"}, 6) == 2
    assert nb08.allowed_disruptions({"minAvailable": 5}, 4) == 0
    assert nb08.allowed_disruptions({}, 4) is None and nb08.allowed_disruptions({"minAvailable": "most"}, 4) is None
