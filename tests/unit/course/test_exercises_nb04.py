"""Notebook 04's exercise checks, without an engine: the reference solutions pass, the notebook's starting
answers and classic mistakes fail with a hint that says what was seen.

The ladder and the vLLM counts below have the shape notebook 04 records (results/04_*.json); the KV counts
are derived with the kit's own formula, so the check's agreement with vLLM is proven by the notebook run,
and these tests prove the grading logic.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from servelab.course.exercises import nb04, solutions_module
from servelab.course.grading import LabCheck
from servelab.memory import kvcache

# A ladder as notebook 04 measures it: everything within the noise of the best at these errors, but
# Q2_K measurably worse once the errors shrink.
LADDER = pd.DataFrame(
    [
        {"level": "F16", "rss_mib": 325.4, "file_mib": 258.3, "perplexity": 32.95, "perplexity_se": 5.73},
        {"level": "Q8_0", "rss_mib": 205.1, "file_mib": 138.1, "perplexity": 33.46, "perplexity_se": 5.87},
        {"level": "Q4_K_M", "rss_mib": 167.9, "file_mib": 100.6, "perplexity": 35.63, "perplexity_se": 6.40},
        {"level": "Q2_K", "rss_mib": 151.6, "file_mib": 84.1, "perplexity": 41.77, "perplexity_se": 6.84},
        {"level": "Q4_1 (shipped)", "rss_mib": 160.7, "file_mib": 93.8, "perplexity": 32.87, "perplexity_se": 5.72},
    ]
).set_index("level")

SMOLLM2_CONFIG = {
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "head_dim": 64,
    "hidden_size": 576,
}
PRESSURE_LOAD = (16, 128, 160, 128)  # notebook 04's defaults: users, prompt, output, CPU block


@pytest.fixture(scope="module")
def solutions() -> Any:
    return solutions_module("04_quantization_paged_attention")


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(SMOLLM2_CONFIG))
    return tmp_path


def _kv_checks(hf_dir: Path) -> list[dict[str, Any]]:
    """What the notebook's three vLLM starts report, as the kit's formula (proven equal to vLLM) predicts it."""
    shape = kvcache.shape_from_hf_config(hf_dir)
    return [
        {
            "dtype": dtype,
            "budget": gib,
            "reported_tokens": kvcache.cache_tokens(gib * 2**30, shape.bytes_per_token(dtype), 128),
        }
        for dtype, gib in (("float32", 1), ("bfloat16", 1), ("float32", 2))
    ]


def _failed(checks: list[LabCheck]) -> dict[str, str]:
    assert checks
    failed = {c.name: c.hint for c in checks if not c.ok}
    assert all(hint.strip() for hint in failed.values())
    return failed


# --- Your turn 1 -------------------------------------------------------------------------------------


def test_pick_level_reference_passes(solutions: Any) -> None:
    assert _failed(nb04.check_pick_level(solutions.pick_level, LADDER)) == {}


def _lowest_perplexity(ladder: pd.DataFrame, rss_budget_mib: float) -> str | None:
    """The notebook's starting answer."""
    fits = ladder[ladder["rss_mib"] <= rss_budget_mib]
    return fits["perplexity"].idxmin()


def _least_memory(ladder: pd.DataFrame, rss_budget_mib: float) -> str | None:
    """Ignores quality: fine while the errors are wide, wrong once they shrink."""
    fits = ladder[ladder["rss_mib"] <= rss_budget_mib]
    return None if fits.empty else fits["rss_mib"].idxmin()


def _file_size(ladder: pd.DataFrame, rss_budget_mib: float) -> str | None:
    """Budgets the file instead of the process: picks levels that do not fit in RAM."""
    fits = ladder[ladder["file_mib"] <= rss_budget_mib]
    return None if fits.empty else fits["perplexity"].idxmin()


@pytest.mark.parametrize(
    ("answer", "failing", "seen"),
    [
        (_lowest_perplexity, "the least memory among the levels the text cannot tell apart", "Q2_K fits"),
        (_least_memory, "no level that fits is measurably better (quantize.within_noise)", "measurably better"),
        (_file_size, "the level fits the budget (measured resident memory, rss_mib)", "resident at"),
    ],
)
def test_pick_level_mistakes_fail_with_what_was_seen(answer: Any, failing: str, seen: str) -> None:
    failed = _failed(nb04.check_pick_level(answer, LADDER))
    assert seen in failed[failing]


def test_pick_level_starting_answer_crashing_on_an_empty_budget_is_a_hint_not_a_traceback() -> None:
    failed = _failed(nb04.check_pick_level(_lowest_perplexity, LADDER))
    assert "ValueError" in failed["answers every budget with a level of the table, or None"]


# --- Your turn 2 -------------------------------------------------------------------------------------


def test_kv_bytes_reference_passes(solutions: Any, hf_dir: Path) -> None:
    checks = nb04.check_kv_bytes_per_token(solutions.kv_bytes_per_token, hf_dir, _kv_checks(hf_dir), "cpu")
    assert len(checks) == 3 and _failed(checks) == {}


def _query_heads(config: dict[str, Any], dtype: str) -> float:
    """The notebook's starting answer: counts the query heads."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * config["num_attention_heads"] * head_dim * kvcache.DTYPE_BYTES[dtype]


def _keys_only_and_head_dim_assumed(config: dict[str, Any], dtype: str) -> float:
    """Forgets the values, and reads a head_dim key that Llama-3-8B's config does not have."""
    return config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * kvcache.DTYPE_BYTES[dtype]


OWN_MODEL = "the formula, on this run's model's config.json (float32, bfloat16, fp8)"
LLAMA3 = "the formula, on Llama-3-8B's config (GQA, no head_dim) (float32, bfloat16, fp8)"


@pytest.mark.parametrize(
    ("answer", "seen"),
    [
        (_query_heads, {OWN_MODEL: "3 times", LLAMA3: "4 times"}),
        (_keys_only_and_head_dim_assumed, {OWN_MODEL: "0.5 times", LLAMA3: "KeyError"}),
    ],
)
def test_kv_bytes_mistakes_fail_every_check(answer: Any, seen: dict[str, str], hf_dir: Path) -> None:
    failed = _failed(nb04.check_kv_bytes_per_token(answer, hf_dir, _kv_checks(hf_dir), "cpu"))
    assert "vLLM reported" in failed.pop("predicts the KV cache vLLM reported at this run's starts")
    assert failed.keys() == seen.keys() and all(seen[name] in hint for name, hint in failed.items())


def test_kv_bytes_on_a_gpu_checks_the_formula_only(solutions: Any, hf_dir: Path) -> None:
    checks = nb04.check_kv_bytes_per_token(solutions.kv_bytes_per_token, hf_dir, [], "cuda")
    assert [c.ok for c in checks] == [True, True]
    assert len(nb04.check_kv_bytes_per_token(solutions.kv_bytes_per_token, None, [], "cuda")) == 1


# --- Your turn 3 -------------------------------------------------------------------------------------


def test_blocks_reference_passes_and_agrees_with_a_run_that_preempted(solutions: Any) -> None:
    assert _failed(nb04.check_blocks_for_load(solutions.blocks_for_load, PRESSURE_LOAD, 16, 12.0)) == {}


def test_blocks_reference_agrees_with_a_run_whose_cache_was_big_enough(solutions: Any) -> None:
    assert _failed(nb04.check_blocks_for_load(solutions.blocks_for_load, PRESSURE_LOAD, 64, 0.0)) == {}


def _pooled(users: int, prompt_tokens: int, output_tokens: int, block_size: int) -> int:
    """The notebook's starting answer: all tokens together, as if blocks were shared."""
    return math.ceil(users * (prompt_tokens + output_tokens) / block_size)


def _max_len_reservation(users: int, prompt_tokens: int, output_tokens: int, block_size: int) -> int:
    """Contiguous-era thinking: reserve max_model_len (1024 in section 4) per sequence."""
    return users * math.ceil(1024 / block_size)


def _one_sequence(users: int, prompt_tokens: int, output_tokens: int, block_size: int) -> int:
    return math.ceil((prompt_tokens + output_tokens) / block_size)


@pytest.mark.parametrize(
    ("answer", "failing", "seen"),
    [
        (_pooled, "enough: the kit's simulator preempts nobody (kvcache.simulate_allocation, paged)", "preemption"),
        (_max_len_reservation, "no more than the sequences can fill", "at most 48"),
        (_one_sequence, "agrees with section 4's run (preemptions exactly when the cache was short)", "16 blocks"),
    ],
)
def test_blocks_mistakes_fail_with_what_was_seen(answer: Any, failing: str, seen: str) -> None:
    failed = _failed(nb04.check_blocks_for_load(answer, PRESSURE_LOAD, 16, 12.0))
    assert seen in failed[failing]


def test_blocks_a_non_number_is_a_hint() -> None:
    failed = _failed(nb04.check_blocks_for_load(lambda *load: "48", PRESSURE_LOAD, 16, 12.0))
    assert "not a whole number of blocks" in next(iter(failed.values()))
