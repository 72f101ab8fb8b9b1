"""A GGUF quantization ladder made here, from the kit's model, with llama.cpp's own quantizer.

Why a ladder and not a table from a blog: the size, speed and quality of a quantization level depend on
the model's shapes. SmolLM2-135M's width (576) is not a multiple of 256, the super-block size of the
K-quants, so llama.cpp quantizes most of its matrices with a fallback type (Q5_0, Q5_1, IQ4_NL, ...);
the ladder's files are therefore closer together in size than a 7B model's would be. Reading the tensor
types of each file (:func:`tensor_types`) shows this instead of hiding it.

The top rung is F16, made by dequantizing the shipped Q4_1 file. That is honest only with the caveat
the notebook states: the source was Q4_1, so F16 holds exactly the Q4_1 values and no level can be
better than Q4_1; the ladder shows what each level *loses* from there.

Each level is measured in a child process (:mod:`servelab.memory.gguf_probe`) so that the resident memory
of one loaded model does not leak into the next and a crash or hang of one level is bounded by a
timeout.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from servelab.engines import model as models
from servelab.errors import ServelabError
from servelab.paths import home
from servelab.procs import run_command

LADDER: tuple[str, ...] = ("F16", "Q8_0", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")
QUICK_LADDER: tuple[str, ...] = ("F16", "Q8_0", "Q4_K_M", "Q2_K")


def _ftype(level: str) -> int:
    import llama_cpp

    value = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{level}", None)
    if value is None:
        known = sorted(
            n.removeprefix("LLAMA_FTYPE_MOSTLY_") for n in dir(llama_cpp) if n.startswith("LLAMA_FTYPE_MOSTLY_")
        )
        raise ServelabError(f"unknown quantization level {level!r}", f"pick one of {', '.join(known)}")
    return int(value)


def ladder_dir() -> Path:
    """Where the ladder is cached: one file per level, made once."""
    path = home() / "quant" / Path(models.gguf_path()).stem
    path.mkdir(parents=True, exist_ok=True)
    return path


def quantize(src: Path, dst: Path, level: str, threads: int = 2, allow_requantize: bool = False) -> float:
    """Write ``src`` quantized to ``level`` as ``dst`` with llama.cpp's ``llama_model_quantize``; seconds taken.

    Writes to a temporary name first, so an interrupted run never leaves a half file in the cache.
    """
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.nthread = threads
    params.ftype = _ftype(level)
    params.allow_requantize = allow_requantize
    partial = dst.with_suffix(".partial")
    began = time.perf_counter()
    status = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), params)
    if status != 0 or not partial.is_file():
        partial.unlink(missing_ok=True)
        raise ServelabError(
            f"llama_model_quantize failed for {level} (status {status})",
            f"check that {src} is a readable GGUF file; delete {dst.parent} and retry",
        )
    partial.replace(dst)
    return time.perf_counter() - began


def build_ladder(
    levels: tuple[str, ...] | list[str] = LADDER, threads: int = 2, force: bool = False
) -> dict[str, dict[str, float | str]]:
    """Make (or reuse) one GGUF per level; returns ``{level: {"path", "seconds", "cached"}}``.

    F16 comes from the shipped Q4_1 file (``allow_requantize``: dequantize, then store as F16); every
    other level is quantized from F16, the way llama.cpp's docs do it from a converted model.
    """
    wanted = list(dict.fromkeys(["F16", *levels]))
    made: dict[str, dict[str, float | str]] = {}
    for level in wanted:
        dst = ladder_dir() / f"{level}.gguf"
        if dst.is_file() and not force:
            made[level] = {"path": str(dst), "seconds": 0.0, "cached": True}
            continue
        src = Path(models.gguf_path()) if level == "F16" else Path(str(made["F16"]["path"]))
        seconds = quantize(src, dst, level, threads=threads, allow_requantize=level == "F16")
        made[level] = {"path": str(dst), "seconds": round(seconds, 2), "cached": False}
    return {level: made[level] for level in wanted if level in levels}


def tensor_types(path: str | Path) -> tuple[Counter[str], int]:
    """``(Counter of weight count per ggml type, total weights)`` read from the GGUF header.

    This is how to see that a "Q2_K" file of this model is mostly another type: the counts say which
    type really holds the weights.
    """
    from gguf import GGUFReader

    counts: Counter[str] = Counter()
    for tensor in GGUFReader(str(path)).tensors:
        counts[tensor.tensor_type.name] += int(tensor.n_elements)
    return counts, sum(counts.values())


@dataclass
class LevelMeasurement:
    """What one quantization level costs and gives, measured in a fresh process."""

    level: str
    file_mib: float
    bits_per_weight: float
    main_type: str
    rss_mib: float
    prompt_tok_s: float
    decode_tok_s: float
    perplexity: float
    perplexity_se: float  # standard error of the perplexity (gguf_probe.perplexity_se)
    eval_tokens: int


def within_noise(ppl: float, se: float, other_ppl: float, other_se: float, z: float = 2.0) -> bool:
    """Are two perplexities closer than ``z`` combined standard errors? Then this text cannot tell the levels
    apart. The errors are combined as if independent; both levels score the same tokens, so a paired test
    would be sharper: a difference called noise here may still be real, never the other way round."""
    return abs(ppl - other_ppl) <= z * math.hypot(se, other_se)


def measure_level(
    level: str,
    gguf: str | Path,
    text_path: str | Path,
    n_ctx: int = 256,
    max_chunks: int = 2,
    decode_tokens: int = 64,
    threads: int = 2,
    timeout_s: float = 300,
) -> LevelMeasurement:
    """Load ``gguf`` in a child process; measure perplexity on ``text_path``, prompt and decode speed, RSS."""
    command = [
        sys.executable,
        "-m",
        "servelab.memory.gguf_probe",
        "--gguf",
        str(gguf),
        "--text",
        str(text_path),
        "--n-ctx",
        str(n_ctx),
        "--max-chunks",
        str(max_chunks),
        "--decode-tokens",
        str(decode_tokens),
        "--threads",
        str(threads),
    ]
    done = run_command(command, timeout_s, f"measuring {level}", "raise timeout_s, or lower max_chunks / decode_tokens")
    if done.returncode != 0:
        raise ServelabError(
            f"measuring {level} failed (exit {done.returncode}): {done.stderr.strip()[-800:]}",
            f"try loading {gguf} with llama_cpp.Llama directly to see the full error",
        )
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    counts, total = tensor_types(gguf)
    size = Path(gguf).stat().st_size
    return LevelMeasurement(
        level=level,
        file_mib=round(size / 2**20, 1),
        bits_per_weight=round(8 * size / total, 2),
        main_type=counts.most_common(1)[0][0],
        **probe,
    )
