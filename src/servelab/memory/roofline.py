"""How fast *could* decoding be? The memory-bandwidth roofline, measured on this machine.

Generating one token reads every weight once (plus the KV cache of the sequence), so a single stream
cannot beat ``bandwidth / bytes read per token``. A batch of B sequences shares one read of the
weights, which is why batching raises throughput until compute, not memory, becomes the limit.
"""

from __future__ import annotations

import time

import numpy as np


def measure_memory_bandwidth(size_mib: int = 512, repeats: int = 5) -> float:
    """Best-of-``repeats`` bytes/s of a large array copy, counting bytes read *and* written.

    A copy is what decode does to weights (stream them through the cores); the best run is taken
    because the question is what the memory can do, not what a busy moment gave.
    """
    src = np.ones(size_mib * 2**20 // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - began)
    return 2 * src.nbytes / best


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, bytes_per_value: float) -> float:
    """Keys and values of one token across all layers: 2 x layers x kv_heads x head_dim x bytes."""
    return 2 * layers * kv_heads * head_dim * bytes_per_value


def decode_upper_bound(
    bandwidth_b_s: float, weight_bytes: float, batch: int = 1, kv_bytes_per_seq: float = 0.0
) -> float:
    """Tokens/s a batch of ``batch`` sequences cannot exceed if every step reads all weights once
    and each sequence's KV cache once (compute assumed free: a bound, not a prediction)."""
    return batch * bandwidth_b_s / (weight_bytes + batch * kv_bytes_per_seq)
