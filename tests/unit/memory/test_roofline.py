"""The roofline arithmetic, against figures worked out by hand."""

import pytest

from servelab.memory import roofline


def test_llama2_7b_fp16_on_a100_batch_1() -> None:
    # 6.74e9 parameters x 2 bytes = 13.48 GB; 2.039 TB/s / 13.48 GB = 151 tok/s
    assert roofline.decode_upper_bound(2.039e12, 6.74e9 * 2) == pytest.approx(151.3, rel=1e-3)


def test_batching_shares_the_weight_read() -> None:
    one = roofline.decode_upper_bound(1e12, 1e10, batch=1)
    assert roofline.decode_upper_bound(1e12, 1e10, batch=8) == pytest.approx(8 * one)
    with_kv = roofline.decode_upper_bound(1e12, 1e10, batch=8, kv_bytes_per_seq=1e9)
    assert with_kv == pytest.approx(8 * 1e12 / (1e10 + 8e9))


def test_kv_bytes_of_smollm2_and_llama2() -> None:
    assert roofline.kv_bytes_per_token(30, 3, 64, 4) == 46_080  # SmolLM2-135M in fp32
    assert roofline.kv_bytes_per_token(32, 32, 128, 2) == 524_288  # Llama-2-7B fp16: 0.5 MiB per token


def test_bandwidth_is_plausible() -> None:
    assert 1e9 < roofline.measure_memory_bandwidth(size_mib=64, repeats=3) < 2e12
