"""``servelab bench``: benchmark any OpenAI-compatible endpoint."""

from __future__ import annotations

from typing import cast

import typer

from servelab.cli.console import console, fail
from servelab.errors import ServelabError


def bench(
    base_url: str = typer.Option(..., help="API root, e.g. http://127.0.0.1:8000/v1"),
    model: str = typer.Option(..., help="the served model name"),
    engine_kind: str = typer.Option("openai", help="vllm, llamacpp or openai: how to force full-length answers"),
    concurrency: int = typer.Option(None, "-c", help="closed loop with N users"),
    rate: float = typer.Option(None, help="open loop: Poisson arrivals at this many requests/s"),
    burstiness: float = typer.Option(1.0, help="gamma shape of the arrivals (1 = Poisson)"),
    num_requests: int = typer.Option(50, "-n"),
    duration: float = typer.Option(None, help="stop after this many seconds"),
    input_tokens: int = typer.Option(128),
    output_tokens: int = typer.Option(64),
    dataset: bool = typer.Option(False, help="use data/prompts/bench_prompts.jsonl instead of fixed lengths"),
    endpoint: str = typer.Option("completions", help="completions or chat"),
    slo_ttft: float = typer.Option(None, help="goodput SLO on TTFT (s)"),
    slo_tpot: float = typer.Option(None, help="goodput SLO on TPOT (s)"),
    timeout: float = typer.Option(60.0, help="per-request timeout (s)"),
    out: str = typer.Option("results/bench", help="folder for the JSON + CSV"),
    name: str = typer.Option("bench"),
) -> None:
    """Benchmark any OpenAI-compatible endpoint: TTFT, TPOT, ITL, E2E percentiles, throughput, goodput."""
    from servelab.bench import dataset_workload, fixed_workload, run_benchmark
    from servelab.bench.workload import ServerKind

    # Typer hands over any string; the workload rejects a name that is not a ServerKind (ServelabError).
    kind = cast("ServerKind", engine_kind)
    workload = (
        dataset_workload(engine_kind=kind) if dataset else fixed_workload(input_tokens, output_tokens, engine_kind=kind)
    )
    try:
        result = run_benchmark(
            base_url,
            model,
            workload,
            concurrency=concurrency,
            request_rate=rate,
            burstiness=burstiness,
            num_requests=num_requests,
            duration_s=duration,
            timeout_s=timeout,
            endpoint=endpoint,
            slo_ttft_s=slo_ttft,
            slo_tpot_s=slo_tpot,
        )
    except ServelabError as err:
        fail(err)
    console.print(result.report())
    paths = result.save(out, name)
    console.print(f"saved {paths['json']} and {paths['csv']}")
