"""Notebook 03's exercise checks accept the reference solutions and reject the starting answers and the
classic mistakes, each with a hint. No engine runs here: the sweep and the peaks are tables shaped like the
notebook's, and the measurement the reference reads is a results file written the way section 4 writes it;
the live half (a server started at the larger context) is proven by the notebook run."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest

from servelab import results
from servelab.course.exercises import nb03, solutions_module
from servelab.course.grading import LabCheck
from servelab.engines.model import gguf_path
from servelab.memory import gguf_header

ROOT = Path(__file__).resolve().parents[3]
NOTEBOOK = "03_llamacpp_on_cpu"


SOLUTIONS = solutions_module("03_llamacpp_on_cpu")


def _failed(checks: list[LabCheck]) -> dict[str, str]:
    assert checks
    failed = {c.name: c.hint for c in checks if not c.ok}
    assert all(hint.strip() for hint in failed.values())
    return failed


# --- Your turn 1: threads --------------------------------------------------------------------------


def _sweep(speeds: dict[int, float]) -> pd.DataFrame:
    return pd.DataFrame([{"threads": n, "output_tok_s": s, "ok": 4, "failed": 0} for n, s in speeds.items()])


SHARED_2_CORES = _sweep({1: 11.4, 2: 2.4})  # a busy 2-core machine: the second thread only gets in the way
QUIET_4_CORES = _sweep({1: 9.0, 2: 15.0, 3: 15.5, 4: 15.8})


@pytest.mark.parametrize("sweep", [SHARED_2_CORES, QUIET_4_CORES])
def test_the_reference_thread_choice_passes(sweep: pd.DataFrame) -> None:
    checks = nb03.check_threads(SOLUTIONS.choose_threads, sweep)
    assert all(c.ok for c in checks), [c.hint for c in checks]


def _fastest(sweep: pd.DataFrame, noise: float) -> int:
    """The starting answer: the fastest count, as the notebook's ``best`` is."""
    return int(sweep.loc[sweep["output_tok_s"].idxmax(), "threads"])


def _all_cores(sweep: pd.DataFrame, noise: float) -> int:
    return int(sweep["threads"].max())


def _as_text(sweep: pd.DataFrame, noise: float) -> str:
    return "2"


def test_the_fastest_count_fails_where_fewer_threads_are_as_fast() -> None:
    failed = _failed(nb03.check_threads(_fastest, QUIET_4_CORES))
    assert "-t for this run's sweep" in failed and "fewest" in failed["-t for this run's sweep"]
    assert "-t for a larger machine's sweep (it flattens)" in failed


def test_all_cores_fails_where_threads_slow_decoding_down() -> None:
    failed = _failed(nb03.check_threads(_all_cores, SHARED_2_CORES))
    assert "below the fastest" in failed["-t for this run's sweep"]


def test_a_choice_that_is_not_a_measured_count_says_so() -> None:
    failed = _failed(nb03.check_threads(_as_text, SHARED_2_CORES))
    assert "one of the measured thread counts" in failed["-t for this run's sweep"]


def test_a_point_with_failed_requests_is_no_candidate() -> None:
    """Requests that failed fast make a point look quick: the check leaves it out of the sweep it hands over."""
    sweep = pd.concat([SHARED_2_CORES, _sweep({3: 50.0}).assign(failed=2)], ignore_index=True)
    checks = nb03.check_threads(SOLUTIONS.choose_threads, sweep)
    assert checks[0].ok and "-t for this run's sweep" in _failed(nb03.check_threads(_all_cores, sweep))


# --- Your turn 2: memory resources -----------------------------------------------------------------

MEASURED = {"n_ctx": 2048, "gguf_mib": 93.8, "rss_peak_mib": 282.6}  # section 4's record, from an earlier run
PEAKS = {2048: 282.6, 8192: 418.0}


@pytest.fixture
def measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVELAB_RESULTS", str(tmp_path))
    results.reset(NOTEBOOK)
    results.record(NOTEBOOK, **MEASURED)


def _resources(request_mib: float, limit_mib: float, cpu: str = '"2"') -> str:
    return (
        f"requests:\n  cpu: {cpu}\n  memory: {math.ceil(request_mib)}Mi\nlimits:\n  memory: {math.ceil(limit_mib)}Mi\n"
    )


def _scaled(context: int) -> str:
    """The starting answer: the whole peak scaled with the context."""
    request = 64 * math.ceil(1.25 * MEASURED["rss_peak_mib"] * context / MEASURED["n_ctx"] / 64)
    return _resources(request, 2 * request)


def _file_and_kv_only(context: int) -> str:
    """Forgets the overhead: the file plus the KV cache is all the mapping and the formula account for."""
    need = MEASURED["gguf_mib"] + context * gguf_header.kv_shape(gguf_path()).bytes_per_token("float16") / 2**20
    return _resources(need, 2 * need)


def _context_ignored(context: int) -> str:
    """Section 4's sizing, unchanged for the longer context."""
    return _resources(384, 1024)


@pytest.mark.usefixtures("measured")
def test_the_reference_resources_pass() -> None:
    checks = nb03.check_memory_resources(SOLUTIONS.memory_resources, PEAKS)
    assert len(checks) == 8 and all(c.ok for c in checks), [c.hint for c in checks if not c.ok]


def test_scaling_the_whole_peak_with_the_context_is_wasteful() -> None:
    failed = _failed(nb03.check_memory_resources(_scaled, PEAKS))
    assert set(failed) == {"memory request is not wasteful (n_ctx=8192)"}
    assert "418 MiB" in failed["memory request is not wasteful (n_ctx=8192)"]


def test_forgetting_the_overhead_leaves_the_request_below_the_peak() -> None:
    failed = _failed(nb03.check_memory_resources(_file_and_kv_only, PEAKS))
    assert {
        "memory request covers the measured peak (n_ctx=2048)",
        "memory request covers the measured peak (n_ctx=8192)",
    } <= set(failed)


def test_ignoring_the_context_fails_only_at_the_longer_one() -> None:
    failed = _failed(nb03.check_memory_resources(_context_ignored, PEAKS))
    assert set(failed) == {"memory request covers the measured peak (n_ctx=8192)"}


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("requests:\n  cpu: 2\n  memory: 576MB\nlimits:\n  memory: 1Gi\n", "not a Kubernetes quantity"),
        ("requests:\n  memory: 576Mi\nlimits:\n  memory: 1Gi\n", "requests no cpu"),
        ("requests:\n  cpu: 2\n  memory: 2Gi\nlimits:\n  memory: 1Gi\n", "above the limit"),
        ("requests: [cpu", "YAML error"),
        ("576Mi", "resources:"),
    ],
)
def test_resources_the_api_server_would_refuse_fail_with_its_reason(text: str, hint: str) -> None:
    failed = _failed(nb03.check_memory_resources(lambda context: text, {8192: PEAKS[8192]}))
    assert len(failed) == 1 and hint in next(iter(failed.values()))
