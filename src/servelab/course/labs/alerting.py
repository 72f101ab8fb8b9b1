"""Lab 06: a queue alert that pages when the autoscaler is losing, and only then.

The learner's rule is graded on what it does, not on how it is written: Prometheus's own rule engine
(``promtool test rules``) replays three made-up fleets through it and reports whether it fired.

- A big fleet where every pod sits at the HPA's target: the autoscaler is winning, so silence. A sum
  over pods (the seed's habit) grows with the fleet and pages here.
- A few pods held far above the target for half an hour: the autoscaler is losing, so page.
- A short burst the HPA works off within minutes: silence, which only a ``for:`` gives.

The fleets are built from the HPA in ``manifests/vllm/base/hpa.yaml`` and the kit's alert defaults,
so the lab follows the manifests if they change. Metric names are checked against what vLLM really
exports (``data/reference/vllm_metric_names.txt``, kept current by a live test).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from servelab.course.grading import LabCheck
from servelab.observe import alerts, promql, promtool
from servelab.paths import data_path

STEP = "15s"  # the scrape and evaluation interval of every fleet (the kit's Prometheus uses 15 s)
STEPS_PER_MINUTE = 4


def vllm_metric_names_path() -> Path:
    """vLLM's exported sample and family names (``vllm:`` prefix), one per line, from a live server."""
    return data_path("reference", "vllm_metric_names.txt")


def vllm_metric_names() -> set[str]:
    lines = vllm_metric_names_path().read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


@dataclass(frozen=True)
class Fleet:
    """Pods' ``vllm:num_requests_waiting`` over time, and when the alert must (not) be firing."""

    name: str
    # one promtool values string per pod, e.g. "3x120" (3 waiting for 120 steps of 15 s)
    pods: tuple[str, ...]
    # (minutes after the start, must the alert be firing then?)
    expect: tuple[tuple[int, bool], ...]
    hint: str

    def series(self) -> list[dict[str, str]]:
        return [
            {
                "series": f'vllm:num_requests_waiting{{job="vllm", instance="10.0.0.{i + 1}:8000", '
                f'model_name="smollm2-135m-instruct", engine="0"}}',
                "values": values,
            }
            for i, values in enumerate(self.pods)
        ]


def fleets() -> list[Fleet]:
    """The three fleets, sized from the HPA's target and the kit's alert threshold and duration."""
    defaults = alerts.default_thresholds()
    target, threshold = float(defaults["hpa_queue_target"]), float(defaults["queue_threshold"])
    duration = 30 * STEPS_PER_MINUTE
    # 120 pods alternating 1 and 0 waiting: exactly the target per pod on average, 60 in all.
    at_target = tuple(f"{1 if i % 2 else 0}x{duration}" for i in range(int(120 * target * 2)))
    losing = (threshold + 1.5, threshold + 1.5, threshold + 1, threshold + 2)
    burst = 4 * STEPS_PER_MINUTE
    return [
        Fleet(
            f"silent: {len(at_target)} pods at the HPA's target ({target:g} waiting per pod on average)",
            at_target,
            ((5, False), (15, False), (29, False)),
            f"your rule fired while every pod sat at the HPA's target ({len(at_target)} pods, {target:g} waiting "
            f"each on average, {len(at_target) * target:g} in all): the autoscaler was winning. A sum over pods "
            "grows with the fleet; average per pod instead (sum by (model_name, instance), then avg by (model_name)).",
        ),
        Fleet(
            f"fires: 4 pods at {sum(losing) / 4:g} waiting each for 30 minutes",
            tuple(f"{v:g}x{duration}" for v in losing),
            ((25, True),),
            f"your rule stayed silent while 4 pods held {sum(losing) / 4:g} waiting each for 30 minutes, "
            f"{sum(losing) / 4 / target:g} x the HPA's target: check the metric name (vllm:num_requests_waiting), "
            f"a threshold above the target but below that ({threshold:g} = {defaults['queue_target_factor']} x the "
            "target), and a `for:` of at most 20m.",
        ),
        Fleet(
            "silent: a 4-minute burst of 8 waiting per pod that the HPA works off",
            tuple(f"8x{burst} 0x{duration - burst}" for _ in range(4)),
            ((2, False), (5, False), (10, False)),
            "your rule paged for a 4-minute burst that the autoscaler absorbed: add `for:` longer than the HPA "
            f"needs to add pods (the kit uses {defaults['queue_for']}).",
        ),
    ]


def _expand(values: str) -> list[float]:
    """promtool's ``a x n`` notation: ``n + 1`` samples of ``a`` (the only form the fleets use)."""
    out: list[float] = []
    for term in values.split():
        value, _, repeat = term.partition("x")
        out += [float(value)] * (int(repeat) + 1 if repeat else 1)
    return out


def average_per_pod(fleet: Fleet) -> tuple[list[float], list[float]]:
    """(minutes, waiting per pod averaged over the pods): what the HPA sees of a fleet, for a plot."""
    pods = [_expand(values) for values in fleet.pods]
    steps = min(len(p) for p in pods)
    minutes = [i / STEPS_PER_MINUTE for i in range(steps)]
    return minutes, [sum(p[i] for p in pods) / len(pods) for i in range(steps)]


def _firing_expr(alert: str) -> str:
    return f'clamp_max(count(ALERTS{{alertname="{alert}", alertstate="firing"}}) or vector(0), 1)'


def _replay(rules_file: Path, rule: dict[str, Any], fleet: Fleet, index: int) -> bool:
    test = {
        "rule_files": [rules_file.name],
        "evaluation_interval": STEP,
        "tests": [
            {
                "name": fleet.name,
                "interval": STEP,
                "input_series": fleet.series(),
                "promql_expr_test": [
                    {
                        "expr": _firing_expr(str(rule["alert"])),
                        "eval_time": f"{minute}m",
                        "exp_samples": [{"labels": "{}", "value": int(firing)}],
                    }
                    for minute, firing in fleet.expect
                ],
            }
        ],
    }
    test_file = rules_file.with_name(f"fleet-{index}.test.yaml")
    test_file.write_text(yaml.safe_dump(test, sort_keys=False))
    ok, _ = promtool.test_rules(test_file)
    return ok


def _parse(rule_text: str) -> tuple[dict[str, Any] | None, str]:
    try:
        doc = yaml.safe_load(rule_text)
    except yaml.YAMLError as err:
        return None, f"fix the YAML syntax: {err}"
    if isinstance(doc, list) and len(doc) == 1:
        doc = doc[0]  # a rule pasted with its leading "- "
    if not isinstance(doc, dict) or not doc.get("alert") or not doc.get("expr"):
        return None, "write one rule: a mapping with `alert:` (its name) and `expr:` (the PromQL), as in the seed"
    return doc, ""


def check_queue_alert(rule_text: str) -> list[LabCheck]:
    """Lab 06: does this one alerting rule page when the autoscaler is losing, and only then?"""
    rule, problem = _parse(rule_text)
    if rule is None:
        return [LabCheck("one alerting rule in YAML", False, problem)]
    with tempfile.TemporaryDirectory(prefix="servelab-lab06-") as tmp:
        rules_file = Path(tmp) / "rules.yaml"
        rules_file.write_text(yaml.safe_dump({"groups": [{"name": "lab06", "rules": [rule]}]}, sort_keys=False))
        valid, output = promtool.check_rules(rules_file)
        if not valid:
            return [LabCheck("Prometheus accepts the rule", False, f"promtool check rules says: {output[-600:]}")]
        replays = [(fleet, _replay(rules_file, rule, fleet, i)) for i, fleet in enumerate(fleets())]
    expr = str(rule["expr"])
    unknown = sorted(n for n in promql.metric_names(expr) if n.startswith("vllm") and n not in vllm_metric_names())
    labels = rule.get("labels") or {}
    annotations = rule.get("annotations") or {}
    return [
        LabCheck("Prometheus accepts the rule", True, ""),
        LabCheck(
            "every metric is one vLLM exports",
            not unknown,
            f"vLLM does not export {', '.join(unknown)}: its names start with 'vllm:' (a colon), "
            f"e.g. vllm:num_requests_waiting; see {vllm_metric_names_path().name}",
        ),
        *(LabCheck(fleet.name, ok, fleet.hint) for fleet, ok in replays),
        LabCheck(
            "a severity label to route on",
            str(labels.get("severity", "")) in {"info", "warning", "critical"},
            "add `labels: {severity: warning}`: Alertmanager routes and inhibits on it",
        ),
        LabCheck(
            "a summary for the person paged",
            bool(str(annotations.get("summary", "")).strip()),
            "add `annotations: {summary: ...}`; {{ $value }} and {{ $labels.model_name }} make it specific",
        ),
    ]
