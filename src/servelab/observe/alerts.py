"""The engines' alert rules kept once and rendered two ways: a plain rules file and a PrometheusRule.

Why this module exists: alert rules written twice (a plain Prometheus rules file for a local
Prometheus, a PrometheusRule for the Prometheus Operator in Kubernetes) drift apart, and a rule whose
PromQL or metric name is wrong never fires and nobody notices. So the rules live once, in
``manifests/monitoring/alert-rules.source.yaml``, with their production thresholds; this module
renders both forms from it, writes the two committed manifests, and lists the metric names the rules
use (through :mod:`servelab.observe.promql`, so a test can check them against a live engine's
``/metrics``). :mod:`servelab.observe.promtool` checks their syntax and runs their unit tests.

Each rule belongs to one group, one per engine: ``vllm-serving`` (vLLM, the source's default ``group:``,
always rendered first) and ``llamacpp-serving`` (llama.cpp's native ``llama-server``, manifests/llamacpp).

Thresholds are parameters so a notebook can render a quick variant (a shorter ``for``) into a
temporary file for a local Prometheus, while the production values stay in the manifests. The queue
values are never typed in the source: ``hpa_queue_target`` is read from the HPA manifest the source names
(``hpa:``), and ``queue_threshold`` is that target times ``queue_target_factor``, so the queue alert
follows the autoscaler it watches (:func:`hpa_queue_target`); llama.cpp's pair,
``llamacpp_hpa_queue_target`` and ``llamacpp_queue_threshold``, comes the same way from the HPA named by
``llamacpp_hpa:`` (:data:`QUEUE_TARGETS`). :func:`scaled_durations` shortens every ``for`` and rate window
by one factor for a test that needs the production thresholds in seconds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from servelab.errors import ServelabError
from servelab.observe.promql import DURATION, duration_seconds, metric_names
from servelab.paths import manifests_path

__all__ = [
    "DERIVED",
    "LLAMACPP_GROUP",
    "QUEUE_TARGETS",
    "VLLM_GROUP",
    "AlertRule",
    "QueueTarget",
    "default_thresholds",
    "format_duration",
    "group_names",
    "hpa_path",
    "hpa_queue_target",
    "load_rules",
    "monitoring_dir",
    "render_plain_text",
    "render_prometheus_rule",
    "render_prometheus_rule_text",
    "render_rules",
    "rule_metric_names",
    "scaled_durations",
    "source_path",
    "write_rendered",
    "write_rules_file",
]

PLAIN_FILE = "prometheus-rules.yaml"
CRD_FILE = "prometheusrule.yaml"
SOURCE_FILE = "alert-rules.source.yaml"
SEVERITIES = ("critical", "warning", "info")
VLLM_GROUP = "vllm-serving"  # the source's default `group:`
LLAMACPP_GROUP = "llamacpp-serving"
HPA_METRIC = "vllm_num_requests_waiting"  # prometheus-adapter's name for vllm:num_requests_waiting
LLAMACPP_HPA_METRIC = "llamacpp_requests_deferred"  # ... and for llamacpp:requests_deferred


@dataclass(frozen=True)
class QueueTarget:
    """A queue threshold derived from an HPA, never typed: the source key naming the HPA file, the Pods
    metric that HPA must scale on, and the placeholders filled from it (``threshold`` = ``target`` x
    the ``factor`` default)."""

    key: str
    metric: str
    target: str
    threshold: str
    factor: str = "queue_target_factor"


QUEUE_TARGETS = (
    QueueTarget("hpa", HPA_METRIC, "hpa_queue_target", "queue_threshold"),
    QueueTarget("llamacpp_hpa", LLAMACPP_HPA_METRIC, "llamacpp_hpa_queue_target", "llamacpp_queue_threshold"),
)
# Placeholders computed at render time instead of typed under `defaults:` (see the source's header).
DERIVED = {
    **{
        q.target: f"the target averageValue ({q.metric} per pod) of the HPA the source's `{q.key}:` names"
        for q in QUEUE_TARGETS
    },
    **{q.threshold: f"{q.target} x {q.factor}" for q in QUEUE_TARGETS},
}
_DECIMAL_SUFFIX = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_QUANTITY = re.compile(r"^([+-]?(?:\d+\.?\d*|\.\d+))([numkMGTPE]?|[eE][+-]?\d+)$")

# `{name}` (not `{{ name }}`, not a label matcher, which always holds an operator) is a threshold slot.
_PLACEHOLDER = re.compile(r"(?<!\{)\{([a-z][a-z0-9_]*)\}(?!\})")
_RULE_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")


@dataclass(frozen=True)
class AlertRule:
    """One alert as written in the source file, before thresholds are filled in.

    ``expr``, ``for_`` and the texts may hold ``{placeholder}`` slots; ``runbook`` is the short "what
    to check, what to do" text that ends up as an annotation so whoever is paged reads it in the alert.
    ``group`` is the rule group it is rendered in (one per engine).
    """

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str
    group: str = VLLM_GROUP

    def placeholders(self) -> set[str]:
        """Threshold names this rule needs, so a missing default is caught at load time, not in Prometheus."""
        text = " ".join((self.expr, self.for_, self.summary, self.description, self.runbook))
        return set(_PLACEHOLDER.findall(text))


def monitoring_dir() -> Path:
    """``manifests/monitoring`` of the checkout: where the source and the two rendered files live."""
    return manifests_path("monitoring")


def source_path() -> Path:
    """The single source of the rules (``manifests/monitoring/alert-rules.source.yaml``)."""
    return monitoring_dir() / SOURCE_FILE


def _read_source(source: str | Path | None) -> dict[str, Any]:
    path = Path(source) if source is not None else source_path()
    if not path.is_file():
        raise ServelabError(
            f"alert rule source {path} does not exist",
            f"run from the checkout, or pass source= (expected {source_path()})",
        )
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise ServelabError(f"{path} has no `rules:` list", "see manifests/monitoring/alert-rules.source.yaml")
    return data


def _one_line(text: Any) -> str:
    """Folded YAML leaves a trailing newline and an embedded one can sneak in; annotations read better flat."""
    return " ".join(str(text).split())


def load_rules(source: str | Path | None = None, group: str | None = None) -> list[AlertRule]:
    """Read and validate the rules of the source file (the checkout's one by default); ``group`` keeps
    only that group's rules (e.g. :data:`VLLM_GROUP`, what a vLLM-only check or dashboard reads).

    Validation happens here, in Python, so a typo (unknown severity, a placeholder with no default,
    a duplicate name) is reported with the rule's name instead of surfacing as a rule that never fires.
    """
    data = _read_source(source)
    defaults = data.get("defaults") or {}
    default_group = _group_name(source)
    rules: list[AlertRule] = []
    seen: set[str] = set()
    for i, raw in enumerate(data["rules"]):
        if not isinstance(raw, dict):
            raise ServelabError(f"rule #{i + 1} in the alert source is not a mapping", "each rule is `- name: ...`")
        missing = [k for k in ("name", "expr", "for", "severity", "summary", "description", "runbook") if k not in raw]
        if missing:
            raise ServelabError(
                f"rule {raw.get('name', '#' + str(i + 1))} lacks {', '.join(missing)}",
                "every rule needs name, expr, for, severity, summary, description, runbook",
            )
        rule = AlertRule(
            name=str(raw["name"]),
            expr=_one_line(raw["expr"]),
            for_=str(raw["for"]).strip(),
            severity=str(raw["severity"]),
            summary=_one_line(raw["summary"]),
            description=_one_line(raw["description"]),
            runbook=_one_line(raw["runbook"]),
            group=str(raw.get("group") or default_group),
        )
        if not _RULE_NAME.match(rule.name):
            raise ServelabError(f"alert name {rule.name!r} is not CamelCase", "use names like VLLMQueueBacklog")
        if rule.name in seen:
            raise ServelabError(f"alert {rule.name} is defined twice", "alert names must be unique")
        seen.add(rule.name)
        if rule.severity not in SEVERITIES:
            raise ServelabError(f"{rule.name}: severity {rule.severity!r} is unknown", f"use one of {SEVERITIES}")
        unknown = rule.placeholders() - set(defaults) - set(DERIVED)
        if unknown:
            raise ServelabError(
                f"{rule.name} uses {sorted(unknown)} with no value under `defaults:`",
                "add a production default for each placeholder",
            )
        rules.append(rule)
    if rules and rules[0].group != default_group:
        raise ServelabError(
            f"the first rule, {rules[0].name}, is in group {rules[0].group}", f"keep the {default_group} rules first"
        )
    if group is not None:
        if group not in {r.group for r in rules}:
            raise ServelabError(f"no alert rule is in group {group!r}", f"use one of {group_names(source)}")
        rules = [r for r in rules if r.group == group]
    return rules


def group_names(source: str | Path | None = None) -> list[str]:
    """The rule groups in the order they are rendered (the source's default group first)."""
    return list(dict.fromkeys(r.group for r in load_rules(source)))


def _queue_target(key: str) -> QueueTarget:
    found = [q for q in QUEUE_TARGETS if q.key == key]
    if not found:
        raise ServelabError(
            f"no queue threshold is derived from `{key}:`", f"use one of {[q.key for q in QUEUE_TARGETS]}"
        )
    return found[0]


def hpa_path(source: str | Path | None = None, key: str = "hpa") -> Path:
    """The HPA manifest the source's ``hpa:`` names (relative to the source file); ``key="llamacpp_hpa"``
    for llama.cpp's."""
    _queue_target(key)
    path = Path(source) if source is not None else source_path()
    named = _read_source(source).get(key)
    if not named:
        raise ServelabError(f"{path} names no HPA (`{key}:`)", f"add e.g. `{key}: ../vllm/base/hpa.yaml`")
    return (path.parent / str(named)).resolve()


def _quantity(text: Any) -> float:
    """A Kubernetes quantity with a decimal suffix ("10", "500m", "1.5", "2k") as a number.

    The observe layer may not import servelab.k8s; tests check this agrees with
    ``HPASpec.from_manifest`` (Kubernetes' own parser). A count has no binary suffix.
    """
    match = _QUANTITY.match(str(text).strip())
    if not match:
        raise ServelabError(f"{text!r} is not a decimal Kubernetes quantity", "write the HPA target as e.g. 10 or 500m")
    number, suffix = match.groups()
    exponent = int(suffix[1:]) if suffix[:1] in ("e", "E") else _DECIMAL_SUFFIX[suffix]
    value = Decimal(number).scaleb(exponent)
    return float(value)


def hpa_queue_target(source: str | Path | None = None, key: str = "hpa") -> float:
    """The waiting requests per pod the source's HPA aims at: its one Pods metric's ``averageValue``
    (``key="llamacpp_hpa"``: the deferred requests per pod of llama.cpp's HPA).

    Refuses an HPA that does not scale on prometheus-adapter's ``vllm_num_requests_waiting`` (for
    llama.cpp: ``llamacpp_requests_deferred``) with an AverageValue target: a threshold derived from
    another metric's target would mean nothing.
    """
    queue_target = _queue_target(key)
    metric = queue_target.metric
    path = hpa_path(source, key)
    if not path.is_file():
        raise ServelabError(
            f"the HPA {path} (the alert source's `{key}:`) does not exist", f"fix `{key}:` in the source"
        )
    doc = yaml.safe_load(path.read_text())
    metrics = (doc or {}).get("spec", {}).get("metrics") or [] if isinstance(doc, dict) else []
    pods = [m.get("pods") or {} for m in metrics if isinstance(m, dict) and m.get("type") == "Pods"]
    queue = [m for m in pods if (m.get("metric") or {}).get("name") == metric]
    if not isinstance(doc, dict) or doc.get("kind") != "HorizontalPodAutoscaler" or len(queue) != 1:
        raise ServelabError(
            f"{path} is not an HPA with one Pods metric {metric}",
            "the queue alert is derived from the HPA that scales the engine on its queue "
            "(manifests/vllm/base/hpa.yaml, manifests/llamacpp/hpa.yaml)",
        )
    target = queue[0].get("target") or {}
    if target.get("type") != "AverageValue" or "averageValue" not in target:
        raise ServelabError(f"{path}: the {metric} target is not an AverageValue", "use type: AverageValue")
    value = _quantity(target["averageValue"])
    if value <= 0:
        raise ServelabError(f"{path}: the HPA target {value} must be > 0", "set target.averageValue above 0")
    return value


def _derive(values: dict[str, Any], source: str | Path | None) -> dict[str, Any]:
    """Fill each HPA's target (unless overridden) and the threshold derived from it into ``values``.

    A source that names no ``llamacpp_hpa:`` (an older copy) derives vLLM's pair only."""
    names = _read_source(source)
    for queue in QUEUE_TARGETS:
        if queue.target not in values and (queue.key == "hpa" or names.get(queue.key)):
            values[queue.target] = hpa_queue_target(source, queue.key)
        if queue.target in values and queue.factor in values:
            values[queue.threshold] = float(values[queue.target]) * float(values[queue.factor])
    return values


def default_thresholds(source: str | Path | None = None) -> dict[str, Any]:
    """The production thresholds: the source's ``defaults:`` plus the values derived from the HPAs
    (``hpa_queue_target``, ``queue_threshold``, and llama.cpp's ``llamacpp_hpa_queue_target``,
    ``llamacpp_queue_threshold``), e.g. ``{"queue_threshold": 2.0, ...}``."""
    return _derive(dict(_read_source(source).get("defaults") or {}), source)


def format_duration(seconds: float) -> str:
    """Seconds as a Prometheus duration: whole seconds as ``20s``, anything finer in ``ms``."""
    if seconds <= 0:
        raise ServelabError(f"duration {seconds} s must be positive", "scale by a smaller factor")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{max(1, round(seconds * 1000))}ms"


def scaled_durations(factor: float, source: str | Path | None = None) -> dict[str, str]:
    """Every ``*_for`` and ``*_window`` default multiplied by ``factor``, as threshold overrides.

    ``render_rules(scaled_durations(1 / 30))`` is the production rule set with every threshold
    unchanged and time running 30 times faster (``for: 10m`` becomes ``20s``, ``rate(...[5m])``
    ``[10s]``): what a test needs to watch the production thresholds fire, or not, in seconds.
    """
    if not factor > 0:
        raise ServelabError(f"factor {factor} must be positive", "e.g. 1/30 to run 30 times faster")
    defaults = _read_source(source).get("defaults") or {}
    return {
        key: format_duration(duration_seconds(str(value)) * factor)
        for key, value in defaults.items()
        if key.endswith(("_for", "_window"))
    }


def _group_name(source: str | Path | None) -> str:
    return str(_read_source(source).get("group") or VLLM_GROUP)


def _values(thresholds: Mapping[str, Any] | None, source: str | Path | None) -> dict[str, str]:
    """Production defaults overlaid with ``thresholds``; unknown keys are refused (a typo would be ignored).

    ``hpa_queue_target`` may be overridden (a lesson that assumes another HPA); ``queue_threshold`` may
    not: it is always the target times ``queue_target_factor`` (the same for llama.cpp's pair).
    """
    values = dict(_read_source(source).get("defaults") or {})
    overrides = dict(thresholds or {})
    for queue in QUEUE_TARGETS:
        if queue.threshold in overrides:
            raise ServelabError(
                f"{queue.threshold} is derived ({queue.target} x {queue.factor}), not set",
                f"override {queue.target} or {queue.factor} instead",
            )
    targets = {q.target for q in QUEUE_TARGETS}
    unknown = set(overrides) - set(values) - targets
    if unknown:
        raise ServelabError(f"unknown alert threshold(s) {sorted(unknown)}", f"known: {sorted({*values, *targets})}")
    values.update(overrides)
    _derive(values, source)
    out: dict[str, str] = {}
    for key, value in values.items():
        text = f"{value:.12g}" if isinstance(value, float) else str(value)
        if '"' in text or "\n" in text:
            raise ServelabError(f"threshold {key}={text!r} would break the PromQL", "no quotes or newlines")
        if key.endswith(("_for", "_window")) and not DURATION.match(text):
            raise ServelabError(f"threshold {key}={text!r} is not a Prometheus duration", "write e.g. 15s, 5m, 1h")
        out[key] = text
    return out


def _fill(text: str, values: Mapping[str, str]) -> str:
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def render_rules(
    thresholds: Mapping[str, Any] | None = None, interval: str | None = None, source: str | Path | None = None
) -> dict[str, Any]:
    """A plain Prometheus rules file as a dict: ``{"groups": [{"name", "rules": [...]}]}``.

    ``thresholds`` overrides production defaults by name (``{"queue_for": "15s", "hpa_queue_target": 1}``);
    ``interval`` sets the group's evaluation interval (default: Prometheus' global one), which a
    notebook shortens so a quick alert fires within a minute. Each rule gets ``labels.severity`` and
    ``annotations`` summary, description and runbook. One group per engine, vLLM's first
    (``["groups"][0]``), each with the same ``interval``.
    """
    values = _values(thresholds, source)
    if interval is not None and not DURATION.match(str(interval)):
        raise ServelabError(f"interval {interval!r} is not a Prometheus duration", "write e.g. 5s, 15s, 1m")
    groups: dict[str, list[dict[str, Any]]] = {}
    for rule in load_rules(source):
        unfilled = rule.placeholders() - set(values)
        if unfilled:
            raise ServelabError(
                f"{rule.name} needs {sorted(unfilled)}, which this source cannot derive",
                "name the HPA each derived threshold comes from (`hpa:`, `llamacpp_hpa:`)",
            )
        rendered: dict[str, Any] = {"alert": rule.name, "expr": _fill(rule.expr, values)}
        for_ = _fill(rule.for_, values)
        if for_ not in ("", "0", "0s"):
            rendered["for"] = for_
        rendered["labels"] = {"severity": rule.severity}
        rendered["annotations"] = {
            "summary": _fill(rule.summary, values),
            "description": _fill(rule.description, values),
            "runbook": _fill(rule.runbook, values),
        }
        groups.setdefault(rule.group, []).append(rendered)
    rendered_groups = []
    for name, rules in groups.items():
        group: dict[str, Any] = {"name": name}
        if interval is not None:
            group["interval"] = str(interval)
        group["rules"] = rules
        rendered_groups.append(group)
    return {"groups": rendered_groups}


def render_prometheus_rule(
    thresholds: Mapping[str, Any] | None = None,
    interval: str | None = None,
    source: str | Path | None = None,
    *,
    name: str = "vllm-alerts",
    namespace: str = "llm-serving",
    release: str = "prometheus",
) -> dict[str, Any]:
    """The same rules as a ``monitoring.coreos.com/v1`` PrometheusRule manifest (both engines' groups;
    the name stays ``vllm-alerts``, so applying it replaces an older one of that name).

    ``release`` becomes the ``release`` label because kube-prometheus-stack's Prometheus only loads
    PrometheusRules whose labels match its ``ruleSelector`` (``release: <helm release name>``); a rule
    without it is accepted by the API server and silently ignored.
    """
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "release": release,
                "app.kubernetes.io/name": "vllm",
                "app.kubernetes.io/part-of": "llm-serving-lab",
            },
        },
        "spec": render_rules(thresholds, interval, source),
    }


class _Dumper(yaml.SafeDumper):
    """Keeps long PromQL on one line and multi-line text as a block, so the manifests read like hand-written ones."""


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_representer)


def _dump(header: str, data: Mapping[str, Any]) -> str:
    body: str = yaml.dump(dict(data), Dumper=_Dumper, sort_keys=False, width=10_000, allow_unicode=True)
    return "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + body


def _header(kind: str, thresholds: Mapping[str, Any] | None, interval: str | None) -> str:
    variant = (
        "production thresholds"
        if not thresholds and interval is None
        else f"VARIANT, not production: thresholds={dict(thresholds or {})}, interval={interval}"
    )
    return (
        f"{kind}.\n"
        f"GENERATED from manifests/monitoring/{SOURCE_FILE} by `servelab alerts render`\n"
        f"(servelab.observe.alerts); {variant}. Do not edit: change the source and render again."
    )


def render_plain_text(
    thresholds: Mapping[str, Any] | None = None, interval: str | None = None, source: str | Path | None = None
) -> str:
    """The plain rules file as YAML text, header comment included (what ``write_rendered`` writes)."""
    return _dump(
        _header(
            "Prometheus alerting rules for vLLM and llama.cpp (plain rules file for rule_files:)", thresholds, interval
        ),
        render_rules(thresholds, interval, source),
    )


def render_prometheus_rule_text(
    thresholds: Mapping[str, Any] | None = None, interval: str | None = None, source: str | Path | None = None
) -> str:
    """The PrometheusRule manifest as YAML text, header comment included."""
    return _dump(
        _header(
            "PrometheusRule (Prometheus Operator) with the vLLM and llama.cpp alerting rules", thresholds, interval
        ),
        render_prometheus_rule(thresholds, interval, source),
    )


def write_rendered(directory: str | Path | None = None, source: str | Path | None = None) -> list[Path]:
    """Write both committed manifests with the production thresholds and return their paths.

    Production values only, on purpose: variants go through ``write_rules_file`` to a path of their own,
    so a notebook can never overwrite the manifests with its quick thresholds.
    """
    out = Path(directory) if directory is not None else monitoring_dir()
    out.mkdir(parents=True, exist_ok=True)
    plain, crd = out / PLAIN_FILE, out / CRD_FILE
    plain.write_text(render_plain_text(source=source))
    crd.write_text(render_prometheus_rule_text(source=source))
    return [plain, crd]


def write_rules_file(
    path: str | Path,
    thresholds: Mapping[str, Any] | None = None,
    interval: str | None = None,
    source: str | Path | None = None,
) -> Path:
    """Write a plain rules file (e.g. a quick variant for a notebook's local Prometheus) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_plain_text(thresholds, interval, source))
    return path


def rule_metric_names(rules: Iterable[AlertRule] | None = None, group: str | None = None) -> dict[str, set[str]]:
    """``{alert name: metric_names(expr)}`` for every rule (the source's by default; ``group`` keeps one
    engine's, e.g. to check them against that engine's live ``/metrics``)."""
    chosen = load_rules(group=group) if rules is None else [r for r in rules if group is None or r.group == group]
    return {r.name: metric_names(r.expr) for r in chosen}
