"""The GGUF ladder for real: llama.cpp's quantizer makes a smaller file, and the probe loads it with
llama.cpp and measures perplexity, speed and memory. The probe's arithmetic and its errors are checked
without loading a model in tests/unit/memory/test_quantize.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from servelab.memory import quantize
from servelab.paths import data_path

HELDOUT = data_path("text", "heldout.txt")


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
