"""Checks for the "Your turn" exercises of notebook 08 (production practices): each one grades what the
answer does, not how it is written.

- :func:`check_token_budget`: a key's per-minute token budget. The check starts a real gateway on the
  notebook's replicas with the learner's key added and sends it requests: the key must be refused with a
  429 *for tokens* after its budget, and another key must be unaffected.
- :func:`check_refused_requests`: a function over the audit log that finds the requests of one key the
  gateway answered with an error before any replica got them, compared, key by key, with what the
  gateway's own audit lines of this run say.
- :func:`check_launch_pdb`: a PodDisruptionBudget for the gateway scaled out, validated with
  :mod:`servelab.k8s.manifests` (the schemas, and that it selects the gateway's pods) and judged by the
  number of pods a drain may take at once.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import httpx
import yaml
from pydantic import ValidationError

from servelab.course.grading import LabCheck
from servelab.errors import ServelabError
from servelab.gateway import GatewayConfig, KeyConfig, hash_key
from servelab.gateway.launch import start_gateway
from servelab.gateway.validate import admit_body
from servelab.k8s import manifests

# --- Your turn 1: a token budget that refuses the right request ------------------------------------------

ADMITTED = 3  # requests of the exercise's body the key's budget must let through in a minute


def _as_key(answer: Any) -> KeyConfig | str:
    """The answer as a KeyConfig, or the reason it is not one (a dict is accepted, as the YAML would be)."""
    if isinstance(answer, KeyConfig):
        return answer
    if isinstance(answer, dict):
        try:
            return KeyConfig.model_validate(answer)
        except ValidationError as err:
            return f"it is not a valid key entry: {err.errors(include_url=False)[0]['msg']}"
    return f"it is a {type(answer).__name__}, not a KeyConfig"


def post_completion(url: str, raw_key: str, body: dict[str, Any], timeout: float = 60) -> httpx.Response:
    """One ``/completions`` request to the gateway at ``url`` with a tenant's raw key (notebook 08, lab 08)."""
    return httpx.post(url + "/completions", json=body, headers={"Authorization": f"Bearer {raw_key}"}, timeout=timeout)


def check_token_budget(
    answer: Any, config: GatewayConfig, raw_key: str, body: dict[str, Any], other_key: str
) -> list[LabCheck]:
    """``answer``: the learner's KeyConfig for ``raw_key``. Start a gateway with ``config``'s replicas and
    keys plus that one, send ``ADMITTED + 1`` requests of ``body`` with it, then one with ``other_key``."""
    name = "carol_token_budget"
    key = _as_key(answer)
    if isinstance(key, str):
        return [
            LabCheck(
                f"{name}: a key entry",
                False,
                f"Your answer is no key entry: {key}. Build it with "
                "KeyConfig.from_secret(id, carol_key, tokens_per_minute=...).",
            )
        ]
    checks = [
        LabCheck(
            f"{name}: a key entry for carol's key",
            key.sha256 == hash_key(raw_key),
            "Its sha256 is not the hash of carol_key, so the gateway would never recognise her requests: "
            "build it with KeyConfig.from_secret('carol', carol_key, ...).",
        ),
        LabCheck(
            f"{name}: an id of its own",
            key.id not in {k.id for k in config.keys},
            f"The id {key.id!r} is already used by a key of the notebook's config; give carol's key its own id.",
        ),
    ]
    if not all(c.ok for c in checks):
        return checks
    with tempfile.TemporaryDirectory(prefix="servelab-nb08-") as scratch:
        trial = config.model_copy(
            update={"keys": [*config.keys, key], "audit_path": str(Path(scratch) / "audit.jsonl")}
        )
        try:
            gateway = start_gateway(trial, ready_timeout=60)
        except ServelabError as err:
            return [*checks, LabCheck(f"{name}: the gateway starts", False, f"It did not start with your key: {err}")]
        with gateway:
            replies = [post_completion(gateway.base_url, raw_key, body) for _ in range(ADMITTED + 1)]
            other = post_completion(gateway.base_url, other_key, body)
    # What the gateway charges each of these requests at admission, by its own rule (the audit's tokens_charged).
    charged = admit_body("/v1/completions", body, config.models, config.default_max_tokens, config.context_tokens).cost
    return checks + _budget_checks(name, replies, other, charged, key)


def error_code(reply: httpx.Response) -> str | None:
    """The gateway's machine-readable reason for refusing (``error.code``, e.g. ``rate_limit``), if any."""
    try:
        return reply.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def _budget_checks(
    name: str, replies: list[httpx.Response], other: httpx.Response, charged: int, key: KeyConfig
) -> list[LabCheck]:
    """What the requests of carol (``replies``) and of another key (``other``) show about the budget."""
    seen = ", ".join(f"{r.status_code} {error_code(r) or ''}".strip() for r in replies)
    cost = f"each request of carol_body is charged {charged} tokens"
    admitted, last = replies[:ADMITTED], replies[ADMITTED]
    last_code = error_code(last)
    if last.status_code == 200:
        refused = f"the budget lets through more than {ADMITTED}: {cost}"
    else:
        refused = f"it got {last.status_code} {last_code}, not a 429"
    if last_code == "rate_limit_requests":
        why = (
            f"requests_per_minute={key.requests_per_minute} refused it: that is the request budget. The exercise "
            f"asks for a token budget: leave requests_per_minute at its default and set tokens_per_minute ({cost})"
        )
    else:
        why = f"it got {last.status_code} {last_code}, not 429 rate_limit_tokens ({cost})"
    return [
        LabCheck(
            f"{name}: the first {ADMITTED} requests pass",
            all(r.status_code == 200 for r in admitted),
            f"Carol's requests got: {seen}. Her budget does not let {ADMITTED} through: {cost} "
            "(the prompt's estimated tokens plus max_tokens, charged at admission).",
        ),
        LabCheck(
            f"{name}: the next one gets a 429",
            last.status_code == 429,
            f"Carol's requests got: {seen}. Request {ADMITTED + 1}: {refused}.",
        ),
        LabCheck(
            f"{name}: refused for tokens, not requests",
            last_code == "rate_limit_tokens",
            f"Request {ADMITTED + 1}: {why}.",
        ),
        LabCheck(
            f"{name}: another key is unaffected",
            other.status_code == 200,
            f"Alice's request got {other.status_code} {error_code(other) or ''}: budgets are per key, so carol's "
            "requests should leave hers untouched.",
        ),
    ]


# --- Your turn 2: the requests a key had refused, from the audit log ------------------------------------

RefusedRequests = Callable[[list[dict[str, Any]], str], Iterable[str]]


def refused_truth(lines: list[dict[str, Any]], key_id: str) -> set[str]:
    """The request ids of ``key_id`` that the gateway answered with an error and no replica ever got."""
    return {
        line["request_id"]
        for line in lines
        if line["key_id"] == key_id and line["status"] >= 400 and line["replica"] is None
    }


def _describe(lines: list[dict[str, Any]], ids: Iterable[str]) -> str:
    by_id = {line["request_id"]: line for line in lines}
    shown = [by_id[i] for i in sorted(ids) if i in by_id][:3]
    return "; ".join(f"status {x['status']} {x['outcome']}, replica {x['replica']}" for x in shown)


def check_refused_requests(answer: RefusedRequests, lines: list[dict[str, Any]]) -> list[LabCheck]:
    """Run ``answer`` on the audit ``lines`` for every key id they hold and compare with the truth."""
    name = "refused_requests"
    checks = []
    for key_id in sorted({line["key_id"] for line in lines if line["key_id"]}):
        truth = refused_truth(lines, key_id)
        try:
            found = answer(lines, key_id)
            got = set(found) if isinstance(found, Iterable) and not isinstance(found, str | bytes) else None
        except Exception as err:  # noqa: BLE001 -- the learner's code: whatever it raises is a hint
            checks.append(LabCheck(f"{name}: {key_id}", False, f"Your function raised {type(err).__name__}: {err}"))
            continue
        if got is None:
            hint = f"It returned {type(found).__name__}; return the request ids (a set or a list of strings)."
        else:
            extra, missing = got - truth, truth - got
            hint = f"For {key_id!r} it found {len(got)} requests, the audit log has {len(truth)}."
            if extra:
                hint += (
                    f" Not refused by the gateway: {_describe(lines, extra)} (a status of 400 or more with a replica "
                    "means an engine got the request: it failed, timed out or its client left)."
                )
            if missing:
                hint += f" Missed: {_describe(lines, missing)} (every error status the gateway answered itself)."
        checks.append(LabCheck(f"{name}: {key_id}", got == truth, hint))
    return checks or [LabCheck(f"{name}: audit lines", False, "The audit log holds no keyed request yet: run §3-§8.")]


# --- Your turn 3: a PodDisruptionBudget for the gateway at launch scale ---------------------------------


def allowed_disruptions(spec: dict[str, Any], replicas: int) -> int | None:
    """How many of ``replicas`` healthy pods a drain may evict at once under the PDB ``spec``, as the
    disruption controller counts (a percentage rounds up); None when it sets neither field or a bad one."""

    def scaled(value: Any) -> int | None:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.endswith("%") and value[:-1].isdigit():
            return math.ceil(int(value[:-1]) * replicas / 100)
        return None

    if "maxUnavailable" in spec:
        most = scaled(spec["maxUnavailable"])
        return None if most is None else max(0, min(replicas, most))
    least = scaled(spec.get("minAvailable"))
    return None if least is None else max(0, replicas - least)


def _pod_labels(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def check_launch_pdb(
    answer: str, replicas: int, deployment: dict[str, Any], others: list[dict[str, Any]]
) -> list[LabCheck]:
    """``answer``: PDB YAML for the gateway's ``deployment``, scaled to ``replicas`` for a launch: a drain
    must be able to evict exactly one gateway pod at a time, at the Deployment's own count, at ``replicas``
    and at twice that. ``others``: Deployments the PDB must not select."""
    name = "launch_pdb"
    try:
        doc = yaml.safe_load(answer)
    except yaml.YAMLError as err:
        return [LabCheck(f"{name}: YAML", False, f"Not valid YAML: {err}")]
    if not isinstance(doc, dict) or doc.get("kind") != "PodDisruptionBudget":
        return [LabCheck(f"{name}: a PodDisruptionBudget", False, "Write one document of kind PodDisruptionBudget.")]
    problems = [p.message for p in manifests.validate_document(doc, "your PDB")]
    spec = doc["spec"] if isinstance(doc.get("spec"), dict) else {}
    if {"minAvailable", "maxUnavailable"} <= spec.keys():
        problems.append("it sets both minAvailable and maxUnavailable; the API server accepts only one of them")
    selector = spec["selector"] if isinstance(spec.get("selector"), dict) else {}
    labels = _pod_labels(deployment)
    # Today's count, the launch's, and twice that: "whatever the replica count" is what is graded.
    counts = sorted({deployment["spec"]["replicas"], replicas, 2 * replicas})
    allowed = {n: None if problems else allowed_disruptions(spec, n) for n in counts}
    wrong = {n: a for n, a in allowed.items() if a != 1}
    if problems:
        judged = "Not judged yet: first make it valid (the check above says what is wrong)."
    elif any(a is None for a in allowed.values()):
        judged = 'It sets no usable minAvailable or maxUnavailable (a number, or a percentage such as "25%").'
    else:
        judged = "; ".join(
            f"with {n} gateway pods a drain may evict {a or 'none (it blocks every drain and node upgrade)'}"
            for n, a in wrong.items()
        )
        judged = judged[:1].upper() + judged[1:] + "."
    return [
        LabCheck(f"{name}: valid for Kubernetes", not problems, "; ".join(problems[:3])),
        LabCheck(
            f"{name}: selects the gateway's pods",
            manifests.selector_matches(selector, labels)
            and not any(manifests.selector_matches(selector, _pod_labels(d)) for d in others),
            f"Its selector {selector} must match the gateway's pod labels {labels} (deployment.yaml) and no "
            "engine's pods; otherwise it protects nothing, or the wrong pods.",
        ),
        LabCheck(
            f"{name}: a drain takes one gateway pod at a time",
            not wrong,
            judged + " Which of minAvailable and maxUnavailable keeps meaning one pod when the replica count changes?",
        ),
    ]
