"""Instructor copy: reference solutions to notebook 04's "Your turn" exercises (checks: course.exercises.nb04)."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from servelab.memory import kvcache, quantize


def pick_level(ladder: pd.DataFrame, rss_budget_mib: float) -> str | None:
    """The level to deploy in ``rss_budget_mib`` of resident memory: among the levels that fit, those this
    text cannot tell apart from the best one are equally good, so take the one that needs the least memory."""
    fits = ladder[ladder["rss_mib"] <= rss_budget_mib]
    if fits.empty:
        return None
    best = fits.loc[fits["perplexity"].idxmin()]
    tied = fits[
        [
            quantize.within_noise(row.perplexity, row.perplexity_se, best.perplexity, best.perplexity_se)
            for row in fits.itertuples()
        ]
    ]
    return str(tied["rss_mib"].idxmin())


def kv_bytes_per_token(config: dict[str, Any], dtype: str) -> float:
    """Keys and values, in every layer, for each KV head (not each query head: grouped-query attention)."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads", config["num_attention_heads"])
    return 2 * config["num_hidden_layers"] * kv_heads * head_dim * kvcache.DTYPE_BYTES[dtype]


def blocks_for_load(users: int, prompt_tokens: int, output_tokens: int, block_size: int) -> int:
    """Each sequence holds whole blocks of its own, so round up per sequence, then count the users."""
    return users * math.ceil((prompt_tokens + output_tokens) / block_size)
