"""Lab 01: the seed's vLLM Deployment, checked against every Kubernetes schema the kit knows and the
serving rules the kit's own manifests follow (selector, replicas, probes, requests, a current image)."""

from __future__ import annotations

import yaml

from servelab.course.grading import LabCheck
from servelab.k8s import manifests


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
