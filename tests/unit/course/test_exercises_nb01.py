"""Notebook 01's exercise checks accept the reference solutions and reject the starting answers and the
classic mistakes, each with a hint. The runs and the sweep table are built with the harness's own classes,
so the figures the checks compare with are the harness's; the live llama.cpp check is proven by the
notebook run, here only its guards (which never reach a server)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from servelab.bench.stats import BenchResult, RequestRecord
from servelab.course.exercises import nb01, solutions_module
from servelab.course.grading import LabCheck

ROOT = Path(__file__).resolve().parents[3]


SOLUTIONS = solutions_module("01_engine_comparison")


def _failed(checks: list[LabCheck]) -> dict[str, str]:
    assert checks
    failed = {c.name: c.hint for c in checks if not c.ok}
    assert all(hint.strip() for hint in failed.values())
    return failed


def _save_run(directory: Path, engine: str, users: int, ttft_s: float, gap_s: float, tokens: int = 16) -> None:
    """A run as sweep_concurrency saves it: requests queued behind each other (TTFT grows), steady decoding."""
    records = []
    for i in range(4 * users):
        sent = 0.01 * i
        first = sent + ttft_s * (1 + i % users)
        chunks = [first + gap_s * (1 + 0.1 * (i % 3)) * k for k in range(tokens)]
        records.append(RequestRecord.from_timestamps(i, sent, chunks, chunks[-1] + 0.001, output_tokens=tokens))
    config = {"concurrency": users, "workload": {"engine_kind": engine}}
    BenchResult(records, config, duration_s=max(c.e2e_s or 0 for c in records)).save(
        directory, f"{engine}-concurrency{users}"
    )


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    for users in (1, 4):
        _save_run(tmp_path, "llamacpp", users, ttft_s=0.5, gap_s=0.05)
        _save_run(tmp_path, "vllm", users, ttft_s=0.2, gap_s=0.08)
    return tmp_path


def test_tpot_reference_passes_and_the_classic_mistakes_fail(runs_dir: Path) -> None:
    assert _failed(nb01.check_tpot_p50(SOLUTIONS.tpot_p50, runs_dir)) == {}
    starting = _failed(nb01.check_tpot_p50(lambda r: float((r["e2e_s"] / r["output_tokens"]).median()), runs_dir))
    assert len(starting) == 3 and "wait for the first token" in next(iter(starting.values()))
    per_token = _failed(
        nb01.check_tpot_p50(lambda r: float(((r.e2e_s - r.ttft_s) / r.output_tokens).median()), runs_dir)
    )
    assert "matches the harness's TPOT p50 on every vllm run" in per_token


def test_tpot_counting_failed_requests_fails_only_that_check(runs_dir: Path) -> None:
    def all_requests(records: pd.DataFrame) -> float:
        return float(((records.e2e_s - records.ttft_s) / (records.output_tokens - 1)).median())

    failed = _failed(nb01.check_tpot_p50(all_requests, runs_dir))
    assert list(failed) == ["leaves failed requests out"] and "status 'ok'" in failed["leaves failed requests out"]


def test_tpot_without_runs_says_what_to_run(tmp_path: Path) -> None:
    assert "run section 2 first" in next(iter(_failed(nb01.check_tpot_p50(SOLUTIONS.tpot_p50, tmp_path)).values()))


SWEEP = pd.DataFrame(
    [
        {"engine": "llamacpp", "concurrency": 1, "ttft_p50_s": 0.2, "output_token_throughput": 9.0},
        {"engine": "vllm", "concurrency": 1, "ttft_p50_s": 0.5, "output_token_throughput": 7.0},
        {"engine": "llamacpp", "concurrency": 8, "ttft_p50_s": 6.0, "output_token_throughput": 10.0},
        {"engine": "vllm", "concurrency": 8, "ttft_p50_s": 1.0, "output_token_throughput": 30.0},
    ]
)


def _rule_of_thumb(sweep: pd.DataFrame, users: int, ttft_slo_s: float) -> str | None:
    return "llamacpp" if users == 1 else "vllm"


def _fastest_first_token(sweep: pd.DataFrame, users: int, ttft_slo_s: float) -> str | None:
    rows = sweep[sweep["concurrency"] == users]
    return str(rows.loc[rows["ttft_p50_s"].idxmin(), "engine"])


def test_choose_engine_reference_passes_on_a_table_and_on_its_mirror() -> None:
    assert _failed(nb01.check_choose_engine(SOLUTIONS.choose_engine, SWEEP)) == {}
    mirror = SWEEP.assign(engine=SWEEP["engine"].map({"llamacpp": "vllm", "vllm": "llamacpp"}))
    assert _failed(nb01.check_choose_engine(SOLUTIONS.choose_engine, mirror)) == {}


@pytest.mark.parametrize(
    ("answer", "failing"),
    [
        (_rule_of_thumb, {"median TTFT SLO: no engine meets it"}),
        (_fastest_first_token, {"median TTFT SLO: no engine meets it"}),
    ],
)
def test_choose_engine_mistakes_fail_with_the_case_they_miss(answer: Any, failing: set[str]) -> None:
    failed = _failed(nb01.check_choose_engine(answer, SWEEP))
    assert failing <= set(failed) and "this run's table says None" in failed["median TTFT SLO: no engine meets it"]


def test_choose_engine_rule_of_thumb_fails_where_the_table_disagrees() -> None:
    mirror = SWEEP.assign(engine=SWEEP["engine"].map({"llamacpp": "vllm", "vllm": "llamacpp"}))
    assert len(_failed(nb01.check_choose_engine(_rule_of_thumb, mirror))) == 3


class _Nowhere:
    """An engine address where nothing listens: the guards must answer before any request is sent."""

    served_model = "smollm2-135m-instruct"
    base_url = "http://127.0.0.1:9/v1"


def test_forced_length_guards_answer_without_a_server() -> None:
    engine: Any = _Nowhere()
    no_cap = _failed(nb01.check_forced_length(lambda n: {"logit_bias": {"2": -100}}, engine))
    assert len(no_cap) == 2 and all("max_tokens is None" in hint for hint in no_cap.values())
    not_a_dict = _failed(nb01.check_forced_length(lambda n: [n], engine))
    assert all("got list" in hint for hint in not_a_dict.values())
    unreachable = _failed(nb01.check_forced_length(SOLUTIONS.forced_length_fields, engine))
    assert all("is llama.cpp running?" in hint for hint in unreachable.values())
