"""The GGUF ladder (llama.cpp's real quantizer) and the probe that measures each level."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from servelab.engines import model as models
from servelab.errors import ServelabError
from servelab.memory import quantize
from servelab.memory.gguf_probe import perplexity, perplexity_se, token_nll, window_nll
from servelab.memory.quantize import within_noise
from servelab.paths import data_path

HELDOUT = data_path("text", "heldout.txt")


def test_uniform_logits_give_perplexity_equal_to_the_vocabulary() -> None:
    logits = np.zeros((10, 50))
    total, count = window_nll(logits, list(range(10)), first_scored=5)
    assert count == 5 and total == pytest.approx(5 * math.log(50))
    assert perplexity(total, count) == pytest.approx(50)


def test_window_nll_uses_the_previous_row_for_each_token() -> None:
    logits = np.full((3, 4), -30.0)
    logits[0, 2] = logits[1, 3] = 30.0  # row i is sure of token i + 1
    total, count = window_nll(logits, [0, 2, 3], first_scored=1)
    assert count == 2 and total == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match=r"first_scored must be in \[1, 2\], got 0"):
        window_nll(logits, [0, 2, 3], first_scored=0)


def test_shipped_file_is_q4_1() -> None:
    counts, total = quantize.tensor_types(models.gguf_path())
    assert counts.most_common(1)[0][0] == "Q4_1" and 130e6 < total < 140e6  # SmolLM2-135M


def test_unknown_level_names_the_known_ones() -> None:
    with pytest.raises(ServelabError, match="Q4_K_M"):
        quantize.build_ladder(["Q4_K_X"])


def test_a_broken_file_fails_with_a_clear_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(ServelabError, match="measuring broken failed"):
        quantize.measure_level("broken", bad, HELDOUT, timeout_s=120)


def test_cli_makes_the_ladder_and_refuses_an_unknown_level() -> None:
    from typer.testing import CliRunner

    from servelab.cli import app

    made = CliRunner().invoke(app, ["quantize", "Q8_0", "--no-measure"])
    assert made.exit_code == 0 and "Q8_0.gguf" in made.output
    bad = CliRunner().invoke(app, ["quantize", "Q9", "--no-measure"])
    assert bad.exit_code == 1 and "unknown quantization level 'Q9'" in bad.output and "Q4_K_M" in bad.output


def test_perplexity_comes_with_its_standard_error() -> None:
    nll = np.array([1.0, 2.0, 3.0, 2.0])
    se = perplexity_se(nll)
    expected = np.exp(2.0) * np.std(nll, ddof=1) / 2
    assert se == pytest.approx(expected)
    with pytest.raises(ValueError, match="at least 2"):
        perplexity_se(np.array([1.0]))


def test_token_nll_sums_to_window_nll() -> None:
    logits = np.random.default_rng(0).normal(size=(6, 7))
    tokens = [0, 3, 1, 6, 2, 5]
    assert token_nll(logits, tokens, 2).sum() == pytest.approx(window_nll(logits, tokens, 2)[0])


def test_differences_inside_the_noise() -> None:
    assert within_noise(33.0, 1.0, 34.5, 1.0)  # 1.5 < 2 x 1.41
    assert not within_noise(33.0, 0.5, 36.0, 0.5)
