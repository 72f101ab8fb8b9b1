"""vLLM alert rules kept once, rendered two ways, and checked with promtool.

Why this module exists: alert rules written twice (a plain Prometheus rules file for a local
Prometheus, a PrometheusRule for the Prometheus Operator in Kubernetes) drift apart, and a rule whose
PromQL or metric name is wrong never fires and nobody notices. So the rules live once, in
``manifests/monitoring/alert-rules.source.yaml``, with their production thresholds; this module
renders both forms from it, writes the two committed manifests, extracts the metric names the rules
use (so a test can check them against a live vLLM's ``/metrics``), and runs ``promtool`` to check the
syntax and to run the rule unit tests in ``tests/promtool/``.

Thresholds are parameters so a notebook can render a quick variant (queue threshold 3 for 15s) into a
temporary file for a local Prometheus, while the production values stay in the manifests.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from servelab.errors import ServelabError
from servelab.observe.promql import DURATION, metric_names
from servelab.paths import manifests_path

__all__ = [
    "AlertRule",
    "default_thresholds",
    "load_rules",
    "monitoring_dir",
    "render_plain_text",
    "render_prometheus_rule",
    "render_prometheus_rule_text",
    "render_rules",
    "rule_metric_names",
    "source_path",
    "write_rendered",
    "write_rules_file",
]

PLAIN_FILE = "prometheus-rules.yaml"
CRD_FILE = "prometheusrule.yaml"
SOURCE_FILE = "alert-rules.source.yaml"
SEVERITIES = ("critical", "warning", "info")

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
        unknown = rule.placeholders() - set(defaults)
        if unknown:
            raise ServelabError(
                f"{rule.name} uses {sorted(unknown)} with no value under `defaults:`",
                "add a production default for each placeholder",
            )
        rules.append(rule)
    return rules


def default_thresholds(source: str | Path | None = None) -> dict[str, Any]:
    """The production thresholds (the source's ``defaults:``), e.g. ``{"queue_threshold": 50, ...}``."""
    return dict(_read_source(source).get("defaults") or {})


def _group_name(source: str | Path | None) -> str:
    return str(_read_source(source).get("group") or "vllm-serving")


def _values(thresholds: Mapping[str, Any] | None, source: str | Path | None) -> dict[str, str]:
    """Production defaults overlaid with ``thresholds``; unknown keys are refused (a typo would be ignored)."""
    values = default_thresholds(source)
    unknown = set(thresholds or {}) - set(values)
    if unknown:
        raise ServelabError(f"unknown alert threshold(s) {sorted(unknown)}", f"known: {sorted(values)}")
    values.update(thresholds or {})
    out: dict[str, str] = {}
    for key, value in values.items():
        text = str(value)
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

    ``thresholds`` overrides production defaults by name (``{"queue_threshold": 3, "queue_for": "15s"}``);
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
