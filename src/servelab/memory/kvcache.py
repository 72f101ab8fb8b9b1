"""The KV cache: how many tokens a memory budget holds, what vLLM says it holds, and why paging matters.

Three jobs, one subject:

- The formula. Every token of every running sequence keeps a key and a value vector per layer and
  KV head, so ``bytes/token = 2 x layers x kv_heads x head_dim x bytes per value``
  (:func:`servelab.memory.roofline.kv_bytes_per_token`). vLLM cuts the budget into blocks (16 tokens on a GPU,
  128 on CPU), so :func:`cache_tokens` rounds down to whole blocks; notebook 04 checks the result against the number
  vLLM prints at start (:func:`parse_vllm_kv_log`).
- The check. vLLM logs ``KV cache size: N tokens`` and ``Maximum concurrency for L tokens per request: Xx``.
- The simulator (:func:`simulate_allocation`). Before PagedAttention, servers reserved one contiguous
  region per request, sized for the longest sequence it might become. Kwon et al. (SOSP 2023,
  arXiv:2309.06180, section 3) measured that only 20.4-38.2% of the KV memory of such systems held
  real token states. The simulator replays that on a chosen length distribution: contiguous
  max-length reservation against paged blocks allocated as tokens arrive.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from servelab.errors import ServelabError
from servelab.memory.roofline import kv_bytes_per_token
from servelab.paths import data_path

# vLLM's default --block-size per device: 16 on GPUs; 128 on CPU (vllm/platforms/cpu.py sets it when
# the user did not). The cache is sized in whole blocks, so budgets are rounded down to them.
VLLM_BLOCK_SIZE = {"cuda": 16, "cpu": 128}
PAPER_BLOCK_SIZE = 16  # the block size of the PagedAttention paper's evaluation
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "fp8": 1}


@dataclass(frozen=True)
class ModelShape:
    """The attention shape that sizes the KV cache (``source`` says where the numbers come from)."""

    name: str
    layers: int
    kv_heads: int
    head_dim: int
    source: str

    def bytes_per_token(self, dtype: str) -> float:
        if dtype not in DTYPE_BYTES:
            raise ServelabError(f"unknown KV cache dtype {dtype!r}", f"use one of {', '.join(DTYPE_BYTES)}")
        return kv_bytes_per_token(self.layers, self.kv_heads, self.head_dim, DTYPE_BYTES[dtype])


def shape_from_hf_config(path: str | Path, name: str | None = None) -> ModelShape:
    """The shape of a local HF model directory (its ``config.json``): what vLLM itself reads."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ServelabError(f"no config.json in {path}", "point at a HF model directory (servelab model prepare)")
    config = yaml.safe_load(config_file.read_text())  # JSON is YAML
    heads = config["num_attention_heads"]
    return ModelShape(
        name=name or Path(path).name,
        layers=config["num_hidden_layers"],
        kv_heads=config.get("num_key_value_heads", heads),
        head_dim=config.get("head_dim") or config["hidden_size"] // heads,
        source=str(config_file),
    )


def reference_shapes() -> dict[str, ModelShape]:
    """Larger models' shapes, each with its source, from ``data/reference/hardware.yaml``."""
    models = yaml.safe_load((data_path("reference", "hardware.yaml")).read_text())["models"]
    return {
        name: ModelShape(
            name=name, layers=m["layers"], kv_heads=m["kv_heads"], head_dim=m["head_dim"], source=m["source"]
        )
        for name, m in models.items()
    }


def cache_tokens(budget_bytes: float, bytes_per_token: float, block_size: int) -> int:
    """Tokens a KV budget holds, in whole blocks (how vLLM sizes its cache)."""
    return int(budget_bytes // (bytes_per_token * block_size)) * block_size


def max_concurrency(tokens: int, tokens_per_sequence: int) -> float:
    """How many sequences of ``tokens_per_sequence`` fit at once: vLLM's "Maximum concurrency" figure."""
    return tokens / tokens_per_sequence


_SIZE = re.compile(r"(?:CPU|GPU) KV cache size: ([\d,]+) tokens")
_CONCURRENCY = re.compile(r"Maximum concurrency for ([\d,]+) tokens per request: ([\d.]+)x")


def parse_vllm_kv_log(text: str) -> dict[str, float]:
    """``{"tokens", "request_tokens", "max_concurrency"}`` from a vLLM start-up log."""
    size, concurrency = _SIZE.search(text), _CONCURRENCY.search(text)
    if not size or not concurrency:
        raise ServelabError("the log has no 'KV cache size' line", "pass the log of a vLLM that reached ready")
    return {
        "tokens": int(size.group(1).replace(",", "")),
        "request_tokens": int(concurrency.group(1).replace(",", "")),
        "max_concurrency": float(concurrency.group(2)),
    }


# --- block allocation simulation -------------------------------------------------------------------


def sample_lengths(
    n: int, prompt_median: float, output_median: float, sigma: float, max_len: int, seed: int = 0
) -> np.ndarray:
    """``n`` (prompt, output) token counts, log-normal (long-tailed, like chat traffic), capped at ``max_len``."""
    rng = np.random.default_rng(seed)
    prompt = np.clip(np.rint(rng.lognormal(math.log(prompt_median), sigma, n)), 1, max_len - 1)
    output = np.clip(np.rint(rng.lognormal(math.log(output_median), sigma, n)), 1, max_len - prompt)
    return np.stack([prompt, output], axis=1).astype(int)


@dataclass
class AllocationResult:
    """Shares of the whole cache, averaged over the steps where requests were waiting (the cache was the
    bottleneck); ``mean_running`` is over all steps."""

    scheme: str
    token_states: float  # holds the KV of a token that exists: the only useful part
    reserved: float  # held for tokens a sequence has not produced yet (contiguous only)
    internal: float  # held but never going to be used: past the sequence's final length / in its last block
    external: float  # free, yet the next request waits: no hole is big enough (contiguous only)
    free: float  # not held at all
    mean_running: float  # sequences in the batch, on average
    finished: int
    preempted: int  # paged only: sequences evicted for lack of a block, to be recomputed


def _first_fit(holes: list[tuple[int, int]], size: int) -> int | None:
    """Index of the first free (start, length) hole that fits ``size``."""
    return next((i for i, (_, length) in enumerate(holes) if length >= size), None)


def _release(holes: list[tuple[int, int]], start: int, size: int) -> list[tuple[int, int]]:
    """Give a region back and merge it with neighbouring holes."""
    merged: list[tuple[int, int]] = []
    for hole_start, hole_len in sorted([*holes, (start, size)]):
        if merged and merged[-1][0] + merged[-1][1] == hole_start:
            merged[-1] = (merged[-1][0], merged[-1][1] + hole_len)
        else:
            merged.append((hole_start, hole_len))
    return merged


def simulate_allocation(
    lengths: np.ndarray,
    capacity_tokens: int,
    scheme: str,
    max_len: int,
    block_size: int = PAPER_BLOCK_SIZE,
    max_steps: int = 50_000,
) -> AllocationResult:
    """Serve ``lengths`` ((prompt, output) rows, all waiting at t=0) through a KV cache of ``capacity_tokens``.

    Each step admits waiting requests in order while they fit, then every running sequence produces one
    token, and finished ones free their memory. ``scheme``:

    - ``"contiguous"``: a request reserves ``max_len`` slots in one contiguous region, first fit, as
      systems did before PagedAttention because the output length is unknown in advance. With one
      reservation size, external fragmentation is only the remainder of the cache that holds no
      whole reservation (allocators with mixed sizes, e.g. buddy allocation, leave more);
    Memory shares are averaged over the saturated steps only (requests waiting); the drain at the end,
    when the cache is no longer the limit, would dilute them.

    - ``"paged"``: a request holds ``ceil(tokens / block_size)`` blocks, taken one at a time as it
      grows, anywhere in the cache. When no block is free, the newest sequence is preempted (its
      blocks freed, the request queued again in front, to be recomputed), as vLLM does.
    """
    if scheme not in ("contiguous", "paged"):
        raise ServelabError(f"unknown scheme {scheme!r}", 'use "contiguous" or "paged"')
    if lengths.sum(axis=1).max() > max_len or max_len > capacity_tokens:
        raise ServelabError(
            "a request is longer than max_len, or max_len exceeds the cache",
            "cap the lengths at max_len and keep max_len <= capacity_tokens",
        )
    waiting = deque((int(p), int(o)) for p, o in lengths)
    running: list[dict[str, int]] = []
    holes = [(0, capacity_tokens)]
    free_blocks = capacity_tokens // block_size
    shares = {"token_states": 0.0, "reserved": 0.0, "internal": 0.0, "external": 0.0}
    batch_sizes: list[int] = []
    finished = preempted = saturated = 0
    for _ in range(max_steps):
        if not waiting and not running:
            break
        while waiting:  # admit in order (FCFS) while the head request fits
            prompt, output = waiting[0]
            if scheme == "contiguous":
                index = _first_fit(holes, max_len)
                if index is None:
                    break
                start, length = holes[index]
                holes[index : index + 1] = [(start + max_len, length - max_len)] if length > max_len else []
                running.append({"start": start, "len": prompt, "final": prompt + output})
            else:
                need = math.ceil(prompt / block_size)
                if need > free_blocks:
                    break
                free_blocks -= need
                running.append({"blocks": need, "len": prompt, "final": prompt + output})
            waiting.popleft()
        batch_sizes.append(len(running))
        if waiting:  # the cache is the bottleneck; the final drain (nothing waiting) is not averaged
            saturated += 1
            tokens = sum(seq["len"] for seq in running)
            shares["token_states"] += tokens / capacity_tokens
            if scheme == "contiguous":
                future = sum(seq["final"] - seq["len"] for seq in running)
                shares["reserved"] += future / capacity_tokens
                shares["internal"] += (max_len * len(running) - tokens - future) / capacity_tokens
                shares["external"] += sum(length for _, length in holes) / capacity_tokens
            else:
                shares["internal"] += (block_size * sum(seq["blocks"] for seq in running) - tokens) / capacity_tokens
        still: list[dict[str, int]] = []
        for seq in running:  # one decode step
            seq["len"] += 1
            if seq["len"] >= seq["final"]:
                finished += 1
                if scheme == "contiguous":
                    holes = _release(holes, seq["start"], max_len)
                else:
                    free_blocks += seq["blocks"]
                continue
            if scheme == "paged" and seq["len"] > seq["blocks"] * block_size:
                seq["blocks"] += 1
                free_blocks -= 1
            still.append(seq)
        while free_blocks < 0:  # out of blocks: preempt the newest sequence and recompute it later
            victim = still.pop()
            free_blocks += victim["blocks"]
            waiting.appendleft((victim["len"], victim["final"] - victim["len"]))
            preempted += 1
        running = still
    if waiting or running:
        raise ServelabError(f"the simulation did not finish within {max_steps} steps", "raise max_steps")
    averages = {k: v / max(saturated, 1) for k, v in shares.items()}
    return AllocationResult(
        scheme=scheme,
        **averages,
        free=1 - sum(averages.values()),
        mean_running=float(np.mean(batch_sizes)) if batch_sizes else 0.0,
        finished=finished,
        preempted=preempted,
    )
