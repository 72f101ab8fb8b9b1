"""Reference solutions to notebook 01's "Your turn" exercises (the instructor copy; the notebook never imports it)."""

from __future__ import annotations

from typing import Any

import pandas as pd


def forced_length_fields(n: int) -> dict[str, Any]:
    """Cap the answer at n tokens and tell llama-server to ignore the end-of-sequence token, so the model
    cannot stop before n (tools/server/README.md: ``ignore_eos``, which vLLM also takes). A logit bias that
    forbids that token, ``{"logit_bias": {"2": -100}}``, works too; it is the only way on llama-cpp-python's
    Python server, which has no ignore_eos."""
    return {"max_tokens": n, "ignore_eos": True}


def tpot_p50(records: pd.DataFrame) -> float:
    """Median over successful requests of the time after the first token, per gap between output tokens."""
    ok = records[records["status"] == "ok"]
    return float(((ok["e2e_s"] - ok["ttft_s"]) / (ok["output_tokens"] - 1)).median())


def choose_engine(sweep: pd.DataFrame, users: int, ttft_slo_s: float) -> str | None:
    """Of the engines whose median TTFT at this many users meets the SLO, the one with the most throughput."""
    rows = sweep[(sweep["concurrency"] == users) & (sweep["ttft_p50_s"] <= ttft_slo_s)]
    if rows.empty:
        return None
    return str(rows.loc[rows["output_token_throughput"].idxmax(), "engine"])
