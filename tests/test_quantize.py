"""The GGUF ladder (llama.cpp's real quantizer) and the probe that measures each level."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from servelab.engines import model as models
from servelab.errors import ServelabError
from servelab.memory import quantize
from servelab.memory.gguf_probe import perplexity, window_nll
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
    with pytest.raises(ValueError):
        window_nll(logits, [0, 2, 3], first_scored=0)


def test_shipped_file_is_q4_1() -> None:
    counts, total = quantize.tensor_types(models.gguf_path())
    assert counts.most_common(1)[0][0] == "Q4_1" and 130e6 < total < 140e6  # SmolLM2-135M


def test_unknown_level_names_the_known_ones() -> None:
    with pytest.raises(ServelabError, match="Q4_K_M"):
        quantize.build_ladder(["Q4_K_X"])


@pytest.mark.engines
def test_ladder_levels_are_real_smaller_files_and_measure_sanely() -> None:
    made = quantize.build_ladder(["Q8_0"])  # F16 is made first, as every level's source
    f16 = Path(quantize.ladder_dir() / "F16.gguf")
    q8 = Path(str(made["Q8_0"]["path"]))
    assert f16.is_file() and q8.is_file() and set(made) == {"Q8_0"}
    counts, _ = quantize.tensor_types(q8)
    assert counts.most_common(1)[0][0] == "Q8_0" and quantize.tensor_types(f16)[0].most_common(1)[0][0] == "F16"
    assert 0.45 < q8.stat().st_size / f16.stat().st_size < 0.6  # 8.5 of 16 bits per weight
    assert quantize.build_ladder(["Q8_0"])["Q8_0"]["cached"] is True
    measured = quantize.measure_level("Q8_0", q8, HELDOUT, n_ctx=128, max_chunks=1, decode_tokens=8)
    assert 5 < measured.perplexity < 500 and measured.eval_tokens == 64
    assert measured.decode_tok_s > 0.1 and measured.prompt_tok_s > 0.1 and 100 < measured.rss_mib < 4000, measured
    assert measured.main_type == "Q8_0" and 8 < measured.bits_per_weight < 9.5


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
