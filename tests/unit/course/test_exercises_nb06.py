"""Notebook 06's exercise checks without servers: the P95 check's comparison and its naming of the classic
mistakes, on series a stand-in Prometheus returns for each query; the inhibition check's YAML handling and
its verdict on what Alertmanager suppressed. The real Prometheus and Alertmanager grade both exercises
in the notebook run (tests/notebooks), where the untouched answers fail and the references pass.
"""

from __future__ import annotations

import ast
import math
import re
from typing import Any

import nbformat
import pandas as pd
import pytest

from servelab import paths
from servelab.course.exercises import nb06, solutions_module
from servelab.errors import ServelabError
from servelab.observe import alerts, dashboard

WINDOW = "20s"
STAMPS = [1000.0 + 2 * i for i in range(6)]
MODEL = "smollm2-135m"
NO_RATE = "histogram_quantile(0.95, sum by (model_name, le) (vllm:time_to_first_token_seconds_bucket))"
P99 = nb06.KIT_P95_TTFT.replace("0.95", "0.99")
BY_LE = nb06.KIT_P95_TTFT.replace("model_name, le", "le")


SOLUTIONS = solutions_module("06_monitoring_alerting")


def _starting(exercise: str) -> str:
    """The answer the learner finds in the notebook's exercise cell, before writing anything."""
    notebook = nbformat.read(paths.repo_root() / "notebooks" / "06_monitoring_alerting.ipynb", as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code" and "grading.grade(" in cell.source and f'"{exercise}"' in cell.source:
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == exercise for t in node.targets):
                    return str(ast.literal_eval(node.value))
    raise AssertionError(f"no cell of notebook 06 grades {exercise}")


def _frame(values: list[float], **labels: str) -> pd.DataFrame:
    return pd.DataFrame([{"timestamp": t, "value": v, **labels} for t, v in zip(STAMPS, values, strict=True)])


class RecordedPrometheus:
    """Answers each query with the series a run gave it (the kit's P95, the classic mistakes); nothing else."""

    def __init__(self) -> None:
        nan = math.nan
        self.frames = {
            nb06.KIT_P95_TTFT: _frame([nan, 0.2, 9.5, 18.0, 12.0, nan], model_name=MODEL),
            NO_RATE: _frame([nan, 0.2, 9.1, 16.0, 16.5, 16.5], model_name=MODEL),
            P99: _frame([nan, 0.25, 9.9, 19.5, 19.0, nan], model_name=MODEL),
            "histogram_quantile(0.95, rate(vllm:time_to_first_token_seconds_bucket[$__rate_interval]))": _frame(
                [nan, 0.2, 9.5, 18.0, 12.0, nan], model_name=MODEL, engine="0", instance="127.0.0.1:8000", job="vllm"
            ),
            BY_LE: _frame([nan, 0.2, 9.5, 18.0, 12.0, nan]),
        }
        self.names = {"vllm:time_to_first_token_seconds", "vllm:time_to_first_token_seconds_bucket"}

    def query_range(self, promql: str, start: float, end: float, step: str) -> pd.DataFrame:
        for expr, frame in self.frames.items():
            if dashboard.concrete(expr, rate_window=WINDOW) == promql:
                return frame
        if promql.count("(") != promql.count(")"):
            raise ServelabError("Prometheus refused /api/v1/query_range: parse error: unclosed left parenthesis", "")
        return pd.DataFrame(columns=["timestamp", "value"])

    def query(self, promql: str) -> list[dict[str, Any]]:
        name = promql.split('"')[1]
        return [{"metric": {}, "value": [0, "1"]}] if name in self.names else []


def _grade_query(answer: str) -> dict[str, str | None]:
    checks = nb06.check_p95_ttft_query(answer, RecordedPrometheus(), STAMPS[0], STAMPS[-1], WINDOW)  # type: ignore[arg-type]
    return {c.name: None if c.ok else c.hint for c in checks}


def test_the_reference_query_passes_and_is_the_kits() -> None:
    graded = _grade_query(SOLUTIONS.p95_ttft_query)
    assert graded and all(hint is None for hint in graded.values())


@pytest.mark.parametrize(
    ("answer", "failed", "hint"),
    [
        (_starting("p95_ttft_query"), "it returns data over the load", "keep le in the by"),
        (NO_RATE, "it is the P95 of the time to first token at every step", "take rate("),
        (P99, "it is the P95 of the time to first token at every step", "p99, not the p95"),
        (
            "histogram_quantile(0.95, rate(vllm:time_to_first_token_seconds_bucket[$__rate_interval]))",
            "one series per model, labelled model_name",
            "sum by (model_name, le)",
        ),
        (
            "histogram_quantile(0.95, sum by (model_name, le) (rate(vllm_ttft_bucket[$__rate_interval])))",
            "it returns data over the load",
            "vllm_ttft_bucket matches no series",
        ),
        (nb06.KIT_P95_TTFT[:-1], "Prometheus runs it", "unclosed left parenthesis"),
    ],
)
def test_a_classic_mistake_fails_with_a_hint_that_names_it(answer: str, failed: str, hint: str) -> None:
    graded = _grade_query(answer)
    assert hint in (graded[failed] or ""), graded
    assert all(h for h in graded.values() if h is not None)


def test_a_sum_by_le_alone_fails_on_its_labels_only() -> None:
    failed = {name: hint for name, hint in _grade_query(BY_LE).items() if hint is not None}
    assert list(failed) == ["one series per model, labelled model_name"]
    assert "the labels none" in failed["one series per model, labelled model_name"]


def test_a_step_with_nothing_observed_is_nan_and_must_be_nan_in_both() -> None:
    kit = {MODEL: {1.0: math.nan, 2.0: 3.0}}
    assert nb06.quantile_mismatch({MODEL: {1.0: math.nan, 2.0: 3.0 * (1 + 1e-9)}}, kit)[0] == 0
    differ, total, example = nb06.quantile_mismatch({MODEL: {1.0: 5.0}}, kit)
    assert (differ, total) == (2, 2) and "yours 5" in example


# --- inhibition -----------------------------------------------------------------------------------


class LabelsPrometheus:
    """What the notebook's Prometheus answers to the rules' expressions with their comparison dropped."""

    def query(self, promql: str) -> list[dict[str, Any]]:
        assert not re.search(r"(==|>)\s*[0-9.]+\s*$", promql), f"the comparison is not dropped: {promql}"
        if promql.startswith("up{"):
            return [{"metric": {"__name__": "up", "job": "vllm", "instance": "127.0.0.1:8000"}, "value": [0, "1"]}]
        return [{"metric": {"model_name": MODEL}, "value": [0, "0"]}]


def _scenario() -> list[dict[str, str]]:
    rules = {r["alert"]: r for r in alerts.render_rules({"job_regex": "vllm"})["groups"][0]["rules"]}
    return nb06.scenario_alerts(LabelsPrometheus(), rules)  # type: ignore[arg-type]


def test_the_alerts_sent_carry_the_labels_the_rules_give_them() -> None:
    sent = {(a["cluster"], a["alertname"]): a for a in _scenario()}
    down = sent[("lab-a", "VLLMServerDown")]
    assert down == {
        "job": "vllm",
        "instance": "127.0.0.1:8000",
        "severity": "critical",
        "alertname": "VLLMServerDown",
        "cluster": "lab-a",
    }
    assert sent[("lab-b", "VLLMHighTTFT")] == {
        "model_name": MODEL,
        "severity": "warning",
        "alertname": "VLLMHighTTFT",
        "cluster": "lab-b",
    }
    assert ("lab-b", "VLLMServerDown") not in sent


def _verdict(muted: set[tuple[str, str]]) -> dict[str, str | None]:
    sent = _scenario()
    checks = nb06.inhibition_verdict(sent, [(a["cluster"], a["alertname"]) in muted for a in sent])
    return {c.name: None if c.ok else c.hint for c in checks}


def test_muting_exactly_the_latency_pages_of_the_cluster_passes() -> None:
    graded = _verdict({("lab-a", name) for name in nb06.LATENCY_ALERTS})
    assert all(hint is None for hint in graded.values())


def test_muting_nothing_fails_and_names_the_label_both_sides_carry() -> None:
    # What Alertmanager does with the starting answer: `equal: [instance]`, a label the latency alerts lack.
    hint = _verdict(set())["VLLMServerDown mutes the latency pages of its cluster"]
    assert hint and "both carry ['cluster']" in hint and "'instance'" in hint


def test_muting_every_warning_everywhere_fails_twice() -> None:
    warnings = {(c, n) for c in nb06.CLUSTERS for n in (*nb06.LATENCY_ALERTS, "VLLMQueueBacklog")}
    graded = _verdict(warnings)
    assert "equal:" in (graded["another cluster's latency pages still notify"] or "")
    assert "VLLMQueueBacklog of lab-a" in (graded["the page itself and the queue alert still notify"] or "")


@pytest.mark.parametrize(
    ("answer", "hint"),
    [("inhibit_rules: [", "fix the YAML syntax"), ("inhibit_rules: []", "a list of rules"), ("42", "a list of rules")],
)
def test_an_answer_that_is_no_list_of_rules_fails_before_any_server(answer: str, hint: str) -> None:
    (check,) = nb06.check_latency_inhibition(answer, None, {})  # type: ignore[arg-type]
    assert not check.ok and hint in check.hint


def test_the_untouched_answer_and_the_reference_parse_as_one_rule() -> None:
    for answer in (SOLUTIONS.latency_inhibition, _starting("latency_inhibition")):
        rules, problem = nb06.parse_inhibit_rules(answer)
        assert rules is not None and len(rules) == 1 and not problem
