"""Checks for the "Your turn" exercises of notebook 05 (benchmarking): each one grades the learner's code
against what the kit's harness computed from the same requests of this run, so a check costs no engine
time and a pass means "you get the harness's figures", not "you typed the expected text".

- :func:`check_tpot_and_itl`: TPOT and ITL from one request's clock readings (:func:`clock_readings`).
- :func:`check_goodput_and_knee`: goodput at every concurrency level for a given SLO, and the knee.
- :func:`check_p99_with_n`: a P99 with its sample size, its bootstrap interval and whether it is resolved.

A wrong answer is recognised against the classic mistakes it resembles, so the hint names the mistake
(dividing by every token, counting TTFT as a gap, a fraction instead of a rate, the throughput peak as
the knee) rather than only printing two numbers that differ.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np

from servelab.bench.stats import BenchResult, RequestRecord, bootstrap_interval, goodput_knee, meets_slo, resolves
from servelab.course.exercises.grader import NotAnswered
from servelab.course.grading import LabCheck, as_sentence, raised

TpotAndItl = Callable[[float, list[float], float, int], Any]
GoodputAndKnee = Callable[[Mapping[int, BenchResult], float, float], Any]
P99WithN = Callable[[list[float | None]], Any]


def _close(a: Any, b: float) -> bool:
    """Equal to float rounding: the readings are rebuilt from offsets, so the last digits may differ."""
    is_number = isinstance(a, numbers.Real) and not isinstance(a, bool | np.bool_)
    return is_number and math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-9)


def _as_list(values: Any) -> list[Any] | None:
    """A learner's sequence of numbers as a list (a list, a tuple or a numpy array all count), else None."""
    return list(values) if isinstance(values, list | tuple | np.ndarray) else None


def _all_close(a: Sequence[Any] | None, b: Sequence[float]) -> bool:
    return a is not None and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))


def _show(value: Any) -> str:
    """A learner's value, short and readable in a hint: numbers to six digits (numpy's too), a few items of
    a sequence, anything else by its repr, cut short."""
    if value is None:
        return "None"
    if isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_):
        return f"{float(value):.6g}"
    if isinstance(value, list | tuple | np.ndarray):
        items = [_show(v) for v in list(value)[:4]] + (["..."] if len(value) > 4 else [])
        return (
            ("(" if isinstance(value, tuple) else "[") + ", ".join(items) + (")" if isinstance(value, tuple) else "]")
        )
    return repr(value)[:80]


# --- Your turn 1: TPOT and ITL from the clock readings -------------------------------------------------


@dataclass(frozen=True)
class ClockReadings:
    """One request's clock readings, in seconds from the run's start: when it was sent, when each chunk
    that carried text arrived, when the stream ended, and how many tokens the server says it generated."""

    sent: float
    chunk_times: list[float]
    end: float
    output_tokens: int


def clock_readings(record: RequestRecord) -> ClockReadings:
    """The clock readings behind a record. A record keeps offsets (TTFT, each gap, E2E) rather than the
    readings, because offsets are what every figure needs; their running sum gives the readings back,
    equal to float rounding, so a learner can start where the harness started."""
    if record.ttft_s is None or record.e2e_s is None:
        raise ValueError(f"request {record.index} has no first token ({record.status}): nothing to rebuild")
    first = record.start_s + record.ttft_s
    return ClockReadings(
        sent=record.start_s,
        chunk_times=list(accumulate(record.itl_s, initial=first)),
        end=record.start_s + record.e2e_s,
        output_tokens=record.output_tokens,
    )


def _tpot_mistake(got: Any, r: ClockReadings) -> str:
    """Which classic TPOT mistake ``got`` matches, as advice; empty when it matches none."""
    n, chunks, first = r.output_tokens, len(r.chunk_times), r.chunk_times[0]
    mistakes = [
        (
            (r.end - first) / n,
            "you divided by every token; the first token's time is TTFT, and the time after it is n-1 gaps: "
            "divide by output_tokens - 1",
        ),
        ((r.end - r.sent) / (n - 1), "your TPOT includes TTFT: start at the first token (chunk_times[0]), not at sent"),
        (
            (r.end - r.sent) / n,
            "your TPOT includes TTFT and divides by every token: use (end - first token) / (output_tokens - 1)",
        ),
        (
            (r.chunk_times[-1] - first) / (chunks - 1) if chunks > 1 else math.nan,
            "that is the mean gap between chunks (mean ITL); TPOT runs to the end of the stream: "
            "(end - first token) / (output_tokens - 1)",
        ),
        (
            (r.end - first) / (chunks - 1) if chunks > 1 else math.nan,
            "you counted chunks, not tokens: a chunk can carry more than one token, so use output_tokens, "
            "the server's own count",
        ),
    ]
    return next((advice for value, advice in mistakes if _close(got, value)), "")


def _itl_mistake(got: list[Any], r: ClockReadings, expected: list[float]) -> str:
    """Which classic ITL mistake ``got`` matches, as advice; empty when it matches none."""
    first_wait = r.chunk_times[0] - r.sent
    tail = r.end - r.chunk_times[-1]
    if _all_close(got, [first_wait, *expected]):
        return "your first gap is the wait for the first token, which is TTFT: ITL starts at the first token"
    if _all_close(got, [*expected, tail]):
        return "your last gap runs to the end of the stream, after the last token: ITL is between two chunks"
    same = len(expected) > 1 and len(got) == len(expected) and isinstance(got[0], numbers.Real)
    if same and all(_close(g, float(got[0])) for g in got):
        return "every gap is the same value: ITL is each measured gap, not an average spread over the answer"
    return ""


def check_tpot_and_itl(answer: TpotAndItl, records: Sequence[RequestRecord]) -> list[LabCheck]:
    """``answer(sent, chunk_times, end, output_tokens) -> (tpot, itl)`` must give each request's TPOT and
    ITL gaps as the harness recorded them for the same request, and no TPOT for a one-token answer."""
    ok = [r for r in records if r.ok and r.ttft_s is not None]
    if not ok:
        return [
            LabCheck("tpot_and_itl: requests to grade", False, "This run has no successful request: rerun section 2.")
        ]
    tpot_bad: str | None = None
    itl_bad: str | None = None
    for record in ok:
        readings = clock_readings(record)
        try:
            got = answer(readings.sent, list(readings.chunk_times), readings.end, readings.output_tokens)
        except NotAnswered:
            raise
        except Exception as err:  # noqa: BLE001 -- the learner's code: what it raises is the hint
            return [raised("tpot_and_itl: runs", err, f"request {record.index}")]
        if not (isinstance(got, tuple | list) and len(got) == 2):
            return [
                LabCheck("tpot_and_itl: returns (tpot, itl)", False, f"Return a pair (tpot, itl); got {_show(got)}.")
            ]
        tpot, itl = got
        if tpot_bad is None and record.tpot_s is not None and not _close(tpot, record.tpot_s):
            advice = _tpot_mistake(tpot, readings) or "compare with the definition in section 1"
            tpot_bad = (
                f"Request {record.index} (sent at {record.start_s:.3f} s, {readings.output_tokens} tokens): "
                f"your TPOT is {_show(tpot)}, the harness's {record.tpot_s:.6f} s. {as_sentence(advice)}"
            )
        gaps = _as_list(itl)
        if itl_bad is None and not _all_close(gaps, record.itl_s):
            gaps = gaps or []
            advice = _itl_mistake(gaps, readings, record.itl_s) or "one gap per pair of consecutive chunks"
            itl_bad = (
                f"Request {record.index} (sent at {record.start_s:.3f} s): you gave {len(gaps)} gaps, the harness "
                f"{len(record.itl_s)} (from {len(readings.chunk_times)} chunks). {as_sentence(advice)}"
            )
    one = RequestRecord.from_timestamps(0, 0.0, [0.2], 0.25, output_tokens=1)
    try:
        edge = answer(0.0, [0.2], 0.25, 1)
        edge_ok = (
            isinstance(edge, tuple | list) and len(edge) == 2 and edge[0] is None and _as_list(edge[1]) == one.itl_s
        )
        edge_hint = f"For a one-token answer you returned {_show(edge)}."
    except NotAnswered:
        raise
    except Exception as err:  # noqa: BLE001 -- the learner's code: what it raises is the hint
        edge_ok, edge_hint = False, f"A one-token answer made your code raise {type(err).__name__}: {err}."
    return [
        LabCheck(f"tpot_and_itl: TPOT of all {len(ok)} requests matches the harness", tpot_bad is None, tpot_bad or ""),
        LabCheck(f"tpot_and_itl: ITL gaps of all {len(ok)} requests match the harness", itl_bad is None, itl_bad or ""),
        LabCheck(
            "tpot_and_itl: a one-token answer has no TPOT and no gap",
            edge_ok,
            ""
            if edge_ok
            else f"{edge_hint} One token has no gap after it: return (None, []), as the harness "
            "does (it leaves such requests out of TPOT).",
        ),
    ]


# --- Your turn 2: goodput at each level, and the knee ----------------------------------------------------


def _goodput_variants(run: BenchResult, slo_ttft_s: float, slo_tpot_s: float) -> list[tuple[float, str]]:
    """The values the classic goodput mistakes give for this run, each with the advice that fixes it."""
    records, duration = run.records, max(run.duration_s, 1e-9)
    counts = {
        "both": sum(meets_slo(r, slo_ttft_s, slo_tpot_s) for r in records),
        "ttft": sum(meets_slo(r, slo_ttft_s, None) for r in records),
        "tpot": sum(meets_slo(r, None, slo_tpot_s) for r in records),
        "ok": sum(r.ok for r in records),
    }
    filters = {
        "both": "",
        "ttft": "you only checked TTFT: a good request meets TTFT and TPOT",
        "tpot": "you only checked TPOT: a good request meets TTFT and TPOT",
        "ok": "you counted every successful request: count only those within the SLO",
    }
    fraction = "that is a fraction of the requests, not a rate: divide by the run's duration_s"
    variants = [(counts[key] / duration, advice) for key, advice in filters.items() if key != "both"]
    for key, advice in filters.items():
        variants.append((counts[key] / max(len(records), 1), f"{advice}; {fraction}" if advice else fraction))
    return variants


def check_goodput_and_knee(
    answer: GoodputAndKnee, runs: Mapping[int, BenchResult], slo_ttft_s: float, slo_tpot_s: float
) -> list[LabCheck]:
    """``answer(runs, slo_ttft_s, slo_tpot_s) -> ({level: goodput}, knee)`` must give the harness's goodput
    (requests/s within the SLO) at every level of this run's sweep and the knee :func:`goodput_knee` picks."""
    expected = {level: run.summarize(slo_ttft_s, slo_tpot_s)["goodput"] for level, run in runs.items()}
    want_knee = goodput_knee(list(expected), list(expected.values()))
    try:
        got = answer(runs, slo_ttft_s, slo_tpot_s)
    except NotAnswered:
        raise
    except Exception as err:  # noqa: BLE001 -- the learner's code: what it raises is the hint
        return [raised("goodput_and_knee: runs", err, "this run's sweep")]
    if not (isinstance(got, tuple | list) and len(got) == 2 and isinstance(got[0], Mapping)):
        return [
            LabCheck(
                "goodput_and_knee: returns (goodput, knee)",
                False,
                f"Return ({{level: goodput}}, knee); got {_show(got)}.",
            )
        ]
    goodput, knee = dict(got[0]), got[1]
    goodput_hint = ""
    if set(goodput) != set(expected):
        goodput_hint = (
            f"Give one goodput per level {sorted(expected)}; you gave levels {_show(sorted(goodput, key=str))}."
        )
    else:
        # A mistake that explains every level is the diagnosis; else the one that explains the first wrong level.
        variants = {level: _goodput_variants(run, slo_ttft_s, slo_tpot_s) for level, run in runs.items()}
        everywhere = [
            advice
            for i, (_, advice) in enumerate(next(iter(variants.values())))
            if all(_close(goodput[level], variants[level][i][0]) for level in runs)
        ]
        for level, want in expected.items():
            if _close(goodput[level], want):
                continue
            run = runs[level]
            advice = next(
                iter(everywhere),
                next(
                    (a for v, a in variants[level] if _close(goodput[level], v)),
                    "goodput = requests within the SLO (TTFT and TPOT, failed ones never) / duration_s",
                ),
            )
            goodput_hint = (
                f"At C={level} you have {_show(goodput[level])}, the harness {want:.4f} req/s "
                f"({sum(meets_slo(r, slo_ttft_s, slo_tpot_s) for r in run.records)} of {len(run.records)} requests "
                f"within the SLO over the run's duration_s). {as_sentence(advice)}"
            )
            break
    by_throughput = max(runs, key=lambda level: runs[level].summary["output_token_throughput"])
    is_level = knee is None or (isinstance(knee, numbers.Real) and not isinstance(knee, bool | np.bool_))
    knee_ok = is_level and knee == want_knee
    knee_hint = ""
    if not knee_ok:
        if not is_level:
            advice = "return the knee as one level (a number), or None when there is none"
        elif knee == by_throughput:
            advice = "that is the level with the most throughput; the knee is the level with the most goodput"
        elif want_knee is None:
            advice = "no request met this SLO at any level, so there is no knee: return None"
        elif goodput_hint:
            advice = "fix the goodput first: the knee is the level where it is highest"
        elif knee in expected and expected[knee] == expected[int(want_knee)]:
            advice = "on a tie the lower level wins: the same useful work at less latency"
        else:
            advice = "the knee is the level with the highest goodput (the lower one on a tie)"
        knee_hint = f"Your knee is {_show(knee)}, the harness's {_show(want_knee)}. {as_sentence(advice)}"
    return [
        LabCheck(
            f"goodput_and_knee: goodput at all {len(expected)} levels matches the harness",
            not goodput_hint,
            goodput_hint,
        ),
        LabCheck("goodput_and_knee: the knee matches the harness's goodput_knee", knee_ok, knee_hint),
    ]


# --- Your turn 3: a P99 with its n ----------------------------------------------------------------------

_P99_KEYS = ("p99", "n", "interval", "resolved")


def check_p99_with_n(answer: P99WithN, samples: Mapping[str, list[float | None]]) -> list[LabCheck]:
    """``answer(values) -> {"p99", "n", "interval", "resolved"}`` must give, for each of this run's samples,
    what the kit reports: numpy's P99 of the measured values, their number, the kit's bootstrap interval
    (:func:`bootstrap_interval`, 95 %, seed 0) and whether a sample lies above the P99 (:func:`resolves`)."""
    if not any(v is not None for values in samples.values() for v in values):
        return [LabCheck("p99_with_n: samples to grade", False, "This run has no measured values: rerun section 2.")]
    bad: dict[str, str] = {}
    for name, values in samples.items():
        clean = [float(v) for v in values if v is not None and not math.isnan(v)]
        if not clean:
            continue
        try:
            got = answer(list(values))
        except NotAnswered:
            raise
        except Exception as err:  # noqa: BLE001 -- the learner's code: what it raises is the hint
            return [raised("p99_with_n: runs", err, name)]
        if not (isinstance(got, Mapping) and set(_P99_KEYS) <= set(got)):
            return [
                LabCheck(
                    "p99_with_n: returns the four keys",
                    False,
                    f"Return a dict with keys {_P99_KEYS}; got {_show(got)}.",
                )
            ]
        n, p99 = len(clean), float(np.percentile(clean, 99))
        interval = bootstrap_interval(clean, 99)
        assert interval is not None  # clean is not empty
        if "n" not in bad and got["n"] != n:
            counted_missing = got["n"] == len(values) and len(values) != n
            bad["n"] = f"{name}: your n is {_show(got['n'])}, the measured values number {n}." + (
                " You counted the missing ones (None: failed requests); count only measured values."
                if counted_missing
                else ""
            )
        if "p99" not in bad and not _close(got["p99"], p99):
            advice = (
                "that is the largest sample; the harness interpolates (numpy's percentile, linear)"
                if _close(got["p99"], max(clean))
                else "use numpy's percentile (linear), as the harness does"
            )
            bad["p99"] = (
                f"{name} (n={n}): your P99 is {_show(got['p99'])}, the harness's {p99:.6f}. {as_sentence(advice)}"
            )
        if "interval" not in bad:
            have = got["interval"]
            if not _all_close(_as_list(have), list(interval)):
                bad["interval"] = (
                    f"{name} (n={n}): your interval is {_show(have)}, the kit's {_show(interval)}. "
                    "Use servelab.bench.stats.bootstrap_interval(values, 99): 95 %, seeded, so it repeats."
                )
        said = got["resolved"]
        if "resolved" not in bad and not (isinstance(said, bool | np.bool_) and bool(said) == resolves(99, n)):
            bad["resolved"] = (
                f"{name}: you said resolved={_show(said)} for n={n}. A P99 is resolved when at least one "
                "sample lies above it: n x (100 - 99) / 100 >= 1 (servelab.bench.stats.resolves); below that it is "
                "an interpolation towards the maximum, not a P99 to trust."
            )
    titles = {
        "n": "n counts the measured values",
        "p99": "the P99 matches the harness's",
        "interval": "the interval matches the kit's bootstrap",
        "resolved": "says whether the P99 is resolved",
    }
    return [
        LabCheck(f"p99_with_n: {titles[key]} ({len(samples)} samples)", key not in bad, bad.get(key, ""))
        for key in ("n", "p99", "interval", "resolved")
    ]
