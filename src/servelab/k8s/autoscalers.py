"""What the autoscalers of a manifest tree read: the Prometheus series behind each prometheus-adapter
rule and KEDA trigger, the name the adapter serves each series as, and the metrics each HPA asks for.

Why: an HPA on a metric name that no adapter serves, or an adapter rule on a series the engine does
not export, is valid YAML that never scales. The tests check each name against a live engine's
``/metrics`` (notebooks 06 and 07).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from servelab.errors import ServelabError
from servelab.k8s import docs
from servelab.k8s.docs import Doc
from servelab.k8s.manifests import tree_documents
from servelab.observe.promql import metric_names

# prometheus-adapter's metricsQuery template fields, filled with values of the shape the adapter uses,
# so the query becomes plain PromQL whose metric names can be extracted.
_ADAPTER_TEMPLATE = {"<<.LabelMatchers>>": 'namespace="llm-serving",pod=~"vllm-.*"', "<<.GroupBy>>": "pod"}
_NAME_EQUALS = re.compile(r'__name__\s*(=~|=)\s*"([^"]*)"')
_SELECTOR_NAME = re.compile(r"^\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(\{|$)")
_LITERAL_NAME = re.compile(r"\^?([A-Za-z_:][A-Za-z0-9_:]*)\$?")


@dataclass(frozen=True)
class AutoscalingMetrics:
    """What a manifest tree's autoscaling reads, found by :func:`autoscaling_metrics`.

    ``series``: ``{where: Prometheus metric names}`` for each prometheus-adapter rule and each KEDA
    prometheus trigger, names as they must appear on the engine's /metrics. ``adapter_names``:
    ``{Prometheus series name: name the adapter serves it as}``. ``hpa_metrics``: ``{HPA: names}``
    of the Pods/Object metrics each HPA asks the custom metrics API for.
    """

    series: dict[str, set[str]]
    adapter_names: dict[str, str]
    hpa_metrics: dict[str, set[str]]


def _series_names(series_query: str) -> set[str]:
    """Metric names a prometheus-adapter ``seriesQuery`` selects: a bare name or ``__name__`` matchers.

    A regex matcher is accepted only when it is one literal name (``^vllm:num_requests_waiting$``):
    a real pattern cannot be checked name by name, and the kit's rules do not need one.
    """
    names = set()
    bare = _SELECTOR_NAME.match(series_query)
    if bare:
        names.add(bare.group(1))
    for op, value in _NAME_EQUALS.findall(series_query):
        literal = _LITERAL_NAME.fullmatch(value) if op == "=~" else None
        if op == "=~" and not literal:
            raise ServelabError(
                f"seriesQuery {series_query!r} selects names by the pattern {value!r}",
                'name the series exactly, e.g. {__name__=~"^vllm:num_requests_waiting$"}',
            )
        names.add(literal.group(1) if literal else value)
    if not names:
        raise ServelabError(f"seriesQuery {series_query!r} names no metric", "select a metric by name")
    return names


def adapter_metric_name(rule: Doc, series: str) -> str:
    """The name prometheus-adapter serves ``series`` under: its ``name.matches`` regex replaced by ``name.as``.

    Mirrors the adapter (Go's ``regexp.ReplaceAllString``; ``as`` defaults to ``$1`` when ``matches``
    has a group, else ``$0``), so a test can prove the rename yields exactly what the HPA asks for.
    """
    naming = docs.mapping(rule.get("name"))
    matches = str(naming.get("matches") or "(.*)")
    pattern = re.compile(matches)
    replacement = str(naming.get("as") or ("$1" if pattern.groups else "$0"))
    python = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: rf"\g<{m.group(1) or m.group(2)}>", replacement)
    return pattern.sub(python, series)


def autoscaling_metrics(root: Path | str) -> AutoscalingMetrics:
    """Every metric the autoscaling objects under ``root`` read: adapter rules (in ConfigMaps), KEDA, HPAs."""

    series: dict[str, set[str]] = {}
    renames: dict[str, str] = {}
    hpa_metrics: dict[str, set[str]] = {}
    for source, doc in tree_documents(root):
        kind, name = docs.identity(doc)
        if kind == "ConfigMap":
            for key, text in docs.mapping(doc.get("data")).items():
                try:
                    config = yaml.safe_load(text) if isinstance(text, str) else None
                except yaml.YAMLError:
                    continue  # some other file (nginx.conf, a script): not an adapter config
                for section in ("rules", "externalRules"):
                    for i, rule in enumerate(docs.listing(docs.mapping(config).get(section))):
                        if not isinstance(rule, dict) or "seriesQuery" not in rule:
                            continue
                        where = f"prometheus-adapter {name}/{key} {section}[{i}]"
                        names = _series_names(str(rule["seriesQuery"]))
                        query = str(rule.get("metricsQuery", ""))
                        for field, value in _ADAPTER_TEMPLATE.items():
                            query = query.replace(field, value)
                        read = set(names)
                        for one in names:
                            read |= metric_names(query.replace("<<.Series>>", one))
                            renames[one] = adapter_metric_name(rule, one)
                        series[where] = read
        elif kind == "ScaledObject":
            for i, trigger in enumerate(docs.listing(docs.get(doc, "spec.triggers"))):
                if isinstance(trigger, dict) and trigger.get("type") == "prometheus":
                    series[f"KEDA ScaledObject {name} triggers[{i}]"] = metric_names(
                        str(docs.get(trigger, "metadata.query") or "")
                    )
        elif kind == "HorizontalPodAutoscaler":
            asked = {
                str(docs.get(m, f"{m.get('type', '').lower()}.metric.name"))
                for m in docs.listing(docs.get(doc, "spec.metrics"))
                if isinstance(m, dict) and m.get("type") in ("Pods", "Object")
            }
            if asked:
                hpa_metrics[f"HPA {name} ({Path(source).name})"] = asked
    return AutoscalingMetrics(series, renames, hpa_metrics)
