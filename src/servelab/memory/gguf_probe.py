"""Measure one GGUF file in this process: perplexity, prompt and decode speed, resident memory.

Resident memory is taken right after loading: weights plus llama.cpp's context buffers (KV cache for
``n_ctx`` tokens, compute buffers, and the logits of every position, which perplexity needs).

Run as ``python -m servelab.memory.gguf_probe --gguf FILE --text FILE`` by
:func:`servelab.memory.quantize.measure_level`, one fresh process per file, so every figure belongs
to exactly one loaded model. Prints one JSON line.

Perplexity follows llama.cpp's ``llama-perplexity``: the text is cut into windows of ``n_ctx`` tokens,
and in each window only the second half is scored, so every scored token has at least ``n_ctx / 2``
tokens of context (the first tokens of a window, with almost no context, would inflate the figure).
It comes with a standard error, as ``llama-perplexity`` prints one: a few hundred scored tokens give a
noisy figure, and two levels whose perplexities differ by less than their noise are not told apart.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import psutil


def token_nll(logits: np.ndarray, tokens: list[int], first_scored: int) -> np.ndarray:
    """Negative log-likelihood of each of ``tokens[first_scored:]`` given ``logits`` (one row per position).

    Row ``i`` holds the logits after reading ``tokens[: i + 1]``, so it predicts ``tokens[i + 1]``.
    Computed in float64 with a stable log-softmax.
    """
    if not 1 <= first_scored < len(tokens):
        raise ValueError(f"first_scored must be in [1, {len(tokens) - 1}], got {first_scored}")
    rows = np.asarray(logits[first_scored - 1 : len(tokens) - 1], dtype=np.float64)
    peak = rows.max(axis=1, keepdims=True)
    log_norm = peak[:, 0] + np.log(np.exp(rows - peak).sum(axis=1))
    targets = np.asarray(tokens[first_scored:])
    picked = rows[np.arange(len(targets)), targets]
    return np.asarray(log_norm - picked)


def window_nll(logits: np.ndarray, tokens: list[int], first_scored: int) -> tuple[float, int]:
    """``(sum, count)`` of :func:`token_nll`: what a window adds to the perplexity."""
    nll = token_nll(logits, tokens, first_scored)
    return float(nll.sum()), len(nll)


def perplexity(nll_sum: float, count: int) -> float:
    """``exp(mean NLL)``: the model's average branching factor on the text (lower is better)."""
    return float(np.exp(nll_sum / count))


def perplexity_se(nll: np.ndarray) -> float:
    """Standard error of ``exp(mean NLL)`` by the delta method: perplexity x the standard error of the mean
    NLL, as llama-perplexity reports it. Tokens are treated as independent, which neighbouring tokens of
    one text are not quite, so read it as a lower bound on the noise."""
    if len(nll) < 2:
        raise ValueError("a standard error needs at least 2 scored tokens")
    mean_se = float(np.std(nll, ddof=1) / np.sqrt(len(nll)))
    return float(np.exp(nll.mean())) * mean_se


def probe(gguf: str, text: str, n_ctx: int, max_chunks: int, decode_tokens: int, threads: int) -> dict[str, float]:
    from llama_cpp import Llama

    # use_mmap=False reads every weight into memory at load, so the RSS right after it is the model's
    # real resident cost (with mmap, pages would count only once touched).
    llm = Llama(
        model_path=gguf,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=True,
        use_mmap=False,
        verbose=False,
    )
    rss_loaded = psutil.Process().memory_info().rss
    tokens = llm.tokenize(text.encode(), add_bos=False)
    size = n_ctx - 1  # + BOS = the whole context
    windows = [tokens[i : i + size] for i in range(0, len(tokens) - size + 1, size)][:max_chunks]
    if not windows:
        raise SystemExit(f"the text has {len(tokens)} tokens, fewer than n_ctx={n_ctx}: use a longer text")
    scored: list[np.ndarray] = []
    prompt_s = 0.0
    for window in windows:
        llm.reset()
        began = time.perf_counter()
        llm.eval([llm.token_bos(), *window])  # BOS first, as llama-perplexity does
        prompt_s += time.perf_counter() - began
        scored.append(token_nll(llm.scores[1 : len(window) + 1], window, len(window) // 2))
    nll = np.concatenate(scored)
    llm.reset()
    start = llm.tokenize(b"The lighthouse keeper", add_bos=True)
    llm.eval(start)
    began = time.perf_counter()
    for _ in range(decode_tokens):  # greedy, never stopping at EOS: a fixed number of decode steps
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    decode_s = time.perf_counter() - began
    return {
        "rss_mib": round(rss_loaded / 2**20, 1),
        "prompt_tok_s": round(sum(len(w) + 1 for w in windows) / prompt_s, 1),
        "decode_tok_s": round(decode_tokens / decode_s, 1),
        "perplexity": round(perplexity(float(nll.sum()), len(nll)), 3),
        "perplexity_se": round(perplexity_se(nll), 3),
        "eval_tokens": len(nll),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", required=True)
    parser.add_argument("--text", required=True)
    parser.add_argument("--n-ctx", type=int, default=256)
    parser.add_argument("--max-chunks", type=int, default=2)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    figures = probe(
        args.gguf, Path(args.text).read_text(), args.n_ctx, args.max_chunks, args.decode_tokens, args.threads
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
