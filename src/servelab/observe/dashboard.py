"""A Grafana dashboard for vLLM, generated from Python so its queries stay tied to the alert rules.

Why this module exists: a hand-edited dashboard JSON drifts from the alerts (a panel on a renamed
metric shows "No data" and nobody notices) and is thousands of lines no one reviews. Here each panel
is a few lines of PromQL on vLLM V1's real metric names; thresholds drawn on the panels and the job
regex come from the alert source (:func:`servelab.observe.alerts.default_thresholds`), so the line a panel
shows is the line an alert fires at. :func:`render_dashboard` builds the JSON model Grafana imports;
:func:`write_rendered` writes it to ``manifests/monitoring/`` together with a ConfigMap that Grafana's
dashboard sidecar (kube-prometheus-stack) loads; the tests check both equal a fresh render, that
every expression parses in a real Prometheus, and that every metric name exists on a live vLLM.

Two Grafana variables: ``datasource`` (pick the Prometheus) and ``model_name`` (one model, several,
or all). Grafana-only syntax (``$model_name``, ``$__rate_interval``) is replaced by :func:`concrete`
when a query runs outside Grafana, e.g. against the notebook's local Prometheus.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from servelab.errors import ServelabError
from servelab.observe import alerts, promql

__all__ = [
    "CONFIGMAP_FILE",
    "DASHBOARD_FILE",
    "Panel",
    "concrete",
    "expressions",
    "metric_names",
    "panels",
    "render_configmap_text",
    "render_dashboard",
    "render_json",
    "variable_query_metric",
    "write_rendered",
]

DASHBOARD_FILE = "grafana-dashboard-vllm.json"
CONFIGMAP_FILE = "grafana-dashboard-vllm.configmap.yaml"
UID = "servelab-vllm"
TITLE = "vLLM serving (LLM Serving Lab)"
SCHEMA_VERSION = 39  # Grafana 10.x/11.x dashboard JSON model
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
MODEL = 'model_name=~"$model_name"'
RATE = "$__rate_interval"
VARIABLE_QUERY = "label_values(vllm:num_requests_waiting, model_name)"
_GRAFANA_VARIABLE = re.compile(r"\$\{?(__rate_interval|model_name|datasource)\}?")
_LABEL_VALUES = re.compile(r"^label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,\s*[A-Za-z_][A-Za-z0-9_]*\s*\)$")


@dataclass(frozen=True)
class Panel:
    """One panel: ``queries`` are ``(PromQL, legend)`` pairs; ``threshold`` draws a red line (an alert's)."""

    title: str
    description: str
    unit: str
    queries: tuple[tuple[str, str], ...]
    grid: tuple[int, int, int, int]  # x, y, width, height on Grafana's 24-column grid
    kind: str = "timeseries"
    threshold: float | None = None
    max_value: float | None = None  # a fraction's panel stops at 1
    target: float | None = None  # an orange line below the red one (the HPA's target on the queue panel)
    extra: Mapping[str, Any] = field(default_factory=dict)


def _quantiles(histogram: str) -> tuple[tuple[str, str], ...]:
    """p50 and p99 of a vLLM histogram per model: quantile over the rate of its buckets, summed by ``le``."""
    return tuple(
        (
            f"histogram_quantile({q}, sum by (model_name, le) (rate({histogram}_bucket{{{MODEL}}}[{RATE}])))",
            f"p{round(q * 100)} {{{{model_name}}}}",
        )
        for q in (0.5, 0.99)
    )


def panels(thresholds: Mapping[str, Any] | None = None) -> list[Panel]:
    """The dashboard's panels; ``thresholds`` default to the alert source's production values."""
    t = {**alerts.default_thresholds(), **(thresholds or {})}
    job = f'job=~"{t["job_regex"]}"'
    requests = f"rate(http_requests_total{{{job}}}[{RATE}])"
    errors = f'rate(http_requests_total{{{job}, status="5xx"}}[{RATE}])'
    return [
        Panel(
            "vLLM targets up",
            "Prometheus' own `up` per scrape target: 0 means it could not scrape /metrics "
            "(VLLMServerDown fires after it stays 0); no value at all means no target is scraped "
            "(VLLMTargetsMissing).",
            "none",
            ((f"up{{{job}}}", "{{instance}}"),),
            (0, 0, 6, 8),
            kind="stat",
            threshold=1,
            extra={
                "mappings": [
                    {
                        "type": "value",
                        "options": {"0": {"text": "DOWN", "color": "red"}, "1": {"text": "UP", "color": "green"}},
                    }
                ]
            },
        ),
        Panel(
            "Requests waiting and running",
            "Per pod, averaged over the pods of a model, as the HPA sees them. vllm:num_requests_waiting is the "
            "queue for a batch slot: the earliest sign of too little capacity and what the HPA scales on. The "
            "orange line is the HPA's target (manifests/vllm/base/hpa.yaml), the red one VLLMQueueBacklog's "
            "threshold, derived from it: above it for long, the autoscaler is losing.",
            "short",
            (
                (
                    f"avg by (model_name) (sum by (model_name, instance) (vllm:num_requests_waiting{{{MODEL}}}))",
                    "waiting per pod {{model_name}}",
                ),
                (
                    f"avg by (model_name) (sum by (model_name, instance) (vllm:num_requests_running{{{MODEL}}}))",
                    "running per pod {{model_name}}",
                ),
            ),
            (6, 0, 18, 8),
            threshold=float(t["queue_threshold"]),
            target=float(t["hpa_queue_target"]),
        ),
        Panel(
            "KV cache usage",
            "vllm:kv_cache_usage_perc is a 0-1 fraction. Near full, vLLM preempts sequences; the "
            "red line is VLLMKVCacheNearFull's threshold.",
            "percentunit",
            ((f"max by (model_name, instance) (vllm:kv_cache_usage_perc{{{MODEL}}})", "{{model_name}} {{instance}}"),),
            (0, 8, 12, 8),
            threshold=float(t["kv_cache_threshold"]),
            max_value=1.0,
        ),
        Panel(
            "Tokens per second",
            "Output (generation) and input (prompt) tokens per second, from vLLM's counters: "
            "the throughput a $/token estimate divides by.",
            "short",
            (
                (
                    f"sum by (model_name) (rate(vllm:generation_tokens_total{{{MODEL}}}[{RATE}]))",
                    "generated {{model_name}}",
                ),
                (f"sum by (model_name) (rate(vllm:prompt_tokens_total{{{MODEL}}}[{RATE}]))", "prompt {{model_name}}"),
            ),
            (12, 8, 12, 8),
        ),
        Panel(
            "Time to first token, p50 / p99",
            "What a streaming user feels as responsiveness; includes time in "
            "the queue. The red line is VLLMHighTTFT's p99 threshold.",
            "s",
            _quantiles("vllm:time_to_first_token_seconds"),
            (0, 16, 12, 8),
            threshold=float(t["p99_ttft_seconds"]),
        ),
        Panel(
            "Inter-token latency, p50 / p99",
            "The gap between two streamed tokens: how fast an answer reads once it started. The red line "
            "is VLLMHighInterTokenLatency's p99 threshold.",
            "s",
            _quantiles("vllm:inter_token_latency_seconds"),
            (12, 16, 12, 8),
            threshold=float(t["p99_itl_seconds"]),
        ),
        Panel(
            "End-to-end request latency, p50 / p99",
            "Whole request, queue included; it grows with answer length, so it is no page. The red line is "
            "VLLMHighP99Latency's threshold (severity info).",
            "s",
            _quantiles("vllm:e2e_request_latency_seconds"),
            (0, 24, 12, 8),
            threshold=float(t["p99_latency_seconds"]),
        ),
        Panel(
            "Preemptions per second",
            "Sequences vLLM evicted from the KV cache to make room (and recomputes "
            "later): wasted work, a sign the cache or --max-num-seqs is too tight.",
            "short",
            ((f"sum by (model_name) (rate(vllm:num_preemptions_total{{{MODEL}}}[{RATE}]))", "{{model_name}}"),),
            (12, 24, 12, 8),
        ),
        Panel(
            "HTTP 5xx ratio",
            "Share of vLLM's HTTP answers that are 5xx (prometheus-fastapi-instrumentator's "
            "counter); 0, not 'No data', while there are none. The red line is VLLMHighErrorRate's threshold.",
            "percentunit",
            ((f"(sum by (job) ({errors}) or 0 * sum by (job) ({requests})) / sum by (job) ({requests})", "{{job}}"),),
            (0, 32, 12, 8),
            threshold=float(t["error_rate_ratio"]),
            max_value=1.0,
        ),
    ]


def _field_config(panel: Panel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if panel.target is not None:
        steps.append({"color": "orange", "value": panel.target})
    if panel.threshold is not None:
        steps.append({"color": "red", "value": panel.threshold})
    if panel.kind == "stat":  # up: red below 1, green at 1
        steps = [{"color": "red", "value": None}, {"color": "green", "value": panel.threshold}]
    defaults: dict[str, Any] = {"unit": panel.unit, "min": 0, "thresholds": {"mode": "absolute", "steps": steps}}
    if panel.max_value is not None:
        defaults["max"] = panel.max_value
    if panel.kind == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10,
            "showPoints": "never",
            "thresholdsStyle": {"mode": "line" if panel.threshold is not None else "off"},
        }
    defaults.update(panel.extra)
    return {"defaults": defaults, "overrides": []}


def _options(panel: Panel) -> dict[str, Any]:
    if panel.kind == "stat":
        return {
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "textMode": "value_and_name",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        }
    return {
        "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"], "showLegend": True},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }


def render_dashboard(thresholds: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The dashboard JSON model (what Grafana's "Import dashboard" or its sidecar takes) as a dict."""
    alert_names = "|".join(rule.name for rule in alerts.load_rules(group=alerts.VLLM_GROUP))  # a vLLM dashboard
    built = []
    for number, panel in enumerate(panels(thresholds), start=1):
        x, y, w, h = panel.grid
        built.append(
            {
                "id": number,
                "type": panel.kind,
                "title": panel.title,
                "description": panel.description,
                "datasource": DATASOURCE,
                "gridPos": {"x": x, "y": y, "w": w, "h": h},
                "fieldConfig": _field_config(panel),
                "options": _options(panel),
                "targets": [
                    {
                        "refId": chr(ord("A") + i),
                        "datasource": DATASOURCE,
                        "expr": expr,
                        "legendFormat": legend,
                        "range": True,
                    }
                    for i, (expr, legend) in enumerate(panel.queries)
                ],
            }
        )
    return {
        "uid": UID,
        "title": TITLE,
        "description": "vLLM V1 metrics that matter on call: queue, batch, KV cache, latency percentiles, "
        "throughput, preemptions, errors, up. Generated by servelab.observe.dashboard; do not edit by hand.",
        "tags": ["vllm", "llm-serving", "servelab"],
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "graphTooltip": 1,  # shared crosshair: the same moment on every panel
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "timezone": "browser",
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                {
                    "datasource": DATASOURCE,
                    "enable": True,
                    "iconColor": "red",
                    "name": "vLLM alerts firing",
                    "expr": f'ALERTS{{alertstate="firing", alertname=~"{alert_names}"}}',
                    "step": "30s",
                    "titleFormat": "{{alertname}}",
                    "textFormat": "{{model_name}} {{instance}}",
                    "useValueForTime": False,
                },
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                },
                {
                    "name": "model_name",
                    "label": "Model",
                    "type": "query",
                    "datasource": DATASOURCE,
                    "definition": VARIABLE_QUERY,
                    "query": {"query": VARIABLE_QUERY, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
                    "includeAll": True,
                    "multi": True,
                    "allValue": ".*",
                    "current": {},
                    "hide": 0,
                    "refresh": 2,
                    "sort": 1,
                    "regex": "",
                    "options": [],
                },
            ]
        },
        "panels": built,
    }


def render_json(thresholds: Mapping[str, Any] | None = None) -> str:
    """The dashboard as the committed file's text (2-space JSON, newline at the end)."""
    return json.dumps(render_dashboard(thresholds), indent=2, ensure_ascii=False) + "\n"


class _Literal(str):
    """A string PyYAML writes as a ``|`` block, so the JSON inside the ConfigMap stays readable."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Literal, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|")
)

_CONFIGMAP_HEADER = """\
# ConfigMap with the vLLM Grafana dashboard, for Grafana's dashboard sidecar (kube-prometheus-stack's
# grafana.sidecar.dashboards): the sidecar loads every ConfigMap labelled grafana_dashboard: "1".
# It lives in llm-serving next to the other manifests, so the sidecar must search that namespace
# (sidecar.dashboards.searchNamespace: ALL or llm-serving) or you move it into Grafana's namespace.
# Without the sidecar, import grafana-dashboard-vllm.json (the same JSON) in Grafana's UI.
# GENERATED by `servelab dashboard render` (servelab.observe.dashboard). Do not edit: change the code and render again.
"""


def render_configmap_text(thresholds: Mapping[str, Any] | None = None) -> str:
    """The ConfigMap manifest's text, header comment included."""
    doc = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "vllm-grafana-dashboard",
            "namespace": "llm-serving",
            "labels": {
                "grafana_dashboard": "1",
                "app.kubernetes.io/name": "vllm",
                "app.kubernetes.io/part-of": "llm-serving-lab",
            },
        },
        "data": {"vllm-serving.json": _Literal(render_json(thresholds))},
    }
    return _CONFIGMAP_HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def write_rendered(directory: str | Path | None = None) -> list[Path]:
    """Write the dashboard JSON and its ConfigMap (production thresholds) and return their paths."""
    out = Path(directory) if directory is not None else alerts.monitoring_dir()
    out.mkdir(parents=True, exist_ok=True)
    dashboard_path, configmap_path = out / DASHBOARD_FILE, out / CONFIGMAP_FILE
    dashboard_path.write_text(render_json())
    configmap_path.write_text(render_configmap_text())
    return [dashboard_path, configmap_path]


def expressions(dashboard: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """``(where, PromQL)`` for every panel target and every Prometheus annotation of ``dashboard``."""
    model = render_dashboard() if dashboard is None else dashboard
    found = [
        (f"panel {p['title']!r} target {t['refId']}", t["expr"])
        for p in model.get("panels", [])
        for t in p.get("targets", [])
    ]
    found += [
        (f"annotation {a['name']!r}", a["expr"]) for a in model.get("annotations", {}).get("list", []) if "expr" in a
    ]
    return found


def variable_query_metric(dashboard: Mapping[str, Any] | None = None) -> str:
    """The metric the ``model_name`` variable reads its values from (``label_values(<metric>, model_name)``)."""
    model = render_dashboard() if dashboard is None else dashboard
    variable = next(v for v in model["templating"]["list"] if v["name"] == "model_name")
    match = _LABEL_VALUES.match(variable["query"]["query"])
    if not match:
        raise ServelabError(
            f"model_name variable query {variable['query']['query']!r} is not label_values(metric, label)",
            f"write e.g. {VARIABLE_QUERY}",
        )
    return match.group(1)


def metric_names(dashboard: Mapping[str, Any] | None = None) -> set[str]:
    """Every metric name the dashboard reads (panels, annotations, the variable).

    Names are found per :func:`servelab.observe.promql.metric_names`.
    """
    names = {variable_query_metric(dashboard)}
    for _, expr in expressions(dashboard):
        names |= promql.metric_names(expr)
    return names


def concrete(expr: str, rate_window: str = "1m", model_name: str = ".*") -> str:
    """``expr`` with Grafana's variables filled in, so a plain Prometheus can run it.

    ``$__rate_interval`` becomes ``rate_window`` (Grafana computes it from the scrape interval and
    the zoom; use at least 4 scrape intervals) and ``$model_name`` becomes the regex ``model_name``.
    """
    values = {"__rate_interval": rate_window, "model_name": model_name, "datasource": "prometheus"}
    return _GRAFANA_VARIABLE.sub(lambda m: values[m.group(1)], expr)
