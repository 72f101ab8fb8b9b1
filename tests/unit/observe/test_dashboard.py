"""The generated Grafana dashboard: committed = fresh render, Grafana's essentials, PromQL that parses.

Why: a dashboard is accepted by Grafana whatever its queries say; a typo'd expression or a renamed
metric only shows as "No data" on the day someone needs the panel. Every expression is sent to a
real Prometheus in tests/live/test_dashboard_in_prometheus.py (its query API answers a parse error for
bad PromQL); that the metric names exist on a live vLLM is checked in tests/live/test_engines.py, next
to the alert rules' names.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from servelab.errors import ServelabError
from servelab.k8s import manifests
from servelab.observe import alerts, dashboard, promql

MONITORING = Path(__file__).resolve().parents[3] / "manifests" / "monitoring"
JSON_FILE = MONITORING / dashboard.DASHBOARD_FILE
CONFIGMAP = MONITORING / dashboard.CONFIGMAP_FILE
MODEL = json.loads(JSON_FILE.read_text())


def test_committed_files_equal_a_fresh_render() -> None:
    assert JSON_FILE.read_text() == dashboard.render_json(), "run `servelab dashboard render`"
    assert CONFIGMAP.read_text() == dashboard.render_configmap_text(), "run `servelab dashboard render`"


def test_write_rendered_writes_both_files(tmp_path: Path) -> None:
    written = dashboard.write_rendered(tmp_path)
    assert [p.name for p in written] == [dashboard.DASHBOARD_FILE, dashboard.CONFIGMAP_FILE]
    assert written[0].read_text() == JSON_FILE.read_text()


def test_configmap_carries_the_same_json_for_the_grafana_sidecar() -> None:
    assert CONFIGMAP.read_text().startswith("# ")
    doc = yaml.safe_load(CONFIGMAP.read_text())
    assert doc["kind"] == "ConfigMap" and doc["metadata"]["labels"]["grafana_dashboard"] == "1"
    (text,) = doc["data"].values()
    assert json.loads(text) == MODEL
    assert manifests.validate_file(CONFIGMAP) == []


def test_dashboard_has_grafanas_essentials() -> None:
    assert MODEL["uid"] and MODEL["title"] and isinstance(MODEL["schemaVersion"], int)
    variables = {v["name"]: v for v in MODEL["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert variables["model_name"]["type"] == "query" and variables["model_name"]["includeAll"] is True
    assert dashboard.variable_query_metric(MODEL) == "vllm:num_requests_waiting"
    ids = [p["id"] for p in MODEL["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    cells: set[tuple[int, int]] = set()
    for panel in MODEL["panels"]:
        grid = panel["gridPos"]
        assert {"x", "y", "w", "h"} <= set(grid) and grid["x"] + grid["w"] <= 24, panel["title"]
        covered = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not covered & cells, f"{panel['title']} overlaps another panel"
        cells |= covered
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip() and target["refId"], panel["title"]


def test_panels_cover_the_on_call_metrics_and_draw_the_alert_thresholds() -> None:
    exprs = " ".join(expr for _, expr in dashboard.expressions(MODEL))
    for needed in (
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "histogram_quantile(0.99",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:generation_tokens_total",
        "vllm:prompt_tokens_total",
        "vllm:num_preemptions_total",
        'status="5xx"',
        "up{",
        "ALERTS{",
    ):
        assert needed in exprs, needed
    assert 'model_name=~"$model_name"' in exprs and "[$__rate_interval]" in exprs
    steps = {
        p["title"]: [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]] for p in MODEL["panels"]
    }
    limits = alerts.default_thresholds()
    # The queue panel draws the HPA's target (orange) under VLLMQueueBacklog's threshold (red), both per pod.
    assert steps["Requests waiting and running"][1:] == [limits["hpa_queue_target"], limits["queue_threshold"]]
    assert steps["Inter-token latency, p50 / p99"][-1] == limits["p99_itl_seconds"]
    assert steps["KV cache usage"][-1] == limits["kv_cache_threshold"]
    assert promql.legacy_names(JSON_FILE.read_text()) == []


def test_metric_names_are_vllm_names_and_skip_grafana_syntax() -> None:
    names = dashboard.metric_names(MODEL)
    assert "vllm:num_requests_waiting" in names and "http_requests_total" in names
    assert not any(n.startswith(("$", "__")) or n in ("model_name", "le", "job") for n in names), names
    broken = copy.deepcopy(MODEL)
    next(v for v in broken["templating"]["list"] if v["name"] == "model_name")["query"]["query"] = "up"
    with pytest.raises(ServelabError, match="label_values"):
        dashboard.metric_names(broken)


def test_concrete_replaces_every_grafana_variable() -> None:
    for _, expr in dashboard.expressions(MODEL):
        assert "$" not in dashboard.concrete(expr)
    assert (
        dashboard.concrete('rate(x{model_name=~"$model_name"}[$__rate_interval])', "30s", "a|b")
        == 'rate(x{model_name=~"a|b"}[30s])'
    )
