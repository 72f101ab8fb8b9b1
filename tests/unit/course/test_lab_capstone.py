"""Lab 09's grading rejects the colleague's plan and the classic mistakes, and accepts the reference plan.

No engine runs here: the runs are fabricated in the shape :func:`capstone.serve_plan` records them, with
the plan parsed, priced and its alert checked by promtool exactly as the notebook does.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from servelab import results
from servelab.course.labs import capstone
from servelab.errors import ServelabError

ROOT = Path(__file__).resolve().parents[3]
SOLUTION = (ROOT / "labs" / "solutions" / "lab09_capstone_plan.yaml").read_text()
NOTEBOOK = ROOT / "labs" / "lab09_capstone_serve_an_slo.ipynb"
# The names llama-server b11312 exports with --metrics (read from a live server).
LLAMACPP_SERIES = [
    "llamacpp:n_busy_slots_per_decode",
    "llamacpp:n_decode_total",
    "llamacpp:predicted_tokens_seconds",
    "llamacpp:prompt_seconds_total",
    "llamacpp:prompt_tokens_seconds",
    "llamacpp:prompt_tokens_total",
    "llamacpp:requests_deferred",
    "llamacpp:requests_processing",
    "llamacpp:tokens_predicted_seconds_total",
    "llamacpp:tokens_predicted_total",
]
# One slot answering one request at a time on a 2-core machine (medians).
ALONE = {"e2e_p50_s": 0.63, "ttft_p50_s": 0.22, "tpot_p50_s": 0.013}
CPU_USD_PER_HOUR = 0.1785


def _starting_plan() -> str:
    nb = json.loads(NOTEBOOK.read_text())
    cell = next("".join(c["source"]) for c in nb["cells"] if "".join(c["source"]).startswith("# YOUR TURN"))
    return cell.split('"""')[1]


STARTING = _starting_plan()
SCENARIO = capstone.scenario_from(ALONE, CPU_USD_PER_HOUR)


def _bench(**figures: Any) -> dict[str, Any]:
    """A load-generator summary as the lab records it; ``figures`` override the defaults."""
    base = {
        "requests": 40,
        "ok": 40,
        "errors": 0,
        "timeouts": 0,
        "duration_s": 37.0,
        "request_throughput": 1.08,
        "output_token_throughput": 34.5,
        "ttft_p50_s": 0.3,
        "ttft_p90_s": 0.6,
        "ttft_p99_s": 0.9,
        "ttft_n": 40,
        "tpot_p50_s": 0.02,
        "tpot_p90_s": 0.03,
        "tpot_p99_s": 0.04,
        "tpot_n": 40,
        "first_error": None,
    }
    return {**base, **figures}


def _recorded(
    plan_text: str,
    tmp_path: Path,
    *,
    load: dict[str, Any] | None = None,
    full: dict[str, Any] | None = None,
    overload: dict[str, Any] | None = None,
    fired: tuple[bool, bool] = (False, True),
    queue: tuple[float, float] = (0.05, 6.0),
    engine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What the results file holds after the set-up cell and serve_plan, for a run with these outcomes."""
    plan = capstone.parse_plan(plan_text)
    alert = capstone.validate_alert(plan.alert, tmp_path)
    alert.update(engine_series=LLAMACPP_SERIES, evaluated=True, fired_during_load=fired[0])
    alert.update(fired_during_overload=fired[1], timeline=[])
    serve: dict[str, Any] = {
        "plan_text": plan_text,
        "plan": asdict(plan),
        "node": capstone.node_price(plan),
        "alert": alert,
        "engine": engine or {"started": True, "kind": plan.engine, "device": "cpu", "command": []},
        "load_test": {"rate_rps": SCENARIO.rate_rps / plan.replicas, **_bench(**(load or {})), "ttft_s": []},
        "full_batch": {
            "concurrency": plan.batch_limit,
            **_bench(
                **{"requests": 8, "ok": 8, "request_throughput": 1.7, "ttft_p50_s": 0.45, "ttft_n": 8, **(full or {})}
            ),
        },
        "overload": {"users": 12, "waiting": 8, **_bench(**{"ttft_p90_s": 4.5, **(overload or {})})},
        "queue": {"metric": "llamacpp:requests_deferred", "series": [], "mean_during_load": queue[0]},
    }
    serve["queue"]["mean_during_overload"] = queue[1]
    return {"scenario": asdict(SCENARIO), "serve": serve}


def _failed(recorded: dict[str, Any]) -> dict[str, str]:
    return {c.name: c.hint for c in capstone.check_plan(recorded) if not c.ok}


def test_the_scenario_scales_with_the_machine() -> None:
    assert SCENARIO.rate_rps == pytest.approx(capstone.LOAD / ALONE["e2e_p50_s"], rel=0.05)
    assert SCENARIO.slo_ttft_p90_s == pytest.approx(capstone.TTFT_FACTOR * ALONE["e2e_p50_s"], rel=0.05)
    assert SCENARIO.slo_tpot_p50_s == pytest.approx(capstone.TPOT_FACTOR * ALONE["tpot_p50_s"], rel=0.05)
    half_as_fast = capstone.scenario_from({k: 2 * v for k, v in ALONE.items()}, CPU_USD_PER_HOUR)
    assert half_as_fast.rate_rps == pytest.approx(SCENARIO.rate_rps / 2, rel=0.1)
    assert half_as_fast.slo_ttft_p90_s == pytest.approx(2 * SCENARIO.slo_ttft_p90_s, rel=0.1)
    assert "request/s" in SCENARIO.describe() and "per 1M output tokens" in SCENARIO.describe()


def test_the_reference_plan_passes_every_check(tmp_path: Path) -> None:
    checks = capstone.check_plan(_recorded(SOLUTION, tmp_path))
    assert len(checks) >= 7 and all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_the_starting_plan_fails_with_a_hint_for_each_requirement(tmp_path: Path) -> None:
    run = _recorded(
        STARTING, tmp_path, load={"ttft_p50_s": 1.4, "ttft_p90_s": 3.1}, fired=(False, False), queue=(1.2, 8.0)
    )
    failed = _failed(run)
    assert set(failed) == {
        capstone.TTFT_MET,
        capstone.HPA_FITS,
        capstone.ALERT_VALID,
        capstone.ALERT_SILENT,
        capstone.ALERT_FIRES,
        capstone.WITHIN_BUDGET,
    }
    assert all(hint.strip() for hint in failed.values())
    assert "(n=40)" in failed[capstone.TTFT_MET] and "one slot" in failed[capstone.TTFT_MET]
    assert "vllm:num_requests_waiting" in failed[capstone.ALERT_VALID]
    assert "llamacpp:requests_deferred" in failed[capstone.ALERT_VALID]
    assert "T4" in failed[capstone.WITHIN_BUDGET] and "node: CPU" in failed[capstone.WITHIN_BUDGET]
    assert "queue_target_bound" in failed[capstone.HPA_FITS]


def test_a_second_replica_breaks_the_budget(tmp_path: Path) -> None:
    one = capstone.fleet_cost(_recorded(SOLUTION, tmp_path)["serve"])[0]
    assert one is not None and one <= SCENARIO.budget_usd_per_mtok
    two = _recorded(SOLUTION.replace("replicas: 1", "replicas: 2"), tmp_path, load={"output_token_throughput": 17.2})
    assert set(_failed(two)) == {capstone.WITHIN_BUDGET}
    assert "$" in _failed(two)[capstone.WITHIN_BUDGET]


def test_spot_is_cheaper_and_a_gpu_priced_for_cpu_tokens_is_refused(tmp_path: Path) -> None:
    spot = _recorded(SOLUTION.replace("market: on_demand", "market: spot"), tmp_path)
    assert _failed(spot) == {}
    spot_usd, on_demand_usd = (capstone.fleet_cost(r["serve"])[0] for r in (spot, _recorded(SOLUTION, tmp_path)))
    assert spot_usd is not None and on_demand_usd is not None and spot_usd < on_demand_usd
    gpu = _failed(_recorded(SOLUTION.replace("node: CPU", "node: L4"), tmp_path))
    assert set(gpu) == {capstone.WITHIN_BUDGET} and "measured on a CPU" in gpu[capstone.WITHIN_BUDGET]


def test_a_batch_too_big_for_the_ttft_bound_leaves_no_queue_target(tmp_path: Path) -> None:
    big = _recorded(SOLUTION.replace("batch_limit: 4", "batch_limit: 32"), tmp_path, full={"ttft_p50_s": 2.5})
    failed = _failed(big)
    assert set(failed) == {capstone.HPA_FITS} and "Lower batch_limit" in failed[capstone.HPA_FITS]


def test_a_target_above_what_the_bound_allows_fails_and_names_the_bound(tmp_path: Path) -> None:
    failed = _failed(_recorded(SOLUTION.replace("hpa_queue_target: 0.5", "hpa_queue_target: 4"), tmp_path))
    assert set(failed) == {capstone.HPA_FITS}
    assert "waiting per replica" in failed[capstone.HPA_FITS] and "ask for 2 replicas" in failed[capstone.HPA_FITS]
    lazy = _failed(_recorded(SOLUTION.replace("hpa_queue_target: 0.5", "hpa_queue_target: 10"), tmp_path))
    assert "would then not add a replica" in lazy[capstone.HPA_FITS]


def test_slow_tokens_and_failed_requests_are_each_reported(tmp_path: Path) -> None:
    slow = _failed(_recorded(SOLUTION, tmp_path, load={"tpot_p50_s": 0.08}))
    assert capstone.TPOT_MET in slow and "(n=40)" in slow[capstone.TPOT_MET]
    assert capstone.ALERT_SILENT in slow and "not judged" in slow[capstone.ALERT_SILENT]
    broken = _failed(_recorded(SOLUTION, tmp_path, load={"ok": 37, "errors": 3, "first_error": "HTTP 500: boom"}))
    assert capstone.NO_FAILURES in broken and "HTTP 500" in broken[capstone.NO_FAILURES]


def test_an_alert_that_pages_while_the_slo_holds_fails(tmp_path: Path) -> None:
    jumpy = SOLUTION.replace("avg_over_time(llamacpp:requests_deferred[10s]) > 1", "llamacpp:requests_deferred > 0")
    failed = _failed(_recorded(jumpy, tmp_path, fired=(True, True)))
    assert set(failed) == {capstone.ALERT_SILENT} and "Raise its threshold" in failed[capstone.ALERT_SILENT]


def test_an_alert_that_never_fires_fails_and_an_overload_that_did_not_break_is_not_judged(tmp_path: Path) -> None:
    deaf = _failed(_recorded(SOLUTION, tmp_path, fired=(False, False)))
    assert set(deaf) == {capstone.ALERT_FIRES} and "llamacpp:requests_deferred" in deaf[capstone.ALERT_FIRES]
    mild = _failed(_recorded(SOLUTION, tmp_path, overload={"ttft_p90_s": 0.5}))
    assert set(mild) == {capstone.ALERT_FIRES} and "not judged" in mild[capstone.ALERT_FIRES]


def test_an_invalid_rule_is_graded_by_promtool_and_not_evaluated(tmp_path: Path) -> None:
    broken = SOLUTION.replace("> 1\n", "> > 1\n")
    run = _recorded(broken, tmp_path)
    run["serve"]["alert"].update(evaluated=False)  # serve_plan starts no Prometheus for a rule promtool refuses
    failed = _failed(run)
    assert {capstone.ALERT_VALID, capstone.ALERT_SILENT, capstone.ALERT_FIRES} == set(failed)
    assert "promtool" in failed[capstone.ALERT_VALID]
    rule_without_expr = capstone.validate_alert({"alert": "X"}, tmp_path)
    assert not rule_without_expr["promtool_ok"] and "expr" in rule_without_expr["promtool_output"]


def test_an_engine_that_did_not_start_is_quoted_and_blocks_what_needs_it(tmp_path: Path) -> None:
    error = "error: invalid argument: --no-such-flag"
    run = _recorded(SOLUTION, tmp_path, engine={"started": False, "error": error})
    for key in ("load_test", "full_batch", "overload", "queue"):
        run["serve"].pop(key)
    run["serve"]["alert"] = {**run["serve"]["alert"], "evaluated": False}
    run["serve"]["alert"].pop("engine_series")
    failed = _failed(run)
    assert error in failed[capstone.ENGINE_RAN]
    assert {capstone.TTFT_MET, capstone.HPA_FITS, capstone.ALERT_VALID, capstone.WITHIN_BUDGET} <= set(failed)


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (("engine: llama-server", "engine: tgi"), "engine='tgi'"),
        (("quantization: Q4_1", "quantization: Q3_0"), "quantization='Q3_0'"),
        (("batch_limit: 4", "batch_limit: 0"), "batch_limit=0"),
        (("replicas: 1", "replicas: one"), "replicas='one'"),
        (("hpa_queue_target: 0.5", "hpa_queue_target: 0"), "HPA target 0.0 must be > 0"),
        (("node: CPU", "node: TPU"), "node='TPU'"),
        (("market: on_demand", "market: reserved"), "market='reserved'"),
        (("market: on_demand", "markets: on_demand"), "unknown field 'markets'"),
    ],
)
def test_a_malformed_plan_says_which_field_to_fix(change: tuple[str, str], said: str) -> None:
    with pytest.raises(ServelabError) as err:
        capstone.parse_plan(SOLUTION.replace(*change))
    assert said in str(err.value)


def test_vllm_plans_take_dtypes_not_gguf_levels() -> None:
    plan = capstone.parse_plan(SOLUTION.replace("engine: llama-server", "engine: vllm").replace("Q4_1", "float32"))
    assert plan.engine == "vllm" and plan.quantization == "float32"
    with pytest.raises(ServelabError, match="vllm takes one of"):
        capstone.parse_plan(SOLUTION.replace("engine: llama-server", "engine: vllm"))


def test_a_plan_that_cannot_run_is_recorded_and_graded_without_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVELAB_RESULTS", str(tmp_path))
    results.reset(capstone.LAB)
    results.record(capstone.LAB, scenario=asdict(SCENARIO))
    capstone.serve_plan("engine: [unclosed", SCENARIO)
    (check,) = capstone.check_plan(results.load(capstone.LAB))
    assert not check.ok and "YAML" in check.hint
    assert not capstone.check_plan({})[0].ok
    assert "serve_plan" in capstone.check_plan({"scenario": asdict(SCENARIO)})[0].hint


def test_the_measured_table_puts_each_figure_beside_its_bound(tmp_path: Path) -> None:
    rows = {row["figure"]: row for row in capstone.measured_table(_recorded(SOLUTION, tmp_path))}
    assert rows["TTFT p90 (s)"]["n"] == 40 and rows["TTFT p90 (s)"]["bound"] == SCENARIO.slo_ttft_p90_s
    assert rows["$ per 1M output tokens"]["measured"] == capstone.fleet_cost(_recorded(SOLUTION, tmp_path)["serve"])[0]
    hpa = rows["HPA queue target (waiting per replica)"]
    assert hpa["measured"] == 0.5 < hpa["bound"]
