"""The lab checkers reject the starting point and the classic mistakes, and accept the reference."""

import json
from pathlib import Path

import pytest
import yaml

from servelab import results
from servelab.bench.stats import BenchResult, RequestRecord
from servelab.course import labs, seed
from servelab.course.labs import alerting, autoscaling
from servelab.k8s import shipped
from servelab.observe import alerts

ROOT = Path(__file__).resolve().parents[3]
SOLUTION = (ROOT / "labs" / "solutions" / "lab01_deployment.yaml").read_text()


def _failed(text: str) -> set[str]:
    return {c.name for c in labs.check_vllm_deployment(text) if not c.ok}


def test_reference_solution_passes_every_check() -> None:
    assert _failed(SOLUTION) == set()


def test_the_seed_fails_schema_rules_probes_and_image() -> None:
    deployment = seed.manifest_text().split("---")[0]  # the seed document's own Deployment
    failed = _failed(deployment)
    assert any(name.startswith("valid for Kubernetes 1.25, 1.32") for name in failed)
    assert "a current vLLM image" in failed and "startupProbe gives the model time to load" in failed


def test_a_mismatched_selector_is_caught() -> None:
    broken = SOLUTION.replace("matchLabels:\n      app: vllm-server", "matchLabels:\n      app: other")
    assert "serving rules (selector, 2+ replicas, probes, requests)" in _failed(broken)


def test_bad_yaml_gets_a_hint_not_a_traceback() -> None:
    checks = labs.check_vllm_deployment("spec: [unclosed")
    assert not checks[0].ok and "YAML" in checks[0].hint


def test_report_gives_hints_and_a_score_without_raising(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SERVELAB_RESULTS", str(tmp_path))
    table = labs.report(labs.check_vllm_deployment(SOLUTION.replace("startupProbe", "startupProbeX")), lab="t")
    assert "Not yet" in capsys.readouterr().out
    failed = table[table["passed"] == "NO"]
    assert len(failed) >= 1 and failed["hint"].str.contains("startupProbe").any()
    recorded = results.load("t")
    assert 0 < recorded["checks_passed"] < recorded["checks_total"]
    assert all(recorded["hints"][name] for name in recorded["failed"])
    labs.report(labs.check_vllm_deployment(SOLUTION), lab="t")
    assert "All" in capsys.readouterr().out and results.load("t")["failed"] == []


SEED_QUEUE_RULE = next(
    r for r in yaml.safe_load(seed.rules_text())["spec"]["groups"][0]["rules"] if r["alert"] == "HighQueueSize"
)
LAB06_SOLUTION = (ROOT / "labs" / "solutions" / "lab06_queue_alert.yaml").read_text()


def test_lab06_starts_from_the_seeds_queue_alert() -> None:
    nb = json.loads((ROOT / "labs" / "lab06_the_alert_that_never_fires.ipynb").read_text())
    start = next("".join(c["source"]) for c in nb["cells"] if "".join(c["source"]).startswith("# YOUR TURN"))
    assert yaml.safe_load(start.split('"""')[1]) == SEED_QUEUE_RULE


def test_lab06_solution_is_the_kits_rule_and_passes() -> None:
    kit = next(r for r in alerts.render_rules()["groups"][0]["rules"] if r["alert"] == "VLLMQueueBacklog")
    solution = yaml.safe_load(LAB06_SOLUTION)
    assert (solution["expr"], solution["for"]) == (kit["expr"], kit["for"])
    assert all(c.ok for c in labs.check_queue_alert(LAB06_SOLUTION))


def test_lab06_the_seeds_rule_fails_with_hints() -> None:
    checks = labs.check_queue_alert(yaml.safe_dump(SEED_QUEUE_RULE))
    failed = {c.name: c.hint for c in checks if not c.ok}
    assert (
        "every metric is one vLLM exports" in failed
        and "vllm_num_requests_waiting" in failed["every metric is one vLLM exports"]
    )
    assert any(name.startswith("fires:") for name in failed) and "a severity label to route on" in failed


def test_lab06_each_classic_mistake_is_caught_by_the_fleet_it_breaks() -> None:
    good = yaml.safe_load(LAB06_SOLUTION)
    summed = {**good, "expr": "sum by (model_name) (vllm:num_requests_waiting) > 50"}
    no_for = {key: value for key, value in good.items() if key != "for"}
    too_low = {**good, "expr": good["expr"].replace("> 2", "> 0.4")}

    at_target, losing, burst = (fleet.name for fleet in alerting.fleets())

    def failed(rule: dict) -> list[str]:
        return [c.name for c in labs.check_queue_alert(yaml.safe_dump(rule)) if not c.ok]

    assert failed(summed) == [at_target, losing]  # pages for the big healthy fleet, misses the losing one
    assert failed(no_for) == [burst]
    assert failed(too_low) == [at_target]


def test_lab06_bad_yaml_and_bad_promql_get_hints_not_tracebacks() -> None:
    (yaml_error,) = labs.check_queue_alert("alert: [unclosed")
    assert not yaml_error.ok and "YAML" in yaml_error.hint
    (promql_error,) = labs.check_queue_alert("alert: Q\nexpr: avg(vllm:num_requests_waiting > 2\n")
    assert not promql_error.ok and "promtool" in promql_error.hint
    (not_a_rule,) = labs.check_queue_alert("just text")
    assert not not_a_rule.ok and "alert:" in not_a_rule.hint


LAB07_SOLUTION = yaml.safe_load((ROOT / "labs" / "solutions" / "lab07_autoscaling.yaml").read_text())


@pytest.fixture(scope="module")
def day() -> autoscaling.Day:
    return autoscaling.reference_day()


def test_lab07_starts_from_the_seeds_hpa_and_its_solution_is_what_the_kit_ships() -> None:
    nb = json.loads((ROOT / "labs" / "lab07_the_autoscaler_that_never_scales.ipynb").read_text())
    start = next("".join(c["source"]) for c in nb["cells"] if "".join(c["source"]).startswith("# YOUR TURN"))
    assert yaml.safe_load(start.split('"""')[1]) == list(yaml.safe_load_all(seed.manifest_text()))[1]
    assert "max_num_seqs = None" in start
    shipped_hpa = yaml.safe_load((ROOT / "manifests" / "vllm" / "base" / "hpa.yaml").read_text())
    assert yaml.safe_load(LAB07_SOLUTION["hpa"]) == shipped_hpa
    assert LAB07_SOLUTION["max_num_seqs"] == shipped.max_num_seqs("cpu")


def test_lab07_the_seeds_hpa_fails_every_check_with_a_hint(day: autoscaling.Day) -> None:
    seed_hpa = yaml.safe_dump(list(yaml.safe_load_all(seed.manifest_text()))[1])
    checks = labs.check_autoscaling(seed_hpa, None, day)
    assert not any(c.ok for c in checks) and all(c.hint for c in checks)


def test_lab07_the_solution_passes_and_each_classic_mistake_fails_where_it_should(day: autoscaling.Day) -> None:
    hpa = LAB07_SOLUTION["hpa"]

    def failed(text: str, batch: int | None) -> list[str]:
        return [c.name for c in labs.check_autoscaling(text, batch, day) if not c.ok]

    assert failed(hpa, LAB07_SOLUTION["max_num_seqs"]) == []
    assert failed(hpa, None) == [
        "--max-num-seqs caps the batch at a measured size",
        autoscaling.MEETS_SLO,
        autoscaling.SAVES,
    ]
    assert failed(hpa.replace('"500m"', '"10"'), 8) == [autoscaling.MEETS_SLO]  # the seed's target: 13% late
    assert failed(hpa.replace("minReplicas: 2", "minReplicas: 10"), 8) == [autoscaling.SAVES]  # never shrinks


def test_lab07_bad_input_gets_hints_not_tracebacks(day: autoscaling.Day) -> None:
    (yaml_error,) = labs.check_autoscaling("spec: [unclosed", 8, day)
    assert "YAML" in yaml_error.hint
    no_value = LAB07_SOLUTION["hpa"].replace('averageValue: "500m"', "")
    checks = {c.name: c for c in labs.check_autoscaling(no_value, 8, day)}
    assert not checks[autoscaling.MEETS_SLO].ok and checks[autoscaling.MEETS_SLO].hint
    assert not labs.check_autoscaling(LAB07_SOLUTION["hpa"], 0, day)[2].ok


LAB05_SOLUTION = yaml.safe_load((ROOT / "labs" / "solutions" / "lab05_benchmark.yaml").read_text())
COLLEAGUE = {"request_rate": None, "concurrency": 1, "num_requests": 5, "output_tokens": 32, "force_length": False}


def _run(n: int, tokens: int, failed: int = 0) -> BenchResult:
    """A run's records as the load generator writes them (the lab's live run is in tests/notebooks)."""
    records = [RequestRecord(i, i * 1.0, "ok", ttft_s=0.2, e2e_s=0.5, output_tokens=tokens) for i in range(n)]
    records += [RequestRecord(n + i, 0.0, "timeout", error="no answer within 120 s") for i in range(failed)]
    return BenchResult(records, {}, duration_s=float(n))


def test_lab05_the_colleagues_settings_fail_with_hints_and_the_solution_passes() -> None:
    failed = [c for c in labs.check_benchmark(COLLEAGUE, _run(5, 32), 0.8) if not c.ok]
    assert len(failed) == 3 and all(c.hint for c in failed)
    assert "closed loop" in failed[0].hint and "force_length=False" in failed[1].hint
    solution = {**LAB05_SOLUTION, "request_rate": 0.8}
    assert all(c.ok for c in labs.check_benchmark(solution, _run(40, 32), 0.8))


def test_lab05_checks_grade_the_run_not_only_the_settings() -> None:
    solution = {**LAB05_SOLUTION, "request_rate": 0.8}
    names = {c.name: c.ok for c in labs.check_benchmark(solution, _run(38, 31, failed=2), 0.8)}
    assert list(names.values()) == [True, False, True, False]  # short answers and timeouts show in the records
    assert not labs.check_benchmark({**solution, "request_rate": 2.0}, _run(40, 32), 0.8)[0].ok


def test_lab05_bad_settings_get_one_clear_row(capsys) -> None:
    for bad in ({**COLLEAGUE, "num_requests": "5"}, {**COLLEAGUE, "rate": 1}, {**COLLEAGUE, "force_length": 1}):
        (row,) = labs.check_benchmark(bad, None, 0.8)
        assert not row.ok and "fix:" in row.hint
    (not_run,) = labs.check_benchmark(COLLEAGUE, None, 0.8)
    assert "run the cell above" in not_run.hint
