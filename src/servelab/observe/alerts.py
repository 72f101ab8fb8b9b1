"""vLLM alert rules kept once and rendered two ways: a plain rules file and a PrometheusRule.

Why this module exists: alert rules written twice (a plain Prometheus rules file for a local
Prometheus, a PrometheusRule for the Prometheus Operator in Kubernetes) drift apart, and a rule whose
PromQL or metric name is wrong never fires and nobody notices. So the rules live once, in
``manifests/monitoring/alert-rules.source.yaml``, with their production thresholds; this module
renders both forms from it, writes the two committed manifests, and lists the metric names the rules
use (through :mod:`servelab.observe.promql`, so a test can check them against a live vLLM's
``/metrics``). :mod:`servelab.observe.promtool` checks their syntax and runs their unit tests.

Thresholds are parameters so a notebook can render a quick variant (a shorter ``for``) into a
temporary file for a local Prometheus, while the production values stay in the manifests. Two values
are never typed in the source: ``hpa_queue_target`` is read from the HPA manifest the source names
(``hpa:``), and ``queue_threshold`` is that target times ``queue_target_factor``, so the queue alert
follows the autoscaler it watches (:func:`hpa_queue_target`). :func:`scaled_durations` shortens every
``for`` and rate window by one factor for a test that needs the production thresholds in seconds.
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
    "AlertRule",
    "default_thresholds",
    "format_duration",
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
# Placeholders computed at render time instead of typed under `defaults:` (see the source's header).
DERIVED = {
    "hpa_queue_target": "the target averageValue (waiting requests per pod) of the HPA the source's `hpa:` names",
    "queue_threshold": "hpa_queue_target x queue_target_factor",
}
HPA_METRIC = "vllm_num_requests_waiting"  # prometheus-adapter's name for vllm:num_requests_waiting
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
    """

    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str

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


def load_rules(source: str | Path | None = None) -> list[AlertRule]:
    """Read and validate the rules of the source file (the checkout's one by default).

    Validation happens here, in Python, so a typo (unknown severity, a placeholder with no default,
    a duplicate name) is reported with the rule's name instead of surfacing as a rule that never fires.
    """
    data = _read_source(source)
    defaults = data.get("defaults") or {}
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
    return rules


def hpa_path(source: str | Path | None = None) -> Path:
    """The HPA manifest the source's ``hpa:`` names (relative to the source file)."""
    path = Path(source) if source is not None else source_path()
    named = _read_source(source).get("hpa")
    if not named:
        raise ServelabError(f"{path} names no HPA (`hpa:`)", "add e.g. `hpa: ../vllm/base/hpa.yaml`")
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


def hpa_queue_target(source: str | Path | None = None) -> float:
    """The waiting requests per pod the source's HPA aims at: its one Pods metric's ``averageValue``.

    Refuses an HPA that does not scale on prometheus-adapter's ``vllm_num_requests_waiting`` with an
    AverageValue target: a threshold derived from another metric's target would mean nothing.
    """
    path = hpa_path(source)
    if not path.is_file():
        raise ServelabError(f"the HPA {path} (the alert source's `hpa:`) does not exist", "fix `hpa:` in the source")
    doc = yaml.safe_load(path.read_text())
    metrics = (doc or {}).get("spec", {}).get("metrics") or [] if isinstance(doc, dict) else []
    pods = [m.get("pods") or {} for m in metrics if isinstance(m, dict) and m.get("type") == "Pods"]
    queue = [m for m in pods if (m.get("metric") or {}).get("name") == HPA_METRIC]
    if not isinstance(doc, dict) or doc.get("kind") != "HorizontalPodAutoscaler" or len(queue) != 1:
        raise ServelabError(
            f"{path} is not an HPA with one Pods metric {HPA_METRIC}",
            "the queue alert is derived from the HPA that scales vLLM on its queue (manifests/vllm/base/hpa.yaml)",
        )
    target = queue[0].get("target") or {}
    if target.get("type") != "AverageValue" or "averageValue" not in target:
        raise ServelabError(f"{path}: the {HPA_METRIC} target is not an AverageValue", "use type: AverageValue")
    value = _quantity(target["averageValue"])
    if value <= 0:
        raise ServelabError(f"{path}: the HPA target {value} must be > 0", "set target.averageValue above 0")
    return value


def _derive(values: dict[str, Any], source: str | Path | None) -> dict[str, Any]:
    """Fill ``hpa_queue_target`` (unless overridden) and ``queue_threshold`` into ``values``."""
    if "hpa_queue_target" not in values:
        values["hpa_queue_target"] = hpa_queue_target(source)
    if "queue_target_factor" in values:
        values["queue_threshold"] = float(values["hpa_queue_target"]) * float(values["queue_target_factor"])
    return values


def default_thresholds(source: str | Path | None = None) -> dict[str, Any]:
    """The production thresholds: the source's ``defaults:`` plus the values derived from the HPA
    (``hpa_queue_target``, ``queue_threshold``), e.g. ``{"queue_threshold": 2.0, ...}``."""
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
    return str(_read_source(source).get("group") or "vllm-serving")


def _values(thresholds: Mapping[str, Any] | None, source: str | Path | None) -> dict[str, str]:
    """Production defaults overlaid with ``thresholds``; unknown keys are refused (a typo would be ignored).

    ``hpa_queue_target`` may be overridden (a lesson that assumes another HPA); ``queue_threshold`` may
    not: it is always the target times ``queue_target_factor``.
    """
    values = dict(_read_source(source).get("defaults") or {})
    overrides = dict(thresholds or {})
    if "queue_threshold" in overrides:
        raise ServelabError(
            "queue_threshold is derived (hpa_queue_target x queue_target_factor), not set",
            "override hpa_queue_target or queue_target_factor instead",
        )
    unknown = set(overrides) - set(values) - {"hpa_queue_target"}
    if unknown:
        raise ServelabError(
            f"unknown alert threshold(s) {sorted(unknown)}", f"known: {sorted({*values, 'hpa_queue_target'})}"
        )
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
    ``annotations`` summary, description and runbook.
    """
    values = _values(thresholds, source)
    if interval is not None and not DURATION.match(str(interval)):
        raise ServelabError(f"interval {interval!r} is not a Prometheus duration", "write e.g. 5s, 15s, 1m")
    rules = []
    for rule in load_rules(source):
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
        rules.append(rendered)
    group: dict[str, Any] = {"name": _group_name(source)}
    if interval is not None:
        group["interval"] = str(interval)
    group["rules"] = rules
    return {"groups": [group]}


def render_prometheus_rule(
    thresholds: Mapping[str, Any] | None = None,
    interval: str | None = None,
    source: str | Path | None = None,
    *,
    name: str = "vllm-alerts",
    namespace: str = "llm-serving",
    release: str = "prometheus",
) -> dict[str, Any]:
    """The same rules as a ``monitoring.coreos.com/v1`` PrometheusRule manifest.

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
        _header("Prometheus alerting rules for vLLM (plain rules file for rule_files:)", thresholds, interval),
        render_rules(thresholds, interval, source),
    )


def render_prometheus_rule_text(
    thresholds: Mapping[str, Any] | None = None, interval: str | None = None, source: str | Path | None = None
) -> str:
    """The PrometheusRule manifest as YAML text, header comment included."""
    return _dump(
        _header("PrometheusRule (Prometheus Operator) with the vLLM alerting rules", thresholds, interval),
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


def rule_metric_names(rules: Iterable[AlertRule] | None = None) -> dict[str, set[str]]:
    """``{alert name: metric_names(expr)}`` for every rule (the source's by default)."""
    return {r.name: metric_names(r.expr) for r in (load_rules() if rules is None else rules)}
