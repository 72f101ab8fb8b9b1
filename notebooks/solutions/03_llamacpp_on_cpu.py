"""Reference solutions to notebook 03's "Your turn" exercises (the instructor copy; the notebook never imports it)."""

from __future__ import annotations

import math

import pandas as pd

from servelab import results
from servelab.engines.model import gguf_path
from servelab.memory.gguf_header import kv_shape


def choose_threads(sweep: pd.DataFrame, noise: float) -> int:
    """The fewest threads that decode within ``noise`` (a share) of the fastest count: each thread is a core
    the pod requests, and past the point where memory bandwidth saturates more of them buy nothing."""
    fast_enough = sweep["output_tok_s"] >= (1 - noise) * sweep["output_tok_s"].max()
    return int(sweep.loc[fast_enough, "threads"].min())


def memory_resources(context: int) -> str:
    """Memory for a server with a ``context``-token window, from this run's measurement at the notebook's context:
    the file and the overhead stay, the KV cache (allocated for the whole context up front) scales with it.
    Request = that peak + a quarter, rounded up to 64 MiB (the notebook's rule); limit = twice the request."""
    measured = results.load("03_llamacpp_on_cpu")
    kv_mib_per_token = kv_shape(gguf_path()).bytes_per_token("float16") / 2**20
    overhead_mib = measured["rss_peak_mib"] - measured["gguf_mib"] - measured["n_ctx"] * kv_mib_per_token
    peak_mib = measured["gguf_mib"] + context * kv_mib_per_token + overhead_mib
    request_mib = 64 * math.ceil(1.25 * peak_mib / 64)
    return f'requests:\n  cpu: "2"\n  memory: {request_mib}Mi\nlimits:\n  memory: {2 * request_mib}Mi\n'
