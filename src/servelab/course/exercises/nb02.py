"""Notebook 02's exercises: reading the live ``/metrics`` page, and a Deployment the running vLLM passes.

Each check grades an outcome of this run, never a string typed here:

- :func:`check_metric_value`: a function that reads one metric from the exposition text, graded against
  the package's parser (:func:`servelab.observe.metrics.samples`, prometheus-client's own) on the text the
  notebook scraped after its requests. A series carries labels, so a metric is several samples: summing
  the ones that match, as PromQL's ``sum()`` does, is the part a line-by-line reader gets wrong.
- :func:`check_max_concurrency`: vLLM's "maximum concurrency" (KV-cache tokens / ``--max-model-len``) from
  the ``vllm:cache_config_info`` metric, whose figures are labels. Graded against the figure vLLM exports
  and logs at start, and, at a shorter length, against the kit's formula.
- :func:`check_vllm_deployment`: a Deployment for vLLM, graded by the kit's validator
  (:func:`servelab.k8s.manifests.validate_document`: schemas of every Kubernetes version the kit targets,
  and its serving policy), by asking the still-running vLLM each path the probes name, and by comparing
  the start-up allowance with the start-up time measured in this run.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import yaml

from servelab.course.grading import LabCheck
from servelab.k8s import docs, manifests
from servelab.k8s import probes as k8s_probes
from servelab.memory import kvcache
from servelab.observe import metrics

# --- Your turn 1: one metric from the /metrics text -------------------------------------------------

MetricValue = Callable[..., Any]
GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
REQUESTS = "vllm:request_success_total"  # one series per finished_reason
LATENCY_COUNT = "vllm:e2e_request_latency_seconds_count"  # a histogram's count: one per finished request
ABSENT = "vllm_queue_size"  # a name from older guides that no vLLM exports


def _package_value(text: str, name: str, labels: Mapping[str, str] | None = None) -> float:
    """What the package's parser reads: the samples named ``name`` whose labels include ``labels``, summed."""
    wanted = dict(labels or {})
    return float(
        sum(
            value
            for sample, have, value in metrics.samples(text)
            if sample == name and all(have.get(k) == v for k, v in wanted.items())
        )
    )


def _call(answer: Callable[..., Any], function: str, text: str, *args: Any) -> tuple[Any, str]:
    """The answer's value for ``(text, *args)`` and the call as a hint shows it; what it raises is reported."""
    call = f"{function}(text, {', '.join(repr(a) for a in args)})"
    try:
        return answer(text, *args), call
    except Exception as err:  # noqa: BLE001 -- the learner's code: what it raises is the hint
        return f"{type(err).__name__}: {err}", call


def _same(got: Any, want: float) -> bool:
    """A real number (not a bool, not None) equal to ``want``."""
    return isinstance(got, (int, float)) and not isinstance(got, bool) and math.isclose(got, want, abs_tol=1e-9)


def check_metric_value(answer: MetricValue, text: str) -> list[LabCheck]:
    """Grade ``metric_value(text, name, labels=None) -> float`` on the ``/metrics`` text this run scraped:
    idle gauges, a counter with one series per finished_reason (the requests the notebook sent, each
    counted once under the reason it finished for), a label selection, a histogram's count, an absent name."""
    checks: list[LabCheck] = []
    wrong = []
    for name in GAUGES:
        got, call = _call(answer, "metric_value", text, name)
        if not _same(got, _package_value(text, name)):
            wrong.append(f"{call} gave {got!r}, the parser reads {_package_value(text, name)!r}")
    checks.append(
        LabCheck(
            "gauges read as the package's parser reads them",
            not wrong,
            "; ".join(wrong) + ". Return the sample's value as a float (the number after the labels).",
        )
    )

    got, call = _call(answer, "metric_value", text, REQUESTS)
    reasons = sorted({labels["finished_reason"] for name, labels, _ in metrics.samples(text) if name == REQUESTS})
    finished = _package_value(text, REQUESTS)
    checks.append(
        LabCheck(
            f"{REQUESTS} sums its series: the {finished:g} requests vLLM finished",
            _same(got, finished),
            f"{call} gave {got!r}. vLLM exports one series per finished_reason ({', '.join(reasons)}); "
            "sum every series with this name, as PromQL's sum() does, instead of taking one line.",
        )
    )

    wrong = []
    for reason in reasons:
        labels = {"finished_reason": reason}
        got, call = _call(answer, "metric_value", text, REQUESTS, labels)
        if not _same(got, _package_value(text, REQUESTS, labels)):
            wrong.append(f"{call} gave {got!r}, the parser reads {_package_value(text, REQUESTS, labels)!r}")
    checks.append(
        LabCheck(
            'labels select series, as {finished_reason="..."} does in PromQL',
            not wrong,
            "; ".join(wrong) + ". Keep only the samples whose labels include every given label=value pair.",
        )
    )

    got, call = _call(answer, "metric_value", text, LATENCY_COUNT)
    counted = _package_value(text, LATENCY_COUNT)
    checks.append(
        LabCheck(
            f"a histogram's _count: {LATENCY_COUNT} counts the same requests",
            _same(got, counted),
            f"{call} gave {got!r}, the parser reads {counted!r}. Match the sample name exactly: the histogram also "
            "has _sum, _bucket and _created samples.",
        )
    )

    got, call = _call(answer, "metric_value", text, ABSENT)
    checks.append(
        LabCheck(
            "a name the server does not export reads 0.0",
            _same(got, 0.0),
            f"{call} gave {got!r}. No sample has this name, so the sum is 0.0 (what Prometheus' sum() of "
            "nothing looks like on a dashboard); return 0.0, not None.",
        )
    )
    return checks


# --- Your turn 2: how many full-length requests the KV cache holds --------------------------------

CACHE_INFO = "vllm:cache_config_info"  # an "info" metric: value 1, the figures are in its labels
MaxConcurrency = Callable[[str, int], Any]


def check_max_concurrency(answer: MaxConcurrency, text: str, vllm_log: str, max_model_len: int) -> list[LabCheck]:
    """Grade ``max_concurrency(text, max_model_len) -> float`` against vLLM's own figure for this run.

    vLLM reports it twice: the ``kv_cache_max_concurrency`` label of ``vllm:cache_config_info`` and the
    "Maximum concurrency" line of its start-up log (:func:`servelab.memory.kvcache.parse_vllm_kv_log`).
    A second, shorter length is graded by the kit's formula (:func:`servelab.memory.kvcache.max_concurrency`),
    so an answer that reads vLLM's figure back, instead of computing it, fails there.
    """
    info = next((labels for name, labels, _ in metrics.samples(text) if name == CACHE_INFO), None)
    if info is None or not info.get("kv_cache_size_tokens", "").isdigit():
        return [
            LabCheck(
                f"{CACHE_INFO} is exported",
                False,
                f"This /metrics text has no {CACHE_INFO} with "
                "kv_cache_size_tokens: scrape a running vLLM (section 3) and run again.",
            )
        ]
    tokens, block = int(info["kv_cache_size_tokens"]), info.get("block_size", "?")
    logged = kvcache.parse_vllm_kv_log(vllm_log)
    shorter = max_model_len // 4

    hint = (
        f"The cache holds {tokens} tokens (label kv_cache_size_tokens) in blocks of {block} tokens (num_gpu_blocks "
        "counts blocks, not tokens); a request may grow to max_model_len tokens."
    )
    got, call = _call(answer, "max_concurrency", text, max_model_len)
    reported = float(info.get("kv_cache_max_concurrency", "nan"))
    checks = [
        LabCheck(
            "equals the kv_cache_max_concurrency vLLM exports",
            _same(got, reported),
            f"{call} gave {got!r}, vLLM exports {reported!r}. {hint}",
        ),
        LabCheck(
            "equals the 'Maximum concurrency' line of vLLM's start-up log",
            logged["request_tokens"] == max_model_len
            and _same(got, reported)
            and f"{got:.2f}" == f"{logged['max_concurrency']:.2f}",  # the log prints two decimals
            f"{call} gave {got!r}; the log says {logged['max_concurrency']:g} for {logged['request_tokens']:g} "
            f"tokens per request. {hint}",
        ),
    ]
    got, call = _call(answer, "max_concurrency", text, shorter)
    want = kvcache.max_concurrency(tokens, shorter)
    checks.append(
        LabCheck(
            f"at a shorter --max-model-len ({shorter}), equals the kit's formula",
            _same(got, want),
            f"{call} gave {got!r}, the formula gives {want:g}: compute it from max_model_len, "
            "do not read vLLM's figure back (it is for the length vLLM was started with).",
        )
    )
    return checks


# --- Your turn 3: a Deployment the running vLLM passes ----------------------------------------------


def check_vllm_deployment(answer: str, vllm_url: str, ready_s: float) -> list[LabCheck]:
    """Grade a Deployment (YAML text) for vLLM.

    ``vllm_url`` is the vLLM this notebook started, still running: every probe path is asked there.
    ``ready_s`` is how long that vLLM took to become ready in this run; the startup probe must allow at
    least that, or Kubernetes would restart the pod before the model had loaded.
    """
    try:
        documents = [d for d in yaml.safe_load_all(answer) if d is not None] if isinstance(answer, str) else []
    except yaml.YAMLError as err:
        return [LabCheck("parses as YAML", False, f"Not valid YAML: {err}")]
    deployments = [d for d in documents if isinstance(d, dict) and d.get("kind") == "Deployment"]
    if len(deployments) != 1:
        return [
            LabCheck(
                "one Deployment",
                False,
                f"Found {len(deployments)} Deployment objects in {len(documents)} documents; write exactly one "
                "(kind: Deployment, apiVersion: apps/v1) as a YAML string.",
            )
        ]
    deployment = deployments[0]
    problems = manifests.validate_document(deployment, "your Deployment")
    checks = [
        LabCheck(
            f"the kit's validator finds no problem (Kubernetes {', '.join(manifests.K8S_VERSIONS)})",
            not problems,
            " | ".join(manifests.distinct_problems(problems))
            + ". manifests/vllm/base/deployment.yaml passes the same validator.",
        )
    ]
    containers = [c for c in docs.listing(docs.get(deployment, "spec.template.spec.containers")) if isinstance(c, dict)]
    if not containers:
        return [*checks, LabCheck("a container", False, "spec.template.spec.containers lists no container.")]
    container = containers[0]
    listens = k8s_probes.listen_port(container)
    probes = {
        name: docs.mapping(container.get(name)) for name in k8s_probes.PROBES if isinstance(container.get(name), dict)
    }

    asked, wrong_path, wrong_port = [], [], []
    for name, probe in probes.items():
        path = docs.get(probe, "httpGet.path")
        if not isinstance(path, str):
            wrong_path.append(f"{name} has no httpGet.path")
            continue
        status = k8s_probes.http_status(vllm_url + path)
        asked.append(f"{name} {path} -> {status}")
        if status != "200":
            wrong_path.append(f"{name} asks {path}, which the running vLLM answers {status}")
        port = k8s_probes.probe_port(probe, container)
        if port is None or port != listens:
            wrong_port.append(f"{name} calls port {docs.get(probe, 'httpGet.port')!r} ({port})")
    missing = [name for name in k8s_probes.PROBES if name not in probes]
    checks.append(
        LabCheck(
            "every probe asks a path the running vLLM answers 200",
            not missing and not wrong_path,
            "; ".join([*(f"no {m}" for m in missing), *wrong_path])
            + ". Section 2 shows the route vLLM serves for health checks; a probe on a route it does not "
            "serve fails forever (never ready, restarted over and over).",
        )
    )
    checks.append(
        LabCheck(
            f"the probes call the port vLLM listens on ({listens})",
            bool(probes) and listens is not None and not wrong_port,
            ("; ".join(wrong_port) or "no probe to check")
            + f". vLLM listens on its --port ({listens} here); name that containerPort (or give its number) "
            "in each probe's httpGet.port.",
        )
    )
    startup = probes.get("startupProbe", {})
    allowance = {key: startup.get(key, default) for key, default in k8s_probes.PROBE_DEFAULTS.items()}
    budget = (
        allowance["initialDelaySeconds"] + allowance["periodSeconds"] * allowance["failureThreshold"]
        if all(isinstance(v, int) for v in allowance.values())
        else 0
    )
    checks.append(
        LabCheck(
            f"the startup probe allows the start-up time measured here ({ready_s:.0f} s)",
            bool(startup) and budget >= ready_s,
            (f"startupProbe allows {budget} s" if startup else "no startupProbe: only the liveness probe's patience")
            + f", and vLLM took {ready_s:.0f} s to become ready in this run (a larger model takes minutes). "
            "The allowance is initialDelaySeconds + periodSeconds x failureThreshold.",
        )
    )
    return checks
