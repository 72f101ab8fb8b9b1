"""Reference solutions to notebook 05's "Your turn" exercises: the instructor copy, graded on request."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from servelab.bench.stats import BenchResult, bootstrap_interval


def tpot_and_itl(
    sent: float, chunk_times: list[float], end: float, output_tokens: int
) -> tuple[float | None, list[float]]:
    """TPOT: the time after the first token, over the gaps between tokens (n - 1 of them); ITL: each gap
    between consecutive chunks. ``sent`` only matters for TTFT, which neither figure includes."""
    first = chunk_times[0]
    tpot = (end - first) / (output_tokens - 1) if output_tokens >= 2 else None
    itl = [later - earlier for earlier, later in pairwise(chunk_times)]
    return tpot, itl


def goodput_and_knee(
    runs: Mapping[int, BenchResult], slo_ttft_s: float, slo_tpot_s: float
) -> tuple[dict[int, float], int | None]:
    """Goodput: requests that succeeded within both SLOs, per second of the run. Knee: the level with the
    most goodput, the lower level on a tie; none when no request met the SLO anywhere."""

    def good(run: BenchResult) -> int:
        return sum(
            r.ok
            and r.ttft_s is not None
            and r.ttft_s <= slo_ttft_s
            and (r.tpot_s is None or r.tpot_s <= slo_tpot_s)  # one token: only TTFT applies
            for r in run.records
        )

    goodput = {level: good(run) / run.duration_s for level, run in runs.items()}
    best = max(goodput.values(), default=0.0)
    knee = min((level for level, g in goodput.items() if g == best), default=None) if best > 0 else None
    return goodput, knee


def p99_with_n(values: Sequence[float | None]) -> dict[str, Any]:
    """A P99 is only as good as its n: with fewer than 100 values none lies above it, so it is an
    interpolation towards the maximum, and its bootstrap interval shows how far it could move."""
    measured = [v for v in values if v is not None]
    n = len(measured)
    return {
        "p99": float(np.percentile(measured, 99)),
        "n": n,
        "interval": bootstrap_interval(measured, 99),
        "resolved": n * (100 - 99) / 100 >= 1,
    }
