"""Notebook 01's exercise checks accept the reference solutions and reject the starting answers and the
classic mistakes, each with a hint. The runs and the sweep table are built with the harness's own classes,
so the figures the checks compare with are the harness's; the live llama-server check is proven by the
notebook run, here its guards (which never reach a server) and its verdicts on a stand-in that answers as
llama-server b11312 answered live (ignore_eos and an EOS logit bias honoured, unknown fields ignored, a
wrongly typed ignore_eos refused with HTTP 400)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
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
        _save_run(tmp_path, "llama-server", users, ttft_s=0.5, gap_s=0.05)
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
        {"engine": "llama-server", "concurrency": 1, "ttft_p50_s": 0.2, "output_token_throughput": 9.0},
        {"engine": "vllm", "concurrency": 1, "ttft_p50_s": 0.5, "output_token_throughput": 7.0},
        {"engine": "llama-server", "concurrency": 8, "ttft_p50_s": 6.0, "output_token_throughput": 10.0},
        {"engine": "vllm", "concurrency": 8, "ttft_p50_s": 1.0, "output_token_throughput": 30.0},
    ]
)
MIRROR = SWEEP.assign(engine=SWEEP["engine"].map({"llama-server": "vllm", "vllm": "llama-server"}))
CHOICE_CHECKS = 4
FOLLOWS = "follows the measurements, not the engines' names"


def _rule_of_thumb(sweep: pd.DataFrame, users: int, ttft_slo_s: float) -> str | None:
    return "llama-server" if users == 1 else "vllm"


def _rule_of_thumb_with_none(sweep: pd.DataFrame, users: int, ttft_slo_s: float) -> str | None:
    """Right on this table, by its names: knows when no engine can meet the SLO, then picks by name."""
    rows = sweep[sweep["concurrency"] == users]
    return None if (rows["ttft_p50_s"] > ttft_slo_s).all() else _rule_of_thumb(sweep, users, ttft_slo_s)


def _fastest_first_token(sweep: pd.DataFrame, users: int, ttft_slo_s: float) -> str | None:
    rows = sweep[sweep["concurrency"] == users]
    return str(rows.loc[rows["ttft_p50_s"].idxmin(), "engine"])


def test_choose_engine_reference_passes_on_a_table_and_on_its_mirror() -> None:
    assert len(nb01.check_choose_engine(SOLUTIONS.choose_engine, SWEEP)) == CHOICE_CHECKS
    assert _failed(nb01.check_choose_engine(SOLUTIONS.choose_engine, SWEEP)) == {}
    assert _failed(nb01.check_choose_engine(SOLUTIONS.choose_engine, MIRROR)) == {}


@pytest.mark.parametrize(
    ("answer", "failing"),
    [
        (_rule_of_thumb, {"median TTFT SLO: no engine meets it", FOLLOWS}),
        (_fastest_first_token, {"median TTFT SLO: no engine meets it"}),
    ],
)
def test_choose_engine_mistakes_fail_with_the_case_they_miss(answer: Any, failing: set[str]) -> None:
    failed = _failed(nb01.check_choose_engine(answer, SWEEP))
    assert failing <= set(failed) and "this run's table says None" in failed["median TTFT SLO: no engine meets it"]


def test_choose_engine_rule_of_thumb_fails_where_the_table_disagrees() -> None:
    failed = _failed(nb01.check_choose_engine(_rule_of_thumb, MIRROR))
    cases = ("no engine meets it", "one engine meets it", "both do")
    assert set(failed) == {f"median TTFT SLO: {case}" for case in cases}


def test_choose_engine_by_name_fails_even_where_this_table_agrees_with_it() -> None:
    """Both engines batch, so a fixed name can match one run's table by luck: the swapped table catches it."""
    failed = _failed(nb01.check_choose_engine(_rule_of_thumb_with_none, SWEEP))
    assert list(failed) == [FOLLOWS] and "the swapped table says" in failed[FOLLOWS]


class _Nowhere:
    """An engine address where nothing listens: the guards must answer before any request is sent."""

    served_model = "smollm2-135m-instruct"
    base_url = "http://127.0.0.1:9/v1"


FORCED_CHECKS = len(nb01.FORCED_LENGTHS) * len(nb01.FORCED_PROMPTS)


def test_forced_length_guards_answer_without_a_server() -> None:
    engine: Any = _Nowhere()
    no_cap = _failed(nb01.check_forced_length(lambda n: {"ignore_eos": True}, engine))
    assert len(no_cap) == FORCED_CHECKS == 4 and all("max_tokens is None" in hint for hint in no_cap.values())
    not_a_dict = _failed(nb01.check_forced_length(lambda n: [n], engine))
    assert all("got list" in hint for hint in not_a_dict.values())
    unreachable = _failed(nb01.check_forced_length(SOLUTIONS.forced_length_fields, engine))
    assert len(unreachable) == FORCED_CHECKS
    assert all("is llama-server running?" in hint for hint in unreachable.values())


NATURAL_END = 8  # tokens SmolLM2 took to answer the check's question on llama-server, on both endpoints


def _as_llama_server(url: str, json: dict[str, Any], **_: Any) -> httpx.Response:
    """What llama-server b11312 answered live to the check's bodies (see the module docstring)."""
    request = httpx.Request("POST", url)
    if not isinstance(json.get("ignore_eos", False), bool):
        message = "Field 'ignore_eos': type must be boolean, but is string"
        return httpx.Response(400, json={"error": {"code": 400, "message": message}}, request=request)
    assert url.endswith(("/v1/completions", "/v1/chat/completions")) and ("prompt" in json) != ("messages" in json)
    cap = int(json.get("max_tokens", json.get("n_predict", 0)))
    forced = json.get("ignore_eos") is True or json.get("logit_bias", {}).get("2") == -100
    tokens, finish = (cap, "length") if forced or cap < NATURAL_END else (NATURAL_END, "stop")
    body = {"choices": [{"finish_reason": finish}], "usage": {"completion_tokens": tokens}}
    return httpx.Response(200, json=body, request=request)


@pytest.fixture
def stand_in(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(httpx, "post", _as_llama_server)
    return _Nowhere()


def test_forced_length_reference_and_a_logit_bias_pass_on_both_endpoints(stand_in: Any) -> None:
    assert _failed(nb01.check_forced_length(SOLUTIONS.forced_length_fields, stand_in)) == {}
    eos_forbidden = _failed(nb01.check_forced_length(lambda n: {"max_tokens": n, "logit_bias": {"2": -100}}, stand_in))
    assert eos_forbidden == {}
    checks = nb01.check_forced_length(SOLUTIONS.forced_length_fields, stand_in)
    assert {c.name for c in checks} == {
        f"llama-server's /v1/{endpoint} answers exactly {n} tokens"
        for endpoint in ("completions", "chat/completions")
        for n in nb01.FORCED_LENGTHS
    }


def test_forced_length_a_cap_alone_fails_every_check_with_the_reason(stand_in: Any) -> None:
    failed = _failed(nb01.check_forced_length(lambda n: {"max_tokens": n}, stand_in))
    assert len(failed) == FORCED_CHECKS
    assert all("end-of-sequence token: max_tokens is a cap" in hint for hint in failed.values())
    assert not any("spelt" in hint for hint in failed.values())


def test_forced_length_a_misspelt_field_is_named_and_a_wrong_type_shows_the_refusal(stand_in: Any) -> None:
    misspelt = _failed(nb01.check_forced_length(lambda n: {"max_tokens": n, "ignoreEos": True}, stand_in))
    assert len(misspelt) == FORCED_CHECKS and all("is ignoreEos spelt" in hint for hint in misspelt.values())
    as_text = _failed(nb01.check_forced_length(lambda n: {"max_tokens": n, "ignore_eos": "true"}, stand_in))
    assert all("HTTP 400" in hint and "must be boolean" in hint for hint in as_text.values())
    too_long = _failed(nb01.check_forced_length(lambda n: {"max_tokens": n + 1, "ignore_eos": True}, stand_in))
    assert all("Set max_tokens to exactly n" in hint for hint in too_long.values())
