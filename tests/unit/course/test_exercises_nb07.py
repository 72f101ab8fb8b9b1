"""Notebook 07's exercise checks: each reference solution passes, each starting answer and the classic
mistakes fail with a hint that names the mistake. The queue-target check simulates lab 07's reference
day (a few seconds per setting, cached across these tests); the others need nothing but the price file
and the shipped reference results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from servelab import results
from servelab.course.exercises import nb07, solutions_module
from servelab.course.grading import LabCheck
from servelab.planning import cost

ROOT = Path(__file__).resolve().parents[3]


SOLUTIONS = solutions_module("07_autoscaling_cost")
ROWS = json.loads((results.reference_dir() / "05_benchmarking.json").read_text())["closed"]
BOOK = cost.load_prices()


def _failed(checks: list[LabCheck]) -> dict[str, str]:
    """The failed checks with their hints; every failure must carry one."""
    failed = {c.name: c.hint for c in checks if not c.ok}
    assert all(hint.strip() for hint in failed.values())
    return failed


# --- Your turn 1 ---------------------------------------------------------------------------------------


def _rounds(waiting: list[float], target: float) -> int:  # the notebook's starting answer
    return round(sum(waiting) / target)


def _ceil_without_tolerance(waiting: list[float], target: float) -> int:
    return math.ceil(sum(waiting) / target)


def test_hpa_formula_reference_passes_and_the_mistakes_are_named() -> None:
    assert _failed(nb07.check_hpa_desired_replicas(SOLUTIONS.hpa_desired_replicas, 0.5)) == {}
    start = _failed(nb07.check_hpa_desired_replicas(_rounds, 0.5))
    assert len(start) == 2 and any("math.ceil" in hint for hint in start.values())
    (no_tolerance,) = _failed(nb07.check_hpa_desired_replicas(_ceil_without_tolerance, 0.5)).values()
    assert "changes nothing" in no_tolerance and "math.ceil" not in no_tolerance


# --- Your turn 2 ---------------------------------------------------------------------------------------


def test_queue_target_reference_meets_the_slo_for_less_than_the_kit_ships() -> None:
    assert _failed(nb07.check_queue_target_choice(SOLUTIONS.queue_target_choice)) == {}


def test_queue_target_starting_pair_misses_the_slo_by_design() -> None:
    failed = _failed(nb07.check_queue_target_choice({"max_num_seqs": 16, "queue_target": 10}))
    assert len(failed) == 4 and "over the 1 s SLO" in next(iter(failed.values()))


def test_queue_target_the_shipped_pair_is_not_the_cheapest() -> None:
    batch, target = nb07.shipped_choice()
    failed = _failed(nb07.check_queue_target_choice({"max_num_seqs": batch, "queue_target": target}))
    assert list(failed) == [
        "fewer replica-hours than the kit ships",
        "no neighbouring choice meets the SLO for fewer replica-hours",
    ]
    assert "target 1 " in failed["no neighbouring choice meets the SLO for fewer replica-hours"]


@pytest.mark.parametrize(
    "answer",
    [None, {"max_num_seqs": 8}, {"max_num_seqs": 0, "queue_target": 1}, {"max_num_seqs": 8, "queue_target": -1}],
)
def test_queue_target_bad_answers_get_hints_without_a_simulation(answer: Any) -> None:
    checks = nb07.check_queue_target_choice(answer)
    assert len(checks) == 4 and len(_failed(checks)) == 4


# --- Your turn 3 ---------------------------------------------------------------------------------------


def _per_second_total_tokens_instance_price(offer: cost.Offer, row: dict[str, Any], utilization: float) -> float:
    """The notebook's starting answer."""
    return offer.on_demand.usd_per_instance_hour / (row["total_token_throughput"] * utilization) * 1e6


def _utilization_multiplied(offer: cost.Offer, row: dict[str, Any], utilization: float) -> float:
    return offer.usd_per_unit_hour() * utilization / (row["output_token_throughput"] * 3600) * 1e6


def _check_cost(answer: Any) -> dict[str, str]:
    return _failed(nb07.check_usd_per_million_output_tokens(answer, BOOK, ROWS, "CPU", 0.6))


def test_cost_reference_passes_and_equals_the_kits_figure() -> None:
    assert _check_cost(SOLUTIONS.usd_per_million_output_tokens) == {}


def test_cost_starting_answer_names_each_of_its_three_mistakes() -> None:
    failed = _check_cost(_per_second_total_tokens_instance_price)
    assert len(failed) == 3
    hints = " ".join(failed.values())
    assert "x 3600" in hints and "output tokens only" in hints and "8 GPUs" in hints


def test_cost_multiplied_utilization_fails_only_where_utilization_is_not_one() -> None:
    (hint,) = _check_cost(_utilization_multiplied).values()
    assert "does not multiply it" in hint
