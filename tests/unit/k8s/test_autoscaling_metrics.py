"""servelab.k8s.autoscalers: what the HPA, prometheus-adapter and KEDA manifests read.

Offline half of the check; tests/live/test_engines.py holds the live half for vLLM (every name found here
exists on a running vLLM's /metrics, and the adapter's rename is what the HPA asks for), and
tests/live/test_llama_server.py the same for llama.cpp's native llama-server.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from servelab.errors import ServelabError
from servelab.k8s import autoscalers

MANIFESTS = Path(__file__).resolve().parents[3] / "manifests"
VLLM = MANIFESTS / "vllm"


def test_the_kits_autoscaling_reads_the_real_queue_gauge() -> None:
    found = autoscalers.autoscaling_metrics(VLLM)
    assert sorted(found.series) == [
        "KEDA ScaledObject vllm triggers[0]",
        "prometheus-adapter vllm-prometheus-adapter-rules/config.yaml rules[0]",
    ]
    assert all(names == {"vllm:num_requests_waiting"} for names in found.series.values())
    assert found.adapter_names == {"vllm:num_requests_waiting": "vllm_num_requests_waiting"}
    assert found.hpa_metrics == {"HPA vllm (hpa.yaml)": {"vllm_num_requests_waiting"}}


def test_the_llamacpp_autoscaling_reads_the_real_deferred_gauge() -> None:
    """manifests/llamacpp (HPA + adapter rule) and its KEDA alternative read llamacpp:requests_deferred,
    and the adapter serves it under exactly the name the HPA asks for."""
    found = autoscalers.autoscaling_metrics(MANIFESTS / "llamacpp")
    assert found.series == {
        "prometheus-adapter llamacpp-prometheus-adapter-rules/config.yaml rules[0]": {"llamacpp:requests_deferred"}
    }
    assert found.adapter_names == {"llamacpp:requests_deferred": "llamacpp_requests_deferred"}
    assert found.hpa_metrics == {"HPA llamacpp (hpa.yaml)": {"llamacpp_requests_deferred"}}
    keda = autoscalers.autoscaling_metrics(MANIFESTS / "llamacpp-keda")
    assert keda.series == {"KEDA ScaledObject llamacpp triggers[0]": {"llamacpp:requests_deferred"}}
    assert keda.hpa_metrics == {}  # KEDA creates its own HPA, on an External metric


def test_no_adapter_rule_serves_a_name_another_engines_rule_serves() -> None:
    """prometheus-adapter reads one config: the vLLM and llama.cpp rules go into it together."""
    vllm = autoscalers.autoscaling_metrics(VLLM).adapter_names
    llamacpp = autoscalers.autoscaling_metrics(MANIFESTS / "llamacpp").adapter_names
    assert not set(vllm) & set(llamacpp) and not set(vllm.values()) & set(llamacpp.values())


@pytest.mark.parametrize(
    ("rule", "series", "served"),
    [
        (
            {"name": {"matches": "^vllm:num_requests_waiting$", "as": "vllm_num_requests_waiting"}},
            "vllm:num_requests_waiting",
            "vllm_num_requests_waiting",
        ),
        (
            {"name": {"matches": "^(.*)_total$", "as": "${1}_per_second"}},
            "vllm:prompt_tokens_total",
            "vllm:prompt_tokens_per_second",
        ),
        ({"name": {"matches": "^vllm:(.*)$"}}, "vllm:num_requests_running", "num_requests_running"),  # as: $1
        ({}, "vllm:kv_cache_usage_perc", "vllm:kv_cache_usage_perc"),  # no name: the series name as it is
    ],
)
def test_adapter_rename_follows_the_adapters_rules(rule: dict, series: str, served: str) -> None:
    assert autoscalers.adapter_metric_name(rule, series) == served


def _tree(tmp_path: Path, series_query: str, keda_query: str) -> Path:
    rules = {
        "rules": [
            {
                "seriesQuery": series_query,
                "name": {"matches": "^(.*)$", "as": "x_$1"},
                "metricsQuery": "sum(rate(<<.Series>>{<<.LabelMatchers>>}[2m])) by (<<.GroupBy>>)",
            }
        ]
    }
    docs = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "adapter"},
            "data": {"config.yaml": yaml.safe_dump(rules), "nginx.conf": "server { listen 80; }"},
        },
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": "s"},
            "spec": {
                "triggers": [{"type": "cpu", "metadata": {}}, {"type": "prometheus", "metadata": {"query": keda_query}}]
            },
        },
    ]
    (tmp_path / "all.yaml").write_text(yaml.safe_dump_all(docs))
    return tmp_path


def test_names_come_from_series_queries_metrics_queries_and_keda(tmp_path: Path) -> None:
    found = autoscalers.autoscaling_metrics(
        _tree(tmp_path, 'http_requests_total{namespace!=""}', "sum(rate(vllm:e2e_request_latency_seconds_count[1m]))")
    )
    assert found.series == {
        "prometheus-adapter adapter/config.yaml rules[0]": {"http_requests_total"},
        "KEDA ScaledObject s triggers[1]": {
            "vllm:e2e_request_latency_seconds_count",
            "vllm:e2e_request_latency_seconds",
        },
    }
    assert found.adapter_names == {"http_requests_total": "x_http_requests_total"}
    assert found.hpa_metrics == {}


def test_a_name_pattern_cannot_be_checked_and_says_so(tmp_path: Path) -> None:
    with pytest.raises(ServelabError, match="selects names by the pattern"):
        autoscalers.autoscaling_metrics(_tree(tmp_path, '{__name__=~"^vllm:.*$"}', "up"))
