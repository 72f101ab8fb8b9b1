"""Notebook 02's exercise checks, without an engine: the reference solutions pass, the notebook's starting
answers and classic mistakes fail with a hint. The texts below are vLLM 0.32's own formats (its ``/metrics``
lines and start-up log line, trimmed to the series the checks read); the notebook run grades the live ones."""

from __future__ import annotations

import ast
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import nbformat
import pytest

from servelab.course import exercises
from servelab.course.exercises import nb02
from servelab.course.grading import LabCheck
from servelab.observe import metrics

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOK = "02_deploy_vllm"
MODEL = 'engine="0",model_name="smollm2-135m-instruct"'
METRICS = f"""\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{{MODEL}}} 0.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{{MODEL}}} 0.0
# HELP vllm:num_requests_waiting_by_reason Number of requests waiting, by reason.
# TYPE vllm:num_requests_waiting_by_reason gauge
vllm:num_requests_waiting_by_reason{{{MODEL},reason="capacity"}} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{{MODEL}}} 0.0
# HELP vllm:request_success_total Count of successfully processed requests.
# TYPE vllm:request_success_total counter
vllm:request_success_total{{engine="0",finished_reason="stop",model_name="smollm2-135m-instruct"}} 1.0
vllm:request_success_total{{engine="0",finished_reason="length",model_name="smollm2-135m-instruct"}} 1.0
vllm:request_success_total{{engine="0",finished_reason="abort",model_name="smollm2-135m-instruct"}} 0.0
vllm:request_success_created{{engine="0",finished_reason="stop",model_name="smollm2-135m-instruct"}} 1.79e+09
# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency in seconds.
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{{{MODEL},le="5.0"}} 1.0
vllm:e2e_request_latency_seconds_bucket{{{MODEL},le="+Inf"}} 2.0
vllm:e2e_request_latency_seconds_count{{{MODEL}}} 2.0
vllm:e2e_request_latency_seconds_sum{{{MODEL}}} 6.96
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{{block_size="128",{MODEL},kv_cache_max_concurrency="11.375",\
kv_cache_size_tokens="23296",num_gpu_blocks="182"}} 1.0
"""
LOG = (
    "(EngineCore pid=8161) INFO 12-01 13:11:37 [kv_cache_utils.py:2327] CPU KV cache size: 23,296 tokens, "
    "Maximum concurrency for 2,048 tokens per request: 11.38x\n"
)


def _starting(name: str) -> Any:
    """The notebook's own starting answer ``name``: its definition, run without the grading call."""
    for cell in nbformat.read(ROOT / "notebooks" / f"{NOTEBOOK}.ipynb", as_version=4).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.parse(cell.source).body:
            targets = [t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign) else []
            if (isinstance(node, ast.FunctionDef) and node.name == name) or name in targets:
                scope: dict[str, Any] = {"metrics": metrics}
                exec(compile(ast.Module([node], []), NOTEBOOK, "exec"), scope)
                return scope[name]
    raise AssertionError(f"the notebook defines no {name}")


def _fails_with_hints(checks: list[LabCheck]) -> list[str]:
    failed = [c for c in checks if not c.ok]
    assert failed and all(c.hint.strip() for c in failed)
    return [c.name for c in failed]


def _passes(checks: list[LabCheck]) -> None:
    assert checks and all(c.ok for c in checks), {c.name: c.hint for c in checks if not c.ok}


def test_metric_value_reference_passes_and_the_first_line_reader_fails() -> None:
    _passes(nb02.check_metric_value(exercises.solution(NOTEBOOK, "metric_value"), METRICS))
    failed = _fails_with_hints(nb02.check_metric_value(_starting("metric_value"), METRICS))
    assert any("sums its series" in name for name in failed) and any("does not export" in name for name in failed)


def test_metric_value_that_ignores_labels_or_matches_a_prefix_fails() -> None:
    def ignores_labels(text: str, name: str, labels: dict[str, str] | None = None) -> float:
        return float(sum(v for n, _, v in metrics.samples(text) if n == name))

    def by_prefix(text: str, name: str, labels: dict[str, str] | None = None) -> float:
        return float(sum(v for n, _, v in metrics.samples(text) if n.startswith(name.removesuffix("_count"))))

    assert any("labels select" in n for n in _fails_with_hints(nb02.check_metric_value(ignores_labels, METRICS)))
    assert any("_count" in n for n in _fails_with_hints(nb02.check_metric_value(by_prefix, METRICS)))


def test_max_concurrency_reference_passes_blocks_and_read_back_fail() -> None:
    _passes(nb02.check_max_concurrency(exercises.solution(NOTEBOOK, "max_concurrency"), METRICS, LOG, 2048))
    assert len(_fails_with_hints(nb02.check_max_concurrency(_starting("max_concurrency"), METRICS, LOG, 2048))) == 3

    def read_back(text: str, max_model_len: int) -> float:
        info = next(labels for name, labels, _ in metrics.samples(text) if name == "vllm:cache_config_info")
        return float(info["kv_cache_max_concurrency"])

    assert _fails_with_hints(nb02.check_max_concurrency(read_back, METRICS, LOG, 2048)) == [
        "at a shorter --max-model-len (512), equals the kit's formula"
    ]


class _Health(BaseHTTPRequestHandler):
    """Answers as vLLM's API server does: 200 on /health, 404 on routes it does not serve."""

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def health_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_deployment_reference_passes_and_the_first_draft_fails(health_url: str) -> None:
    _passes(nb02.check_vllm_deployment(exercises.solution(NOTEBOOK, "vllm_deployment"), health_url, 50.0))
    failed = _fails_with_hints(nb02.check_vllm_deployment(_starting("vllm_deployment"), health_url, 50.0))
    assert {name.split(" (")[0] for name in failed} == {
        "the kit's validator finds no problem",
        "every probe asks a path the running vLLM answers 200",
        "the startup probe allows the start-up time measured here",
    }


def test_deployment_mistakes_fail_with_hints(health_url: str) -> None:
    reference: str = exercises.solution(NOTEBOOK, "vllm_deployment")
    wrong_port = reference.replace('"--port", "8000"', '"--port", "8080"')
    too_short = reference.replace("failureThreshold: 60", "failureThreshold: 2")
    assert any(
        "port vLLM listens on" in n for n in _fails_with_hints(nb02.check_vllm_deployment(wrong_port, health_url, 50.0))
    )
    assert any("startup probe" in n for n in _fails_with_hints(nb02.check_vllm_deployment(too_short, health_url, 50.0)))
    assert _fails_with_hints(nb02.check_vllm_deployment("kind: [unclosed", health_url, 50.0)) == ["parses as YAML"]
    assert _fails_with_hints(nb02.check_vllm_deployment("kind: Service", health_url, 50.0)) == ["one Deployment"]
