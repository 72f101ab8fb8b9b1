"""The benchmark harness against a real llama.cpp server, and against an instant stub for its own limits.

About 20 s on 2 idle cores; the stub (servelab.bench.overhead) is no engine, only a fast counterpart.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from servelab.bench import fixed_workload, run_benchmark, run_benchmark_async, sweep_concurrency, sweep_rate
from servelab.bench.overhead import STUB_MODEL, measure_client_ceiling, start_stub_server
from servelab.engines.launch import Engine
from servelab.errors import ServelabError

pytestmark = pytest.mark.engines


@pytest.fixture
def llama(llamacpp_engine: Engine) -> Engine:
    """The suite's shared llama.cpp server (tests/conftest.py), default options."""
    return llamacpp_engine


def test_closed_loop_gets_full_length_answers(llama: Engine) -> None:
    workload = fixed_workload(input_tokens=32, output_tokens=16, engine_kind="llamacpp")
    result = run_benchmark(
        llama.base_url,
        llama.served_model,
        workload,
        concurrency=2,
        num_requests=6,
        warmup=1,
        timeout_s=60,
        progress=False,
    )
    assert [r.status for r in result.records] == ["ok"] * 6, result.summary["first_error"]
    assert all(r.output_tokens == 16 for r in result.records)  # logit_bias on EOS forces full length
    assert all(r.ttft_s > 0 and r.tpot_s > 0 and r.e2e_s > r.ttft_s for r in result.records)
    assert all(len(r.itl_s) == 15 for r in result.records)
    s = result.summary
    assert s["request_throughput"] > 0 and s["output_token_throughput"] > 0
    assert s["output_tokens_total"] == 96


def test_chat_endpoint(llama: Engine) -> None:
    workload = fixed_workload(input_tokens=16, output_tokens=8, engine_kind="llamacpp")
    result = run_benchmark(
        llama.base_url, llama.served_model, workload, num_requests=2, warmup=0, endpoint="chat", progress=False
    )
    assert [(r.status, r.output_tokens) for r in result.records] == [("ok", 8), ("ok", 8)]


def test_open_loop_keeps_client_queueing_out_of_ttft(llama: Engine) -> None:
    """Four arrivals within 0.15 s, one slot: the later ones wait in the client, not in TTFT."""
    workload = fixed_workload(input_tokens=16, output_tokens=16, engine_kind="llamacpp")
    result = run_benchmark(
        llama.base_url,
        llama.served_model,
        workload,
        request_rate=20.0,
        concurrency=1,
        num_requests=4,
        warmup=0,
        progress=False,
        seed=1,
    )
    assert result.summary["ok"] == 4
    last = max(result.records, key=lambda r: r.client_queue_s)
    assert last.client_queue_s > last.ttft_s > 0


def test_timeouts_are_counted_not_dropped(llama: Engine) -> None:
    workload = fixed_workload(input_tokens=16, output_tokens=64, engine_kind="llamacpp")
    result = run_benchmark(
        llama.base_url, llama.served_model, workload, num_requests=2, warmup=0, timeout_s=0.02, progress=False
    )
    s = result.summary
    assert (s["requests"], s["timeouts"], s["ok"]) == (2, 2, 0)
    assert all("0.02 s" in r.error for r in result.records)


def test_client_ceiling_and_sweeps_against_the_instant_stub(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The stub is no engine: it only shows the harness itself is far faster than llama.cpp here."""
    ceiling = measure_client_ceiling(concurrency=8, num_requests=100, chunks=16)
    assert ceiling["ok"] == 100 and ceiling["requests_per_s"] > 20 and "not an engine" in ceiling["label"]
    workload = fixed_workload(8, 8)
    with start_stub_server() as stub:
        by_c = sweep_concurrency(
            stub.url + "/v1", STUB_MODEL, workload, [1, 4], num_requests=12, warmup=0, progress=False, save_dir=tmp_path
        )
        by_rate = sweep_rate(
            stub.url + "/v1",
            STUB_MODEL,
            workload,
            [100.0, float("inf")],
            num_requests=12,
            warmup=0,
            concurrency=4,
            progress=False,
        )
        per_user = sweep_concurrency(
            stub.url + "/v1",
            STUB_MODEL,
            workload,
            [1, 4],
            requests_per_user=3,
            min_requests=5,
            warmup=0,
            progress=False,
        )
    assert list(by_c["concurrency"]) == [1, 4] and list(by_c["ok"]) == [12, 12]
    assert list(per_user["requests"]) == [5, 12]  # max(min_requests, 3 per user)
    assert list(by_rate["ok"]) == [12, 12] and (by_rate["output_tokens_total"] == 96).all()
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_a_server_that_dies_mid_run_ends_it_with_an_error() -> None:
    stub = start_stub_server()

    async def run_and_kill() -> None:
        run = asyncio.create_task(
            run_benchmark_async(
                stub.url + "/v1",
                STUB_MODEL,
                fixed_workload(8, 8),
                request_rate=50.0,
                num_requests=None,
                duration_s=20.0,
                warmup=0,
                progress=False,
            )
        )
        await asyncio.sleep(0.5)
        await asyncio.to_thread(stub.stop)
        await run

    started = time.perf_counter()
    try:
        with pytest.raises(ServelabError, match="stopped accepting connections"):
            asyncio.run(run_and_kill())
    finally:
        stub.stop()
    assert time.perf_counter() - started < 10
