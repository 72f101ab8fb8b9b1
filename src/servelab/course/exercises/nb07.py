"""Checks for the "Your turn" exercises of notebook 07 (autoscaling and cost). Each grades what the
learner's answer does, against the kit's own implementation of the same thing:

- :func:`check_hpa_desired_replicas`: the learner's HPA formula against :mod:`servelab.k8s.autoscale`
  (the algorithm the notebook checks against the Kubernetes docs), on cases either side of the tolerance.
- :func:`check_queue_target_choice`: a ``--max-num-seqs`` and an HPA queue target, simulated over lab 07's
  reference day with the kit's capacity simulator and the shipped HPA; it must meet the SLO, cost fewer
  replica-hours than what the kit ships, and have no cheaper neighbour that still meets the SLO. Lab 07
  repairs an autoscaler that never scales; this exercise optimises one that already works.
- :func:`check_usd_per_million_output_tokens`: $/1M output tokens from a measured row and a dated price,
  against :func:`servelab.planning.cost.usd_per_million_tokens`, on cases chosen so that each classic
  mistake (per second against per hour, input tokens counted, the price of the whole instance, the
  utilization multiplied) shows on its own and the hint can name it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from functools import cache
from itertools import combinations
from typing import Any

from servelab.course.exercises.grader import NotAnswered
from servelab.course.grading import LabCheck, as_sentence, raised
from servelab.course.labs import autoscaling
from servelab.k8s import autoscale, shipped
from servelab.paths import manifests_path
from servelab.planning import capacity_sim, cost

DesiredReplicas = Callable[[list[float], float], Any]
UsdPerMillionOutputTokens = Callable[[cost.Offer, dict[str, Any], float], Any]

# --- Your turn 1: the HPA formula -----------------------------------------------------------------------

_SCALES = "scales to ceil(pods x average / target) outside the tolerance"
_HOLDS = f"keeps the replica count within the {autoscale.DEFAULT_TOLERANCE:.0%} tolerance"


def _hpa_cases(target: float) -> tuple[list[list[float]], list[list[float]]]:
    """Per-pod readings (waiting requests) in multiples of ``target``: ratios well outside the tolerance
    (up, down, one where ``round`` and ``ceil`` differ) and ratios inside it (above, below, and an uneven
    pair whose average is inside while one pod is far above)."""
    outside = [(2, 4.0), (3, 1.4), (4, 0.5), (10, 1.15), (10, 0.85)]
    inside = [(10, 1.05), (10, 0.95)]
    scale = [[ratio * target] * pods for pods, ratio in outside]
    hold = [[ratio * target] * pods for pods, ratio in inside] + [[2.1 * target, 0.0]]
    return scale, hold


def _hpa_case_check(answer: DesiredReplicas, name: str, cases: list[list[float]], target: float) -> LabCheck:
    wrong: list[str] = []
    rounded = no_tolerance = 0
    for values in cases:
        expected = autoscale.pods_metric_replicas(len(values), values, target)
        got = answer(list(values), target)
        if got == expected:
            continue
        mean = sum(values) / len(values)
        wrong.append(f"{len(values)} pods averaging {mean:g} waiting: the HPA sets {expected}, yours {got!r}")
        exact = sum(values) / target
        rounded += got == round(exact) != math.ceil(exact)
        no_tolerance += got == math.ceil(exact) != expected
    if not wrong:
        return LabCheck(name, True, "")
    advice = []
    if rounded:
        advice.append("The controller rounds up (math.ceil), never to the nearest: a fraction of a pod is a pod.")
    if no_tolerance:
        advice.append(
            f"While |1 - average / target| <= {autoscale.DEFAULT_TOLERANCE:g} the HPA changes nothing and keeps "
            "the current number of pods (compare the average per pod with the target, not the sum)."
        )
    advice = advice or ["Compute ratio = average per pod / target, then ceil(pods x ratio), as in section 1."]
    return LabCheck(name, False, f"With target {target:g}: " + "; ".join(wrong) + ". " + " ".join(advice))


def check_hpa_desired_replicas(answer: DesiredReplicas, target: float) -> list[LabCheck]:
    """Your turn 1: ``answer(waiting_per_pod, target)`` must return what the HPA controller proposes for a
    ``Pods`` metric with an ``AverageValue`` target, all pods ready (before min/max and the behavior rules)."""
    scale, hold = _hpa_cases(target)
    return [_hpa_case_check(answer, _SCALES, scale, target), _hpa_case_check(answer, _HOLDS, hold, target)]


# --- Your turn 2: the cheapest queue target and batch that meet the SLO ----------------------------------

SLO_SHARE = autoscaling.SLO_SHARE
SLO_TTFT_S = autoscaling.SLO_TTFT_S
_BATCH = "--max-num-seqs is a measured batch whose full-batch TTFT meets the SLO"
_MEETS = f"at least {SLO_SHARE:.0%} of the reference day's requests meet the {SLO_TTFT_S:g} s TTFT SLO"
_CHEAPER = "fewer replica-hours than the kit ships"
_FEWEST = "no neighbouring choice meets the SLO for fewer replica-hours"


@cache
def _day() -> autoscaling.Day:
    return autoscaling.reference_day()


@cache
def _shipped_hpa() -> autoscale.HPASpec:
    return autoscale.HPASpec.from_manifest(manifests_path("vllm", "base", "hpa.yaml"))


def shipped_choice() -> tuple[int, float]:
    """What the kit ships: the cpu overlay's ``--max-num-seqs`` and the HPA's target (waiting per pod)."""
    return int(shipped.max_num_seqs("cpu") or _day().largest_measured_batch), _shipped_hpa().target


@cache
def simulate_choice(max_num_seqs: int, queue_target: float) -> dict[str, float]:
    """Lab 07's reference day through the shipped HPA with ``queue_target``, against a replica capped at
    ``max_num_seqs``: the summary the exercise is graded on (cached, so exploring a setting twice is free)."""
    day = _day()
    hpa = _shipped_hpa().with_target(queue_target)
    return capacity_sim.simulate(day.arrivals, day.model(max_num_seqs), hpa, day.startup_s, SLO_TTFT_S).summary()


def _meets(summary: Mapping[str, float]) -> bool:
    return 1 - summary["slo_violation_share"] >= SLO_SHARE


def _fits(max_num_seqs: int) -> bool:
    return _day().model(max_num_seqs).ttft(max_num_seqs) <= SLO_TTFT_S


def _next_step_up(value: float) -> float:
    """The next value of the 1-2-5 series above ``value`` (the series the notebook's targets come from)."""
    exponent = math.floor(math.log10(value))
    for e in (exponent, exponent + 1):
        for mantissa in (1, 2, 5):
            candidate = round(mantissa * 10.0**e, 12)
            if candidate > value * (1 + 1e-12):
                return candidate
    return round(10.0 ** (exponent + 2), 12)


def _described(summary: Mapping[str, float]) -> str:
    return (
        f"{1 - summary['slo_violation_share']:.1%} of requests within the SLO, "
        f"{summary['replica_hours']:.1f} replica-hours, up to {summary['max_replicas_used']} replicas"
    )


def _read_choice(answer: Any) -> tuple[int, float] | str:
    if not isinstance(answer, Mapping) or {"max_num_seqs", "queue_target"} - set(answer):
        return 'answer with a dict: {"max_num_seqs": <int>, "queue_target": <waiting requests per pod>}'
    batch, target = answer["max_num_seqs"], answer["queue_target"]
    largest = _day().largest_measured_batch
    if isinstance(batch, bool) or not isinstance(batch, numbers.Integral) or not 1 <= int(batch) <= largest:
        return f"max_num_seqs must be a whole number of requests from 1 to {largest} (notebook 05 measured up to it)"
    if isinstance(target, bool) or not isinstance(target, numbers.Real) or not float(target) > 0:
        return "queue_target is the HPA's averageValue, a number of waiting requests per pod above 0 (e.g. 0.5)"
    return int(batch), float(target)


def check_queue_target_choice(answer: Any) -> list[LabCheck]:
    """Your turn 2: ``{"max_num_seqs": b, "queue_target": t}`` simulated on lab 07's reference day with the
    shipped HPA (min/max replicas and behavior unchanged): it meets the SLO, beats the shipped setting on
    replica-hours, and neither the next 1-2-5 target up nor the next measured batch up does better."""
    choice = _read_choice(answer)
    if isinstance(choice, str):
        return [LabCheck(name, False, choice) for name in (_BATCH, _MEETS, _CHEAPER, _FEWEST)]
    batch, target = choice
    day = _day()
    model = day.model(batch)
    measured = ", ".join(f"{int(c)}: {day.model(int(c)).ttft(int(c)):.2f} s" for c in model.concurrency)
    checks = [
        LabCheck(
            _BATCH,
            _fits(batch),
            f"a request joining a full batch of {batch} waits {model.ttft(batch):.2f} s for its first token, over "
            f"the {SLO_TTFT_S:g} s SLO before it has queued at all. TTFT at each measured batch ({day.label}): "
            f"{measured}.",
        )
    ]
    run = simulate_choice(batch, target)
    shipped_batch, shipped_target = shipped_choice()
    kit = simulate_choice(shipped_batch, shipped_target)
    yours = f"yours (max_num_seqs {batch}, target {target:g}): {_described(run)}"
    checks.append(
        LabCheck(
            _MEETS,
            _meets(run),
            f"{yours}. Each pod settles near `target` waiting requests, so each waits about target / capacity "
            "seconds before a full batch's TTFT: a smaller target or a batch with a faster first token leaves "
            "more of the SLO for queueing (capacity_sim.queue_target_bound).",
        )
    )
    if not _meets(run):
        first = "meet the SLO first: a setting that misses it has no replica-hours worth comparing"
        return [*checks, LabCheck(_CHEAPER, False, first), LabCheck(_FEWEST, False, first)]
    checks.append(
        LabCheck(
            _CHEAPER,
            run["replica_hours"] < kit["replica_hours"],
            f"{yours}; the kit ships max_num_seqs {shipped_batch} and target {shipped_target:g}: "
            f"{_described(kit)}. The SLO is a share of requests, not every request: look for the least "
            "conservative setting that still meets it.",
        )
    )
    neighbours = [(batch, _next_step_up(target))]
    larger = [int(c) for c in model.concurrency if c > batch]
    if larger and _fits(larger[0]):
        neighbours.append((larger[0], target))
    better = [
        f"max_num_seqs {b}, target {t:g} ({_described(s)})"
        for b, t in neighbours
        if _meets(s := simulate_choice(b, t)) and s["replica_hours"] < run["replica_hours"]
    ]
    checks.append(
        LabCheck(
            _FEWEST,
            not better,
            f"{yours}; but {'; '.join(better)} {'meets' if len(better) == 1 else 'meet'} the SLO too, with fewer "
            "replica-hours. Keep going in that direction until the SLO breaks "
            "(nb07.simulate_choice(max_num_seqs, queue_target) runs one setting).",
        )
    )
    return checks


# --- Your turn 3: $ per 1M output tokens ------------------------------------------------------------------


def _mistakes(row: Mapping[str, Any], offer: cost.Offer, utilization: float) -> list[tuple[float, str]]:
    """What each classic mistake multiplies the right answer by, with the advice that fixes it."""
    factors = [
        (3600.0, "the price is per hour and the throughput per second: tokens per hour = tokens/s x 3600"),
        (1 / 3600, "3600 is on the wrong side: tokens per hour = tokens/s x 3600, and that divides the price"),
        (
            row["output_token_throughput"] / row["total_token_throughput"],
            "$/1M output tokens divides by output tokens only (output_token_throughput), not input + output "
            "(total_token_throughput): the prompt tokens are not what the user receives",
        ),
        (
            float(offer.units_per_instance),
            f"{offer.instance} holds {offer.units_per_instance} GPUs and its price is for all of them: one "
            "replica on one GPU pays offer.usd_per_unit_hour('on_demand')",
        ),
        (utilization, "idle paid hours raise the cost: divide by the utilization"),
        (utilization**2, "the utilization divides the throughput (busy share of paid time), it does not multiply it"),
        (1e-3, "per 1M tokens, not per 1k: x 1e6"),
        (1e-6, "per 1M tokens: x 1e6"),
    ]
    return [(f, advice) for f, advice in factors if not math.isclose(f, 1.0, rel_tol=1e-3)]


def _diagnose(ratio: float, mistakes: Sequence[tuple[float, str]]) -> str:
    """The fewest classic mistakes whose product explains ``ratio`` (yours / right), as advice."""
    for size in (1, 2, 3):
        for combo in combinations(mistakes, size):
            if math.isclose(ratio, math.prod(f for f, _ in combo), rel_tol=0.01):
                return "; ".join(advice for _, advice in combo)
    return "start from price per GPU-hour / (output tokens/s x utilization x 3600) x 1e6 (section 5's formula)"


def _cost_case(
    answer: UsdPerMillionOutputTokens, name: str, offer: cost.Offer, row: dict[str, Any], utilization: float
) -> LabCheck:
    price = offer.usd_per_unit_hour("on_demand")
    expected = cost.usd_per_million_tokens(price, row["output_token_throughput"], utilization)
    try:
        got = answer(offer, dict(row), utilization)
    except NotAnswered:
        raise
    except Exception as err:  # noqa: BLE001 -- the learner's code: what it raises is the feedback
        return raised(name, err, offer.instance)
    quote = offer.on_demand
    when = f"as of {quote.as_of}" if quote.as_of else f"undated, read {quote.retrieved}"
    case = (
        f"{offer.instance} on-demand at ${quote.usd_per_instance_hour:g} per instance-hour ({when}), "
        f"C={row['concurrency']} at {row['output_token_throughput']:.2f} output tok/s, utilization {utilization:g}"
    )
    if not isinstance(got, int | float) or isinstance(got, bool) or not math.isfinite(got):
        return LabCheck(name, False, f"{case}: return the cost as a number of dollars, not {got!r}")
    if math.isclose(got, expected, rel_tol=0.01):
        return LabCheck(name, True, "")
    advice = _diagnose(got / expected, _mistakes(row, offer, utilization)) if got > 0 else "a cost is above 0"
    return LabCheck(
        name, False, f"{case}: ${expected:.4f} per 1M output tokens, yours ${got:.4f}. {as_sentence(advice)}"
    )


def check_usd_per_million_output_tokens(
    answer: UsdPerMillionOutputTokens,
    book: cost.PriceBook,
    rows: Sequence[dict[str, Any]],
    unit: str,
    utilization: float,
) -> list[LabCheck]:
    """Your turn 3: ``answer(offer, row, utilization)`` against the kit's formula on three cases: the run's
    unit with one user and no idle time (isolates hours against seconds and the token count), the best
    measured batch at the notebook's ``utilization``, and a multi-GPU instance (isolates the per-GPU price)."""
    by_concurrency = sorted(rows, key=lambda r: r["concurrency"])
    single, best = by_concurrency[0], max(by_concurrency, key=lambda r: r["output_token_throughput"])
    multi = next((o for o in book.offers.values() if o.units_per_instance > 1), book.offer(unit))
    return [
        _cost_case(
            answer, "one user, always busy: price per hour over output tokens per hour", book.offer(unit), single, 1.0
        ),
        _cost_case(answer, f"best batch at {utilization:.0%} utilization", book.offer(unit), best, utilization),
        _cost_case(answer, f"one GPU of {multi.instance} ({multi.units_per_instance} per instance)", multi, best, 1.0),
    ]
