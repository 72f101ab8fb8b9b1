"""Notebook 05's exercise checks, on requests built by the harness's own RequestRecord.from_timestamps (no
engine): each reference solution passes, and the notebook's starting answer and the classic mistakes fail
with a hint that names the mistake."""

from __future__ import annotations

import ast
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

import nbformat
import numpy as np
import pytest

from servelab.bench.stats import BenchResult, RequestRecord
from servelab.course import exercises
from servelab.course.exercises import nb05
from servelab.course.grading import LabCheck

NOTEBOOK = "05_benchmarking"
NOTEBOOK_PATH = Path(__file__).resolve().parents[3] / "notebooks" / f"{NOTEBOOK}.ipynb"


def _reference(name: str) -> Any:
    return exercises.solution(NOTEBOOK, name)


def _starting(name: str) -> Any:
    """The starting answer as the notebook ships it: the function ``name`` defined in its exercise cell."""
    for cell in nbformat.read(NOTEBOOK_PATH, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                scope: dict[str, Any] = {"pairwise": pairwise, "BenchResult": BenchResult}
                exec(compile(ast.Module([node], []), str(NOTEBOOK_PATH), "exec"), scope)
                return scope[name]
    raise AssertionError(f"{NOTEBOOK_PATH.name} defines no {name}")


def _record(
    index: int, sent: float, ttft: float, gaps: list[float], tail: float, tokens: int | None = None
) -> RequestRecord:
    chunks = list(np.cumsum([sent + ttft, *gaps]))
    return RequestRecord.from_timestamps(index, sent, chunks, chunks[-1] + tail, output_tokens=tokens)


def _run(seed: int, n: int, ttft: float, gap: float, duration: float) -> BenchResult:
    """``n`` requests of 16 tokens with jittered latencies, as one run of a sweep would record them."""
    rng = np.random.default_rng(seed)
    records = [
        _record(i, 0.1 * i, ttft * rng.uniform(0.8, 1.2), list(gap * rng.uniform(0.8, 1.2, 15)), 0.002)
        for i in range(n)
    ]
    return BenchResult(records, {}, duration)


def _failed(checks: list[LabCheck]) -> dict[str, str]:
    assert all(c.hint.strip() for c in checks if not c.ok), "every failed check carries a hint"
    return {c.name: c.hint for c in checks if not c.ok}


# --- Your turn 1 ---------------------------------------------------------------------------------------

RECORDS = [r for run in (_run(1, 6, 0.3, 0.05, 2.0), _run(2, 8, 0.9, 0.08, 3.0)) for r in run.records]


def _all_tokens(sent: float, chunk_times: list[float], end: float, output_tokens: int) -> Any:
    return (end - chunk_times[0]) / output_tokens, list(np.diff(chunk_times))


def _chunks(sent: float, chunk_times: list[float], end: float, output_tokens: int) -> Any:
    return (end - chunk_times[0]) / (len(chunk_times) - 1), [b - a for a, b in pairwise(chunk_times)]


def test_the_reference_tpot_and_itl_matches_the_harness_on_every_request() -> None:
    assert not _failed(nb05.check_tpot_and_itl(_reference("tpot_and_itl"), RECORDS))


def test_the_starting_tpot_and_itl_fails_every_check_naming_its_mistakes() -> None:
    hints = list(_failed(nb05.check_tpot_and_itl(_starting("tpot_and_itl"), RECORDS)).values())
    assert len(hints) == 3
    assert "includes TTFT" in hints[0] and "first gap is the wait for the first token" in hints[1]
    assert "(None, [])" in hints[2]


@pytest.mark.parametrize(
    ("answer", "records", "mistake"),
    [
        (_all_tokens, RECORDS, "divided by every token"),
        (_chunks, [_record(0, 0.0, 0.2, [0.05] * 4, 0.001, tokens=9)], "counted chunks, not tokens"),
    ],
)
def test_a_classic_tpot_mistake_is_named(
    answer: Callable[..., Any], records: list[RequestRecord], mistake: str
) -> None:
    hints = _failed(nb05.check_tpot_and_itl(answer, records))
    assert mistake in next(h for name, h in hints.items() if "TPOT of all" in name)


def test_an_answer_that_raises_is_a_failed_check_not_a_traceback() -> None:
    checks = nb05.check_tpot_and_itl(lambda *_: 1 / 0, RECORDS)
    assert "ZeroDivisionError" in _failed(checks)["tpot_and_itl: runs"]


def test_an_unwritten_answer_reaches_the_grader_as_not_answered() -> None:
    def unwritten(*_: Any) -> Any:
        raise exercises.NotAnswered

    with pytest.raises(exercises.NotAnswered):
        nb05.check_tpot_and_itl(unwritten, RECORDS)


def test_clock_readings_give_back_the_harness_figures() -> None:
    record = RECORDS[3]
    r = nb05.clock_readings(record)
    again = RequestRecord.from_timestamps(0, r.sent, r.chunk_times, r.end, output_tokens=r.output_tokens)
    assert again.tpot_s == pytest.approx(record.tpot_s) and again.itl_s == pytest.approx(record.itl_s)


# --- Your turn 2 ---------------------------------------------------------------------------------------

# Latency grows with the level, as in a closed-loop sweep: goodput peaks in the middle, and at the top level
# every request meets the TTFT SLO but misses the TPOT one.
RUNS = {1: _run(3, 6, 0.2, 0.05, 6.0), 2: _run(4, 6, 0.3, 0.06, 3.5), 4: _run(5, 8, 0.35, 0.09, 3.0)}
SLO = {"slo_ttft_s": 0.5, "slo_tpot_s": 0.07}


def _ttft_only_rate(runs: dict[int, BenchResult], slo_ttft_s: float, slo_tpot_s: float) -> Any:
    goodput = {
        level: sum(r.ttft_s is not None and r.ttft_s <= slo_ttft_s for r in run.records) / run.duration_s
        for level, run in runs.items()
    }
    return goodput, max(goodput, key=lambda level: goodput[level])


def test_the_reference_goodput_and_knee_matches_the_harness() -> None:
    assert not _failed(nb05.check_goodput_and_knee(_reference("goodput_and_knee"), RUNS, **SLO))


def test_the_starting_goodput_and_knee_fails_naming_a_fraction_and_the_throughput_peak() -> None:
    hints = list(_failed(nb05.check_goodput_and_knee(_starting("goodput_and_knee"), RUNS, **SLO)).values())
    assert len(hints) == 2
    assert "only checked TTFT" in hints[0] and "fraction of the requests, not a rate" in hints[0]
    assert "most throughput" in hints[1]


def test_goodput_that_ignores_tpot_is_named() -> None:
    hints = _failed(nb05.check_goodput_and_knee(_ttft_only_rate, RUNS, **SLO))
    assert "only checked TTFT" in next(iter(hints.values())) and "fraction" not in next(iter(hints.values()))


def test_with_an_slo_no_request_meets_there_is_no_knee() -> None:
    unreachable = {"slo_ttft_s": 0.01, "slo_tpot_s": 0.001}
    assert _reference("goodput_and_knee")(RUNS, **unreachable)[1] is None
    assert not _failed(nb05.check_goodput_and_knee(_reference("goodput_and_knee"), RUNS, **unreachable))


def test_on_a_tie_the_lower_level_is_the_knee() -> None:
    tied = {1: RUNS[1], 2: RUNS[1]}

    def higher_on_tie(runs: dict[int, BenchResult], slo_ttft_s: float, slo_tpot_s: float) -> Any:
        goodput, _ = _reference("goodput_and_knee")(runs, slo_ttft_s, slo_tpot_s)
        return goodput, max(goodput)

    assert (
        "on a tie the lower level wins"
        in " ".join(_failed(nb05.check_goodput_and_knee(higher_on_tie, tied, **SLO)).values()).lower()
    )


# --- Your turn 3 ---------------------------------------------------------------------------------------

_RNG = np.random.default_rng(7)
SAMPLES: dict[str, list[float | None]] = {
    "small": list(_RNG.lognormal(-1, 0.3, 8)),
    "large": list(_RNG.lognormal(-3, 0.5, 300)),
    "with failures": [*_RNG.lognormal(-1, 0.3, 12), None, None],
}


def test_the_reference_p99_matches_the_kit_on_small_and_large_samples() -> None:
    assert not _failed(nb05.check_p99_with_n(_reference("p99_with_n"), SAMPLES))


def test_the_starting_p99_fails_naming_the_maximum_and_the_unresolved_p99() -> None:
    samples = {k: v for k, v in SAMPLES.items() if k != "with failures"}  # max() cannot compare None
    hints = _failed(nb05.check_p99_with_n(_starting("p99_with_n"), samples))
    assert set(hints) == {
        "p99_with_n: the P99 matches the harness's (2 samples)",
        "p99_with_n: the interval matches the kit's bootstrap (2 samples)",
        "p99_with_n: says whether the P99 is resolved (2 samples)",
    }
    assert "largest sample" in hints["p99_with_n: the P99 matches the harness's (2 samples)"]
    assert "n=8" in hints["p99_with_n: says whether the P99 is resolved (2 samples)"]


def test_counting_failed_requests_in_n_is_named() -> None:
    def counts_all(values: list[float | None]) -> dict[str, Any]:
        return {**_reference("p99_with_n")(values), "n": len(values)}

    hints = _failed(nb05.check_p99_with_n(counts_all, SAMPLES))
    assert "counted the missing ones" in hints["p99_with_n: n counts the measured values (3 samples)"]


def test_a_constant_verdict_on_trust_fails_on_one_of_the_samples() -> None:
    for constant in (True, False):

        def always(values: list[float | None], said: bool = constant) -> dict[str, Any]:
            return {**_reference("p99_with_n")(values), "resolved": said}

        assert "p99_with_n: says whether the P99 is resolved (3 samples)" in _failed(
            nb05.check_p99_with_n(always, SAMPLES)
        )
