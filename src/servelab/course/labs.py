"""Automatic checks for the hands-on labs: each check says what passed and, when not, a hint.

A lab calls one ``check_*`` function on the learner's answer and :func:`report` shows the verdict: a
table of checks with a hint beside each one that fails. A failing check is the normal state of an
unsolved exercise, so it never raises: the learner reads hints, not a traceback. The score goes to
``results/<lab>.json``, where the test suite reads it twice: on the untouched starting point (some
checks must fail, each with a hint, which proves they can) and on the reference solution (all pass).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import yaml

from servelab.k8s import manifests

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class LabCheck:
    name: str
    ok: bool
    hint: str


def report(checks: list[LabCheck], lab: str) -> pd.DataFrame:
    """Record the score in ``results/<lab>.json``, print the verdict, and return the checks as a table."""
    import pandas as pd

    from servelab import results

    failed = [c for c in checks if not c.ok]
    results.record(
        lab,
        checks_total=len(checks),
        checks_passed=len(checks) - len(failed),
        failed=[c.name for c in failed],
        hints={c.name: c.hint for c in failed},
    )
    if failed:
        passed = len(checks) - len(failed)
        print(f"Not yet: {passed} of {len(checks)} checks pass. Fix the rows marked NO, then run again.")
    else:
        print(f"All {len(checks)} checks pass.")
    return pd.DataFrame(
        [{"check": c.name, "passed": "yes" if c.ok else "NO", "hint": "" if c.ok else c.hint} for c in checks]
    )


def check_vllm_deployment(yaml_text: str) -> list[LabCheck]:
    """Lab 01: is this a Deployment of vLLM that Kubernetes accepts and that serves reliably?"""
    try:
        docs = [d for d in yaml.safe_load_all(yaml_text) if d]
    except yaml.YAMLError as err:
        return [LabCheck("YAML parses", False, f"fix the YAML syntax: {err}")]
    deployments = [d for d in docs if isinstance(d, dict) and d.get("kind") == "Deployment"]
    if len(deployments) != 1:
        return [LabCheck("exactly one Deployment", False, f"found {len(deployments)}; keep one Deployment")]
    doc = deployments[0]
    problems = manifests.validate_document(doc, "your manifest")
    versions = ", ".join(v.removesuffix(".0") for v in manifests.K8S_VERSIONS)
    schema = [p for p in problems if p.version]
    rules = [p for p in problems if not p.version]
    container = (((doc.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers", [{}])[0]
    probes = [container.get(k) or {} for k in ("startupProbe", "readinessProbe", "livenessProbe")]
    image = str(container.get("image", ""))
    return [
        LabCheck(
            f"valid for Kubernetes {versions}", not schema, "; ".join(dict.fromkeys(p.message for p in schema)) or ""
        ),
        LabCheck(
            "serving rules (selector, 2+ replicas, probes, requests)",
            not rules,
            "; ".join(p.message for p in rules) or "",
        ),
        LabCheck(
            "startupProbe gives the model time to load",
            bool(probes[0]),
            "add a startupProbe on /health (e.g. periodSeconds 10, failureThreshold 60)",
        ),
        LabCheck(
            "all probes call GET /health",
            all(p.get("httpGet", {}).get("path") == "/health" for p in probes),
            "vLLM answers /health with 200 once the model is loaded: point every probe there",
        ),
        LabCheck(
            "a current vLLM image",
            image.startswith("vllm/") and not image.endswith(":v0.3.0"),
            "v0.3.0 predates the V1 engine: use a current vllm/vllm-openai tag",
        ),
    ]
