"""Notebook 04's exercises: decisions a deployer makes from this run's quantization and KV cache figures.

Each check grades an answer against what the notebook measured, never against a number typed here:

- :func:`check_pick_level`: the GGUF level chosen for a memory budget, from the measured ladder. Two
  levels whose perplexities lie within the noise (:func:`servelab.memory.quantize.within_noise`) are equally
  good as far as the held-out text can tell, so the right choice is the cheapest of the best, not the
  lowest perplexity. The choice is tried at every budget the ladder makes interesting, and again with the
  standard errors shrunk as if more text had been scored, so a rule that only fits this run's noise fails.
- :func:`check_kv_bytes_per_token`: the KV formula from a model's ``config.json``, graded by whether it
  predicts the cache size vLLM itself reported at this run's starts (zero extra engine time).
- :func:`check_blocks_for_load`: the KV blocks a load needs, graded by the kit's block-allocation
  simulator (no preemption with that many blocks), by the per-sequence upper bound, and by agreement with
  the preemptions vLLM counted in the notebook's pressure run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from servelab.course.grading import LabCheck
from servelab.memory import kvcache, quantize

if TYPE_CHECKING:
    import pandas as pd

# Scoring sixteen times more text divides a perplexity's standard error by about four (it falls as
# 1/sqrt(tokens)): the same ladder with sharper errors, where fewer levels are told apart by the noise.
SHARPER_SE_FACTOR = 0.25

# Llama-3-8B's config.json fields that size its KV cache, as data/reference/hardware.yaml cites them. It has
# no ``head_dim`` key, so a formula must derive it (hidden_size / num_attention_heads), and grouped-query
# attention (8 KV heads for 32 query heads) makes the query-head count the wrong one to multiply by.
LLAMA3_8B_CONFIG = {"num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096}
KV_DTYPES = ("float32", "bfloat16", "fp8")


# --- Your turn 1: a GGUF level for a memory budget -------------------------------------------------


@dataclass(frozen=True)
class _Case:
    """One call of the learner's ``pick_level``: a ladder (measured, or sharpened) and a budget."""

    label: str
    ladder: pd.DataFrame
    budget_mib: float

    def __str__(self) -> str:
        return f"budget {self.budget_mib:g} MiB, {self.label}"


def _cases(ladder: pd.DataFrame) -> list[_Case]:
    """Each level's own resident memory as a budget (so each is the largest that fits once), and one budget
    below every level, on the measured errors and on sharper ones."""
    budgets = sorted({float(v) for v in ladder["rss_mib"]})
    budgets = [budgets[0] - 1, *budgets]
    sharper = ladder.assign(perplexity_se=ladder["perplexity_se"] * SHARPER_SE_FACTOR)
    tables = [("errors as measured", ladder), ("errors as if 16 times more text were scored", sharper)]
    return [_Case(label, table, budget) for label, table in tables for budget in budgets]


def _is_level(choice: object, ladder: pd.DataFrame) -> bool:
    """None, or a name in the ladder's index (an unhashable answer is neither, and must not raise)."""
    try:
        return choice is None or choice in ladder.index
    except TypeError:
        return False


def _tied_with_best(fits: pd.DataFrame) -> list[Hashable]:
    """The levels that fit which this text cannot tell apart from the best one that fits."""
    best = fits.loc[fits["perplexity"].idxmin()]
    return [
        level
        for level, row in fits.iterrows()
        if quantize.within_noise(row["perplexity"], row["perplexity_se"], best["perplexity"], best["perplexity_se"])
    ]


def check_pick_level(answer: Callable[[pd.DataFrame, float], str | None], ladder: pd.DataFrame) -> list[LabCheck]:
    """Grade ``answer(ladder, rss_budget_mib)`` on this run's ladder table at several budgets.

    A right answer returns a level whose measured resident memory fits; that no fitting level beats
    measurably; and that uses the least memory among the levels tied with the best; ``None`` exactly when
    nothing fits.
    """
    answered: list[tuple[_Case, Any]] = []
    crashed: list[str] = []
    for case in _cases(ladder):
        try:
            answered.append((case, answer(case.ladder.copy(), case.budget_mib)))
        except Exception as err:  # noqa: BLE001 -- the learner's code: what it raises is the hint
            crashed.append(f"{case}: raised {type(err).__name__}: {err}")
    unknown = [f"{case}: returned {choice!r}" for case, choice in answered if not _is_level(choice, ladder)]
    named = [(case, choice) for case, choice in answered if _is_level(choice, ladder)]

    none_wrong, too_big, worse, bigger = [], [], [], []
    for case, choice in named:
        fits = case.ladder[case.ladder["rss_mib"] <= case.budget_mib]
        if fits.empty or choice is None:
            if fits.empty != (choice is None):
                none_wrong.append(
                    f"{case}: you returned {choice!r}, but "
                    + ("no level fits (return None)" if fits.empty else f"{', '.join(map(str, fits.index))} fit")
                )
            continue
        row = case.ladder.loc[choice]
        if row["rss_mib"] > case.budget_mib:
            too_big.append(f"{case}: {choice} is resident at {row['rss_mib']:g} MiB")
            continue
        best_level = fits["perplexity"].idxmin()
        best = fits.loc[best_level]
        if not quantize.within_noise(
            row["perplexity"], row["perplexity_se"], best["perplexity"], best["perplexity_se"]
        ):
            worse.append(
                f"{case}: {best_level} also fits and is measurably better than {choice} (perplexity "
                f"{best['perplexity']:.2f} ± {best['perplexity_se']:.2f} against {row['perplexity']:.2f} ± "
                f"{row['perplexity_se']:.2f})"
            )
            continue
        cheaper = [lv for lv in _tied_with_best(fits) if case.ladder.loc[lv, "rss_mib"] < row["rss_mib"]]
        if cheaper:
            bigger.append(
                f"{case}: {cheaper[0]} fits, is within the noise of the best that fits ({best_level}), and is "
                f"resident at {case.ladder.loc[cheaper[0], 'rss_mib']:g} MiB against {choice}'s {row['rss_mib']:g}"
            )
    return [
        LabCheck(
            "answers every budget with a level of the table, or None",
            not crashed and not unknown,
            "; ".join([*crashed, *unknown][:2])
            + ". Return a name from the table's index (ladder.index), or None when nothing fits; an empty "
            "selection has no idxmin.",
        ),
        LabCheck(
            "None exactly when no level fits",
            not none_wrong,
            "; ".join(none_wrong[:2]) + ".",
        ),
        LabCheck(
            "the level fits the budget (measured resident memory, rss_mib)",
            not too_big,
            "; ".join(too_big[:2]) + ". Compare the budget with the rss_mib column, not file_mib.",
        ),
        LabCheck(
            "no level that fits is measurably better (quantize.within_noise)",
            not worse,
            "; ".join(worse[:2]) + ". Start from the lowest perplexity among the levels that fit.",
        ),
        LabCheck(
            "the least memory among the levels the text cannot tell apart",
            not bigger,
            "; ".join(bigger[:2]) + ". Levels within the noise of the best are equally good as far as this "
            "text can tell: take the one that leaves the most memory free.",
        ),
    ]


# --- Your turn 2: KV bytes per token from config.json -----------------------------------------------


def _bytes_of(
    answer: Callable[[dict[str, Any], str], float], config: dict[str, Any], dtype: str
) -> tuple[float | None, str]:
    """The learner's bytes per token, or None and what went wrong."""
    try:
        value = answer(dict(config), dtype)
    except Exception as err:  # noqa: BLE001 -- the learner's code: what it raises is the hint
        return None, f"kv_bytes_per_token(config, {dtype!r}) raised {type(err).__name__}: {err}"
    if not isinstance(value, int | float) or not value > 0:
        return None, f"kv_bytes_per_token(config, {dtype!r}) returned {value!r}, not a positive number of bytes"
    return float(value), ""


def _formula_check(
    answer: Callable[[dict[str, Any], str], float], name: str, config: dict[str, Any], shape: kvcache.ModelShape
) -> LabCheck:
    problems = []
    for dtype in KV_DTYPES:
        value, error = _bytes_of(answer, config, dtype)
        expected = shape.bytes_per_token(dtype)
        if value is None:
            problems.append(error)
        elif value != expected:
            problems.append(f"{dtype}: your figure is {value / expected:.3g} times the formula's")
    return LabCheck(
        f"the formula, on {name} ({', '.join(KV_DTYPES)})",
        not problems,
        "; ".join(problems[:2])
        + ". Keys and values (2) x layers x the heads that keep K and V x head_dim x bytes per value; "
        "with grouped-query attention those heads are num_key_value_heads, and head_dim, when config.json "
        "has none, is hidden_size / num_attention_heads.",
    )


def check_kv_bytes_per_token(
    answer: Callable[[dict[str, Any], str], float],
    hf_dir: str | Path | None,
    kv_checks: list[dict[str, Any]],
    device: str,
) -> list[LabCheck]:
    """Grade ``answer(config, dtype)``: the formula for this run's model and for Llama-3-8B (GQA, no head_dim
    key), and, on CPU where the budget is whole GiB, the cache size vLLM reported at each of this run's starts
    (``kv_checks``: dtype, budget, reported_tokens)."""
    checks = [
        _formula_check(
            answer, "Llama-3-8B's config (GQA, no head_dim)", LLAMA3_8B_CONFIG, kvcache.reference_shapes()["Llama-3-8B"]
        ),
    ]
    if hf_dir is None or not (Path(hf_dir) / "config.json").is_file():  # a hub id on a GPU: no local config
        return checks
    config = json.loads((Path(hf_dir) / "config.json").read_text())
    checks.insert(
        0, _formula_check(answer, "this run's model's config.json", config, kvcache.shape_from_hf_config(hf_dir))
    )
    if device != "cpu":  # a GPU's budget is a share of memory vLLM measures itself: no whole-GiB prediction
        return checks
    block = kvcache.VLLM_BLOCK_SIZE["cpu"]
    misses = []
    for row in kv_checks:
        value, error = _bytes_of(answer, config, row["dtype"])
        predicted = kvcache.cache_tokens(row["budget"] * 2**30, value, block) if value is not None else None
        if predicted != row["reported_tokens"]:
            misses.append(
                error
                or f"{row['dtype']} in {row['budget']} GiB: vLLM reported {row['reported_tokens']} tokens, your "
                f"bytes per token give {predicted}"
            )
    checks.append(
        LabCheck(
            "predicts the KV cache vLLM reported at this run's starts",
            not misses,
            "; ".join(misses[:2]) + ". vLLM divides the budget by bytes per token and rounds down to whole blocks of "
            f"{block} tokens (kvcache.cache_tokens); a ratio of num_attention_heads / num_key_value_heads "
            "means the query heads were counted.",
        )
    )
    return checks


# --- Your turn 3: blocks for a load -----------------------------------------------------------------

# Two more loads beside section 4's: a GPU's 16-token blocks, and long prompts with short answers. In each,
# (prompt + output) is not one past a block boundary, where a sequence's last token (never fed back, so
# never cached) would save one block and the simulator would need one block fewer than whole blocks of
# prompt + output.
OTHER_LOADS = ((8, 100, 200, 16), (3, 1000, 30, 128))


def _blocks(answer: Callable[[int, int, int, int], int], load: tuple[int, int, int, int]) -> tuple[int | None, str]:
    """The learner's block count as an int (a whole float such as 48.0 counts), or None and what went wrong."""
    try:
        value: object = answer(*load)
    except Exception as err:  # noqa: BLE001 -- the learner's code: what it raises is the hint
        return None, f"blocks_for_load{load} raised {type(err).__name__}: {err}"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        return None, f"blocks_for_load{load} returned {value!r}, not a whole number of blocks"
    return int(value), ""


def _preemptions(users: int, prompt: int, output: int, block: int, blocks: int) -> int:
    """Preemptions the kit's paged simulator counts serving the load in a cache of ``blocks`` blocks."""
    lengths = np.array([[prompt, output]] * users)
    return kvcache.simulate_allocation(lengths, blocks * block, "paged", prompt + output, block_size=block).preempted


def check_blocks_for_load(
    answer: Callable[[int, int, int, int], int],
    load: tuple[int, int, int, int],
    engine_blocks: int | None,
    engine_preemptions: float,
) -> list[LabCheck]:
    """Grade ``answer(users, prompt_tokens, output_tokens, block_size)`` on section 4's ``load`` and two others.

    Enough: the kit's simulator serves the load in that many blocks without a preemption. Not more than the
    load can use: each sequence holds at most its whole blocks of prompt + output. And, for section 4's load,
    the answer agrees with the run: vLLM preempted (``engine_preemptions`` > 0) exactly when its cache of
    ``engine_blocks`` blocks was smaller than the answer.
    """
    short, excess = [], []
    for users, prompt, output, block in (load, *OTHER_LOADS):
        case = (users, prompt, output, block)
        blocks, error = _blocks(answer, case)
        if blocks is None:
            short.append(error)
            continue
        if blocks * block < prompt + output:
            short.append(f"load {case}: {blocks} blocks do not hold even one whole sequence")
        elif (preempted := _preemptions(*case, blocks)) > 0:
            short.append(f"load {case}: with {blocks} blocks the simulator counts {preempted} preemption(s)")
        most = users * math.ceil((prompt + output) / block)
        if blocks > most:
            excess.append(f"load {case}: {blocks} blocks, but the sequences can fill at most {most}")
    checks = [
        LabCheck(
            "enough: the kit's simulator preempts nobody (kvcache.simulate_allocation, paged)",
            not short,
            "; ".join(short[:2]) + ". Blocks belong to one sequence each: a sequence's last block is partly "
            "empty, so round up per sequence (math.ceil of its tokens / block_size), then multiply by the users.",
        ),
        LabCheck(
            "no more than the sequences can fill",
            not excess,
            "; ".join(excess[:2]) + ". A sequence of prompt + output tokens never holds more than its whole "
            "blocks of those tokens; no margin on top.",
        ),
    ]
    if engine_blocks is not None:
        blocks, error = _blocks(answer, load)
        preempted = engine_preemptions > 0
        agrees = blocks is not None and (blocks > engine_blocks) == preempted
        checks.append(
            LabCheck(
                "agrees with section 4's run (preemptions exactly when the cache was short)",
                agrees,
                error
                or f"section 4's cache had {engine_blocks} blocks and vLLM counted {engine_preemptions:g} "
                f"preemptions, but your answer says the load needs {blocks}: "
                + ("so it should have fit" if preempted else "so it should have preempted")
                + ".",
            )
        )
    return checks
