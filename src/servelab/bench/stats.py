"""Per-request records and the figures computed from them, as ``vllm bench serve`` defines them.

- TTFT: from sending the request to the first chunk that carries text (role-only chunks do not count).
- ITL: every gap between two consecutive text chunks, pooled over all requests.
- TPOT: ``(e2e - ttft) / (output_tokens - 1)``, per request; undefined for fewer than 2 tokens.
- E2E: from sending the request to the end of its stream.
- Goodput: requests per second that met an SLO on TTFT and TPOT.

Latency figures use successful requests only; failed and timed-out requests are counted, reported,
and count against goodput's fraction, never silently dropped. Percentiles are numpy's (linear).

Every metric also reports ``<metric>_n``, the number of samples behind its percentiles: a P99 of fewer
than 100 samples has no sample above it and is, in effect, the largest one, so it must be labelled as
such (:func:`percentile_label`) or given an interval (:func:`bootstrap_interval`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

Status = Literal["ok", "error", "timeout"]
PERCENTILES = (50, 90, 99)
METRICS = ("ttft", "tpot", "itl", "e2e")


@dataclass
class RequestRecord:
    """What happened to one request. Times are seconds; ``start_s`` is relative to the run's start."""

    index: int
    start_s: float
    status: Status
    ttft_s: float | None = None
    itl_s: list[float] = field(default_factory=list)
    tpot_s: float | None = None
    e2e_s: float | None = None
    input_tokens: int | None = None
    output_tokens: int = 0
    max_tokens: int | None = None
    client_queue_s: float = 0.0  # waiting in the client for a concurrency slot; not part of TTFT
    finish_reason: str | None = None
    error: str | None = None

    @classmethod
    def from_timestamps(
        cls,
        index: int,
        sent: float,
        chunk_times: list[float],
        end: float,
        *,
        run_start: float = 0.0,
        status: Status = "ok",
        output_tokens: int | None = None,
        input_tokens: int | None = None,
        **other: Any,
    ) -> RequestRecord:
        """Build a record from raw clock readings (``time.perf_counter()`` values).

        ``chunk_times`` are the arrival times of chunks that carried text. ``output_tokens`` defaults
        to their number, which is right for servers that send one token per chunk (llama.cpp).
        """
        tokens = len(chunk_times) if output_tokens is None else output_tokens
        ttft = chunk_times[0] - sent if chunk_times else None
        e2e = end - sent
        tpot = (e2e - ttft) / (tokens - 1) if ttft is not None and tokens >= 2 and status == "ok" else None
        itl = [b - a for a, b in pairwise(chunk_times)]
        return cls(
            index=index,
            start_s=sent - run_start,
            status=status,
            ttft_s=ttft,
            itl_s=itl,
            tpot_s=tpot,
            e2e_s=e2e,
            input_tokens=input_tokens,
            output_tokens=tokens,
            **other,
        )

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _clean(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)


def _describe(values: Sequence[float | None], name: str) -> dict[str, float | int | None]:
    arr = _clean(values)
    out: dict[str, float | int | None] = {f"{name}_mean_s": float(arr.mean()) if arr.size else None}
    for p in PERCENTILES:
        out[f"{name}_p{p}_s"] = float(np.percentile(arr, p)) if arr.size else None
    out[f"{name}_n"] = int(arr.size)
    return out


def resolves(p: float, n: int) -> bool:
    """Does a sample of ``n`` resolve percentile ``p``, that is, leave at least one sample above it? Below
    that (fewer than 100 samples for P99) the percentile is an interpolation towards the maximum."""
    return n * (100 - p) / 100 >= 1


def percentile_label(metric: str, p: int, ns: Sequence[int] | int) -> str:
    """A label that carries the sample size: ``"TTFT p99 (n=8-16: max of n)"`` when n is too small for the
    percentile to be more than the largest sample, ``"TTFT p50 (n=200)"`` otherwise."""
    sizes = [ns] if isinstance(ns, int) else list(ns)
    lo, hi = min(sizes), max(sizes)
    n_text = f"n={lo}" if lo == hi else f"n={lo}-{hi}"
    if not resolves(p, hi):
        return f"{metric} p{p} ({n_text}: max of n)"
    if not resolves(p, lo):
        return f"{metric} p{p} ({n_text}: max of n where n<{math.ceil(100 / (100 - p))})"
    return f"{metric} p{p} ({n_text})"


def bootstrap_interval(
    values: Sequence[float | None], p: float, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float] | None:
    """Percentile-bootstrap interval for the ``p``-th percentile: how far it could move with another sample
    of the same size. ``None`` without data. Seeded, so a notebook shows the same interval on a re-run."""
    arr = _clean(values)
    if not arr.size:
        return None
    rng = np.random.default_rng(seed)
    draws = np.percentile(rng.choice(arr, size=(resamples, arr.size), replace=True), p, axis=1)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(draws, tail)), float(np.percentile(draws, 100 - tail))


def goodput_knee(levels: Sequence[float], goodput: Sequence[float]) -> float | None:
    """The knee, defined by the SLO: the load level with the most goodput (requests/s that met it). Beyond
    it, more users add requests that miss the SLO; on a tie the lower level wins (same useful work, less
    latency). ``None`` when no request met the SLO at any level."""
    pairs = [(g, -lvl) for lvl, g in zip(levels, goodput, strict=True) if g is not None and g > 0]
    return -max(pairs)[1] if pairs else None


def spread(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, min, max and relative range of a figure measured in repeated runs (``n`` = number of runs)."""
    arr = _clean(list(values))
    if not arr.size:
        return {"n": 0, "mean": None, "min": None, "max": None, "relative_range": None}
    mean = float(arr.mean())
    return {
        "n": int(arr.size),
        "mean": mean,
        "min": float(arr.min()),
        "max": float(arr.max()),
        "relative_range": float((arr.max() - arr.min()) / mean) if mean else None,
    }


def meets_slo(record: RequestRecord, slo_ttft_s: float | None, slo_tpot_s: float | None) -> bool:
    """Did this request succeed within the SLO? A missing TPOT (one token) only has to meet TTFT."""
    if not record.ok or record.ttft_s is None:
        return False
    if slo_ttft_s is not None and record.ttft_s > slo_ttft_s:
        return False
    return not (slo_tpot_s is not None and record.tpot_s is not None and record.tpot_s > slo_tpot_s)


def summarize(
    records: list[RequestRecord], duration_s: float, slo_ttft_s: float | None = None, slo_tpot_s: float | None = None
) -> dict[str, Any]:
    """The run's figures as one flat dict (one row of a sweep's DataFrame)."""
    ok = [r for r in records if r.ok]
    duration = max(duration_s, 1e-9)
    out_tokens = sum(r.output_tokens for r in ok)
    in_tokens = sum(r.input_tokens or 0 for r in ok)
    summary: dict[str, Any] = {
        "requests": len(records),
        "ok": len(ok),
        "errors": sum(r.status == "error" for r in records),
        "timeouts": sum(r.status == "timeout" for r in records),
        "duration_s": duration_s,
        "request_throughput": len(ok) / duration,
        "output_token_throughput": out_tokens / duration,
        "total_token_throughput": (in_tokens + out_tokens) / duration,
        "input_tokens_total": in_tokens,
        "output_tokens_total": out_tokens,
    }
    summary.update(_describe([r.ttft_s for r in ok], "ttft"))
    summary.update(_describe([r.tpot_s for r in ok], "tpot"))
    summary.update(_describe([gap for r in ok for gap in r.itl_s], "itl"))
    summary.update(_describe([r.e2e_s for r in ok], "e2e"))
    queue = [r.client_queue_s for r in records]
    summary["client_queue_mean_s"] = float(np.mean(queue)) if queue else None
    summary["client_queue_max_s"] = float(np.max(queue)) if queue else None
    good = sum(meets_slo(r, slo_ttft_s, slo_tpot_s) for r in records)
    summary["slo_ttft_s"] = slo_ttft_s
    summary["slo_tpot_s"] = slo_tpot_s
    summary["goodput"] = good / duration  # requests/s that met the SLO (all ok ones when no SLO is set)
    summary["goodput_fraction"] = good / len(records) if records else None
    summary["first_error"] = next((r.error for r in records if r.error), None)
    return summary


_CSV_FIELDS = [f.name for f in fields(RequestRecord)]


@dataclass
class BenchResult:
    """Everything one run produced: per-request records, the settings, and the wall-clock duration."""

    records: list[RequestRecord]
    config: dict[str, Any]
    duration_s: float
    slo_ttft_s: float | None = None
    slo_tpot_s: float | None = None

    @property
    def summary(self) -> dict[str, Any]:
        """Figures under the SLO given to the run (change it with :meth:`summarize`)."""
        return self.summarize()

    def summarize(self, slo_ttft_s: float | None = None, slo_tpot_s: float | None = None) -> dict[str, Any]:
        return summarize(
            self.records,
            self.duration_s,
            self.slo_ttft_s if slo_ttft_s is None else slo_ttft_s,
            self.slo_tpot_s if slo_tpot_s is None else slo_tpot_s,
        )

    def to_dataframe(self) -> pd.DataFrame:
        """One row per request, in the order they were sent; ``itl_s`` stays a list per row."""
        rows = [asdict(r) for r in sorted(self.records, key=lambda r: r.index)]
        return pd.DataFrame(rows, columns=_CSV_FIELDS)

    def save(self, directory: Path | str, name: str) -> dict[str, Path]:
        """Write ``<name>.json`` (summary + config) and ``<name>.csv`` (per request); return both paths."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        json_path, csv_path = directory / f"{name}.json", directory / f"{name}.csv"
        frame = self.to_dataframe()
        frame["itl_s"] = frame["itl_s"].map(json.dumps)
        frame.to_csv(csv_path, index=False)
        doc = {
            "summary": self.summary,
            "config": self.config,
            "duration_s": self.duration_s,
            "slo_ttft_s": self.slo_ttft_s,
            "slo_tpot_s": self.slo_tpot_s,
            "records_csv": csv_path.name,
        }
        json_path.write_text(json.dumps(doc, indent=2, default=str))
        return {"json": json_path, "csv": csv_path}

    @classmethod
    def load(cls, directory: Path | str, name: str) -> BenchResult:
        """Read back what :meth:`save` wrote."""
        directory = Path(directory)
        doc = json.loads((directory / f"{name}.json").read_text())
        frame = pd.read_csv(directory / doc["records_csv"], keep_default_na=True)
        records = []
        for row in frame.to_dict("records"):
            clean: dict[str, Any] = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            clean["itl_s"] = json.loads(clean["itl_s"]) if clean["itl_s"] else []
            for key in ("index", "output_tokens", "input_tokens", "max_tokens"):
                if clean.get(key) is not None:
                    clean[key] = int(clean[key])
            records.append(RequestRecord(**clean))
        return cls(records, doc["config"], doc["duration_s"], doc.get("slo_ttft_s"), doc.get("slo_tpot_s"))

    def report(self) -> str:
        """A few lines for a terminal or a notebook cell."""
        s = self.summary

        def ms(key: str) -> str:
            return "-" if s[key] is None else f"{s[key] * 1000:.1f}"

        lines = [
            f"requests: {s['requests']} ({s['ok']} ok, {s['errors']} errors, {s['timeouts']} timeouts) "
            f"in {s['duration_s']:.2f} s",
            f"throughput: {s['request_throughput']:.2f} req/s, {s['output_token_throughput']:.1f} output tok/s, "
            f"{s['total_token_throughput']:.1f} total tok/s",
        ]
        for metric in METRICS:
            n = s[f"{metric}_n"]
            p99 = "p99" if resolves(99, n) else "p99 (max of n)"
            lines.append(
                f"{metric.upper():>5} ms: mean {ms(metric + '_mean_s')}  p50 {ms(metric + '_p50_s')}  "
                f"p90 {ms(metric + '_p90_s')}  {p99} {ms(metric + '_p99_s')}  (n={n})"
            )
        if s["slo_ttft_s"] is not None or s["slo_tpot_s"] is not None:
            lines.append(
                f"goodput: {s['goodput']:.2f} req/s ({s['goodput_fraction']:.0%} of requests met "
                f"TTFT<={s['slo_ttft_s']} s, TPOT<={s['slo_tpot_s']} s)"
            )
        if s["first_error"]:
            lines.append(f"first error: {s['first_error']}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        s = self.summary
        return (
            f"<BenchResult {s['ok']}/{s['requests']} ok, {s['output_token_throughput']:.1f} tok/s, "
            f"ttft p50 {s['ttft_p50_s']}>"
        )
