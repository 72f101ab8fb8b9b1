"""Benchmarking any OpenAI-compatible endpoint: workloads (:mod:`.workload`), a streaming load generator
(:mod:`.loadgen`), the statistics ``vllm bench serve`` defines (:mod:`.stats`), the cross-check against
it (:mod:`.crosscheck`) and the harness's own ceiling (:mod:`.overhead`). Notebooks 01 and 05 teach it.

Why the kit has its own instead of only ``vllm bench serve``: it must drive llama.cpp's server too,
run inside a notebook, report failed requests instead of hiding them, and stop with a clear message
when the server is gone. The measurements follow ``vllm bench serve`` (TTFT, TPOT, ITL, E2E,
goodput; gamma-distributed arrivals with ``burstiness``) so that figures from both are comparable.

Typical use::

    from servelab.bench import fixed_workload, run_benchmark
    wl = fixed_workload(input_tokens=128, output_tokens=64, engine_kind=engine.kind)
    result = run_benchmark(engine.base_url, engine.served_model, wl, concurrency=4, num_requests=40)
    result.summary            # dict of figures
    result.to_dataframe()     # one row per request
    result.save("results/bench", "llamacpp-c4")
"""

from __future__ import annotations

from servelab.bench.loadgen import (
    arrival_offsets,
    inter_arrival_times,
    run_benchmark,
    run_benchmark_async,
    sweep_concurrency,
    sweep_rate,
)
from servelab.bench.stats import BenchResult, RequestRecord, summarize
from servelab.bench.workload import (
    Request,
    Workload,
    dataset_workload,
    fixed_workload,
    length_forcing_body,
    random_workload,
)

__all__ = [
    "BenchResult",
    "Request",
    "RequestRecord",
    "Workload",
    "arrival_offsets",
    "dataset_workload",
    "fixed_workload",
    "inter_arrival_times",
    "length_forcing_body",
    "random_workload",
    "run_benchmark",
    "run_benchmark_async",
    "summarize",
    "sweep_concurrency",
    "sweep_rate",
]
